"""The judge's settings and the prompting baseline's cue + prompt are refused before the expensive work:
a transformers judge whose local folder is missing, a --judge-thinking or --judge-reasoning-effort a
transformers judge takes none of (`autointerp.config.check_judge`), before the model loads; steer-eval's
--cue before each prompt over the model's context, before the judge loads and before any generation
(`steering.baselines.check_prompting_fits`). Driven through `saesteer ...` with the loaders counted
(test_early_refusals' fixtures), and through `steering.compare_methods` (the notebook's steer-eval).
"""

from __future__ import annotations

import pytest

from helpers.real_cli import saesteer
from test_early_refusals import LONG, MODEL, judge_folder, loads, refused, ws  # noqa: F401 (the fixtures)

pytestmark = [pytest.mark.usefixtures("offline_env")]


def _run(command, ws, tmp_path, *judge):
    built, sae, _ = ws
    extra = ["--cue", "the sea"] if command == "steer-eval" else ["--out", tmp_path / "sweeps"]
    return saesteer(command, "--sae", sae, "--store", built.path, "--model", MODEL, "--latent", 3,
                    "--concept", "the sea", "--judge-backend", "transformers", *judge, *extra, "--no-progress")


@pytest.mark.parametrize("command", ["sweep", "steer-eval"])
def test_a_transformers_judge_whose_folder_is_missing_is_refused_before_the_model(ws, loads, tmp_path, command):
    missing = tmp_path / "no-such-judge"
    r = _run(command, ws, tmp_path, "--judge-model", missing)
    refused(r, "--judge-model", f"model directory {str(missing)!r} does not exist")
    empty = tmp_path / "empty-judge"
    empty.mkdir()
    r = _run(command, ws, tmp_path, "--judge-model", empty)
    refused(r, "--judge-model", "is a directory without config.json")
    assert loads == [] and not list(tmp_path.rglob("*judge-cache*"))


@pytest.mark.parametrize("command", ["sweep", "steer-eval"])
@pytest.mark.parametrize("flag, value, words", [
    ("--judge-thinking", "adaptive", "is sent to Anthropic's Messages API: give --judge-backend anthropic"),
    ("--judge-reasoning-effort", "low", "a transformers judge takes none: leave it empty"),
])
def test_a_setting_a_transformers_judge_takes_none_of_is_refused_before_the_model(ws, loads, tmp_path, command,
                                                                                  flag, value, words):
    r = _run(command, ws, tmp_path, "--judge-model", judge_folder(tmp_path), flag, value)
    refused(r, flag, words)
    assert loads == []


def test_a_transformers_judge_in_its_folder_still_loads_after_the_model(ws, loads, tmp_path):
    r = _run("steer-eval", ws, tmp_path, "--judge-model", judge_folder(tmp_path))
    refused(r, "a transformers judge is not loaded in these tests")
    assert loads == ["model", "judge"]


def test_steer_eval_cue_before_a_prompt_over_the_context_is_refused_before_the_judge(ws, loads, tmp_path):
    """Each prompt fits alone; the prompting baseline's cue before it does not: said once the model has
    loaded (its tokenizer counts), before the judge loads and before the first generation."""
    built, sae, _ = ws
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the sea and the ship\nCafé au lait, 東京の港 .\n")
    r = saesteer("steer-eval", "--sae", sae, "--store", built.path, "--model", MODEL, "--latent", 3,
                 "--concept", "the sea", "--judge-backend", "transformers", "--judge-model", judge_folder(tmp_path),
                 "--cue", LONG, "--prompts-file", prompts, "--max-new-tokens", 8, "--no-progress")
    refused(r, "the prompting baseline (the cue before each prompt): prompt 2 of 2", "--max-new-tokens (8)",
            "exceeds the model's context of 64", "a shorter cue fits too")
    assert "[steer-eval]" not in r.err  # no method ran
    assert loads == ["model"]


def test_compare_methods_refuses_an_overlong_cue_before_generating(ws, monkeypatch):
    import steering.methods
    from saesteer.toyscore import toy_scorer
    from steering.config import GenerationConfig
    from steering.spec import SteeringError

    built = ws[0]
    monkeypatch.setattr(steering.methods, "generate", lambda *a, **kw: pytest.fail("generated first"))
    with pytest.raises(SteeringError, match=r"^the prompting baseline \(the cue before each prompt\): the prompt"):
        steering.methods.compare_methods(built.model, built.sae, toy_scorer("ocean"), prompts=["the sea"],
                                         latents=[3], cue=LONG, gen_config=GenerationConfig(max_new_tokens=8))


@pytest.mark.parametrize("command", ["serve", "api"])
def test_serve_refuses_a_file_that_is_no_store_before_the_model(loads, tmp_path, command):
    notes = tmp_path / "notes.db"
    notes.write_text("Ça va? 東京の天気は晴れ。\n")
    r = saesteer(command, "--store", notes, "--model", MODEL, "--port", 0)
    refused(r, str(notes))
    assert loads == []


@pytest.mark.parametrize("command", ["serve", "api"])
def test_serve_refused_after_taking_the_port_gives_it_back(ws, tmp_path, monkeypatch, command):
    """The port is taken before the model loads; a model that cannot load is refused after that, and
    the socket is closed then (not left to the garbage collector: no ResourceWarning), so the port is
    free at once."""
    import gc
    import socket
    import warnings

    from saesteer import models

    def no_model(*a, **kw):
        raise OSError("model directory 'gone' does not exist")

    monkeypatch.setattr(models, "load_model", no_model)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gc.collect()  # earlier tests' garbage (their unclosed transports) warns now, not inside the block
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        r = saesteer(command, "--store", ws[0].path, "--model", "gone", "--port", port)
        gc.collect()
    refused(r, "model directory 'gone' does not exist")
    # our listening socket's warning names its port; a late one of another test's cannot
    assert [w for w in seen if issubclass(w.category, ResourceWarning) and f"{port})" in str(w.message)] == []
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # free: no socket of ours listens there


@pytest.mark.parametrize("command", ["sweep", "eval", "train"])
@pytest.mark.parametrize("kind", ["under a file", "a link to nothing"])
def test_an_out_folder_that_cannot_be_made_is_refused_before_the_model(ws, loads, tmp_path, command, kind):
    """An --out the command would make (with its parents) after the work: one under a file, or a
    link to a folder that is gone, was a bare OSError once the model had loaded (or after the run)."""
    built, sae, _ = ws
    notes = tmp_path / "notes.txt"
    notes.write_text("Ça va? 東京の天気は晴れ。\ndef parse(line):\n    return line.split()\n")
    if kind == "under a file":
        out, bad, what = notes / "runs", notes, "a file"
    else:
        out = bad = tmp_path / "runs"
        out.symlink_to(tmp_path / "moved-away")
        what = "a link to nothing"
    argv = {"sweep": ["sweep", "--sae", sae, "--store", built.path, "--latent", 3, "--topic", "ocean"],
            "eval": ["eval", "--sae", sae],
            "train": ["train", "--dataset", notes, "--architecture", "topk", "--d-sae", 64, "--k", 4]}[command]
    r = saesteer(*argv, "--model", MODEL, "--out", out, "--no-progress")
    refused(r, f"--out {out}: {bad} is {what}, not a folder", "give a folder")
    assert loads == []


def _tables(path):
    import sqlite3

    db = sqlite3.connect(path)
    try:
        return ({row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")},
                db.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        db.close()


@pytest.mark.parametrize("command", ["sweep", "steer-eval"])
def test_a_judge_cache_path_naming_the_store_is_refused_before_the_model_and_left_alone(ws, loads, tmp_path,
                                                                                       command):
    """--judge-cache-path given the feature store (another SQLite file): refused before the model loads,
    and nothing written into it (the cache's tables and WAL mode were, before the cache refused it)."""
    import shutil

    built, sae, _ = ws
    store = tmp_path / "store.db"
    shutil.copy(built.path, store)
    before = _tables(store)
    extra = ["--cue", "the sea"] if command == "steer-eval" else ["--out", tmp_path / "sweeps"]
    r = saesteer(command, "--sae", sae, "--store", store, "--model", MODEL, "--latent", 3, "--concept", "the sea",
                 "--judge-model", "gpt-judge", "--judge-base-url", "http://127.0.0.1:9/v1",
                 "--judge-cache-path", store, *extra, "--no-progress")
    refused(r, f"{store} is not a saesteer judge cache (its tables: ", "point --judge-cache-path at another file")
    assert loads == [] and _tables(store) == before


def test_the_response_cache_writes_nothing_into_a_file_of_another_kind(ws, tmp_path):
    import shutil

    from autointerp.cache import ResponseCache

    store = tmp_path / "store.db"
    shutil.copy(ws[0].path, store)
    before = _tables(store)
    with pytest.raises(ValueError, match="is not a saesteer judge cache"):
        ResponseCache(store)
    assert _tables(store) == before
    cache = ResponseCache(tmp_path / "judge-cache.sqlite")  # a new file, and the same one again, are taken
    cache.close()
    ResponseCache(tmp_path / "judge-cache.sqlite").close()
