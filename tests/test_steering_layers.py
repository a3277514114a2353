"""The steering package's shape: its modules import each other one way only (no circle, counting
imports inside functions too), and the public API names real types for what it takes."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import steering

PACKAGE = Path(steering.__file__).parent


def steering_imports(path: Path) -> set[str]:
    """The steering modules `path` imports anywhere in it (top level or inside a function)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("steering."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("steering.")}
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_steering_modules_import_each_other_one_way():
    graph = {p.stem: steering_imports(p) - {p.stem} for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert "generation" in graph["session"]  # the session generates; generation never asks for it
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_lazy_import_circle():
    assert find_cycle({"session": {"generation"}, "generation": {"session"}}) in (
        ["session", "generation", "session"], ["generation", "session", "generation"])
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


PUBLIC = ["steer", "resolve_edits", "build_plan", "generate", "compare", "sweep", "sweep_edits", "contrast_features",
          "diff_of_means", "perplexity", "fluency_of_generation", "score_generation", "store_recommendation",
          "compare_methods", "make_preset", "BatchEngine"]
TYPED = {"model", "saes", "sae", "edits", "session", "typical_max", "limits", "config", "generation", "sink"}


def test_the_public_api_names_real_types_for_what_it_takes():
    untyped = []
    for name in PUBLIC:
        fn = getattr(steering, name)
        for p in inspect.signature(fn).parameters.values():
            if p.name in TYPED and (p.annotation is inspect.Parameter.empty or "Any" in str(p.annotation)):
                untyped.append(f"{name}({p.name}: {p.annotation})")
    assert not untyped, untyped
