"""`saesteer cache`: build (or resume) an activation cache on disk; `--dry-run`; `--verify DIR`."""

from __future__ import annotations

import os
import time

from saesteer.boundary import print_error

NAME = "cache"
ORDER = 20
HELP = "cache model activations on disk (sharded, checksummed, resumable)"
ON_STOP = "the shards written are kept (no half shard); run the same command to resume the cache"
DESCRIPTION = """\
Run the model over a text dataset and store the activations of one or several hook points
as checksummed safetensors shards with a manifest. Re-running the same command after a crash
or a stop (Ctrl-C, SIGTERM, SIGHUP) resumes where it stopped; a directory made with other
settings is refused.

examples:
  saesteer cache --model toy --dataset toy                 # toy world, middle-layer residual stream
  saesteer cache --model toy --dataset toy --dry-run       # only print size and time estimates
  saesteer cache --model gpt2 --dataset data/corpus/ --hooks blocks.6.hook_resid_post \\
      --context-length 128 --max-tokens 50000000 --out caches/gpt2-l6
      # data/corpus/ with train.jsonl + validation.jsonl: only the split --split (train) is read
  saesteer cache --model gpt2 --dataset train=data/a.jsonl,validation=data/b.jsonl --out caches/x
  saesteer cache --verify caches/gpt2-l6                   # check every shard's SHA-256"""


def add_arguments(parser) -> None:
    from saesteer.configargs import add_dataclass_arguments
    from training.cache_config import CacheConfig
    from training.text import TextConfig

    g = parser.add_argument_group("model and run")
    g.add_argument("--model", default=None,
                   help="'toy', a HuggingFace model name[@revision], or a local model directory (default: the "
                        "model of the cache already in --out, else toy for --dataset toy)")
    g.add_argument("--process-weights", action="store_true", default=None,
                   help="apply TransformerLens's default weight processing (fold_ln, center_writing_weights, "
                        "center_unembed, fold_value_biases) as HookedSAETransformer.from_pretrained does, so SAEs "
                        "match SAELens users who load models that way (default: the raw weights; recorded, and "
                        "re-applied by every later command)")
    g.add_argument("--device", default=None, help="where the model runs (default: cuda if available, else cpu)")
    g.add_argument("--out", default=None, help="cache directory (default: caches/<model>/<hooks>)")
    g.add_argument("--hooks", default=None, help="hook point(s), comma-separated (default: blocks.<n_layers//2>.hook_resid_post)")
    g.add_argument("--config", default=None, help="JSON/TOML file with any of these options (flags win)")
    g.add_argument("--dry-run", action="store_true", help="print the disk and time estimates and exit")
    g.add_argument("--verify", metavar="DIR", default=None, help="check the shards of the cache in DIR against its manifest and exit")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataclass_arguments(parser, TextConfig, title="text input")
    add_dataclass_arguments(parser, CacheConfig, title="cache", skip=("out", "hooks"))


def _split_config(values: dict, *classes) -> list[dict]:
    import dataclasses

    out = []
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls)}
        out.append({k: v for k, v in values.items() if k in names})
    return out


def _slug(s: str) -> str:
    from saes.fileio import portable_name

    return portable_name(s, "model")  # '..' (--model ..) or 'con' must not become a path part


def _existing_cache(out):
    """The manifest of the cache already in `out` (a resume), or None."""
    from pathlib import Path

    from training.manifest import MANIFEST_NAME, CacheFormatError, read_manifest

    if not out or not (Path(out) / MANIFEST_NAME).is_file():
        return None
    try:
        return read_manifest(out)
    except CacheFormatError:
        return None  # build_cache says what is wrong with it


def run(args) -> int:
    from pathlib import Path

    from saesteer.configargs import dataclass_from_args
    from saes.hookpoints import UnknownHookError
    from saesteer.models import model_id, model_info
    from training.cache import build_cache
    from training.estimate import estimate_cache
    from training.writer import CacheDiskFullError
    from training.cache_config import CacheConfig
    from training.manifest import CacheFormatError, CacheMismatchError, lock_cache_dir
    from training.text import TextConfig, resolve_data, source_as_read

    if args.verify:
        return _verify(args)
    extra, text_vals, cache_vals = _file_config(args)
    try:
        text = dataclass_from_args(TextConfig, args, file_values=text_vals)
    except ValueError as e:
        print_error(e)
        return 2
    given_out = args.out or extra.get("out")
    if given_out and Path(given_out).is_dir():  # another process writing this cache: said before loading a model
        try:
            lock_cache_dir(given_out).refuse_if_held()
        except RuntimeError as e:
            return _error(e, args)
    existing = _existing_cache(given_out)
    try:
        resolve_data(text)  # local data that is not there (a file, a split, a file kind): said before the model loads
    except (FileNotFoundError, ValueError) as e:
        return _error(e, args)
    try:
        model, model_spec = _model(args, extra, text, existing)
    except (OSError, ValueError) as e:
        print_error(e)
        return 2
    ident, revision = model_id(model), model_info(model).revision
    hooks = args.hooks or extra.get("hooks") or f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
    if isinstance(hooks, str):
        hooks = [h.strip() for h in hooks.split(",") if h.strip()]
    out = args.out or extra.get("out") or f"caches/{_slug(model_spec)}/{_slug('+'.join(hooks))}"
    try:
        cfg = dataclass_from_args(CacheConfig, args, file_values=cache_vals, out=out, hooks=hooks)
        # a pretokenized dataset: the separator its rows hold, unless --separator says (checked against them)
        source = source_as_read(text, model.tokenizer,
                                separator_given="separator" in vars(args) or "separator" in text_vals)
        if args.dry_run:
            est = estimate_cache(model, source.cfg, cfg, model_id=ident, model_revision=revision, source=source)
            est.setup_seconds = process_age()  # a build run now pays this again before caching
            print(est.describe())
            return 0
        build_cache(model, source.cfg, cfg, model_id=ident, model_revision=revision, progress=not args.no_progress,
                    source=source)
    except (CacheMismatchError, CacheDiskFullError, UnknownHookError, CacheFormatError, ValueError, FileNotFoundError, RuntimeError) as e:
        return _error(e, args)
    return 0


def process_age() -> float | None:
    """Wall seconds since this process started (Linux's /proc; None elsewhere): the command's start-up
    (imports, model load, checks, the rate probe) when called as it is about to cache."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks after boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    # a boot clock that disagrees with /proc's (a sandbox's emulated /proc, a time namespace): no figure, not a wrong one
    return age if age >= 0 else None


def _verify(args) -> int:
    """--verify: check every shard of a cache; exit 1 if any is bad."""
    from training.manifest import CacheFormatError
    from training.shardset import verify_cache

    try:
        report = verify_cache(args.verify, progress=not args.no_progress)
    except CacheFormatError as e:
        print_error(e)
        return 2
    for p in report.problems:
        print(f"BAD  {p}")
    print(f"{args.verify}: {report.checked} shard(s) checked, {'all good' if report.ok else f'{len(report.problems)} problem(s)'}")
    return 0 if report.ok else 1


def _file_config(args):
    """(the --config file's model/device/out/hooks/process_weights, its TextConfig fields, its
    CacheConfig fields); any other key is refused."""
    from saesteer.configargs import load_config_file
    from training.cache_config import CacheConfig
    from training.text import TextConfig

    file_values = load_config_file(args.config) if args.config else {}
    extra = {k: file_values.pop(k) for k in ("model", "device", "out", "hooks", "process_weights") if k in file_values}
    text_vals, cache_vals = _split_config(file_values, TextConfig, CacheConfig)
    unknown = set(file_values) - set(text_vals) - set(cache_vals)
    if unknown:
        raise ValueError(f"unknown key(s) in {args.config}: {', '.join(sorted(unknown))}")
    return extra, text_vals, cache_vals


def _model(args, extra: dict, text, existing):
    """(the model, its spec): resuming a cache without --model, the model the cache records; else
    --model (or the config file's), toy only for the toy corpus."""
    from saesteer.models import load_model, model_id, start_model_spec  # the face resolves models

    model_spec = args.model or extra.get("model")
    device = args.device or extra.get("device")
    if model_spec is None and existing is not None:  # resuming: the model the cache records
        from saesteer.models import load_recorded_model

        recorded = existing.recorded_model()
        if args.process_weights and recorded is not None and not recorded.processed:
            raise ValueError(f"the cache {args.out or extra.get('out')} was made with {recorded.id}'s raw weights; "
                             f"leave out --process-weights to resume it, or choose another --out")
        model = load_recorded_model(recorded, None, recorded_in=f"the cache {args.out or extra.get('out')}",
                                    device=device)
        return model, model_id(model)
    model_spec = start_model_spec(model_spec, text.dataset)  # toy only for the toy corpus
    process = bool(args.process_weights if args.process_weights is not None else extra.get("process_weights"))
    return load_model(model_spec, device=device, process_weights=process), model_spec


def _error(e: Exception, args) -> int:
    """`error: ...` with the config fields a domain error names said as this command's flags."""
    from saes.errors import SaesteerError
    from saesteer.boundary import message_for

    text = message_for(e, getattr(args, "_parser", None))[0] if isinstance(e, SaesteerError) else str(e)
    print_error(text)
    return 2
