"""The test suite under pytest's own options: files that quiet a warning with the `filterwarnings`
marker still collect with `-p no:warnings` (the warnings plugin that registers that marker is off,
and pyproject's --strict-markers would refuse it; tests/conftest.py registers it in its place)."""

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def test_files_with_filterwarnings_markers_collect_without_the_warnings_plugin():
    files = sorted(str(p.relative_to(TESTS.parent)) for p in TESTS.glob("test_*.py")
                   if "mark.filterwarnings" in p.read_text(encoding="utf-8") and p.name != Path(__file__).name)
    assert files  # e.g. test_transcoder_saelens.py
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:warnings",
                        "-p", "no:cacheprovider", *files], cwd=TESTS.parent, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
