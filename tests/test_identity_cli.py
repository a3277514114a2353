"""One model identity through the CLI chain, on two tiny local GPT-2 checkpoints (A and B, same
shapes, different weights): cache -> train -> features build with A; then every command without
--model runs A (never the toy model), --model B is refused naming both models and
--allow-model-mismatch, the store's SAE path is absolute (serve from another directory steers),
browse-only stores say why, and records from older versions still work."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from saesteer.cli import main

HOOK = "blocks.1.hook_resid_post"
OVERRIDE = "--allow-model-mismatch"


class Chain:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.a, self.b = root / "model-a", root / "model-b"
        self.text = root / "text.txt"
        self.eval_text = root / "eval.txt"  # held-out text for the CE evaluation (not the training file)
        self.cache, self.cache_b = root / "cache-a", root / "cache-b"
        self.run = root / "run"
        self.sae = self.run / "saes" / "s"
        self.store = root / "s.db"

    def id_of(self, model_dir: Path) -> str:
        from saesteer.models import local_weights_sha256

        return f"local:{model_dir.name}#sha256:{local_weights_sha256(model_dir)[:16]}"


def _cache(model: Path, text: Path, out: Path, tokens: int) -> None:
    assert main(["cache", "--model", str(model), "--dataset", str(text), "--context-length", "16", "--max-tokens",
                 str(tokens), "--hooks", HOOK, "--out", str(out), "--no-progress"]) == 0


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    from helpers.tiny_hf import _TEXT, save_tiny_gpt2

    c = Chain(tmp_path_factory.mktemp("identity"))
    save_tiny_gpt2(c.a, seed=0)
    save_tiny_gpt2(c.b, seed=1)
    c.text.write_text("\n".join(_TEXT * 20), encoding="utf-8")
    c.eval_text.write_text("\n".join(f"{a} {b}" for a, b in zip(_TEXT, reversed(_TEXT))), encoding="utf-8")
    _cache(c.a, c.text, c.cache, 1024)
    _cache(c.b, c.text, c.cache_b, 256)
    assert main(["train", "--cache", str(c.cache), "--out", str(c.run), "--d-sae", "64", "--k", "4", "--total-tokens",
                 "1024", "--batch-size", "128", "--holdout-tokens", "256", "--progress", "false", "--eval-ce-contexts",
                 "4", "--eval-dataset", str(c.eval_text), "--sae-name", "s"]) == 0
    with pytest.MonkeyPatch.context() as mp:  # the SAE named relatively, from the chain's directory
        mp.chdir(c.root)
        assert main(["features", "build", "--sae", "run/saes/s", "--cache", "cache-a", "--out", "s.db",
                     "--no-progress"]) == 0
    return c


@pytest.fixture
def loads(monkeypatch):
    """The specs `saesteer.models.load_model` is called with (the model each command really runs)."""
    import saesteer.models as models

    seen: list[str] = []
    real = models.load_model

    def spy(spec, *a, **kw):
        seen.append(spec)
        return real(spec, *a, **kw)

    monkeypatch.setattr(models, "load_model", spy)
    return seen


# ------------------------------------------------------------------------------------ records
def test_every_file_records_the_model_absolutely(chain):
    from features import FeatureStore

    ident_a = chain.id_of(chain.a)
    man = json.loads((chain.cache / "manifest.json").read_text())
    assert man["model"]["id"] == ident_a
    rec = man["model_identity"]
    assert rec["source"] == "local" and rec["path"] == str(chain.a.resolve()) and len(rec["weights_sha256"]) == 64
    prov = json.loads((chain.sae / "saesteer.json").read_text())
    assert prov["model_identity"] == rec and prov["model"] == ident_a
    meta = json.loads((chain.sae / "cfg.json").read_text())["metadata"]
    assert meta["model_name"] == str(chain.a.resolve())  # what SAELens users load the model by
    with FeatureStore.open(chain.store) as store:
        assert store.meta["model_identity"] == rec
        assert store.meta["sae"]["path"] == str(chain.sae.resolve())  # built with --sae run/saes/s
    metrics = json.loads((chain.run / "metrics.json").read_text())
    assert metrics["saes"]["s"]["ce_loss_recovered"] is not None  # train found the model without --model


def test_our_sae_still_loads_in_sae_lens(chain):
    sae_lens = pytest.importorskip("sae_lens")
    sae = sae_lens.SAE.load_from_disk(str(chain.sae), device="cpu")
    assert sae.cfg.metadata.model_name == str(chain.a.resolve()) and sae.cfg.metadata.hook_name == HOOK


# ------------------------------------------------------------------------------------ without --model
def _steer_args(chain, *extra):
    return ["steer", "--sae", str(chain.sae), "-l", "3:add=4", "-p", "the crabs", "--max-new-tokens", "3", "--json",
            *extra]


def test_steer_without_model_runs_the_recorded_model(chain, loads, capsys):
    assert main(_steer_args(chain)) == 0
    assert loads == [str(chain.a.resolve())]
    recorded = json.loads(capsys.readouterr().out)
    assert main(_steer_args(chain, "--model", str(chain.a))) == 0
    assert json.loads(capsys.readouterr().out) == recorded  # the same as naming model A


def test_sweep_and_top_on_text_without_model_run_the_recorded_model(chain, loads, tmp_path, capsys):
    assert main(["sweep", "--sae", str(chain.sae), "--store", str(chain.store), "-l", "3", "--topic", "ocean",
                 "--samples", "1", "--strengths", "0,1", "--max-new-tokens", "2", "--out", str(tmp_path)]) == 0
    assert main(["features", "top-on-text", str(chain.store), "the crabs swim"]) == 0
    assert loads == [str(chain.a.resolve())] * 2
    assert "latents firing on" in capsys.readouterr().out


def test_build_and_train_without_model_use_the_cache_model(chain, loads, tmp_path, capsys):
    assert main(["features", "build", "--sae", str(chain.sae), "--cache", str(chain.cache), "--out",
                 str(tmp_path / "again.db"), "--no-progress", "--write-block", "64"]) == 0
    assert chain.id_of(chain.a) in capsys.readouterr().out.replace("\n", "")
    assert main(["train", "--cache", str(chain.cache), "--out", str(tmp_path / "run"), "--d-sae", "16", "--k", "2",
                 "--total-tokens", "256", "--batch-size", "128", "--holdout-tokens", "128", "--progress", "false",
                 "--eval-ce-contexts", "2", "--eval-dataset", str(chain.eval_text)]) == 0
    assert loads == [str(chain.a.resolve())] * 2


def test_cache_resume_without_model_uses_the_cache_model(chain, loads, capsys):
    assert main(["cache", "--out", str(chain.cache), "--dataset", str(chain.text), "--context-length", "16",
                 "--max-tokens", "1024", "--hooks", HOOK, "--no-progress"]) == 0
    assert loads == [str(chain.a.resolve())]
    assert "already complete" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ wrong --model
def _refused(capsys, chain) -> str:
    err = capsys.readouterr().err
    assert chain.id_of(chain.a) in err and chain.id_of(chain.b) in err and OVERRIDE in err, err
    return err


def test_a_wrong_model_is_refused_everywhere(chain, capsys, tmp_path, monkeypatch):
    from helpers.web_app import record_server

    record_server(monkeypatch)  # were serve to accept it, it would not block
    b = str(chain.b)
    assert main(_steer_args(chain, "--model", b)) == 2
    _refused(capsys, chain)
    assert main(["sweep", "--sae", str(chain.sae), "--unit", "raw", "-l", "3", "--topic", "ocean", "--samples", "1", "--strengths",
                 "0,1", "--model", b, "--out", str(tmp_path)]) == 2
    _refused(capsys, chain)
    assert main(["features", "top-on-text", str(chain.store), "the crabs", "--model", b]) == 2
    _refused(capsys, chain)
    assert main(["features", "build", "--sae", str(chain.sae), "--cache", str(chain.cache), "--out",
                 str(tmp_path / "x.db"), "--model", b, "--no-progress"]) == 2
    _refused(capsys, chain)
    assert main(["train", "--cache", str(chain.cache), "--out", str(tmp_path / "run"), "--model", b, "--d-sae", "16",
                 "--k", "2", "--total-tokens", "256", "--batch-size", "128", "--holdout-tokens", "128",
                 "--progress", "false"]) == 2
    _refused(capsys, chain)
    assert main(["serve", "--store", str(chain.store), "--model", b]) == 2
    _refused(capsys, chain)
    assert main(["eval", "--sae", str(chain.sae), "--model", b, "--dataset", str(chain.eval_text),
                 "--out", str(tmp_path / "eval"), "--quiet"]) == 2
    _refused(capsys, chain)
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "run" / "saes").exists()


def test_an_sae_is_refused_with_the_cache_of_another_model(chain, capsys, tmp_path):
    assert main(["features", "build", "--sae", str(chain.sae), "--cache", str(chain.cache_b), "--out",
                 str(tmp_path / "x.db"), "--no-progress"]) == 2
    err = _refused(capsys, chain)
    assert str(chain.cache_b) in err and "SAE" in err


def test_the_override_runs_the_given_model(chain, loads, capsys):
    assert main(_steer_args(chain, "--model", str(chain.b), OVERRIDE)) == 0
    assert loads == [str(chain.b)]
    assert json.loads(capsys.readouterr().out)["results"][0]["prompt"] == "the crabs"


# ------------------------------------------------------------------------------------ serve
def _serve_app(monkeypatch, *argv):
    from helpers.web_app import free_port, record_server

    calls = record_server(monkeypatch)
    port = free_port()
    assert main(["serve", "--port", str(port), *argv]) == 0
    (app, kw), = calls
    return app, port


def test_serve_from_another_directory_steers_with_the_recorded_model(chain, loads, monkeypatch, tmp_path, capsys):
    from helpers.web_app import client

    monkeypatch.chdir(tmp_path)
    app, port = _serve_app(monkeypatch, "--store", str(chain.store))
    assert loads == [str(chain.a.resolve())]
    assert "browse + steer" in capsys.readouterr().err
    c = client(app, base_url=f"http://127.0.0.1:{port}")
    info = c.get("/api/stores").json()[0]
    assert info["can_steer"] and info["browse_only_reason"] is None and info["model"] == chain.id_of(chain.a)
    r = c.post(f"/api/stores/{info['id']}/steer",
               json={"prompt": "the crabs", "max_new_tokens": 3, "edits": [{"latent": 3, "op": "add", "value": 4}]})
    assert r.status_code == 200 and r.json()["prompt"] == "the crabs"


def _store_copy(chain, tmp_path: Path, name: str, **meta_updates) -> Path:
    """A copy of the chain's store with some meta keys replaced (None deletes the key)."""
    path = tmp_path / f"{name}.db"
    shutil.copy(chain.store, path)
    con = sqlite3.connect(path)
    with con:
        for key, value in meta_updates.items():
            if value is None:
                con.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                con.execute("UPDATE meta SET value = ? WHERE key = ?", (json.dumps(value), key))
    con.close()
    return path


def test_browse_only_stores_say_why(chain, monkeypatch, tmp_path, capsys):
    from helpers.web_app import client

    from features import FeatureStore

    with FeatureStore.open(chain.store) as st:
        sae_meta = dict(st.meta["sae"])
    gone = _store_copy(chain, tmp_path, "gone", sae={**sae_meta, "path": str(tmp_path / "moved-sae")})
    app, port = _serve_app(monkeypatch, "--store", str(gone))
    assert "moved-sae does not exist any more" in capsys.readouterr().err
    page = client(app, base_url=f"http://127.0.0.1:{port}").get("/s/gone/steer").text
    assert "browse-only" in page and "moved-sae does not exist any more" in page
    # a store from an older version: the SAE path as typed at build time, relative to another directory
    relative = _store_copy(chain, tmp_path, "relative", sae={**sae_meta, "path": "run/saes/s"})
    monkeypatch.chdir(tmp_path)
    _serve_app(monkeypatch, "--store", str(relative))
    err = capsys.readouterr().err
    assert "recorded relative to the directory the store was built in" in err and "--sae DIR" in err
    _serve_app(monkeypatch, "--store", str(chain.store), "--model", "none")
    assert "browse only: the server was started with --model none" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ older records
def _old_copy_of_sae(chain, tmp_path: Path) -> Path:
    """The chain's SAE as an older saesteer wrote it: saesteer.json names the model by id only."""
    old = tmp_path / "old-sae"
    shutil.copytree(chain.sae, old)
    prov = json.loads((old / "saesteer.json").read_text())
    del prov["model_identity"]
    (old / "saesteer.json").write_text(json.dumps(prov))
    return old


def test_older_records_fall_back_to_a_loadable_record_or_ask_for_model(chain, tmp_path, capsys, loads):
    """Records from before model_identity: a local model's id has no directory. Where another
    record has one (a new SAE over an old cache) it is used; else the command says to pass
    --model, and with --model the id's hash still catches the wrong model."""
    old_cache = tmp_path / "old-cache"
    shutil.copytree(chain.cache, old_cache)
    man = json.loads((old_cache / "manifest.json").read_text())
    del man["model_identity"]
    (old_cache / "manifest.json").write_text(json.dumps(man))
    assert main(["features", "build", "--sae", str(chain.sae), "--cache", str(old_cache), "--out",
                 str(tmp_path / "x.db"), "--no-progress"]) == 0
    assert loads == [str(chain.a.resolve())]  # the SAE's record names the directory
    old_sae = _old_copy_of_sae(chain, tmp_path)
    assert main(["features", "build", "--sae", str(old_sae), "--cache", str(old_cache), "--out",
                 str(tmp_path / "y.db"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "without its directory" in err and "--model" in err and "--model none" in err
    with sqlite3.connect(chain.store) as con:
        sae_meta = json.loads(con.execute("SELECT value FROM meta WHERE key = 'sae'").fetchone()[0])
    old_store = _store_copy(chain, tmp_path, "old", model_identity=None, sae={**sae_meta, "path": str(old_sae)},
                            cache={"kind": "cache", "model": chain.id_of(chain.a)})
    assert main(["features", "top-on-text", str(old_store), "the crabs"]) == 2
    err = capsys.readouterr().err
    assert "without its directory" in err and "--model" in err
    assert main(["steer", "--sae", str(old_sae), "-l", "3:add=4", "-p", "x", "--max-new-tokens", "2"]) == 2
    assert "without its directory" in capsys.readouterr().err
    assert main(["features", "top-on-text", str(old_store), "the crabs", "--model", str(chain.a)]) == 0
    assert main(["features", "top-on-text", str(old_store), "the crabs", "--model", str(chain.b)]) == 2
    _refused(capsys, chain)


# ------------------------------------------------------------------------------------ the toy model is no default
def test_the_toy_model_reads_only_the_toy_corpus_by_default(chain, loads, tmp_path, capsys):
    """cache / train straight from text without --model: the toy model is the default for the toy
    corpus only; the user's text without --model is refused before any model is loaded."""
    assert main(["cache", "--dataset", str(chain.text), "--out", str(tmp_path / "c"), "--context-length", "16",
                 "--max-tokens", "64", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--dataset {chain.text} is not the toy corpus: pass --model" in err and "--model toy" in err
    assert main(["train", "--dataset", str(chain.text), "--out", str(tmp_path / "r"), "--hook", HOOK, "--d-sae", "16",
                 "--k", "2", "--total-tokens", "256", "--batch-size", "128", "--progress", "false"]) == 2
    assert "is not the toy corpus: pass --model" in capsys.readouterr().err
    assert loads == [] and not (tmp_path / "c").exists() and not (tmp_path / "r" / "saes").exists()


EVAL = ["--contexts", "4", "--ce-contexts", "2", "--ce-batch-size", "2", "--context-length", "16", "--absorption",
        "false", "--probing", "false", "--quiet"]


def test_eval_without_dataset_reads_the_recorded_held_out_text(chain, loads, tmp_path):
    """Not the toy corpus: the text the SAE's training evaluated on (its ce_eval_data)."""
    assert main(["eval", "--sae", str(chain.sae), *EVAL, "--out", str(tmp_path)]) == 0
    assert loads == [str(chain.a.resolve())]
    data = json.loads((tmp_path / "eval.json").read_text())["data"]
    assert data["dataset"] == str(chain.eval_text) and data["split"] == "train"
    assert [o["checked"] for o in data["overlap"]] == [True] and data["overlap"][0]["in_training"] == 0


def test_eval_refuses_training_text(chain, capsys, tmp_path):
    assert main(["eval", "--sae", str(chain.sae), "--dataset", str(chain.text), "--split", "train", *EVAL]) == 2
    err = capsys.readouterr().err
    assert "is training text" in err and "--dataset PATH or --split NAME" in err and "--allow-eval-overlap true" in err
    assert main(["eval", "--sae", str(chain.sae), "--dataset", str(chain.text), "--split", "train", *EVAL,
                 "--allow-eval-overlap", "true", "--out", str(tmp_path)]) == 0
    overlap = json.loads((tmp_path / "eval.json").read_text())["data"]["overlap"][0]
    assert overlap["in_training"] == overlap["eval_documents"] > 0


def test_eval_refuses_another_models_cache_or_model(chain, capsys):
    assert main(["eval", "--sae", str(chain.sae), "--cache", str(chain.cache_b), *EVAL]) == 2
    err = _refused(capsys, chain)
    assert f"the cache {chain.cache_b}" in err
    assert main(["eval", "--sae", str(chain.sae), "--model", str(chain.b), "--dataset", str(chain.eval_text), *EVAL]) == 2
    _refused(capsys, chain)


def test_saes_of_two_models_are_refused_together(chain, capsys, tmp_path):
    """--sae a=... --sae b=... recorded for models A and B: whichever model runs, one SAE is not its
    own. Refused by steer and eval (eval has no other check: it never goes through steering.steer),
    and a store of A with an SAE of B by top-on-text."""
    sae_b = tmp_path / "sae-b"
    shutil.copytree(chain.sae, sae_b)
    prov = json.loads((sae_b / "saesteer.json").read_text())
    prov["model_identity"] = json.loads((chain.cache_b / "manifest.json").read_text())["model_identity"]
    prov["model"] = prov["model_identity"]["id"]
    (sae_b / "saesteer.json").write_text(json.dumps(prov))
    pair = ["--sae", f"a={chain.sae}", "--sae", f"b={sae_b}"]
    assert main(["eval", *pair, "--dataset", str(chain.eval_text), *EVAL]) == 2
    assert "SAE 'b'" in _refused(capsys, chain)
    assert main(["steer", *pair, "-l", "a/3:add=4", "-p", "the crabs", "--max-new-tokens", "2"]) == 2
    _refused(capsys, chain)
    # top-on-text decides the model as steer does: the store (A) and the SAE (B) named, and the CLI's flag
    assert main(["features", "top-on-text", str(chain.store), "the crabs", "--sae", str(sae_b)]) == 2
    err = _refused(capsys, chain)
    assert f"the feature store {chain.store}" in err and str(sae_b) in err and "allow_model_mismatch=True" not in err


def test_python_api_refuses_a_store_of_another_model(chain):
    """features_on_text(model, sae, store=...): the store's record is checked even when the SAE
    carries none (e.g. an SAE from another library, whose files name no model)."""
    from features import FeatureStore
    from features.text import features_on_text
    from saes.formats import resolve_sae
    from saes.identity import ModelMismatchError
    from saesteer.models import load_model

    sae = resolve_sae(chain.sae).sae  # the bare SAE: its record stays in the LoadedSAE
    model_b = load_model(str(chain.b), device="cpu")
    with FeatureStore.open(chain.store, readonly=True) as store:
        with pytest.raises(ModelMismatchError, match="allow_model_mismatch=True"):
            features_on_text(model_b, sae, "the crabs", store=store)
        assert features_on_text(model_b, sae, "the crabs", store=store, allow_model_mismatch=True).tokens


def test_eval_with_cache_reads_the_dataset_given(chain, tmp_path):
    """--cache gives the activation rows; --dataset, when given, is the CE text (not silently dropped
    for the one training used)."""
    other = tmp_path / "other.txt"
    other.write_text("\n".join(f"did {a} see it ?" for a in ("anna", "tom", "mia", "leo") * 3), encoding="utf-8")
    assert main(["eval", "--sae", str(chain.sae), "--cache", str(chain.cache), "--dataset", str(other), *EVAL,
                 "--out", str(tmp_path / "a")]) == 0
    data = json.loads((tmp_path / "a" / "eval.json").read_text())["data"]
    assert data["dataset"] == str(other) and data["overlap"][0]["checked"]
    assert main(["eval", "--sae", str(chain.sae), "--cache", str(chain.cache), *EVAL, "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "eval.json").read_text())["data"]["dataset"] == str(chain.eval_text)


# ------------------------------------------------------------------------- SAEs of other libraries
def _foreign(kind: str, root: Path, lm_name: str | None = None) -> tuple[str, list[str]]:
    """(--sae spec, extra flags) of a random SAE in another library's files that reads HOOK of the
    tiny models (d_model 32); dictionary_learning and sparsify record `lm_name` as their model."""
    from helpers import foreign_saes as fs

    d, f = 32, 64
    if kind == "openai":  # records neither model nor hook
        return str(fs.write_openai(root / "oa" / "1.pt", fs.random_openai(d, f))), ["--hook", HOOK]
    if kind == "gemma_scope":
        return str(fs.write_gemma_scope(root / "gs" / "params.npz", fs.random_gemma_scope(d, f))), ["--hook", HOOK]
    if kind == "dictionary_learning":
        state = fs.random_dictionary_learning("AutoEncoderTopK", d, f, k=4)
        folder = fs.write_dictionary_learning(root / "dl", "AutoEncoderTopK", state, k=4)
        cfg = json.loads((folder / "config.json").read_text())
        cfg["trainer"]["lm_name"] = lm_name
        (folder / "config.json").write_text(json.dumps(cfg))
        return str(folder), []
    state, cfg = fs.random_sparsify(d, f, k=4)
    return str(fs.write_sparsify(root / "sp" / "layers.1", state, cfg, run_config={"model": lm_name})), []


@pytest.mark.parametrize("kind", ["openai", "gemma_scope"])
def test_a_foreign_sae_takes_the_given_model_and_later_commands_check_it(chain, kind, tmp_path, capsys):
    """A format that records no model: --model A at `features build` is recorded as A's identity
    (the store's model_identity), so `steer --model B` with that store is refused naming both."""
    spec, hook = _foreign(kind, tmp_path)
    store = tmp_path / "f.db"
    assert main(["features", "build", "--sae", spec, *hook, "--cache", str(chain.cache), "--model", str(chain.a),
                 "--out", str(store), "--no-progress"]) == 0
    assert json.loads(sqlite3.connect(store).execute("SELECT value FROM meta WHERE key = 'model_identity'")
                      .fetchone()[0])["id"] == chain.id_of(chain.a)
    capsys.readouterr()
    assert main(["steer", "--sae", spec, *hook, "--store", str(store), "-l", "3:add=4", "-p", "the crabs",
                 "--max-new-tokens", "2", "--json", "--model", str(chain.b)]) == 2
    err = _refused(capsys, chain)
    assert str(store) in err


@pytest.mark.parametrize("kind", ["dictionary_learning", "sparsify"])
def test_a_foreign_sae_recording_its_model_is_checked_like_ours(chain, kind, tmp_path, capsys, loads):
    """dictionary_learning's lm_name and sparsify's run `model` become the SAE's model identity:
    another model or another model's cache is refused naming both; the recorded directory loads."""
    spec, _ = _foreign(kind, tmp_path / "b", lm_name=str(chain.b.resolve()))
    steer = ["steer", "--sae", spec, "-l", "3:add=4", "-p", "the crabs", "--max-new-tokens", "2", "--json"]
    assert main([*steer, "--model", str(chain.a)]) == 2
    err = capsys.readouterr().err
    assert f"local:model-b at {chain.b.resolve()}" in err and chain.id_of(chain.a) in err and OVERRIDE in err, err
    assert main(["features", "build", "--sae", spec, "--cache", str(chain.cache), "--out", str(tmp_path / "x.db"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "local:model-b" in err and chain.id_of(chain.a) in err and str(chain.cache) in err and OVERRIDE in err, err
    assert not (tmp_path / "x.db").exists()
    assert main([*steer, "--model", str(chain.a), OVERRIDE]) == 0
    # an HF hub name is a hub identity: a local model is another model
    spec, _ = _foreign(kind, tmp_path / "hub", lm_name="EleutherAI/pythia-70m")
    assert main(["steer", "--sae", spec, "-l", "3:add=4", "-p", "x", "--json", "--model", str(chain.a)]) == 2
    assert "hub:EleutherAI/pythia-70m" in capsys.readouterr().err
    # the recorded directory is the model steer runs without --model
    spec, _ = _foreign(kind, tmp_path / "a", lm_name=str(chain.a.resolve()))
    loads.clear()
    assert main(["steer", "--sae", spec, "-l", "3:add=4", "-p", "the crabs", "--max-new-tokens", "2", "--json"]) == 0
    assert loads == [str(chain.a.resolve())]
