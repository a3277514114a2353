"""Shared pieces of `saesteer steer`, `sweep` and `steer-eval` (not a command: the name starts with _).

Loading (model, SAEs, feature store), reading prompts, and what a measurement records of them
(`measurement_provenance`); the toy-world offline scorer is `saesteer.toyscore`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saes.errors import SaesteerError
from saes.identity import official_model_name

if TYPE_CHECKING:  # importing saes.formats loads torch: not at CLI start-up
    from saes.formats import LoadedSAE


class CLIError(SaesteerError):
    """A user error: printed as `error: ...`, exit status 2."""


def add_latent_argument(group, *, required: bool = False, **kw: Any) -> None:
    """`--latent/-l` (repeatable, into `args.latent`), and `--feature/-f`, its name before a latent's
    index was called `latent` everywhere: still accepted, hidden from --help."""
    target = group.add_mutually_exclusive_group(required=True) if required else group
    target.add_argument("--latent", "-l", action="append", default=[], **kw)
    target.add_argument("--feature", "-f", action="append", dest="latent", default=[],
                        **{k: v for k, v in kw.items() if k != "help"}, help=argparse.SUPPRESS)


def add_common_arguments(parser, *, prompts_help: str, several_stores: bool = False) -> None:
    """The model, SAE, store and prompt flags; `several_stores`: --store repeatable (a list), one per
    --sae (`open_stores`), where the command steers with several SAEs."""
    g = parser.add_argument_group("model, SAE and store")
    g.add_argument("--model", default=None,
                   help="'toy', a HuggingFace model name, or a local model directory (default: the model the SAEs "
                        "or the store record)")
    g.add_argument("--allow-model-mismatch", action="store_true",
                   help="steer --model even if the SAEs or the store record another model")
    g.add_argument("--device", default=None, help="device for the model and SAEs (default: the model's)")
    g.add_argument("--sae", action="append", default=[], metavar="[NAME=]SAE",
                   help="SAE: a folder (saesteer, SAELens, sparsify, dictionary_learning, Gemma Scope), an OpenAI .pt file, or "
                        "sae_lens:RELEASE/SAE_ID, or a Neuronpedia id or address such as gpt2-small/6-res-jb (repeat for "
                        "several; name them NAME=SAE and refer to NAME/LATENT in edits). Required, unless every latent "
                        "is named by Neuronpedia (gpt2-small/6-res-jb/17 or its address), all of one SAE: that SAE")
    g.add_argument("--hook", default=None, metavar="HOOK",
                   help="hook point of SAEs whose files do not record one (e.g. blocks.2.hook_resid_post; default: "
                        "the hook --store was built at)")
    if several_stores:
        g.add_argument("--store", action="append", default=[], metavar="FILE",
                       help="feature store of an SAE: typical max activations for 'x' strengths, label search; "
                            "repeat for several SAEs: each store goes with the --sae it was built for")
    else:
        g.add_argument("--store", default=None, metavar="FILE", action=OneStore,
                       help="feature store of the SAE: typical max activations for 'x' strengths, label search")
    p = parser.add_argument_group("prompts")
    p.add_argument("--prompt", "-p", action="append", default=[], help=prompts_help)
    p.add_argument("--prompts-file", default=None, metavar="FILE", help="more prompts, one per non-blank line (indentation kept, spaces at its end dropped)")


class OneStore(argparse.Action):
    """--store of a command that reads one store: a second one is refused (argparse would keep the
    last silently, e.g. `sweep --store l0.db --store l1.db` sweeping with l1's maxima, or `label`
    labelling l1 alone)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            parser.error(f"{option_string} given twice: this command reads one store; run it once per store "
                         f"(`saesteer steer` takes a --store per --sae, `saesteer serve` several)")
        setattr(namespace, self.dest, values)


def parse_sae_args(values: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if sep and ("/" in name or ":" in name):  # no name: an '=' inside a path or an address's query
            name, sep, path = "", "", v
        if not sep:
            name, path = ("sae" if len(values) == 1 else Path(v).name), v
        if not name or "/" in name or ":" in name:
            raise CLIError(f"bad SAE name in --sae {v!r}; use NAME=DIR with a NAME without '/' or ':'")
        if name in out:
            raise CLIError(f"two SAEs are named {name!r}; name them with NAME=DIR")
        out[name] = Path(path)
    return out


def load_saes(values: list[str], device: Any = None, hook: str | None = None, model: str | None = None,
              store_hook: str | None = None) -> dict[str, LoadedSAE]:
    """Every --sae through `saes.formats.resolve_sae` (any supported format or registry id): name ->
    `LoadedSAE` (the SAE beside its provenance); --hook and --model fill in what a format does not
    record, and a contradicting --hook is refused. `store_hook` (the hook --store was built at) only
    fills in for an SAE that records none: an SAE of another hook is then the store's SAE check's to
    refuse, naming the store (not a --hook the user never gave)."""
    from saes.formats import resolve_store_sae

    loaded = {}
    for name, path in parse_sae_args(values).items():
        try:
            loaded[name] = resolve_store_sae(path, store_hook, hook=hook, model=model, device=device)
        except (FileNotFoundError, ValueError) as e:
            raise CLIError(f"cannot load SAE {name!r} from {path}: {e}") from None
    return loaded


def latent_owners(sae_values: list[str], store_paths: list[str] = ()):
    """Where the Neuronpedia latents of edits go (`saes.formats.neuronpedia.LatentOwners`): the --sae
    whose Neuronpedia id (through SAELens's registry) each names, read only when one appears. A single
    --sae with no id there and a single --store: the id the store knows its SAE by (its Neuronpedia
    labels', as `features show` reads it); the store's SAE check still refuses a store of another SAE."""
    from saes.formats.neuronpedia import LatentOwners, neuronpedia_id_of_spec

    specs = parse_sae_args(sae_values)

    def ids() -> dict[str, str | None]:
        found = {name: neuronpedia_id_of_spec(str(spec)) for name, spec in specs.items()}
        if len(found) == 1 and None in found.values() and len(store_paths) == 1:
            known = _store_neuronpedia_ids(store_paths[0])
            if len(known) > 1:  # labels imported under several ids: which the --sae is, nothing says
                raise CLIError(f"--sae {next(iter(found))!r} has no Neuronpedia id in SAELens's registry, and --store "
                               f"{store_paths[0]} knows its SAE by {len(known)} ({', '.join(map(repr, known))}: its "
                               f"Neuronpedia labels were imported under each); give the latent as its index")
            found = dict.fromkeys(found, known[0] if known else None)
        return found

    return LatentOwners(ids, named=len(specs) > 1)


def _store_neuronpedia_ids(path: str) -> list[str]:
    """The Neuronpedia ids the feature store at `path` knows its SAE by (none where it is no store)."""
    from features import FeatureStore
    from features.neuronpedia_import import store_latent_owners
    from features.store import StoreError

    try:
        store = FeatureStore.open(path)
    except (OSError, StoreError):
        return []  # not a store: open_store says so
    try:
        return sorted({np_id for np_id in store_latent_owners(store).ids.values() if np_id})
    finally:
        store.close()


def sae_from_latents(args, texts: list[str]) -> None:
    """No --sae: the Neuronpedia SAE that every latent (or edit) in `texts` names becomes the --sae."""
    if args.sae:
        return
    from saes.formats.neuronpedia import sae_of_latents

    found = sae_of_latents(texts)
    if found is None:
        raise CLIError("give --sae (a folder, sae_lens:RELEASE/SAE_ID, or a Neuronpedia id or address); it may be left "
                       "out only when every latent is named by its Neuronpedia id or address, all of one SAE")
    args.sae = [found]


def store_hook(args) -> str | None:
    """The hook point the --store was built at, for a single --sae given no --hook (a Gemma Scope or
    OpenAI SAE records none: `features build --hook` gave it, and the store keeps it; the store's SAE
    check then confirms the pair). `load_saes(..., store_hook=)` takes it."""
    given = getattr(args, "store", None)
    paths = given if isinstance(given, list) else [given] if given else []
    if getattr(args, "hook", None) or len(paths) != 1 or len(args.sae or []) != 1:
        return None
    from features import FeatureStore
    from features.store import StoreError

    try:
        store = FeatureStore.open(paths[0])
    except (OSError, StoreError):
        return None  # not a store: open_store says so
    try:
        return (store.meta.get("sae") or {}).get("hook_name")
    finally:
        store.close()


def require_hook(name: str, spec: Any, sae: Any) -> None:
    """Refuse (CLIError naming --hook) an SAE whose files record no hook point and that got no --hook."""
    if not (sae.cfg.metadata or {}).get("hook_name"):
        raise CLIError(f"SAE {name!r} ({spec}) does not record its hook point; pass --hook "
                       f"(e.g. --hook blocks.6.hook_resid_post)")


def load_model(args, loaded: dict[str, LoadedSAE], store: Any = None, cache: str | None = None,
               sae_specs: dict[str, Any] | None = None, cache_manifest: Any = None):
    """The model to run: --model, checked against the model every SAE (`load_saes`'s LoadedSAEs)
    and the store's (a list: each store's) or activation cache's record, or else the recorded model itself; loaded with
    TransformerLens's weight processing when SAELens SAEs ask for it and no record says otherwise
    (`saes.processing`). Refusals name both models and --allow-model-mismatch. Every SAE must know
    its hook point first (its files, or --hook). `sae_specs`: name -> what each SAE was given as, for
    messages (default: parsed from args.sae). `cache_manifest`: the cache's manifest where the caller
    has read it already (else read here)."""
    from saes.identity import ModelIdentityError, check_named_model, check_same_model, identity_of_sae
    from saes.processing import APPLIED_ATTR, check_processing, processing_wanted
    from saesteer.models import OVERRIDE_FLAG, load_recorded_model, model_identity, pick_record, process_loaded_weights

    dirs = parse_sae_args(args.sae) if sae_specs is None else sae_specs
    for name, item in loaded.items():
        require_hook(name, dirs[name], item.sae)
    records = [(identity_of_sae(item), f"SAE {name!r} ({dirs[name]})") for name, item in loaded.items()]
    for s in (store if isinstance(store, list) else [] if store is None else [store]):
        records.append((s.recorded_model(), f"the feature store {s.path}"))
    if cache is not None:  # e.g. an SAE from another library, whose files name no model we can load
        from training.manifest import read_manifest

        man = cache_manifest if cache_manifest is not None else read_manifest(cache)
        records.append((man.recorded_model(), f"the cache {cache}"))
    first, where = pick_record(records)
    if first is None and not args.model:
        _refuse_unrecorded(where, loaded)
    known = [(ident, w) for ident, w in records if ident is not None and w != where]
    allow = args.allow_model_mismatch
    try:
        model = load_recorded_model(first, args.model, recorded_in=where, device=args.device, allow_mismatch=allow)
        if first is None:
            # SAEs of SAELens's registry that read a processed model (model_from_pretrained_kwargs),
            # counted as check_processing counts them, by the model's config: processed so, unless a
            # record says otherwise (then refused below)
            wanted = {w for item in loaded.values() if (w := processing_wanted(item, model.cfg)) is not None}
            if wanted == {True}:
                process_loaded_weights(model)
        if not allow:
            given = model_identity(model)
            given_as = f"--model {args.model}" if args.model else f"the model {where} records"
            for ident, other in known:
                check_same_model(ident, given, recorded_in=other, given_as=given_as, override=OVERRIDE_FLAG,
                                 fix="give SAEs (and a store) of one model")
            for name, item in loaded.items():
                check_named_model(item, given, sae_as=f"SAE {name!r} ({dirs[name]})", given_as=given_as,
                                  override=OVERRIDE_FLAG, fix="pass --model with its model")
                check_processing(item, given, sae_name=name, model_as=given_as, override=OVERRIDE_FLAG,
                                 model_cfg=getattr(model, "cfg", None), applied=getattr(model, APPLIED_ATTR, None),
                                 fix=lambda w: "give SAEs, a store and a cache made with the model loaded one way "
                                               f"(a cache made {'with' if w else 'without'} `saesteer cache "
                                               "--process-weights` records it)")
    except (ValueError, OSError) as e:  # ModelIdentityError is a ValueError and says it all
        raise CLIError(str(e) if isinstance(e, ModelIdentityError) else f"cannot load model: {e}") from None
    return model


def _refuse_unrecorded(where: str, loaded: dict[str, LoadedSAE]) -> None:
    """No model recorded anywhere: say to pass --model, quoting the model an SAE's own files name
    (another library's cfg.json model_name, in that library's terms: a hint, never loaded unasked)."""
    named = sorted({str(n) for item in loaded.values() if (n := (item.sae.cfg.metadata or {}).get("model_name"))})
    from toyworld.model import MODEL_NAME as TOY_MODEL

    hub = [h for n in named if (h := official_model_name(n)) and h != n]
    local = [n for n in named if Path(n).expanduser().is_dir()]  # e.g. SAELens trained on a local checkpoint
    if TOY_MODEL in named:  # the shipped toy model's own name: no hub has it
        how = "the shipped toy model: --model toy"
    elif hub:
        how = f"TransformerLens's name for the HF model {' / '.join(hub)}: --model {hub[0]}"
    elif local:
        how = f"a local model directory: --model {local[0]} if it is the one"
    else:
        how = "pass that as --model if it is the HF hub name"
    hint = f"; its files name {' / '.join(map(repr, named))} ({how})" if named else ""
    raise CLIError(f"{where} does not record which model it was made with: pass --model ('toy', an HF hub name, "
                   f"or a local model directory){hint}")


def read_prompts(args) -> list[str]:
    """--prompt's prompts, then --prompts-file's (`read_prompt_file`)."""
    return list(args.prompt) + (read_prompt_file(args.prompts_file, "--prompts-file") if args.prompts_file else [])


def read_prompt_file(path: str, flag: str) -> list[str]:
    """The prompts of the file `flag` names (--prompts-file, --contrast, --positive / --negative): one per
    non-blank line, its indentation kept (a code line's indentation is part of its tokens), the
    whitespace at its end dropped (invisible in an editor, and a CRLF file's \r), UTF-8."""
    from saes.fileio import read_text_file

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{flag} {p}: no such file")
    try:
        text = read_text_file(p, flag)
    except ValueError as e:
        raise CLIError(str(e)) from None
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def open_store(path: str | None, saes: dict[str, Any], writable: bool = False):
    """(FeatureStore, StoreLink) for --store, checked against the single SAE of `saes`; (None, None)
    without."""
    if path is None:
        return None, None
    from steering import StoreLink

    store = _open_store_file(path, writable)
    try:
        store.check_sae(next(iter(saes.values())))
    except ValueError as e:
        store.close()
        raise CLIError(f"the store {path} was not built for this SAE: {e}") from None
    return store, StoreLink(store)


def open_stores(paths: list[str], saes: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """(the FeatureStores, the StoreLink of each SAE that has one, by SAE name) for --store given once
    per SAE: each store goes with the SAE it was built for (`FeatureStore.check_sae`: its weights and
    hook), so no flag pairs them. Refused: a store built for none of the SAEs, two for one SAE."""
    if len(saes) == 1 and len(paths) <= 1:
        store, link = open_store(paths[0] if paths else None, saes)
        return ([store] if store else []), ({next(iter(saes)): link} if link else {})
    from saes.fingerprint import sae_fingerprint
    from steering import StoreLink

    stores: list[Any] = []
    links: dict[str, Any] = {}
    paired: dict[str, str] = {}  # SAE name -> the store path it goes with
    fingerprints = {name: sae_fingerprint(sae) for name, sae in saes.items()}
    try:
        for path in paths:
            store = _open_store_file(path)
            stores.append(store)
            # the SAEs of its weights (each hashed once, not once per store), then check_sae's hook check
            refusals = {name: _refusal(store, saes[name], fp) for name, fp in fingerprints.items()
                        if fp == store.sae_fingerprint}
            names = [name for name, why in refusals.items() if why is None]
            if not names:
                raise CLIError(f"the store {path} was built for none of the SAEs given: "
                               f"{_why_none(store, saes, fingerprints, refusals)}; "
                               f"give the store built for each --sae (or build one with `saesteer features build`)")
            for name in names:
                if name in paired:
                    twice = Path(paired[name]).resolve() == Path(path).resolve()
                    raise CLIError(f"--store {path} is given twice" if twice else
                                   f"--store {paired[name]} and --store {path} were both built for SAE {name!r}; "
                                   f"give one store per SAE")
                paired[name], links[name] = path, StoreLink(store)
    except BaseException:
        for store in stores:
            store.close()
        raise
    return stores, links


def _open_store_file(path: str, writable: bool = False):
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"no feature store at {p}; build one with `saesteer features build`")
    from features import FeatureStore

    return FeatureStore.open(p, readonly=not writable)


def _refusal(store: Any, sae: Any, fingerprint: str) -> str | None:
    """Why `store` was not built for `sae` of `fingerprint` (`FeatureStore.check_sae`'s refusal), None when it was."""
    try:
        store.check_sae(sae, fingerprint)
    except ValueError as e:
        return str(e)
    return None


def _why_none(store: Any, saes: dict[str, Any], fingerprints: dict[str, str], refusals: dict[str, str]) -> str:
    """Both sides of a store no SAE pairs with: an SAE of its weights used at another hook, with
    check_sae's reason (`refusals`); an SAE of its weights in another dtype, with check_sae's reason
    (the dtype to load it in); else the store's SAE beside the SAEs given, by weights fingerprint
    (the folder it records may be one of theirs, retrained since)."""
    from saes.fingerprint import dtype_of_fingerprint

    if refusals:
        name, why = next(iter(refusals.items()))
        return f"SAE {name!r} has its weights, but {why}"
    for name, sae in saes.items():  # hashed again in other dtypes only here, on the way to a refusal
        if dtype_of_fingerprint(sae, store.sae_fingerprint) is not None:
            return f"SAE {name!r} has its weights in another dtype: {_refusal(store, sae, fingerprints[name])}"
    built = store.meta.get("sae") or {}
    given = ", ".join(f"{name!r} {fp[:12]}" for name, fp in fingerprints.items())
    return (f"its SAE ({built.get('path') or 'an in-memory SAE'} at {built.get('hook_name') or 'an unrecorded hook'}) "
            f"has weights fingerprint {store.sae_fingerprint[:12]}; the SAEs given: {given}")


def measurement_provenance(model: Any, sae: Any, store: str | None) -> dict[str, Any]:
    """What a steering measurement (a `sweep` JSON, a `steer-eval` scorecard) records of what it
    measured: the model's identity, the SAE's weights hash (`preset save --scorecard` refuses the
    scorecard of another SAE), the hook it steers and the --store (absolute path; None without)."""
    from saes.fingerprint import sae_fingerprint
    from saesteer.models import model_identity
    from steering.resolve import sae_hook_name

    return {"model": model_identity(model).to_json(), "sae_fingerprint": sae_fingerprint(sae),
            "hook": sae_hook_name(sae), "store": str(Path(store).resolve()) if store else None}


def typical_max_provider(link: Any):
    """The typical-max provider for `steer`: the store's (`open_store` checked it is the SAE's)."""
    return link.typical_max if link is not None else None


def print_error(e: BaseException, args: Any = None) -> int:
    """`error: ...` through the CLI's error boundary (config fields named as this command's flags)."""
    from saesteer.boundary import report

    return report(e, getattr(args, "_parser", None))
