"""`saesteer steer-eval`: SAE steering vs difference-of-means vs prompting, on one protocol, with a scorecard."""

from __future__ import annotations

from saesteer.stopsignals import judge_answers_kept

NAME = "steer-eval"
ORDER = 73
HELP = "compare SAE steering with difference-of-means and prompting, and write a scorecard"
JUDGE_CACHE = "<store>.judge-cache.sqlite, without --store <out>.judge-cache.sqlite; with neither, none are"
ON_STOP = judge_answers_kept(JUDGE_CACHE)
DESCRIPTION = """\
Steer toward one concept three ways and score them side by side: an SAE feature (given with
--latent, or the best of the top --candidates latents by contrast of --positive vs --negative
prompts), the difference-of-means vector at the SAE's hook (the same prompt sets), and prompting
(--cue written before each prompt); plus the unsteered model. Each method picks its strength on
--dev-seed generations and is scored on --test-seed generations (the same prompts), so no method
is tuned on the samples it is judged by.

Scoring, one of:
  --topic T      toy world, offline: concept = share of content words of topic T, fluency = share
                 of grammatical sentences; the prompt sets and the cue default to toy-world
                 documents about T vs other topics, and a sentence about T
  --concept C    an LLM judge rates concept / instruction / fluency 0-2 (AxBench-style); give
                 --positive/--negative (or --latent) and --cue; configure the judge with --judge-*

The scorecard (--out, JSON) holds the settings, each method's pick (with its development sweep)
and test scores (concept, fluency, their harmonic mean, perplexity under the unsteered model,
standard errors, examples). --save-preset NAME keeps the SAE pick as a preset in --store, with
the scorecard as its provenance.

examples:
  saesteer steer-eval --sae saes/toy-topk --store toy.db --topic ocean --samples 32 --out ocean.json
  saesteer steer-eval --sae saes/toy-topk --store toy.db --topic ocean --latent 123 --save-preset ocean
  saesteer steer-eval --model gpt2 --sae saes/gpt2-l6 --store gpt2.db --concept "the ocean" \\
      --positive ocean.txt --negative neutral.txt --cue "Talk about the ocean." \\
      --prompt "Tell me a story." --samples 8 --judge-model gpt-4o-mini"""


def add_arguments(parser) -> None:
    from autointerp.config import JudgeConfig
    from saesteer.commands._steering import add_common_arguments, add_latent_argument
    from saesteer.configargs import add_dataclass_arguments
    from steering.config import GenerationConfig
    from steering.config import CompareConfig

    add_common_arguments(parser, prompts_help="a prompt to steer (repeat for several; default: unconditional, \"\")")
    c = parser.add_argument_group("the concept")
    c.add_argument("--topic", default=None, help="toy-world topic: offline scores, default prompt sets and cue")
    c.add_argument("--toy-grammar", default="sentence", choices=["sentence", "document"],
                   help="toy world: judge each sentence alone, or with the document rules (tense, names, pronouns)")
    c.add_argument("--concept", default=None, help=f"concept for the LLM judge (e.g. 'the ocean'); its answers are "
                   f"kept for re-runs ({JUDGE_CACHE})")
    c.add_argument("--positive", default=None, metavar="FILE", help="prompts that show the concept, one per line (as --prompts-file)")
    c.add_argument("--negative", default=None, metavar="FILE", help="neutral prompts, one per line (as --prompts-file)")
    c.add_argument("--cue", default=None, help="text written before each prompt for the prompting baseline")
    add_latent_argument(c, help="SAE latent(s) to steer with (default: found by contrast), repeatable: an index, or as "
                                "Neuronpedia names it (gpt2-small/6-res-jb/17 or its address: of the --sae, which may "
                                "then be left out)")
    c.add_argument("--samples", type=int, default=16, help="generations per prompt and seed (default: 16)")
    c.add_argument("--n-docs", type=int, default=48, help="toy world: documents in the positive set (default: 48)")
    o = parser.add_argument_group("output")
    o.add_argument("--out", default=None, metavar="FILE", help="write the scorecard (JSON) here")
    o.add_argument("--save-preset", default=None, metavar="NAME", help="save the SAE pick as a preset in --store")
    o.add_argument("--json", action="store_true", help="print the scorecard as JSON instead of a table")
    o.add_argument("--no-progress", action="store_true",
                   help="no progress bars (over the contrast search's prompts and each sweep's strengths)")
    add_dataclass_arguments(parser, CompareConfig, title="methods")
    add_dataclass_arguments(parser, GenerationConfig, title="generation")
    add_dataclass_arguments(parser, JudgeConfig, prefix="judge_", title="judge (with --concept)", helps={
        "cache_path": "response cache file (default: <store>.judge-cache.sqlite beside --store, without --store "
                      "<out>.judge-cache.sqlite beside --out; with neither, none)"})
    parser.set_defaults(max_new_tokens=32, stop_at_eos=False)


def run(args) -> int:
    from saesteer.commands._steering import CLIError, print_error
    from saesteer.toyscore import ToyScorerError
    from steering.spec import SteeringError

    try:
        return _run(args)
    except (CLIError, SteeringError, ToyScorerError) as e:
        return print_error(e, args)  # a config field named as its flag (--max-new-tokens)


def toy_concept(topic: str, n_docs: int) -> tuple[list[str], list[str], str]:
    """(documents about `topic`, documents about the other topics, a sentence about `topic`)."""
    from toyworld.grammar import generate_document
    from toyworld.lexicon import TOPICS

    docs = {t: [generate_document(f"steer-bench-{t}-{i}", topic=t).text for i in range(n_docs)] for t in TOPICS}
    neg = [d for t in TOPICS if t != topic for d in docs[t][: max(1, n_docs // 4)]]
    cue = " ".join(generate_document(f"steer-cue-{topic}", topic=topic).sentences[0])
    return docs[topic], neg, cue


def _lines(path: str | None, flag: str) -> list[str] | None:
    from saesteer.commands._steering import CLIError, read_prompt_file

    if path is None:
        return None
    lines = read_prompt_file(path, flag)
    if not lines:
        raise CLIError(f"{flag} {path} holds no prompts")
    return lines


def _run(args, model=None) -> int:
    import json

    from saes.hookpoints import model_device
    from saesteer.commands._steering import CLIError, store_hook, load_model, load_saes, open_store, read_prompts
    from saesteer.commands.sweep import _check_judgements, _check_scoring, _close, _scorer
    from steering.baselines import check_prompting_fits
    from steering.generation import check_prompts_fit, with_sae_bos
    from steering.resolve import check_latent_index

    # everything the flags and files can refuse is refused before the model (and a judge) loads
    cfg, gen_cfg = _configs(args)
    if args.out:
        _check_out_file(args.out)
    positive, negative, cue = _concept_sets(args)
    prompts = read_prompts(args) or [""]
    judge_cfg = _check_scoring(args)
    _latents(args)
    loaded = load_saes(args.sae, hook=args.hook, store_hook=store_hook(args))
    if len(loaded) != 1:
        raise CLIError("steer-eval steers with one SAE; give a single --sae")
    name, sae = next((n, item.sae) for n, item in loaded.items())
    for latent in args.latent:
        check_latent_index(latent, sae, name)
    store, link = open_store(args.store, {name: sae}, writable=bool(args.save_preset))
    judge = None
    try:
        if model is None:
            model = load_model(args, loaded, store)
        gen_cfg = with_sae_bos(gen_cfg, loaded)  # the BOS the SAE was trained with (saes.bos), unless --prepend-bos
        check_prompts_fit(model, prompts, gen_cfg)  # each prompt once, before --samples repeats it
        if cue is not None:  # the prompting baseline's cue + prompt, before the judge loads
            check_prompting_fits(model, prompts, cue, gen_cfg)
        scorer, judge = _scorer(args, judge_cfg)
        sae = sae.to(model_device(model))
        card = _compare(args, cfg, gen_cfg, model, name, sae, scorer, link, prompts=[p for p in prompts for _ in
                        range(args.samples)], positive=positive, negative=negative, cue=cue)
        stats = getattr(scorer, "stats", None)
        if stats is not None:
            _check_judgements("steer-eval", stats.calls, stats.failed, stats.last_problem)
        record = _scorecard_record(card, args, model, sae)
        if args.out:
            _write_scorecard(args.out, record)
        if args.save_preset:
            _save_pick(args, cfg, card, record, sae, model, link)
    finally:
        _close(store, judge)
    if args.json:
        print(json.dumps(record, indent=2, allow_nan=False))
    else:
        _print_table(card, args)
    return 0


def _latents(args) -> None:
    """--latent as indices: a Neuronpedia latent's in the --sae it names (the --sae itself when none is given)."""
    from saesteer.commands._steering import latent_owners, sae_from_latents

    if args.latent:
        sae_from_latents(args, args.latent)
    owners = latent_owners(args.sae, [args.store] if args.store else [])
    args.latent = [owners.latent(text)[1] for text in args.latent]


def _configs(args):
    """The methods and generation configs from the flags, with the checks that need several flags at once."""
    from saesteer.commands._steering import CLIError
    from saesteer.configargs import dataclass_from_args
    from steering.config import CompareConfig, GenerationConfig

    try:
        cfg = dataclass_from_args(CompareConfig, args)
        gen_cfg = dataclass_from_args(GenerationConfig, args)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if args.samples < 1:
        raise CLIError(f"--samples must be positive, got {args.samples}")
    if not gen_cfg.do_sample and args.samples > 1:
        raise CLIError("--samples > 1 needs sampling (--do-sample true); greedy generations would all be the same")
    if args.save_preset and args.store is None:
        raise CLIError("--save-preset keeps the preset in a feature store; give --store FILE")
    if args.save_preset:
        from steering.presets import check_preset_name

        try:  # a name the store refuses: said before the comparison runs
            check_preset_name(args.save_preset)
        except ValueError as e:
            raise CLIError(f"--save-preset {e}") from None
    return cfg, gen_cfg


def _concept_sets(args):
    """(positive prompts, negative prompts, cue): from the files and --cue, the toy world filling the gaps."""
    from saesteer.commands._steering import CLIError

    if (args.positive is None) != (args.negative is None):
        raise CLIError("give both --positive and --negative (the difference of means and the contrast need both)")
    positive, negative = _lines(args.positive, "--positive"), _lines(args.negative, "--negative")
    cue = args.cue
    if args.topic is not None:
        from saesteer.toyscore import toy_topics

        if args.topic not in toy_topics():
            raise CLIError(f"unknown toy-world topic {args.topic!r}; choose one of {', '.join(toy_topics())}")
        pos, neg, toy_cue = toy_concept(args.topic, args.n_docs)
        positive, negative = positive or pos, negative or neg
        cue = cue if cue is not None else toy_cue
    if not args.latent and positive is None:
        raise CLIError("give --latent L, or --positive/--negative prompt files to find features by contrast")
    return positive, negative, cue


def _compare(args, cfg, gen_cfg, model, name, sae, scorer, link, *, prompts, positive, negative, cue):
    import sys

    from saesteer.commands._steering import typical_max_provider
    from steering.methods import compare_methods

    return compare_methods(
        model, sae, scorer, prompts=prompts, config=cfg, positive=positive, negative=negative, cue=cue,
        latents=args.latent or None, gen_config=gen_cfg, typical_max=typical_max_provider(link),
        allow_model_mismatch=args.allow_model_mismatch, progress=not args.no_progress,
        say=lambda msg: print(f"[steer-eval] {msg}", file=sys.stderr, flush=True))


def _scorecard_record(card, args, model, sae) -> dict:
    """The scorecard as JSON, with the CLI's settings and where the model, SAE and store came from."""
    from saesteer.commands._steering import measurement_provenance

    record = card.to_json()
    record["settings"].update({"topic": args.topic, "concept": args.concept, "samples": args.samples})
    record["provenance"] = measurement_provenance(model, sae, args.store)
    return record


def _check_out_file(path: str):
    """--out as a Path; refused when it is a folder or its folder does not exist."""
    from saesteer.commands._out import check_out_file
    from saesteer.commands._steering import CLIError

    try:
        return check_out_file(path, "--out", "the scorecard is a JSON file", "card.json")
    except ValueError as e:
        raise CLIError(str(e)) from None


def _write_scorecard(path: str, record: dict) -> None:
    import json

    from saes.fileio import atomic_write_bytes

    out = _check_out_file(path)
    atomic_write_bytes(out, (json.dumps(record, indent=2, allow_nan=False) + "\n").encode())


def _save_pick(args, cfg, card, record, sae, model, link) -> None:
    """Keep the SAE method's pick as preset --save-preset, the scorecard as its provenance."""
    from steering.presets import make_preset
    from steering.spec import FeatureEdit

    pick = card.picks["SAE feature"]
    edit = FeatureEdit(pick.latent, cfg.op, pick.strength, unit=pick.unit, positions=cfg.positions)
    preset = make_preset(args.save_preset, [edit], sae=sae, model=model, typical_max=link.typical_max,
                         recommended=link.recommended, scorecard=record,
                         description=f"steer-eval pick for {args.topic or args.concept}")
    link.save_preset(preset, overwrite=True)
    print(f"saved {preset.describe()} in {args.store}")


def _print_table(card, args) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"steering toward {args.topic or args.concept!r}: test seed {card.settings['test_seed']}, "
                    f"{card.settings['n_test_prompts']} samples",
              caption=f"strengths picked on seed {card.settings['dev_seed']} ({card.settings['rule']}); "
                      f"{('scorecard: ' + args.out) if args.out else ''}")
    t.add_column("method", no_wrap=True)
    for col in ("pick", "concept", "fluency", "aggregate", "perplexity", "example"):
        t.add_column(col, overflow="fold")
    for r in card.rows:
        p = card.picks.get(r.method)
        pick = ""
        if p is not None and p.latent is not None:
            pick = f"latent {p.latent} at {p.strength:g} ({p.unit})"
        elif p is not None and p.strength is not None:
            pick = f"{p.strength:g} {p.unit}"
        t.add_row(r.method, pick, f"{r.concept:.2f} ± {r.concept_se or 0:.2f}", f"{r.fluency:.2f} ± {r.fluency_se or 0:.2f}",
                  f"{r.aggregate:.2f}", "" if r.perplexity is None else f"{r.perplexity:.1f}",
                  Text((r.texts or [""])[0][:100]))
    Console().print(t)
