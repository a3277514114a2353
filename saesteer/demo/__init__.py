"""The toy-world demo end to end, through each stage's Python API (no subprocesses):

    activation cache -> Matryoshka SAE -> feature store -> labels -> a steering example -> summary

    from saesteer.demo import DemoConfig, run_demo, print_summary, serve_demo
    result = run_demo(DemoConfig(out="runs/demo"))      # DemoResult: paths, metrics, showcase, steering
    print_summary(result)
    serve_demo(result)                                  # the web app over the store (blocks)

`saesteer demo` is this package behind a command line. Every stage is resumable and idempotent on
its own (the cache, trainer, feature store and labeller each keep their progress on disk), so
re-running the demo reuses what is finished and continues what is not; `fresh=True` deletes the
work folder first. Only the toy world is used: no GPU, no network.

Modules: `config` (DemoConfig, DemoPaths, the training run it implies), `results` (DemoResult and
what summary.json holds), `workdir` (the work folder), `stages` (cache, training, feature store,
labels), `steer` (the steering example), `showcase` (the labelled features shown), `run`
(`run_demo`: the stages in order), `console` (stage headers and timings), `summary`
(`print_summary`), `serve` (`serve_demo`). Heavy libraries are imported inside the functions, so
`import saesteer.demo` stays cheap (the CLI builds its flags from `DemoConfig`).

Work folder (`DemoConfig.out`):
    demo.json        the DemoConfig of the run (marks the folder as a demo folder for `fresh`)
    cache/           activation cache of `hook` (training.cache format)
    train/           training run: saes/<name>/ (SAELens folder), metrics.json, training_curves.html, ...
    features.db      feature store (with labels, scores, concept matches, recommended strength)
    steering/        the dev-sample sweeps of the steering candidates (HTML + JSON) and example.json
    summary.json     everything the printed summary shows
"""

from __future__ import annotations

from saesteer.demo.config import STAGES, DemoConfig, DemoError, DemoPaths, run_config
from saesteer.demo.console import StageTimer
from saesteer.demo.results import DemoResult, FeatureShowcase, SteeringExample
from saesteer.demo.run import run_demo
from saesteer.demo.serve import serve_demo
from saesteer.demo.summary import print_summary

__all__ = [
    "DemoConfig", "DemoError", "DemoPaths", "DemoResult", "FeatureShowcase", "SteeringExample", "StageTimer",
    "run_demo", "print_summary", "serve_demo", "run_config", "STAGES",
]
