"""`saesteer steer`: generate with SAE latents edited, side by side with the unsteered text."""

from __future__ import annotations

NAME = "steer"
ORDER = 70
HELP = "generate with SAE features edited (add / clamp / scale / ablate), beside the unsteered text"
DESCRIPTION = """\
Generate continuations of prompts twice with the same seed, once unsteered and once with the
edits, and print them side by side. An edit is FEATURE:OP[=VALUE[x]][@POSITIONS]:

  123:clamp=8          set latent 123 to 8 at every token
  123:clamp=2x         ... to 2x its typical max activation (from --store)
  123:add=-3@generated add -3 to the latent on generated tokens only
  123:scale=0.5@prompt halve it on the prompt;   123:ablate@last   zero it on the last prompt token
  res/123:add=4        latent 123 of the SAE named res (--sae res=DIR)

Edits go through the SAE and keep its reconstruction error, so only the chosen latents change.
Positions: all, prompt, generated, last, or token indices (0 = first token, -1 = last prompt token);
an edit whose indices lie beyond every prompt + generation is refused (it would change nothing).
The model is the one the SAEs (saesteer.json) or the store record; --model must be that model
(--allow-model-mismatch runs another).

examples:
  saesteer steer --sae saes/toy-topk --feature 123:clamp=8 --prompt "anna was a sailor ."
  saesteer steer --sae saes/toy-topk --store toy.db --feature 123:add=2x --prompt "" --seed 3
  saesteer steer --sae saes/toy-topk --store toy.db --search ocean
  saesteer steer --sae saes/toy-topk --contrast ocean.txt other.txt"""


def add_arguments(parser) -> None:
    from saesteer.commands._steering import add_common_arguments
    from saesteer.configargs import add_dataclass_arguments
    from steering.config import GenerationConfig
    from steering.spec import SteerLimits

    add_common_arguments(parser, prompts_help="a prompt (repeat for several; \"\" for unconditional generation)")
    e = parser.add_argument_group("edits")
    e.add_argument("--feature", "-f", action="append", default=[], metavar="EDIT",
                   help="FEATURE:OP[=VALUE[x]][@POSITIONS], repeatable (see above)")
    e.add_argument("--positions", default=None, help="positions for edits that name none (default: all)")
    f = parser.add_argument_group("finding features (instead of generating)")
    f.add_argument("--search", default=None, metavar="QUERY", help="list features whose label matches QUERY (needs --store)")
    f.add_argument("--contrast", nargs=2, default=None, metavar=("POSITIVE", "NEGATIVE"),
                   help="list features most active on the prompts of file POSITIVE relative to file NEGATIVE")
    f.add_argument("--top", type=int, default=10, help="how many features to list (default: 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_dataclass_arguments(parser, GenerationConfig, title="generation")
    add_dataclass_arguments(parser, SteerLimits, title="limits")


def run(args) -> int:
    from saesteer.commands._steering import CLIError, print_error

    from steering.spec import SteeringError

    try:
        return _run(args)
    except (CLIError, SteeringError) as e:
        return print_error(e, args)


def _lines(path: str) -> list[str]:
    from pathlib import Path

    from saesteer.commands._steering import CLIError

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"file not found: {p}")
    return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def _run(args, model=None) -> int:
    import json

    from saesteer.commands._steering import (
        CLIError, load_model, load_saes, model_device, open_store, read_prompts, typical_max_provider,
    )
    from saesteer.configargs import dataclass_from_args
    from steering.config import GenerationConfig
    from steering.spec import SteerLimits, parse_edit

    gen_cfg = dataclass_from_args(GenerationConfig, args)
    limits = dataclass_from_args(SteerLimits, args)
    edits = [parse_edit(t, args.positions) for t in args.feature]
    finding = args.search is not None or args.contrast is not None
    prompts = read_prompts(args)
    if not finding:
        if not edits:
            raise CLIError("give at least one --feature EDIT (e.g. --feature 123:clamp=8), or --search / --contrast")
        if not prompts:
            raise CLIError('give at least one --prompt (use --prompt "" for unconditional generation)')
    if args.search is not None and args.store is None:
        raise CLIError("--search looks labels up in a feature store; give --store FILE")

    loaded = load_saes(args.sae, hook=args.hook, model=args.model)
    saes = {name: item.sae for name, item in loaded.items()}
    store, link = open_store(args.store, saes)
    try:
        if args.search is not None:
            return _print_search(link, args.search, args.top, args.json)
        if model is None:
            model = load_model(args, loaded, store)
        dev = model_device(model)
        saes = {k: v.to(dev) for k, v in saes.items()}
        if args.contrast is not None:
            return _print_contrast(model, saes, _lines(args.contrast[0]), _lines(args.contrast[1]), args.top, args.json, link,
                                   args.allow_model_mismatch)
        from steering.comparison import compare

        cmp = compare(model, saes if len(saes) > 1 else next(iter(saes.values())), edits, prompts, gen_cfg,
                      typical_max=typical_max_provider(link, saes), limits=limits,
                      allow_model_mismatch=args.allow_model_mismatch)
    finally:
        if store is not None:
            store.close()
    if args.json:
        print(json.dumps({"edits": cmp.edits, "seed": gen_cfg.seed, "results": [
            {"prompt": p, "unsteered": u, "steered": s} for p, u, s in zip(cmp.prompts, cmp.unsteered, cmp.steered)
        ]}, indent=2))
        return 0
    _print_table(cmp, gen_cfg)
    return 0


def _print_table(cmp, gen_cfg) -> None:
    from rich.console import Console
    from rich.table import Table

    from saesteer.terminal import plain

    table = Table(title=plain(f"steering: {cmp.edits}"), caption=f"seed {gen_cfg.seed}, {gen_cfg.max_new_tokens} new tokens"
                  + ("" if gen_cfg.do_sample else ", greedy"), show_lines=True)
    table.add_column("prompt", style="bold", overflow="fold", ratio=1)
    table.add_column("unsteered", overflow="fold", ratio=2)
    table.add_column("steered", style="green", overflow="fold", ratio=2)
    for p, u, s in zip(cmp.prompts, cmp.unsteered, cmp.steered):
        table.add_row(plain(p or "<bos>"), plain(u), plain(s))
    Console().print(table)


def _print_search(link, query: str, top: int, as_json: bool) -> int:
    import json

    from steering.search import label_search

    hits = label_search(link.search, query, limit=top)
    rows = [{"feature": h.feature, "label": h.label, "score": h.score, "typical_max": link.typical_max(h.feature)}
            for h in hits]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    from saesteer.terminal import plain

    table = Table(title=plain(f"features matching {query!r}"))
    for col in ("feature", "label", "score", "typical max"):
        table.add_column(col)
    for r in rows:
        tm = r["typical_max"]
        table.add_row(str(r["feature"]), plain(r["label"]), f"{r['score']:.3g}", "" if tm is None else f"{tm:.3g}")
    Console().print(table if rows else plain(f"no feature label matches {query!r}"))
    return 0


def _print_contrast(model, saes, positive, negative, top: int, as_json: bool, link, allow_model_mismatch: bool = False) -> int:
    import json

    from saesteer.commands._steering import CLIError
    from steering.search import contrast_features

    if len(saes) != 1:
        raise CLIError("--contrast ranks the latents of one SAE; give a single --sae")
    if not positive or not negative:
        raise CLIError("--contrast needs non-empty POSITIVE and NEGATIVE prompt files")
    labels = (lambda f: None) if link is None else (lambda f: link.store.labels([f]).get(f))
    found = contrast_features(model, next(iter(saes.values())), positive, negative, top=top, labels=labels,
                              allow_model_mismatch=allow_model_mismatch)
    rows = [c.__dict__ for c in found]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    from saesteer.terminal import plain

    table = Table(title="features by contrast (mean activation on positive minus negative prompts)")
    for col in ("feature", "difference", "mean +", "mean -", "fires +", "fires -", "label"):
        table.add_column(col)
    for c in found:
        table.add_row(str(c.feature), f"{c.score:.3g}", f"{c.mean_positive:.3g}", f"{c.mean_negative:.3g}",
                      f"{c.rate_positive:.1%}", f"{c.rate_negative:.1%}", plain(c.label))
    Console().print(table)
    return 0
