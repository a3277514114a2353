"""`saesteer output-score`: does steering with a latent move text toward its label?"""

from __future__ import annotations

from saesteer.boundary import print_error
from saesteer.stopsignals import judge_answers_kept

NAME = "output-score"
ORDER = 45
HELP = "output scores: steer with each labelled latent and score whether text moves toward its label"
ON_STOP = judge_answers_kept("<store>.judge-cache.sqlite", written="scores")
DESCRIPTION = """\
For each labelled latent (all, or --latents), generate --samples texts with the latent added at
the first tokens and as many without it (same seeds), and score how often the steered text is the
nearer to the label: offline, by the share of the label's words; with --judge-model, an LLM judge
compares each pair. The score (0.5 = steering does not move text toward the label) is stored as
method "output" beside the label's input scores; search by meaning ranks with it.

examples:
  saesteer output-score --store toy.db --sae runs/toy/saes/matryoshka_batchtopk_k16_f1024 --latents 0-99
  saesteer output-score --store gpt2.db --sae saes/gpt2-l6 --judge-model gpt-4o-mini --samples 4

Exit status: 0 all scored, 4 some latents failed (the judge gave no valid answer; listed at the
end with the --latents that retries them), 2 bad arguments or a key the judge's server refused."""


def add_arguments(parser) -> None:
    from autointerp.config import JudgeConfig
    from saesteer.commands._steering import OneStore
    from saesteer.configargs import add_dataclass_arguments
    from saesteer.outputscore import OutputScoreConfig

    parser.add_argument("--store", required=True, action=OneStore, help="feature store file (labelled; written)")
    parser.add_argument("--sae", required=True, help="the SAE folder the store was built from")
    parser.add_argument("--model", default=None, help="model (default: the one the store records)")
    parser.add_argument("--allow-model-mismatch", action="store_true", help="steer --model even if the store records another")
    parser.add_argument("--device", default=None, help="device for the model and SAE (default: cuda if available)")
    parser.add_argument("--latents", default=None, help="latents to score, e.g. '0-99,512' (default: every labelled one)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataclass_arguments(parser, OutputScoreConfig, title="steering and sampling")
    add_dataclass_arguments(parser, JudgeConfig, prefix="judge_", title="judge (default: offline, label words)")


def run(args) -> int:
    import sys
    from pathlib import Path

    from autointerp.cache import cache_beside
    from autointerp.config import JudgeConfig, make_judge, parse_latents
    from features import FeatureStore
    from features.store import StoreError
    from saes.hookpoints import model_device
    from saesteer.configargs import dataclass_from_args
    from saesteer.outputscore import OutputScoreConfig, score_outputs

    try:
        cfg = dataclass_from_args(OutputScoreConfig, args)
        cfg.edit_positions()
        judge_cfg = dataclass_from_args(JudgeConfig, args, prefix="judge_")
        wanted = parse_latents(args.latents, "--latents") if args.latents else None
    except ValueError as e:
        print_error(e)
        return 2
    store_path = Path(args.store)
    try:
        from saes import load_sae
        from saesteer.models import load_recorded_model

        sae = load_sae(args.sae)
        with FeatureStore.open(store_path, readonly=False, sae=sae) as store:
            labelled = [r.latent for r in store.list_features(sort="latent", filter={"has_label": True}, limit=store.d_sae)]
            ids = [i for i in labelled if wanted is None or i in set(wanted)]
            if not ids:  # refused before the model loads and the judge is made
                print("error: no labelled latent to score; run `saesteer label` first (or check --latents)", file=sys.stderr)
                return 2
            model = load_recorded_model(store.recorded_model(), args.model, recorded_in=str(store_path),
                                        device=args.device, allow_mismatch=args.allow_model_mismatch)
            sae = sae.to(model_device(model))
            judge = make_judge(judge_cfg, cache_path=cache_beside(store_path))
            res = score_outputs(model, sae, store, ids, cfg, judge=judge, progress=not args.no_progress)
    except (StoreError, FileNotFoundError, ValueError) as e:
        print_error(e)
        return 2
    from saesteer.terminal import SHOWN_FAILURES, counted, judge_streak_stop, print_failed_latents

    vals = [r.value for r in res.values() if r.value is not None]
    mean = f"mean {sum(vals) / len(vals):.3f}; " if vals else ""
    print(f"output scores of {counted(len(vals), 'latent')} written to {store_path} ({mean}0.5 = no move toward the label)")
    failed = {i: r.failed for i, r in res.items() if r.failed}
    print_failed_latents([(i, None, reason) for i, reason in failed.items()])
    if len(res) < len(ids):
        print(judge_streak_stop(cfg.max_consecutive_failures, list(failed.values())[-1]))
    elif failed:
        again = f" with --latents {','.join(map(str, failed))}" if len(failed) <= SHOWN_FAILURES else ""
        print(f"{len(failed)} of {len(res)} latents failed; to retry them, run the command again{again}")
    return 4 if failed else 0
