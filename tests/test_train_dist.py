"""Data-parallel training under torchrun (2 processes, gloo, CPU).

- 2 ranks give the same SAEs as one process trained on the same global batches (the reader
  splits each global batch of --batch-size rows over the ranks; BatchTopK selects over the
  global batch; gradients, firing counts and threshold statistics are reduced over ranks).
  Tolerance: |w2 - w1| <= 1e-5 + 1e-5 |w1| per weight after 24 Adam steps (the ranks' matmuls
  and the gradient all-reduce sum in another order than one process; measured: at most 1.2e-7
  on weights of size ~0.7); the BatchTopK / Matryoshka inference thresholds to the same tolerance.
- kill -9 of the 2-process run mid-training, then the same command again, resumes from the
  checkpoint and ends bit-identical to the uninterrupted 2-process run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers.fake_cache import make_fake_cache

pytestmark = pytest.mark.dist

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "helpers" / "dist_child.py"
SAES = ("topk_k4_f64", "batchtopk_k4_f64", "matryoshka_batchtopk_k4_f64")
BATCH, STEPS = 64, 24


def train_args(cache: Path, out: Path) -> list[str]:
    return [
        "train", "--cache", str(cache), "--out", str(out), "--architecture", "topk,batchtopk,matryoshka",
        "--k", "4", "--d-sae", "64", "--matryoshka-widths", "16,64", "--batch-size", str(BATCH),
        "--total-tokens", str(STEPS * BATCH), "--holdout-tokens", "128", "--dead-tokens", "64",
        "--lr", "3e-3", "--step-method", "fast", "--num-threads", "1", "--checkpoint-every-tokens", str(8 * BATCH),
        "--eval-every-tokens", "0", "--log-every", "4", "--progress", "false", "--model-eval", "false",
        "--reader-buffer-rows", "512",
    ]


def env() -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e.pop("WORLD_SIZE", None)
    return e


def torchrun(args: list[str], hang_at: int | None = None, **kw) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(CHILD)]
    if hang_at is not None:
        cmd += ["--hang-at", str(hang_at)]
    return cmd + ["--"] + args


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{' '.join(cmd)}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}"
    return p


def weights(out: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(out / "saes" / name / "sae_weights.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("dist")
    # gaussian rows: no near-ties at the BatchTopK cut, so both runs select the same latents
    cache = make_fake_cache(tmp / "cache", shard_rows=[400, 300, 500, 350], d_in=16, seed=5).path
    one, two = tmp / "one", tmp / "two"
    run([sys.executable, "-m", "saesteer", *train_args(cache, one)])
    run(torchrun(train_args(cache, two)))
    return {"cache": cache, "one": one, "two": two}


def test_two_ranks_equal_one_process_on_the_same_global_batches(runs) -> None:
    m1 = json.loads((runs["one"] / "metrics.json").read_text())
    m2 = json.loads((runs["two"] / "metrics.json").read_text())
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    assert m1["tokens_trained"] == m2["tokens_trained"] == STEPS * BATCH
    assert m1["activation_scale"] == pytest.approx(m2["activation_scale"], rel=1e-6)
    for name in SAES:
        w1, w2 = weights(runs["one"], name), weights(runs["two"], name)
        assert w1.keys() == w2.keys()
        for key in w1:
            torch.testing.assert_close(w2[key], w1[key], rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}/{key}: {m}")
        # the weights moved far from any tolerance: the comparison means something
        assert (weights(runs["one"], name)["W_dec"] - w1["W_dec"]).abs().max() == 0
        s1, s2 = m1["saes"][name], m2["saes"][name]
        for metric in ("explained_variance", "l0", "dead_fraction"):
            assert s2[metric] == pytest.approx(s1[metric], rel=1e-3, abs=1e-3), (name, metric)
    # dead latents existed during the run (the AuxK path and the summed firing counters were exercised)
    hist = [json.loads(line) for line in (runs["two"] / "history.jsonl").read_text().splitlines()]
    assert any(r.get("batchtopk_k4_f64/dead_fraction", 0) > 0 for r in hist if r["kind"] == "train")
    # only rank 0 wrote: one set of SAE folders, one history
    assert sorted(p.name for p in (runs["two"] / "saes").iterdir()) == sorted(SAES)


@pytest.mark.slow
def test_kill_9_of_the_two_rank_run_then_resume_is_bit_identical(runs, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = torchrun(train_args(runs["cache"], out), hang_at=12)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    marks = [out / "hanging.0", out / "hanging.1"]
    try:
        deadline = time.monotonic() + 240
        while not all(m.exists() and m.read_text() for m in marks):
            assert proc.poll() is None, proc.stdout.read().decode()[-4000:] if proc.stdout else ""
            assert time.monotonic() < deadline, "the 2-rank run never reached step 12"
            time.sleep(0.2)
    finally:
        for m in marks:  # both workers (torchrun gives them their own sessions) ...
            if m.exists() and m.read_text():
                try:
                    os.kill(int(m.read_text()), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        os.killpg(proc.pid, signal.SIGKILL)  # ... and the launcher: no clean-up anywhere
        proc.wait(timeout=60)
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts and ckpts[-1].endswith("0000000008"), ckpts  # step 8 written, step 16 not reached
    assert not (out / "saes").exists()

    p = run(torchrun(train_args(runs["cache"], out)))
    assert "resumed from" in p.stdout + p.stderr
    for name in SAES:
        w_resumed, w_straight = weights(out, name), weights(runs["two"], name)
        for key in w_straight:
            assert torch.equal(w_resumed[key], w_straight[key]), f"{name}/{key} differs after the resume"
