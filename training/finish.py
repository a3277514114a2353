"""The end of a training run: each SAE evaluated and saved, and the run's own files.

    out/saes/<name>/        each SAE with the activation scale folded in (reads raw activations),
                            its provenance (model, hook, data, training settings, final metrics)
    out/metrics.json        the run's figures and every SAE's final metrics
    out/history.jsonl       ends with one {"kind": "eval", "final": true, ...} record
    out/training_curves.html

Data parallel: rank 0 evaluates and writes; the other ranks get the weights only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from saes import SAE, save_sae
from saes.version import __version__
from training.evaluate import ModelEval, evaluate_activations, sae_reconstructor
from training.logs import eval_record, read_history, scalars, write_history
from training.report import git_commit, write_curves_html, write_metrics
from training.trainer import Member, Trainer

SAE_DIR = "saes"


@dataclass
class TrainResult:
    out_dir: Path
    sae_dirs: dict[str, Path]
    metrics: dict[str, Any]
    tokens: int
    steps: int
    resumed_from: Path | None = None
    stopped_early: str | None = None
    saes: dict[str, SAE] = field(default_factory=dict)  # the saved (folded) SAEs
    final_record: dict[str, Any] = field(default_factory=dict)  # the history's last ("final") eval record


def finish_run(trainer: Trainer, out: Path, holdout_BD: Tensor, model_eval: ModelEval | None, prov: dict[str, Any],
               stopped_early: str | None, wall: float, holdout_targets: Tensor | None = None) -> TrainResult:
    """Evaluate and save every SAE, write metrics.json, the final history record and the curves."""
    writer = trainer.coll.is_writer
    commit = git_commit()
    sae_dirs: dict[str, Path] = {}
    saes: dict[str, SAE] = {}
    per_sae: dict[str, dict[str, Any]] = {}
    for m in trainer.members:
        saes[m.name] = trainer.folded_sae(m)
    spliced = _final_splice_metrics(trainer, saes, model_eval) if writer else None
    for i, m in enumerate(trainer.members):
        if spliced is None:  # data parallel: rank 0 evaluates and writes; the others return the weights
            continue
        sae = saes[m.name]
        metrics = {**final_metrics(trainer, m, sae, holdout_BD, holdout_targets), **spliced[i]}
        per_sae[m.name] = {**_sae_summary(trainer, m, sae), **metrics}
        provenance = _sae_provenance(trainer, m, prov, metrics, commit)
        sae_dirs[m.name] = save_sae(sae, out / SAE_DIR / m.name, provenance=provenance)
    doc = _metrics_doc(trainer, holdout_BD, prov, per_sae, stopped_early, wall, commit)
    final = {**eval_record(trainer, {n: scalars(v) for n, v in per_sae.items()}), "final": True}
    if writer:
        write_metrics(out, doc)
        history = [r for r in read_history(out) if not r.get("final")]
        history.append(final)
        write_history(out, history)
        write_curves_html(out, history, [m.name for m in trainer.members])
    return TrainResult(out, sae_dirs, doc, trainer.tokens, trainer.step, None, stopped_early, saes, final)


def final_metrics(trainer: Trainer, m: Member, sae: SAE, holdout_BD: Tensor,
                  holdout_targets: Tensor | None = None) -> dict[str, Any]:
    """The saved (folded) SAE on the held-out rows (a transcoder: against their targets) and its
    dead fraction."""
    metrics = evaluate_activations(sae, holdout_BD, dense_threshold=trainer.config.eval.dense_threshold,
                                   targets=holdout_targets)
    metrics["dead_fraction"] = trainer.dead_fraction(m)
    metrics["dead_window_tokens"] = trainer.dead_window
    return metrics


def _final_splice_metrics(trainer: Trainer, saes: dict[str, SAE], model_eval: ModelEval | None) -> list[dict[str, Any]]:
    """Every saved (folded) SAE spliced into the model, in `trainer.members` order (the clean pass
    run once for all of them); empty dicts without a model or with `EvalConfig.ce_contexts` 0."""
    if model_eval is None or trainer.config.eval.ce_contexts <= 0:
        return [{} for _ in trainer.members]
    got = model_eval.run([sae_reconstructor(saes[m.name]) for m in trainer.members], trainer.config.eval)
    return [g.to_dict() for g in got]


def _sae_summary(trainer: Trainer, m: Member, sae: SAE) -> dict[str, Any]:
    info = {"folder": f"{SAE_DIR}/{m.name}", "architecture": m.spec.architecture, "d_in": trainer.d_in,
            "d_sae": m.spec.d_sae, "k": getattr(sae.cfg, "k", None), "lr": m.lr, "skipped_steps": m.skipped_steps}
    if sae.is_transcoder:
        info.update(d_out=sae.d_out, skip_connection=sae.W_skip is not None, target_hook=sae.cfg.metadata.get("hook_name_out"))
    if sae.levels is not None:
        info["matryoshka_widths"] = sae.levels
    return info


def _sae_provenance(trainer: Trainer, m: Member, prov: dict[str, Any], metrics: dict[str, Any],
                    commit: str | None) -> dict[str, Any]:
    cfg = trainer.config
    init_from = {"init_from": trainer.init_from} if trainer.init_from is not None else {}
    return {
        "tool": "saesteer", "saesteer_version": __version__, "git_commit": commit,
        "model": prov.get("model"), "model_identity": prov.get("model_identity"),
        "hook_name": prov.get("hook_name"), "dataset": prov.get("dataset"),
        **({"hook_name_out": prov["hook_name_out"]} if prov.get("hook_name_out") else {}),
        "tokens_trained": trainer.tokens, "steps": trainer.step, "activation_scale": trainer.scale,
        "activation_scale_folded": True, "step_method": trainer.step_method,
        # lr: the peak LR it trained at (the configs hold None where the width rule chose it)
        "training": {"sae": m.spec.__dict__, "train": cfg.train.__dict__, "optim": cfg.optim.__dict__, "lr": m.lr},
        "data": prov, "metrics": metrics, **init_from,
    }


def _metrics_doc(trainer: Trainer, holdout_BD: Tensor, prov: dict[str, Any], per_sae: dict[str, dict[str, Any]],
                 stopped_early: str | None, wall: float, commit: str | None) -> dict[str, Any]:
    return {
        "tokens_trained": trainer.tokens, "steps": trainer.step, "holdout_rows": int(holdout_BD.shape[0]),
        "activation_scale": trainer.scale, "step_method": trainer.step_method, "world_size": trainer.coll.world_size,
        **({"target_activation_scale": trainer.target_scale} if trainer.is_transcoder else {}),
        "wall_seconds": wall,
        "train_seconds": trainer.train_seconds,
        "tokens_per_second": trainer.tokens / trainer.train_seconds if trainer.train_seconds > 0 else None,
        "stopped_early": stopped_early, "git_commit": commit, "data": prov, "config": trainer.config.to_dict(),
        "saes": per_sae,
    }
