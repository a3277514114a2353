"""A tiny training run in its own process, for the kill -9 / resume tests.

    python tests/helpers/train_child.py OUT_DIR [--hang-at STEP] [--total-batches N] [--die-in-final-save]
    python tests/helpers/train_child.py cli STEP train --out OUT_DIR ...   # `saesteer train ...`, hanging at STEP
    TRAIN_CHILD_DIE_IN_CHECKPOINT=S python tests/helpers/train_child.py cli 0 train ...  # killed writing step S
    python tests/helpers/train_child.py cli-signal STEP train --out OUT_DIR ...  # waiting for a stop signal at STEP

With --hang-at, the run writes OUT_DIR/hanging (holding the step) after that step and sleeps,
so the parent can SIGKILL it at a known point (`kill_when_hanging`). With --die-in-final-save, the process kills itself
(SIGKILL) while writing the first SAE folder at the end. Threads are fixed to 1 (bit-identical runs).
`cli-signal` writes OUT_DIR/hanging after STEP (0: never) and waits there until a stop signal (SIGTERM,
SIGINT, SIGHUP) is noted (`signal_when_waiting`); every step it trains is appended to OUT_DIR/steps_trained.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # stop_child

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


def hang_at(out: Path, step: int):
    """An on_step that writes OUT_DIR/hanging (holding the step) after `step` and sleeps."""

    def on_step(trainer) -> None:
        if trainer.step == step:
            (out / "hanging").write_text(str(trainer.step))
            time.sleep(600)

    return on_step


def kill_when_hanging(args: list[str], out: Path, env: dict[str, str]) -> None:
    """The parent's side: this script with `args` in its own process, SIGKILLed once it writes
    OUT/hanging; the test fails if it exits before or never gets there."""
    import signal
    import subprocess

    import pytest

    proc = subprocess.Popen([sys.executable, __file__, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (out / "hanging").exists():
            if proc.poll() is not None:
                pytest.fail(f"the run exited early: {proc.stderr.read().decode()[-3000:]}")
            assert time.monotonic() < deadline, "the run never reached the hang point"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def wait_for_stop_at(out: Path, step: int):
    """An on_step that appends each step to OUT_DIR/steps_trained, and after `step` writes
    OUT_DIR/hanging and waits until a stop signal is noted (the loop then checkpoints and stops)."""
    from stop_child import wait_for_stop

    def on_step(trainer) -> None:
        with open(out / "steps_trained", "a") as f:
            f.write(f"{trainer.step}\n")
        if trainer.step == step:
            wait_for_stop(out / "hanging")

    return on_step


def signal_when_waiting(argv: list[str], step: int, out: Path, env: dict[str, str], signum: int):
    """The parent's side of `cli-signal`: `saesteer ARGV` in its own process, sent `signum` once its
    training waits after `step`; returns the finished process (stdout, stderr as text)."""
    from stop_child import signal_when_waiting as signal_child

    return signal_child([sys.executable, __file__, "cli-signal", str(step), *argv], out / "hanging", env, signum)


def main_cli(step: int, argv: list[str], wait_for_signal: bool = False) -> int:
    """The `saesteer` command `argv` as a user runs it, its training hanging after `step` (the
    checkpoints written by then are on disk) for the parent to SIGKILL."""
    import training.run

    from saesteer.cli import main as saesteer

    real = training.run.train  # the command imports it when it runs

    out = Path(argv[argv.index("--out") + 1])

    def hanging(*a, **kw):
        return real(*a, on_step=(wait_for_stop_at if wait_for_signal else hang_at)(out, step), **kw)

    training.run.train = hanging
    die_at = os.environ.get("TRAIN_CHILD_DIE_IN_CHECKPOINT")
    if die_at:  # SIGKILL inside the checkpoint of that step: its tensors written, its state not (a temporary folder)
        import signal

        import training.checkpoint as ckpt

        real_json = ckpt.atomic_write_json

        def die(path, obj):
            if Path(path).name == ckpt.STATE_FILE and obj.get("step") == int(die_at):
                os.kill(os.getpid(), signal.SIGKILL)
            real_json(path, obj)

        ckpt.atomic_write_json = die
    return saesteer(argv)


def main() -> int:
    if sys.argv[1] in ("cli", "cli-signal"):
        return main_cli(int(sys.argv[2]), sys.argv[3:], wait_for_signal=sys.argv[1] == "cli-signal")
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

    on_step = None if args.hang_at is None else hang_at(out, args.hang_at)
    train(run_config(args.total_batches), source(), out, on_step=on_step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
