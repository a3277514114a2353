"""A delphi run's labels and scores into a feature store, and the store's labels out in delphi's layout.

Import (`saesteer label --store S --import-delphi RUN`): every explanation of the run's module that
reads this store's SAE hook becomes the latent's current label, judge kind "delphi", with the
explainer model from run_config.json and the files it came from in the provenance; each
detection/fuzz score file becomes the scores `delphi_<scorer>` (delphi's class-balanced accuracy),
`delphi_<scorer>_f1` and, with probabilities, `delphi_<scorer>_auc`, computed as delphi's log code
computes them (autointerp/delphi_io.py). Everything is read and checked before anything is written,
then written as every imported label is (features/imported_labels.py): our own label of a latent
stays in the store's history (`saesteer label` makes ours current again), and a re-import writes
only what is not the current label already.

Export (`--export-delphi DIR`): the current labels made here (not delphi's, nor Neuronpedia's), as
DIR/explanations/<module>_latent<i>.txt, the files delphi's `--explainer none` run reads back
(delphi/__main__.py, none_postprocessor). DIR follows every export folder's rule
(`saes.export_folder`): the next export into DIR removes the files this one wrote that it no longer
writes (a latent unlabelled since, or another module), so delphi never scores a stale label as ours;
a file that changed since (delphi's own, say) is never removed. Our detection/fuzzing scores are
not exported: delphi's score files list every sample's prediction, and the store keeps only the
counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from features.imported_labels import ImportedLabel, made_here, write_imported_labels

from .delphi_io import (DelphiFormatError, delphi_metrics, delphi_name, explanation_bytes, pooled_metrics,
                        read_explanation, read_score_samples, scan_run)
from .delphi_modules import check_module, fitting_modules, module_for_hook

__all__ = ["DelphiImport", "DelphiExport", "import_delphi_run", "export_delphi_labels", "CLASSIFIER_SCORERS"]

CLASSIFIER_SCORERS = ("detection", "fuzz")  # delphi's scorers whose files are ClassifierOutput lists
# run_config.json's settings kept with each label: what made it, and what its scores depend on
# (docs/autointerp.md: fuzz_type and the negatives' source decide whether delphi's figures compare with ours)
RUN_CONFIG_PARAMS = ("explainer_provider", "model", "sparse_model", "explainer", "fuzz_type", "log_probs")


@dataclass
class DelphiImport:
    module: str
    hook: str
    written: list[int] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)
    replaced_ours: list[int] = field(default_factory=list)  # latents whose current label was saesteer's
    pooled: dict[str, dict[str, Any]] = field(default_factory=dict)  # scorer -> delphi's log figures
    skipped_scorers: list[str] = field(default_factory=list)
    explainer_model: str = ""
    notes: list[str] = field(default_factory=list)  # what could not be checked: the model's name, the module


def _store_hook(store: Any) -> str:
    hook = (store.meta.get("sae") or {}).get("hook_name")
    if not hook:
        raise ValueError(f"{store.path}: the store does not record its SAE's hook, so a delphi module cannot be "
                         "checked against it; rebuild the store from an SAE whose metadata names its hook_name")
    return hook


def _store_model(store: Any) -> str | None:
    """The model the store's SAE reads, as its config can be found (a local checkpoint's path, a hub name):
    which hook an HF MLP's output is depends on it (`delphi_modules`)."""
    identity = store.meta.get("model_identity") or {}
    if identity.get("source") in ("hub", "local"):
        return identity.get("path") or identity.get("name")
    return None if identity else (store.meta.get("sae") or {}).get("model_name")


def _pick_module(modules: list[str], wanted: str | None, hook: str, store: Any) -> tuple[str, str | None]:
    """(the run's module of this store's SAE, a note when it could not be checked)."""
    model = _store_model(store)
    if wanted is not None:
        if wanted not in modules:
            raise ValueError(f"--delphi-module {wanted!r}: the run has explanations of {', '.join(modules)} only")
        return wanted, check_module(wanted, hook, model, store.path, named=True)
    if len(modules) == 1:
        return modules[0], check_module(modules[0], hook, model, store.path, named=False)
    fits = fitting_modules(modules, hook, model)
    hint = f"; {fits[0]!r} reads it" if fits else "; none of them reads it"
    raise ValueError(f"the delphi run holds explanations of {len(modules)} modules ({', '.join(modules)}); pick "
                     f"the one of this store's SAE (hook {hook}) with --delphi-module{hint}")


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _model_note(run_model: str | None, store: Any) -> str | None:
    """Refuse a run of another model when both sides name hub ids ("org/name") that differ; say so
    in a note when only the names' last parts differ (a local path and a hub id may be one model)."""
    ours = (store.meta.get("model_identity") or {}).get("name") or (store.meta.get("sae") or {}).get("model_name")
    if not run_model or not ours:
        return None
    if _HUB_ID.fullmatch(run_model) and _HUB_ID.fullmatch(ours) and run_model.lower() != ours.lower():
        raise ValueError(f"the delphi run explained {run_model} (run_config.json), but the SAE of {store.path} is "
                         f"of {ours}; import the run of this SAE's model")
    if Path(run_model).name.lower() != Path(ours).name.lower():
        return f"the delphi run explained {run_model} (run_config.json); the SAE of this store is of {ours}"
    return None


def _check_latents(files: list, d_sae: int, store_path: Any) -> None:
    for f in files:
        if not 0 <= f.latent < d_sae:
            raise ValueError(f"{f.path}: latent {f.latent} is not a latent of the SAE of {store_path} "
                             f"(d_sae={d_sae}, latents 0..{d_sae - 1}); this run is of another SAE")


def import_delphi_run(store: Any, run_dir: str | os.PathLike, module: str | None = None) -> DelphiImport:
    """Read, check, then write a delphi run's labels and scores into `store` (writable FeatureStore)."""
    from features import LabelProvenance

    run_dir = Path(run_dir)
    explanations, score_files, config = scan_run(run_dir)
    hook = _store_hook(store)
    module, module_note = _pick_module(sorted({f.module for f in explanations}), module, hook, store)
    mine = [f for f in explanations if f.module == module]
    _check_latents(mine, store.d_sae, store.path)
    labels = {f.latent: (f, read_explanation(f.path)) for f in mine}

    notes = [n for n in (_model_note(config.get("model"), store), module_note) if n]
    report = DelphiImport(module, hook, explainer_model=str(config.get("explainer_model") or ""), notes=notes)
    samples: dict[str, dict[int, tuple[Path, list]]] = {}
    for scorer, files in score_files.items():
        if scorer not in CLASSIFIER_SCORERS:
            report.skipped_scorers.append(scorer)
            continue
        files = [f for f in files if f.module == module]
        _check_latents(files, store.d_sae, store.path)
        for f in files:
            if f.latent not in labels:
                raise DelphiFormatError(f"{f.path}: a score of latent {f.latent} with no explanation file "
                                        f"({run_dir / 'explanations' / (delphi_name(module, f.latent) + '.txt')}); "
                                        "delphi scores only explained latents: restore the explanation or remove the score")
        samples[scorer] = {f.latent: (f.path, read_score_samples(f.path)) for f in files}
    report.pooled = {s: pooled_metrics([v for _, v in per.values()]) for s, per in samples.items() if per}

    params = {k: config[k] for k in RUN_CONFIG_PARAMS if config.get(k) is not None}
    constructor = config.get("constructor_cfg")
    negatives = constructor.get("non_activating_source") if isinstance(constructor, dict) else None
    if negatives is not None:
        params["non_activating_source"] = negatives
    imported, score_rows = [], {}
    for latent, (f, text) in sorted(labels.items()):
        metrics = {s: delphi_metrics(per[latent][1]) for s, per in samples.items() if latent in per}
        extra = {"delphi": {"run": str(run_dir.resolve()), "module": module, "explanation_file": str(f.path.resolve()),
                            "score_files": {s: str(per[latent][0].resolve()) for s, per in samples.items() if latent in per},
                            "metrics": metrics}}
        prov = LabelProvenance(
            judge_model=report.explainer_model or "unrecorded (the run has no run_config.json)",
            judge_kind="delphi", prompt_version=f"delphi {config.get('explainer', 'default')} explainer",
            params=params, extra=extra)
        # the same explanation with the same files and figures is the same label on a re-import
        key = hashlib.sha256(json.dumps([text, extra], sort_keys=True).encode()).hexdigest()
        imported.append(ImportedLabel(latent, text, prov, key))
        score_rows[latent] = _score_rows(metrics, extra["delphi"]["score_files"])
    writes = write_imported_labels(store, imported)
    report.unchanged = [lab.latent for lab in writes.unchanged]
    report.replaced_ours = writes.replaced_ours
    for lab, label_id in writes.written:
        if score_rows[lab.latent]:
            store.write_scores(lab.latent, score_rows[lab.latent], provenance=lab.provenance, label_id=label_id)
        report.written.append(lab.latent)
    return report


def _score_rows(metrics: dict[str, dict], files: dict[str, str]) -> list:
    """The store's score rows of one latent's delphi figures (scorer -> delphi_metrics)."""
    from features import ScoreInput

    rows = []
    for s, m in metrics.items():
        details = {**m, "file": files[s]}
        rows.append(ScoreInput(f"delphi_{s}", float(m["balanced_accuracy"]), m["total_examples"],
                               {**details, "metric": "balanced_accuracy"}))
        rows.append(ScoreInput(f"delphi_{s}_f1", float(m["f1_score"]), m["total_examples"], {**details, "metric": "f1"}))
        if m["auc"] is not None:
            rows.append(ScoreInput(f"delphi_{s}_auc", float(m["auc"]), m["total_examples"], {**details, "metric": "auc"}))
    return rows


@dataclass
class DelphiExport:
    """What one `export_delphi_labels` did."""

    module: str  # the module path delphi names the hook by (layers.6, ...)
    files: list[Path]  # the explanation files written
    removed: list[Path]  # those an earlier export wrote, for latents (or a module) this one does not export


def export_delphi_labels(store: Any, out_dir: str | os.PathLike, module: str | None = None,
                         overwrite: bool = False) -> DelphiExport:
    """Write the store's current labels made here (none imported) as delphi explanation
    files under out_dir/explanations/, and remove the files an earlier export into out_dir wrote
    that this one does not (unchanged since: see the module docstring)."""
    from saes.export_folder import ExportFolder
    from saes.fileio import atomic_write_bytes

    hook = _store_hook(store)
    if module is None:
        module = module_for_hook(hook, _store_model(store))
        if module is None:
            raise ValueError(f"the SAE of {store.path} reads {hook}, which has no usual delphi module name; "
                             "give the hookpoint your delphi run uses with --delphi-module")
    else:
        check_module(module, hook, _store_model(store), store.path, named=True, exporting=True)
    rows = store.list_features(sort="latent", filter={"has_label": True}, offset=0, limit=store.d_sae)
    todo = []
    for r in rows:
        lab = store.label(r.latent)
        if lab is None or not made_here(lab.provenance):  # delphi's own, or Neuronpedia's
            continue
        todo.append((r.latent, explanation_bytes(lab.text)))
    if not todo:
        raise ValueError(f"{store.path} holds no saesteer labels to export; label it first (`saesteer label`)")
    exp_dir = Path(out_dir) / "explanations"
    paths = [(exp_dir / f"{delphi_name(module, i)}.txt", data) for i, data in todo]
    clash = [p for p, data in paths if p.is_file() and p.read_bytes() != data]
    if clash and not overwrite:
        raise ValueError(f"{len(clash)} explanation file(s) in {exp_dir} hold other labels (e.g. {clash[0].name}); "
                         "export into another folder, or pass --overwrite true to replace them")
    folder = ExportFolder(out_dir, "delphi")
    exp_dir.mkdir(parents=True, exist_ok=True)
    for p, data in paths:
        atomic_write_bytes(p, data)
        folder.wrote(p, data)
    removed = folder.finish()
    return DelphiExport(module, [p for p, _ in paths], removed)
