"""What a finished run leaves behind besides the SAE folders: metrics.json and training_curves.html.

metrics.json (format "saesteer.train_metrics", version 1):
    {
      "format", "format_version",
      "tokens_trained", "steps", "holdout_rows", "activation_scale", "step_method",
      "wall_seconds", "train_seconds", "tokens_per_second",      # tokens_per_second: training steps only
      "stopped_early": null | "<reason>",
      "data": {...provenance given to train()...},
      "config": RunConfig.to_dict(),
      "saes": {
        "<name>": {
          "folder": "saes/<name>", "architecture", "d_in", "d_sae", "k", "lr", "skipped_steps",
          "explained_variance", "mse", "l0", "dead_fraction", "dead_window_tokens", "eval_dead_fraction",
          "dense_fraction", "eval_rows", ["levels": [{"width", "explained_variance", "mse", "l0"}, ...]],
          ["ce_loss_clean", "ce_loss_spliced", "ce_loss_zero", "ce_loss_recovered", "kl_div"]
        }, ...
      }
    }
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from saes.fileio import atomic_write_bytes, atomic_write_json

METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.html"
METRICS_FORMAT = "saesteer.train_metrics"


def dead_figures_note(window_tokens: int | None, heldout_tokens: int | None, pass_tokens: int | None = None) -> str:
    """What the dead figures printed beside each other mean (docs/training.md, "Dead latents").

    One definition, "no firing over N tokens", measured three ways: over the last N training
    tokens (`dead_fraction`, training form, the mask AuxK uses), over the held-out tokens
    (`eval_dead_fraction`, inference form) and over a feature store's pass (its `dead` flag)."""
    parts = []
    if window_tokens:
        parts.append(f"dead = no firing in the last {window_tokens:,} training tokens (the AuxK window)")
    if heldout_tokens:
        parts.append(f"held-out dead = no firing on the {heldout_tokens:,} held-out tokens")
    if pass_tokens:
        parts.append(f"cache dead = no firing on all {pass_tokens:,} cached tokens (the feature store's 'dead' flag)")
    return "; ".join(parts)


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the git checkout that tracks `path` (default: this package), or None.

    Tracked, not merely inside: a pip-installed saesteer often lives in a virtualenv inside the
    user's own repository, whose commit says nothing about the code that ran."""
    target = Path(path).resolve() if path else Path(__file__).resolve()
    where = target if target.is_dir() else target.parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=False
        )
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "--", str(target)], cwd=where,
                                 capture_output=True, text=True, timeout=5, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    if out.returncode != 0 or len(commit) != 40 or not tracked:
        return None
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        dirty = ""
    return commit + ("-dirty" if dirty else "")


def write_metrics(out_dir: Path, metrics: dict[str, Any]) -> Path:
    path = out_dir / METRICS_FILE
    atomic_write_json(path, {"format": METRICS_FORMAT, "format_version": 1, **metrics})
    return path


def write_curves_html(out_dir: Path, history: list[dict[str, Any]], sae_names: list[str]) -> Path:
    """An interactive plotly page of the training curves (plotly.js inlined: works offline)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    train = [r for r in history if r.get("kind") == "train"]
    evals = [r for r in history if r.get("kind") == "eval"]
    panels = [
        ("training loss (normalised units)", train, "loss", True),
        ("training FVU (batch)", train, "fvu", True),
        ("dead fraction (no firing in the last dead_window_tokens)", train, "dead_fraction", False),
        ("held-out explained variance", evals, "explained_variance", False),
        ("held-out L0", evals, "l0", False),
        ("CE loss recovered", evals, "ce_loss_recovered", False),
    ]
    fig = make_subplots(rows=3, cols=2, subplot_titles=[p[0] for p in panels] + [], vertical_spacing=0.09)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    for i, (_, recs, key, logy) in enumerate(panels):
        row, col = divmod(i, 2)
        for j, name in enumerate(sae_names):
            pts = [(r["tokens"], r[f"{name}/{key}"]) for r in recs if r.get(f"{name}/{key}") is not None]
            if not pts:
                continue
            fig.add_trace(
                go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=name, legendgroup=name,
                           showlegend=i == 0, mode="lines+markers" if recs is evals else "lines",
                           line={"color": colors[j % len(colors)]}),
                row=row + 1, col=col + 1,
            )
        if logy:
            fig.update_yaxes(type="log", row=row + 1, col=col + 1)
        fig.update_xaxes(title_text="tokens", row=row + 1, col=col + 1)
    fig.update_layout(height=1000, title="SAE training curves", template="plotly_white")
    path = out_dir / CURVES_FILE
    atomic_write_bytes(path, fig.to_html(include_plotlyjs=True, full_html=True).encode())
    return path
