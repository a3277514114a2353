"""A bad input is refused before the expensive work: the model loading, a transformers judge loading its
model, a judge's cache file being made, the whole run. Every test but one (steering.compare_methods, the
notebook's steer-eval) drives `saesteer ...` as a user does, with the loaders replaced by counters: a
refusal that comes after a load fails the test, whatever the clock says.

The store is the web tests' tiny one (helpers/web_store.py): its model stands in for the loaded one.
"""

from __future__ import annotations

import json
import shutil

import pytest

import saes
from helpers.real_cli import saesteer
from helpers.steering_fixtures import torch_threads

pytestmark = [pytest.mark.usefixtures("offline_env")]

MODEL = "tiny-test-model"  # the store records none: what a user passes, the loader (replaced) returns
LONG = " ".join(["the whale sees the harbor at the shore ."] * 12)  # over the tiny model's 64-token context


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """(the tiny store, its SAE as a --sae folder, a dead latent: no typical max in the store)."""
    from features import FeatureStore
    from helpers.web_store import build_web_store

    d = tmp_path_factory.mktemp("early")
    with torch_threads(1):
        built = build_web_store(d)
    saes.save_sae(built.sae, d / "sae")
    with FeatureStore.open(built.path) as store:
        dead = next(f for f in range(built.d_sae) if store.feature(f).stats.typical_max_act is None)
    return built, d / "sae", dead


@pytest.fixture
def loads(ws, monkeypatch):
    """The model and judge loads of one test: 'model' each time the model loads (it gets the tiny
    store's model), 'judge' each time a transformers judge would load its model (refused)."""
    import autointerp.backends
    import saesteer.models

    seen: list[str] = []

    def load_model(*a, **kw):
        seen.append("model")
        return ws[0].model

    def load_judge(*a, **kw):
        seen.append("judge")
        raise ValueError("a transformers judge is not loaded in these tests")

    monkeypatch.setattr(saesteer.models, "load_recorded_model", load_model)
    monkeypatch.setattr(saesteer.models, "load_model", load_model)  # serve's --model
    monkeypatch.setattr(autointerp.backends.TransformersBackend, "from_pretrained", load_judge)
    return seen


def refused(r, *words) -> str:
    """The one-line refusal of a run (exit 2, no traceback) holding each of `words`."""
    assert r.rc == 2, r.text[-2000:]
    r.no_traceback()
    err = r.err.strip()
    assert len(err.splitlines()) <= 2, err  # one or two lines, no dump
    for w in words:
        assert w in err, err
    return err


def judge_folder(tmp_path):
    """A local judge checkpoint folder as `save_pretrained` leaves it: only its config.json is read
    before the judge loads (`autointerp.config.check_judge`); the load itself is counted (`loads`)."""
    folder = tmp_path / "judge-model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}\n')
    return folder


def _judges(tmp_path):
    return {"transformers": ["--judge-backend", "transformers", "--judge-model", str(judge_folder(tmp_path))],
            "openai": ["--judge-model", "gpt-judge", "--judge-base-url", "http://127.0.0.1:9/v1"]}


def _scoring_cases(ws, tmp_path):
    """name -> (flags after --sae/--store, words of the refusal): what the SAE, its hook, the latent
    range and the store refuse."""
    built, sae, dead = ws
    other = tmp_path / "other-sae"
    saes.save_sae(saes.create_sae("topk", built.sae.d_in, built.d_sae, k=4,
                                  metadata={"hook_name": "blocks.0.hook_resid_post"}), other)
    return {
        "latent out of range": (["--sae", sae, "--store", built.path, "--latent", 999],
                                ["latent 999 is out of range for SAE 'sae' (d_sae 48); valid ids are 0..47"]),
        "hook contradicting the SAE": (["--sae", sae, "--store", built.path, "--latent", 3, "--hook",
                                        "blocks.1.hook_resid_post"], ["blocks.0.hook_resid_post", "--hook"]),
        "store of another SAE": (["--sae", other, "--store", built.path, "--latent", 3],
                                 [f"the store {built.path} was not built for this SAE"]),
        "no such store": (["--sae", sae, "--store", tmp_path / "nope.db", "--latent", 3], ["no feature store at"]),
    }


@pytest.mark.parametrize("judge", ["transformers", "openai"])
@pytest.mark.parametrize("command", ["sweep", "steer-eval"])
@pytest.mark.parametrize("case", ["latent out of range", "hook contradicting the SAE", "store of another SAE",
                                  "no such store"])
def test_sae_and_store_refusals_come_before_the_model_and_the_judge(ws, loads, tmp_path, command, case, judge):
    flags, words = _scoring_cases(ws, tmp_path)[case]
    out = tmp_path / ("sweeps" if command == "sweep" else "card.json")
    extra = ["--cue", "the sea"] if command == "steer-eval" else []
    r = saesteer(command, *flags, "--concept", "the sea", *_judges(tmp_path)[judge], *extra, "--out", out,
                 "--no-progress")
    refused(r, *words)
    assert loads == []
    judge_caches = [p.name for p in list(ws[0].path.parent.iterdir()) + list(tmp_path.rglob("*"))
                    if "judge-cache" in p.name]
    assert judge_caches == []


def test_sweep_of_a_latent_without_typical_max_is_refused_before_the_model(ws, loads, tmp_path):
    built, sae, dead = ws
    r = saesteer("sweep", "--sae", sae, "--store", built.path, "--latent", dead, "--concept", "the sea",
                 *_judges(tmp_path)["transformers"], "--out", tmp_path)
    refused(r, f"latent(s) {dead} have no typical max activation", "--unit raw")
    assert loads == []


@pytest.mark.parametrize("command", ["sweep", "steer-eval"])
def test_a_judge_that_cannot_rate_is_refused_before_the_model(ws, loads, tmp_path, monkeypatch, command):
    """The judge's own checks (here: Anthropic's API key) run in `check_judge`, before anything is made."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    built, sae, _ = ws
    extra = ["--cue", "the sea"] if command == "steer-eval" else []
    r = saesteer(command, "--sae", sae, "--store", built.path, "--latent", 3, "--concept", "the sea",
                 "--judge-backend", "anthropic", "--judge-model", "claude-haiku-4-5", *extra)
    refused(r, "no Anthropic API key: set ANTHROPIC_API_KEY")
    assert loads == [] and not list(built.path.parent.glob("*judge-cache*"))


def test_the_judge_loads_after_the_model_and_only_then_its_cache_is_made(ws, loads, tmp_path):
    """The order of a run that gets past every check: the model, then the judge."""
    built, sae, _ = ws
    r = saesteer("sweep", "--sae", sae, "--store", built.path, "--latent", 3, "--concept", "the sea",
                 *_judges(tmp_path)["transformers"], "--out", tmp_path / "sweeps", "--model", MODEL)
    refused(r, "a transformers judge is not loaded in these tests")
    assert loads == ["model", "judge"]


def test_steer_preset_without_a_store_is_refused_before_the_sae_and_model_load(ws, loads, monkeypatch):
    import saes.formats

    built, sae, _ = ws
    monkeypatch.setattr(saes.formats, "resolve_sae", lambda *a, **kw: pytest.fail("the SAE loaded"))
    r = saesteer("steer", "--sae", sae, "--preset", "seaward", "--prompt", "")
    refused(r, "--preset 'seaward' names a preset saved in a feature store; give --store FILE")
    r = saesteer("steer", "--sae", sae, "--preset", "missing.json", "--prompt", "")
    refused(r, "--preset missing.json: no such file")
    assert loads == []


def test_steer_preset_unknown_or_of_another_sae_is_refused_before_the_model(ws, loads, tmp_path):
    built, sae, _ = ws
    r = saesteer("steer", "--sae", sae, "--store", built.path, "--preset", "seaward", "--prompt", "")
    refused(r, "no preset named 'seaward' in the feature store")
    # a preset file saved for another SAE (its weights hash)
    preset, store = tmp_path / "seaward.json", tmp_path / "store.db"
    shutil.copy(built.path, store)
    saesteer("preset", "save", "--store", store, "seaward", "--latent", "3:add=2").ok()
    saesteer("preset", "export", "--store", store, "seaward", "--out", preset).ok()
    record = json.loads(preset.read_text())
    record["sae_fingerprint"] = "0" * 64
    preset.write_text(json.dumps(record))
    r = saesteer("steer", "--sae", sae, "--preset", preset, "--prompt", "")
    refused(r, "preset 'seaward' was made for the SAE with weights hash 000000000000")
    assert loads == []


@pytest.mark.parametrize("command", ["steer", "sweep", "steer-eval"])
def test_an_overlong_prompt_of_a_prompt_file_is_named_by_its_number_and_first_words(ws, loads, tmp_path, command):
    built, sae, _ = ws
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"the sea and the ship\n{LONG}\nbread\n")
    once = ["--samples", 1, "--do-sample", "false"]
    flags = {"steer": ["--latent", "3:add=2"],
             "sweep": ["--store", built.path, "--latent", 3, "--topic", "ocean", "--unit", "raw", "--out", tmp_path,
                       *once],
             "steer-eval": ["--store", built.path, "--latent", 3, "--topic", "ocean", *once]}[command]
    r = saesteer(command, "--sae", sae, "--model", MODEL, *flags, "--prompts-file", prompts, "--max-new-tokens", 8,
                 "--no-progress")
    refused(r, "prompt 2 of 3 ('the whale sees the harbor at ...': ", "--max-new-tokens (8)",
            "context of 64; shorten it to at most 56 tokens")
    assert "%" not in r.err  # refused before a progress bar started
    assert loads == ["model"]


def test_steer_contrast_files_are_read_before_the_model(ws, loads, tmp_path):
    built, sae, _ = ws
    (tmp_path / "pos.txt").write_text("the sea and the ship\n")
    (tmp_path / "empty.txt").write_text("\n")
    r = saesteer("steer", "--sae", sae, "--model", MODEL, "--contrast", tmp_path / "pos.txt", tmp_path / "neg.txt")
    refused(r, f"--contrast {tmp_path / 'neg.txt'}: no such file")
    r = saesteer("steer", "--sae", sae, "--model", MODEL, "--contrast", tmp_path / "pos.txt", tmp_path / "empty.txt")
    refused(r, "--contrast needs non-empty POSITIVE and NEGATIVE prompt files")
    assert loads == []


def test_sweep_out_that_is_a_file_is_refused_before_the_model(ws, loads, tmp_path):
    built, sae, _ = ws
    out = tmp_path / "notes.txt"
    out.write_text("mine\n")
    r = saesteer("sweep", "--sae", sae, "--store", built.path, "--latent", 3, "--topic", "ocean", "--model", MODEL,
                 "--out", out)
    refused(r, f"--out {out} is a file", "give a folder")
    assert loads == [] and out.read_text() == "mine\n"


def test_cache_refuses_local_data_that_is_not_there_before_the_model(loads, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("Ça va? 東京の天気は晴れ。\ndef parse(line):\n    return line.split()\n")
    r = saesteer("cache", "--model", MODEL, "--dataset", tmp_path / "nope.jsonl", "--out", tmp_path / "c", "--no-progress")
    refused(r, f"dataset '{tmp_path / 'nope.jsonl'}': no such file or directory")
    r = saesteer("cache", "--model", MODEL, "--dataset", text, "--split", "validation", "--out", tmp_path / "c",
                 "--no-progress")
    refused(r, "has no split 'validation' (a single file is the split 'train')", "--split")
    assert loads == [] and not (tmp_path / "c").exists()


def _cache(tmp_path):
    """An activation cache at the tiny SAE's hook (random rows: only its manifest is read here)."""
    from helpers.fake_cache import make_fake_cache
    from helpers.web_store import HOOK

    return make_fake_cache(tmp_path / "cache", shard_rows=[16], d_in=32, hooks=[HOOK]).path


def _flag_cases(ws, tmp_path):
    """name -> (argv, words of the refusal): what the flags and the store refuse, each once found only
    after the model had loaded (or after the whole run)."""
    built, sae, dead = ws
    common = ["--sae", sae, "--store", built.path, "--model", MODEL]
    (tmp_path / "notes.txt").write_text("mine\n")
    return {
        "steer 'x' of a latent without typical max": (
            ["steer", *common, "--latent", f"{dead}:add=2x", "--prompt", "the sea"],
            [f"{dead}:add=2x: no typical max activation is known for latent {dead}", "give a raw value"]),
        "steer 'x' trigger of a latent without typical max": (
            ["steer", *common, "--latent", f"3:add=2?{dead}>1x", "--prompt", "the sea"],
            [f"no typical max activation is known for latent {dead}", "give a raw threshold"]),
        "steer --search --generate finding nothing": (
            ["steer", *common, "--search", "zzqx", "--generate", "--prompt", "the sea"],
            ["no latent was found to steer with"]),
        "eval --split the data has not": (
            ["eval", "--sae", sae, "--model", MODEL, "--dataset", tmp_path / "notes.txt", "--split", "validation",
             "--no-progress"], ["has no split 'validation' (a single file is the split 'train')", "--split"]),
        "train --out a file": (
            ["train", "--model", MODEL, "--dataset", tmp_path / "notes.txt", "--out", tmp_path / "notes.txt",
             "--architecture", "topk", "--d-sae", 64, "--k", 4, "--no-progress"],
            [f"--out {tmp_path / 'notes.txt'} is a file; training writes a folder"]),
        "features build --out a folder": (
            ["features", "build", "--sae", sae, "--cache", _cache(tmp_path), "--model", MODEL, "--out", tmp_path,
             "--no-progress"], [f"--out {tmp_path} is a folder; the feature store is one file"]),
        "steer-eval --save-preset name": (
            ["steer-eval", *common, "--topic", "ocean", "--latent", 3, "--save-preset", "sea ward/1"],
            ["--save-preset preset name 'sea ward/1': use 1-64 letters"]),
        "steer-eval --out a folder": (
            ["steer-eval", *common, "--topic", "ocean", "--latent", 3, "--out", tmp_path],
            [f"--out {tmp_path} is a folder; the scorecard is a JSON file"]),
        "eval --out a file": (
            ["eval", "--sae", sae, "--model", MODEL, "--out", tmp_path / "notes.txt", "--no-progress"],
            [f"--out {tmp_path / 'notes.txt'} is a file; eval writes eval.json and eval.html into a folder"]),
    }


@pytest.mark.parametrize("case", ["steer 'x' of a latent without typical max",
                                  "steer 'x' trigger of a latent without typical max",
                                  "steer --search --generate finding nothing",
                                  "steer-eval --save-preset name", "steer-eval --out a folder", "eval --out a file",
                                  "eval --split the data has not", "train --out a file",
                                  "features build --out a folder"])
def test_flags_and_store_refusals_come_before_the_model(ws, loads, tmp_path, case):
    argv, words = _flag_cases(ws, tmp_path)[case]
    refused(saesteer(*argv), *words)
    assert loads == []


@pytest.fixture
def neuronpedia_store(ws, tmp_path):
    """A copy of the tiny store whose labels were imported from Neuronpedia as the SAE mymodel/0-res:
    only the store knows its SAE by that id (SAELens's registry does not)."""
    store, rows = tmp_path / "np.db", tmp_path / "np.jsonl"
    shutil.copy(ws[0].path, store)
    rows.write_text(json.dumps({"modelId": "mymodel", "layer": "0-res", "index": 3, "description": "café menus",
                                "explanationModelName": "gpt-4o", "id": "e3"}) + "\n")
    saesteer("label", "--store", store, "--import-neuronpedia", rows, "--neuronpedia-sae", "mymodel/0-res").ok()
    return store


def test_a_neuronpedia_latent_the_store_knows_steers_and_another_sae_s_is_refused_before_the_model(
        ws, loads, neuronpedia_store):
    built, sae, _ = ws
    common = ["--sae", sae, "--store", neuronpedia_store, "--model", MODEL]
    r = saesteer("steer", *common, "--latent", "https://www.neuronpedia.org/mymodel/0-res/3:add=2", "--prompt",
                 "the sea", "--max-new-tokens", 3, "--do-sample", "false", "--json", "--no-progress").ok()
    assert json.loads(r.out)["edits"] == "3:add=2" and loads == ["model"]
    for command, latent in [("steer", "mymodel/1-res/3:add=2"), ("sweep", "mymodel/1-res/3"),
                            ("steer-eval", "mymodel/1-res/3")]:
        r = saesteer(command, *common, "--latent", latent, "--topic", "ocean") if command != "steer" else \
            saesteer(command, *common, "--latent", latent, "--prompt", "the sea")
        refused(r, "latent 3 of the Neuronpedia SAE 'mymodel/1-res' is not of a --sae given", "('sae' is mymodel/0-res)")
    assert loads == ["model"]


@pytest.mark.parametrize("command", ["serve", "api"])
def test_serve_refuses_a_busy_port_and_a_sae_per_store_miscount_before_the_model(ws, loads, command):
    import socket

    built, sae, _ = ws
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = saesteer(command, "--store", built.path, "--model", MODEL, "--port", port)
        refused(r, f"cannot listen on 127.0.0.1:{port}", "choose another --port")
    r = saesteer(command, "--store", built.path, "--sae", sae, "--sae", sae, "--model", MODEL, "--port", 0)
    refused(r, "got 2 --sae folder(s) for 1 --store file(s); give one --sae per --store")
    assert loads == []


def test_label_refuses_latents_and_a_report_folder_before_the_judge_and_the_labelling(ws, loads, tmp_path,
                                                                                    monkeypatch):
    import autointerp.runner

    built = ws[0]
    store = tmp_path / "store.db"
    shutil.copy(built.path, store)
    monkeypatch.setattr(autointerp.runner, "label_latents", lambda *a, **kw: pytest.fail("labelled first"))
    r = saesteer("label", "--store", store, "--latents", "5000-5002", *_judges(tmp_path)["transformers"],
                 "--no-progress")
    refused(r, "latents [5000, 5001, 5002] cannot be labelled")
    assert loads == [] and not list(tmp_path.glob("*judge-cache*"))
    r = saesteer("label", "--store", store, "--latents", "0-1", "--report", tmp_path / "no/such/report.json",
                 "--embed-backend", "none", "--no-progress")
    refused(r, f"--report {tmp_path / 'no/such/report.json'}: the folder {tmp_path / 'no/such'} does not exist")


def test_compare_methods_refuses_a_latent_out_of_range_before_generating(ws, monkeypatch):
    """The library's steer-eval: one range check, one wording (steering.resolve.check_latent_index),
    before the unsteered generation."""
    import steering.methods
    from saesteer.toyscore import toy_scorer
    from steering.spec import SteeringError

    built = ws[0]
    monkeypatch.setattr(steering.methods, "generate", lambda *a, **kw: pytest.fail("generated first"))
    with pytest.raises(SteeringError, match=r"^latent 48 is out of range for SAE 'sae' \(d_sae 48\); valid ids are 0\.\.47$"):
        steering.methods.compare_methods(built.model, built.sae, toy_scorer("ocean"), prompts=["the sea"],
                                         latents=[3, 48])


def test_seed_help_says_when_the_api_seeds_a_request():
    """The API samples a request's choice i from seed + i only when the request gives a seed (without
    one, each choice draws a fresh seed): the --seed help of the generating commands says so."""
    for command in ("steer", "sweep", "steer-eval"):
        text = " ".join(saesteer(command, "--help").out.split())
        assert "a request that gives a seed samples its choice i from seed + i" in text
        assert "seeds each request" not in text
