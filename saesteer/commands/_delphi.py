"""`saesteer label --import-delphi RUN` / `--export-delphi DIR`: EleutherAI delphi's labels in and ours out
(the work is in autointerp/delphi_store.py; this prints what it did)."""

from __future__ import annotations

from features.drawing import readable
from saesteer.boundary import print_error
from saesteer.terminal import counted, removed_note


def _say(line: str) -> None:
    """Print a line that holds names from the run's files (run_config.json, file names): controls drawn."""
    print(readable(line))


def run_delphi(args, store_path, overwrite: bool) -> int:
    from autointerp.delphi_store import export_delphi_labels, import_delphi_run
    from features import FeatureStore

    with FeatureStore.open(store_path, readonly=False) as store:
        try:
            if args.import_delphi:
                rep = import_delphi_run(store, args.import_delphi, module=args.delphi_module)
            else:
                done = export_delphi_labels(store, args.export_delphi, module=args.delphi_module, overwrite=overwrite)
        except (ValueError, OSError) as e:
            print_error(e)
            return 2
    if args.export_delphi:
        module = done.module
        _say(f"wrote {counted(len(done.files), 'delphi explanation file')} of module {module} to {done.files[0].parent}; "
             "delphi scores them with `--explainer none` in that run folder (our detection/fuzzing scores are not exported: "
             "the store keeps their counts, not each sample's prediction)")
        if note := removed_note(done.removed, "explanation file"):
            _say(note)
        if args.delphi_module is None:  # named as Llama, Qwen, GPT-NeoX ... name their layers; GPT-2 calls them h
            _say(f"  note: {module} is the layer's name in models whose layers are `layers`; for a GPT-2-style model "
                 f"(layers `h`) delphi's hookpoint is {module.replace('layers.', 'h.', 1)}: export with --delphi-module")
        return 0
    _print_import(rep, args.import_delphi)
    return 0


def _print_import(rep, run_dir) -> None:
    _say(f"imported {counted(len(rep.written), 'delphi label')} of module {rep.module} (hook {rep.hook}) from {run_dir}, "
         f"explainer {rep.explainer_model or 'unrecorded'}; {len(rep.unchanged)} already imported, unchanged")
    for note in rep.notes:
        _say(f"  note: {note}")
    if rep.replaced_ours:
        _say(f"  {counted(len(rep.replaced_ours), 'latent')} had a saesteer label: it stays in the store's history, and "
             "`saesteer label` with the same judge makes ours current again")
    for scorer, m in rep.pooled.items():
        auc = "-" if m["auc"] is None else f"{m['auc']:.3f}"
        _say(f"  delphi {scorer}, all latents pooled as delphi's log prints it: class-balanced accuracy "
             f"{m['balanced_accuracy']:.3f}, F1 {m['f1_score']:.3f}, precision {m['precision']:.3f}, recall "
             f"{m['recall']:.3f}, AUC {auc}; {counted(m['failed'], 'unparsed prediction')} left out")
    if rep.skipped_scorers:
        _say(f"  not imported: scores/{', scores/'.join(rep.skipped_scorers)} (only detection and fuzz "
             "score files are read)")
