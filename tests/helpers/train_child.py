"""A tiny training run in its own process, for the kill -9 / resume tests.

    python tests/helpers/train_child.py OUT_DIR [--hang-at STEP] [--total-batches N] [--die-in-final-save]

With --hang-at, the run writes OUT_DIR/hanging (holding the step) after that step and sleeps,
so the parent can SIGKILL it at a known point. With --die-in-final-save, the process kills itself
(SIGKILL) while writing the first SAE folder at the end. Threads are fixed to 1 (bit-identical runs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from training.config import CheckpointConfig, EvalConfig, LogConfig, RunConfig, SAESpec, TrainConfig  # noqa: E402
from training.synthetic import SyntheticActivations  # noqa: E402
from training.run import train  # noqa: E402

D_IN, BATCH = 32, 256


def run_config(total_batches: int = 40, k: int = 4) -> RunConfig:
    return RunConfig(
        saes=[
            SAESpec("topk", d_sae=128, k=k),
            SAESpec("batchtopk", d_sae=128, k=k),
            SAESpec("matryoshka_batchtopk", d_sae=128, k=k, matryoshka_widths=[16, 64, 128]),
            SAESpec("jumprelu", d_sae=128),  # its thresholds: a param group of their own (not at the default LR)
        ],
        train=TrainConfig(
            total_tokens=total_batches * BATCH, batch_size=BATCH, dead_tokens=2048, holdout_tokens=512, num_threads=1,
            jumprelu_threshold_lr=0.02,
        ),
        checkpoint=CheckpointConfig(every_tokens=4 * BATCH, keep_last=2),
        eval=EvalConfig(every_tokens=8 * BATCH),
        log=LogConfig(log_every=5, progress=False),
    )


def source() -> SyntheticActivations:
    return SyntheticActivations(D_IN, BATCH, seed=3, n_features=96, active=4)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--hang-at", type=int, default=None)
    ap.add_argument("--total-batches", type=int, default=40)
    ap.add_argument("--die-in-final-save", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    if args.die_in_final_save:
        import os
        import signal

        import saes.io

        real = saes.io.atomic_write_json

        def die(path, obj):
            if Path(path).name == "cfg.json":  # weights and saesteer.json are written; the folder is temporary
                os.kill(os.getpid(), signal.SIGKILL)
            real(path, obj)

        saes.io.atomic_write_json = die

    def on_step(trainer) -> None:
        if args.hang_at is not None and trainer.step == args.hang_at:
            (out / "hanging").write_text(str(trainer.step))
            time.sleep(600)

    train(run_config(args.total_batches), source(), out, on_step=on_step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
