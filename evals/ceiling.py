"""The linear ceiling of single-latent concept detection: how well the best single direction of
the model's activations (a logistic probe plus the threshold that maximises F1) detects a concept.

An SAE latent fires where one direction of the activations passes a threshold (exactly so for the
JumpReLU inference form of BatchTopK / Matryoshka; approximately for TopK, whose threshold moves with
the token's other latents). So a concept the best probe cannot detect at F1 0.8 cannot have a latent
at F1 0.8 either, whatever the SAE: the probe's F1 is the ceiling the SAE's best-latent F1 is read
against (`features.concepts`).

    ceiling = linear_ceiling(x_fit_RD, y_fit_RC, x_test_RD, y_test_RC, names)
    ceiling["name:anna"]        # ProbeF1(f1, precision, recall) on the test rows

Per concept: a balanced logistic probe (`evals.linear.fit_logistic`) fitted on the fit rows, its
threshold chosen on the same fit rows (natural class balance) for the highest F1, then scored on
the test rows. Shape key: R rows, D d_in, C concepts.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from evals.linear import fit_logistic


class ProbeF1(NamedTuple):
    f1: float
    precision: float
    recall: float


def best_threshold(scores_R: Tensor, y_R: Tensor) -> tuple[float, float]:
    """(threshold, F1) of the rule `score > threshold` with the highest F1 on these rows. The
    threshold lies halfway between the last score kept and the next one (ties kept together)."""
    y = y_R.bool()
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("best_threshold needs at least one positive row")
    s, order = torch.sort(scores_R.double(), descending=True)
    tp = torch.cumsum(y[order].double(), 0)
    kept = torch.arange(1, s.numel() + 1, dtype=torch.float64)
    f1 = 2 * tp / (kept + n_pos)
    # a cut may fall only where the next score differs (equal scores stay on one side)
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[:-1] != s[1:]
    f1 = torch.where(last, f1, torch.full_like(f1, -1.0))
    i = int(torch.argmax(f1))
    below = float(s[i + 1]) if i + 1 < s.numel() else float(s[i]) - 1.0
    return (float(s[i]) + below) / 2, float(f1[i])


def probe_f1(pred_R: Tensor, y_R: Tensor) -> ProbeF1:
    pred, y = pred_R.bool(), y_R.bool()
    tp = float((pred & y).sum())
    n_pred, n_pos = float(pred.sum()), float(y.sum())
    return ProbeF1(2 * tp / max(n_pred + n_pos, 1.0), tp / max(n_pred, 1.0), tp / max(n_pos, 1.0))


def linear_ceiling(
    x_fit_RD: Tensor,
    y_fit_RC: Tensor,
    x_test_RD: Tensor,
    y_test_RC: Tensor,
    names: Sequence[str],
    *,
    min_positives: int = 20,
    l2: float = 1e-3,
) -> dict[str, ProbeF1]:
    """The best single direction's test F1 for every concept seen at least `min_positives` times
    in both the fit and the test rows (others are left out)."""
    if y_fit_RC.shape[1] != len(names) or y_test_RC.shape[1] != len(names):
        raise ValueError(f"linear_ceiling: {len(names)} names but concept masks of {y_fit_RC.shape[1]} (fit) "
                         f"and {y_test_RC.shape[1]} (test) columns")
    x_fit, x_test = x_fit_RD.double(), x_test_RD.double()
    out: dict[str, ProbeF1] = {}
    for c, name in enumerate(names):
        y_fit, y_test = y_fit_RC[:, c].bool(), y_test_RC[:, c].bool()
        if min(int(y_fit.sum()), int(y_test.sum())) < min_positives or bool(y_fit.all()):
            continue
        probe = fit_logistic(x_fit, y_fit, l2=l2, max_iter=30)
        threshold, _ = best_threshold(probe.logits(x_fit), y_fit)
        out[name] = probe_f1(probe.logits(x_test) > threshold, y_test)
    return out
