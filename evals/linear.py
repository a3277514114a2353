"""A small binary logistic-regression probe (float64, full batch), shared by the
absorption and sparse-probing evaluations.

Classes are weighted as scikit-learn's class_weight="balanced" does (SAEBench's probes use it);
features are standardised for the fit and the weights mapped back, so the probe applies to the
raw features: logit = x @ w + b.

Shape key: N examples, P features.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from saes.threads import torch_threads

NEWTON_MAX_FEATURES = 1025  # Newton up to this many parameters, L-BFGS above


class Probe(NamedTuple):
    w_P: Tensor  # float64
    b: float

    def logits(self, x_NP: Tensor) -> Tensor:
        return x_NP.double() @ self.w_P.to(x_NP.device) + self.b

    def predict(self, x_NP: Tensor) -> Tensor:
        return self.logits(x_NP) > 0


def one_thread():
    """Probes are tiny: a thread pool only adds synchronisation (20x slower on a busy 2-core machine)."""
    return torch_threads(1)


def fit_logistic(x_NP: Tensor, y_N: Tensor, l2: float = 1e-3, max_iter: int = 100, tol: float = 1e-9) -> Probe:
    with one_thread():
        return _fit_logistic(x_NP, y_N, l2, max_iter, tol)


def _fit_logistic(x_NP: Tensor, y_N: Tensor, l2: float, max_iter: int, tol: float) -> Probe:
    """Balanced, L2-regularised logistic regression (the bias is not penalised); deterministic.

    Newton's method with step halving (a few small linear solves) up to `NEWTON_MAX_FEATURES`
    features, L-BFGS with the analytic gradient beyond: no autograd graph, so thousands of small
    probes stay cheap."""
    x = x_NP.detach().to("cpu", torch.float64)
    y = y_N.detach().to("cpu", torch.float64)
    n, p = x.shape
    n_pos = float(y.sum())
    if n_pos in (0.0, float(n)):
        raise ValueError("a probe needs examples of both classes")
    sw = torch.where(y > 0, n / (2 * n_pos), n / (2 * (n - n_pos)))
    mean, std = x.mean(0), x.std(0)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    z = torch.cat([(x - mean) / std, torch.ones(n, 1, dtype=torch.float64)], dim=1)  # last column: bias
    penalty = torch.full((p + 1,), 2 * l2, dtype=torch.float64)
    penalty[-1] = 0.0

    def loss_grad(theta: Tensor) -> tuple[float, Tensor, Tensor]:
        logits = z @ theta
        prob = torch.sigmoid(logits)
        loss = (sw * (torch.nn.functional.softplus(logits) - y * logits)).mean() + 0.5 * (penalty * theta * theta).sum()
        grad = z.T @ (sw * (prob - y)) / n + penalty * theta
        return float(loss), grad, prob

    theta = torch.zeros(p + 1, dtype=torch.float64)
    if p + 1 <= NEWTON_MAX_FEATURES:
        loss, grad, prob = loss_grad(theta)
        for _ in range(max_iter):
            hess = (z.T * (sw * prob * (1 - prob))) @ z / n + torch.diag(penalty + 1e-12)
            step = torch.linalg.solve(hess, grad)
            t = 1.0
            while True:  # step halving keeps every iterate at a lower loss
                cand = theta - t * step
                c_loss, c_grad, c_prob = loss_grad(cand)
                if c_loss <= loss or t < 1e-6:
                    break
                t *= 0.5
            theta, loss, grad, prob = cand, c_loss, c_grad, c_prob
            if float((t * step).abs().max()) < tol:
                break
    else:
        param = theta.clone().requires_grad_(False)
        opt = torch.optim.LBFGS([param], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure():
            loss, grad, _ = loss_grad(param)
            param.grad = grad
            return torch.tensor(loss, dtype=torch.float64)

        opt.step(closure)
        theta = param.detach()
    w_raw = theta[:p] / std
    return Probe(w_raw, float(theta[p] - (w_raw * mean).sum()))


def f1_score(pred_N: Tensor, y_N: Tensor) -> float:
    pred, y = pred_N.bool().cpu(), y_N.bool().cpu()
    tp = float((pred & y).sum())
    denom = float(pred.sum() + y.sum())
    return 2 * tp / denom if denom else 0.0


def accuracy(pred_N: Tensor, y_N: Tensor) -> float:
    return float((pred_N.bool().cpu() == y_N.bool().cpu()).double().mean())
