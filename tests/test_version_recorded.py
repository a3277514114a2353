"""The version an SAE and a steering preset record is the code's own (`saesteer.__version__`), written
once, in saes/version.py: pyproject reads it there, `saesteer --version` says it, `training` and
`steering` (which may not import `saesteer`) read it there. They recorded pip's metadata instead, so an
SAE trained from a checkout run through PYTHONPATH recorded "unknown", and one trained under an
editable install made before the last version bump recorded the old number."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from helpers.real_cli import saesteer

ROOT = Path(__file__).resolve().parents[1]
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


@pytest.fixture(params=["not installed", "stale install"])
def pip_metadata(request, monkeypatch):
    """pip's metadata of saesteer as a checkout on PYTHONPATH (none) or a stale editable install shows it."""
    real = importlib.metadata.version

    def version(name):
        if name != "saesteer":
            return real(name)
        if request.param == "not installed":
            raise importlib.metadata.PackageNotFoundError(name)
        return "0.0.1"

    monkeypatch.setattr(importlib.metadata, "version", version)
    return request.param


def test_one_version_written_once():
    import saes.version
    import saesteer

    assert saesteer.__version__ == saes.version.__version__
    dynamic = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["dynamic"]
    assert dynamic["version"] == {"attr": "saes.version.__version__"}
    # nowhere else: no other module assigns a version string of its own
    assigned = [p for p in ROOT.glob("*/**/*.py") if ".venv" not in p.parts and p != ROOT / "saes/version.py"
                and "__version__ = \"" in p.read_text(encoding="utf-8")]
    assert assigned == []


def test_a_trained_sae_and_a_preset_record_the_codes_version(pip_metadata, tmp_path):
    """`saesteer train` and `saesteer preset save` from a checkout / a stale install: the SAE's
    saesteer.json and the preset record the version `saesteer --version` says."""
    from helpers.fake_cache import make_fake_cache
    from helpers.web_store import build_web_store
    from saes.version import __version__

    assert saesteer("--version").out.split() == ["saesteer", __version__]
    cache = make_fake_cache(tmp_path / "cache", shard_rows=[1024, 1024], d_in=16).path
    saesteer("train", "--cache", cache, "--out", tmp_path / "run", "--architecture", "topk", "--d-sae", 32, "--k", 4,
             "--total-tokens", 1024, "--batch-size", 256, "--holdout-tokens", 256, "--eval-every-tokens", 0,
             "--checkpoint-every-tokens", 0, "--no-progress", "--num-threads", 1, "--sae-name", "sae").ok()
    recorded = json.loads((tmp_path / "run/saes/sae/saesteer.json").read_text())["saesteer_version"]
    assert recorded == __version__, f"{pip_metadata}: recorded {recorded!r}"

    store = build_web_store(tmp_path / "store", name="a")
    saesteer("preset", "save", "calm", "--store", store.path, "-l", "5:add=1").ok()
    saesteer("preset", "export", "calm", "--store", store.path, "--out", tmp_path / "calm.json").ok()
    assert json.loads((tmp_path / "calm.json").read_text())["saesteer_version"] == __version__
