"""`saesteer eval` output: `eval.json` (every figure) and `eval.html` (plotly, self-contained, offline).

eval.json: {"format": "saesteer.eval", "format_version": 1, "model", "data", "config",
            "saes": {name: {spec, format, architecture, d_in, d_sae, k, hook_name, model_name, source,
                            rows_source, text (how its held-out text was read and packed),
                            metrics: {...}, absorption: {...}, probing: {...}}}}
(docs/formats.md "Evaluation report" lists the fields.)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from saes.fileio import atomic_write_bytes, atomic_write_json

FORMAT = "saesteer.eval"
BARS = [  # (metric key, title, better)
    ("explained_variance", "explained variance", "higher"), ("mse", "MSE", "lower"), ("l0", "L0", ""),
    ("eval_dead_fraction", "dead fraction (held out)", "lower"), ("dense_fraction", "dense fraction", "lower"),
    ("cossim", "cosine(x, x_hat)", "higher"), ("l2_ratio", "relative norm |x_hat|/|x|", "1 = no shrinkage"),
    ("ce_loss_recovered", "CE loss recovered", "higher"), ("kl_div", "KL(clean || spliced)", "lower"),
]


def _clean(obj: Any) -> Any:
    """JSON without NaN/inf (null instead)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def eval_document(results: dict[str, Any], *, model: str | None, data: dict[str, Any], config: dict[str, Any]) -> dict:
    return _clean({"format": FORMAT, "format_version": 1, "model": model, "data": data, "config": config,
                   "saes": results})


def write_json(path: Path, doc: dict[str, Any]) -> Path:
    atomic_write_json(path, doc)
    return path


COLOURS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6"]
PANEL_TITLES = {"matryoshka": "Matryoshka levels: explained variance vs prefix width",
                "absorption": "absorption: mean absorption fraction per letter",
                "probing": "sparse probing: test accuracy vs latents used"}


def write_html(path: Path, doc: dict[str, Any]) -> Path:
    from plotly.subplots import make_subplots

    saes = doc["saes"]
    names = list(saes)
    bars = [(k, t, b) for k, t, b in BARS if any(saes[n]["metrics"].get(k) is not None for n in names)]
    extra = _extra_panels(saes, names)
    titles = [f"{t} ({b})" if b else t for _, t, b in bars] + [PANEL_TITLES[e] for e in extra]
    cols = 3
    n_plots = len(bars) + len(extra)
    rows = max(1, math.ceil(n_plots / cols))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, vertical_spacing=0.12 / max(rows / 3, 1))
    _plot_bars(fig, saes, names, bars, cols)
    plotters = {"matryoshka": _plot_matryoshka, "absorption": _plot_absorption, "probing": _plot_probing}
    for slot, panel in enumerate(extra, start=len(bars)):  # the extra panels follow the bars, row by row
        plotters[panel](fig, saes, names, slot // cols + 1, slot % cols + 1)
    fig.update_layout(height=330 * rows, title=f"SAE evaluation: {', '.join(names)} on {doc.get('model') or '?'}",
                      template="plotly_white", barmode="group")
    atomic_write_bytes(path, fig.to_html(include_plotlyjs=True, full_html=True).encode())
    return path


def _extra_panels(saes: dict, names: list[str]) -> list[str]:
    """The panels beyond the metric bars that some SAE has figures for, in page order."""
    extra = []
    if any(saes[n]["metrics"].get("levels") for n in names):
        extra.append("matryoshka")
    if any("absorption" in saes[n] for n in names):
        extra.append("absorption")
    if any(saes[n].get("probing", {}).get("sae_accuracy") for n in names):
        extra.append("probing")
    return extra


def _plot_bars(fig, saes: dict, names: list[str], bars: list, cols: int) -> None:
    import plotly.graph_objects as go

    for i, (key, _, _) in enumerate(bars):
        r, c = i // cols + 1, i % cols + 1
        fig.add_trace(go.Bar(x=names, y=[saes[n]["metrics"].get(key) for n in names], showlegend=False,
                             marker_color=[COLOURS[j % len(COLOURS)] for j in range(len(names))]), row=r, col=c)


def _plot_matryoshka(fig, saes: dict, names: list[str], r: int, c: int) -> None:
    import plotly.graph_objects as go

    for j, n in enumerate(names):
        levels = saes[n]["metrics"].get("levels") or []
        if levels:
            fig.add_trace(go.Scatter(x=[lv["width"] for lv in levels], y=[lv["explained_variance"] for lv in levels],
                                     mode="lines+markers", name=n, line_color=COLOURS[j % len(COLOURS)]),
                          row=r, col=c)
    fig.update_xaxes(title_text="prefix width", type="log", row=r, col=c)


def _plot_absorption(fig, saes: dict, names: list[str], r: int, c: int) -> None:
    import plotly.graph_objects as go

    for j, n in enumerate(names):
        per = (saes[n].get("absorption") or {}).get("per_letter") or {}
        letters = [k for k, v in per.items() if v.get("mean_absorption_fraction") is not None]
        fig.add_trace(go.Bar(x=letters, y=[per[k]["mean_absorption_fraction"] for k in letters], name=f"{n} absorption",
                             marker_color=COLOURS[j % len(COLOURS)]), row=r, col=c)


def _plot_probing(fig, saes: dict, names: list[str], r: int, c: int) -> None:
    import plotly.graph_objects as go

    for j, n in enumerate(names):
        acc = (saes[n].get("probing") or {}).get("sae_accuracy") or {}
        fig.add_trace(go.Scatter(x=[int(k) for k in acc], y=list(acc.values()), mode="lines+markers",
                                 name=f"{n} probing", line_color=COLOURS[j % len(COLOURS)]), row=r, col=c)
        base = (saes[n].get("probing") or {}).get("model_accuracy")
        if base is not None and j == 0:
            fig.add_hline(y=base, line_dash="dot", annotation_text="model activations", row=r, col=c)
    fig.update_xaxes(title_text="latents (k)", type="log", row=r, col=c)
