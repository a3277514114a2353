"""A stop signal during `features build`'s pass (Ctrl-C, a scheduler's SIGTERM) at the default
--checkpoint-rows (4,194,304: no mid-pass checkpoint in a smaller cache). It saved no pass state,
yet the stop line said "run the same command to resume it" and the rerun, which did the whole pass
again, printed "(resumed)". A stop now saves the pass state at the next batch boundary (as `train`
checkpoints the step a stop came in), and "(resumed)" is said only when work was kept."""

from __future__ import annotations

import signal
import sqlite3
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]


@pytest.fixture(scope="module")
def toy_cache_and_sae(tmp_path_factory) -> Path:
    import torch

    import saes

    d = tmp_path_factory.mktemp("toy")
    hook = "blocks.2.hook_resid_post"
    saesteer("cache", "--model", "toy", "--dataset", "toy", "--max-tokens", "4096", "--shard-contexts", "8",
             "--hooks", hook, "--out", d / "cache", "--no-progress").ok()
    sae = saes.create_sae("topk", 128, 64, k=8, generator=torch.Generator().manual_seed(0),
                          metadata={"hook_name": hook, "model_name": "toyworld-tiny"})
    saes.save_sae(sae, d / "sae")
    return d


def _build_argv(d: Path, out: Path) -> list[str]:  # --checkpoint-rows left at its default
    return ["features", "build", "--sae", str(d / "sae"), "--cache", str(d / "cache"), "--out", str(out),
            "--model", "none", "--no-progress", "--batch-rows", "256"]


def _features(store: Path) -> list:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT * FROM features ORDER BY 1").fetchall()


def _pass_rows(store: Path) -> int:
    from features import FeatureStore

    with FeatureStore.open(store) as st:
        assert st.complete and st.integrity_check() == "ok"
        return int(st.meta["build_stats"]["pass_rows"]), int(st.meta["n_rows"])


def test_a_stop_mid_pass_saves_the_pass_state_and_the_rerun_resumes_from_it(toy_cache_and_sae, tmp_path):
    from features.build import building_path, state_path
    from helpers.stop_child import signal_when_waiting

    d = toy_cache_and_sae
    clean = tmp_path / "clean.db"
    saesteer(*_build_argv(d, clean)).ok()

    store = tmp_path / "toy.db"
    r = signal_when_waiting([sys.executable, str(Path(__file__).parent / "helpers" / "stop_child.py"),
                             "features.accumulate:FeatureAccumulator.update", "4", str(tmp_path / "waiting"),
                             *_build_argv(d, store)], tmp_path / "waiting", _child_env(), signal.SIGTERM)
    assert r.returncode == 128 + signal.SIGTERM and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "resume" in r.stderr, r.stderr[-2000:]
    state = state_path(building_path(store))
    assert state.is_file(), "the stop saved no pass state"
    with safe_open(str(state), "pt") as f:
        meta = f.metadata()
    assert meta["phase"] == "pass" and int(meta["next_context"]) > 0, meta

    out = saesteer(*_build_argv(d, store)).ok().text
    assert "(resumed)" in out, out
    done, total = _pass_rows(store)
    assert 0 < done < total  # the pass went on from the stop, not from the start
    assert _features(store) == _features(clean)


def test_a_rerun_with_no_state_to_resume_does_not_say_resumed(toy_cache_and_sae, tmp_path):
    """A build killed before it saved any state (SIGKILL, a power cut): the rerun starts over and
    says nothing of resuming."""
    from features.build import building_path, state_path
    from helpers.stop_child import signal_when_waiting

    d = toy_cache_and_sae
    store = tmp_path / "toy.db"
    signal_when_waiting([sys.executable, str(Path(__file__).parent / "helpers" / "stop_child.py"),
                         "features.accumulate:FeatureAccumulator.update", "2", str(tmp_path / "waiting"),
                         *_build_argv(d, store)], tmp_path / "waiting", _child_env(), signal.SIGKILL)
    assert building_path(store).is_file() and not state_path(building_path(store)).exists()
    out = saesteer(*_build_argv(d, store)).ok().text
    assert "resumed" not in out, out
    done, total = _pass_rows(store)
    assert done == total


def _child_env() -> dict[str, str]:
    import os

    from helpers.real_cli import OFFLINE_ENV

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("SAESTEER_DEBUG", None)
    env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
    return env
