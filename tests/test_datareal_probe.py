"""The cache's rate probe reaches the build's batch size although its first forward pays a one-off
setup and one batch stalls (a busy machine): stopped at a batch of 2 contexts, it measured 243-256
tokens/s where the build ran 4,355 (benchmarks/user_scale.py's model, load 9), a 17x longer time
estimate. The clock here is a fake one that the probe's batches advance: nothing is timed."""

from __future__ import annotations

import types

import numpy as np

import training.estimate as estimate
from training.cache_config import CacheConfig


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_probe_ramps_to_the_build_batch_size_past_a_setup_and_a_stall(monkeypatch, tmp_path):
    clock = FakeClock()
    calls: list[int] = []

    class Batches:  # 10 ms per context; the first call 6 s (setup), the 4th (the second at 2 contexts) stalls
        def __init__(self, plan, cfg, tokens_BL) -> None:
            pass

        def seconds(self, b: int) -> float:
            calls.append(b)
            secs = 6.0 if len(calls) == 1 else 1.5 if len(calls) == 4 else 0.01 * b
            clock.now += secs
            return secs

        def hash_seconds_per_byte(self) -> float:
            return 0.0

    monkeypatch.setattr(estimate, "_ProbeBatches", Batches)
    monkeypatch.setattr(estimate, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    plan = types.SimpleNamespace(runner=types.SimpleNamespace(forward_used=lambda L: "fast"))
    cfg = CacheConfig(out=str(tmp_path / "c"), hooks=["blocks.0.hook_resid_post"], batch_size=32)
    rate = estimate.measure_rate(plan, cfg, np.zeros((4, 8), np.int64), 8, 100)
    assert rate.contexts_per_batch == 32
    assert abs(rate.tokens_per_s - 32 * 8 / (0.01 * 32)) < 1e-6  # the rate of the build's batches


def test_a_build_measures_its_rate_before_the_prefetcher_tokenizes(monkeypatch, tmp_path):
    """Beside the prefetcher's tokenizing (a thread of Python and the tokenizer's own threads), the
    probe's small batches stalled: 442 tokens/s at 4 contexts, a 37-minute estimate for a build of a
    few minutes (benchmarks/RESULTS.md). The estimate runs first, with no tokenizer thread alive."""
    import threading

    import training.cache as cache
    from helpers.real_cli import saesteer

    seen: list[list[str]] = []
    check = cache._check_estimate

    def recording(*args, **kwargs):
        seen.append([t.name for t in threading.enumerate()])
        return check(*args, **kwargs)

    monkeypatch.setattr(cache, "_check_estimate", recording)
    saesteer("cache", "--model", "toy", "--dataset", "toy", "--hooks", "blocks.0.hook_resid_post", "--max-tokens", "1024",
             "--shard-contexts", "4", "--out", str(tmp_path / "c"), "--no-progress").ok()
    assert len(seen) == 1 and "cache-tokenizer" not in seen[0]
