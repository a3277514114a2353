"""`train()`: a whole training run in an output folder, resumable.

    result = train(cfg, CacheReader(cache_dir, batch_size=cfg.train.batch_size), "runs/l2")

The run, in the order it happens: lock the folder; start or resume (`training.resume`); the
loop below, which steps the `Trainer` and hands each step to the log (`training.logs.StepLog`),
the evaluation cadence and the checkpointer (`training.checkpointer`); the end
(`training.finish`: SAEs, metrics, curves).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator, Literal

import torch
from torch import Tensor

from saes.fileio import FileLock
from saes.io import remove_save_leftovers
from training.checkpoint import clean_temporaries
from training.checkpointer import Checkpointer, crossed
from training.collectives import Collectives
from training.config import RunConfig
from training.evaluate import ModelEval
from training.finish import SAE_DIR, TrainResult, finish_run
from training.logs import RunLogger, StepLog, eval_record, open_run_logger
from training.resume import CHECKPOINT_DIR, start_run
from training.trainer import Trainer

LOCK_FILE = "train.lock"

# `train(stop_signals=...)`: a context manager within which a stop signal is only noted; it yields
# a function that returns the noted signal's number (None: none). `saesteer.stopsignals.deferred` is one.
StopSignals = Callable[[], ContextManager[Callable[[], "int | None"]]]


class RunStopped(KeyboardInterrupt):
    """The run stopped at a step boundary because a stop signal asked it to (SIGTERM, SIGINT,
    SIGHUP); `checkpoint` (the newest, of step `checkpoint_step`; None on other ranks than the
    writing one, or when there is none) is where the same run resumes."""

    def __init__(self, signum: int, step: int, tokens: int, checkpoint: Path | None, checkpoint_step: int) -> None:
        super().__init__(signum, step, tokens, checkpoint, checkpoint_step)
        self.signum, self.step, self.tokens = signum, step, tokens
        self.checkpoint, self.checkpoint_step = checkpoint, checkpoint_step

    def __str__(self) -> str:  # what a notebook shows (not the tuple of the arguments)
        where = f"training stopped at step {self.step:,} ({self.tokens:,} tokens)"
        if self.checkpoint is None:
            return f"{where}; no checkpoint yet"
        if self.checkpoint_step == self.step:
            return f"{where}; checkpoint {self.checkpoint}"
        return f"{where}; the newest checkpoint is {self.checkpoint} (step {self.checkpoint_step:,})"


def train(
    config: RunConfig,
    data: Iterable[Any],
    out_dir: str | os.PathLike,
    *,
    model_eval: ModelEval | None = None,
    provenance: dict[str, Any] | None = None,
    resume: Literal["auto", "never", "require"] = "auto",
    collectives: Collectives | None = None,
    on_step: Callable[[Trainer], None] | None = None,
    init_source: Any = None,
    stop_signals: StopSignals | None = None,
    holdout: Iterable[Any] | None = None,
) -> TrainResult:
    """Train every SAE of `config` on the batches of `data`, checkpointing into `out_dir`.

    data: iterable of [B, d_in] tensors or of objects with `.acts` (e.g. `CacheReader`). If it
        has `state_dict()` / `load_state_dict()`, checkpoints store its position and a resume
        continues exactly; otherwise a resume replays the source and skips the batches already
        trained on (exact only if the source is deterministic). The first
        `train.holdout_tokens` rows are not trained on in the first pass (scale, b_dec, evaluation); a
        source that passes over its data again (CacheReader, epochs) holds them again then;
        give `holdout` to keep them apart on every pass.
    out_dir: `checkpoints/`, `saes/<name>/`, `metrics.json`, `history.jsonl`,
        `training_curves.html`, `config.json` go here.
    model_eval: the loaded model and held-out contexts for CE loss recovered / KL.
    provenance: recorded with each SAE: model, hook_name, dataset, context_size, prepend_bos, ...
    resume: "auto" continues from the newest checkpoint in out_dir if there is one; "never"
        refuses an out_dir with checkpoints; "require" refuses one without.
    collectives: data-parallel communication (default: single process).
    on_step: called with the trainer after every step (progress hooks, tests).
    init_source: the `training.init_from.InitSource` of `config.train.init_from` when the caller
        has read the source already (the CLI does, for its defaults); None: read where needed.
    stop_signals: see `StopSignals`. The loop runs inside it and, when a signal was noted (on any
        rank), checkpoints the step it is at and raises `RunStopped`: a preempted run loses no step.
    holdout: batches (as `data`'s, e.g. a `CacheReader` of a separate held-out cache, epochs=1) the
        held-out rows are drawn from instead of `data`'s start: `data` is then all trained on, and
        the held-out rows never, on any pass over it. Data parallel: this rank's share, as `data`.
    """
    t_start = time.perf_counter()
    coll = collectives or Collectives()
    out = Path(out_dir)
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    lock = contextlib.nullcontext()
    if coll.is_writer:
        out.mkdir(parents=True, exist_ok=True)
        lock = lock_run_dir(out)
    with lock:
        if coll.is_writer:
            clean_temporaries(out / CHECKPOINT_DIR)
            _clean_sae_leftovers(out / SAE_DIR)
        return _train_locked(config, data, out, coll, dict(provenance or {}), model_eval, resume, on_step, t_start,
                             init_source, stop_signals, holdout)


def _clean_sae_leftovers(sae_root: Path) -> None:
    """Remove the temporary folders of SAE saves that a kill interrupted (`.<name>.tmp-*`)."""
    if sae_root.is_dir():
        for p in sae_root.glob(".*.tmp-*"):
            remove_save_leftovers(sae_root / p.name[1:].rsplit(".tmp-", 1)[0])


def lock_run_dir(out: Path) -> FileLock:
    """An exclusive lock on the output folder for the run (two runs must not share it)."""
    return FileLock(out / LOCK_FILE, busy=lambda holder: FileExistsError(
        f"another training run is using {out}: {holder}; wait for it to finish (or stop it), or choose another "
        f"output folder"))


def _train_locked(
    config: RunConfig, data: Iterable[Any], out: Path, coll: Collectives, prov: dict[str, Any],
    model_eval: ModelEval | None, resume: str, on_step: Callable[[Trainer], None] | None, t_start: float,
    init_source: Any = None, stop_signals: StopSignals | None = None, holdout: Iterable[Any] | None = None,
) -> TrainResult:
    """The run inside the locked folder: start or resume, the loop, the last checkpoint, the end."""
    start = start_run(config, data, out, coll, prov, resume, init_source, holdout)
    trainer = start.trainer
    logger = open_run_logger(config, out, prov, trainer.tokens, enabled=coll.is_writer)
    if start.resumed_from is not None:
        logger.message(f"resumed from {start.resumed_from.name} at {trainer.tokens:,} tokens")
    checkpointer = Checkpointer(out / CHECKPOINT_DIR, config.checkpoint, data, logger, trainer)
    try:
        with (stop_signals() if stop_signals is not None else contextlib.nullcontext(None)) as stop_requested:
            stopped_early = _loop(trainer, start.batches, start.holdout_BD, logger, checkpointer, model_eval, on_step,
                                  start.holdout_targets, stop_requested)
        checkpointer.save_final(trainer)
        logger.flush()  # finish_run reads and rewrites the history file
        result = finish_run(trainer, out, start.holdout_BD, model_eval, prov, stopped_early,
                            time.perf_counter() - t_start, start.holdout_targets)
        logger.final(result.final_record)
    except KeyboardInterrupt as e:  # a stop signal (RunStopped: its step is checkpointed)
        logger.preempted(getattr(e, "signum", signal.SIGINT))
        raise
    finally:
        logger.close()
    result.resumed_from = start.resumed_from
    return result


def _loop(trainer: Trainer, batches: Iterator[Any], holdout_BD: Tensor, logger: RunLogger, checkpointer: Checkpointer,
          model_eval: ModelEval | None, on_step: Callable[[Trainer], None] | None,
          holdout_targets: Tensor | None = None, stop_requested: Callable[[], int | None] | None = None) -> str | None:
    """Step until `TrainConfig.total_tokens` or the end of the data; returns why the run
    stopped early (None: it did not). A stop signal (`stop_requested`) ends it after the step it
    came in (or while the data ran out), with a checkpoint of that step (before the next batch is
    read: the data source's position in the checkpoint is that of the step), by `RunStopped`."""
    cfg = trainer.config
    total = cfg.train.total_tokens
    step_log = StepLog(trainer, logger, checkpointer.root)
    while trainer.tokens < total:
        batch = next(batches, None)
        if not trainer.coll.all_true(batch is not None):  # data parallel: every rank stops together
            _stop_if_requested(trainer, checkpointer, stop_requested)  # a signal noted while the data ran out
            stopped_early = f"the data ran out after {trainer.tokens:,} training tokens"
            logger.message(f"warning: {stopped_early} (asked for {total:,})")
            return stopped_early
        before = trainer.tokens
        t0 = time.perf_counter()
        x_BD, stats = trainer.train_batch(batch)
        trainer.train_seconds += time.perf_counter() - t0
        step_log.after_step(x_BD, stats, before)
        if trainer.coll.is_writer and crossed(cfg.eval.every_tokens, before, trainer.tokens) and trainer.tokens < total:
            ev = trainer.evaluate(holdout_BD, model_eval if cfg.eval.ce_during_training else None, holdout_targets)
            logger.record(eval_record(trainer, ev))
        checkpointer.after_step(trainer, before)
        if on_step is not None:
            on_step(trainer)
        _stop_if_requested(trainer, checkpointer, stop_requested)
    return None


def _stop_if_requested(trainer: Trainer, checkpointer: Checkpointer,
                       stop_requested: Callable[[], int | None] | None) -> None:
    """Raise `RunStopped` with a checkpoint of this step when a stop signal was noted (on any rank:
    every rank stops)."""
    if stop_requested is not None and not trainer.coll.all_true(stop_requested() is None):
        path = checkpointer.save_now(trainer)
        raise RunStopped(stop_requested() or signal.SIGTERM, trainer.step, trainer.tokens, path,
                         checkpointer.last_step)
