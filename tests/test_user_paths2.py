"""A second user's path: a tiny GPT-2 (byte-level BPE) in a local directory and their text as an HF
`DatasetDict` written by `save_to_disk`, three splits, the text in a column named 'content'. Driven
through the CLI as the docs say: cache the validation split, train with CE measured on test, then eval
with nothing but --sae. Checks what only this path shows: the split read is the one asked for (a
save_to_disk folder's JSON bookkeeping files were read as documents), and eval re-reads the recorded
held-out text with the column training used."""

from __future__ import annotations

import json

import pytest

from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def user(real_models, real_corpus, tmp_path_factory):
    import datasets

    work = tmp_path_factory.mktemp("user2")
    splits = {"train": real_corpus.train_docs, "validation": real_corpus.validation_docs, "test": real_corpus.test_docs}
    datasets.DatasetDict({name: datasets.Dataset.from_dict({"content": list(docs), "n": list(range(len(docs)))})
                          for name, docs in splits.items()}).save_to_disk(str(work / "dsdict"))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}.items():
            mp.setenv(k, v)
        saesteer("cache", "--model", real_models.path("gpt2"), "--dataset", work / "dsdict", "--split", "validation",
                 "--text-column", "content", "--context-length", 32, "--max-tokens", 6000,
                 "--out", work / "cache", "--no-progress").ok()
        saesteer("train", "--cache", work / "cache", "--out", work / "run", "--architecture", "topk", "--d-sae", 128,
                 "--k", 4, "--total-tokens", 2048, "--batch-size", 256, "--holdout-tokens", 512,
                 "--eval-split", "test", "--eval-ce-contexts", 4, "--eval-every-tokens", 0,
                 "--checkpoint-every-tokens", 0, "--no-progress", "--sae-name", "sae").ok()
        yield work, splits


def test_a_save_to_disk_dataset_dict_is_read_at_the_split_asked_for(user):
    work, splits = user
    man = json.loads((work / "cache" / "manifest.json").read_text())
    assert man["dataset"]["split"] == "validation"
    assert man["dataset_files"] == [str(work / "dsdict" / "validation" / "data-00000-of-00001.arrow")]
    from training.manifest import read_manifest
    from training.sources import text_config_from_manifest
    from training.text import DocumentSource

    docs = [d for chunk in DocumentSource(text_config_from_manifest(read_manifest(work / "cache"))).chunks() for d in chunk]
    assert docs == list(splits["validation"])
    prov = json.loads((work / "run/saes/sae/saesteer.json").read_text())["data"]
    assert prov["ce_eval_data"]["split"] == "test" and prov["ce_eval_data"]["overlap"]["in_training"] == 0


def test_eval_with_only_sae_reads_the_recorded_held_out_text_with_its_column(user, tmp_path):
    work, _ = user
    saesteer("eval", "--sae", work / "run/saes/sae", "--contexts", 4, "--ce-contexts", 2, "--absorption", "false",
             "--probing", "false", "--quiet", "--out", tmp_path).ok()
    data = json.loads((tmp_path / "eval.json").read_text())["data"]
    assert (data["dataset"], data["split"], data["context_length"]) == (str(work / "dsdict"), "test", 32)


def test_eval_on_the_training_split_of_the_same_data_is_refused(user):
    work, _ = user
    r = saesteer("eval", "--sae", work / "run/saes/sae", "--dataset", work / "dsdict", "--split", "validation",
                 "--contexts", 4, "--ce-contexts", 2, "--absorption", "false", "--probing", "false", "--quiet")
    assert r.rc != 0 and "is training text" in r.err and "--allow-eval-overlap" in r.err
    assert [line for line in r.err.splitlines() if line.startswith("Traceback")] == []
