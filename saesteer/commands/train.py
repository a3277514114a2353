"""`saesteer train`: train one or several SAEs on cached (or freshly computed) activations."""

from __future__ import annotations

import argparse
import sys

from saesteer.boundary import print_error

NAME = "train"
ORDER = 30
HELP = "train TopK / BatchTopK / Matryoshka / JumpReLU SAEs on an activation cache (resumable, evaluated)"
DESCRIPTION = """\
Train sparse autoencoders on the activations of one hook point. Several SAEs (different
architecture, k or width) train together in one pass over the same batches: give several
comma-separated values to --architecture / --k / --d-sae and every combination is trained
(JumpReLU, which has no k, once per width; its own settings apply to every JumpReLU SAE).

Output folder (--out):
  saes/<name>/          one SAELens-compatible SAE folder per SAE (cfg.json, sae_weights.safetensors,
                        saesteer.json with provenance and final metrics)
  metrics.json          final metrics of every SAE (explained variance, L0, dead/dense fractions,
                        CE loss recovered, KL) and the run's throughput
  training_curves.html  interactive loss / FVU / dead-fraction / eval curves
  history.jsonl         the logged training and evaluation records
  checkpoints/          the last --checkpoint-keep-last checkpoints (safetensors + JSON)

Several processes (data parallel, one per GPU or across machines): start it with torchrun,
  torchrun --nproc-per-node 8 -m saesteer train --cache caches/x --out runs/x --device cuda ...
--batch-size stays the global batch (split evenly over the ranks); each rank reads its own
shards (--dp-partition rows: slices of one stream instead); NCCL on GPUs, gloo on CPU; rank 0
writes everything. See docs/training.md ("Distributed training") in saesteer's source repository.

Resuming: run the same command again with the same --out. It continues from the newest
checkpoint (also after kill -9; on CPU the result is bit-identical to an uninterrupted run with
the same --num-threads). SIGTERM (a scheduler's preemption, e.g. SLURM), Ctrl-C or SIGHUP
finish the current step and checkpoint it first, so the re-run redoes no step. A resume whose
settings differ is refused, naming each flag; these may change: --total-tokens (extends or
shortens the run; the LR decay is re-planned), --max-nonfinite, --num-threads, --device,
checkpoint, eval and logging options.
--resume never refuses an --out that holds checkpoints; --resume require insists on one.

Fine-tuning: --init-from SAE (a folder trained here, a SAELens folder or sae_lens:RELEASE/ID, a
sparsify / dictionary_learning / Gemma Scope SAE) starts from its weights; without --architecture,
--d-sae, --k the SAE is the source's, and without --hook its hook point is the one the source
records. A source for another d_in, hook point, model or BOS (its contexts started with BOS and the
cache's do not, or the other way round) is refused (--init-from-allow-mismatch true: another hook
point, model or BOS); the saved SAEs record it.

A config file (--config, JSON or TOML) can hold any option, in sections:
  {"data": {"cache": "caches/toy"}, "train": {"total_tokens": 20000000},
   "optim": {"lr": 3e-4}, "saes": [{"architecture": "topk", "k": 32, "d_sae": 4096}, ...],
   "checkpoint": {...}, "eval": {...}, "log": {...}, "text": {...}}
Flags win over the file; SAE flags, when given, replace the file's "saes" list.

examples:
  saesteer cache --model toy --dataset toy --out caches/toy-l2
  saesteer train --cache caches/toy-l2 --out runs/toy-l2 --architecture topk,batchtopk,matryoshka \\
      --k 32 --d-sae 4096 --total-tokens 20000000
  saesteer train --cache caches/toy-l2 --out runs/toy-l2 --total-tokens 30000000   # extend the run
  saesteer train --model toy --dataset toy --hook blocks.1.hook_resid_post --out runs/quick \\
      --total-tokens 1000000 --d-sae 1024                                            # no cache
  saesteer train --cache caches/x --out runs/x --eval-dataset data/held-out.jsonl    # CE on other text
  saesteer cache --model toy --dataset toy --split validation --max-tokens 100000 --out caches/toy-val
  saesteer train --cache caches/toy-l2 --holdout-cache caches/toy-val --out runs/toy-held  # held-out rows never trained on

CE loss recovered runs on held-out text: --eval-split of the training data (default validation),
or --eval-dataset. Eval text that is all training text is refused (--allow-eval-overlap true
measures it anyway); a partial overlap is printed and recorded in metrics.json (data.ce_eval_data)."""

_SAE_FLAGS = ("architecture", "d_sae", "k", "matryoshka_widths", "sae_lr", "sae_name", "skip")
_SHAPE_FLAGS = ("architecture", "d_sae", "k", "matryoshka_widths", "skip")  # what --init-from's source gives


def _bool_flag(text: str) -> bool:
    from saesteer.configargs import _parser_for

    return _parser_for(bool)(text)


def add_arguments(parser) -> None:
    from saesteer.commands._train_options import add_option_arguments
    from saesteer.configargs import add_dataclass_arguments
    from training.config import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig
    from training.text import TextConfig

    g = parser.add_argument_group("run")
    g.add_argument("--out", default=None, help="output folder (required); re-running with the same folder resumes")
    g.add_argument("--config", default=None, help="JSON/TOML config file with any of these options, in sections (flags win)")
    g.add_argument("--resume", choices=("auto", "never", "require"), default="auto",
                   help="auto: continue from the newest checkpoint in --out if any (default); never: refuse an --out "
                        "with checkpoints; require: fail without one")
    g.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    g.add_argument("--allow-model-mismatch", action="store_true",
                   help="evaluate with --model even if it is not the model the cache was made with")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (as in every command with long work)")
    # the earlier spelling `--progress false`, kept working for scripts but not shown: --no-progress is the one flag
    g.add_argument("--progress", dest="progress", type=_bool_flag, default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    s = parser.add_argument_group("SAEs (comma-separated values: every combination is trained)")
    s.add_argument("--architecture", default=None, metavar="LIST",
                   help="topk, batchtopk, matryoshka (= matryoshka_batchtopk), jumprelu (its settings: "
                        "below), or any other trainable architecture of saes/registry.py (default: topk)")
    s.add_argument("--d-sae", dest="d_sae", default=None, metavar="LIST", help="number of latents (default: 4096)")
    s.add_argument("--k", default=None, metavar="LIST", help="active latents per token (default: 32; JumpReLU has "
                                                             "none: its L0 follows from --l0-coefficient)")
    s.add_argument("--matryoshka-widths", dest="matryoshka_widths", default=None, metavar="INT,...",
                   help="Matryoshka prefix widths ending at d_sae (default: ~4x steps)")
    s.add_argument("--sae-lr", dest="sae_lr", type=float, default=None,
                   help="learning rate of every SAE given here (default: --lr, or the width rule)")
    s.add_argument("--sae-name", dest="sae_name", default=None, help="folder name (only with a single SAE)")
    s.add_argument("--skip", dest="skip", action="store_const", const=True, default=None,
                   help="with --target-hook: skip transcoders (a learned linear term W_skip x beside the latents)")
    add_option_arguments(parser)  # an architecture's own settings (JumpReLU's), from its config dataclass

    add_dataclass_arguments(parser, DataConfig, title="data")
    add_dataclass_arguments(parser, TrainConfig, title="training")
    add_dataclass_arguments(parser, OptimConfig, title="optimiser and learning-rate schedule")
    add_dataclass_arguments(parser, CheckpointConfig, prefix="checkpoint_", title="checkpoints")
    add_dataclass_arguments(parser, EvalConfig, prefix="eval_", title="evaluation")
    add_dataclass_arguments(parser, LogConfig, title="logging", skip=("progress",))
    add_dataclass_arguments(parser, TextConfig, title="text (only without --cache: activations computed on the fly)")


def _split_list(text: str, conv, flag: str):
    try:
        return [conv(t.strip()) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated {conv.__name__} values, got {text!r}") from None


def _sae_specs(args, file_specs: list) -> list:
    from training.config import SAESpec, takes_k, takes_levels

    if all(getattr(args, f) is None for f in _SAE_FLAGS):
        specs = []
        for i, s in enumerate(file_specs):
            try:
                specs.append(SAESpec(**s) if isinstance(s, dict) else s)
            except (TypeError, ValueError) as e:  # e.g. a k given to an architecture without one
                raise ValueError(f"saes[{i}] of {args.config}: {e}") from None
        return specs or [SAESpec()]
    archs = _split_list(args.architecture, str, "--architecture") if args.architecture else ["topk"]
    widths = _split_list(args.d_sae, int, "--d-sae") if args.d_sae else [4096]
    ks = _split_list(args.k, int, "--k") if args.k else [None]  # none: SAESpec's default (DEFAULT_K)
    mw = _split_list(args.matryoshka_widths, int, "--matryoshka-widths") if args.matryoshka_widths else []
    specs = []
    for arch in archs:
        levels = mw if takes_levels(arch) else []
        for d_sae in widths:
            for k in ks if takes_k(arch) else [None]:  # an architecture without k (jumprelu): one SAE per width
                specs.append(SAESpec(arch, d_sae=d_sae, k=k, matryoshka_widths=levels, lr=args.sae_lr,
                                     skip=bool(args.skip)))
    if args.sae_name:
        if len(specs) != 1:
            raise ValueError("--sae-name names a single SAE; with several, the names are <arch>_k<k>_f<d_sae>")
        specs[0].name = args.sae_name
    return specs


def build_configs(args):
    """(RunConfig, DataConfig, TextConfig, out, InitSource | None, text given) from defaults, the
    config file (read once) and the flags; the InitSource reads --init-from's SAE at most once for all
    of the command. Text given: the TextConfig fields a flag or the config file's text section gives,
    each with how it was said (`_train_data.prepare_data`'s `text_given`)."""
    import dataclasses

    from saesteer.commands._train_options import apply_options, option_values
    from saesteer.configargs import dataclass_from_args, load_config_file
    from training.config import (
        CheckpointConfig,
        DataConfig,
        EvalConfig,
        LogConfig,
        OptimConfig,
        RunConfig,
        TrainConfig,
    )
    from training.text import TextConfig

    file_values = load_config_file(args.config) if args.config else {}
    sections = {"data", "text", "saes", "train", "optim", "checkpoint", "eval", "log", "out"}
    unknown = sorted(set(file_values) - sections)
    if unknown:
        raise ValueError(f"unknown section(s) in {args.config}: {', '.join(unknown)}; known: {', '.join(sorted(sections))}")

    def section(name):
        v = file_values.get(name, {})
        if not isinstance(v, dict):
            raise ValueError(f"section {name!r} of {args.config} must be a mapping")
        return v

    run = RunConfig(
        saes=_sae_specs(args, file_values.get("saes", [])),
        train=dataclass_from_args(TrainConfig, args, file_values=section("train")),
        optim=dataclass_from_args(OptimConfig, args, file_values=section("optim")),
        checkpoint=dataclass_from_args(CheckpointConfig, args, prefix="checkpoint_", file_values=section("checkpoint")),
        eval=dataclass_from_args(EvalConfig, args, prefix="eval_", file_values=section("eval")),
        log=dataclass_from_args(LogConfig, args, file_values=section("log"),
                                **({"progress": False} if getattr(args, "no_progress", False) else {})),
    )
    data = dataclass_from_args(DataConfig, args, file_values=section("data"))
    out = args.out or file_values.get("out")
    source = None
    if run.train.init_from:
        from training.init_from import InitSource

        source = InitSource(run.train.init_from)
    if source is not None and data.hook is None:
        data = _hook_of_source(source, data)
    if source is not None and all(getattr(args, f) is None for f in _SHAPE_FLAGS) and not file_values.get("saes"):
        # the source's shape; --sae-name / --sae-lr still apply to it
        run.saes = _fine_tuning_run_saes(out, source.spec) or _source_as_it_is(source, data)
        for spec in run.saes:
            spec.name = args.sae_name or spec.name
            spec.lr = args.sae_lr if args.sae_lr is not None else spec.lr
    run.saes = apply_options(run.saes, option_values(args))
    if data.target_hook is None and any(spec.skip for spec in run.saes):
        raise ValueError("--skip makes skip transcoders: give --target-hook too (the hook point they predict)")
    text = dataclass_from_args(TextConfig, args, file_values=section("text"))
    given = {f.name: f"--{f.name.replace('_', '-')}" if f.name in vars(args) else f"{args.config}'s text.{f.name}"
             for f in dataclasses.fields(TextConfig) if f.name in vars(args) or f.name in section("text")}
    return run, data, text, out, source, given


def _hook_of_source(source, data):
    """--hook's default with --init-from: the hook point the source SAE records (its cfg.json, sparsify's
    hookpoint, dictionary_learning's submodule). Without it a cache of several hooks was refused naming
    no flag, and training without a cache took the middle layer."""
    import dataclasses

    try:
        hook = (source.load().sae.cfg.metadata or {}).get("hook_name")
    except (OSError, ValueError):  # reported where the source is loaded (a resume does not need it)
        return data
    if data.cache:  # a cache without that hook: the mismatch is refused later, naming --init-from-allow-mismatch
        from training.manifest import read_manifest

        try:
            if hook not in read_manifest(data.cache).hooks:
                return data
        except (OSError, ValueError):
            return data
    return dataclasses.replace(data, hook=hook) if hook else data


def _source_as_it_is(source, data) -> list:
    """The SAE flags' default with --init-from: one SAE, the source's architecture, d_sae, k, widths, skip."""
    from training.init_from import mode_mismatch, spec_from_source

    loaded = source.load()
    mismatch = mode_mismatch(loaded, data.target_hook, data.hook)  # before --skip's check: the source set it
    if mismatch:
        raise ValueError(mismatch)
    return [spec_from_source(loaded)]


def _fine_tuning_run_saes(out: str | None, init_from: str) -> list | None:
    """The SAEs of the run already in `out` that fine-tunes `init_from` (its config.json): a resume
    takes them from there, so the source is not read again and may have moved."""
    import json
    from pathlib import Path

    from training.config import RunConfig

    try:
        saved = json.loads((Path(out) / "config.json").read_text(encoding="utf-8")) if out else None
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or (saved.get("train") or {}).get("init_from") != init_from:
        return None
    return RunConfig.from_dict({"saes": saved.get("saes") or []}).saes or None


def run(args) -> int:
    import dataclasses
    import json
    from pathlib import Path

    try:
        run_cfg, data_cfg, text_cfg, out, init_source, text_given = build_configs(args)
    except (ValueError, TypeError) as e:
        print_error(e)
        return 2
    if args.print_config:
        try:
            shown = _text_trained_on(data_cfg, text_cfg, text_given)
        except (OSError, ValueError) as e:
            print_error(e)
            return 2
        print(json.dumps({"out": out, "data": dataclasses.asdict(data_cfg), "text": dataclasses.asdict(shown),
                          **run_cfg.to_dict()}, indent=2))
        return 0
    if not out:
        print_error("--out is required (the folder for checkpoints, SAEs and metrics)")
        return 2
    from saesteer.commands._out import check_out_folder
    from training.distributed import init_from_env, launched_by_torchrun, shutdown
    from training.run import lock_run_dir

    try:  # found when the folder is made, after the model loaded
        check_out_folder(out, "training writes a folder (checkpoints, SAEs, metrics)")
    except ValueError as e:
        print_error(e)
        return 2
    if Path(out).is_dir() and not launched_by_torchrun():  # another run in the folder: said before loading a model
        lock_run_dir(Path(out)).refuse_if_held()

    setup = None
    if not launched_by_torchrun():  # (torchrun: init_from_env gives each rank its device, checked there)
        from saes.devices import check_device, refuse_mps_float64

        check_device(run_cfg.train.device)  # also a config file's train.device
        refuse_mps_float64(run_cfg.train.device, "training")
    if launched_by_torchrun():
        try:
            setup = init_from_env(run_cfg.train.device, run_cfg.train.num_threads)
        except (ValueError, RuntimeError) as e:
            print_error(e)
            return 2
        run_cfg.train.device = setup.device
    from saesteer.librarybars import library_bars
    from training.trainer import ConfigMismatchError

    try:
        with library_bars(enabled=run_cfg.log.progress):  # a config file's log.progress = false as --no-progress
            return _run_training(args, run_cfg, data_cfg, text_cfg, out, setup, init_source, text_given)
    except ConfigMismatchError as e:  # a resume refused: said with the flags (the CLI's boundary prints it)
        from saesteer.commands._config_paths import config_paths_as_flags

        e.message = config_paths_as_flags(e.message, getattr(args, "_parser", None))
        e.args = (e.message,)
        raise
    finally:
        if setup is not None:
            shutdown()


def _text_trained_on(data_cfg, text_cfg, text_given: dict[str, str]):
    """The text settings the run reads its text with, for --print-config: with --cache the cache's
    (checked against those given, as training checks them), so that the printed config given back as
    --config trains as this command would; without a readable cache, `text_cfg`."""
    if not data_cfg.cache:
        return text_cfg
    from saesteer.commands._train_data import check_cached_text
    from training.manifest import read_manifest
    from training.sources import text_config_from_manifest

    try:
        man = read_manifest(data_cfg.cache)
    except (OSError, ValueError):  # not built yet: training says so
        return text_cfg
    check_cached_text(data_cfg.cache, man, text_cfg, text_given)
    return text_config_from_manifest(man)


def _run_training(args, run_cfg, data_cfg, text_cfg, out, setup, init_source, text_given: dict[str, str]) -> int:
    from saesteer.commands._train_data import prepare_data
    from training.init_from import InitFromError

    coll = setup.collectives if setup is not None else None
    try:
        data = prepare_data(run_cfg, data_cfg, text_cfg, coll, args.allow_model_mismatch,
                            _early_init_check(run_cfg, out, init_source), text_given=text_given)
    except InitFromError:  # said as the run's own check says it (the CLI's boundary names the flag)
        raise
    except (ValueError, OSError) as e:
        print_error(e)
        return 2

    from saesteer import stopsignals
    from training.run import RunStopped, train
    from training.trainer import NonFiniteError

    try:
        result = train(run_cfg, data.source, out, model_eval=data.model_eval, provenance=data.provenance,
                       resume=args.resume, collectives=coll, init_source=init_source, stop_signals=stopsignals.deferred,
                       holdout=data.holdout)
    except RunStopped as e:  # a checkpoint of the step it stopped at is on disk: the CLI says where (rank 0)
        raise stopsignals.Stopped(e.signum, _stopped_detail(e) if coll is None or coll.is_writer else "") from None
    except (FileExistsError, FileNotFoundError) as e:  # ConfigMismatchError, CheckpointError: the CLI's boundary
        print_error(e)
        return 2
    except NonFiniteError as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 3
    if coll is None or coll.is_writer:
        _print_summary(result)
    return 0


def _stopped_detail(e) -> str:
    """Where a run stopped by a signal (`training.run.RunStopped`) stands, and how it goes on."""
    return f"{e}: the same command starts the run again" if e.checkpoint is None else f"{e}; run the same command to resume"


def _early_init_check(run_cfg, out: str, init_source):
    """The --init-from checks that need no model (`training.init_from.check_source` on what the data
    tell before it loads), for `prepare_data`; None without --init-from or when `out` holds this
    fine-tuning run already (a resume takes its weights from there). The run checks everything
    again once the model and the data's width are known; its notes are printed then."""
    if init_source is None or _fine_tuning_run_saes(out, init_source.spec) is not None:
        return None
    from training.init_from import check_source

    def check(prov: dict, d_in, d_out, transcoder: bool) -> None:
        check_source(init_source.load(), run_cfg.saes, d_in, prov, run_cfg.train.init_from_allow_mismatch,
                     d_out=d_out, log=lambda _note: None, transcoder=transcoder)

    return check


def _print_summary(result) -> None:
    from training.report import dead_figures_note

    m = result.metrics
    rate = m.get("tokens_per_second")
    held = m.get("holdout_rows")
    print(f"trained {m['tokens_trained']:,} training tokens in {m['steps']:,} steps"
          + (f" (+{held:,} held out for evaluation)" if held else "")
          + (f" ({rate:,.0f} tokens/s in training steps)" if rate else "")
          + (f"; stopped early: {m['stopped_early']}" if m.get("stopped_early") else ""))
    header = f"{'SAE':<34} {'EV':>7} {'L0':>7} {'dead':>7} {'held-out dead':>13} {'dense':>7} {'CE rec':>7} {'KL':>8}"
    print(header)
    for name, s in m["saes"].items():
        ce = s.get("ce_loss_recovered")
        kl = s.get("kl_div")
        print(f"{name:<34} {s['explained_variance']:7.4f} {s['l0']:7.2f} {s['dead_fraction']:7.2%} "
              f"{s['eval_dead_fraction']:13.2%} {s['dense_fraction']:7.2%} {'' if ce is None else f'{ce:7.4f}':>7} "
              f"{'' if kl is None else f'{kl:8.5f}':>8}")
    first = next(iter(m["saes"].values()), {})
    print(dead_figures_note(first.get("dead_window_tokens"), first.get("eval_rows")))
    if (m.get("data") or {}).get("holdout_trained_on"):
        print("the held-out rows were trained on too (a second pass over the cache): EV and held-out dead are on "
              "trained-on rows")
    print(f"SAE folders under {result.out_dir / 'saes'}; metrics in {result.out_dir / 'metrics.json'}; "
          f"curves in {result.out_dir / 'training_curves.html'}")
