"""No dict literal in the project's Python names one key twice: Python keeps the last value without a
word, as when two merges each added a "granite" entry to `save_arch_model`'s table and the second
silently replaced the first's residual multiplier."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", ".git", "node_modules", "build", "dist"}


def _duplicate_keys(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Dict):
            seen: dict[object, int] = {}
            for key in node.keys:
                if isinstance(key, ast.Constant):
                    if key.value in seen:
                        found.append(f"{path.relative_to(ROOT)}:{key.lineno}: {key.value!r} (first at line "
                                     f"{seen[key.value]})")
                    seen.setdefault(key.value, key.lineno)
    return found


def test_no_dict_literal_names_a_key_twice():
    files = [p for p in ROOT.rglob("*.py") if not SKIP & set(p.relative_to(ROOT).parts)]
    assert len(files) > 50
    assert [d for p in files for d in _duplicate_keys(p)] == []
