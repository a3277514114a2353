"""When and what a training run checkpoints (the files themselves: `training.checkpoint`).

A checkpoint holds the trainer's state (`Trainer.checkpoint_payload`) and where the data
source stands: its `state_dict()` (every rank's, when ranks read their own shards), or for a
source without state the number of batches trained on after the held-out rows (a resume
replays the source and skips them). One is due every `CheckpointConfig.every_tokens` training
tokens; during a run of skipped (non-finite) steps it waits for the next good step. The last
one is written when the run ends, unless the last step already has one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import list_checkpoints, prune_checkpoints, write_checkpoint
from training.collectives import Collectives
from training.config import CheckpointConfig
from training.logs import RunLogger
from training.trainer import Trainer


def crossed(every: int, before: int, after: int) -> bool:
    """Whether a multiple of `every` (> 0) lies in (before, after]: a periodic action is due."""
    return every > 0 and after // every > before // every


class Checkpointer:
    """Writes a run's checkpoints into `root` (only the writing rank; every rank takes part in
    gathering the data positions)."""

    def __init__(self, root: Path, cfg: CheckpointConfig, data: Any, logger: RunLogger, trainer: Trainer) -> None:
        self.root = root
        self.cfg = cfg
        self.data = data
        self.stateful = hasattr(data, "state_dict") and hasattr(data, "load_state_dict")
        self.logger = logger
        self.coll: Collectives = trainer.coll
        self.batches_trained = trainer.step  # for sources without state: batches after the holdout
        self.last_step = trainer.step  # the step of the newest checkpoint
        self.due = False

    def after_step(self, trainer: Trainer, tokens_before: int) -> None:
        """Count the step's batch; write a checkpoint when one is due and the SAEs are all finite."""
        self.batches_trained += 1
        total = trainer.config.train.total_tokens
        if crossed(self.cfg.every_tokens, tokens_before, trainer.tokens) and trainer.tokens < total:
            self.due = True
        if self.due:
            self._save_if_finite(trainer)

    def save_final(self, trainer: Trainer) -> None:
        """The end of the run's checkpoint, unless its last step has one already (rank 0 decides)."""
        final_due = trainer.step != self.last_step or not list_checkpoints(self.root)
        if self.coll.broadcast_int(int(final_due)):
            self.save(trainer)

    def save_now(self, trainer: Trainer) -> Path | None:
        """A checkpoint of this step for a run that stops here (a collective), unless the step has
        one or an SAE is in a run of non-finite steps; returns the newest checkpoint's folder (rank 0)."""
        if trainer.step != self.last_step:
            self._save_if_finite(trainer)
        newest = list_checkpoints(self.root) if self.coll.is_writer else []
        return newest[-1] if newest else None

    def _save_if_finite(self, trainer: Trainer) -> None:
        """A checkpoint of this step, unless an SAE is in a run of non-finite steps (a periodic one
        then waits for the next good step)."""
        if not any(m.consecutive_nonfinite for m in trainer.members):
            self.save(trainer)
            self.last_step, self.due = trainer.step, False

    def save(self, trainer: Trainer) -> Path | None:
        """Write a checkpoint of this step (a collective: every rank calls it); its folder on rank 0."""
        data_state = self.data_state()
        if not self.coll.is_writer:
            return None
        self.logger.flush()
        state, tensors = trainer.checkpoint_payload(data_state)
        path = write_checkpoint(self.root, trainer.step, state, tensors)
        prune_checkpoints(self.root, self.cfg.keep_last)
        return path

    def data_state(self) -> dict[str, Any]:
        """Where the data source stands (JSON-able)."""
        if not self.stateful:
            return {"kind": "skip", "batches": self.batches_trained}
        mine = self.data.state_dict()
        if self.coll.distributed:  # every rank's position (they differ when ranks read their own shards)
            states = _gather_json(self.coll, mine)
            if any(st != states[0] for st in states):
                return {"kind": "per_rank", "states": states}
        return {"kind": "state_dict", "state": mine}


def _gather_json(coll: Collectives, obj: Any) -> list[Any]:
    """Every rank's JSON-able `obj`, in rank order (sent as UTF-8 bytes; nothing is unpickled)."""
    raw = torch.frombuffer(bytearray(json.dumps(obj, sort_keys=True).encode()), dtype=torch.uint8)
    pieces, _ = coll._all_gather_padded(raw.to(coll.device))  # type: ignore[attr-defined]
    return [json.loads(bytes(p.cpu().numpy().tobytes()).decode()) for p in pieces]
