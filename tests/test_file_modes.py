"""Files and folders we write for users to share (SAE folders, checkpoints, JSON, sweeps) get the
modes an ordinary `open` / `mkdir` would give under the process's umask, not tempfile's private
0600 / 0700."""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from saes.fileio import atomic_write_bytes, atomic_write_json, current_umask, make_temp_dir


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path: Path, mask: int) -> None:
    with umask(mask):
        assert current_umask() == mask
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_json(tmp_path / "b.json", {"a": 1})
        d = make_temp_dir(".t.", tmp_path)
    assert mode(tmp_path / "a.bin") == mode(tmp_path / "b.json") == 0o666 & ~mask
    assert mode(d) == 0o777 & ~mask


def test_a_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "keep.json"
    target.write_text("{}")
    os.chmod(target, 0o640)
    with umask(0o022):
        atomic_write_json(target, {"b": 2})
    assert mode(target) == 0o640 and target.read_text().strip().startswith("{")


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_sae_folders_checkpoints_and_sweeps_follow_the_umask(tmp_path: Path, mask: int) -> None:
    import saes
    from steering.sweeps import SweepPoint, SweepResult, write_sweep_json
    from training.checkpoint import write_checkpoint

    sae = saes.create_sae("topk", 8, 16, k=2, generator=torch.Generator().manual_seed(0))
    with umask(mask):
        folder = saes.save_sae(sae, tmp_path / "sae")
        ckpt = write_checkpoint(tmp_path / "ckpts", 3, {"note": "x"}, {"w": torch.zeros(2)})
        sweep = write_sweep_json(SweepResult("s/1:add", "raw", [SweepPoint(1.0, 0.5, 1.0, 0.6)], 1.0, 1), tmp_path / "s.json")
    assert mode(Path(folder)) == mode(ckpt) == 0o777 & ~mask
    files = [p for p in [*Path(folder).iterdir(), *ckpt.iterdir(), sweep] if p.is_file()]
    assert files and all(mode(p) == 0o666 & ~mask for p in files), {p.name: oct(mode(p)) for p in files}
