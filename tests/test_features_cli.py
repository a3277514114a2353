"""`saesteer features ...` end to end on the toy model: cache -> build -> show/list/search/export/top-on-text."""

import json

import pytest
import torch

from saesteer.cli import main

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    import saes

    d = tmp_path_factory.mktemp("cli")
    assert main(["cache", "--model", "toy", "--dataset", "toy", "--max-tokens", "4096", "--shard-contexts", "8",
                 "--hooks", HOOK, "--out", str(d / "cache"), "--no-progress"]) == 0
    sae = saes.create_sae("topk", 128, 64, k=8, generator=torch.Generator().manual_seed(0),
                          metadata={"hook_name": HOOK, "model_name": "toyworld-tiny"})
    saes.save_sae(sae, d / "sae")
    return d


def test_cli_build_show_list_search_export(toy, capsys):
    d = toy
    store = str(d / "f.db")
    args = ["features", "build", "--sae", str(d / "sae"), "--cache", str(d / "cache"), "--out", store, "--no-progress",
            "--top-k", "5", "--n-quantile", "6", "--window-before", "6", "--window-after", "2", "--write-block", "16"]
    assert main(args) == 0
    assert "done in" in capsys.readouterr().out
    assert main(args) == 0 and "already complete" in capsys.readouterr().out

    from features import FeatureStore

    with FeatureStore.open(store) as st:
        top = st.list_features(sort="freq", limit=1)[0].latent
        word = st.feature(top).top_examples[0].tokens[st.feature(top).top_examples[0].centre].strip()
        assert st.meta["logit_method"] and st.feature(top).logits.promoted  # the cache's model was loaded
    assert main(["features", "show", store, str(top)]) == 0
    out = capsys.readouterr().out
    assert f"feature {top}" in out and "promotes" in out and "top examples" in out
    assert main(["features", "show", store, "64"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["features", "list", store, "--sort", "max_act", "--limit", "5"]) == 0
    assert "64 latents match" in capsys.readouterr().out
    assert main(["features", "search", store, word]) == 0
    assert str(top) in capsys.readouterr().out
    assert main(["features", "export", store, str(d / "dash"), "--latents", f"0-3,{top}", "--no-progress"]) == 0
    assert len(list((d / "dash" / "f").glob("*.html"))) == len({0, 1, 2, 3, top})
    capsys.readouterr()
    assert main(["features", "export", store, str(d / "dash2"), "--latents", "0-x", "--no-progress"]) == 2
    assert "--latents: cannot read '0-x'" in capsys.readouterr().err  # the flag, not another command's field
    assert main(["features", "top-on-text", store, "the sailor sees a big whale ."]) == 0
    out = capsys.readouterr().out
    assert "whale" in out and "strongest over the text" in out
    assert main(["features", "top-on-text", store, " ".join(["whale"] * 200)]) == 2  # never silently cut
    err = capsys.readouterr().err
    assert "the text is 201 tokens long, more than the model's context of" in err and "shorten it" in err


def test_cli_refuses_a_store_of_another_sae(toy, capsys, tmp_path):
    import saes

    other = saes.create_sae("topk", 128, 64, k=8, generator=torch.Generator().manual_seed(1), metadata={"hook_name": HOOK})
    saes.save_sae(other, tmp_path / "other")
    store = str(toy / "f.db")
    if not (toy / "f.db").exists():
        pytest.skip("needs the store of the previous test")
    code = main(["features", "build", "--sae", str(tmp_path / "other"), "--cache", str(toy / "cache"), "--out", store,
                 "--no-progress", "--top-k", "5", "--n-quantile", "6", "--window-before", "6", "--window-after", "2",
                 "--write-block", "16"])
    assert code == 2 and "refusing" in capsys.readouterr().err
    assert main(["features", "top-on-text", store, "a whale", "--sae", str(tmp_path / "other")]) == 2
    assert "another SAE" in capsys.readouterr().err


def test_top_on_text_feeds_the_bos_the_sae_was_trained_with(toy, capsys, tmp_path):
    """Without a flag, the text gets BOS as the SAE's cfg.json records (`prepend_bos`, as
    `saesteer cache` writes it), as steer and the web app do; --prepend-bos overrides it."""
    import saes

    def first_token(*extra):
        assert main(["features", "top-on-text", "the sailor sees a whale", "--model", "toy", *extra]) == 0
        rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith(("│", "|"))]
        return next(ln for ln in rows if ln.strip("│| ").startswith("0 "))

    for recorded in (False, True):
        sae = saes.create_sae("topk", 128, 64, k=8, generator=torch.Generator().manual_seed(0),
                              metadata={"hook_name": HOOK, "model_name": "toyworld-tiny", "prepend_bos": recorded})
        saes.save_sae(sae, tmp_path / f"bos-{recorded}")
        sae_flag = ("--sae", str(tmp_path / f"bos-{recorded}"))
        assert ("'<bos>'" in first_token(*sae_flag)) is recorded
        assert "'<bos>'" in first_token(*sae_flag, "--prepend-bos", "true")
        assert "'<bos>'" not in first_token(*sae_flag, "--prepend-bos", "false")
        assert "'<bos>'" not in first_token(*sae_flag, "--no-bos")
    assert main(["features", "top-on-text", "a whale", "--model", "toy", *sae_flag, "--no-bos", "--prepend-bos", "true"]) == 2
    assert "--no-bos and --prepend-bos true contradict" in capsys.readouterr().err


def test_a_doc_policy_sae_reads_a_prompt_after_bos(toy, capsys, tmp_path):
    """An SAE trained here with `--bos-policy doc` saw BOS before every document's start, but its
    cfg.json records prepend_bos=false (for SAELens: its contexts, plain slices of the stream, do
    not start with BOS). A prompt is a document's start, so it gets BOS (the policy is read from
    saesteer.json); `top-on-text` fed it without. An explicit --prepend-bos still wins."""
    import saes

    sae = saes.create_sae("topk", 128, 64, k=8, generator=torch.Generator().manual_seed(0),
                          metadata={"hook_name": HOOK, "model_name": "toyworld-tiny", "prepend_bos": False})
    for policy in ("doc", "none"):  # as `saesteer train` records a cache's policy
        saes.save_sae(sae, tmp_path / policy, provenance={"tool": "saesteer", "data": {"bos_policy": policy}})

    def first_token(*extra):
        assert main(["features", "top-on-text", "the sailor sees a whale", "--model", "toy", *extra]) == 0
        rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith(("│", "|"))]
        return next(ln for ln in rows if ln.strip("│| ").startswith("0 "))

    assert "'<bos>'" in first_token("--sae", str(tmp_path / "doc"))
    assert "'<bos>'" not in first_token("--sae", str(tmp_path / "none"))
    assert "'<bos>'" not in first_token("--sae", str(tmp_path / "doc"), "--prepend-bos", "false")
    assert json.loads((tmp_path / "doc" / "cfg.json").read_text())["metadata"]["prepend_bos"] is False


def test_build_checks_the_sae_against_the_cache_once_and_the_library_alone_still_checks(toy, tmp_path, monkeypatch,
                                                                                       capsys):
    """`features build` checks BOS and the model's weight processing before it loads the model; the
    library build it then calls does not check them again (each ran twice). Called alone, the
    library still checks them."""
    import collections

    import features.checks
    import saes.processing
    from features import CacheSource, build_feature_store
    from saes.formats import resolve_sae

    calls: collections.Counter = collections.Counter()

    def counted(name, real):
        def check(*a, **kw):
            calls[name] += 1
            return real(*a, **kw)
        return check

    monkeypatch.setattr(features.checks, "check_cache_bos", counted("bos", features.checks.check_cache_bos))
    monkeypatch.setattr(saes.processing, "check_processing", counted("processing", saes.processing.check_processing))
    d = toy
    assert main(["features", "build", "--sae", str(d / "sae"), "--cache", str(d / "cache"), "--out",
                 str(tmp_path / "f.db"), "--no-progress", "--top-k", "3", "--n-quantile", "4"]) == 0, capsys.readouterr().err
    assert calls == {"bos": 1, "processing": 1}, calls
    calls.clear()
    build_feature_store(tmp_path / "g.db", resolve_sae(str(d / "sae"), device="cpu"), CacheSource(d / "cache", hook=HOOK),
                        progress=False)
    assert calls == {"bos": 1, "processing": 1}, calls


def _small_store(tmp_path):
    """A store of an SAE SAELens's registry does not know, built in a second."""
    from features import build_feature_store
    from helpers.feature_fixtures import WordTokenizer, make_sae, random_source, small_config

    store = tmp_path / "s.db"
    build_feature_store(store, make_sae("topk", d_in=8, d_sae=6, seed=1), random_source(seed=1, n_contexts=8,
                        context_length=8, vocab=8), small_config(), tokenizer=WordTokenizer([f"w{i}" for i in range(8)]),
                        progress=False)
    return store


def test_show_takes_the_neuronpedia_address_of_an_sae_its_labels_were_imported_as(tmp_path, capsys):
    """An SAE SAELens's registry does not know, imported with --neuronpedia-sae: `features show`
    takes that SAE's Neuronpedia latents (it refused them, saying the SAE is not on Neuronpedia), and
    still refuses another SAE's, naming both."""
    store = _small_store(tmp_path)
    rows = tmp_path / "np.jsonl"
    rows.write_text(json.dumps({"modelId": "mymodel", "layer": "3-res", "index": 4, "description": "café menus",
                                "explanationModelName": "gpt-4o", "id": "e4"}) + "\n")
    assert main(["features", "show", str(store), "mymodel/3-res/4"]) == 2
    assert "is not of the store's SAE (it is not on Neuronpedia" in capsys.readouterr().err
    assert main(["label", "--store", str(store), "--import-neuronpedia", str(rows),
                 "--neuronpedia-sae", "mymodel/3-res"]) == 0
    capsys.readouterr()
    assert main(["features", "show", str(store), "https://www.neuronpedia.org/mymodel/3-res/4"]) == 0
    assert "feature 4: café menus" in capsys.readouterr().out
    assert main(["features", "show", str(store), "mymodel/5-res/4"]) == 2
    err = capsys.readouterr().err
    assert "'mymodel/5-res'" in err and "'mymodel/3-res', its Neuronpedia labels' SAE" in err


def test_a_neuronpedia_export_folder_copied_with_appledouble_files_imports(tmp_path, capsys):
    """A dataset export copied from a Mac to another disk holds `._batch-0.jsonl.gz` beside each
    batch (AppleDouble metadata, no rows): hidden files are left out (it refused the import as not
    UTF-8 text)."""
    import gzip

    store = _small_store(tmp_path)
    exp = tmp_path / "v1" / "mymodel" / "3-res" / "explanations"
    exp.mkdir(parents=True)
    row = {"modelId": "mymodel", "layer": "3-res", "index": 2, "description": "東京 and Paris", "id": "e2"}
    (exp / "batch-0.jsonl.gz").write_bytes(gzip.compress((json.dumps(row) + "\n").encode()))
    (exp / "._batch-0.jsonl.gz").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \xff\xfe")
    assert main(["label", "--store", str(store), "--import-neuronpedia", str(tmp_path / "v1"),
                 "--neuronpedia-sae", "mymodel/3-res"]) == 0, capsys.readouterr().err
    assert "imported 1 Neuronpedia explanation of" in capsys.readouterr().out


@pytest.mark.parametrize("named", ["https://www.neuronpedia.org/mymodel/3-res", "neuronpedia.org/mymodel/3-res/",
                                   "https://www.neuronpedia.org/mymodel/3-res/4"])
def test_neuronpedia_sae_takes_the_saes_page_address_as_the_other_flags_do(tmp_path, capsys, named):
    """--sae, -l and `features show` take a Neuronpedia address; --neuronpedia-sae took the copied page
    address as the id itself and refused every row as another SAE's."""
    store = _small_store(tmp_path)
    rows = tmp_path / "np.jsonl"
    rows.write_text(json.dumps({"modelId": "mymodel", "layer": "3-res", "index": 4, "description": "café menus",
                                "explanationModelName": "gpt-4o", "id": "e4"}) + "\n")
    assert main(["label", "--store", str(store), "--import-neuronpedia", str(rows), "--neuronpedia-sae", named]) == 0, \
        capsys.readouterr().err
    assert "imported 1 Neuronpedia explanation of mymodel/3-res as labels of 1 latent" in capsys.readouterr().out
    assert main(["features", "show", str(store), "mymodel/3-res/4"]) == 0
    assert "feature 4: café menus" in capsys.readouterr().out
    assert main(["label", "--store", str(store), "--import-neuronpedia", str(rows), "--neuronpedia-sae", "mymodel"]) == 2
    assert "--neuronpedia-sae" in capsys.readouterr().err


def test_search_help_names_the_stores_part_cap():
    """The parser writes the substring search's cap out (importing it would load the store package at
    `--help`); it must say the number the store enforces."""
    import re

    from features.store.substring import MAX_PARTS
    from saesteer.cli import build_parser

    search = build_parser()._subparsers._group_actions[0].choices["features"]
    search = search._subparsers._group_actions[0].choices["search"]
    help_text = next(a.help for a in search._actions if a.dest == "text")
    assert re.search(r"at most (\d+) space-separated", help_text).group(1) == str(MAX_PARTS)
