"""A thirteenth user: a researcher browsing Neuronpedia, who copies a latent's address
(https://www.neuronpedia.org/gpt2-small/1-res-jb/3) or its id and wants to steer with it, build and
browse its feature store, and bring Neuronpedia's explanations along. Driven through the CLI,
offline, on the tiny GPT-2 saved as `gpt2` in a local HF cache, with a SAELens-saved SAE where
SAELens's registry keeps `gpt2-small-res-jb`'s blocks.1.hook_resid_pre (Neuronpedia id
gpt2-small/1-res-jb in the installed registry). Checks what only these paths show:

- `--sae` takes a Neuronpedia SAE id or address (a latent's address too), resolved through SAELens's
  registry to the same SAE as `sae_lens:RELEASE/SAE_ID`; the provenance records the Neuronpedia id;
- `steer -l` takes a Neuronpedia latent (id or address) before `:OP...` and in its trigger, as that
  latent of the --sae it belongs to (that SAE when no --sae is given); so do `sweep`, `steer-eval`,
  `preset save` (edits, --stop-when) and the API's edits and stop triggers; `features show` takes one of
  the store's SAE; a latent of an SAE not given is refused naming both, one past the SAE's width
  names d_sae;
- an id the registry does not know is refused naming the closest known ones; the registry SAE's
  model ('gpt2-small') and another --model are refused naming both;
- `label --import-neuronpedia` reads Neuronpedia's explanations (its dataset export
  v1/MODEL/SAE/explanations/*.jsonl.gz, from the model's folder too; a JSON array as its removed
  export route gave) into the store's labels marked 'neuronpedia' with the explainer
  model, shown by `features show/search` and the web's feature page (with a link to its Neuronpedia
  page), and not exported back as saesteer's own for a Neuronpedia upload; rows of another SAE or out of range refuse the whole
  import naming both sides; a second import writes nothing twice.
"""

from __future__ import annotations

import gzip
import json

import pytest

from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("one_thread")]

NP_SAE = "gpt2-small/1-res-jb"
ADDRESS = f"https://www.neuronpedia.org/{NP_SAE}"
REGISTRY = "sae_lens:gpt2-small-res-jb/blocks.1.hook_resid_pre"
GEN = ("--prompt", "def caf\u00e9(x):  # \u6570\u636e", "--max-new-tokens", 4, "--do-sample", "false", "--json")


@pytest.fixture
def hub(real_models, tmp_path, monkeypatch):
    """An offline HF cache: the tiny GPT-2 as `gpt2`, the tiny NeoX as `EleutherAI/pythia-70m-deduped`, and a StandardSAE written by SAELens where the
    registry's release gpt2-small-res-jb keeps blocks.1.hook_resid_pre (d_sae 128)."""
    from helpers.foreign_saes import offline_registry_cache

    return offline_registry_cache(real_models, tmp_path, monkeypatch)


def _steered(*argv) -> str:
    r = saesteer("steer", "--model", "gpt2", *argv, *GEN).ok()
    return json.loads(r.out)["results"][0]["steered"]


def test_a_neuronpedia_sae_and_latent_steer_as_their_registry_names_do(hub, monkeypatch):
    """The address of a latent, its id, and the registry's own names steer alike; the provenance
    keeps the Neuronpedia id. Before, the address was 'SAE not found' and the latent 'cannot parse edit'."""
    from saes.formats import resolve_sae

    same = _steered("--sae", REGISTRY, "-l", "3:clamp=400")
    assert _steered("--sae", ADDRESS, "-l", f"{ADDRESS}/3:clamp=400") == same
    assert _steered("--sae", NP_SAE, "-l", f"{NP_SAE}/3:clamp=400") == same
    assert _steered("--sae", f"{ADDRESS}/3?embed=true", "-l", f"{NP_SAE}/3:clamp=400") == same  # a latent's address
    assert _steered("--sae", REGISTRY, "-l", f"{NP_SAE}/3:clamp=400") == same  # the registry's name, Neuronpedia's latent
    unsteered = json.loads(saesteer("steer", "--model", "gpt2", "--sae", NP_SAE, "-l", "3:add=0", *GEN).ok().out)
    assert unsteered["results"][0]["steered"] != same
    # two SAEs: the latent goes to the one it belongs to
    r = saesteer("steer", "--model", "gpt2", "--sae", f"a={NP_SAE}", "--sae", f"b={REGISTRY}", "-l",
                 f"{ADDRESS}/3:clamp=400", *GEN).ok()
    assert json.loads(r.out)["results"][0]["steered"] == same
    # an '=' in a path is no NAME=SAE (it was 'bad SAE name in --sae'), as in the address's query above
    import shutil

    shutil.copytree(hub.parent / "made", hub.parent / "lr=3e-4" / "sae")
    saesteer("steer", "--model", "gpt2", "--sae", hub.parent / "lr=3e-4" / "sae", "-l", "3:clamp=400", *GEN).ok()
    # a local folder named like a Neuronpedia id is that folder (its latents are not Neuronpedia's)
    shutil.copytree(hub.parent / "made", hub.parent / NP_SAE)
    monkeypatch.chdir(hub.parent)
    assert resolve_sae(NP_SAE).spec == str(hub.parent / NP_SAE)
    r = saesteer("steer", "--model", "gpt2", "--sae", NP_SAE, "-l", f"{NP_SAE}/3:clamp=400", *GEN).no_traceback()
    assert r.rc == 2 and "'sae' is not on Neuronpedia" in r.err
    loaded = resolve_sae(ADDRESS)
    assert loaded.spec == REGISTRY  # canonical: resolves again to the same SAE, what a store records
    src = loaded.provenance["source"]
    assert (src["neuronpedia_id"], src["neuronpedia_url"]) == (NP_SAE, ADDRESS)
    assert resolve_sae(REGISTRY).provenance["source"]["neuronpedia_id"] == NP_SAE


def test_a_neuronpedia_latent_names_its_sae_and_its_triggers_latent(hub):
    """`steer -l ADDRESS/3:...` needed `--sae` beside it although the address names the SAE; a
    trigger's latent (`?gpt2-small/1-res-jb/5>...`) was 'cannot parse trigger'."""
    same = _steered("--sae", REGISTRY, "-l", "3:clamp=400")
    r = json.loads(saesteer("steer", "--model", "gpt2", "-l", f"{ADDRESS}/3:clamp=400?{NP_SAE}/5>-1e6", *GEN).ok().out)
    assert r["edits"] == "3:clamp=400?5>-1e+06" and r["results"][0]["steered"] == same
    never = json.loads(saesteer("steer", "--model", "gpt2", "-l", f"{NP_SAE}/3:clamp=400?{ADDRESS}/5>1e6", *GEN).ok().out)
    assert never["results"][0]["steered"] == never["results"][0]["unsteered"] != same
    # the trigger's index is checked against the SAE like any latent
    r = saesteer("steer", "--model", "gpt2", "-l", f"{NP_SAE}/3:clamp=4?{NP_SAE}/128>1", *GEN).no_traceback()
    assert r.rc == 2 and "trigger latent 128 is out of range" in r.err
    # a trigger reads the SAE it edits: another SAE's latent is refused naming both
    r = saesteer("steer", "--model", "gpt2", "--sae", f"a={NP_SAE}", "--sae", "b=gpt2-small/2-res-jb", "-l",
                 f"{NP_SAE}/3:clamp=4?gpt2-small/2-res-jb/5>1", *GEN).no_traceback()
    assert r.rc == 2 and "'gpt2-small/2-res-jb'" in r.err and NP_SAE in r.err and "trigger" in r.err
    # no --sae: the latents must name one SAE
    r = saesteer("steer", "--model", "gpt2", "-l", f"{NP_SAE}/3:clamp=4", "-l", "gpt2-small/2-res-jb/3:add=1", *GEN)
    assert r.rc == 2 and "give --sae" in r.no_traceback().err
    r = saesteer("steer", "--model", "gpt2", "-l", "3:clamp=4", *GEN).no_traceback()
    assert r.rc == 2 and "give --sae" in r.err
    # an address of another SAE than the --sae given is refused naming both
    r = saesteer("steer", "--model", "gpt2", "--sae", REGISTRY, "-l", "https://www.neuronpedia.org/gpt2-small/2-res-jb/3:add=1",
                 *GEN).no_traceback()
    assert r.rc == 2 and "'gpt2-small/2-res-jb'" in r.err and f"'sae' is {NP_SAE}" in r.err


def test_sweep_and_steer_eval_take_a_neuronpedia_latent(hub, tmp_path):
    """`sweep --latent` / `steer-eval --latent` took an index only (argparse: 'invalid int value')."""
    sweep = ("sweep", "--model", "gpt2", "--topic", "ocean", "--unit", "raw", "--strengths", "0,400", "--samples", 1,
             "--do-sample", "false", "--max-new-tokens", 4, "--prompt", "def caf\u00e9(x):", "--no-progress")
    saesteer(*sweep, "--latent", f"{ADDRESS}/3", "--out", tmp_path / "np").ok()
    saesteer(*sweep, "--sae", REGISTRY, "--latent", "3", "--out", tmp_path / "index").ok()
    ours, theirs = (json.loads((tmp_path / d / "sweep_sae_3.json").read_text()) for d in ("np", "index"))
    assert ours["latent"] == theirs["latent"] == 3 and ours["points"] == theirs["points"]
    r = saesteer(*sweep, "--sae", REGISTRY, "--latent", "gpt2-small/2-res-jb/3", "--out", tmp_path / "x").no_traceback()
    assert r.rc == 2 and "'gpt2-small/2-res-jb'" in r.err and f"'sae' is {NP_SAE}" in r.err
    r = saesteer(*sweep, "--sae", f"a={NP_SAE}", "--sae", "b=sae_lens:gpt2-small-res-jb/blocks.2.hook_resid_pre",
                 "--sae-name", "b", "--latent", f"{NP_SAE}/3", "--out", tmp_path / "x").no_traceback()
    assert r.rc == 2 and "--sae a" in r.err and "--sae-name b" in r.err
    r = saesteer("steer-eval", "--sae", REGISTRY, "--latent", "gpt2-small/2-res-jb/3", "--topic", "ocean").no_traceback()
    assert r.rc == 2 and "'gpt2-small/2-res-jb'" in r.err and f"'sae' is {NP_SAE}" in r.err


def test_neuronpedia_references_that_do_not_fit_are_refused_naming_both(hub):
    def refused(*argv) -> str:
        r = saesteer("steer", *argv, "--prompt", "x", "--max-new-tokens", 2).no_traceback()
        assert r.rc != 0
        return r.err

    err = refused("--model", "gpt2", "--sae", "gpt2-small/1-res-jbb", "-l", "3:add=1")
    assert "'gpt2-small/1-res-jbb'" in err and "closest known: gpt2-small/1-res-jb" in err
    err = refused("--model", "gpt2", "--sae", "https://www.neuronpedia.org/gpt3-small/1-res-jb", "-l", "3:add=1")
    assert "no SAE of model 'gpt3-small' is known" in err and "gpt2-small/" in err
    err = refused("--model", "gpt2", "--sae", NP_SAE, "-l", f"{NP_SAE}/128:add=1")
    assert "latent 128" in err and "d_sae 128" in err
    err = refused("--model", "gpt2", "--sae", NP_SAE, "-l", "gpt2-small/2-res-jb/3:add=1")
    assert "'gpt2-small/2-res-jb'" in err and f"'sae' is {NP_SAE}" in err and "--sae gpt2-small/2-res-jb" in err
    err = refused("--model", "gpt2", "--sae", "made/folder", "-l", f"{NP_SAE}/3:add=1")
    assert "not on Neuronpedia" in err
    err = refused("--model", "EleutherAI/pythia-70m-deduped", "--sae", ADDRESS, "-l", f"{ADDRESS}/3:add=1")
    assert "'gpt2-small'" in err and "EleutherAI/pythia-70m-deduped" in err and "--allow-model-mismatch" in err


def test_an_id_two_registry_entries_give_is_refused_naming_both(hub, monkeypatch):
    """Were a SAELens release to give another entry the same Neuronpedia id, the id is ambiguous: it
    was taken as the first release's SAE, silently."""
    import dataclasses

    from sae_lens.loading import pretrained_saes_directory as psd

    from saes.formats import neuronpedia

    real = psd.get_pretrained_saes_directory()
    copy = dataclasses.replace(real["gpt2-small-res-jb"], release="gpt2-small-res-jb-mirror")
    monkeypatch.setattr(psd, "get_pretrained_saes_directory", lambda: {**real, "gpt2-small-res-jb-mirror": copy})
    neuronpedia.registry_ids.cache_clear()
    try:
        r = saesteer("steer", "--model", "gpt2", "--sae", NP_SAE, "-l", "3:add=1", *GEN).no_traceback()
    finally:
        neuronpedia.registry_ids.cache_clear()
    assert r.rc == 2 and REGISTRY in r.err and "sae_lens:gpt2-small-res-jb-mirror/blocks.1.hook_resid_pre" in r.err


# ---------------------------------------------------------------------------------------------
# Neuronpedia's explanations as labels


def _row(index, description, layer="1-res-jb", model="gpt2-small", **kw):
    return {"id": f"clx{index}{layer}", "modelId": model, "layer": layer, "index": str(index), "description": description,
            "explanationModelName": "gpt-4o-mini", "typeName": "oai_token-act-pair", "authorId": "np", **kw}


@pytest.fixture
def store(hub, real_corpus, tmp_path):
    """A feature store of the Neuronpedia SAE, built from its id over a cache of the processed model
    (the release reads centred writing weights)."""
    saesteer("cache", "--model", "gpt2", "--dataset", real_corpus.jsonl_dir, "--context-length", 32, "--max-tokens", 512,
             "--hooks", "blocks.1.hook_resid_pre", "--process-weights", "--out", tmp_path / "cache", "--no-progress").ok()
    saesteer("features", "build", "--sae", ADDRESS, "--cache", tmp_path / "cache", "--out", tmp_path / "np.db",
             "--no-progress").ok()
    return tmp_path / "np.db"


def test_neuronpedia_explanations_become_labels_marked_as_theirs(store, tmp_path):
    export = tmp_path / "gpt2-small_1-res-jb.json"  # the API's explanation export: one JSON array
    export.write_text(json.dumps([_row(2, "caf\u00e9 and na\u00efve: accented Latin words"),
                                  _row(5, "\u6570\u636e / data in CJK comments"), _row(7, "")]), encoding="utf-8")
    r = saesteer("label", "--store", store, "--import-neuronpedia", export).ok()
    assert "imported 2 Neuronpedia explanations of gpt2-small/1-res-jb" in r.out and "gpt-4o-mini (2)" in r.out
    assert "1 without a description" in r.out
    show = saesteer("features", "show", store, 2).ok().out
    assert "caf\u00e9 and na\u00efve" in show and "label by gpt-4o-mini (neuronpedia), prompt oai_token-act-pair" in show
    assert f"imported from Neuronpedia {NP_SAE}: {ADDRESS}/2" in show
    assert "5" in saesteer("features", "search", store, "CJK").ok().out.split()
    assert saesteer("features", "show", store, f"{ADDRESS}/2").ok().out == show  # the latent as browsed there
    r = saesteer("features", "show", store, "gpt2-small/2-res-jb/2").no_traceback()
    assert r.rc == 2 and "'gpt2-small/2-res-jb'" in r.err and f"'{NP_SAE}'" in r.err
    again = saesteer("label", "--store", store, "--import-neuronpedia", export).ok().out
    assert "imported 0 " in again and "2 imported before" in again
    from features import FeatureStore

    with FeatureStore.open(store) as s:
        p = s.label(5).provenance
        assert (p.judge_kind, p.extra["neuronpedia_id"], p.extra["explanation_id"]) == ("neuronpedia", NP_SAE, "clx51-res-jb")
        assert p.extra["url"] == f"{ADDRESS}/5"
        assert s.label(7) is None

    # Neuronpedia's dataset export (v1/MODEL/SAE/explanations/batch-N.jsonl.gz, the layout
    # features/publish.py writes too): the model's folder holds several SAEs, this store's is taken
    for sae, row in (("1-res-jb", _row(9, "closing brackets of Python calls", id="e9")),
                     ("2-res-jb", _row(9, "another SAE's latent 9", layer="2-res-jb"))):
        folder = tmp_path / "v1" / "gpt2-small" / sae / "explanations"
        folder.mkdir(parents=True)
        with gzip.open(folder / "batch-0.jsonl.gz", "wt", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    r = saesteer("label", "--store", store, "--import-neuronpedia", tmp_path / "v1" / "gpt2-small").ok()
    assert "imported 1 Neuronpedia explanation of gpt2-small/1-res-jb as labels of 1 latent (" in r.out, r.out
    # what the API's removed export route answers is not taken for an export
    gone = tmp_path / "export.json"
    gone.write_text(json.dumps({"newUrl": "https://neuronpedia-datasets.s3.us-east-1.amazonaws.com/index.html?prefix=v1/",
                                "message": "This endpoint has been removed."}), encoding="utf-8")
    r = saesteer("label", "--store", store, "--import-neuronpedia", gone).no_traceback()
    assert r.rc == 2 and "export endpoint is gone" in r.err and "neuronpedia-datasets" in r.err
    assert "closing brackets" in saesteer("features", "show", store, 9).ok().out

    # the web's feature page says whose label it is and links its Neuronpedia page
    from helpers.web_app import client
    from saesteer.web import Limits, ServeConfig, StoreEntry, create_app
    from saesteer.web.store_source import StoreCatalog

    app = create_app([StoreEntry("np", StoreCatalog(FeatureStore.open(store), name="np"))],
                     config=ServeConfig(port=8000), limits=Limits())
    with client(app) as c:
        page = c.get("/s/np/f/5", headers={"accept": "text/html"}).text
        label = c.get("/api/stores/np/features/5").json()["label"]
    assert "\u6570\u636e / data in CJK comments" in page and "by gpt-4o-mini (neuronpedia)" in page
    assert f'imported from <a href="{ADDRESS}/5" rel="noopener noreferrer">Neuronpedia {NP_SAE}</a>' in page
    assert (label["judge_kind"], label["source"], label["source_url"]) == ("neuronpedia", f"Neuronpedia {NP_SAE}",
                                                                           f"{ADDRESS}/5")
    # exported for a Neuronpedia upload, they are not sent back as saesteer's own explanations
    saesteer("features", "export", store, tmp_path / "out", "--format", "neuronpedia", "--model-id", "gpt2-small",
             "--source-set", "res-jb-again").ok()
    rows = [json.loads(line) for f in (tmp_path / "out").rglob("explanations/*.jsonl.gz")
            for line in gzip.open(f, "rt", encoding="utf-8")]
    assert rows == []


def test_a_preset_and_the_api_take_neuronpedia_latents(store, tmp_path, monkeypatch):
    """`preset save -l ADDRESS/3:...` and the API's edits (text and objects, triggers, stop_when) took
    an index only ('cannot parse edit', a 422 for an object's latent)."""
    import openai

    from helpers.api_server import api_served
    from helpers.web_app import record_server

    saesteer("preset", "save", "np", "--store", store, "-l", f"{ADDRESS}/3:clamp=4@generated?{NP_SAE}/5>1.5",
             "-l", "7:ablate", "--stop-when", f"{ADDRESS}/9>2").ok()
    preset = json.loads(saesteer("preset", "show", "np", "--store", store).ok().out)
    assert preset["edits"] == ["3:clamp=4@generated?5>1.5", "7:ablate"] and preset["stops"] == ["9>2"]
    r = saesteer("preset", "save", "x", "--store", store, "-l", "gpt2-small/2-res-jb/3:add=1").no_traceback()
    assert r.rc == 2 and "'gpt2-small/2-res-jb'" in r.err and f"'{NP_SAE}'" in r.err
    r = saesteer("preset", "save", "x", "--store", store, "-l", "3:add=1", "--stop-when", "gpt2-small/2-res-jb/9>2")
    assert r.rc == 2 and "'gpt2-small/2-res-jb'" in r.no_traceback().err

    calls = record_server(monkeypatch)
    saesteer("api", "--store", store, "--port", 0).ok()
    (app, kw), = calls
    with api_served(app, kw["port"]) as (_, client):
        model = client.models.list().data[0].id

        def complete(steering):
            out = client.completions.create(model=model, prompt="def caf\u00e9(x):", max_tokens=4, temperature=0,
                                            extra_body={"steering": steering})
            return out.choices[0].text, (out.model_extra or {})["steering"]

        by_index = complete({"edits": ["3:clamp=400?5>-1e6"], "stop_when": ["9>1e6"]})
        assert complete({"edits": [f"{ADDRESS}/3:clamp=400?{NP_SAE}/5>-1e6"], "stop_when": [f"{NP_SAE}/9>1e6"]}) == by_index
        objects = complete({"edits": [{"latent": f"{ADDRESS}/3", "op": "clamp", "value": 400,
                                       "when": {"latent": f"{NP_SAE}/5", "above": -1e6}}],
                            "stop_when": [{"latent": f"{ADDRESS}/9", "above": 1e6}]})
        assert objects[0] == by_index[0] and objects[1]["edits"] == by_index[1]["edits"]
        assert by_index[0] != complete({"edits": ["3:add=0"]})[0]
        with pytest.raises(openai.BadRequestError) as e:
            complete({"edits": ["gpt2-small/2-res-jb/3:clamp=4"]})
        assert "'gpt2-small/2-res-jb'" in str(e.value) and f"'{NP_SAE}'" in str(e.value)


@pytest.mark.parametrize("bad,named", [
    (_row(4, "a label of layer 2", layer="2-res-jb"), ["'gpt2-small/2-res-jb'", f"'{NP_SAE}'"]),
    (_row(4, "a label of another model", model="gemma-2-2b"), ["'gemma-2-2b/1-res-jb'", f"'{NP_SAE}'"]),
    (_row(128, "one past the last latent"), ["latent 128", "d_sae 128"]),
])
def test_rows_of_another_sae_or_out_of_range_refuse_the_import(store, tmp_path, bad, named):
    export = tmp_path / "rows.jsonl"
    export.write_text(json.dumps(_row(1, "a fine row")) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    r = saesteer("label", "--store", store, "--import-neuronpedia", export).no_traceback()
    assert r.rc == 2 and all(n in r.err for n in named) and f"{export}:2" in r.err, r.err
    from features import FeatureStore

    with FeatureStore.open(store) as s:
        assert s.label(1) is None  # nothing written: the fine row waits for a file that fits
    # a store of an SAE not from the registry names the flag; one that contradicts the registry is refused
    r = saesteer("label", "--store", store, "--import-neuronpedia", export, "--neuronpedia-sae", "gpt2-small/2-res-jb")
    assert r.rc == 2 and "'gpt2-small/1-res-jb'" in r.err and "'gpt2-small/2-res-jb'" in r.err


def test_a_reimport_makes_neuronpedias_label_current_again_and_exports_leave_it_out(store, tmp_path):
    """Imported labels follow one rule for every source (features/imported_labels.py, as delphi's):
    our labeller run afterwards makes ours current, a re-import makes Neuronpedia's current again
    (it answered 'imported before' and left ours), and `--export-delphi` sends only ours."""
    from features import FeatureStore

    relabel = ("label", "--store", store, "--no-progress", "--embed-backend", "none", "--overwrite", "true")
    saesteer(*relabel).ok()  # ours, by the offline labeller
    with FeatureStore.open(store) as s:
        ours = {i for i in range(s.d_sae) if s.label(i) is not None}
    assert len(ours) > 2
    theirs = sorted(ours)[:2]
    export = tmp_path / "rows.jsonl"
    export.write_text("".join(json.dumps(_row(i, f"explanation {i}: if/else branches in C")) + "\n" for i in theirs),
                      encoding="utf-8")
    saesteer("label", "--store", store, "--import-neuronpedia", export).ok()
    saesteer(*relabel).ok()
    with FeatureStore.open(store) as s:
        assert s.label(theirs[0]).provenance.judge_kind == "offline"
    r = saesteer("label", "--store", store, "--import-neuronpedia", export).ok().out
    assert "imported 2 " in r and "2 replaced a label made here" in r
    with FeatureStore.open(store) as s:
        p = s.label(theirs[0])
        assert (p.text, p.provenance.judge_kind) == (f"explanation {theirs[0]}: if/else branches in C", "neuronpedia")
    again = saesteer("label", "--store", store, "--import-neuronpedia", export).ok().out
    assert "imported 0 " in again and "2 imported before" in again

    saesteer("label", "--store", store, "--export-delphi", tmp_path / "run").ok()
    written = {int(p.stem.rsplit("latent", 1)[1]) for p in (tmp_path / "run" / "explanations").iterdir()}
    assert written == ours - set(theirs)


def test_a_gzip_that_inflates_past_the_bound_is_refused_before_it_is_read_whole(store, tmp_path, monkeypatch):
    """The bound is on what the file holds once gunzipped (it was on the compressed size)."""
    from features import FeatureStore
    from features import neuronpedia_import as npi

    monkeypatch.setattr(npi, "MAX_FILE_BYTES", 64 << 10)
    bomb = tmp_path / "batch-0.jsonl.gz"
    with gzip.open(bomb, "wt", encoding="utf-8") as f:  # a few KB on disk, megabytes inflated
        f.write(json.dumps(_row(3, "padding " * 200_000)) + "\n")
    assert bomb.stat().st_size < npi.MAX_FILE_BYTES
    with FeatureStore.open(store, readonly=False) as s, pytest.raises(npi.NeuronpediaImportError, match="gunzipped"):
        npi.import_neuronpedia_explanations(s, bomb)
    with FeatureStore.open(store) as s:
        assert s.label(3) is None


def test_names_from_the_export_are_printed_with_controls_drawn(store, tmp_path):
    export = tmp_path / "rows.jsonl"
    export.write_text(json.dumps(_row(4, "quotes", explanationModelName="\x1b]0;owned\x07gpt-4o\x1b[2J")) + "\n",
                      encoding="utf-8")
    r = saesteer("label", "--store", store, "--import-neuronpedia", export).ok()
    assert "imported 1 " in r.out and "\x1b" not in r.out and "\x07" not in r.out and "gpt-4o" in r.out


def test_a_delphi_flag_with_the_neuronpedia_import_is_refused_not_ignored(tmp_path):
    db = tmp_path / "any.db"
    db.write_bytes(b"")  # refused before the store is opened
    r = saesteer("label", "--store", db, "--import-neuronpedia", tmp_path / "rows.jsonl", "--delphi-module", "h.1")
    assert r.rc == 2 and "--delphi-module" in r.err and "--import-neuronpedia" in r.err and "Traceback" not in r.err


def test_a_batch_file_cut_short_is_refused_in_one_line(store, tmp_path):
    """An interrupted download of a batch-N.jsonl.gz: a one-line error (it was a traceback, EOFError)."""
    rows = "".join(json.dumps(_row(i, f"caf\u00e9 latent {i} \u6570\u636e")) + "\n" for i in range(128))
    data = gzip.compress(rows.encode("utf-8"))
    cut = tmp_path / "batch-0.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    r = saesteer("label", "--store", store, "--import-neuronpedia", cut).no_traceback()
    assert r.rc == 2 and "damaged gzip" in r.err and "download it again" in r.err
