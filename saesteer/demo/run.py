"""`run_demo`: every stage of the demo in order, each reused when finished; writes summary.json."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from saesteer.demo.config import AUTO, STAGES, DemoConfig, DemoPaths
from saesteer.demo.console import StageTimer, make_console
from saesteer.demo.results import DemoResult, FeatureShowcase, SteeringExample
from saesteer.demo.showcase import pick_showcase
from saesteer.demo.stages import stage_cache, stage_features, stage_label, stage_train
from saesteer.demo.steer import stage_steer
from saesteer.demo.workdir import prepare_out


def run_demo(
    cfg: DemoConfig | None = None,
    *,
    judge_cfg: Any = None,
    fresh: bool = False,
    progress: bool = True,
    console: Any = None,
    model: Any = None,
) -> DemoResult:
    """Run (or resume, or reuse) every stage of the demo; returns what the summary shows.

    judge_cfg: an `autointerp.JudgeConfig` (default: from the environment, offline when no judge
    model is configured). model: an already loaded toy model (default: `load_model("toy")`).
    Raises `DemoError` with a message saying what to do."""
    cfg = cfg or DemoConfig()
    con = console or make_console()
    say = _sayer(con)
    paths = DemoPaths(Path(cfg.out))
    t_start = time.perf_counter()
    prepare_out(cfg, paths, fresh, say)
    timer = StageTimer(con, len(STAGES))

    with timer.stage("model", "toy model and corpus") as info:
        model = _stage_model(model, info)

    with timer.stage("cache", f"activation cache: {cfg.cache_tokens:,} tokens at {cfg.hook}") as info:
        cache = stage_cache(cfg, paths, model, progress, info, say)

    with timer.stage("train", f"train a Matryoshka BatchTopK SAE (d_sae {cfg.d_sae}, k {cfg.k})") as info:
        name, sae_dir, metrics, train_info = stage_train(cfg, paths, model, progress, info, say)

    import saes

    sae = saes.load_sae(sae_dir)
    sae.eval()
    with timer.stage("features", "feature store: statistics, examples, neighbours, ground-truth concepts") as info:
        store_summary, n_rows, concepts = stage_features(cfg, paths, model, sae, sae_dir, progress, info, say)

    with timer.stage("label", "label the latents") as info:
        judge, n_labelled = stage_label(cfg, paths, judge_cfg, progress, info, say)

    toward = "a sparse latent of a toy-world topic" if cfg.steer_topic == AUTO else f"toward '{cfg.steer_topic}'"
    from saes.threads import torch_threads

    # generation with the toy model is many tiny steps ([16, 128] x [128, 512]): on a busy machine a
    # second thread's spinning multiplies the CPU time (7 s of CPU with one thread, 147 s with two, at load 9)
    with timer.stage("steer", f"steering example: {toward}") as info, torch_threads(1):
        steering = stage_steer(cfg, paths, model, sae, progress, info, say)

    showcase = _showcase(cfg, paths, steering)
    result = DemoResult(
        config=cfg, paths=paths, sae_name=name, sae_dir=Path(sae_dir), metrics=metrics, train_info=train_info,
        store_summary=store_summary, cache_rows=cache.manifest.total_rows, concepts=concepts, judge=judge,
        labelled=n_labelled, showcase=showcase, steering=steering, stage_seconds=dict(timer.seconds),
        stage_status=dict(timer.status), total_seconds=round(time.perf_counter() - t_start, 2), model=model,
    )
    from saes.fileio import atomic_write_json

    atomic_write_json(paths.summary, result.to_json())
    return result


def _showcase(cfg: DemoConfig, paths: DemoPaths, steering: SteeringExample | None) -> list[FeatureShowcase]:
    """The labelled features the summary shows, the steering example's topic (or the chosen one) first."""
    from features import FeatureStore

    with FeatureStore.open(paths.store, readonly=True) as store:
        topic = steering.topic if steering is not None else (None if cfg.steer_topic == AUTO else cfg.steer_topic)
        return pick_showcase(store, cfg.showcase, topic)


def _sayer(con: Any) -> Callable[[str], None]:
    """Plain messages on the console: they hold paths and labels, never rich markup."""
    if not hasattr(con, "print"):
        return print
    from rich.text import Text

    def say(message: str) -> None:
        con.print(Text(message))

    return say


def _stage_model(model: Any, info: dict[str, str]) -> Any:
    """The toy model (loaded unless given) and its corpus (written the first time)."""
    import torch  # noqa: F401  (the first heavy import; counted in this stage)

    import toyworld

    toyworld.corpus_files("train")  # writes the default toy corpus the first time (about a minute)
    toyworld.corpus_files("validation")
    if model is None:
        from saesteer.models import load_model

        model = load_model("toy", device="cpu")
    else:
        info["status"] = "reused"
    model.eval()
    info["note"] = (f"{model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
                    f"vocabulary {model.cfg.d_vocab}")
    return model
