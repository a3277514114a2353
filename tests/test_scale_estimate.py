"""The cache estimate on a user's local parquet dataset whose first rows are not typical: files
sorted so that hundreds of one-line documents come before long code, prose and CJK documents
(a dataset sorted by length, short chat turns before articles). The estimate reads the first 512
documents and scaled their tokens by the row count, so it saw only the one-liners and put the
whole dataset at ~1% of its size: the dry run's tokens and disk figure, the build's disk check and
its progress bar's total were all ~100x too small; with --streaming false (an Arrow copy whose rows
are counted) the same. It now scales by the text column's bytes (from the parquet footers, or
summed from the Arrow copy's string offsets).
"""

from __future__ import annotations

import re

import pytest

pytestmark = [pytest.mark.usefixtures("offline_env", "one_thread")]


@pytest.fixture(scope="module")
def short_first_parquet(tmp_path_factory):
    """data/train-0000{0,1}-of-00002.parquet, text in column 'body': 600 one-line documents, then
    the long documents of helpers.real_models (Python source, prose, accented/Greek/CJK text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from helpers.real_models import corpus_documents

    long_docs = corpus_documents()
    lines = [ln for d in long_docs for ln in d.splitlines() if 20 < len(ln) < 80]
    docs = sorted(lines[:600]) + long_docs
    root = tmp_path_factory.mktemp("short-first")
    (root / "data").mkdir()
    half = len(docs) // 2
    for i, part in enumerate((docs[:half], docs[half:])):
        pq.write_table(pa.table({"id": list(range(len(part))), "body": part}),
                       root / "data" / f"train-{i:05d}-of-00002.parquet")
    return root, docs


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from helpers.tiny_hf import save_tiny_gpt2

    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), n_layer=1)


@pytest.mark.parametrize("streaming", ["true", "false"])  # false: an Arrow copy, whose rows are counted
def test_dry_run_sizes_a_parquet_dataset_whose_first_rows_are_short(short_first_parquet, gpt2, tmp_path, monkeypatch,
                                                                     streaming):
    from transformers import AutoTokenizer

    from helpers.real_cli import saesteer
    from training import estimate

    monkeypatch.setattr(estimate, "PROBE_SECONDS", 1e-9)  # the rate probe is not what is tested
    root, docs = short_first_parquet
    L = 32
    r = saesteer("cache", "--model", gpt2, "--dataset", root, "--text-column", "body", "--context-length", L,
                 "--bos-policy", "none", "--separator", "eos", "--streaming", streaming, "--out", tmp_path / "cache",
                 "--dry-run").ok()
    estimated = int(re.search(r"tokens:\s+~?([\d,]+)", r.text).group(1).replace(",", ""))
    tok = AutoTokenizer.from_pretrained(gpt2)
    stream = sum(len(ids) + 1 for ids in tok(docs, add_special_tokens=False, verbose=False)["input_ids"])  # + EOS each
    actual = stream // L * L
    assert 0.85 * actual <= estimated <= 1.15 * actual, (estimated, actual)


def test_progress_bar_of_a_streamed_build_ends_at_the_tokens_cached(tmp_path, gpt2, monkeypatch):
    """Without --max-tokens the bar's total is the estimate (the sample is not the whole dataset):
    the bar ends on the tokens actually cached, at 100%, not at 9x% or without its total."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from helpers.real_models import corpus_documents

    from helpers.real_cli import saesteer
    from training import estimate

    monkeypatch.setattr(estimate, "PROBE_SECONDS", 1e-9)
    long_docs = [d for d in corpus_documents() if 2000 < len(d) < 8000][:12]
    lines = [ln for d in corpus_documents() for ln in d.splitlines() if 20 < len(ln) < 80]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"body": sorted(lines[:600]) + long_docs}), tmp_path / "data" / "train-00000-of-00001.parquet")
    r = saesteer("cache", "--model", gpt2, "--dataset", tmp_path, "--text-column", "body", "--context-length", 32,
                 "--bos-policy", "none", "--exclude-tokens", "none", "--out", tmp_path / "cache").ok()
    cached = int(re.search(r"\(([\d,]+) tokens this run", r.text).group(1).replace(",", ""))
    last = [ln for ln in r.err.replace("\r", "\n").splitlines() if ln.startswith("caching")][-1]
    done, total = re.search(r"\| *([\d.]+k?)/([\d.]+k?) \[", last).groups()
    assert "100%" in last and done == total, last
    assert float(total.rstrip("k")) * (1000 if total.endswith("k") else 1) == pytest.approx(cached, rel=0.01), (last, cached)
