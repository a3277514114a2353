"""`saesteer steer`: generate with SAE latents edited, side by side with the unsteered text."""

from __future__ import annotations

NAME = "steer"
ORDER = 70
HELP = "generate with SAE features edited (add / clamp / scale / ablate), beside the unsteered text"
DESCRIPTION = """\
Generate continuations of prompts twice with the same seed, once unsteered and once with the
edits, and print them side by side. An edit is LATENT:OP[=VALUE[x]][@POSITIONS][?TRIGGER>THRESHOLD[x]]:

  123:clamp=8          set latent 123 to 8 at every token
  123:clamp=2x         ... to 2x its typical max activation (from --store)
  123:add=-3@generated add -3 to the latent on generated tokens only
  123:scale=0.5@prompt halve it on the prompt;   123:ablate@last   zero it on the last prompt token
  res/123:add=4        latent 123 of the SAE named res (--sae res=DIR): with several --sae, each edit
                       names its SAE so, as an API request names a served store ("ID/123:add=4")
  123:add=4?77>1.5     add 4 only where latent 77 is above 1.5 (a conditional edit)
  gpt2-small/6-res-jb/123:clamp=8
                       latent 123 as Neuronpedia names it (its id, or its page address), of the --sae
                       given as gpt2-small/6-res-jb (or its address, or sae_lens:RELEASE/SAE_ID); without
                       --sae, that SAE. A trigger may name its latent so too (?gpt2-small/6-res-jb/77>1.5)

Edits go through the SAE and keep its reconstruction error, so only the chosen latents change.
Positions: all, prompt, generated, last, or token indices (0 = first token, -1 = last prompt token);
an edit whose indices lie beyond every prompt + generation is refused (it would change nothing).
--preset NAME applies a preset saved in --store (`saesteer preset`), or a preset JSON file; it is
refused for another SAE or model. --search / --contrast list candidate latents; with --generate
they also steer with the best --candidates of them at --strength (the store's recommended
strength when it has one).
Several SAEs (one --sae each, at one hook or several) steer together in one generation: each
edit lands at its SAE's hook; SAEs at one hook each read the activation the model produced and
their changes add up. Give each SAE's store with its own --store (each goes with the SAE it was
built for) for 'x' strengths; --search, --contrast and --preset take a single --sae.
The model is the one the SAEs (saesteer.json) or the stores record; --model must be that model
(--allow-model-mismatch runs another).

examples:
  saesteer steer --sae saes/toy-topk --latent 123:clamp=8 --prompt "anna was a sailor ."
  saesteer steer --sae saes/toy-topk --store toy.db --latent 123:add=2x --prompt "" --seed 3
  saesteer steer --sae saes/toy-topk --store toy.db --preset seaward --prompt ""
  saesteer steer --sae saes/toy-topk --store toy.db --search ocean
  saesteer steer --sae saes/toy-topk --store toy.db --search ocean --generate --prompt ""
  saesteer steer --sae saes/toy-topk --contrast ocean.txt other.txt --generate --candidates 2 --prompt ""
  saesteer steer --sae l0=run0/saes/sae --sae l1=run1/saes/sae --store l0.db --store l1.db \\
      --latent l0/5:add=2x --latent l1/9:clamp=3x --prompt "def parse(" --seed 1"""


def add_arguments(parser) -> None:
    from saesteer.commands._steering import add_common_arguments, add_latent_argument
    from saesteer.configargs import add_dataclass_arguments
    from steering.config import GenerationConfig
    from steering.spec import SteerLimits

    add_common_arguments(parser, prompts_help="a prompt (repeat for several; \"\" for unconditional generation)",
                         several_stores=True)
    e = parser.add_argument_group("edits")
    add_latent_argument(e, metavar="EDIT", help="LATENT:OP[=VALUE[x]][@POSITIONS], repeatable (see above)")
    e.add_argument("--positions", default=None, help="positions for edits that name none (default: all)")
    e.add_argument("--preset", default=None, metavar="NAME|FILE",
                   help="a preset saved in --store, or a preset JSON file (with any --latent edits)")
    f = parser.add_argument_group("finding features")
    f.add_argument("--search", default=None, metavar="QUERY", help="list features whose label matches QUERY (needs --store): by meaning, ranked "
                        "with output scores, when the store has label embeddings of a model installed here; "
                        "else full text")
    f.add_argument("--contrast", nargs=2, default=None, metavar=("POSITIVE", "NEGATIVE"),
                   help="list features most active on the prompts of file POSITIVE relative to file NEGATIVE")
    f.add_argument("--top", type=int, default=10, help="how many features to list (default: 10)")
    f.add_argument("--generate", action="store_true",
                   help="also steer the prompts with the best --candidates features found")
    f.add_argument("--candidates", type=int, default=1, help="with --generate: how many of the best features (default: 1)")
    f.add_argument("--strength", type=float, default=2.0,
                   help="with --generate: add this many typical max activations (default: 2; the store's recommended "
                        "strength wins when it has one; without typical maxima: multiples of the feature's mean "
                        "activation on the POSITIVE prompts)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (over the tokens generated, --contrast's prompts)")
    add_dataclass_arguments(parser, GenerationConfig, title="generation")
    add_dataclass_arguments(parser, SteerLimits, title="limits")


def run(args) -> int:
    from saesteer.commands._steering import CLIError, print_error

    from steering.spec import SteeringError

    try:
        return _run(args)
    except (CLIError, SteeringError) as e:
        return print_error(e, args)


def _run(args, model=None) -> int:
    from saesteer.commands._steering import (latent_owners, load_model, load_saes, open_stores, read_prompts,
                                             sae_from_latents, store_hook, typical_max_provider)
    from saes.hookpoints import model_device
    from saesteer.configargs import dataclass_from_args
    from steering.config import GenerationConfig
    from steering.generation import with_sae_bos
    from steering.resolve import check_edit_latents, check_edit_typical_maxima
    from steering.spec import SteerLimits, parse_edit

    gen_cfg = dataclass_from_args(GenerationConfig, args)
    limits = dataclass_from_args(SteerLimits, args)
    sae_from_latents(args, args.latent)
    owners = latent_owners(args.sae, args.store)
    edits: list = [parse_edit(owners.edit(t), args.positions) for t in args.latent]
    finding = args.search is not None or args.contrast is not None
    prompts = read_prompts(args)
    _check_flags(args, edits, prompts, finding=finding)
    contrast = _contrast_sets(args.contrast) if args.contrast is not None else None

    loaded = load_saes(args.sae, hook=args.hook, model=args.model, store_hook=store_hook(args))
    saes = {name: item.sae for name, item in loaded.items()}
    check_edit_latents(saes, edits)  # the SAEs' widths refuse a latent out of range before the model loads
    stores, links = open_stores(args.store, saes)
    try:
        _check_x_strengths(edits, saes, links)
        link = next(iter(links.values()), None) if len(saes) == 1 else None  # what --search / --preset read
        # several SAEs: each one's typical maxima from its own store (`steering.resolve.typical_max_for`)
        typical_max = {name: lk.typical_max for name, lk in links.items()} if len(saes) > 1 else typical_max_provider(link)
        check_edit_typical_maxima(saes, edits, typical_max)  # 'x' of a latent the store has no maximum for
        if args.search is not None and not args.generate:
            return _print_search(link, args.search, args.top, args.json)
        preset = _read_preset(args, link, saes) if args.preset is not None else None  # before the model loads
        found = searched = None
        if args.search is not None:  # the store alone answers it: a search that finds nothing is said before the model
            found = _print_search(link, args.search, args.top, args.json, rows_only=True)
            searched = _found_edits(found, link, args)
        if model is None:
            model = load_model(args, loaded, stores)
        gen_cfg = with_sae_bos(gen_cfg, loaded)  # the BOS the SAEs were trained with (saes.bos), unless --prepend-bos
        dev = model_device(model)
        saes = {k: v.to(dev) for k, v in saes.items()}
        if preset is not None:
            edits += _preset_edits(args, preset, model, saes)
        if searched is not None:
            edits += searched
        elif args.contrast is not None:
            found = _print_contrast(model, saes, *contrast, args.top, args.json,
                                    link, args.allow_model_mismatch, rows_only=args.generate,
                                    progress=not args.no_progress)
            if not args.generate:
                return found
            edits += _found_edits(found, link, args)
        from steering.comparison import compare

        cmp = compare(model, saes if len(saes) > 1 else next(iter(saes.values())), edits, prompts, gen_cfg,
                      typical_max=typical_max, limits=limits,
                      allow_model_mismatch=args.allow_model_mismatch, progress=not args.no_progress)
    finally:
        for store in stores:
            store.close()
    _print_comparison(args, cmp, gen_cfg, found)
    return 0


def _check_flags(args, edits: list, prompts: list, *, finding: bool) -> None:
    """Refuse flag combinations that cannot steer: no edits and nothing to find, no prompts, and the like."""
    from saesteer.commands._steering import CLIError

    if args.generate and not finding:
        raise CLIError("--generate steers with the features --search or --contrast finds; give one of them")
    if not finding and not edits and args.preset is None:
        raise CLIError("give at least one --latent EDIT (e.g. --latent 123:clamp=8), a --preset, or --search / --contrast")
    if (not finding or args.generate) and not prompts:
        raise CLIError('give at least one --prompt (use --prompt "" for unconditional generation)')
    if args.search is not None and not args.store:
        raise CLIError("--search looks labels up in a feature store; give --store FILE")
    if args.candidates < 1:
        raise CLIError(f"--candidates must be positive, got {args.candidates}")
    if args.preset is not None and not args.store and _preset_file(args.preset) is None:
        raise CLIError(f"--preset {args.preset!r} names a preset saved in a feature store; give --store FILE (or a .json file)")
    if args.preset is not None and len(args.sae) > 1:  # refused before the model loads
        raise CLIError("--preset belongs to one SAE; give a single --sae (to steer with several, name each edit's "
                       "SAE: NAME/LATENT)")
    if finding and len(args.sae) > 1:  # the latents found are of one SAE, read with its one store
        raise CLIError(f"--{'search' if args.search is not None else 'contrast'} finds the latents of one SAE: give a "
                       f"single --sae (and its --store); to steer with several, name each edit's SAE (NAME/LATENT), "
                       f"or serve a store per SAE (`saesteer serve --store A.db --store B.db`)")
    if len(args.store) > max(len(args.sae), 1):
        raise CLIError(f"{len(args.store)} --store for {len(args.sae)} --sae: give at most one store per SAE "
                       f"(each goes with the SAE it was built for)")
    if not args.store:
        _check_x_strengths(edits, {}, {})


def _check_x_strengths(edits: list, saes: dict, links: dict) -> None:
    """Refuse an 'x' strength of an SAE without a store: 'x' counts in typical maxima, which only the
    SAE's feature store knows (`links`: the StoreLink of each SAE that has one)."""
    from saesteer.commands._steering import CLIError

    for e in edits:
        x_value = getattr(e, "unit", None) == "max_act" and e.op in ("add", "clamp")
        x_trigger = getattr(e, "when", None) is not None and e.when.unit == "max_act"
        name = getattr(e, "sae", None) or (next(iter(saes)) if len(saes) == 1 else None)
        if (x_value or x_trigger) and name not in links:
            whose = f" of SAE {name!r}" if len(saes) > 1 else ""
            raise CLIError(f"--latent {e.describe()}: 'x' strengths are multiples of the latent's typical max "
                           f"activation, which the SAE's feature store holds; give --store FILE{whose}, or raw "
                           f"values (without 'x')")


def _print_comparison(args, cmp, gen_cfg, found) -> None:
    """Unsteered vs steered generations (and the features found) as JSON with --json, else as tables."""
    import json

    if args.json:
        out = {"edits": cmp.edits, "seed": gen_cfg.seed, "results": [
            {"prompt": p, "unsteered": u, "steered": s} for p, u, s in zip(cmp.prompts, cmp.unsteered, cmp.steered)
        ]}
        if found is not None:
            out["candidates"] = found
        print(json.dumps(out, indent=2))
        return
    if found is not None:
        _candidates_table(found, "features found" + (f" for {args.search!r}" if args.search else " by contrast"))
    _print_table(cmp, gen_cfg)


def _read_preset(args, link, saes):
    """--preset (a JSON file, or a name in --store), checked against the SAE's weights and hook: all
    that can be known before the model loads (`_preset_edits` checks the model)."""
    from saesteer.commands._steering import CLIError
    from steering.presets import Preset

    p = _preset_file(args.preset)
    if p is not None:
        try:
            from saes.fileio import read_json

            preset = Preset.from_json(read_json(p, "preset file"))
        except ValueError as e:
            raise CLIError(f"--preset {p}: {e}") from None
    else:
        preset = link.preset(args.preset)  # a store: `_check_flags`
    _check_preset(args, preset, None, saes)
    return preset


def _preset_file(preset: str):
    """--preset as a JSON file's path (refused when it names none), or None: a name saved in a store."""
    from pathlib import Path

    from saesteer.commands._steering import CLIError

    p = Path(preset)
    if p.suffix != ".json" and not p.is_file():
        return None
    if not p.is_file():
        raise CLIError(f"--preset {p}: no such file")
    return p


def _check_preset(args, preset, model, saes, fingerprint: str | None = None) -> None:
    """`Preset.check` against the single SAE (and `model`; None: not loaded yet), refusals as CLI
    errors; `fingerprint`: the SAE's weights hash, where already checked."""
    from saesteer.commands._steering import CLIError
    from saesteer.models import OVERRIDE_FLAG

    name, sae = next(iter(saes.items()))
    try:
        preset.check(model, sae, sae_name=name, allow_model_mismatch=args.allow_model_mismatch,
                     fingerprint=fingerprint, model_override=OVERRIDE_FLAG)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _preset_edits(args, preset, model, saes) -> list:
    """The --preset's edits (`_read_preset`), after checking it belongs to this model."""
    _check_preset(args, preset, model, saes, fingerprint=preset.sae_fingerprint)  # the SAE's: `_read_preset`
    if preset.stops:
        print(f"note: preset {preset.name!r} has stop triggers ({', '.join(preset.stops)}); they act in the API "
              f"(saesteer api), not here", file=__import__("sys").stderr)
    return preset.feature_edits()


def _found_edits(found: list[dict], link, args) -> list:
    """Edits that add the best --candidates found features at --strength (or their recommended one)."""
    from saesteer.commands._steering import CLIError
    from steering.spec import FeatureEdit

    if not found:
        raise CLIError("no latent was found to steer with")
    out = []
    for row in found[: args.candidates]:
        f = int(row["latent"])
        rec = link.recommended(f) if link is not None else None
        tmax = link.typical_max(f) if link is not None else None
        if rec is not None and tmax:
            out.append(FeatureEdit(f, "add", rec[0], unit="max_act", positions=args.positions or "all"))
        elif tmax:
            out.append(FeatureEdit(f, "add", args.strength, unit="max_act", positions=args.positions or "all"))
        elif row.get("mean_positive"):
            out.append(FeatureEdit(f, "add", args.strength * float(row["mean_positive"]), positions=args.positions or "all"))
        else:
            raise CLIError(f"latent {f} has no typical max activation (build the store's statistics) to scale --strength by")
    return out


def _seed_caption(gen_cfg, n_prompts: int) -> str:
    """The seed as the table states it: sampled together, the prompts draw from that one stream
    (TransformerLens's generate), so a prompt's text changes with the prompts beside it (unlike
    `saesteer api`, which seeds each row); steered and unsteered draw alike, so they compare."""
    if gen_cfg.do_sample and gen_cfg.seed is not None and n_prompts > 1:
        return f"seed {gen_cfg.seed}, one stream for the {n_prompts} prompts together: a prompt's text depends on the others"
    return f"seed {gen_cfg.seed}"


def _print_table(cmp, gen_cfg) -> None:
    from rich.console import Console
    from rich.table import Table

    from saesteer.terminal import plain

    table = Table(title=plain(f"steering: {cmp.edits}"), caption=_seed_caption(gen_cfg, len(cmp.prompts))
                  + f", {gen_cfg.max_new_tokens} new tokens" + ("" if gen_cfg.do_sample else ", greedy"), show_lines=True)
    table.add_column("prompt", style="bold", overflow="fold", ratio=1)
    table.add_column("unsteered", overflow="fold", ratio=2)
    table.add_column("steered", style="green", overflow="fold", ratio=2)
    for p, u, s in zip(cmp.prompts, cmp.unsteered, cmp.steered):
        table.add_row(plain(p or "<bos>"), plain(u), plain(s))
    Console().print(table)


def _print_search(link, query: str, top: int, as_json: bool, rows_only: bool = False):
    import json

    from steering.search import label_search

    from autointerp.semantic import search_labels

    # by meaning, ranked with output scores, when the store has label vectors of a real model; else full text
    hits = label_search(lambda q, n: search_labels(link.store, q, n), query, limit=top)
    rows = [{"latent": h.latent, "label": h.label, "score": h.score, "typical_max": link.typical_max(h.latent)}
            for h in hits]
    if rows_only:
        return rows
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no feature label matches {query!r}")
        return 0
    _candidates_table(rows, f"features matching {query!r}")
    return 0


def _candidates_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from saesteer.terminal import plain

    table = Table(title=plain(title))  # a query is text, not markup
    cols = [c for c in ("latent", "label", "score", "typical_max", "mean_positive", "mean_negative") if any(c in r for r in rows)]
    for col in cols:
        table.add_column(col.replace("_", " "))
    for r in rows:
        table.add_row(*[plain("" if r.get(c) is None else (f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c])))
                        for c in cols])
    Console().print(table)


def _contrast_sets(files: list[str]) -> tuple[list[str], list[str]]:
    """The prompts of --contrast POSITIVE NEGATIVE, both refused when missing or empty."""
    from saesteer.commands._steering import CLIError, read_prompt_file

    positive, negative = (read_prompt_file(f, "--contrast") for f in files)
    if not positive or not negative:
        raise CLIError("--contrast needs non-empty POSITIVE and NEGATIVE prompt files")
    return positive, negative


def _print_contrast(model, saes, positive, negative, top: int, as_json: bool, link, allow_model_mismatch: bool = False,
                    rows_only: bool = False, progress: bool = False):
    import json

    from steering.search import contrast_features

    labels = (lambda f: None) if link is None else (lambda f: link.store.labels([f]).get(f))
    found = contrast_features(model, next(iter(saes.values())), positive, negative, top=top, labels=labels,
                              allow_model_mismatch=allow_model_mismatch, progress=progress)
    rows = [dict(c.__dict__) for c in found]
    if rows_only:
        return rows
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    from saesteer.terminal import plain

    table = Table(title="features by contrast (mean activation on positive minus negative prompts)")
    for col in ("latent", "difference", "mean +", "mean -", "fires +", "fires -", "label"):
        table.add_column(col)
    for c in found:
        table.add_row(str(c.latent), f"{c.score:.3g}", f"{c.mean_positive:.3g}", f"{c.mean_negative:.3g}",
                      f"{c.rate_positive:.1%}", f"{c.rate_negative:.1%}", plain(c.label))
    Console().print(table)
    return 0
