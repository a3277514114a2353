"""The cache estimate of a local parquet dataset whose text repeats (templated prompts, a dataset
not deduplicated): pyarrow writes a string column as a dictionary by default, each distinct string
once, so the footers' uncompressed size of the column, by which the estimate scaled, was ~0.5% of
the text's bytes and the dry run said ~1% of the tokens the build then cached. Those bytes are
now taken as a lower bound when a chunk is dictionary-encoded (the estimate by rows, when larger,
wins), and an exact size when it is stored plain."""

from __future__ import annotations

import random
import re

import pytest

pytestmark = [pytest.mark.usefixtures("offline_env", "one_thread")]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from helpers.tiny_hf import save_tiny_gpt2

    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), n_layer=1)


def _estimate(gpt2, root, tmp_path, monkeypatch) -> int:
    from helpers.real_cli import saesteer
    from training import estimate

    monkeypatch.setattr(estimate, "PROBE_SECONDS", 1e-9)  # the rate probe is not what is tested
    r = saesteer("cache", "--model", gpt2, "--dataset", root, "--text-column", "body", "--context-length", 32,
                 "--bos-policy", "none", "--separator", "eos", "--streaming", "true", "--out", tmp_path / "cache",
                 "--dry-run").ok()
    return int(re.search(r"tokens:\s+~?([\d,]+)", r.text).group(1).replace(",", ""))


@pytest.mark.parametrize("dictionary", [True, False])  # pyarrow's default; plain strings
def test_dry_run_sizes_a_parquet_dataset_of_repeated_documents(gpt2, tmp_path, monkeypatch, dictionary):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from helpers.real_models import corpus_documents

    distinct = [d for d in corpus_documents() if len(d) < 3000][:40] + ["天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。" * 8]
    rng = random.Random(0)
    docs = [rng.choice(distinct) for _ in range(4000)]  # each ~100 times, in no order
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"id": list(range(len(docs))), "body": docs}),
                   tmp_path / "data" / "train-00000-of-00001.parquet", use_dictionary=dictionary)
    estimated = _estimate(gpt2, tmp_path, tmp_path, monkeypatch)
    tok = AutoTokenizer.from_pretrained(gpt2)
    stream = sum(len(ids) + 1 for ids in tok(docs, add_special_tokens=False, verbose=False)["input_ids"])  # + EOS each
    actual = stream // 32 * 32
    assert 0.85 * actual <= estimated <= 1.15 * actual, (estimated, actual)
