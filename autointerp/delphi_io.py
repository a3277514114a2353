"""EleutherAI delphi's on-disk output (eai-delphi 0.1.3), read and written as delphi does.

A delphi run (`python -m delphi ...`, delphi/__main__.py) leaves under `results/<name>/`:

    run_config.json                      RunConfig.save_json: explainer_model, hookpoints, scorers, ...
    explanations/<module>_latent<i>.txt  orjson.dumps(explanation): one JSON string
    scores/<scorer>/<module>_latent<i>.txt  orjson.dumps(list of ClassifierOutput) for detection/fuzz

`<module>_latent<i>` is `str(Latent)` (delphi/latents/latents.py, Latent.__repr__), `module` the HF
module path of the hookpoint ("layers.6", "layers.6.mlp"); score file names replace "/" by "--"
(__main__.py, scorer_postprocess). A ClassifierOutput (scorers/classifier/sample.py) holds
str_tokens, activations, distance, activating, prediction (bool, or None when the scorer's answer
failed to parse), probability (None without log-probs) and correct.

`delphi_metrics` is delphi/log/result_analysis.py's compute_confusion + compute_classification_metrics
+ compute_auc, line for line: rows with no prediction are dropped; its "accuracy" is the
class-balanced accuracy (TP/P + TN/N) / 2 with a missing class counting 0; the AUC is over rows with
a probability, None when none has one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saes.fileio import files_in

__all__ = ["DelphiFormatError", "DelphiLatentFile", "delphi_name", "parse_delphi_name", "read_explanation",
           "read_score_samples", "delphi_metrics", "pooled_metrics", "explanation_bytes", "scan_run"]

_NAME = re.compile(r"^(?P<module>.+)_latent(?P<index>\d+)$")
SAMPLE_KEYS = ("activating", "prediction", "probability")  # what delphi's metrics read of a sample


class DelphiFormatError(ValueError):
    """A file that is not what delphi writes, named with how to fix it."""


@dataclass(frozen=True)
class DelphiLatentFile:
    path: Path
    module: str
    latent: int


def delphi_name(module: str, latent: int) -> str:
    """`str(Latent(module, latent))`: the stem of delphi's explanation and score files."""
    return f"{module}_latent{int(latent)}"


def parse_delphi_name(path: Path, *, score_file: bool = False) -> DelphiLatentFile:
    stem = path.name[:-4] if path.name.endswith(".txt") else None
    m = _NAME.match(stem or "")
    if m is None:
        raise DelphiFormatError(
            f"{path}: not a delphi file name; delphi names them <module>_latent<index>.txt "
            "(e.g. layers.6_latent17.txt); rename it or move it out of the run folder")
    module = m["module"].replace("--", "/") if score_file else m["module"]
    return DelphiLatentFile(path, module, int(m["index"]))


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DelphiFormatError(f"{path}: not JSON ({e.msg if hasattr(e, 'msg') else e}); {what}") from None


def read_explanation(path: Path) -> str:
    what = ("delphi writes an explanation as one JSON string (orjson.dumps(explanation)); "
            "rewrite it as \"the label\" or re-run delphi's explainer for it")
    value = _load_json(path, what)
    if not isinstance(value, str) or not value.strip():
        raise DelphiFormatError(f"{path}: holds {type(value).__name__} {str(value)[:60]!r}, not a label; {what}")
    return value


def read_score_samples(path: Path) -> list[dict[str, Any]]:
    """The samples of one delphi detection/fuzz score file, checked to hold what its metrics read."""
    what = ("a detection/fuzz score file is a JSON list of ClassifierOutput objects with "
            f"{', '.join(SAMPLE_KEYS)} (delphi's scorer_postprocess); re-run that scorer or remove the file")
    data = _load_json(path, what)
    if not isinstance(data, list) or not data:
        raise DelphiFormatError(f"{path}: holds {type(data).__name__}, not a non-empty list of samples; {what}")
    for k, s in enumerate(data):
        missing = [key for key in SAMPLE_KEYS if not isinstance(s, dict) or key not in s]
        if missing:
            raise DelphiFormatError(f"{path}: sample {k} lacks {', '.join(missing)}; {what}")
        if not isinstance(s["activating"], bool) or not (s["prediction"] is None or isinstance(s["prediction"], bool)):
            raise DelphiFormatError(f"{path}: sample {k} has activating={s['activating']!r}, "
                                    f"prediction={s['prediction']!r} (booleans, prediction may be null); {what}")
        p = s["probability"]
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float))):
            raise DelphiFormatError(f"{path}: sample {k} has probability={p!r} (a number or null); {what}")
    return data


def _auc(truth: list[bool], prob: list[float]) -> float | None:
    """sklearn's roc_auc_score (ties count half): the share of (positive, negative) pairs ranked right."""
    pos = [p for t, p in zip(truth, prob) if t]
    neg = [p for t, p in zip(truth, prob) if not t]
    if not pos or not neg:
        return None  # roc_auc_score raises here; delphi's log would stop, we leave it empty
    won = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return won / (len(pos) * len(neg))


def delphi_metrics(samples: list[dict[str, Any]], threshold: float = 0.5) -> dict[str, Any]:
    """delphi's compute_confusion + compute_classification_metrics (+ compute_auc) of some samples."""
    valid = [s for s in samples if s["prediction"] is not None]
    act = [bool(s["activating"]) for s in valid]
    said = [float(s["prediction"]) >= threshold for s in valid]
    total, pos = len(valid), sum(act)
    neg = total - pos
    tp = sum(a and p for a, p in zip(act, said))
    tn = sum(not a and not p for a, p in zip(act, said))
    fp = sum(not a and p for a, p in zip(act, said))
    fn = sum(a and not p for a, p in zip(act, said))
    precision = tp / (tp + fp) if tp + fp > 0 else 0
    recall = tp / pos if pos > 0 else 0
    with_prob = [s for s in samples if s["probability"] is not None]
    return {
        "balanced_accuracy": ((tp / pos if pos > 0 else 0) + (tn / neg if neg > 0 else 0)) / 2,
        "precision": precision,
        "recall": recall,
        "f1_score": 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0,
        "auc": _auc([bool(s["activating"]) for s in with_prob], [float(s["probability"]) for s in with_prob])
        if with_prob else None,
        "true_positives": tp, "true_negatives": tn, "false_positives": fp, "false_negatives": fn,
        "total_examples": total, "total_positives": pos, "total_negatives": neg,
        "failed": len(samples) - total,  # predictions delphi could not parse: left out of every figure
    }


def pooled_metrics(samples_per_latent: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """What delphi's log_results prints for one scorer: the metrics of all latents' samples pooled."""
    return delphi_metrics([s for samples in samples_per_latent for s in samples])


def explanation_bytes(label: str) -> bytes:
    """An explanation file's content as delphi writes it (orjson.dumps of the string: compact, UTF-8)."""
    return json.dumps(label, ensure_ascii=False).encode("utf-8")


def scan_run(run_dir: Path) -> tuple[list[DelphiLatentFile], dict[str, list[DelphiLatentFile]], dict[str, Any]]:
    """(explanation files, scorer -> score files, run_config.json or {}) of a delphi run folder."""
    run_dir = Path(run_dir)
    exp_dir = run_dir / "explanations"
    if not exp_dir.is_dir():
        raise DelphiFormatError(
            f"{run_dir}: no explanations/ folder; give delphi's run folder (results/<run name>, the one holding "
            "run_config.json, explanations/ and scores/)")
    explanations = sorted((parse_delphi_name(p) for p in files_in(exp_dir)),
                          key=lambda f: (f.module, f.latent))
    if not explanations:
        raise DelphiFormatError(f"{exp_dir}: no explanation files; run delphi's explainer first")
    scores: dict[str, list[DelphiLatentFile]] = {}
    score_dir = run_dir / "scores"
    for d in sorted(score_dir.iterdir()) if score_dir.is_dir() else []:
        if d.is_dir():
            scores[d.name] = sorted((parse_delphi_name(p, score_file=True) for p in files_in(d)),
                                    key=lambda f: (f.module, f.latent))
    cfg_path = run_dir / "run_config.json"
    config = _load_json(cfg_path, "delphi writes it with RunConfig.save_json; remove it if it is not delphi's") \
        if cfg_path.is_file() else {}
    return explanations, scores, config if isinstance(config, dict) else {}
