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

wandb is imported only when asked for; its x axis is `tokens`.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

HISTORY_FILE = "history.jsonl"


def read_history(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(out_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
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
        self._file = open(out_dir / HISTORY_FILE, "a", buffering=1) if enabled else None  # line-buffered: tail -f works
        self._bar = None
        self._wandb = None
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
            flat = {k: v for k, v in rec.items() if isinstance(v, (int, float)) and k != "step"}
            prefix = "" if rec.get("kind") == "train" else f"{rec.get('kind')}/"
            self._wandb.log({("tokens" if k == "tokens" else prefix + k): v for k, v in flat.items()})

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

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _start_wandb(out_dir: Path, *, project: str, entity: str | None, name: str | None, config: dict[str, Any]):
    try:
        import wandb
    except ImportError:
        raise RuntimeError("wandb logging was asked for (--wandb) but wandb is not installed: pip install wandb") from None
    id_file = out_dir / "wandb_run_id.txt"
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(6)
    if not id_file.is_file():
        id_file.write_text(run_id + "\n")
    run = wandb.init(
        project=project, entity=entity, name=name or out_dir.name, id=run_id, resume="allow",
        dir=str(out_dir), config=config,
    )
    run.define_metric("tokens")
    run.define_metric("*", step_metric="tokens")
    return run
