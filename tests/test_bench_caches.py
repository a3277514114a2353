"""The caches the benchmarks write are the format users' caches have: written by the cache's own
shard writer and manifest, with a SHA-256 per part (benchmarks/bench_train.py's synthetic cache
had whole-file checksums only, so its readers hashed whole files, as no user's reader does)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from helpers.real_cli import saesteer  # noqa: E402
from training.manifest import read_manifest  # noqa: E402
from training.reader import CacheReader  # noqa: E402
from training.shards import HEADER_PART  # noqa: E402


def test_bench_trains_synthetic_cache_has_part_checksums_and_reads_by_part(tmp_path, monkeypatch):
    import bench_train
    from training import shardset

    cache = bench_train.synthetic_cache(tmp_path / "c", d_in=16, rows=1000, shard_rows=256)
    shards = read_manifest(cache).shards
    assert [s.rows for s in shards] == [256, 256, 256, 232]
    assert all(set(s.part_sha256) == {HEADER_PART, f"acts/{bench_train.HOOK}", "token_ids", "positions", "seq_index",
                                      "context_tokens"} for s in shards)
    saesteer("cache", "--verify", cache).ok()
    hashed, digests = [], shardset.shard_digests
    monkeypatch.setattr(shardset, "shard_digests", lambda *a, **kw: hashed.append(digests(*a, **kw)) or hashed[-1])
    reader = CacheReader(cache, 100, seed=0, epochs=1)
    try:
        assert sum(len(b.acts) for b in reader) == 1000
    finally:
        reader.close()
    assert len(hashed) == 4 and all(HEADER_PART in h for h in hashed)  # by part, not the whole file
    # a cache an older run left (whole-file checksums only) is written again
    man = json.loads((cache / "manifest.json").read_text())
    for s in man["shards"]:
        del s["part_sha256"]
    (cache / "manifest.json").write_text(json.dumps(man))
    assert all(s.part_sha256 for s in read_manifest(bench_train.synthetic_cache(cache, 16, 1000, 256)).shards)


def test_bench_trains_synthetic_cache_never_deletes_a_folder_it_did_not_write(tmp_path):
    """--synthetic-cache pointed at a folder of other things (a user's cache of an older version, without
    part checksums): it was deleted to write the synthetic cache there. It is refused now, and a synthetic
    cache of another width is written again, not used."""
    import pytest

    import bench_train

    theirs = bench_train.synthetic_cache(tmp_path / "their-cache", d_in=16, rows=300, shard_rows=256)
    man = json.loads((theirs / "manifest.json").read_text())
    man["model"]["id"] = "toy:toyworld-tiny"  # made by an older saesteer: no part checksums
    for s in man["shards"]:
        del s["part_sha256"]
    (theirs / "manifest.json").write_text(json.dumps(man))
    (theirs / "notes.txt").write_text("theirs")
    with pytest.raises(ValueError, match="holds something other than a synthetic cache"):
        bench_train.synthetic_cache(theirs, d_in=16, rows=300, shard_rows=256)
    assert (theirs / "notes.txt").is_file() and read_manifest(theirs).shards[0].part_sha256 is None
    ours = bench_train.synthetic_cache(tmp_path / "c", d_in=16, rows=300, shard_rows=256)
    assert read_manifest(bench_train.synthetic_cache(ours, d_in=32, rows=300, shard_rows=256)).d_in == {
        bench_train.HOOK: 32}
