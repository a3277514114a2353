"""scripts/lowest-deps.txt (what scripts/check_lowest_deps.sh installs and tests) pins exactly the
lower bounds pyproject.toml promises, so a bound raised or lowered in one is seen in the other."""
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[1]
UNCHECKED = {"torch"}  # stays the installed build (a CPU wheel here); see the pins file's header


def _lower_bounds() -> dict[str, Version]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for line in deps:
        req = Requirement(line)
        lows = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert len(lows) == 1, f"pyproject.toml: {line!r} needs one '>=' lower bound for the lowest-versions check"
        out[req.name] = lows[0]
    return out


def _pins() -> dict[str, Version]:
    out = {}
    for line in (ROOT / "scripts" / "lowest-deps.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[name.strip()] = Version(version)
    return out


def test_the_lowest_versions_checked_are_pyprojects_lower_bounds():
    bounds = {name: v for name, v in _lower_bounds().items() if name not in UNCHECKED}
    assert _pins() == bounds
