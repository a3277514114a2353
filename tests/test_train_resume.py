"""Checkpoints and resume: kill -9 mid-run, resume, bit-identical final weights; changed
configs refused naming the fields; half-written checkpoints ignored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.checkpoint import list_checkpoints, read_checkpoint
from training.config import RunConfig

HELPER = Path(__file__).parent / "helpers" / "train_child.py"
sys.path.insert(0, str(HELPER.parent))
import train_child  # noqa: E402

SAE_NAMES = ["topk_k4_f128", "batchtopk_k4_f128", "matryoshka_batchtopk_k4_f128", "jumprelu_f128"]


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
    train_child.kill_when_hanging([str(out), "--hang-at", "14"], out, _env())
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

    from training.run import train
    from training.trainer import ConfigMismatchError

    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    cfg = train_child.run_config(k=5)
    cfg.optim.lr = 1e-3
    cfg.train.batch_size = 128
    cfg.train.jumprelu_threshold_lr = 0.05
    with pytest.raises(ConfigMismatchError) as e:
        train(cfg, train_child.source(), out)
    msg = str(e.value)
    for field in ("saes.0.k", "saes.1.k", "saes.2.k", "optim.lr", "train.batch_size", "train.jumprelu_threshold_lr"):
        assert field in msg
    assert "saes.0.name" in msg  # the default name includes k
    assert "total_tokens" not in msg


def _one_architecture_run(architecture: str, total_batches: int, **train_fields) -> RunConfig:
    from training.config import CheckpointConfig, EvalConfig, LogConfig, SAESpec, TrainConfig

    widths = {"matryoshka_widths": [16, 64]} if architecture == "matryoshka_batchtopk" else {}
    spec = SAESpec(architecture, d_sae=64, **({"k": 4} if architecture != "jumprelu" else {}), **widths)
    base = {"total_tokens": total_batches * train_child.BATCH, "batch_size": train_child.BATCH, "dead_tokens": 1024,
            "holdout_tokens": 512, "num_threads": 1, "jumprelu_threshold_lr": 0.02}
    return RunConfig(saes=[spec], train=TrainConfig(**{**base, **train_fields}),
                     checkpoint=CheckpointConfig(every_tokens=4 * train_child.BATCH, keep_last=1),
                     eval=EvalConfig(every_tokens=0), log=LogConfig(log_every=100, progress=False))


@pytest.mark.parametrize("architecture, unused, used", [
    ("jumprelu", {"aux_coef": 0.5, "k_aux": 7, "threshold_lr": 0.9}, {"jumprelu_threshold_lr": 0.05}),
    ("matryoshka_batchtopk", {"jumprelu_threshold_lr": 0.05}, {"threshold_lr": 0.9, "k_aux": 7}),
    ("topk", {"threshold_lr": 0.9, "jumprelu_threshold_lr": 0.05}, {"aux_coef": 0.5}),
])
def test_resume_compares_the_run_wide_settings_its_saes_read(architecture, unused, used, tmp_path: Path) -> None:
    """A setting no SAE of the run reads (a JumpReLU run's AuxK and BatchTopK threshold settings, a
    TopK run's threshold_lr) may differ on resume, and truly changes nothing (bit-identical
    weights); one its SAEs read is refused, naming it."""
    import shutil

    from training.run import train
    from training.trainer import ConfigMismatchError

    first = tmp_path / "first"
    train(_one_architecture_run(architecture, 8), train_child.source(), first)
    runs = {}
    for name, fields in (("same", {}), ("unused", unused)):
        shutil.copytree(first, tmp_path / name)
        result = train(_one_architecture_run(architecture, 12, **fields), train_child.source(), tmp_path / name)
        assert result.resumed_from is not None and result.steps == 12
        runs[name] = load_file(next((tmp_path / name / "saes").glob("*/sae_weights.safetensors")))
    assert runs["same"].keys() == runs["unused"].keys()
    assert all(torch.equal(runs["same"][k], runs["unused"][k]) for k in runs["same"])
    shutil.copytree(first, tmp_path / "used")
    with pytest.raises(ConfigMismatchError) as e:
        train(_one_architecture_run(architecture, 12, **used), train_child.source(), tmp_path / "used")
    assert sorted(line[4:].split(":")[0] for line in str(e.value).splitlines() if line.startswith("  - ")) == \
        sorted(f"train.{f}" for f in used)


def test_whitelisted_change_extends_the_run(uninterrupted: Path, tmp_path: Path) -> None:
    import shutil

    from training.run import train

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

    from training.run import train

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
    from training.run import train

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
    # JumpReLU: weights (parameters 0-3) and thresholds (4) in two param groups, each with its Adam moments
    groups = state["members"]["jumprelu_f128"]["optimizer"]["param_groups"]
    assert [g["params"] for g in groups] == [[0, 1, 2, 3], [4]]
    assert "optim/jumprelu_f128/state/4/exp_avg" in tensors and "sae/jumprelu_f128/threshold" in tensors
    assert "rng/torch" in tensors and state["rng"]["python"] and state["rng"]["numpy"]
    assert state["data"] == {"kind": "state_dict", "state": {"next": 42, "seed": 3, "d_in": 32, "batch_size": 256}}


def test_a_checkpoint_whose_tensors_are_not_safetensors_but_match_their_checksum_is_skipped(
        uninterrupted: Path, tmp_path: Path) -> None:
    """The checksum matches (the bytes were written that way), the bytes are not safetensors: the
    resume falls back to the previous checkpoint instead of stopping with a SafetensorError."""
    import hashlib
    import shutil

    from training.checkpoint import CheckpointError
    from training.run import train

    out = tmp_path / "bad-tensors"
    shutil.copytree(uninterrupted, out)
    root = out / "checkpoints"
    previous, newest = list_checkpoints(root)[-2:]
    junk = b"not a safetensors file at all, but its checksum is the recorded one"
    (newest / "tensors.safetensors").write_bytes(junk)
    state = json.loads((newest / "state.json").read_text())
    state["tensors_sha256"] = hashlib.sha256(junk).hexdigest()
    (newest / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="not a readable safetensors file .*matches its recorded checksum"):
        read_checkpoint(newest)
    result = train(train_child.run_config(), train_child.source(), out)
    assert result.resumed_from == previous and result.steps == 40


def test_a_kill_during_the_final_sae_save_leaves_nothing_behind_after_the_rerun(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, str(HELPER), str(out), "--total-batches", "8", "--die-in-final-save"],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    hidden = [p.name for p in (out / "saes").iterdir() if p.name.startswith(".")]
    assert len(hidden) == 1 and hidden[0].startswith(f".{SAE_NAMES[0]}.tmp-")  # what the kill left
    from training.run import train

    train(train_child.run_config(total_batches=8), train_child.source(), out)
    assert sorted(p.name for p in (out / "saes").iterdir()) == sorted(SAE_NAMES)
    import saes

    for name in SAE_NAMES:
        saes.load_sae(out / "saes" / name)  # complete and verified


def test_hidden_save_leftovers_are_removed_when_a_run_starts(uninterrupted: Path, tmp_path: Path) -> None:
    import shutil

    from training.run import train

    out = tmp_path / "leftover"
    shutil.copytree(uninterrupted, out)
    stale = out / "saes" / f".{SAE_NAMES[1]}.tmp-x1y2z3"
    stale.mkdir()
    (stale / "sae_weights.safetensors").write_bytes(b"half")
    train(train_child.run_config(), train_child.source(), out)
    assert not stale.exists()


class _Wider:
    """The child's synthetic source with wider rows (another model or hook point)."""

    def __iter__(self):
        for x in train_child.source():
            yield torch.cat([x, x[:, :8]], dim=1)


def test_resuming_on_data_of_another_width_is_refused_naming_d_in(uninterrupted: Path, tmp_path: Path) -> None:
    import shutil

    from training.run import train
    from training.trainer import ConfigMismatchError

    out = tmp_path / "wider"
    shutil.copytree(uninterrupted, out)
    with pytest.raises(ConfigMismatchError, match=r"d_in: the checkpoint's SAE .* width 32 .*width 40"):
        train(train_child.run_config(), _Wider(), out)


def test_non_finite_held_out_rows_are_refused_before_training(tmp_path: Path) -> None:
    from training.run import train
    from training.trainer import DataError

    def poisoned():
        for i, x in enumerate(train_child.source()):
            if i == 0:
                x = x.clone()
                x[3, 5] = float("nan")
            yield x

    class Source:
        def __iter__(self):
            return poisoned()

    with pytest.raises(DataError, match="1 of the first 512 rows .* NaN or infinite"):
        train(train_child.run_config(total_batches=4), Source(), tmp_path / "nan")
    assert not list_checkpoints(tmp_path / "nan" / "checkpoints")
