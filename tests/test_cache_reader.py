"""The cache reader: shuffle invariants (Hypothesis), exact resume, rank partition, checksums."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.fake_cache import make_fake_cache
from training.reader import ActivationBatch, CacheReader
from training.shards import ShardCorruptError

HOOK = "blocks.0.hook_resid_post"


def row_ids(batch: ActivationBatch) -> list[tuple[int, int]]:
    return list(zip(batch.seq_index.tolist(), batch.positions.tolist()))


def stream(reader: CacheReader) -> list[tuple[int, int]]:
    out = []
    for b in reader:
        out += row_ids(b)
    return out


def all_ids(cache) -> list[tuple[int, int]]:
    return list(zip(cache.seq_index.tolist(), cache.positions.tolist()))


reader_cases = st.fixed_dictionaries({
    "shard_rows": st.lists(st.integers(0, 9), min_size=1, max_size=6).filter(lambda r: sum(r) > 0),
    "batch_size": st.integers(1, 12),
    "buffer_rows": st.integers(1, 40),
    "epochs": st.integers(1, 3),
    "seed": st.integers(0, 2**40),
    "world_size": st.integers(1, 3),
    "drop_last": st.booleans(),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=reader_cases)
def test_every_row_once_per_epoch_and_ranks_partition(case):
    with tempfile.TemporaryDirectory() as d:
        cache = make_fake_cache(Path(d) / "c", case["shard_rows"], d_in=3, context_length=5)
        R = sum(case["shard_rows"])
        W = case["world_size"]
        kw = dict(batch_size=case["batch_size"], seed=case["seed"], epochs=case["epochs"],
                  buffer_rows=case["buffer_rows"], with_tokens=True, drop_last=case["drop_last"])
        per_rank = [list(CacheReader(cache.path, rank=r, world_size=W, **kw)) for r in range(W)]
        # lockstep: every rank yields the same number of batches
        assert len({len(b) for b in per_rank}) == 1
        # interleave ranks back into the global stream
        glob = []
        for step in range(len(per_rank[0])):
            for r in range(W):
                b = per_rank[r][step]
                assert b.acts.dtype == torch.float32 and b.acts.shape == (len(b.seq_index), 3)
                glob += row_ids(b)
        total = case["epochs"] * R
        G = case["batch_size"] * W
        expected_len = (total // G) * G if case["drop_last"] else total
        assert len(glob) == expected_len
        # every row exactly once per epoch
        ids = sorted(all_ids(cache))
        for e in range(case["epochs"]):
            part = glob[e * R:(e + 1) * R]
            if len(part) == R:
                assert sorted(part) == ids
            else:
                assert len(set(part)) == len(part) and set(part) <= set(ids)
        # the activations are the stored rows
        lookup = {k: i for i, k in enumerate(all_ids(cache))}
        for b in per_rank[0][:3]:
            idx = [lookup[k] for k in row_ids(b)]
            assert torch.equal(b.acts, cache.acts[HOOK][idx])
            assert torch.equal(b.token_ids, cache.token_ids[idx])
        # same seed, same order (a fresh reader)
        again = [row_ids(b) for b in CacheReader(cache.path, rank=0, world_size=W, **kw)]
        assert again == [row_ids(b) for b in per_rank[0]]


@settings(max_examples=40, deadline=None)
@given(case=reader_cases, stop=st.integers(0, 40))
def test_state_dict_resume_gives_the_exact_remaining_stream(case, stop):
    with tempfile.TemporaryDirectory() as d:
        cache = make_fake_cache(Path(d) / "c", case["shard_rows"], d_in=2)
        kw = dict(batch_size=case["batch_size"], seed=case["seed"], epochs=case["epochs"],
                  buffer_rows=case["buffer_rows"], with_tokens=True, drop_last=case["drop_last"])
        full = list(CacheReader(cache.path, **kw))
        stop = min(stop, len(full))
        r = CacheReader(cache.path, **kw)
        it = iter(r)
        for _ in range(stop):
            next(it)
        state = json.loads(json.dumps(r.state_dict()))  # must survive JSON
        r2 = CacheReader(cache.path, **kw)
        r2.load_state_dict(state)
        rest = list(r2)
        assert len(rest) == len(full) - stop
        for a, b in zip(rest, full[stop:]):
            assert row_ids(a) == row_ids(b)
            assert torch.equal(a.acts, b.acts)


@pytest.mark.parametrize("shard_rows,buffer_rows", [([1], 1), ([1], 100), ([7], 3), ([3, 4, 5], 1000)])
def test_edge_cases_one_shard_one_row_big_buffer(tmp_path, shard_rows, buffer_rows):
    cache = make_fake_cache(tmp_path / "c", shard_rows)
    r = CacheReader(cache.path, 2, seed=1, epochs=2, buffer_rows=buffer_rows, with_tokens=True)
    got = stream(r)
    R = sum(shard_rows)
    assert len(got) == 2 * R
    assert sorted(got[:R]) == sorted(all_ids(cache)) == sorted(got[R:])


def test_order_depends_on_seed_and_epoch(tmp_path):
    cache = make_fake_cache(tmp_path / "c", [50, 50, 50, 50])
    a = stream(CacheReader(cache.path, 16, seed=1, epochs=2, buffer_rows=120, with_tokens=True))
    b = stream(CacheReader(cache.path, 16, seed=2, epochs=2, buffer_rows=120, with_tokens=True))
    assert a != b
    assert a[:200] != a[200:]  # epochs differ
    assert a[:200] != all_ids(cache)  # actually shuffled


def test_resume_across_world_size_change_keeps_the_stream(tmp_path):
    cache = make_fake_cache(tmp_path / "c", [9, 4, 11])
    ref = stream(CacheReader(cache.path, 6, seed=5, epochs=2, buffer_rows=10, with_tokens=True))
    r = CacheReader(cache.path, 3, seed=5, epochs=2, buffer_rows=10, with_tokens=True, world_size=2)
    it = iter(r)
    first = []
    for _ in range(3):
        first += row_ids(next(it))
    state = r.state_dict()
    r1 = CacheReader(cache.path, 6, seed=5, epochs=2, buffer_rows=10, with_tokens=True)
    r1.load_state_dict(state)
    assert stream(r1) == ref[state["row"]:]


def test_state_from_another_stream_is_refused(tmp_path):
    cache = make_fake_cache(tmp_path / "c", [5, 5])
    state = CacheReader(cache.path, 2, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        CacheReader(cache.path, 2, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="buffer_rows"):
        CacheReader(cache.path, 2, seed=1, buffer_rows=3).load_state_dict(state)


def test_memory_is_bounded_by_the_window(tmp_path):
    cache = make_fake_cache(tmp_path / "c", [10] * 20, d_in=8)
    r = CacheReader(cache.path, 4, buffer_rows=25, epochs=1)
    for _ in r:
        assert r._buf_acts.shape[0] <= 25
    assert max(w.rows for w in r.windows(0)) <= 25


def flip_byte(path: Path, offset_from_end: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_byte_is_detected_and_its_rows_never_yielded(tmp_path):
    cache = make_fake_cache(tmp_path / "c", [6, 6, 6, 6], d_in=2)
    bad = cache.manifest.shards[2]
    flip_byte(cache.path / bad.file)
    bad_rows = set(range(12, 18))
    lookup = {k: i for i, k in enumerate(all_ids(cache))}
    r = CacheReader(cache.path, 1, seed=0, buffer_rows=6, with_tokens=True)  # one shard per window
    seen = []
    with pytest.raises(ShardCorruptError, match=bad.file):
        for b in r:
            seen += [lookup[k] for k in row_ids(b)]
    assert not bad_rows & set(seen)


def test_reader_refuses_incomplete_cache_and_unknown_hook(tmp_path):
    cache = make_fake_cache(tmp_path / "c", [3], hooks=("a", "b"))
    with pytest.raises(ValueError, match="several hook points"):
        CacheReader(cache.path, 2)
    with pytest.raises(ValueError, match="no hook point 'c'"):
        CacheReader(cache.path, 2, hook="c")
    m = json.loads((cache.path / "manifest.json").read_text())
    m["complete"] = False
    (cache.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="incomplete"):
        CacheReader(cache.path, 2, hook="a")


def test_bf16_and_fp16_stored_rows_come_back_exactly(tmp_path):
    for dt in ("bf16", "fp16"):
        cache = make_fake_cache(tmp_path / dt, [4, 5], dtype=dt)
        r = CacheReader(cache.path, 3, with_tokens=True, dtype=None)
        lookup = {k: i for i, k in enumerate(all_ids(cache))}
        for b in r:
            assert b.acts.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[dt]
            idx = [lookup[k] for k in row_ids(b)]
            assert torch.equal(b.acts.float(), cache.acts[HOOK][idx])


def test_the_window_layout_is_walked_once_per_epoch_not_once_per_batch(tmp_path):
    """A 1e9-token cache has thousands of windows; the reader must not rebuild their list of
    start rows for every batch (that made a run's bookkeeping quadratic in its length)."""
    cache = make_fake_cache(tmp_path / "c", [4] * 40, d_in=2)
    reader = CacheReader(cache.path, 2, buffer_rows=4, epochs=2, verify="never")
    walks = []

    class Counted(list):
        def __iter__(self):
            walks.append(1)
            return super().__iter__()

    plain = reader.windows
    reader.windows = lambda epoch: Counted(plain(epoch))
    rows = sum(b.acts.shape[0] for b in reader)
    assert rows == 2 * 160 and len(plain(0)) == 40
    assert len(walks) <= 2 * 2  # per epoch at most, whatever the number of batches (160 here)
