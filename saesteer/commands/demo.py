"""`saesteer demo`: the whole pipeline on the built-in toy world, then the web app."""

from __future__ import annotations

import sys

from saesteer.boundary import print_error

NAME = "demo"
ORDER = 10
HELP = "the toy world end to end: cache, train a Matryoshka SAE, feature store, labels, steering, web app"
ON_STOP = ("the finished stages are kept (training: a checkpoint of the step it stopped at; the feature store: its "
           "pass so far); run the same command to go on")
DESCRIPTION = """\
Run every stage on the built-in toy world (a synthetic language with ground-truth concept tags and a
tiny 4-layer model shipped with saesteer; no GPU, no internet):

  1. model     load the toy model (and write the toy corpus the first time, about a minute)
  2. cache     cache the residual-stream activations of a middle layer
  3. train     train a Matryoshka BatchTopK SAE on them (explained variance, CE loss recovered, ...)
  4. features  build the feature store (statistics, examples, neighbours, ground-truth concept F1)
  5. label     label every latent (offline token statistics unless an LLM judge is configured)
  6. steer     pick a sparse latent that matches a toy-world topic (token F1), calibrate its
               strength on dev samples, report its effect on held-out samples

then print a summary and serve the web app (browse, search, steer) until Ctrl-C.

Re-running reuses every finished stage and resumes an interrupted one; --fresh starts over.
Everything goes to --out (default runs/demo): cache/, heldout-cache/, train/, features.db, steering/, summary.json.

LLM labels: set SAESTEER_JUDGE_MODEL (and OPENAI_BASE_URL / OPENAI_API_KEY), or pass --judge-model;
with a judge only the 100 most frequent latents are labelled unless --label-limit says otherwise.

examples:
  saesteer demo                      # everything, then the web app on http://127.0.0.1:8000/
  saesteer demo --no-serve           # stop after the summary
  saesteer demo --fresh --k 32       # start over with another sparsity
  saesteer demo --judge-model gpt-4o-mini --label-limit 50"""


def add_arguments(parser) -> None:
    from autointerp.config import JudgeConfig
    from saesteer.configargs import add_dataclass_arguments
    from saesteer.demo import DemoConfig

    g = parser.add_argument_group("run")
    g.add_argument("--fresh", action="store_true", help="delete the work folder (--out) first and start over")
    g.add_argument("--no-serve", action="store_true", help="stop after the summary (no web app)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--host", default="127.0.0.1", help="address of the web app (loopback only; default: 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="port of the web app (a busy one is replaced by a free one; "
                                                          "default: 8000)")
    add_dataclass_arguments(parser, DemoConfig, title="demo")
    add_dataclass_arguments(parser, JudgeConfig, prefix="judge_", title="judge (default: offline, or $SAESTEER_JUDGE_MODEL)")


def run(args) -> int:
    from autointerp.config import JudgeConfig
    from saesteer.configargs import dataclass_from_args
    from saesteer.demo import DemoConfig, DemoError, print_summary, run_demo, serve_demo

    try:
        cfg = dataclass_from_args(DemoConfig, args)
        judge_cfg = dataclass_from_args(JudgeConfig, args, prefix="judge_")
    except ValueError as e:
        print_error(e)
        return 2
    from saesteer.web.config import is_loopback

    if not is_loopback(args.host):
        print("error: the demo serves on a loopback address only; use `saesteer serve --allow-remote` for more",
              file=sys.stderr)
        return 2
    try:
        result = run_demo(cfg, judge_cfg=judge_cfg, fresh=args.fresh, progress=not args.no_progress)
    except DemoError as e:
        print_error(e)
        return 2
    print_summary(result)
    if args.no_serve:
        return 0
    serve_demo(result, host=args.host, port=args.port)
    return 0
