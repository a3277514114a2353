"""One progress flag: every command with long work takes `--no-progress`, and none shows another
spelling (`sweep` had none, `train` had `--progress BOOL`); it quiets the bars of the libraries the
command calls too (transformers loading a sharded checkpoint, datasets reading a dataset)."""

from __future__ import annotations

import argparse
import json

import pytest

from saesteer import docs
from saesteer.cli import build_parser, main

# commands whose work grows with their input: generation over prompts, forward passes over contexts, judge
# calls; the others (preset, info, features list / show, ...) read or write a few records
LONG_WORK = {("cache",), ("demo",), ("eval",), ("features", "build"), ("features", "embed"), ("features", "export"),
             ("label",), ("output-score",), ("steer",), ("steer-eval",), ("sweep",), ("train",)}


def test_every_command_with_long_work_takes_no_progress_and_nothing_else() -> None:
    seen = set()
    for path, sub in docs._walk(build_parser(), []):
        shown = {o for a in sub._actions if a.help != argparse.SUPPRESS for o in a.option_strings if "progress" in o}
        if tuple(path) in LONG_WORK:
            seen.add(tuple(path))
            assert shown == {"--no-progress"}, (path, shown)
        else:
            assert shown <= {"--no-progress"}, (path, shown)
    assert seen == LONG_WORK


def test_train_no_progress_reaches_the_config(tmp_path, capsys) -> None:
    def log_config(*flags):
        assert main(["train", "--print-config", "--out", str(tmp_path / "run"), *flags]) == 0
        return json.loads(capsys.readouterr().out)["log"]

    assert log_config()["progress"] is True
    assert log_config("--no-progress")["progress"] is False
    assert log_config("--progress", "false")["progress"] is False  # the old spelling still works, unlisted


# -- our bars in the commands that generate or evaluate -------------------------------------------

def _bars_with_and_without(run, argv, bars):
    """stderr of `run(argv)` and of `run(argv + --no-progress)`: the first shows every bar named in
    `bars` (tqdm's "NAME: 100%|"), the second none and no bar at all."""
    shown, quiet = run(list(argv)), run([*argv, "--no-progress"])
    for name in bars:
        assert f"{name}: 100%|" in shown, shown[-2000:]
    assert "%|" not in quiet and not any(f"{name}: " in quiet for name in bars), quiet[-2000:]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny test model with its feature store and SAE folder (helpers.web_store)."""
    import saes
    from helpers.steering_fixtures import torch_threads
    from helpers.web_store import build_web_store

    with torch_threads(1):
        ws = build_web_store(tmp_path_factory.mktemp("tiny"), name="bars")
        saes.save_sae(ws.sae, ws.path.parent / "sae")
        yield ws


def test_steer_shows_a_bar_over_the_tokens_it_generates_unless_no_progress(tiny, capsys, monkeypatch):
    """The bar counts the tokens both passes generate (2 prompts x 3 new tokens, steered and
    unsteered: 12), each as its forward pass makes it (before: 2 steps, one per pass)."""
    from tqdm.auto import tqdm

    from saesteer.commands import steer

    seen: list[int] = []
    real_update = tqdm.update

    def update(bar, n=1):
        if n and getattr(bar, "desc", "").startswith("generating"):  # a disabled bar has no desc
            seen.append(bar.n + n)
        return real_update(bar, n)

    monkeypatch.setattr(tqdm, "update", update)

    def run(argv):
        assert steer._run(build_parser().parse_args(argv), model=tiny.model) == 0
        return capsys.readouterr().err

    argv = ["steer", "--sae", str(tiny.path.parent / "sae"), "-l", "3:clamp=9", "-p", "the sea", "-p", "",
            "--max-new-tokens", "3", "--do-sample", "false", "--stop-at-eos", "false", "--json"]
    _bars_with_and_without(run, argv, ["generating unsteered"])
    seen.clear()
    err = run(argv)
    assert "generating unsteered: 100%|" in err and "12/12" in err, err[-2000:]
    assert seen == [2, 4, 6, 8, 10, 12], seen  # one step per forward pass: a token of each of the 2 prompts


def test_steer_bar_counts_only_the_tokens_made_when_generation_stops_early(tiny, capsys, monkeypatch):
    """The steered pass stops after one token of each prompt (as when every prompt reaches its EOS):
    the bar's total drops by the 4 tokens not made and ends at 8/8 (before: it counted them, 12/12)."""
    from saesteer.commands import steer

    real_generate = tiny.model.generate
    calls = []

    def stops_early(tokens, **kw):  # the first (steered) pass ends after one forward pass
        calls.append(kw["max_new_tokens"])
        return real_generate(tokens, **{**kw, "max_new_tokens": 1 if len(calls) == 1 else kw["max_new_tokens"]})

    monkeypatch.setattr(tiny.model, "generate", stops_early)
    argv = ["steer", "--sae", str(tiny.path.parent / "sae"), "-l", "3:clamp=9", "-p", "the sea", "-p", "",
            "--max-new-tokens", "3", "--do-sample", "false", "--stop-at-eos", "false", "--json"]
    assert steer._run(build_parser().parse_args(argv), model=tiny.model) == 0
    err = capsys.readouterr().err
    assert calls == [3, 3] and "generating unsteered: 100%|" in err and "8/8" in err, err[-2000:]
    assert "12/12" not in err, err[-2000:]


def test_steer_contrast_shows_a_bar_over_its_prompts_unless_no_progress(tiny, tmp_path, capsys):
    import json

    from saesteer.commands import steer

    def run(argv):
        assert steer._run(build_parser().parse_args(argv), model=tiny.model) == 0
        got = capsys.readouterr()
        assert len(json.loads(got.out)) == 2  # stdout stays the JSON: the bar is on stderr
        return got.err

    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("the sea and the ship\nthe whale at the shore\nwaves\n")
    neg.write_text("the tree in the forest\nbread and soup\n")
    argv = ["steer", "--sae", str(tiny.path.parent / "sae"), "--contrast", str(pos), str(neg), "--top", "2", "--json"]
    _bars_with_and_without(run, argv, ["contrast activations"])


def test_steer_eval_shows_a_bar_over_each_sweep_unless_no_progress(tiny, tmp_path, capsys):
    from saesteer.commands import steer_eval

    def run(argv):
        assert steer_eval._run(build_parser().parse_args(argv), model=tiny.model) == 0
        err = capsys.readouterr().err
        assert "[steer-eval] difference of means" in err  # its step lines stay: they are not bars
        return err

    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("the sea and the ship\nthe whale at the shore\n")
    neg.write_text("the tree in the forest\nbread and soup\n")
    argv = ["steer-eval", "--sae", str(tiny.path.parent / "sae"), "--store", str(tiny.path), "--topic", "ocean",
            "--positive", str(pos), "--negative", str(neg), "--samples", "1", "--do-sample", "false",
            "--max-new-tokens", "3", "--sae-strengths", "1,3", "--vector-strengths", "1,2", "--candidates", "1",
            "--json"]
    _bars_with_and_without(run, argv, ["contrast activations", "sweep"])


def test_features_embed_shows_a_bar_over_the_labels_unless_no_progress(tiny, tmp_path, capsys):
    import shutil

    copies = iter(range(2))

    def run(argv):
        store = tmp_path / f"copy{next(copies)}.db"  # a fresh copy each time: a second run has nothing new to embed
        shutil.copy(tiny.path, store)
        assert main([argv[0], argv[1], str(store), *argv[2:]]) == 0
        got = capsys.readouterr()
        assert f"{len(tiny.labels)} new (offline/hash-256)" in got.out
        return got.err

    _bars_with_and_without(run, ["features", "embed", "--embed-backend", "offline"], ["embedding labels"])


def test_eval_shows_bars_over_its_contexts_unless_no_progress(tmp_path, capsys):
    import saes

    sae = saes.create_sae("topk", 128, 64, k=4, metadata={"hook_name": "blocks.2.hook_resid_post"})
    saes.save_sae(sae, tmp_path / "sae")

    def run(argv):
        assert main(argv) == 0
        return capsys.readouterr().err

    argv = ["eval", "--sae", str(tmp_path / "sae"), "--model", "toy", "--contexts", "6", "--ce-contexts", "4",
            "--model-batch-size", "2", "--ce-batch-size", "2", "--absorption-max-k", "1", "--probing-ks", "1"]
    _bars_with_and_without(run, argv, ["held-out activations", "CE/KL spliced", "first-letter words", "absorption",
                                       "sparse probing"])


# -- the libraries' own bars ------------------------------------------------------------------------

BAR_WORDS = ("Loading weights", "Generating validation split", "it/s]", "examples/s]")


@pytest.fixture(scope="module")
def sharded(real_models, tmp_path_factory):
    """The tiny real GPT-2 saved in 100 KB shards (transformers draws a bar while it loads them) and
    a small JSON-lines dataset (datasets draws one while it reads it, when not streaming)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = real_models.path("gpt2")
    work = tmp_path_factory.mktemp("bars")
    AutoModelForCausalLM.from_pretrained(src).save_pretrained(work / "gpt2-sharded", max_shard_size="100KB")
    AutoTokenizer.from_pretrained(src).save_pretrained(work / "gpt2-sharded")
    assert len(list((work / "gpt2-sharded").glob("model-*-of-*.safetensors"))) > 1
    (work / "data").mkdir()
    docs = [{"text": f"Document {i}: the quick brown fox jumps over the lazy dog {i} times.\n\tdef f(): return {i}"}
            for i in range(40)]
    (work / "data" / "validation.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return work


def _cache_argv(work, out, *extra):
    return ["cache", "--model", str(work / "gpt2-sharded"), "--dataset", str(work / "data"), "--split", "validation",
            "--streaming", "false", "--context-length", "16", "--max-tokens", "400", "--out", str(out), *extra]


def _switches():
    import datasets.utils
    import huggingface_hub.utils
    import transformers.utils.logging

    return (transformers.utils.logging.is_progress_bar_enabled(), not huggingface_hub.utils.are_progress_bars_disabled(),
            not datasets.utils.are_progress_bars_disabled())


def test_no_progress_quiets_the_libraries_bars_too_and_puts_their_settings_back(sharded, tmp_path):
    from helpers.real_cli import saesteer

    before = _switches()
    assert before == (True, True, True)
    shown = saesteer(*_cache_argv(sharded, tmp_path / "shown")).ok()
    assert all(w in shown.err for w in BAR_WORDS), shown.err[-2000:]  # transformers' and datasets' bars
    quiet = saesteer(*_cache_argv(sharded, tmp_path / "quiet", "--no-progress")).ok()
    assert not any(w in quiet.err for w in BAR_WORDS) and "%|" not in quiet.err, quiet.err[-2000:]
    assert _switches() == before  # a Python session keeps its bars


def test_library_bars_restores_each_switch_as_it_was():
    import datasets.utils
    import huggingface_hub.utils
    import transformers.utils.logging as tl

    from saesteer.librarybars import library_bars

    try:
        tl.disable_progress_bar()  # a user who turned transformers' (and so the hub's) bars off
        datasets.utils.enable_progress_bars()
        with library_bars(enabled=False):
            assert _switches() == (False, False, False)
        assert _switches() == (False, False, True)
        with library_bars(enabled=True):
            assert _switches() == (False, False, True)
    finally:
        tl.enable_progress_bar()
        datasets.utils.enable_progress_bars()
        huggingface_hub.utils.enable_progress_bars()


def test_no_progress_quiets_transformers_imported_by_the_command(sharded, tmp_path):
    """A fresh `saesteer` process (transformers not imported before the command runs) with stderr
    a pipe: nothing but our own lines."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "saesteer", *_cache_argv(sharded, tmp_path / "quiet", "--no-progress")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not any(w in r.stderr for w in BAR_WORDS) and "%|" not in r.stderr, r.stderr[-2000:]


# -- what quieting costs and keeps ----------------------------------------------------------------

def _python(code: str, **env_extra) -> str:
    """Run `code` in a fresh interpreter (nothing imported yet) with this tree first on the path."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", **env_extra)
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        if name not in env_extra:
            env.pop(name, None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip().splitlines()[-1]


def test_no_progress_does_not_import_datasets_for_a_command_that_reads_none(tmp_path):
    """Importing datasets (pyarrow, pandas) costs a second or more: only a command that reads a
    dataset may pay it."""
    code = f"""
import sys
from saesteer.cli import main
main(["features", "export", {str(tmp_path / "nothing")!r}, {str(tmp_path / "out")!r}, "--no-progress"])
print(sorted(m for m in ("datasets", "pyarrow", "pandas") if m in sys.modules))
"""
    assert _python(code) == "[]"


def test_datasets_imported_inside_the_command_is_quiet_and_set_back_after():
    code = """
from saesteer.librarybars import library_bars
with library_bars(enabled=False):
    import datasets
    inside = datasets.utils.are_progress_bars_disabled()
print(inside, datasets.utils.are_progress_bars_disabled())
"""
    assert _python(code) == "True False"
    assert _python(code, HF_DATASETS_DISABLE_PROGRESS_BARS="0") == "False False"  # the environment forces them on
    assert _python(code, HF_DATASETS_DISABLE_PROGRESS_BARS="1") == "True True"


def test_the_hubs_per_group_settings_are_kept():
    import huggingface_hub.utils as hub

    from saesteer.librarybars import library_bars

    try:
        hub.disable_progress_bars("peft.foo")
        with library_bars(enabled=False):
            assert hub.are_progress_bars_disabled() and hub.are_progress_bars_disabled("peft.bar")
        assert hub.are_progress_bars_disabled("peft.foo") and not hub.are_progress_bars_disabled("peft.bar")
        assert not hub.are_progress_bars_disabled()
    finally:
        hub.enable_progress_bars()


def test_the_hubs_environment_variable_forcing_bars_on_wins_over_no_progress():
    code = """
import transformers.utils.logging as tl
from saesteer.librarybars import library_bars
with library_bars(enabled=False):
    inside = tl.is_progress_bar_enabled()
print(inside, tl.is_progress_bar_enabled())
"""
    assert _python(code, HF_HUB_DISABLE_PROGRESS_BARS="0") == "True True"
    assert _python(code) == "False True"


def test_nested_blocks_keep_the_bars_off_until_the_outermost_ends():
    """`saesteer train` quiets the bars again inside the CLI's block: the libraries it imports in the
    inner block stay quiet in the outer one, and get their settings back only at its end."""
    code = """
from saesteer.librarybars import library_bars
with library_bars(enabled=False):
    with library_bars(enabled=False):
        import datasets
        import transformers.utils.logging as tl
        inner = (datasets.utils.are_progress_bars_disabled(), tl.is_progress_bar_enabled())
    outer = (datasets.utils.are_progress_bars_disabled(), tl.is_progress_bar_enabled())
print(inner, outer, (datasets.utils.are_progress_bars_disabled(), tl.is_progress_bar_enabled()))
"""
    assert _python(code) == "(True, False) (True, False) (False, True)"


def test_nested_blocks_put_back_what_each_found():
    import datasets.utils
    import huggingface_hub.utils
    import transformers.utils.logging as tl

    from saesteer.librarybars import library_bars

    try:
        with library_bars(enabled=False):
            tl.enable_progress_bar()  # turned on inside the outer block: the inner one puts that back
            with library_bars(enabled=False):
                assert _switches() == (False, False, False)
            assert _switches()[0] is True and _switches()[2] is False
        assert _switches() == (True, True, True)
    finally:
        tl.enable_progress_bar()
        datasets.utils.enable_progress_bars()
        huggingface_hub.utils.enable_progress_bars()


def test_a_block_that_fails_to_turn_a_switch_leaves_nothing_behind():
    """A switch that fails part way (here the hub's) is an error of that block only: every switch
    is put back, and the next block still quiets datasets on import (its import hook is free)."""
    code = """
import sys
import huggingface_hub.utils as hub
from saesteer import librarybars
from saesteer.librarybars import library_bars

real = hub.disable_progress_bars
def broken():
    raise RuntimeError("switch broke")
hub.disable_progress_bars = broken
try:
    with library_bars(enabled=False):
        pass
except RuntimeError:
    pass
hub.disable_progress_bars = real
left = (librarybars._import_hook, [f for f in sys.meta_path if type(f).__name__ == "_QuietOnImport"])
with library_bars(enabled=False):
    import datasets
    inside = datasets.utils.are_progress_bars_disabled()
print(left, inside, hub.are_progress_bars_disabled())
"""
    assert _python(code) == "(None, []) True False"


def test_steer_refuses_a_prompt_over_the_context_before_its_bar_starts(tiny, capsys):
    """A prompt + --max-new-tokens over the model's context (64) was refused after the bar had shown
    "generating steered: 0/..." on stderr; the one-line refusal comes alone."""
    from saesteer.commands import steer
    from steering.spec import SteeringError

    args = build_parser().parse_args(["steer", "--sae", str(tiny.path.parent / "sae"), "-l", "3:clamp=9",
                                      "-p", "the sea and the ship", "--max-new-tokens", "62"])
    with pytest.raises(SteeringError, match=r"\+ max_new_tokens \(62\) = 68 tokens exceeds the model's context of 64"):
        steer._run(args, model=tiny.model)
    assert "generating" not in capsys.readouterr().err
