"""Steering against a real feature store: typical max from the store, label search, stored strength."""

import pytest
import torch

from helpers.steering_fixtures import torch_threads
from steering import FeatureEdit, GenerationConfig, StoreLink, steer
from steering.evaluate import OfflineScorer
from steering.search import label_search
from steering.spec import SteeringError
from steering.sweeps import SweepConfig, store_recommendation, sweep

features = pytest.importorskip("features")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from helpers.web_store import build_web_store

    with torch_threads(1):
        return build_web_store(tmp_path_factory.mktemp("store"))


def test_store_link(ws):
    with features.FeatureStore.open(ws.path, readonly=False) as store:
        link = StoreLink(store)
        live = [i for i in ws.labels if i != ws.xss_latent]
        f = live[0]
        tmax = link.typical_max(f)
        assert tmax is not None and tmax > 0
        assert tmax == store.feature(f).stats.typical_max_act
        hits = label_search(link.search, "ocean", limit=5)
        assert hits and ws.labels[hits[0].latent] == "ocean words"
        # x units resolve through the store
        tokens = ws.model.to_tokens(["the sea and the ship"])
        with torch.no_grad(), torch_threads(1):
            with steer(ws.model, ws.sae, [FeatureEdit(f, "clamp", 2.0, unit="max_act")], typical_max=link.typical_max) as s:
                assert s.edits[0].value == pytest.approx(2 * tmax)
                ws.model(tokens)
        # a sweep's recommendation lands in the store as a multiple of the typical max
        scorer = OfflineScorer(lambda t: float("sea" in t.split()), lambda t: (1, 1))
        with torch_threads(1):
            res = sweep(ws.model, ws.sae, f, ["the sea"], scorer, SweepConfig(strengths=[0.0, 1.0], perplexity=False),
                        gen_config=GenerationConfig(max_new_tokens=3, do_sample=False), typical_max=link.typical_max)
        store_recommendation(link.record_strength, res)
        rec = store.feature(f)
        assert rec.recommended_strength == res.recommended and rec.strength_source == "steering-sweep"
        # raw-unit recommendations are converted
        link.record_strength(f, 3 * tmax, "raw", {"op": "add"})
        assert store.feature(f).recommended_strength == pytest.approx(3.0)
        # a sweep where no strength works replaces it with an explicit none, saying why
        res.recommended = None
        store_recommendation(link.record_strength, res)
        rec = store.feature(f)
        assert rec.recommended_strength is None and rec.strength_source == "steering-sweep"
        with store._read() as c:
            (raw,) = c.execute("SELECT strength_details FROM features WHERE latent = ?", (f,)).fetchone()
        assert "no strength works" in raw
        dead = [s.latent for s in store.list_features(filter={"flags": ["dead"]}, limit=5)]
        if dead:
            assert link.typical_max(dead[0]) is None
            with pytest.raises(SteeringError, match="typical max"):
                link.record_strength(dead[0], 1.0, "raw", {})
