"""evals.ceiling: the best single direction's F1 per concept (the toy benchmark's ceiling column)."""

from __future__ import annotations

import itertools

import pytest
import torch

from evals.ceiling import best_threshold, linear_ceiling, probe_f1


def brute_force_best(scores, y):
    best = -1.0
    for t in sorted(set(scores.tolist())) + [min(scores.tolist()) - 1]:
        best = max(best, probe_f1(scores > t, y).f1)
    return best


def test_best_threshold_is_the_f1_best_cut_and_keeps_ties_together():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.randint(0, 6, (40,), generator=g).double()  # many ties
        y = torch.rand(40, generator=g) < 0.3
        if not y.any():
            continue
        t, f1 = best_threshold(scores, y)
        assert f1 == pytest.approx(brute_force_best(scores, y))
        assert probe_f1(scores > t, y).f1 == pytest.approx(f1)  # the threshold gives that F1


def test_best_threshold_refuses_no_positives():
    with pytest.raises(ValueError, match="positive"):
        best_threshold(torch.arange(5.0), torch.zeros(5, dtype=torch.bool))


def _data(n, g):
    x = torch.randn(n, 4, generator=g)
    linear = x[:, 0] + 0.5 * x[:, 1] > 1.0  # a half-space, rare-ish (~19%)
    xor = (x[:, 2] > 0) ^ (x[:, 3] > 0)  # no direction separates it
    return x, torch.stack([linear, xor], 1)


def test_linear_ceiling_separates_a_half_space_from_an_xor():
    g = torch.Generator().manual_seed(1)
    (xf, yf), (xt, yt) = _data(4000, g), _data(4000, g)
    c = linear_ceiling(xf, yf, xt, yt, ["linear", "xor"])
    assert c["linear"].f1 > 0.97
    # the best a direction can do on the XOR: fire everywhere, F1 = 2 * 0.5 / 1.5
    assert c["xor"].f1 < 0.72


def test_linear_ceiling_leaves_out_rare_concepts_and_checks_names():
    g = torch.Generator().manual_seed(2)
    (xf, yf), (xt, yt) = _data(500, g), _data(500, g)
    yf[:, 0] = False
    yf[:3, 0] = True
    assert list(linear_ceiling(xf, yf, xt, yt, ["linear", "xor"], min_positives=5)) == ["xor"]
    with pytest.raises(ValueError, match="3 names"):
        linear_ceiling(xf, yf, xt, yt, ["a", "b", "c"])


def test_probe_f1_counts():
    pred = torch.tensor([1, 1, 0, 0, 1], dtype=torch.bool)
    y = torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool)
    p = probe_f1(pred, y)
    assert (p.precision, p.recall) == pytest.approx((2 / 3, 2 / 3))
    assert p.f1 == pytest.approx(2 / 3)
    assert list(itertools.islice(p, 3)) == [p.f1, p.precision, p.recall]
