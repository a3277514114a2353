"""benchmarks/bench_engine.py's cells run: its default steered-vs-unsteered cell once read a name
only --mixed's cell has (`grouped`), so `python benchmarks/bench_engine.py` failed with a NameError."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

pytestmark = [pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def toy_and_sae():
    import bench_engine
    from bench_steering import load_model, random_sae

    model = load_model("toy")
    return model, random_sae("topk", model.cfg.d_model, bench_engine.HOOK, seed=1)


@pytest.mark.parametrize("steered", [True, False])
def test_throughput_cell_runs(toy_and_sae, steered):
    import bench_engine

    model, sae = toy_and_sae
    assert bench_engine.throughput(model, sae, steered=steered, rows=2, tokens=8) > 0


@pytest.mark.parametrize("grouped", [True, False])
def test_mixed_cell_runs_and_counts_padding(toy_and_sae, grouped):
    import bench_engine

    model, sae = toy_and_sae
    got = bench_engine.mixed_throughput(model, sae, bench_engine.mixed_prompts(model, 4), grouped=grouped, rows=4,
                                        tokens=8)
    assert got["tok_s"] > 0 and 0 <= got["prefill_pad"] < 1 and 0 <= got["kv_pad"] < 1
