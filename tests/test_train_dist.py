"""Data-parallel training under torchrun (2 processes, gloo, CPU), for SAEs (TopK, BatchTopK,
Matryoshka, JumpReLU) and, on a paired cache, transcoders (BatchTopK and JumpReLU skip
transcoders: the target's own scale, held-out targets gathered beside the inputs, W_skip).

- `--dp-partition rows`: 2 ranks give the same SAEs as one process with the same --batch-size
  (the reader splits each global batch over the ranks; BatchTopK selects over the global batch;
  gradients, firing counts and threshold statistics are reduced over ranks).
- `--dp-partition shards` (the default): each rank reads its own shards; the result equals one
  process trained on the same global batches (the two ranks' batches concatenated, in-process).
  Tolerance for both: |w2 - w1| <= 1e-5 + 1e-5 |w1| per weight after 24 Adam steps (the ranks'
  matmuls and the gradient all-reduce add in another order than one process; measured: at most
  1.2e-7 on weights of size ~0.7); inference thresholds the same. With per-rank BatchTopK
  selection instead of the global one the rows test fails (differences ~2e-2).
- kill -9 of the whole 2-process run (launcher and both workers) mid-training, then the same
  command again, resumes from the checkpoint (each rank its own reader position) and ends
  bit-identical to the uninterrupted 2-process run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from safetensors.torch import load_file

from helpers.fake_cache import make_fake_cache

pytestmark = pytest.mark.dist

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "helpers" / "dist_child.py"
BATCH, STEPS = 64, 24
SHARD_ROWS = [400, 300, 500, 350, 250]
H_IN, H_OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"  # the transcoder pair's hooks (widths 16, 12)


class Case(NamedTuple):
    sae_args: tuple[str, ...]  # the SAE (and hook) flags
    saes: tuple[str, ...]  # the SAEs the run trains; the first has dead latents during the run


CASES = {
    "saes": Case(("--architecture", "topk,batchtopk,matryoshka,jumprelu", "--k", "4", "--matryoshka-widths", "16,64"),
                 ("batchtopk_k4_f64", "topk_k4_f64", "matryoshka_batchtopk_k4_f64", "jumprelu_f64")),
    "transcoder": Case(("--hook", H_IN, "--target-hook", H_OUT, "--architecture", "batchtopk,jumprelu", "--k", "4",
                        "--skip"), ("batchtopk_k4_f64_skip", "jumprelu_f64_skip")),
    # fine-tuning SAELens's JumpReLU skip transcoder (--init-from added by its test; the SAE flags are the source's)
    "transcoder_init": Case(("--hook", H_IN, "--target-hook", H_OUT), ("jumprelu_f48_skip",)),
}
RUN_CASES = ("saes", "transcoder")  # the cases every check runs


def train_args(case: str, cache: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--cache", str(cache), "--out", str(out), *CASES[case].sae_args,
        *(("--d-sae", "64") if case != "transcoder_init" else ()), "--batch-size", str(BATCH),
        "--total-tokens", str(STEPS * BATCH), "--holdout-tokens", "128", "--dead-tokens", "64",
        "--lr", "3e-3", "--step-method", "fast", "--num-threads", "1", "--checkpoint-every-tokens", str(8 * BATCH),
        "--eval-every-tokens", "0", "--log-every", "4", "--no-progress", "--model-eval", "false",
        "--reader-buffer-rows", "512", *extra,
    ]


def env() -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for v in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(v, None)
    return e


def torchrun(args: list[str], hang_at: int | None = None, wait_at: int | None = None) -> list[str]:
    """`torchrun --standalone --nproc-per-node 2 -m saesteer ARGS` (the user's command), or the
    child that stops at a step for the kill test (hang_at) or waits there for a stop signal (wait_at)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    if hang_at is not None:
        return cmd + [str(CHILD), "--hang-at", str(hang_at), "--"] + args
    if wait_at is not None:
        return cmd + [str(CHILD), "--wait-at", str(wait_at), "--"] + args
    return cmd + ["-m", "saesteer"] + args


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{' '.join(cmd)}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}"
    return p


def weights(out: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(out / "saes" / name / "sae_weights.safetensors"))


def assert_same_saes(case: str, one: Path, two: Path) -> None:
    names = CASES[case].saes
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m2["world_size"] == 2
    assert m1["tokens_trained"] == m2["tokens_trained"] == STEPS * BATCH
    assert m1["activation_scale"] == pytest.approx(m2["activation_scale"], rel=1e-6)
    assert ("target_activation_scale" in m1) == ("target_activation_scale" in m2)  # transcoders: the target's own
    assert m1.get("target_activation_scale", 1) == pytest.approx(m2.get("target_activation_scale", 1), rel=1e-6)
    for name in names:
        w1, w2 = weights(one, name), weights(two, name)
        assert w1.keys() == w2.keys()
        for key in w1:
            torch.testing.assert_close(w2[key], w1[key], rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}/{key}: {m}")
        for metric in ("explained_variance", "l0", "dead_fraction"):
            assert m2["saes"][name][metric] == pytest.approx(m1["saes"][name][metric], rel=1e-3, abs=1e-3), (name, metric)
    # dead latents existed during the run: AuxK and the summed firing counters were exercised
    hist = [json.loads(line) for line in (two / "history.jsonl").read_text().splitlines()]
    assert any(r.get(f"{names[0]}/dead_fraction", 0) > 0 for r in hist if r["kind"] == "train")
    # only rank 0 wrote: one set of SAE folders
    assert sorted(p.name for p in (two / "saes").iterdir()) == sorted(names)
    if case.startswith("transcoder"):  # predicting the target hook, with the skip term
        assert all(m2["saes"][n]["d_out"] == 12 and m2["saes"][n]["target_hook"] == H_OUT for n in names)
        assert all(weights(two, n)["W_skip"].shape == (12, 16) for n in names)


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, Path]:
    # gaussian rows: no near-ties at the BatchTopK cut, so both runs select the same latents
    root = tmp_path_factory.mktemp("dist")
    return {"saes": make_fake_cache(root / "cache", shard_rows=SHARD_ROWS, d_in=16, seed=5).path,
            "transcoder": make_fake_cache(root / "pairs", shard_rows=SHARD_ROWS, d_in=16, seed=6, hooks=(H_IN, H_OUT),
                                          widths={H_OUT: 12}).path}


@pytest.fixture(scope="module")
def shards_runs(caches: dict[str, Path], tmp_path_factory):
    """case -> the folder of its 2-rank run by shards (run once per case, when first asked for)."""
    runs: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in runs:
            out = tmp_path_factory.mktemp(f"shards_{case}") / "two"
            run(torchrun(train_args(case, caches[case], out)))
            runs[case] = out
        return runs[case]

    return get


@pytest.mark.parametrize("case", RUN_CASES)
def test_two_ranks_by_rows_equal_one_process_with_the_same_batch_size(case: str, caches: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    run([sys.executable, "-m", "saesteer", *train_args(case, caches[case], one)])
    run(torchrun(train_args(case, caches[case], two, "--dp-partition", "rows")))
    assert json.loads((one / "metrics.json").read_text())["world_size"] == 1
    assert_same_saes(case, one, two)


@pytest.mark.slow
def test_fine_tuning_a_sae_lens_transcoder_on_two_ranks_by_rows_equals_one_process(caches: dict[str, Path],
                                                                                   tmp_path: Path) -> None:
    """--init-from under torchrun: rank 0's source weights broadcast, both scales the same on every rank."""
    pytest.importorskip("sae_lens")
    from test_transcoder_init_from import sae_lens_transcoder

    sae_lens_transcoder(tmp_path / "sl")
    one, two, src = tmp_path / "one", tmp_path / "two", ("--init-from", str(tmp_path / "sl"))
    run([sys.executable, "-m", "saesteer", *train_args("transcoder_init", caches["transcoder"], one, *src)])
    run(torchrun(train_args("transcoder_init", caches["transcoder"], two, "--dp-partition", "rows", *src)))
    assert_same_saes("transcoder_init", one, two)


class _Zipped:
    """One process's view of the 2-rank run: each global batch is rank 0's batch, then rank 1's
    (a transcoder's: the inputs and the targets, each concatenated)."""

    def __init__(self, readers):
        self.readers = readers

    def __iter__(self):
        for parts in zip(*self.readers):
            x = torch.cat([b.acts for b in parts])
            yield x if parts[0].targets is None else _Pair(x, torch.cat([b.targets for b in parts]))


class _Pair(NamedTuple):
    acts: torch.Tensor
    targets: torch.Tensor


def test_two_ranks_draw_the_held_out_rows_of_a_holdout_cache_as_one_process(caches: dict[str, Path],
                                                                              tmp_path: Path) -> None:
    """`--holdout-cache` (one shard, fewer than the ranks' count) read by every rank's slice of its one
    stream whatever --dp-partition says: by rows, the same SAEs as one process; by shards, the same held-out set."""
    held = make_fake_cache(tmp_path / "held", shard_rows=[200], d_in=16, seed=9, dataset="fake-heldout").path
    one, rows, shards = tmp_path / "one", tmp_path / "rows", tmp_path / "shards"
    flags = ("--holdout-cache", str(held))
    run([sys.executable, "-m", "saesteer", *train_args("saes", caches["saes"], one, *flags)])
    run(torchrun(train_args("saes", caches["saes"], rows, *flags, "--dp-partition", "rows")))
    run(torchrun(train_args("saes", caches["saes"], shards, *flags)))
    assert_same_saes("saes", one, rows)
    for out in (one, rows, shards):
        m = json.loads((out / "metrics.json").read_text())
        assert m["holdout_rows"] == 128 and m["data"]["holdout_cache"] == str(held.resolve())
        assert m["activation_scale"] == pytest.approx(json.loads((one / "metrics.json").read_text())["activation_scale"])


def test_a_holdout_cache_smaller_than_holdout_tokens_is_noted_once_not_once_per_rank(caches: dict[str, Path],
                                                                                   tmp_path: Path) -> None:
    """The note that --holdout-cache holds fewer rows than --holdout-tokens is rank 0's alone."""
    held = make_fake_cache(tmp_path / "held", shard_rows=[100], d_in=16, seed=9, dataset="fake-heldout").path
    p = run(torchrun(train_args("saes", caches["saes"], tmp_path / "out", "--holdout-cache", str(held),
                                "--architecture", "topk", "--total-tokens", str(4 * BATCH))))
    assert (p.stdout + p.stderr).count("fewer than --holdout-tokens 128") == 1, p.stdout + p.stderr


@pytest.mark.slow
@pytest.mark.parametrize("case", RUN_CASES)
def test_two_ranks_by_shards_equal_one_process_on_the_same_global_batches(case: str, caches: dict[str, Path],
                                                                          shards_runs, tmp_path: Path) -> None:
    import argparse

    from saesteer.commands import train as train_cmd
    from training.manifest import read_manifest
    from training.reader import CacheReader, rank_shards
    from training.run import train

    cache = caches[case]
    ap = argparse.ArgumentParser()
    train_cmd.add_arguments(ap)
    run_cfg, data_cfg, *_ = train_cmd.build_configs(ap.parse_args(train_args(case, cache, tmp_path / "ref")[1:]))
    rows = [s.rows for s in read_manifest(cache).shards]
    parts = [rank_shards(rows, r, 2) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == list(range(len(rows))) and not set(parts[0]) & set(parts[1])
    readers = [CacheReader(cache, BATCH // 2, seed=run_cfg.train.seed, epochs=None, shards=s, hook=data_cfg.hook,
                           target_hook=data_cfg.target_hook, buffer_rows=data_cfg.reader_buffer_rows) for s in parts]
    threads = torch.get_num_threads()
    try:
        train(run_cfg, _Zipped(readers), tmp_path / "ref")
    finally:
        torch.set_num_threads(threads)
    two = shards_runs(case)
    assert_same_saes(case, tmp_path / "ref", two)
    cfg = json.loads((two / "saes" / CASES[case].saes[0] / "saesteer.json").read_text())
    assert cfg["data"]["dp_partition"] == "shards"


@pytest.mark.slow
@pytest.mark.parametrize("case", RUN_CASES)
def test_kill_9_of_the_two_rank_run_then_resume_is_bit_identical(case: str, caches: dict[str, Path], shards_runs,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = subprocess.Popen(torchrun(train_args(case, caches[case], out), hang_at=12), cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
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
    state = json.loads((out / "checkpoints" / ckpts[-1] / "state.json").read_text())
    assert state["world_size"] == 2 and state["data"]["kind"] == "per_rank"  # each rank's own reader position
    assert not (out / "saes").exists()

    p = run(torchrun(train_args(case, caches[case], out)))
    assert "resumed from" in p.stdout + p.stderr
    for name in CASES[case].saes:
        w_resumed, w_straight = weights(out, name), weights(shards_runs(case), name)
        for key in w_straight:
            assert torch.equal(w_resumed[key], w_straight[key]), f"{name}/{key} differs after the resume"


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_at_its_step_with_a_checkpoint_and_the_resume_is_bit_identical(
        caches: dict[str, Path], shards_runs, tmp_path: Path) -> None:
    """One rank signalled (the others may be signalled a moment later or not at all): every rank
    stops after the same step, rank 0 checkpoints it (each rank's reader position), the re-run goes
    on there."""
    case = "saes"
    out = tmp_path / "stopped"
    proc = subprocess.Popen(torchrun(train_args(case, caches[case], out), wait_at=10), cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    marks = [out / "waiting.0", out / "waiting.1"]
    try:
        deadline = time.monotonic() + 240
        while not all(m.exists() and m.read_text() for m in marks):
            assert proc.poll() is None, proc.stdout.read()[-4000:] if proc.stdout else ""
            assert time.monotonic() < deadline, "the 2-rank run never reached step 10"
            time.sleep(0.2)
        os.kill(int(marks[1].read_text()), signal.SIGTERM)
        (out / "go").write_text("")  # rank 0 goes on, unsignalled
        text = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:  # stuck: the workers (own sessions) by their pids, the launcher by its group
            for m in marks:
                if m.exists() and m.read_text():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(m.read_text()), signal.SIGKILL)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert "stopped by SIGTERM: training stopped at step 10" in text, text[-4000:]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts[-1].endswith("0000000010"), ckpts
    p = run(torchrun(train_args(case, caches[case], out)))
    assert "resumed from step_0000000010" in p.stdout + p.stderr
    for name in CASES[case].saes:
        w_resumed, w_straight = weights(out, name), weights(shards_runs(case), name)
        for key in w_straight:
            assert torch.equal(w_resumed[key], w_straight[key]), f"{name}/{key} differs after the stop and resume"
