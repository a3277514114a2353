"""`train`'s progress bar and its disk errors, and the pass state's write errors of `features build`:
- the bar's total was --total-tokens, but the trainer runs whole batches (768 of 700 at batch 128;
  1,003,520 of 1,000,000 at 4,096): the bar ended past its total (768/700). Its total is now the
  tokens the run really ends at.
- a full disk (or `ulimit -f`) while writing a checkpoint said "error: File too large; ..." without
  the file: a write that fails names none. It now names the checkpoint's file (not the temporary
  folder it was written in, gone by then).
- safetensors' writer reports a failed write as a `SafetensorError` whose errno is in its message,
  worded "(os error 28)" by safetensors 0.8 and "IoError(Os { code: 28, ...})" by older ones: the
  older wording, or one with no errno, was "unexpected SafetensorError ... this is a bug".
"""

from __future__ import annotations

import re

import pytest

from helpers.full_disk import file_size_limit
from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("offline_env", "one_thread")]

TRAIN = ["--architecture", "topk", "--d-sae", "512", "--k", "4", "--total-tokens", "700", "--batch-size", "128",
         "--holdout-tokens", "512", "--eval-every-tokens", "0", "--model-eval", "false", "--sae-name", "sae"]


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy") / "cache"
    saesteer("cache", "--model", "toy", "--dataset", "toy", "--max-tokens", "4096", "--shard-contexts", "8",
             "--out", d, "--no-progress").ok()
    return d


def test_the_train_bar_ends_at_its_total_when_the_last_batch_passes_total_tokens(toy_cache, tmp_path):
    r = saesteer("train", "--cache", toy_cache, "--out", tmp_path / "run", *TRAIN,
                 "--checkpoint-every-tokens", "0").ok()
    assert "trained 768 training tokens in 6 steps" in r.text, r.text[-800:]
    last = [ln for ln in r.err.replace("\r", "\n").splitlines() if ln.startswith("train:")][-1]
    shown = re.search(r"\| *(\d+)/(\d+) \[", last)  # (past its total, tqdm drops it: "768tok [...")
    assert shown is not None and shown.groups() == ("768", "768") and "100%" in last, last


def test_a_full_disk_while_training_names_the_checkpoint_file(toy_cache, tmp_path):
    with file_size_limit(100 * 1024):  # the cache is read; no checkpoint (~1 MB) fits
        r = saesteer("train", "--cache", toy_cache, "--out", tmp_path / "run", *TRAIN, "--checkpoint-every-tokens",
                     "256", "--no-progress")
    assert r.rc != 0
    r.no_traceback()
    error = [ln for ln in r.err.splitlines() if ln.startswith("error:")]
    assert len(error) == 1, r.err[-800:]
    assert f"{tmp_path / 'run' / 'checkpoints' / 'step_0000000002' / 'tensors.safetensors'}: File too large" in error[0]
    assert "file size limit" in error[0]


def test_a_full_disk_while_saving_an_sae_names_its_file(tmp_path):
    import torch

    import saes
    from saesteer.boundary import message_for

    sae = saes.create_sae("topk", 128, 512, k=8, generator=torch.Generator().manual_seed(0))
    with file_size_limit(100 * 1024), pytest.raises(OSError) as caught:
        saes.save_sae(sae, tmp_path / "sae")
    text, _ = message_for(caught.value)
    assert text.startswith(f"{tmp_path / 'sae' / 'sae_weights.safetensors'}: File too large"), text
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("message, hint", [
    ('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })',
     "the disk is full"),
    ('Error while serializing: I/O error: File too large (os error 27) at path "/x/.tmpAbC"', "file size limit"),
    ("Error while serializing: I/O error: the device went away", "could not write it"),
])
def test_a_failed_write_of_the_pass_state_is_a_disk_message_naming_it(tmp_path, monkeypatch, message, hint):
    from safetensors import SafetensorError

    import features.build as build
    from features.accumulate import FeatureAccumulator
    from features.config import BuildConfig
    from saesteer.boundary import message_for

    def full_disk(tensors, filename, metadata=None):
        raise SafetensorError(message)

    monkeypatch.setattr("safetensors.torch.save_file", full_disk)  # what saes.fileio.atomic_save_safetensors calls
    path = tmp_path / "s.db.building.state.safetensors"
    with pytest.raises(Exception) as caught:
        build.save_state(path, FeatureAccumulator(16, BuildConfig(), 8), {"sae": "x"}, "pass", 0)
    text, status = message_for(caught.value)
    assert text.startswith(f"{path}: ") and hint in text and "bug" not in text, text
    assert status == 1 and not list(tmp_path.iterdir())  # nothing partial kept
