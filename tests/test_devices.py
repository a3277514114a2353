"""--device naming a device the machine lacks (a laptop: mps on Linux, cuda on a Mac) is refused
in one line that lists what the machine has, before any model loads."""

from __future__ import annotations

import pytest
import torch

from saesteer.cli import main


def _machine(monkeypatch, *, gpus: int = 0, mps: bool = False) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "bug" not in err[0] and "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("device, says", [
    ("mps", "--device 'mps': MPS (Apple-silicon GPU) is not available here"),
    ("cuda", "--device 'cuda': no CUDA GPU is visible"),
    ("cuda:1", "--device 'cuda:1': no CUDA GPU is visible"),
    ("gpu", "unknown --device 'gpu'"),
])
def test_cache_refuses_a_device_the_machine_lacks(tmp_path, capsys, monkeypatch, device, says):
    _machine(monkeypatch)
    err = _error(capsys, ["cache", "--model", "toy", "--dataset", "toy", "--dry-run", "--device", device,
                          "--out", str(tmp_path / "c")])
    assert says in err and err.endswith("this machine has cpu")
    assert not (tmp_path / "c").exists()


def test_a_mac_is_told_it_has_mps_and_a_gpu_box_its_gpus(tmp_path, capsys, monkeypatch):
    _machine(monkeypatch, mps=True)
    err = _error(capsys, ["steer", "--model", "toy", "--sae", str(tmp_path), "--device", "cuda", "--prompt", "x",
                          "--latent", "1:add=2"])
    assert err.endswith("this machine has cpu, mps")
    _machine(monkeypatch, gpus=2)
    err = _error(capsys, ["label", "--store", str(tmp_path / "s.db"), "--judge-device", "cuda:2"])
    assert err == "error: --judge-device 'cuda:2': only 2 CUDA GPU(s) are visible; this machine has cpu, cuda:0, cuda:1"


def test_train_refuses_a_config_files_device(tmp_path, capsys, monkeypatch):
    """train.device from --config (no --device flag) is checked too."""
    _machine(monkeypatch)
    cfg = tmp_path / "run.json"
    cfg.write_text('{"train": {"device": "mps"}}', encoding="utf-8")
    err = _error(capsys, ["train", "--cache", str(tmp_path / "nothing"), "--config", str(cfg),
                          "--out", str(tmp_path / "run")])
    assert "'mps': MPS (Apple-silicon GPU) is not available here" in err


def test_devices_the_machine_has_pass(monkeypatch):
    from saes.devices import check_device

    _machine(monkeypatch, gpus=1, mps=True)
    for ok in ("cpu", "cuda", "cuda:0", "mps", torch.device("cpu"), None):
        check_device(ok)


def test_steps_that_keep_float64_on_the_device_refuse_mps_up_front(tmp_path, capsys, monkeypatch):
    """On a Mac training's initialisation and evaluation's sums would stop at their first
    `.double()` on the GPU ("Cannot convert a MPS Tensor to float64"), after reading the data."""
    _machine(monkeypatch, mps=True)
    err = _error(capsys, ["train", "--cache", str(tmp_path / "c"), "--device", "mps", "--out", str(tmp_path / "r")])
    assert err.startswith("error: --device 'mps': training keeps float64 statistics") and err.endswith("use cpu for it")
    err = _error(capsys, ["eval", "--sae", str(tmp_path), "--model", "toy", "--device", "mps"])
    assert "--device 'mps': evaluation keeps float64 statistics" in err


def test_a_config_files_judge_device_is_checked_before_the_judge_loads(tmp_path, monkeypatch):
    """label --config's judge.device (no --judge-device flag) is refused as the flag is, before
    the judge model's files are read."""
    from autointerp.config import JudgeConfig, make_judge
    from saes.errors import SaesteerError

    _machine(monkeypatch, gpus=1)
    cfg = JudgeConfig(backend="transformers", model=str(tmp_path / "judge"), device="mps")
    with pytest.raises(SaesteerError, match="'mps': MPS .* is not available here.*this machine has cpu, cuda:0"):
        make_judge(cfg, cache_path=None)
