"""SAEBench-style sparse probing: how well k of the SAE's latents predict a labelled concept,
next to a probe on the model's activations.

Items are tokens (the toy world's ground-truth concept tags, one binary task per concept) or texts
(a labelled dataset, one task per label against the rest; as in SAEBench, a text's features are
the mean over its tokens of the model's activations and of the SAE's latents). Per task, classes
are balanced by subsampling (seeded), items split 80/20 per class; latents are ranked by mean
activation difference on the training items (SAEBench's selection), and a logistic-regression
probe on the top k latents is scored by test accuracy, for each k; the baseline is the same probe
on all of the model's activation dimensions.

Shape key: R token rows, D d_in, F d_sae, I items.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor

from evals.latents import columns, latent_table, ranking
from evals.linear import accuracy, fit_logistic, one_thread
from saes.base import SAE


class ProbingData(NamedTuple):
    """Token activations and which item each token belongs to (None: every token is an item)."""

    x_RD: Tensor
    item_R: Tensor | None
    n_items: int


class Task(NamedTuple):
    name: str
    pos_items: Tensor  # item ids of the class
    neg_items: Tensor  # item ids of the rest


def read_labelled_texts(path: str | Path, text_column: str = "text", label_column: str = "label") -> list[tuple[str, str]]:
    """(text, label) pairs of a local .jsonl / .json (a list of objects) / .parquet file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"labelled text file not found: {p}")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(p).to_pylist()
    else:
        from saes.fileio import read_text_file

        text = read_text_file(p, "labelled text file")  # a BOM dropped, UTF-16 refused with the fix
        try:
            # JSON Lines end lines at "\n" only: str.splitlines would also split a text at U+2028 or NEL
            rows = json.loads(text) if p.suffix == ".json" else [json.loads(line) for line in text.split("\n") if line.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"{p} is not valid JSON{' lines' if p.suffix != '.json' else ''} ({e})") from None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{p} must hold a list of objects with {text_column!r} and {label_column!r}")
    missing = [c for c in (text_column, label_column) if c not in rows[0]]
    if missing:
        raise ValueError(f"{p}: rows have no column {', '.join(map(repr, missing))} (they have: "
                         f"{', '.join(map(repr, rows[0]))}); name them with --probing-text-column / --probing-label-column")
    return [(str(r[text_column]), str(r[label_column])) for r in rows if r.get(text_column) is not None]


def _pool(values_RX: Tensor, item_R: Tensor | None, n_items: int) -> Tensor:
    if item_R is None:
        return values_RX
    sums = torch.zeros(n_items, values_RX.shape[1], dtype=torch.float64).index_add_(0, item_R, values_RX.double())
    counts = torch.bincount(item_R, minlength=n_items).clamp_min(1).double()
    return (sums / counts[:, None]).float()


def balanced_tasks(labels: dict[str, Tensor], *, max_per_class: int, min_positives: int, seed: int) -> list[Task]:
    """One task per label mask [I] bool: up to `max_per_class` items of each side (seeded)."""
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for name, mask in labels.items():
        pos, neg = mask.nonzero().flatten(), (~mask).nonzero().flatten()
        n = min(len(pos), len(neg), max_per_class)
        if len(pos) < min_positives or n < 2:
            continue
        tasks.append(Task(name, pos[torch.randperm(len(pos), generator=g)[:n]],
                          neg[torch.randperm(len(neg), generator=g)[:n]]))
    return tasks


def _halves(items: Tensor) -> tuple[Tensor, Tensor]:
    n_train = max(1, int(round(0.8 * len(items))))
    return items[:n_train], items[n_train:]


@torch.no_grad()
def sparse_probing(sae: SAE, data: ProbingData, tasks: Sequence[Task], ks: Sequence[int],
                   progress: bool = False) -> dict[str, Any]:
    """Test accuracy of k-latent probes for every task and k, and of the model-activation probe.
    `progress`: a bar (stderr) over the tasks."""
    with one_thread():  # many small problems
        return _sparse_probing(sae, data, tasks, ks, progress)


def _sparse_probing(sae: SAE, data: ProbingData, tasks: Sequence[Task], ks: Sequence[int],
                    progress: bool = False) -> dict[str, Any]:
    from tqdm.auto import tqdm

    model_ID = _pool(data.x_RD, data.item_R, data.n_items)
    table = latent_table(sae, data.x_RD, data.item_R, data.n_items)
    ks = [k for k in ks if k <= sae.d_sae]
    per_task: dict[str, dict[str, Any]] = {}
    for task in tqdm(tasks, desc="sparse probing", unit="task", disable=not progress):
        (pos_tr, pos_te), (neg_tr, neg_te) = _halves(task.pos_items), _halves(task.neg_items)
        if not len(pos_te) or not len(neg_te):
            continue
        train, test = torch.cat([pos_tr, neg_tr]), torch.cat([pos_te, neg_te])
        y_train = torch.cat([torch.ones(len(pos_tr)), torch.zeros(len(neg_tr))]).bool()
        y_test = torch.cat([torch.ones(len(pos_te)), torch.zeros(len(neg_te))]).bool()
        baseline = fit_logistic(model_ID[train], y_train)
        order = ranking(table, pos_tr, neg_tr)[: max(ks, default=0)]
        a_train, a_test = columns(table, order, train), columns(table, order, test)
        by_k = {}
        for k in ks:
            probe = fit_logistic(a_train[:, :k], y_train)
            by_k[str(k)] = {"accuracy": accuracy(probe.predict(a_test[:, :k]), y_test), "latents": order[:k].tolist()}
        per_task[task.name] = {"items_train": len(train), "items_test": len(test),
                               "model_accuracy": accuracy(baseline.predict(model_ID[test]), y_test), "k": by_k}
    summary: dict[str, Any] = {"tasks": len(per_task)}
    if per_task:
        summary["model_accuracy"] = sum(t["model_accuracy"] for t in per_task.values()) / len(per_task)
        summary["sae_accuracy"] = {str(k): sum(t["k"][str(k)]["accuracy"] for t in per_task.values()) / len(per_task)
                                   for k in ks}
    summary["per_task"] = per_task
    return summary
