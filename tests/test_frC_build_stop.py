"""`build_feature_store(stop_signals=...)`: a stop noted in a batch whose checkpoint was just
saved wrote the same pass state a second time before stopping (at a wide SAE, hundreds of MB
again inside a scheduler's grace period). The stop now saves only what the last save lacks."""

from __future__ import annotations

import contextlib

import pytest
from safetensors import safe_open

import features.build as fb
from features import BuildConfig, build_feature_store
from helpers.feature_fixtures import make_sae, random_source, single_thread

one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


def _stop_after(n_batches: int, batches: list):
    """A stop scope (as `saesteer.stopsignals.deferred`, but one that does not stop by itself) whose
    signal is noted once `n_batches` batches were counted."""
    return lambda: contextlib.nullcontext(lambda: 15 if len(batches) >= n_batches else None)


@pytest.mark.parametrize("checkpoint_rows, saves", [(1, 2), (0, 1)])  # every batch checkpointed; none
def test_a_stop_saves_the_pass_state_once(tmp_path, monkeypatch, checkpoint_rows, saves):
    src = random_source(n_contexts=24, context_length=16)
    batches, saved = [], []
    update, save_state = fb.FeatureAccumulator.update, fb.save_state

    def counted_update(self, acts, batch):
        batches.append(batch.first_context)
        return update(self, acts, batch)

    def counted_save(path, acc, identity, phase, next_context):
        saved.append((phase, next_context))
        return save_state(path, acc, identity, phase, next_context)

    monkeypatch.setattr(fb.FeatureAccumulator, "update", counted_update)
    monkeypatch.setattr(fb, "save_state", counted_save)
    cfg = BuildConfig(batch_rows=64, checkpoint_rows=checkpoint_rows)
    path = tmp_path / "s.db"
    with pytest.raises(KeyboardInterrupt, match="stopped by signal 15; the pass state is saved"):
        build_feature_store(path, make_sae(), src, cfg, progress=False, stop_signals=_stop_after(2, batches))
    assert len(batches) == 2
    assert len(saved) == saves and {phase for phase, _ in saved} == {"pass"}  # each state once
    with safe_open(str(fb.state_path(fb.building_path(path))), "pt") as f:
        assert int(f.metadata()["next_context"]) == saved[-1][1] > 0
