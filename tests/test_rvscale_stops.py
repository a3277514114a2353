"""A stop signal during `features build`'s pass (Ctrl-C, a scheduler's SIGTERM) at the default
--checkpoint-rows (4,194,304: no mid-pass checkpoint in a smaller cache). It saved no pass state,
yet the stop line said "run the same command to resume it" and the rerun, which did the whole pass
again, printed "(resumed)". A stop now saves the pass state at the next batch boundary (as `train`
checkpoints the step a stop came in), and "(resumed)" is said only when work was kept."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest
from safetensors import safe_open

from helpers.real_cli import saesteer
from test_stop_signals import _stop_child
from test_stop_signals import toy_cache_and_sae  # noqa: F401 (the fixture: a toy cache and an SAE of it)

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]


def _build_argv(d: Path, out: Path) -> list[str]:  # --checkpoint-rows left at its default
    return ["features", "build", "--sae", str(d / "sae"), "--cache", str(d / "cache"), "--out", str(out),
            "--model", "none", "--no-progress", "--batch-rows", "256"]


def _features(store: Path) -> list:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT * FROM features ORDER BY 1").fetchall()


def _pass_rows(store: Path) -> tuple[int, int]:
    """(rows of the pass the last run made, rows of the cache)"""
    from features import FeatureStore

    with FeatureStore.open(store) as st:
        assert st.complete and st.integrity_check() == "ok"
        return int(st.meta["build_stats"]["pass_rows"]), int(st.meta["n_rows"])


def test_a_stop_mid_pass_saves_the_pass_state_and_the_rerun_resumes_from_it(toy_cache_and_sae, tmp_path):
    from features.build import building_path, state_path

    d = toy_cache_and_sae
    clean = tmp_path / "clean.db"
    saesteer(*_build_argv(d, clean)).ok()

    store = tmp_path / "toy.db"
    # SIGTERM in the 4th batch of 16
    r = _stop_child("features.accumulate:FeatureAccumulator.update", 4, tmp_path / "waiting", *_build_argv(d, store))
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

    d = toy_cache_and_sae
    store = tmp_path / "toy.db"
    _stop_child("features.accumulate:FeatureAccumulator.update", 2, tmp_path / "waiting", *_build_argv(d, store),
                signum=signal.SIGKILL)
    assert building_path(store).is_file() and not state_path(building_path(store)).exists()
    out = saesteer(*_build_argv(d, store)).ok().text
    assert "resumed" not in out, out
    done, total = _pass_rows(store)
    assert done == total

