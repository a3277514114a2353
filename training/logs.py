"""What a run tells while it runs: the history file, the progress bar and wandb.

`history.jsonl` in the output folder holds one JSON object per line:
    {"kind": "train", "step", "tokens", "lr_factor", "tokens_per_second", "<sae>/loss", "<sae>/mse",
     "<sae>/aux", "<sae>/fvu", "<sae>/l0", "<sae>/dead_fraction", "<sae>/grad_norm", "<sae>/lr",
     ["<sae>/level_mse": [..]]}
    {"kind": "eval", "step", "tokens", "<sae>/<metric>": ...}   (see training.evaluate)
    {"kind": "skip", "step", "tokens", "sae", "loss", "grad_norm"}   a non-finite step, skipped
The last line of a finished run is {"kind": "eval", "final": true, ...}: the saved SAEs' metrics.
Training losses are in the normalised units the SAE trains in (inputs scaled to E||x|| =
sqrt(d_in)); evaluation figures are in raw units. On resume, lines after the checkpoint's step
are dropped, so the file always describes one consistent run.

The records are made here (`train_record`, `eval_record`); `StepLog` decides when: a train
record every `LogConfig.log_every` steps and at the last step, a skip record for each skipped
step (and `NonFiniteError` after `TrainConfig.max_nonfinite` in a row).

wandb is imported only when asked for; its x axis is `tokens`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from training.schedule import lr_factor

if TYPE_CHECKING:
    from training.config import RunConfig
    from training.trainer import Trainer
    from training.update import StepStats

HISTORY_FILE = "history.jsonl"


def read_history(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(out_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash ends the readable history
    return records


def truncate_history(out_dir: str | os.PathLike, last_step: int) -> None:
    """Keep only records up to `last_step` (a resume replays what came after)."""
    path = Path(out_dir) / HISTORY_FILE
    if not path.exists():
        return
    write_history(out_dir, [r for r in read_history(out_dir) if int(r.get("step", 0)) <= last_step])


def write_history(out_dir: str | os.PathLike, records: list[dict[str, Any]]) -> None:
    """Replace the history with `records` (atomically)."""
    from saes.fileio import atomic_write_bytes

    atomic_write_bytes(Path(out_dir) / HISTORY_FILE, "".join(json.dumps(r) + "\n" for r in records).encode())


class RunLogger:
    """History file + optional tqdm bar + optional wandb run. Only the writing rank makes one."""

    def __init__(
        self,
        out_dir: Path,
        *,
        total_tokens: int,
        start_tokens: int,
        progress: bool,
        wandb_cfg: dict[str, Any] | None = None,
        enabled: bool = True,
    ) -> None:
        self.out_dir = out_dir
        self.enabled = enabled
        self._file = open(out_dir / HISTORY_FILE, "a", buffering=1, encoding="utf-8") if enabled else None  # line-buffered: tail -f works
        self._bar = None
        self._wandb = None
        self._exit_code = 0  # wandb's exit code of the run (a stopped run: 128 + the signal's number)
        if enabled and progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_tokens, initial=start_tokens, unit="tok", unit_scale=True, dynamic_ncols=True,
                desc="train", smoothing=0.1,
            )
        if enabled and wandb_cfg is not None:
            self._wandb = _start_wandb(out_dir, **wandb_cfg)

    def record(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        assert self._file is not None
        self._file.write(json.dumps(rec) + "\n")
        if self._wandb is not None:
            # the trainer's step as wandb's step: a resumed run (same run id) goes on from where the
            # checkpoint was, also offline, where wandb cannot ask the server and would start again at 0
            self._wandb.log(wandb_point(rec), step=int(rec["step"]) if "step" in rec else None)

    def final(self, rec: dict[str, Any]) -> None:
        """The end-of-run evaluation (an "eval" record: held-out EV, MSE, L0, dead, CE loss recovered,
        KL) to wandb, as a last point of the eval curves and in the run's summary (the history file
        gets it from `finish_run`)."""
        if self._wandb is not None:
            values = wandb_point(rec)
            self._wandb.log(values, step=int(rec["step"]))
            self.summary(values)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def advance(self, n_tokens: int, postfix: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            self._bar.update(n_tokens)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def summary(self, values: dict[str, Any]) -> None:
        if self._wandb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._wandb.summary[k] = v

    def preempted(self, signum: int) -> None:
        """The run stops early, to be resumed (a stop signal): wandb marks it preempting, and `close`
        ends it with the exit code a shell gives (128 + the signal's number), not as finished."""
        self._exit_code = 128 + signum
        if self._wandb is not None:
            with contextlib.suppress(Exception):  # an old wandb without it: the run is closed all the same
                self._wandb.mark_preempting()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None
        if self._wandb is not None:
            self._wandb.finish(exit_code=self._exit_code)
            self._wandb = None


def wandb_point(rec: dict[str, Any]) -> dict[str, Any]:
    """What wandb gets of a history record: its numbers (`scalars`: a flag such as "final" is no
    metric) except the step (wandb's own step), under "<kind>/" for all but train records, with
    `tokens` (the x axis) as it is."""
    prefix = "" if rec.get("kind") == "train" else f"{rec.get('kind')}/"
    return {("tokens" if k == "tokens" else prefix + k): v for k, v in scalars(rec).items() if k != "step"}


def _start_wandb(out_dir: Path, *, project: str, entity: str | None, name: str | None, config: dict[str, Any]):
    from saes.errors import SaesteerError

    try:
        import wandb
    except ImportError:
        raise SaesteerError("wandb logging was asked for (LogConfig.wandb) but wandb is not installed: "
                            "pip install wandb") from None
    id_file = out_dir / "wandb_run_id.txt"
    run_id = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else secrets.token_hex(6)
    if not id_file.is_file():
        from saes.fileio import atomic_write_bytes

        atomic_write_bytes(id_file, (run_id + "\n").encode())
    try:
        run = wandb.init(
            project=project, entity=entity, name=name or out_dir.name, id=run_id, resume="allow",
            dir=str(out_dir), config=config,
        )
    except wandb.errors.Error as e:  # not logged in, a wrong key or entity, no connection
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SaesteerError(f"wandb could not start a run ({first}); log in with `wandb login`, or set "
                            f"WANDB_MODE=offline to log on disk and `wandb sync` later, or set LogConfig.wandb to false") from None
    run.define_metric("tokens")
    run.define_metric("*", step_metric="tokens")
    return run


def tokens_at_end(config: RunConfig, start_tokens: int) -> int:
    """The training tokens a run from `start_tokens` ends at when the data lasts: whole batches until
    total_tokens is reached (1,003,520 for 1,000,000 at batch size 4,096), the progress bar's total."""
    batch, left = config.train.batch_size, max(0, config.train.total_tokens - start_tokens)
    return start_tokens + -(-left // batch) * batch


def open_run_logger(config: RunConfig, out_dir: Path, prov: dict[str, Any], start_tokens: int,
                    enabled: bool) -> RunLogger:
    """The run's logger as `config.log` asks (wandb records the config and the data's provenance)."""
    wandb_cfg = None
    if config.log.wandb:
        wandb_cfg = {"project": config.log.wandb_project, "entity": config.log.wandb_entity,
                     "name": config.log.wandb_name, "config": {**config.to_dict(), "data": prov}}
    return RunLogger(out_dir, total_tokens=tokens_at_end(config, start_tokens), start_tokens=start_tokens,
                     progress=config.log.progress, wandb_cfg=wandb_cfg, enabled=enabled)


class StepLog:
    """What the run logs after each step (see the module doc)."""

    def __init__(self, trainer: Trainer, logger: RunLogger, ckpt_root: Path) -> None:
        self.trainer = trainer
        self.logger = logger
        self.ckpt_root = ckpt_root  # named when non-finite steps stop the run
        self.last = (time.perf_counter(), trainer.tokens)  # (time, tokens) of the last train record

    def after_step(self, x_BD: Tensor, stats: dict[str, StepStats], tokens_before: int) -> None:
        t = self.trainer
        self._skips(stats)
        if t.step % t.config.log.log_every == 0 or t.tokens >= t.config.train.total_tokens:
            now = time.perf_counter()
            rate = (t.tokens - self.last[1]) / max(now - self.last[0], 1e-9)
            self.last = (now, t.tokens)
            rec = train_record(t, x_BD, stats, rate)
            self.logger.record(rec)
            first = t.members[0].name
            self.logger.advance(0, {"loss": f"{rec.get(f'{first}/loss', float('nan')):.4g}",
                                    "fvu": f"{rec.get(f'{first}/fvu', float('nan')):.3f}"})
        self.logger.advance(t.tokens - tokens_before)

    def _skips(self, stats: dict[str, StepStats]) -> None:
        t = self.trainer
        for m in t.members:
            st = stats[m.name]
            if not st.skipped:
                continue
            loss, norm = float(st.loss), float(st.grad_norm)
            self.logger.record({"kind": "skip", "step": t.step, "tokens": t.tokens, "sae": m.name, "loss": loss,
                                "grad_norm": norm})
            self.logger.message(f"step {t.step}: {m.name} had a non-finite loss ({loss}) or gradient norm ({norm}); "
                                f"step skipped ({m.consecutive_nonfinite} in a row)")
            if m.consecutive_nonfinite >= t.config.train.max_nonfinite:
                raise _nonfinite_error(t, m.name, m.consecutive_nonfinite, self.ckpt_root)


def _nonfinite_error(t: Trainer, name: str, in_a_row: int, ckpt_root: Path) -> Exception:
    from training.checkpoint import list_checkpoints
    from training.trainer import NonFiniteError

    last = list_checkpoints(ckpt_root)
    where = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint had been written yet"
    return NonFiniteError(
        f"{name}: {in_a_row} consecutive non-finite steps (train.max_nonfinite={t.config.train.max_nonfinite}) at "
        f"step {t.step}; stopping. {where}. Check the data for NaN/Inf activations, or lower the learning rate / "
        f"enable --grad-clip."
    )


def global_losses(trainer: Trainer, x_BD: Tensor, stats: dict[str, StepStats]) -> tuple[float, dict[str, list[float]]]:
    """The batch variance and (loss, mse, aux) of every SAE over the global batch: local row
    means weighted by rows and summed over ranks (one all-reduce; identity in one process)."""
    coll = trainer.coll
    x = x_BD.double()
    n = x.shape[0]
    if not coll.distributed:
        var = float((x - x.mean(0)).pow(2).sum(1).mean())
        return var, {m.name: [float(stats[m.name].loss), float(stats[m.name].mse), float(stats[m.name].aux)]
                     for m in trainer.members}
    head = [torch.tensor([float(n), float(x.pow(2).sum())], dtype=torch.float64, device=x.device), x.sum(0)]
    per = [torch.stack([stats[m.name].loss, stats[m.name].mse, stats[m.name].aux]).double().to(x.device) * n
           for m in trainer.members]
    buf = coll.sum_(torch.cat(head + per))
    N, S2, S1 = float(buf[0]), float(buf[1]), buf[2 : 2 + x.shape[1]]
    var = S2 / N - float(S1.pow(2).sum()) / N**2
    off = 2 + x.shape[1]
    return var, {m.name: [float(v) / N for v in buf[off + 3 * i : off + 3 * i + 3]] for i, m in enumerate(trainer.members)}


def train_record(trainer: Trainer, x_BD: Tensor, stats: dict[str, StepStats], rate: float) -> dict[str, Any]:
    """The "train" record of the step just taken (see the module doc)."""
    var, losses = global_losses(trainer, x_BD, stats)
    factor = lr_factor(trainer.step - 1, trainer.total_steps, trainer.config.optim)
    rec: dict[str, Any] = {"kind": "train", "step": trainer.step, "tokens": trainer.tokens, "lr_factor": factor,
                           "tokens_per_second": rate}
    for m in trainer.members:
        st = stats[m.name]
        p = f"{m.name}/"
        loss, mse, aux = losses[m.name]
        rec.update({p + "loss": loss, p + "mse": mse, p + "aux": aux,
                    p + "fvu": mse / var if var > 0 else float("nan"), p + "grad_norm": float(st.grad_norm),
                    p + "dead_fraction": trainer.dead_fraction(m), p + "lr": m.lr * factor})
        if st.fired_F is not None:
            rec[p + "l0"] = float(st.fired_F.sum()) / max(1, trainer.coll.global_rows(x_BD.shape[0]))
        if st.level_mse is not None:
            rec[p + "level_mse"] = [float(v) for v in st.level_mse]
    return rec


def eval_record(trainer: Trainer, ev: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """An "eval" record: each SAE's metrics (`Trainer.evaluate`) under `<sae>/<metric>`."""
    rec: dict[str, Any] = {"kind": "eval", "step": trainer.step, "tokens": trainer.tokens}
    for name, metrics in ev.items():
        for k, v in metrics.items():
            rec[f"{name}/{k}"] = v
    return rec


def scalars(d: dict[str, Any]) -> dict[str, Any]:
    """The int and float entries of `d` (what a history record keeps of a metrics dict)."""
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
