"""Steering's messages name an SAE's integer index a latent (the naming rule): "latent 3", never
"feature 3" (a feature store, a feature edit stay what they are)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from helpers.steering_fixtures import random_sae, tiny_model, torch_threads
from steering import FeatureEdit, SteerLimits, make_preset
from steering.spec import SteeringError, raw_value

HOOK = "blocks.0.hook_resid_post"


def _says_latent(message: str, latent: int) -> None:
    assert f"latent {latent}" in message and not re.search(r"\bfeature \d", message), message


@pytest.mark.parametrize("make, latent", [
    (lambda: FeatureEdit(3, "clamp", float("nan")), 3),
    (lambda: raw_value(FeatureEdit(3, "add", 2.0, unit="max_act"), None, SteerLimits(), "s"), 3),
    (lambda: make_preset("p", ["300:clamp=1"], d_sae=128, hook_name=HOOK, fingerprint="0" * 64), 300),
    (lambda: make_preset("p", ["3:clamp=1", "2:add=1?200>1"], d_sae=128, hook_name=HOOK, fingerprint="0" * 64), 200),
])
def test_edit_and_preset_refusals_name_the_latent(make, latent):
    with pytest.raises(SteeringError) as err:
        make()
    _says_latent(str(err.value), latent)


def test_a_non_integer_latent_is_refused_as_a_latent():
    with pytest.raises(SteeringError, match=r"^latent must be an integer"):
        FeatureEdit("3", "clamp", 1.0)


def test_a_preset_x_strength_without_a_recorded_max_names_the_latent():
    preset = make_preset("p", ["3:add=1"], d_sae=128, hook_name=HOOK, fingerprint="0" * 64)
    preset = dataclasses.replace(preset, edits=("3:add=2x",))  # as a preset file saved without it reads
    with pytest.raises(SteeringError) as err:
        preset.feature_edits()
    _says_latent(str(err.value), 3)


def test_the_store_refuses_a_raw_strength_naming_the_latent():
    from steering.store import StoreLink

    link = StoreLink(store=None)
    link._tmax[5] = None  # the store has no typical max for it
    with pytest.raises(SteeringError) as err:
        link.record_strength(5, 2.0, "raw", {})
    _says_latent(str(err.value), 5)


def test_the_engine_names_the_latent_edited_twice_and_the_unlabelled_stop_trigger():
    from steering.engine import BatchEngine, Row
    from steering.rowedits import RowEdit, RowSteering, StopTrigger
    from steering.sampling import SamplingParams

    model = tiny_model()
    sae = random_sae(model, "jumprelu", hook=HOOK, seed=4)
    prompt = model.to_tokens("the sea")[0].tolist()
    greedy = SamplingParams(max_new_tokens=4, temperature=0)
    with torch_threads(1):
        twice = RowSteering([RowEdit("s", 3, "clamp", 1.0, "all", None), RowEdit("s", 3, "add", 1.0, "all", None)])
        engine = BatchEngine(model, {"s": sae})
        with pytest.raises(SteeringError) as err:
            engine.add([Row(prompt, greedy, twice, tag=0)])
            while engine.busy:
                engine.step()
        _says_latent(str(err.value), 3)
        stop = RowSteering([], [StopTrigger("s", 7, float("-inf"))])  # no label; fires on the first generated token
        engine = BatchEngine(model, {"s": sae})
        engine.add([Row(prompt, greedy, stop, tag=0)])
        events = []
        while engine.busy:
            events += [ev for ev in engine.step() if ev.finish_reason]
    assert events[0].finish_reason == "stop"
    assert events[0].detail["stopped_by"] == "latent 7 fired on generated token 0"
