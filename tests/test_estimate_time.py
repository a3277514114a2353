"""The cache's time estimate, as arithmetic on stage timings (fake ones here: nothing is timed).

On an idle 2-core machine the estimate was ~1.2-1.7x optimistic against the command a researcher then
ran (benchmarks/bench_estimate.py): its rate was the median of the probe's batches, where a build pays
for every stalled batch (the mean); the shards' SHA-256s, which take the same cores as the model on a
CPU, were left out; and the dry run's figure left out the command's start-up (imports, model load,
checks, the probe itself), which the build pays again before caching: seconds, against a 1M-token
cache of about half a minute.
"""

from __future__ import annotations

import re
import types

import numpy as np
import pytest

import training.estimate as estimate
from training.cache_config import CacheConfig

pytestmark = pytest.mark.usefixtures("offline_env")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def _probe(monkeypatch, tmp_path, walls_at_full: list[float], hash_per_byte: float = 0.0) -> estimate.ProbeRate:
    """measure_rate on fake batches: 1 ms per context while ramping, then `walls_at_full` in turn at 32."""
    clock, full = FakeClock(), iter(walls_at_full)

    class Batches:
        def __init__(self, plan, cfg, tokens_BL) -> None:
            pass

        def seconds(self, b: int) -> float:
            secs = next(full) if b == 32 else 0.001 * b
            clock.now += secs
            return secs

        def hash_seconds_per_byte(self) -> float:
            return hash_per_byte

    monkeypatch.setattr(estimate, "_ProbeBatches", Batches)
    monkeypatch.setattr(estimate, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    plan = types.SimpleNamespace(runner=types.SimpleNamespace(forward_used=lambda L: "fast"))
    cfg = CacheConfig(out=str(tmp_path / "c"), hooks=["blocks.0.hook_resid_post"], batch_size=32)
    return estimate.measure_rate(plan, cfg, np.zeros((4, 128), np.int64), 128, 100)


def test_the_rate_is_the_mean_of_the_probe_batches_stalls_included(monkeypatch, tmp_path):
    # the ramp's two runs at 32 contexts (the faster counts: 0.1), then timed batches, one of them stalled
    rate = _probe(monkeypatch, tmp_path, [0.1, 0.1, 0.1, 0.1, 0.5, 0.1, 0.1] + [0.1] * 20)
    walls = rate.batch_seconds
    assert rate.contexts_per_batch == 32 and 0.5 in walls and len(walls) >= 5
    assert rate.tokens_per_s == pytest.approx(32 * 128 / (sum(walls) / len(walls)))  # the median said 40,960


def test_caching_time_adds_the_batches_and_the_shards_hashing():
    probe = estimate.ProbeRate(tokens_per_s=32 * 128 / 0.18, contexts_per_batch=32,
                               batch_seconds=(0.1, 0.1, 0.5, 0.1, 0.1), hash_seconds_per_byte=1e-9)
    took = estimate.caching_time(3200, 128, probe, shard_bytes=2_000_000_000)  # 100 batches, 2 GB of shards
    assert took == pytest.approx((100 * 0.18 + 2.0, 100 * 0.1 + 2.0, 100 * 0.5 + 2.0))
    # a probe without its batches' times (an older caller): the rate alone, no range
    bare = estimate.caching_time(3200, 128, estimate.ProbeRate(32 * 128 / 0.2, 32), shard_bytes=10**9)
    assert bare == pytest.approx((20.0, 20.0, 20.0))


def _estimate(**kw) -> estimate.CacheEstimate:
    base = dict(out="c", hooks=["h"], d_in={"h": 256}, dtype="fp16", context_length=128, contexts=7812,
                contexts_done=0, rows_per_context=127.0, shard_contexts=1971, bytes_needed=527_000_000,
                bytes_free=10**11, forward_tokens_per_s=35_000.0, seconds=31.0, exact=True, forward="fast",
                probe_contexts=32, seconds_range=(26.0, 45.0))
    return estimate.CacheEstimate(**{**base, **kw})


def test_the_time_line_gives_the_range_and_the_dry_runs_start_up():
    build = _estimate().describe()  # as a build logs it: its start-up is behind it
    assert "~31 s caching (26 s - 45 s)" in build and "in all" not in build
    dry = _estimate(setup_seconds=13.4).describe()
    assert "~31 s caching (26 s - 45 s), ~44 s in all with the start-up" in dry
    assert "35,000 tokens/s" in dry and "32 contexts per batch" in dry
    assert _estimate(seconds=None, seconds_range=None, contexts=None).time_summary() == "unknown"


def test_the_dry_run_counts_the_commands_start_up(tmp_path, monkeypatch):
    """Through the CLI: the dry run's time line names the whole command's time, its start-up included."""
    from helpers.real_cli import saesteer

    monkeypatch.setattr(estimate, "PROBE_SECONDS", 1e-9)  # the probe's length is not what is tested
    r = saesteer("cache", "--model", "toy", "--dataset", "toy", "--hooks", "blocks.0.hook_resid_post",
                 "--max-tokens", "4096", "--out", str(tmp_path / "c"), "--dry-run").ok()
    m = re.search(r"time:\s+~(.+?) caching \((.+?) - (.+?)\), ~(.+?) in all with the start-up", r.text)
    assert m, r.text
    assert not (tmp_path / "c").exists()


def test_process_age_is_the_wall_time_since_this_process_started():
    from saesteer.commands.cache import process_age

    first = process_age()
    assert first is not None and first > 0
    assert process_age() >= first


def test_without_proc_the_start_up_is_left_out_not_guessed(tmp_path, monkeypatch):
    """macOS and Windows have no /proc (Windows no os.sysconf, macOS no CLOCK_BOOTTIME either): the dry
    run gives the caching time and its range, and no whole-command figure."""
    import os
    import time

    import saesteer.commands.cache as cache_cmd
    from helpers.real_cli import saesteer

    def no_proc(path, *a, **kw):
        raise FileNotFoundError(2, "No such file or directory", path)

    with monkeypatch.context() as m:  # Windows: no sysconf, no clock_gettime (the /proc read is then moot)
        m.delattr(os, "sysconf")
        m.delattr(time, "clock_gettime")
        assert cache_cmd.process_age() is None
    with monkeypatch.context() as m:  # a boot clock behind /proc's start time (an emulated /proc): no negative age
        m.setattr(time, "clock_gettime", lambda clock: 0.0)
        assert cache_cmd.process_age() is None
    monkeypatch.setattr(cache_cmd, "open", no_proc, raising=False)  # macOS: no /proc/self/stat
    assert cache_cmd.process_age() is None
    monkeypatch.setattr(estimate, "PROBE_SECONDS", 1e-9)  # the probe's length is not what is tested
    r = saesteer("cache", "--model", "toy", "--dataset", "toy", "--hooks", "blocks.0.hook_resid_post",
                 "--max-tokens", "4096", "--out", str(tmp_path / "c"), "--dry-run").ok()
    assert re.search(r"time:\s+~.+? caching \(.+? - .+?\)\n", r.text), r.text
    assert "in all" not in r.text
