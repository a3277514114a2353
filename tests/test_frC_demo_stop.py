"""A stop signal during `saesteer demo`'s features stage: the demo built its store without stop
handling, so Ctrl-C (or a scheduler's SIGTERM) in the feature pass stopped it mid-batch with no
pass state saved, and the rerun did the whole pass again (`features build` saves the pass state at
the next batch boundary). The demo's stage now builds as `features build` does."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors import safe_open

from test_stop_signals import toy_cache_and_sae  # noqa: F401 (the fixture: a toy cache and an SAE of it)

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]


def test_a_stop_in_the_demos_feature_pass_saves_the_pass_state(toy_cache_and_sae: Path, tmp_path: Path,
                                                                 monkeypatch) -> None:
    import saes
    from features.accumulate import FeatureAccumulator
    from features.build import building_path, state_path
    from saesteer import stopsignals
    from saesteer.demo.stages import stage_features

    d = toy_cache_and_sae
    sae = saes.load_sae(d / "sae")
    update = FeatureAccumulator.update

    def update_then_interrupt(self, *a, **kw):  # Ctrl-C while the first batch is counted
        out = update(self, *a, **kw)
        os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(FeatureAccumulator, "update", update_then_interrupt)
    cfg = SimpleNamespace(hook=sae.cfg.metadata["hook_name"])
    paths = SimpleNamespace(cache=d / "cache", store=tmp_path / "features.db")
    with pytest.raises(stopsignals.Stopped) as stopped, stopsignals.installed():  # as the CLI runs a command
        stage_features(cfg, paths, None, sae, d / "sae", False, {}, print)
    assert stopped.value.signum == signal.SIGINT
    state = state_path(building_path(paths.store))
    assert state.is_file(), "the stop saved no pass state"
    with safe_open(str(state), "pt") as f:
        assert f.metadata()["phase"] == "pass"
