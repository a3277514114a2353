"""A SAELens SAE names its model by what SAELens loaded (`cfg.json` metadata.model_name): a hub name, the
checkpoint directory's path, or an HF-cache snapshot directory (what `snapshot_download` returns). The same
model reached another way must pass: a copy of the directory elsewhere (another machine path, another
disk), the path spelt with a trailing slash, '~' or through a link, the snapshot directory against its hub
id, the same commit in another HF cache. Another model is refused in one line naming both and the override.
`check_named_model` is what eval, steer, `features build` and the web app call."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from saes.identity import ModelIdentity, ModelMismatchError, check_named_model
from saes.model_files import local_weights_sha256

HOOK = "blocks.1.hook_resid_post"
OVERRIDE = "--allow-model-mismatch"


def _checkpoint(folder: Path, weights: bytes = b"weights of model A") -> Path:
    """A checkpoint directory as `check_named_model` sees one: config.json and a weight file."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def _local(folder: Path) -> ModelIdentity:
    """What `saesteer.models.load_model(folder)` records: the resolved directory and its weights' hash."""
    return ModelIdentity("local", folder.resolve().name, path=str(folder.resolve()),
                         weights_sha256=local_weights_sha256(folder))


def _check(model_name: str, given: ModelIdentity) -> None:
    sae = SimpleNamespace(sae=SimpleNamespace(cfg=SimpleNamespace(metadata={"model_name": model_name})))
    check_named_model(sae, given, sae_as="SAE 's'", given_as="--model X", override=OVERRIDE,
                      fix="pass --model with its model")


def _refused(model_name: str, given: ModelIdentity) -> str:
    with pytest.raises(ModelMismatchError) as e:
        _check(model_name, given)
    msg = str(e.value)
    assert "\n" not in msg and OVERRIDE in msg and "--model X" in msg, msg
    return msg


def test_a_copy_of_the_named_checkpoint_is_the_same_model_however_spelt(tmp_path, monkeypatch):
    original = _checkpoint(tmp_path / "models" / "llama")
    copy = tmp_path / "scratch" / "llama-copy"
    shutil.copytree(original, copy)  # the directory copied to another place (disk, machine path)
    _check(str(original), _local(copy))  # before: refused (another directory)
    _check(str(copy), _local(original))
    _check(str(original) + "/", _local(copy))  # a trailing slash
    os.symlink(original, tmp_path / "link")
    _check(str(tmp_path / "link"), _local(original))  # through a link
    monkeypatch.setenv("HOME", str(tmp_path))
    _check("~/models/llama", _local(copy))  # '~'
    monkeypatch.chdir(tmp_path)
    _check("models/llama", _local(_checkpoint(tmp_path / "other", b"other weights")))  # relative: cannot compare
    _check("/nonexistent/models/llama", _local(copy))  # another machine's directory: cannot compare
    # other weights in a directory of the same name: refused, naming both directories
    other = _checkpoint(tmp_path / "finetuned" / "llama", b"weights of model B")
    msg = _refused(str(original) + "/", _local(other))
    assert f"{original}/" in msg and str(other) in msg and "weight files differ" in msg


def test_an_hf_cache_snapshot_directory_is_its_hub_repo(tmp_path):
    from helpers.foreign_saes import write_hf_snapshot

    weights = _checkpoint(tmp_path / "files")
    files = {f.name: f for f in weights.iterdir()}
    snap = write_hf_snapshot(tmp_path / "hub", "gpt2", files)  # models--gpt2/snapshots/<commit>, as hf leaves it
    hub_gpt2 = ModelIdentity("hub", "openai-community/gpt2", revision="a" * 40)
    _check(str(snap), hub_gpt2)  # before: refused ('/…/models--gpt2/snapshots/aaa…' is not openai-community/gpt2)
    _check(str(snap) + "/", ModelIdentity("hub", "gpt2"))
    msg = _refused(str(snap), ModelIdentity("hub", "EleutherAI/pythia-70m-deduped"))
    assert str(snap) in msg and "a snapshot of gpt2" in msg and "EleutherAI/pythia-70m-deduped" in msg
    # the same commit in another HF cache (another HF_HOME): the same model
    other_cache = write_hf_snapshot(tmp_path / "hub2", "gpt2", files)
    assert other_cache.resolve() != snap.resolve()
    _check(str(snap), _local(other_cache))
    # a local snapshot directory given as --model is its repo against a name too
    neox = write_hf_snapshot(tmp_path / "hub", "EleutherAI/pythia-70m-deduped", files)
    _check("pythia-70m-deduped", _local(neox))
    msg = _refused("gpt2-small", _local(neox))  # before: evaluated on the NeoX without a word
    assert "'gpt2-small'" in msg and str(neox.resolve()) in msg


def _finetuned_copy(model_dir: Path, out: Path) -> Path:
    """The checkpoint copied with its weights changed a little: a fine-tune of the same architecture and width."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, out)
    weights = load_file(out / "model.safetensors")
    save_file({k: v + 1e-3 if v.is_floating_point() else v for k, v in weights.items()}, out / "model.safetensors",
              metadata={"format": "pt"})
    return out


def test_eval_takes_a_copy_of_the_checkpoint_a_saelens_sae_names(real_models, real_corpus, tmp_path, capsys):
    """Through the CLI: SAELens made the SAE on the checkpoint at one path; the user copied the model
    elsewhere and evaluates with the copy (accepted); a fine-tune of it is refused in one line."""
    from helpers.foreign_saes import saelens_random
    from saesteer.cli import main

    llama = real_models.path("llama")
    copy = tmp_path / "elsewhere" / "llama"
    shutil.copytree(llama, copy)
    tuned = _finetuned_copy(llama, tmp_path / "tuned" / "llama")
    sae = saelens_random(tmp_path / "sae", model_name=str(llama) + "/", hook_name=HOOK)
    run = ["eval", "--sae", f"s={sae}", "--dataset", str(real_corpus.jsonl_dir), "--context-length", "16",
           "--contexts", "2", "--ce-contexts", "1", "--absorption", "false", "--probing", "false", "--quiet",
           "--no-progress"]
    capsys.readouterr()
    assert main([*run, "--model", str(copy)]) == 0, capsys.readouterr().err  # before: refused
    capsys.readouterr()
    assert main([*run, "--model", str(tuned)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and err[-1].startswith("error: ") and str(llama) in err[-1] and str(tuned) in err[-1], err
    assert OVERRIDE in err[-1], err
