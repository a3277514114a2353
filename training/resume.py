"""How a training run starts: from its newest checkpoint, or fresh.

    start = start_run(config, data, out, coll, provenance, resume="auto")
    start.trainer, start.batches, start.holdout_BD, start.resumed_from

Both ways first take the held-out rows (the first `TrainConfig.holdout_tokens` rows of the
stream, not trained on until a source's second pass over its data; or of a separate `holdout`
source, never trained on) and build the `Trainer`. A fresh run seeds the global RNGs and
initialises the SAEs from the held-out rows; a resume checks the config against the
checkpoint's, loads the trainer's state and puts the data source back where the checkpoint
left it (its `load_state_dict`, or by skipping the batches already trained on); a resume whose
held-out rows come from elsewhere than the checkpoint records is refused (`holdout_change`).
Either way the history is cut back to the trainer's step and `config.json` is written.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import torch
from torch import Tensor

from saes.errors import SaesteerError
from saes.fileio import atomic_write_json
from training.checkpoint import CheckpointError, checkpoint_name, list_checkpoints, read_checkpoint
from training.collectives import Collectives
from training.config import RunConfig, config_differences
from training.holdout_cache import holdout_change, holdout_source
from training.initialize import estimate_activation_scale
from training.logs import truncate_history
from training.trainer import ConfigMismatchError, DataError, Trainer, batch_targets, batch_tensor

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"

Checkpoint = tuple[Path, dict[str, Any], dict[str, Tensor]]  # (folder, state, tensors)


class RunStart(NamedTuple):
    trainer: Trainer
    batches: Iterator[Any]  # the training batches, after the held-out rows (and, resumed, the trained ones)
    holdout_BD: Tensor  # the held-out rows, on every rank
    resumed_from: Path | None  # the checkpoint folder (None: a fresh run)
    holdout_targets: Tensor | None = None  # transcoder runs: the held-out rows' targets, paired with holdout_BD


def start_run(config: RunConfig, data: Iterable[Any], out: Path, coll: Collectives, prov: dict[str, Any],
              resume: str, init_source: Any = None, holdout: Iterable[Any] | None = None) -> RunStart:
    """The trainer and the batches of a run in `out`, resumed or fresh as `resume` says
    ("auto", "never": refuse a folder with checkpoints, "require": refuse one without).
    `init_source`: a `training.init_from.InitSource` of `train.init_from` that the caller has
    already read (None: a fresh fine-tuning run reads it here; a resume never does); one given for
    a config without train.init_from, or of another source, is refused before any work.
    `holdout`: batches the held-out rows are drawn from instead of the start of `data` (see `train`)."""
    if init_source is not None and init_source.spec != config.train.init_from:
        raise ValueError(f"start_run: init_source reads {init_source.spec!r}, the config's train.init_from is "
                         f"{config.train.init_from!r}; set train.init_from to it, or pass no init_source")
    found = checkpoint_to_resume(config, out, coll, resume)
    held_from = holdout_source(holdout)
    change = holdout_change(found[1].get("holdout_source"), held_from) if found is not None else None
    if change:
        raise ConfigMismatchError(
            f"cannot resume {found[0]}: {change}; its held-out metrics would be on other rows. Resume with the "
            f"held-out source the run started with, or start a new run in another output folder")
    batches = iter(data)
    holdout_BD, _, holdout_targets = draw_holdout(batches if holdout is None else iter(holdout),
                                                  config.train.holdout_tokens, coll)
    refuse_nonfinite(holdout_BD, prov)
    if holdout_targets is not None:
        refuse_nonfinite(holdout_targets, prov)
    d_out = holdout_targets.shape[1] if holdout_targets is not None else None
    trainer = Trainer(config, holdout_BD.shape[1], collectives=coll, sae_metadata=sae_metadata(prov), d_out=d_out)
    trainer.holdout_source = held_from
    if found is not None:
        batches = resume_from(trainer, found, data, batches, holdout_BD)
    else:
        seed_everything(config.train.seed)
        if config.train.init_from:  # fine-tuning: the source's weights instead of a fresh initialisation
            from training.init_from import InitSource, initialize_from_source

            source = init_source if init_source is not None else InitSource(config.train.init_from)
            trainer.init_from = initialize_from_source(trainer, source.load(), prov, holdout_BD=holdout_BD)
        else:
            trainer.initialize(holdout_BD, holdout_targets)
    if init_source is not None:  # the weights are in the trainer (or the checkpoint's): no copy kept for the run
        init_source.release()
    if coll.is_writer:
        truncate_history(out, trainer.step)
        atomic_write_json(out / CONFIG_FILE, config.to_dict())
    return RunStart(trainer, batches, holdout_BD, found[0] if found is not None else None, holdout_targets)


def checkpoint_to_resume(config: RunConfig, out: Path, coll: Collectives, resume: str) -> Checkpoint | None:
    """The checkpoint a run continues from (None: start fresh), its config checked against `config`."""
    root = out / CHECKPOINT_DIR
    found = find_resume(root, print, coll) if resume != "never" else None
    if resume == "never" and coll.broadcast_int(len(list_checkpoints(root)) if coll.is_writer else 0):
        raise FileExistsError(f"{out} already holds checkpoints of a run; choose another output folder or resume it")
    if resume == "require" and found is None:
        raise FileNotFoundError(f"no checkpoint to resume from in {root}")
    if found is not None:
        diffs = config_differences(found[1]["config"], config.to_dict())
        if diffs:
            raise ConfigMismatchError(
                f"cannot resume {found[0]}: the config differs from the checkpoint's in\n  - " + "\n  - ".join(diffs)
                + "\nuse the original settings (saved in the checkpoint and in config.json), or a new output folder"
            )
    return found


def find_resume(ckpt_root: Path, log: Callable[[str], None], coll: Collectives | None = None) -> Checkpoint | None:
    """The newest readable checkpoint. Data parallel: rank 0 chooses it and every rank reads
    that one (across machines, the output folder must be on a shared filesystem)."""
    coll = coll or Collectives()
    found = None
    if coll.is_writer:
        for path in reversed(list_checkpoints(ckpt_root)):
            try:
                state, tensors = read_checkpoint(path)
            except CheckpointError as e:
                log(f"warning: skipping unreadable checkpoint: {e}")
                continue
            found = path, state, tensors
            break
    if not coll.distributed:
        return found
    step = coll.broadcast_int(int(found[1]["step"]) if found is not None else -1)
    if step < 0 or coll.is_writer:
        return found
    path = ckpt_root / checkpoint_name(step)
    if not path.is_dir():
        raise CheckpointError(f"rank {coll.rank}: rank 0 resumes from {path.name}, which this machine cannot see at {path}; "
                              f"put the output folder on a filesystem every machine shares")
    state, tensors = read_checkpoint(path)
    return path, state, tensors


def resume_from(trainer: Trainer, found: Checkpoint, data: Iterable[Any], batches: Iterator[Any],
                holdout_BD: Tensor) -> Iterator[Any]:
    """Load the checkpoint into `trainer`; returns the batches after those it had trained on."""
    path, state, tensors = found
    data_state = trainer.restore(state, tensors)
    fresh_scale = estimate_activation_scale(holdout_BD) if trainer.config.train.normalize_activations else 1.0
    from_data = not trainer.config.train.init_from or trainer.is_transcoder  # fine-tuned SAEs: the source's scale
    if from_data and not math.isclose(fresh_scale, trainer.scale, rel_tol=1e-6):
        print(f"warning: the data's held-out rows differ from the original run's (scale {fresh_scale:.6g} vs "
              f"{trainer.scale:.6g}); is it the same data source and seed?")
    if data_state.get("kind") not in ("state_dict", "per_rank"):  # a source without state: replay and skip
        for _ in range(int(data_state["batches"])):
            if next(batches, None) is None:
                break
        return batches
    if not (hasattr(data, "state_dict") and hasattr(data, "load_state_dict")):
        raise CheckpointError("the checkpoint stores a reader position but this data source has no load_state_dict()")
    try:
        data.load_state_dict(_reader_position(data_state, trainer.coll))  # type: ignore[attr-defined]
    except SaesteerError as e:
        raise ConfigMismatchError(f"cannot resume {path}: {e.message}", field=e.field) from None
    return iter(data)


def _reader_position(data_state: dict[str, Any], coll: Collectives) -> dict[str, Any]:
    """This rank's saved reader position."""
    if data_state["kind"] != "per_rank":
        return data_state["state"]
    states = data_state["states"]
    if len(states) != coll.world_size:
        raise CheckpointError(
            f"the checkpoint holds the reader positions of {len(states)} ranks, each reading its own shards; resume "
            f"with {len(states)} processes (torchrun --nproc-per-node ...), or start a new run")
    return states[coll.rank]


def draw_holdout(it: Iterator[Any], rows: int, coll: Collectives | None = None) -> tuple[Tensor, int, Tensor | None]:
    """The first `rows` rows of the (global) stream, on every rank, the batches drawn here, and
    (transcoder batches, with `.targets`) the same rows' targets.

    Data parallel: each rank draws batches until the global batches drawn hold `rows` rows; the
    ranks' rows are gathered and put back in global-batch order (batch 0 of rank 0, of rank 1,
    ..., batch 1 of rank 0, ...), so the held-out set is the one a single process reading the
    same global batches would take."""
    coll = coll or Collectives()
    parts, target_parts, n, batches = [], [], 0, 0
    while n < rows:
        batch = next(it, None)
        if not coll.all_true(batch is not None):
            break
        x = batch_tensor(batch)
        parts.append(x.to("cpu", torch.float32))
        y = batch_targets(batch)
        if y is not None:
            target_parts.append(y.to("cpu", torch.float32))
        n += coll.global_rows(x.shape[0])
        batches += 1
    if n == 0:
        raise ValueError("the data source yielded no batches; check the cache / dataset")
    # inputs and targets side by side: one gather keeps them paired
    width = parts[0].shape[1]
    local_BD = torch.cat([torch.cat(parts)] + ([torch.cat(target_parts)] if target_parts else []), dim=1)
    if coll.distributed:
        sizes = {p.shape[0] for p in parts}
        gathered_BD = coll.gather_rows(local_BD.to(coll.device)).cpu()  # type: ignore[attr-defined]
        W = coll.world_size
        if len(sizes) == 1 and gathered_BD.shape[0] == W * local_BD.shape[0]:
            b = parts[0].shape[0]
            gathered_BD = gathered_BD.view(W, batches, b, -1).transpose(0, 1).reshape(-1, local_BD.shape[1])
        local_BD = gathered_BD
    local_BD = local_BD[:rows]
    return local_BD[:, :width], batches, (local_BD[:, width:] if target_parts else None)


def refuse_nonfinite(holdout_BD: Tensor, prov: dict[str, Any]) -> None:
    """A `DataError` when held-out rows hold NaN or Inf (an overflowed or corrupt cache)."""
    if bool(torch.isfinite(holdout_BD).all()):
        return
    bad = int((~torch.isfinite(holdout_BD)).any(dim=1).sum())
    raise DataError(
        f"{bad} of the first {holdout_BD.shape[0]:,} rows of the data (held out for scaling and evaluation) hold "
        f"NaN or infinite activations{' (from ' + str(prov['cache']) + ')' if prov.get('cache') else ''}: the "
        f"activations overflowed when they were cached (fp16?) or the cache is corrupt; rebuild it (e.g. with "
        f"dtype bf16 or fp32)")


def seed_everything(seed: int) -> None:
    """Seed the global RNGs (python, numpy, torch) at the start of a fresh run; a resume restores
    their saved states instead. Nothing in the trainer draws from them, but user code may."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sae_metadata(prov: dict[str, Any]) -> dict[str, Any]:
    """What each SAE's config records about its data (SAELens's field names) from the provenance."""
    # model_name: the name SAELens users load the model by (hub name, local path), else our id
    keys = {"model_name": "model_name" if prov.get("model_name") else "model", "hook_name": "hook_name",
            "hook_name_out": "hook_name_out",  # a transcoder's target hook (SAELens's field)
            "context_size": "context_size", "prepend_bos": "prepend_bos", "dataset_path": "dataset"}
    meta = {k: prov[src] for k, src in keys.items() if prov.get(src) is not None}
    if prov.get("model_identity") is not None:  # how to load the model: raw weights, or processed (SAELens's hint)
        from saes.identity import ModelIdentity

        meta["model_from_pretrained_kwargs"] = ModelIdentity.from_json(prov["model_identity"]).saelens_load_kwargs
    return meta
