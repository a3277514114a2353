"""`saesteer label`: label and score the latents of a feature store with an LLM judge (or offline)."""

from __future__ import annotations

from saesteer.boundary import print_error
from saesteer.stopsignals import judge_answers_kept

NAME = "label"
ORDER = 40
HELP = "label and score latents of a feature store (OpenAI-compatible or Anthropic judge, local model, or offline)"
ON_STOP = judge_answers_kept("<store>.judge-cache.sqlite", written="labels")
DESCRIPTION = """\
Label every latent of a feature store and score each label (detection and fuzzing balanced
accuracy, simulation correlation; intruder and embedding scores on request); labels, scores and
their provenance go into the store, and so do label embeddings (search by meaning, the map).

Judge: with no model configured the offline labeller is used (no LLM, marked 'offline' in the
store): a concept phrase from the words around the activations, the tokens the latent promotes
and its neighbours' ("sailor / diver context: gulls, shells, nets"), named from --lexicon when
one is given ("ocean context: ..."; the toy world's dictionary for toy-model stores). For an OpenAI-compatible server give --judge-model (or set
SAESTEER_JUDGE_MODEL), and --judge-base-url (or OPENAI_BASE_URL) for servers other than OpenAI;
the key comes from OPENAI_API_KEY. Claude through Anthropic's Messages API: --judge-backend
anthropic --judge-model claude-haiku-4-5, the key from ANTHROPIC_API_KEY. A local transformers
model: --judge-backend transformers --judge-model PATH.

Every judge answer is cached beside the store (<store>.judge-cache.sqlite): a re-run or a run
resumed after a crash pays only for requests that had no answer yet. Latents already labelled by
the same judge are skipped (--overwrite true relabels them). `saesteer serve` may show the store
meanwhile (a page load shows the new labels); a second label, build or upgrade of the store is
refused while this runs, naming it (<store>.lock).

  saesteer label --store toy.db                                   # offline
  saesteer label --store toy.db --judge-model gpt-4o-mini --dry-run
  saesteer label --store toy.db --judge-model gpt-4o-mini --budget 2usd
  saesteer label --store toy.db --judge-model qwen2.5 --judge-base-url http://localhost:8000/v1
  saesteer label --store toy.db --judge-backend anthropic --judge-model claude-haiku-4-5 --budget 200000tokens
  saesteer label --store toy.db --import-delphi results/my_run    # EleutherAI delphi's labels and scores
  saesteer label --store toy.db --export-delphi results/my_run    # ours as delphi explanation files
  saesteer label --store gpt2-l6.db --import-neuronpedia v1/gpt2-small/6-res-jb   # Neuronpedia's explanations

Exit status: 0 all done, 3 stopped by the budget, 4 some latents failed (see the list and
<store>.label-failures.jsonl), 2 bad arguments or a key the judge's server refused."""


def add_arguments(parser) -> None:
    from autointerp.config import JudgeConfig, LabelConfig
    from autointerp.embeddings import EmbedConfig
    from saesteer.configargs import add_dataclass_arguments

    from saesteer.commands._steering import OneStore

    parser.add_argument("--store", required=True, action=OneStore, help="feature store file (SQLite) to label")
    parser.add_argument("--config", default=None,
                        help="JSON/TOML file with sections 'judge' and 'label' (flags win over it)")
    parser.add_argument("--dry-run", action="store_true",
                        help="estimate requests, tokens and cost; send nothing, write nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--report", default=None, help="also write the run report as JSON to this file")
    imp = parser.add_argument_group("labels made elsewhere (instead of labelling)")
    imp.add_argument("--import-delphi", default=None, metavar="RUN",
                     help="import an EleutherAI delphi run folder (results/<name>: "
                          "explanations/, scores/detection|fuzz/, run_config.json) as labels and scores")
    imp.add_argument("--export-delphi", default=None, metavar="DIR",
                     help="write the store's labels as delphi explanation files "
                          "(DIR/explanations/<module>_latent<i>.txt) for delphi's scorers")
    imp.add_argument("--delphi-module", default=None, metavar="MODULE",
                     help="the delphi hookpoint (HF module path, e.g. layers.6, h.6) of this store's SAE, when "
                          "the run holds several or the default name does not fit; a module saesteer has no hook "
                          "for (layers.6.self_attn.o_proj) is taken as this SAE's")
    imp.add_argument("--import-neuronpedia", default=None, metavar="EXPORT",
                     help="Neuronpedia's explanations of the store's SAE: its dataset export (v1/MODEL/SAE from "
                          "neuronpedia-datasets, or a batch .jsonl.gz of it), .jsonl, or a JSON array; they become labels "
                          "marked 'neuronpedia'; rows of another SAE or out of range are refused")
    imp.add_argument("--neuronpedia-sae", default=None, metavar="MODEL/SAE",
                     help="the store's SAE on Neuronpedia (e.g. gpt2-small/6-res-jb, or its page address) when it is "
                          "not from SAELens's registry (default: from the registry)")
    add_dataclass_arguments(parser, LabelConfig, title="labelling")
    add_dataclass_arguments(parser, JudgeConfig, prefix="judge_", title="judge")
    add_dataclass_arguments(parser, EmbedConfig, prefix="embed_", title="label embeddings (search by meaning, map)")


def run(args) -> int:
    from pathlib import Path

    from saesteer.configargs import load_config_file

    file_values = load_config_file(args.config) if args.config else {}
    unknown = sorted(set(file_values) - {"judge", "label"})
    if unknown:
        print_error(f"unknown section(s) {unknown} in {args.config}; use 'judge' and 'label'")
        return 2
    try:
        label_cfg, judge_cfg, embed_cfg = _configs(args, file_values)
        budget = label_cfg.budget_value()
    except ValueError as e:
        print_error(e)
        return 2

    store_path = Path(args.store)
    if not store_path.is_file():
        print_error(f"no feature store at {store_path}; build one with `saesteer features build`")
        return 2
    elsewhere = _labels_made_elsewhere(args)
    with _writing(args, store_path):
        if elsewhere is not None:
            return elsewhere(args, store_path, label_cfg.overwrite)
        return _label_run(args, store_path, label_cfg, judge_cfg, embed_cfg, budget)


def _writing(args, store_path):
    """The store's writer lock (`features.store.writer_lock`) for a run that writes: a second label,
    build or upgrade of the store is refused naming this one. --dry-run and --export-delphi only read."""
    import contextlib

    from features.store import writer_lock

    return contextlib.nullcontext() if args.dry_run or args.export_delphi else writer_lock(store_path)


def _label_run(args, store_path, label_cfg, judge_cfg, embed_cfg, budget) -> int:
    """A labelling run: judge (or offline labeller), labels and scores into the store, the report.
    --latents and a --report that cannot be written are refused before the judge is made (a transformers judge loads
    its model; the judge's cache file is made)."""
    import sys

    from autointerp.cache import cache_beside
    from autointerp.config import make_judge
    from autointerp.featurestore import FeatureStoreLabels
    from autointerp.runner import select_latents
    from saesteer.commands._out import check_out_file

    if args.report:
        try:
            check_out_file(args.report, "--report", "the run report is a JSON file", "report.json")
        except ValueError as e:
            print_error(e)
            return 2
    with FeatureStoreLabels.open(store_path) as store:
        try:
            select_latents(store, label_cfg)
            judge = make_judge(judge_cfg, cache_path=cache_beside(store_path),
                               budget=budget)
        except ValueError as e:
            print_error(e)
            return 2
        if judge is None and budget is not None:
            print("note: the offline labeller costs nothing; --budget is ignored", file=sys.stderr)
        try:
            if args.dry_run:
                _dry_run(args, store, judge, label_cfg)
                return 0
            report = _label(args, store, judge, label_cfg, embed_cfg)
        except ValueError as e:
            print_error(e)
            return 2

    _print_report(report, store, budget, label_cfg)
    if args.report:
        _write_json(args.report, {
            "judge": report.judge, "requested": report.requested, "skipped": report.skipped,
            "labelled": report.labelled, "abandoned": report.abandoned, "stopped": report.stopped,
            "failed": [f.__dict__ for f in report.failed], "usage": report.usage, "elapsed_s": report.elapsed_s,
        })
    if report.stopped == "budget":
        return 3
    return 4 if report.failed else 0


def _labels_made_elsewhere(args):
    """The function doing one of the "labels made elsewhere" runs the flags ask for (None: a labelling
    run), or one that prints why the flags do not go together."""
    chosen = [flag for flag, given in (("--import-delphi", args.import_delphi), ("--export-delphi", args.export_delphi),
                                       ("--import-neuronpedia", args.import_neuronpedia)) if given]
    if not chosen and not args.delphi_module and not args.neuronpedia_sae:
        return None
    refusal = None
    if len(chosen) > 1:
        refusal = f"{' and '.join(chosen)}: give one of them per run"
    elif not chosen:  # a companion flag without its run: that is the mistake, whatever else is given
        refusal = ("--delphi-module names the module of --import-delphi RUN or --export-delphi DIR; give one of them"
                   if args.delphi_module else
                   "--neuronpedia-sae names the SAE of --import-neuronpedia EXPORT; give that too")
    elif args.neuronpedia_sae and not args.import_neuronpedia:
        refusal = f"--neuronpedia-sae names the SAE of --import-neuronpedia EXPORT; {chosen[0]} reads none, so leave it out"
    elif args.delphi_module and args.import_neuronpedia:
        refusal = "--delphi-module names the module of a delphi run; --import-neuronpedia reads none, so leave it out"
    elif _labelling_flags(args):
        # the labelling run's own flags would do nothing here: refuse them rather than leave them unheeded
        refusal = (f"{' and '.join(_labelling_flags(args))}: flag(s) of a labelling run; {chosen[0]} calls no judge "
                   "and writes no run report, so leave them out")
    if refusal is not None:
        def refuse(*_) -> int:
            print_error(refusal)
            return 2
        return refuse
    if args.import_neuronpedia:
        return lambda a, store_path, _overwrite: _import_neuronpedia(a, store_path)
    from saesteer.commands._delphi import run_delphi

    return run_delphi


def _labelling_flags(args) -> list[str]:
    """The flags given that only a labelling run reads: --dry-run, --report, the judge's, the
    embeddings' and the labelling settings (--overwrite aside: --export-delphi reads it)."""
    import dataclasses

    from autointerp.config import JudgeConfig, LabelConfig
    from autointerp.embeddings import EmbedConfig

    given = vars(args)
    flags = [f for f, on in (("--dry-run", args.dry_run), ("--report", args.report)) if on]
    for prefix, cls in (("", LabelConfig), ("judge_", JudgeConfig), ("embed_", EmbedConfig)):
        flags += ["--" + (prefix + f.name).replace("_", "-") for f in dataclasses.fields(cls)
                  if prefix + f.name in given and f.name != "overwrite"]
    return flags


def _import_neuronpedia(args, store_path) -> int:
    """--import-neuronpedia: Neuronpedia's explanations into the store (features/neuronpedia_import.py)."""
    from features import FeatureStore
    from features.neuronpedia_import import import_neuronpedia_explanations
    from features.drawing import readable
    from saesteer.terminal import counted

    try:
        with FeatureStore.open(store_path, readonly=False) as store:
            r = import_neuronpedia_explanations(store, args.import_neuronpedia, args.neuronpedia_sae)
    except (ValueError, OSError) as e:
        print_error(e)
        return 2
    by = ", ".join(f"{readable(m)} ({n})" for m, n in sorted(r.explainers.items())) or "none"  # names from the file
    ours = f"; {r.replaced_ours} replaced a label made here (kept in its history)" if r.replaced_ours else ""
    print(f"imported {counted(r.imported, 'Neuronpedia explanation')} of {r.neuronpedia_id} as labels of "
          f"{counted(len(r.latents), 'latent')} (explainers: {by}); {r.unchanged} imported before, {r.blank} without a "
          f"description{ours}")
    return 0


def _configs(args, file_values: dict):
    """(LabelConfig, JudgeConfig, EmbedConfig): flags over the --config file's 'label' and 'judge' sections."""
    from autointerp.config import JudgeConfig, LabelConfig
    from autointerp.embeddings import EmbedConfig
    from saesteer.configargs import dataclass_from_args

    label_cfg = dataclass_from_args(LabelConfig, args, file_values=file_values.get("label"))
    judge_cfg = dataclass_from_args(JudgeConfig, args, prefix="judge_", file_values=file_values.get("judge"))
    embed_cfg = dataclass_from_args(EmbedConfig, args, prefix="embed_")
    return label_cfg, judge_cfg, embed_cfg


def _dry_run(args, store, judge, label_cfg) -> None:
    """--dry-run: print what a run would cost (and write it to --report)."""
    from autointerp.runner import estimate_run

    est = estimate_run(store, judge, label_cfg)
    print(est.summary())
    if args.report:
        _write_json(args.report, {"dry_run": est.__dict__})


def _label(args, store, judge, label_cfg, embed_cfg):
    """Label the latents; with an embedder, embed the new labels too. Returns the run's report."""
    from autointerp.embeddings import make_embedder
    from autointerp.runner import label_latents

    embedder = make_embedder(embed_cfg)
    report = label_latents(store, judge, label_cfg, progress=not args.no_progress, embedder=embedder)
    if embedder is not None:
        from autointerp.semantic import embed_labels

        n = embed_labels(store.store, embedder, progress=not args.no_progress)
        print(f"label embeddings: {n} new ({embedder.name})")
    return report


def _print_report(report, store, budget, label_cfg) -> None:
    """The run's summary, the first failures, and why it stopped early if it did."""
    from saesteer.terminal import judge_streak_stop, print_failed_latents

    print(report.summary())
    print_failed_latents([(f.latent, f.stage, f.reason) for f in report.failed], more=f" (see {store.failures_file})")
    if report.stopped == "budget":
        print(f"stopped: the budget ({budget}) was reached; {report.abandoned} latent(s) in progress were left "
              "unwritten. Re-run to continue: --budget holds for each run on its own (a re-run may spend up to it "
              "again); answers already paid for are cached and not paid again.")
    if report.stopped == "failures":
        print(judge_streak_stop(label_cfg.max_consecutive_failures, report.failed[-1].reason))


def _write_json(path, obj) -> None:
    from saes.fileio import atomic_write_json

    atomic_write_json(path, obj, default=str)
