"""Local data splits (issue 16 item 2): a folder's train/validation files are separate splits,
`--split` picks one, `--dataset train=PATH,validation=PATH` maps them, `--eval-dataset` names a
separate eval source, train/eval overlap is refused or reported, and provenance records the files
really read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saesteer.cli import main
from training.heldout import EvalOverlapError, eval_text_config, heldout_contexts
from training.splits import local_splits
from training.text import DocumentSource, TextConfig, dataset_spec, resolve_data

HOOK = "blocks.0.hook_resid_post"


def _rows(kind: str, n: int) -> list[str]:
    return [f"{kind} row {i}: the boats sail near the reef and the crabs swim in the harbour ." for i in range(n)]


def _write(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data") / "corpus"
    _write(d / "train.jsonl", _rows("train", 120))
    _write(d / "validation.jsonl", _rows("validation", 40))
    return d


def _all_docs(cfg: TextConfig) -> list[str]:
    return [t for chunk in DocumentSource(cfg).chunks(0) for t in chunk]


# ------------------------------------------------------------------------------------------------
# finding the splits


def test_a_folder_of_split_files_gives_separate_splits(data):
    train = _all_docs(TextConfig(dataset=str(data), split="train"))
    valid = _all_docs(TextConfig(dataset=str(data), split="validation"))
    assert train == _rows("train", 120) and valid == _rows("validation", 40)  # no validation row in training
    spec = dataset_spec(TextConfig(dataset=str(data), split="train"))
    assert spec["split"] == "train" and spec["files"] == [["train.jsonl", (data / "train.jsonl").stat().st_size]]
    assert resolve_data(TextConfig(dataset=str(data), split="validation")).files == ((data / "validation.jsonl").resolve(),)


def test_split_names_follow_hf_datasets(tmp_path):
    _write(tmp_path / "a" / "train-0.jsonl", ["a"])
    _write(tmp_path / "a" / "train-1.jsonl", ["b"])
    _write(tmp_path / "a" / "dev.jsonl", ["c"])
    (tmp_path / "a" / "README.md").write_text("not data")
    assert {k: [p.name for p in v] for k, v in local_splits(str(tmp_path / "a")).items()} == {
        "train": ["train-0.jsonl", "train-1.jsonl"], "validation": ["dev.jsonl"]}
    _write(tmp_path / "b" / "train" / "x.jsonl", ["a"])
    _write(tmp_path / "b" / "test" / "y.jsonl", ["b"])
    assert {k: [p.name for p in v] for k, v in local_splits(str(tmp_path / "b")).items()} == {
        "train": ["x.jsonl"], "test": ["y.jsonl"]}
    _write(tmp_path / "c" / "docs1.jsonl", ["a"])
    _write(tmp_path / "c" / "more" / "docs2.jsonl", ["b"])  # no split names: all of it is "train"
    assert {k: [p.name for p in v] for k, v in local_splits(str(tmp_path / "c")).items()} == {
        "train": ["docs1.jsonl", "docs2.jsonl"]}


def test_split_mapping_and_single_files(data, tmp_path):
    other = _write(tmp_path / "extra" / "more.jsonl", _rows("extra", 5))
    spec = f"train={data / 'train.jsonl'},validation={tmp_path / 'extra'},test={tmp_path / 'extra' / '*.jsonl'}"
    splits = local_splits(spec)
    assert splits == {"train": [(data / "train.jsonl").resolve()], "validation": [other.resolve()],
                      "test": [other.resolve()]}
    assert _all_docs(TextConfig(dataset=spec, split="validation")) == _rows("extra", 5)
    # a single file is the split "train"; any other split is an error naming the splits and the flags
    assert _all_docs(TextConfig(dataset=str(other))) == _rows("extra", 5)
    with pytest.raises(ValueError, match=r"no split 'validation' \(a single file is the split 'train'\); its "
                                         r"splits: train \(more.jsonl\).*--split.*--dataset train=PATH,validation=PATH"):
        DocumentSource(TextConfig(dataset=str(other), split="validation"))
    with pytest.raises(ValueError, match="no split 'test'.*its splits: train .*, validation "):
        DocumentSource(TextConfig(dataset=str(data), split="test"))
    with pytest.raises(ValueError, match="is not SPLIT=PATH"):
        local_splits("train=a.jsonl,oops")
    with pytest.raises(FileNotFoundError, match="matches no"):
        local_splits(f"train={tmp_path / 'nothing' / '*.jsonl'}")


# ------------------------------------------------------------------------------------------------
# held-out contexts and the overlap check


def _tok():
    from helpers.tiny_hf import build_bpe_tokenizer

    return build_bpe_tokenizer()


def test_eval_contexts_come_from_the_eval_split_only(data):
    tok = _tok()
    train = TextConfig(dataset=str(data), split="train", context_length=32)
    held = heldout_contexts(train, eval_text_config(train, None, "validation"), tok, 6)
    text = " ".join(tok.batch_decode(held.tokens_NL.tolist()))
    assert "validation row" in text and "train row" not in text
    assert held.files == [str((data / "validation.jsonl").resolve())]
    assert held.overlap.checked and held.overlap.in_training == 0 and held.overlap.eval_documents == held.documents


def test_eval_dataset_overlap_is_refused_or_reported(data, tmp_path):
    tok = _tok()
    train = TextConfig(dataset=str(data), split="train", context_length=32)
    # a separate eval file: its only split is used whatever --eval-split says
    sep = _write(tmp_path / "held.jsonl", _rows("held", 30))
    held = heldout_contexts(train, eval_text_config(train, str(sep), "validation"), tok, 4)
    assert held.text.split == "train" and held.files == [str(sep.resolve())] and held.overlap.in_training == 0
    # the training file itself: refused, naming both sides and the override
    same = eval_text_config(train, str(data / "train.jsonl"), "validation")
    with pytest.raises(EvalOverlapError, match=r"is training text.*all|--eval-dataset PATH.*--allow-eval-overlap"):
        heldout_contexts(train, same, tok, 4)
    held = heldout_contexts(train, same, tok, 4, allow_overlap=True)
    assert held.overlap.total and held.overlap.shared_files == (str((data / "train.jsonl").resolve()),)
    # a copy of training documents under another name: the documents give it away
    copy = _write(tmp_path / "copy.jsonl", _rows("train", 120)[50:70])
    with pytest.raises(EvalOverlapError):
        heldout_contexts(train, eval_text_config(train, str(copy), "validation"), tok, 4)
    # ... unless the training run read only the first documents (what a cache records)
    held = heldout_contexts(train, eval_text_config(train, str(copy), "validation"), tok, 4, train_docs=50)
    assert held.overlap.in_training == 0 and held.overlap.training_documents == 50
    # partly training text: reported, not refused
    mixed = _write(tmp_path / "mixed.jsonl", [r for pair in zip(_rows("train", 120), _rows("new", 120)) for r in pair])
    held = heldout_contexts(train, eval_text_config(train, str(mixed), "validation"), tok, 6)
    assert 0 < held.overlap.in_training < held.overlap.eval_documents
    assert held.provenance()["overlap"]["in_training"] == held.overlap.in_training


# ------------------------------------------------------------------------------------------------
# the CLI end to end: cache of the train split, training with CE evaluation on validation


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from helpers.tiny_hf import save_tiny_gpt2

    return save_tiny_gpt2(tmp_path_factory.mktemp("m") / "tiny-gpt2", n_layer=1, n_positions=64)


@pytest.fixture(scope="module")
def cache(data, model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("c") / "cache"
    assert main(["cache", "--model", str(model_dir), "--dataset", str(data), "--context-length", "32",
                 "--hooks", HOOK, "--shard-contexts", "16", "--out", str(out), "--no-progress"]) == 0
    return out


TRAIN = ["--total-tokens", "1024", "--batch-size", "128", "--holdout-tokens", "256", "--d-sae", "32", "--k", "4",
         "--eval-ce-contexts", "4", "--progress", "false", "--num-threads", "1"]


def test_cache_reads_only_the_train_split_and_records_it(cache, data):
    from training.manifest import read_manifest
    from training.shards import load_tensors

    man = read_manifest(cache)
    ds = man.settings["dataset"]
    assert ds["split"] == "train" and [f for f, _ in ds["files"]] == ["train.jsonl"]
    assert man.dataset_files == [str((data / "train.jsonl").resolve())]
    tok = _tok()
    text = " ".join(tok.batch_decode(load_tensors(cache / man.shards[0].file, ["context_tokens"])["context_tokens"].tolist()))
    assert "train row" in text and "validation row" not in text


def test_train_evaluates_on_the_validation_split_and_records_it(cache, data, model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--cache", str(cache), "--model", str(model_dir), "--out", str(out), *TRAIN]) == 0
    printed = capsys.readouterr().out
    assert "CE evaluation on 4 contexts of" in printed and "split 'validation' (validation.jsonl)" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    ev = metrics["data"]["ce_eval_data"]
    assert ev["split"] == "validation" and ev["files"] == [str((data / "validation.jsonl").resolve())]
    assert ev["overlap"]["checked"] and ev["overlap"]["in_training"] == 0 and ev["overlap"]["eval_documents"] > 0
    assert metrics["data"]["dataset_split"] == "train"
    assert metrics["data"]["dataset_files"] == [str((data / "train.jsonl").resolve())]
    assert metrics["saes"][next(iter(metrics["saes"]))]["ce_loss_recovered"] is not None
    from saes import read_provenance

    prov = read_provenance(next((out / "saes").iterdir()))
    assert prov["data"]["ce_eval_data"] == ev and prov["data"]["dataset_files"] == metrics["data"]["dataset_files"]


def test_train_eval_dataset_and_refused_overlap(cache, data, model_dir, tmp_path, capsys):
    held = _write(tmp_path / "held" / "notes.jsonl", _rows("held", 20))
    out = tmp_path / "run"
    assert main(["train", "--cache", str(cache), "--model", str(model_dir), "--out", str(out), *TRAIN,
                 "--eval-dataset", str(held)]) == 0
    ev = json.loads((out / "metrics.json").read_text())["data"]["ce_eval_data"]
    assert ev["dataset"] == str(held) and ev["files"] == [str(held.resolve())] and ev["overlap"]["in_training"] == 0
    capsys.readouterr()
    # the training file as eval text: refused before training, with the override named
    out2 = tmp_path / "run2"
    code = main(["train", "--cache", str(cache), "--model", str(model_dir), "--out", str(out2), *TRAIN,
                 "--eval-dataset", str(data / "train.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "is training text" in err and "--allow-eval-overlap true" in err
    assert not (out2 / "metrics.json").exists()
    # a missing eval file is an error too (not a silent fallback)
    code = main(["train", "--cache", str(cache), "--model", str(model_dir), "--out", str(out2), *TRAIN,
                 "--eval-dataset", str(tmp_path / "nope.jsonl")])
    assert code == 2 and "no such file" in capsys.readouterr().err


def test_train_with_a_cache_refuses_another_dataset_or_split_and_takes_the_cached_one(cache, data, model_dir, tmp_path,
                                                                                        capsys, monkeypatch):
    """The cache decides the text: --dataset / --split other than it records did nothing, silently.
    Refused naming both; the cache's own, named from elsewhere (relative to another folder, the split's
    file itself), trains."""
    other = _write(tmp_path / "notes" / "train.jsonl", _rows("notes", 30))
    for flags, said in [(["--split", "validation"], "--split validation (the cache's: train)"),
                        (["--dataset", str(other)], f"--dataset {other} (the cache's: {data})"),
                        (["--dataset", str(data / "validation.jsonl")], "the cache's: "),
                        (["--dataset", "toy", "--split", "train"], "--dataset toy (the cache's")]:
        out = tmp_path / "refused"
        assert main(["train", "--cache", str(cache), "--model", str(model_dir), "--out", str(out), *TRAIN, *flags]) == 2
        err = capsys.readouterr().err
        assert said in err and "leave it out" in err and "--split train" not in err, (flags, err)
        assert not (out / "metrics.json").exists()
    monkeypatch.chdir(data.parent)
    for name in ["corpus", "corpus/train.jsonl"]:
        out = tmp_path / f"run-{name.replace('/', '-')}"
        assert main(["train", "--cache", str(cache), "--model", str(model_dir), "--out", str(out), *TRAIN,
                     "--dataset", name, "--split", "train"]) == 0, capsys.readouterr().err
        assert json.loads((out / "metrics.json").read_text())["data"]["dataset_split"] == "train"


def test_train_without_a_cache_reads_the_split_asked_for(data, model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", str(model_dir), "--dataset", f"train={data / 'validation.jsonl'},"
                 f"validation={data / 'train.jsonl'}", "--context-length", "32", "--hook", HOOK, "--out", str(out),
                 *TRAIN]) == 0
    m = json.loads((out / "metrics.json").read_text())["data"]
    assert m["dataset_split"] == "train" and m["dataset_files"] == [str((data / "validation.jsonl").resolve())]
    assert m["ce_eval_data"]["files"] == [str((data / "train.jsonl").resolve())]
    capsys.readouterr()
    code = main(["train", "--model", str(model_dir), "--dataset", str(data / "train.jsonl"), "--split", "validation",
                 "--context-length", "32", "--hook", HOOK, "--out", str(tmp_path / "r2"), *TRAIN])
    assert code == 2 and "a single file is the split 'train'" in capsys.readouterr().err


def test_a_hub_dataset_snapshot_in_the_hf_cache_reads_as_local_data(tmp_path, monkeypatch):
    """`huggingface-cli download --repo-type dataset NAME` leaves snapshot files that are symlinks to
    content-named blobs: the folder's splits come from the link names (not the blobs', which have no
    suffix), the documents read as the files hold them; and asking for the hub name offline says
    where that snapshot is."""
    import datasets
    from huggingface_hub import constants

    from helpers.foreign_saes import write_hf_snapshot

    src = {f"data/{split}.jsonl": _write(tmp_path / "src" / f"{split}.jsonl", _rows(split, 3))
           for split in ("train", "validation")}
    hub = tmp_path / "hub"
    snap = write_hf_snapshot(hub, "someone/prose", src, revision="c" * 40)
    (hub / "models--someone--prose").rename(hub / "datasets--someone--prose")  # the dataset repo's folder name
    snap = hub / "datasets--someone--prose" / snap.relative_to(hub / "models--someone--prose")
    assert (snap / "data" / "train.jsonl").is_symlink()
    splits = local_splits(str(snap))
    assert {k: [p.name for p in v] for k, v in splits.items()} == {"train": ["train.jsonl"],
                                                                  "validation": ["validation.jsonl"]}
    docs = [d for c in DocumentSource(TextConfig(dataset=str(snap), split="validation")).chunks() for d in c]
    assert docs == _rows("validation", 3)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=f"offline mode .* the HF cache holds a copy of its files: --dataset {snap}"):
        DocumentSource(TextConfig(dataset="someone/prose", split="train"))


def test_a_split_named_by_a_folder_of_arrow_files_reads_them(tmp_path):
    """`--dataset train=DIR,validation=DIR` where each DIR was written by Dataset.save_to_disk: the
    .arrow files are data files wherever a folder or glob names them, as for a whole save_to_disk folder."""
    from datasets import Dataset

    for split in ("train", "validation"):
        Dataset.from_dict({"content": [f"{split} doc {i}" for i in range(3)]}).save_to_disk(tmp_path / split)
    spec = f"train={tmp_path / 'train'},validation={tmp_path / 'validation'}"
    found = local_splits(spec)
    assert {k: [p.suffix for p in v] for k, v in found.items()} == {"train": [".arrow"], "validation": [".arrow"]}
    docs = [t for c in DocumentSource(TextConfig(dataset=spec, split="validation", text_column="content")).chunks(0) for t in c]
    assert docs == [f"validation doc {i}" for i in range(3)]
