"""kill -9 in the middle of `saesteer train` on a real cache (a tiny GPT-2, byte-level BPE, code and
prose, bf16 activations, two hooks of which the run trains one), and the same command again:

- the four architectures (TopK, BatchTopK, Matryoshka, JumpReLU) end bit-identical to an
  uninterrupted run, killed between checkpoints or inside a checkpoint's write, and a transcoder too;
- wandb (offline) goes on in the SAME run: one run id, the config recorded again, the resumed part
  logged from after the checkpoint's step, steps increasing, read back from wandb's own files.

Slow: each run is a process of its own (bit-identical needs one thread and a fresh interpreter).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers.real_cli import saesteer

HELPER = Path(__file__).parent / "helpers" / "train_child.py"
sys.path.insert(0, str(HELPER.parent))
import train_child  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("offline_env")]

HOOKS = ("blocks.0.hook_resid_post", "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
RUN = ("--no-progress", "--model-eval", "false", "--total-tokens", 5120, "--holdout-tokens", 512, "--batch-size", 256,
       "--checkpoint-every-tokens", 1024, "--eval-every-tokens", 2048, "--log-every", 2, "--num-threads", 1)
SAES = ("--hook", HOOKS[1], "--architecture", "topk,batchtopk,matryoshka,jumprelu", "--jumprelu-init-firing-rate", 0.01,
        "--d-sae", 128, "--k", 8)
TRANSCODER = ("--hook", HOOKS[1], "--target-hook", HOOKS[2], "--architecture", "batchtopk", "--skip", "--d-sae", 128,
              "--k", 8)


@pytest.fixture(scope="module")
def cache(real_models, real_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("trainreal-resume") / "cache"
    saesteer("cache", "--model", real_models.path("gpt2"), "--dataset", real_corpus.jsonl_dir, "--context-length", 48,
             "--max-tokens", 6000, "--hooks", ",".join(HOOKS), "--dtype", "bf16", "--out", out, "--no-progress").ok()
    return out


def _env(**extra) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0", WANDB_SILENT="true", **extra)
    env["PYTHONPATH"] = str(HELPER.parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _argv(cache, out, *saes) -> list[str]:
    return [str(a) for a in ("train", "--cache", cache, *RUN, *saes, "--out", out)]


def _train(argv, env) -> None:
    r = subprocess.run([sys.executable, "-m", "saesteer", *argv], env=env, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def _same_weights(a: Path, b: Path) -> list[str]:
    names = sorted(p.name for p in (a / "saes").iterdir())
    assert names == sorted(p.name for p in (b / "saes").iterdir())
    for name in names:
        wa, wb = (load_file(r / "saes" / name / "sae_weights.safetensors") for r in (a, b))
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"{name}/{key} differs after the resume"
    return names


def _wandb_part(run_dir: Path):
    """(run ids, config keys, history steps) of one offline run directory, from wandb's own records."""
    from helpers.wandb_log import wandb_records

    (log,) = run_dir.glob("*.wandb")
    ids, config, steps = [], set(), []
    for rec in wandb_records(log):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            ids.append(rec.run.run_id)
            config |= {i.key for i in rec.run.config.update}
        elif kind == "history":
            steps.append(rec.history.step.num)
    return ids, config, steps


def test_kill_9_mid_run_then_the_same_command_is_bit_identical_and_goes_on_in_the_same_wandb_run(cache, tmp_path):
    env = _env(WANDB_MODE="offline")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _train(_argv(cache, straight, *SAES, "--wandb", "true"), env)
    train_child.kill_when_hanging(["cli", "14", *_argv(cache, killed, *SAES, "--wandb", "true")], killed, env)
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step_0000000008", "step_0000000012"]
    _train(_argv(cache, killed, *SAES, "--wandb", "true"), env)
    assert len(_same_weights(straight, killed)) == 4
    parts = sorted((killed / "wandb").glob("offline-run-*"))
    assert len(parts) == 2
    run_id = (killed / "wandb_run_id.txt").read_text().strip()
    ids, config, steps = _wandb_part(parts[1])  # the resumed part (the killed one: what wandb had flushed)
    assert ids == [run_id] and parts[0].name.endswith(run_id)
    assert {"saes", "train", "optim", "data"} <= config
    assert steps == sorted(set(steps)) and steps[0] > 12 and steps[-1] == 20  # after the checkpoint, to the end
    _, _, first = _wandb_part(parts[0])
    assert all(s <= 14 for s in first)  # nothing past the kill


def test_kill_9_while_a_checkpoint_is_written_then_the_same_command_is_bit_identical(cache, tmp_path):
    env = _env(WANDB_MODE="disabled")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _train(_argv(cache, straight, *SAES), env)
    p = subprocess.run([sys.executable, str(HELPER), "cli", "0", *_argv(cache, killed, *SAES)],
                       env=_env(WANDB_MODE="disabled", TRAIN_CHILD_DIE_IN_CHECKPOINT="12"), capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert p.returncode == -9, p.stderr[-2000:]
    finished = sorted(c.name for c in (killed / "checkpoints").iterdir() if c.name.startswith("step_"))
    assert finished == ["step_0000000004", "step_0000000008"]  # step 12's only in a temporary folder
    _train(_argv(cache, killed, *SAES), env)  # from step 8; the half-written step 12 is left aside
    assert len(_same_weights(straight, killed)) == 4


def test_a_transcoder_killed_mid_run_resumes_bit_identical(cache, tmp_path):
    env = _env(WANDB_MODE="disabled")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _train(_argv(cache, straight, *TRANSCODER), env)
    train_child.kill_when_hanging(["cli", "10", *_argv(cache, killed, *TRANSCODER)], killed, env)
    _train(_argv(cache, killed, *TRANSCODER), env)
    assert _same_weights(straight, killed) == ["batchtopk_k8_f128_skip"]
