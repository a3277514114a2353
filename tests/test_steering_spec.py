"""Edit specs: the text grammar, validation, strength units and limits (no model needed)."""

import math

import pytest

from steering.spec import FeatureEdit, SteerLimits, SteeringError, VectorEdit, lookup_typical_max, parse_edit, raw_value


@pytest.mark.parametrize(
    "text, expected",
    [
        ("123:clamp=8", FeatureEdit(123, "clamp", 8.0)),
        ("123:clamp=2x", FeatureEdit(123, "clamp", 2.0, unit="max_act")),
        ("123:clamp=2.5X", FeatureEdit(123, "clamp", 2.5, unit="max_act")),
        ("7:add=-3", FeatureEdit(7, "add", -3.0)),
        ("7:add=1e-2@generated", FeatureEdit(7, "add", 0.01, positions="generated")),
        ("res/5:ablate", FeatureEdit(5, "ablate", sae="res")),
        ("5:ablate@0,3,-1", FeatureEdit(5, "ablate", positions=(-1, 0, 3))),
        ("9:scale=0.5@prompt", FeatureEdit(9, "scale", 0.5, positions="prompt")),
        (" 9 : scale = 2 @ last ", FeatureEdit(9, "scale", 2.0, positions="last")),
    ],
)
def test_parse_edit(text, expected):
    assert parse_edit(text) == expected
    assert parse_edit(expected.describe()) == expected  # describe() round-trips


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("123", "cannot parse"),
        ("123:boost=2", "unknown op"),
        ("abc:clamp=2", "cannot parse"),
        ("123:clamp", "needs a value"),
        ("123:clamp=abc", "not a number"),
        ("123:clamp=nan", "finite"),
        ("123:add=inf", "finite"),
        ("123:add=-inf", "finite"),
        ("123:scale=2x", "scale"),
        ("123:ablate=3", "ablate takes no value"),
        ("123:clamp=1@middle", "unknown positions"),
    ],
)
def test_bad_edit_text_is_a_clear_error(text, fragment):
    with pytest.raises(SteeringError, match=fragment):
        parse_edit(text)


def test_feature_edit_validates_fields():
    with pytest.raises(SteeringError, match="integer"):
        FeatureEdit("12", "clamp", 1.0)  # type: ignore[arg-type]
    with pytest.raises(SteeringError, match="empty"):
        FeatureEdit(1, "clamp", 1.0, positions=[])
    with pytest.raises(SteeringError, match="integers"):
        FeatureEdit(1, "clamp", 1.0, positions=[1.5])
    assert FeatureEdit(1, "clamp", 1.0, positions=[3, 1, 3]).positions == (1, 3)
    assert FeatureEdit(1, "clamp", 1, positions=2).positions == (2,)


def test_vector_edit_validates():
    import torch

    with pytest.raises(SteeringError, match="1-d"):
        VectorEdit("blocks.0.hook_resid_post", torch.zeros(2, 2))
    with pytest.raises(SteeringError, match="finite"):
        VectorEdit("blocks.0.hook_resid_post", torch.zeros(4), strength=math.nan)


def test_typical_max_units_and_limits():
    limits = SteerLimits(max_abs_value=100, max_multiple=10, max_abs_scale=5)
    e = parse_edit("3:clamp=2x")
    assert raw_value(e, 4.0, limits, "sae") == 8.0
    with pytest.raises(SteeringError, match="typical max"):
        raw_value(e, None, limits, "sae")
    with pytest.raises(SteeringError, match="max_multiple"):
        raw_value(parse_edit("3:clamp=11x"), 1.0, limits, "sae")
    with pytest.raises(SteeringError, match="max_abs_value"):
        raw_value(parse_edit("3:add=1000"), None, limits, "sae")
    with pytest.raises(SteeringError, match="typical max activation"):  # raw, but absurd relative to the max
        raw_value(parse_edit("3:add=50"), 2.0, limits, "sae")
    with pytest.raises(SteeringError, match="max_abs_scale"):
        raw_value(parse_edit("3:scale=-6"), None, limits, "sae")
    assert raw_value(parse_edit("3:ablate"), None, limits, "sae") == 0.0
    assert raw_value(parse_edit("3:scale=0.5"), None, limits, "sae") == 0.5
    with pytest.raises(ValueError, match="max_multiple"):
        SteerLimits(max_multiple=float("nan"))


def test_lookup_typical_max_from_dict_or_callable():
    assert lookup_typical_max({3: 2.0}, 3) == 2.0
    assert lookup_typical_max({3: 2.0}, 4) is None
    assert lookup_typical_max(lambda f: f * 1.5, 2) == 3.0
    assert lookup_typical_max(lambda f: None, 2) is None
    assert lookup_typical_max({3: float("nan")}, 3) is None  # unusable values count as unknown
    assert lookup_typical_max({3: 0.0}, 3) is None
    assert lookup_typical_max(None, 3) is None


def test_package_exports_are_the_functions_not_modules():
    import importlib

    import steering

    for mod in ("generation", "sweeps", "session", "evaluate", "search", "baselines", "store", "config"):
        importlib.import_module(f"steering.{mod}")
    from steering import compare, generate, steer, sweep

    for fn in (compare, generate, steer, sweep):
        assert callable(fn) and not isinstance(fn, type(steering))
    for name in steering.__all__:
        assert getattr(steering, name) is not None
