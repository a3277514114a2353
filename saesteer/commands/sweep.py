"""`saesteer sweep`: steering dose-response curves and a recommended strength per latent."""

from __future__ import annotations

import sys

from saesteer.stopsignals import judge_answers_kept

NAME = "sweep"
ORDER = 71
HELP = "steering dose-response: concept and fluency against strength, and a recommended strength"
JUDGE_CACHE = "<store>.judge-cache.sqlite, without --store <out>/judge-cache.sqlite"  # _judge_cache_path
ON_STOP = judge_answers_kept(JUDGE_CACHE)
DESCRIPTION = """\
Generate at a range of strengths for one or more latents, score each generation and write a
dose-response plot (plotly HTML) and the numbers (JSON) per latent; with --store and
--save-strength, the recommended strength goes into the feature store (as a multiple of the
latent's typical max activation).

Concept scoring, one of:
  --topic T      toy world, offline: concept = share of content words of topic T; also the
                 ground truth "grammatical" = share of sentences the toy validator accepts
                 (alone, or with --toy-grammar document also the document rules: tense,
                 introduced names, pronouns), usable as a condition with --min-grammar
  --concept C    an LLM judge rates concept and instruction 0-2 (AxBench-style); configure it
                 with the --judge-* flags (as in `saesteer label`)
Fluency is the same for both (and for the web app's sweeps): how much more surprising the
text is to the unsteered model than the model itself expects, times penalties for repetition
and for punctuation runs; unsteered text scores about 1, degenerate text about 0.

Strength 0 is never recommended: it is the unsteered baseline of an add sweep; a clamp sweep (0 ablates) is
judged against the unsteered text, generated beside it (the "unsteered" row). Among the steered strengths
that meet every condition (concept above the unsteered one's; fluency >= --min-fluency; concept
>= --target-concept; grammatical >= --min-grammar), the recommendation is the best mean harmonic mean of the scores, or with
--target-concept the weakest (--rule weakest), the one with the largest worst-case margin to the
targets (--rule margin), or that margin counted in standard errors over the samples (--rule z:
safer when one score is much noisier than the other, as topic share is). When none meets them
the sweep says "no strength works"; --save-strength then stores that (no strength) in --store.

examples:
  saesteer sweep --sae saes/toy-topk --store toy.db --latent 123 --topic ocean --out sweeps/
  saesteer sweep --sae saes/toy-topk --store toy.db --latent 123 --topic ocean \\
      --strengths 0,0.5,0.75,1,1.25 --target-concept 0.5 --min-fluency 0.8 --min-grammar 0.8 --rule z \\
      --save-strength
  saesteer sweep --model gpt2 --sae saes/gpt2-l6 --store gpt2.db --latent 4117 \\
      --concept "the ocean" --judge-model gpt-4o-mini --prompt "Tell me a story." --samples 8"""


def add_arguments(parser) -> None:
    from autointerp.config import JudgeConfig
    from saesteer.commands._steering import add_common_arguments, add_latent_argument
    from saesteer.configargs import add_dataclass_arguments
    from steering.config import GenerationConfig, SweepConfig
    from steering.spec import SteerLimits

    add_common_arguments(parser, prompts_help="a prompt (repeat for several; default: unconditional, \"\")")
    s = parser.add_argument_group("what to sweep")
    add_latent_argument(s, required=True, help="latent to sweep: its index, or as Neuronpedia names it (gpt2-small/6-res-jb/17 or "
                                               "its address: of that --sae, which may then be left out); repeatable; "
                                               "with several SAEs use --sae-name")
    s.add_argument("--sae-name", default=None, help="which --sae the latents belong to (default: the only one)")
    s.add_argument("--samples", type=int, default=8, help="generations per prompt at each strength (default: 8)")
    sc = parser.add_argument_group("scoring")
    sc.add_argument("--topic", default=None, help="toy-world topic to score offline (ocean, forest, city, ...)")
    sc.add_argument("--toy-grammar", default="sentence", choices=["sentence", "document"],
                    help="toy world: judge each sentence alone, or with the document rules (tense, names, pronouns)")
    sc.add_argument("--concept", default=None, help=f"concept for the LLM judge (e.g. 'the ocean'); its answers are "
                    f"kept for re-runs ({JUDGE_CACHE})")
    o = parser.add_argument_group("output")
    o.add_argument("--out", default="sweeps", help="directory for sweep_<latent>.html / .json (default: sweeps)")
    o.add_argument("--save-strength", action="store_true",
                   help="store the recommended strength in --store (or that no strength works)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataclass_arguments(parser, SweepConfig, title="sweep")
    add_dataclass_arguments(parser, GenerationConfig, title="generation")
    add_dataclass_arguments(parser, SteerLimits, title="limits")
    add_dataclass_arguments(parser, JudgeConfig, prefix="judge_", title="judge (with --concept)", helps={
        "cache_path": "response cache file (default: <store>.judge-cache.sqlite beside --store, without --store "
                      "<out>/judge-cache.sqlite)"})


def run(args) -> int:
    from saesteer.commands._steering import CLIError, print_error
    from saesteer.toyscore import ToyScorerError

    from steering.spec import SteeringError

    try:
        return _run(args)
    except (CLIError, SteeringError, ToyScorerError) as e:
        return print_error(e, args)


def _judge_cache_path(args):
    """Where the judge's answers are kept, so that a re-run (after a stop, a crash) asks none of them
    again: beside --store, else beside --out (sweep: in that folder); None: --out not given either."""
    from pathlib import Path

    from autointerp.cache import cache_beside

    if args.store:
        return cache_beside(args.store)
    if not getattr(args, "out", None):
        return None
    out = Path(args.out)
    return out / "judge-cache.sqlite" if args.command == "sweep" else cache_beside(out)


def _judge_config(args):
    """The --concept judge's config (None for --topic), after the checks of the scoring flags that
    make nothing: one of --topic (a known toy-world topic) and --concept, and a judge that can rate
    (its settings and a transformers judge's folder, `autointerp.config.check_judge`)."""
    from autointerp.config import JudgeConfig, check_judge
    from saesteer.commands._steering import CLIError
    from saesteer.configargs import dataclass_from_args
    from saesteer.toyscore import toy_scorer

    if (args.topic is None) == (args.concept is None):
        raise CLIError("choose how to score: --topic T (toy world, offline) or --concept C (LLM judge)")
    if args.topic is not None:
        toy_scorer(args.topic, args.toy_grammar)  # an unknown topic is refused here
        return None
    try:
        judge_cfg = dataclass_from_args(JudgeConfig, args, prefix="judge_")
        backend = check_judge(judge_cfg)[0]
    except ValueError as e:
        raise CLIError(str(e)) from None
    if backend == "offline":
        raise CLIError("--concept needs an LLM judge: give --judge-model (and --judge-base-url for a local server)")
    return judge_cfg


def _check_scoring(args):
    """The scoring flags, checked before anything loads (`_judge_config`: the judge's settings and
    credentials), and for a judge its cache file, if one is there, is a judge cache (not, e.g., the
    store). Returns the judge's config (None for --topic), which `_scorer` makes the judge of once the
    model has loaded."""
    from autointerp.cache import check_cache_file
    from saesteer.commands._steering import CLIError

    judge_cfg = _judge_config(args)
    if judge_cfg is None:
        return None
    try:
        cache_path = judge_cfg.cache_path or _judge_cache_path(args)
        if judge_cfg.use_cache and cache_path is not None:
            check_cache_file(cache_path)  # a file of another kind given as the cache (e.g. the store)
    except ValueError as e:
        raise CLIError(str(e)) from None
    return judge_cfg


def _scorer(args, judge_cfg):
    """(the scorer, its judge or None) of the judge config `_check_scoring` returned, made once the model
    has loaded: a transformers judge loads its own model, and the judge's cache file is made here."""
    from autointerp.config import make_judge
    from saesteer.commands._steering import CLIError
    from saesteer.toyscore import toy_scorer
    from steering.evaluate import JudgeScorer

    if judge_cfg is None:
        return toy_scorer(args.topic, args.toy_grammar), None
    try:
        judge = make_judge(judge_cfg, cache_path=_judge_cache_path(args))
    except ValueError as e:
        raise CLIError(str(e)) from None
    return JudgeScorer(judge, args.concept), judge


def _run(args, model=None) -> int:
    from saesteer.commands._steering import (store_hook, load_model, load_saes, measurement_provenance, open_store,
                                             typical_max_provider)
    from saes.hookpoints import model_device
    from steering.generation import check_prompts_fit, with_sae_bos
    from steering.resolve import check_latent_index

    # everything the flags and files can refuse is refused before the model (and a judge) loads
    sweep_cfg, gen_cfg, limits, prompts, judge_cfg = _prepare(args)
    named = _latents(args)
    loaded = load_saes(args.sae, hook=args.hook, model=args.model, store_hook=store_hook(args))
    saes = {sae_name: item.sae for sae_name, item in loaded.items()}
    name = _sae_name(args, saes, named)
    for latent in args.latent:
        check_latent_index(latent, saes[name], name)
    store, link = open_store(args.store, {name: saes[name]}, writable=args.save_strength)
    judge = None
    try:
        typical = typical_max_provider(link)
        if sweep_cfg.unit == "max_act":
            _check_typical(args, typical)
        if model is None:
            model = load_model(args, loaded, store)
        gen_cfg = with_sae_bos(gen_cfg, {name: loaded[name]})  # the SAE's BOS (saes.bos), unless --prepend-bos
        check_prompts_fit(model, prompts, gen_cfg)  # each prompt once, before --samples repeats it
        scorer, judge = _scorer(args, judge_cfg)
        sae = saes[name].to(model_device(model))
        unsteered: dict = {}  # the same prompts and settings for every latent: the unsteered text is made once
        provenance = measurement_provenance(model, sae, args.store)
        samples = [p for p in prompts for _ in range(args.samples)]
        for latent in args.latent:
            _sweep_feature(args, latent, model, sae, name, samples, scorer, sweep_cfg, gen_config=gen_cfg,
                           typical_max=typical, limits=limits, link=link, unsteered=unsteered, provenance=provenance)
    finally:
        _close(store, judge)
    return 0


def _prepare(args):
    """(sweep, generation and limit configs, the prompts, the judge's config or None), after the checks
    of the flags alone (the scoring's too: `_check_scoring`)."""
    from saesteer.commands._out import check_out_folder
    from saesteer.commands._steering import CLIError, read_prompts
    from saesteer.configargs import dataclass_from_args
    from steering.config import GenerationConfig, SweepConfig
    from steering.spec import SteerLimits

    sweep_cfg = dataclass_from_args(SweepConfig, args)
    gen_cfg = dataclass_from_args(GenerationConfig, args)
    limits = dataclass_from_args(SteerLimits, args)
    if args.samples < 1:
        raise CLIError(f"--samples must be positive, got {args.samples}")
    if args.save_strength and args.store is None:
        raise CLIError("--save-strength writes into a feature store; give --store FILE")
    try:  # found when writing, after every generation
        check_out_folder(args.out, "the sweep writes sweep_<sae>_<latent>.html and .json into a folder")
    except ValueError as e:
        raise CLIError(str(e)) from None
    prompts = read_prompts(args) or [""]
    if args.samples > 1 and not gen_cfg.do_sample:
        raise CLIError("--samples > 1 needs sampling (--do-sample true); greedy generations would all be the same")
    if sweep_cfg.min_grammar is not None and args.topic is None:
        raise CLIError("--min-grammar needs the toy world's validator: score with --topic T, or drop --min-grammar")
    judge_cfg = _check_scoring(args)
    if sweep_cfg.unit == "max_act" and args.store is None:
        raise CLIError("strengths in multiples of the typical max activation (--unit max_act, the default) need the "
                       "feature store: give --store FILE, or --unit raw")
    return sweep_cfg, gen_cfg, limits, prompts, judge_cfg


def _latents(args) -> set[str]:
    """--latent as indices (args.latent), a Neuronpedia latent as its index in the --sae it names (the
    --sae itself when none is given); returns the names of the SAEs those named (one, and --sae-name's)."""
    from saesteer.commands._steering import CLIError, latent_owners, sae_from_latents

    sae_from_latents(args, args.latent)
    owners = latent_owners(args.sae, [args.store] if args.store else [])
    found = [owners.latent(text) for text in args.latent]
    args.latent = [index for _, index in found]
    named = {name for name, _ in found if name is not None}
    if len(named) > 1 or (args.sae_name and named and args.sae_name not in named):
        raise CLIError(f"the latents are of --sae {', '.join(sorted(named))}"
                       + (f", not of --sae-name {args.sae_name}" if args.sae_name else "")
                       + "; sweep the latents of one SAE at a time")
    return named


def _sae_name(args, saes: dict, named: set[str] = frozenset()) -> str:
    """--sae-name, else the SAE the Neuronpedia latents name, else the only SAE's name."""
    from saesteer.commands._steering import CLIError

    name = args.sae_name or next(iter(named), None) or (next(iter(saes)) if len(saes) == 1 else None)
    if name is None or name not in saes:
        raise CLIError(f"say which SAE the latents belong to with --sae-name (one of {', '.join(saes)})")
    return name


def _check_typical(args, typical) -> None:
    """--unit max_act: every latent swept needs a typical max activation in the store."""
    from saesteer.commands._steering import CLIError

    silent = [f for f in args.latent if typical(f) is None]  # in range: checked by the SAE's width
    if silent:
        raise CLIError(f"latent(s) {', '.join(map(str, silent))} have no typical max activation in "
                       f"{args.store} (they never fired when it was built); sweep them with --unit raw")


def _sweep_feature(args, latent, model, sae, name, prompts, scorer, sweep_cfg, *, gen_config, typical_max,
                   limits, link, unsteered: dict, provenance: dict) -> None:
    """Sweep one latent, write its HTML and JSON, print the result (and with --save-strength store it)."""
    from pathlib import Path

    from steering.sweeps import store_recommendation, sweep, write_sweep_html, write_sweep_json

    out = Path(args.out)
    stats = getattr(scorer, "stats", None)  # a JudgeScorer counts the judge's unusable answers
    before = (stats.calls, stats.failed) if stats is not None else (0, 0)
    if stats is not None:
        stats.last_problem = ""  # this latent's, not an earlier one's
    res = sweep(model, sae, latent, prompts, scorer, sweep_cfg, gen_config=gen_config, typical_max=typical_max,
                sae_name=name, limits=limits, progress=not args.no_progress,
                allow_model_mismatch=args.allow_model_mismatch, unsteered_memo=unsteered)
    if stats is not None:
        _check_judgements(f"latent {latent}", stats.calls - before[0], stats.failed - before[1], stats.last_problem)
    html = write_sweep_html(res, out / f"sweep_{name}_{latent}.html")
    js = write_sweep_json(res, out / f"sweep_{name}_{latent}.json", provenance)
    _print_result(res, html, js)
    if args.save_strength:
        store_recommendation(link.record_strength, res)
        if res.recommended is None:
            print(f"latent {latent}: {res.verdict}; stored 'no strength' in {args.store} "
                  "(an earlier recommendation of this latent is cleared)")
        else:
            print(f"latent {latent}: stored recommended strength {res.recommended:g} ({res.unit}) in {args.store}")


def _check_judgements(what: str, calls: int, failed: int, problem: str = "") -> None:
    """Unusable judge answers score 0 (AxBench's rule): say how many, and the judge's last error
    (`problem`: it names the setting to change, e.g. a reasoning model's room to think); when none was
    usable the scores are no measurement at all, so stop before anything is written or stored."""
    from saesteer.commands._steering import CLIError

    said = f"; the last: {problem}" if problem else "; check --judge-model and --judge-base-url"
    if calls and failed == calls:
        raise CLIError(f"{what}: the judge gave no usable rating ({failed} of {calls} answers failed or "
                       f"were not a 0-2 rating){said}. Nothing was written or stored")
    if failed:
        print(f"note: {what}: {failed} of {calls} judge answers were unusable and scored 0"
              + (f"; the last: {problem}" if problem else ""), file=sys.stderr)


def _close(store, judge) -> None:
    """Close the feature store and the LLM judge's client (either may be None)."""
    if store is not None:
        store.close()
    if judge is not None and hasattr(judge, "aclose"):
        import asyncio

        asyncio.run(judge.aclose())


def _print_result(res, html, js) -> None:
    from rich.console import Console
    from rich.table import Table

    from saesteer.terminal import plain

    grammar = any(p.grammar is not None for p in res.points)
    table = Table(title=plain(f"{res.label} ({res.unit})"), caption=plain(f"{res.verdict}; {html} {js}"))
    cols = ["strength", "concept", "fluency"] + (["grammatical"] if grammar else []) + ["aggregate", "perplexity", "example"]
    for col in cols:
        table.add_column(col, overflow="fold")
    baseline = [("unsteered", res.unsteered)] if res.unsteered is not None else []  # a clamp sweep's
    for name, p in baseline + [(f"{p.strength:g}", p) for p in res.points]:
        row = [name, f"{p.concept:.2f}", f"{p.fluency:.2f}"]
        row += [f"{p.grammar:.2f}"] if grammar else []
        row += [f"{p.aggregate:.2f}", "" if p.perplexity is None else f"{p.perplexity:.1f}",
                plain((p.examples or [""])[0][:80])]
        table.add_row(*row, style="bold green" if p is not res.unsteered and p.strength == res.recommended else None)
    Console().print(table)
