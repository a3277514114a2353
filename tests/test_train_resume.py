"""Checkpoints and resume: kill -9 mid-run, resume, bit-identical final weights; changed
configs refused naming the fields; half-written checkpoints ignored."""

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

from training.checkpoint import list_checkpoints, read_checkpoint
from training.config import RunConfig

HELPER = Path(__file__).parent / "helpers" / "train_child.py"
sys.path.insert(0, str(HELPER.parent))
import train_child  # noqa: E402

SAE_NAMES = ["topk_k4_f128", "batchtopk_k4_f128", "matryoshka_batchtopk_k4_f128"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = str(HELPER.parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(out: Path, *extra: str) -> None:
    r = subprocess.run([sys.executable, str(HELPER), str(out), *extra], env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def _weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {n: load_file(out / "saes" / n / "sae_weights.safetensors") for n in SAE_NAMES}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "straight"
    _run(out)
    return out


def test_sigkill_then_resume_is_bit_identical(uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(HELPER), str(out), "--hang-at", "14"], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (out / "hanging").exists():
            if proc.poll() is not None:
                pytest.fail(f"child exited early: {proc.stderr.read().decode()[-3000:]}")
            assert time.monotonic() < deadline, "child never reached the hang point"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists()
    ckpts = list_checkpoints(out / "checkpoints")
    assert [p.name for p in ckpts] == ["step_0000000008", "step_0000000012"]  # keep_last=2, every 4 steps
    _run(out)  # same command again: resumes from step 12
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 40 and metrics["tokens_trained"] == 40 * 256
    a, b = _weights(uninterrupted), _weights(out)
    for name in SAE_NAMES:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}/{key} differs after resume"
    # the history was rewound to the checkpoint, so it holds each step once
    steps = [json.loads(line)["step"] for line in (out / "history.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == sorted(set(steps))
    # the final checkpoint equals the uninterrupted run's, counters and optimiser moments included
    sa, ta = read_checkpoint(list_checkpoints(uninterrupted / "checkpoints")[-1])
    sb, tb = read_checkpoint(list_checkpoints(out / "checkpoints")[-1])
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    assert sa["data"] == sb["data"] and sa["tokens"] == sb["tokens"]


def test_changed_config_is_refused_naming_fields(uninterrupted: Path, tmp_path: Path) -> None:
    import shutil

    from training.trainer import ConfigMismatchError, train

    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    cfg = train_child.run_config(k=5)
    cfg.optim.lr = 1e-3
    cfg.train.batch_size = 128
    with pytest.raises(ConfigMismatchError) as e:
        train(cfg, train_child.source(), out)
    msg = str(e.value)
    for field in ("saes.0.k", "saes.1.k", "saes.2.k", "optim.lr", "train.batch_size"):
        assert field in msg
    assert "saes.0.name" in msg  # the default name includes k
    assert "total_tokens" not in msg


def test_whitelisted_change_extends_the_run(uninterrupted: Path, tmp_path: Path) -> None:
    import shutil

    from training.trainer import train

    out = tmp_path / "extend"
    shutil.copytree(uninterrupted, out)
    cfg = train_child.run_config(total_batches=44)
    cfg.log.log_every = 1  # logging and eval settings may change on resume
    cfg.eval.every_tokens = 0
    cfg.train.num_threads = 0
    result = train(cfg, train_child.source(), out)
    assert result.resumed_from is not None and result.resumed_from.name == "step_0000000040"
    assert result.steps == 44


def test_half_written_checkpoints_are_ignored(uninterrupted: Path, tmp_path: Path) -> None:
    import shutil

    from training.trainer import train

    out = tmp_path / "partial"
    shutil.copytree(uninterrupted, out)
    root = out / "checkpoints"
    (root / ".tmp-step_0000000044.abc").mkdir()  # a run killed while writing
    (root / ".tmp-step_0000000044.abc" / "tensors.safetensors").write_bytes(b"junk")
    last = list_checkpoints(root)[-1]
    corrupt = root / "step_0000000099"  # complete name but damaged tensors: skipped with a warning
    shutil.copytree(last, corrupt)
    (corrupt / "tensors.safetensors").write_bytes(b"\0" * 64)
    result = train(train_child.run_config(), train_child.source(), out)
    assert result.resumed_from == last
    assert not (root / ".tmp-step_0000000044.abc").exists()


def test_resume_never_and_require(uninterrupted: Path, tmp_path: Path) -> None:
    from training.trainer import train

    with pytest.raises(FileExistsError):
        train(train_child.run_config(), train_child.source(), uninterrupted, resume="never")
    with pytest.raises(FileNotFoundError):
        train(train_child.run_config(), train_child.source(), tmp_path / "empty", resume="require")


def test_checkpoint_holds_no_pickle(uninterrupted: Path) -> None:
    ckpt = list_checkpoints(uninterrupted / "checkpoints")[-1]
    assert sorted(p.name for p in ckpt.iterdir()) == ["state.json", "tensors.safetensors"]
    state, tensors = read_checkpoint(ckpt)
    assert RunConfig.from_dict(state["config"]) == train_child.run_config()
    for name in SAE_NAMES:
        assert f"dead/{name}" in tensors and f"sae/{name}/W_enc" in tensors
        assert f"optim/{name}/state/0/exp_avg" in tensors
    assert "sae/batchtopk_k4_f128/threshold" in tensors
    assert "rng/torch" in tensors and state["rng"]["python"] and state["rng"]["numpy"]
    assert state["data"] == {"kind": "state_dict", "state": {"next": 42, "seed": 3, "d_in": 32, "batch_size": 256}}
