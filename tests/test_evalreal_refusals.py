"""`saesteer eval` given SAELens SAEs and a model they do not belong to: a SAELens folder made on a local
checkpoint records that directory as its `model_name` (SAELens loads the model by that path); eval with
another local model of the same width must be refused naming both, not measured on the wrong model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.foreign_saes import saelens_random
from saesteer.cli import main

pytestmark = [pytest.mark.usefixtures("one_thread")]

HOOK = "blocks.1.hook_resid_post"


def _saelens_folder(folder: Path, model_name: str) -> Path:
    return saelens_random(folder, model_name=model_name, hook_name=HOOK)


def _eval(sae: Path, model: Path, real_corpus, *extra: str) -> list[str]:
    return ["eval", "--sae", f"s={sae}", "--model", str(model), "--dataset", str(real_corpus.jsonl_dir),
            "--context-length", "16", "--contexts", "2", "--ce-contexts", "1", "--absorption", "false",
            "--probing", "false", "--quiet", "--no-progress", *extra]


def test_a_local_model_the_sae_was_not_made_on_is_refused_naming_both(real_models, real_corpus, tmp_path, capsys):
    llama, gpt2 = real_models.path("llama"), real_models.path("gpt2")  # both d_model 64: widths alone do not tell
    sae = _saelens_folder(tmp_path / "sae", str(llama))
    capsys.readouterr()
    assert main(_eval(sae, gpt2, real_corpus)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and str(llama) in err and str(gpt2) in err and "--allow-model-mismatch" in err
    # the override measures it anyway; the model it names, through a symlink too, is accepted
    assert main(_eval(sae, gpt2, real_corpus, "--allow-model-mismatch")) == 0
    os.symlink(llama, tmp_path / "llama-link")
    assert main(_eval(sae, tmp_path / "llama-link", real_corpus)) == 0
    # a directory of another machine (not here) cannot be compared: evaluated
    other = _saelens_folder(tmp_path / "sae-elsewhere", "/nonexistent/models/llama")
    assert main(_eval(other, llama, real_corpus)) == 0


def test_a_hook_given_that_the_sae_does_not_record_is_refused(real_models, real_corpus, tmp_path, capsys):
    llama = real_models.path("llama")
    sae = _saelens_folder(tmp_path / "sae", str(llama))
    capsys.readouterr()
    assert main(_eval(sae, llama, real_corpus, "--hook", "blocks.0.hook_resid_post")) == 2
    err = capsys.readouterr().err
    assert HOOK in err and "blocks.0.hook_resid_post" in err and "Traceback" not in err
