"""What `pip install saesteer` gives a user who never sees this repository.

Fast checks of pyproject.toml against the tree (a new static file, template or subpackage cannot be
left out of the wheel silently) and of what the installed code assumes about where it lives. The
wheel itself is built and used from outside the repository by tests/test_wheel_install.py (slow).
"""

from __future__ import annotations

import glob
import subprocess
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _top_packages() -> list[str]:
    """The top-level packages pyproject's `packages.find.include` selects ("saes*" -> saes)."""
    include = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({pattern.split(".")[0].rstrip("*") for pattern in include})


def _package_files() -> list[Path]:
    """Every file of the top-level packages: git's list in a checkout, else the tree without bytecode
    (a copy without .git, e.g. a source archive; the sdist ships no tests)."""
    tops = _top_packages()
    out = subprocess.run(["git", "ls-files", "-z", "--", *tops], cwd=ROOT, capture_output=True, check=False)
    if out.returncode == 0 and out.stdout:
        return [ROOT / p for p in out.stdout.decode().split("\0") if p and (ROOT / p).is_file()]
    return [p for top in tops for p in (ROOT / top).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]


def _shipped_data(package_data: dict[str, list[str]], package_dir: Path, package: str) -> set[Path]:
    """What setuptools' build_py ships as data of `package`: its patterns globbed (recursive) from
    the package's folder, as setuptools does."""
    return {Path(p) for pattern in package_data.get(package, []) + package_data.get("*", [])
            for p in glob.glob(str(package_dir / pattern), recursive=True) if Path(p).is_file()}


def test_every_top_level_package_is_selected() -> None:
    """A new top-level package (a folder with __init__.py beside saes/) is in `packages.find.include`."""
    tops = set(_top_packages())
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert on_disk - tops == set(), f"add {sorted(on_disk - tops)} to [tool.setuptools.packages.find] include"
    assert tops - on_disk == set(), f"include names packages that do not exist: {sorted(tops - on_disk)}"


def test_package_data_globs_cover_every_runtime_file() -> None:
    """Every non-Python file under the packages (templates, static JS/CSS, the toy model's assets)
    matches a [tool.setuptools.package-data] glob, and every Python file sits in a package
    (`packages.find` skips folders without __init__.py, and their modules with them)."""
    package_data = _pyproject()["tool"]["setuptools"].get("package-data", {})
    files = _package_files()
    assert len(files) > 100, files  # the listing worked
    missing_data, outside_packages = [], []
    for f in files:
        rel = f.relative_to(ROOT)
        if f.suffix == ".py":
            if any(not (ROOT.joinpath(*rel.parts[:i]) / "__init__.py").is_file() for i in range(1, len(rel.parts))):
                outside_packages.append(str(rel))
            continue
        # the data of the nearest enclosing package (or of any package above it: setuptools reads both)
        owners = [".".join(rel.parts[:i]) for i in range(1, len(rel.parts))
                  if (ROOT.joinpath(*rel.parts[:i]) / "__init__.py").is_file()]
        if not any(f in _shipped_data(package_data, ROOT / owner.replace(".", "/"), owner) for owner in owners):
            missing_data.append(str(rel))
    assert missing_data == [], f"not shipped in the wheel; add a glob to [tool.setuptools.package-data]: {missing_data}"
    assert outside_packages == [], f"modules in a folder without __init__.py are not shipped: {outside_packages}"


def test_package_data_globs_match_something() -> None:
    """A glob that matches nothing is a typo or a leftover (and hides the file it meant)."""
    package_data = _pyproject()["tool"]["setuptools"].get("package-data", {})
    for package, patterns in package_data.items():
        for pattern in patterns:
            hits = [p for p in glob.glob(str(ROOT / package.replace(".", "/") / pattern), recursive=True)
                    if Path(p).is_file()]
            assert hits, f"package-data {package!r}: {pattern!r} matches no file"


def test_no_placeholder_address_is_published() -> None:
    """[project.urls] becomes the links on the package's index page: an address that resolves nowhere
    (a reserved name: .invalid, .example, .test, example.com, localhost) would be published as the
    project's home. Until there is a real address there are none."""
    from urllib.parse import urlsplit

    placeholders = []
    for name, url in _pyproject()["project"].get("urls", {}).items():
        host = (urlsplit(url).hostname or "").rstrip(".")
        if host in ("localhost", "example.com", "example.org", "example.net") or \
                host.rsplit(".", 1)[-1] in ("invalid", "example", "test", "localhost"):
            placeholders.append(f"{name} = {url}")
    assert placeholders == [], f"placeholder addresses in [project.urls]: {placeholders}"


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True,
                          env={"GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@x", "GIT_COMMITTER_NAME": "u",
                               "GIT_COMMITTER_EMAIL": "u@x", "PATH": "/usr/bin:/bin"}).stdout.strip()


def test_git_commit_is_not_the_users_project_commit(tmp_path) -> None:
    """saesteer pip-installed into `.venv/` inside the user's own repository: the SAE's provenance
    must not record the user's commit as the code that trained it."""
    from training.report import git_commit

    project = tmp_path / "project"
    project.mkdir()
    _git(project, "init", "-q")
    (project / "notes.txt").write_text("mine\n")
    _git(project, "add", "notes.txt")
    _git(project, "commit", "-qm", "init")
    installed = project / ".venv" / "lib" / "site-packages" / "training"
    installed.mkdir(parents=True)
    (installed / "report.py").write_text("# the installed copy\n")
    assert git_commit(installed / "report.py") is None
    assert git_commit(installed) is None
    assert git_commit(project / "notes.txt") == _git(project, "rev-parse", "HEAD")  # a checkout's own file


def test_an_installed_toy_model_is_not_overwritten(tmp_path, monkeypatch, capsys) -> None:
    """`python -m toyworld.train` / `toyworld.evaluate --write` (the README's rebuild) in a pip-installed
    copy: their default folder is the shipped model in site-packages, whose hash the user's stores
    record. Refused, asking for a folder of their own; in a checkout the default stays."""
    import toyworld.evaluate
    import toyworld.model
    import toyworld.train

    assert not toyworld.model.is_installed_assets(toyworld.model.ASSETS_DIR)  # this checkout rebuilds in place
    installed = tmp_path / "lib" / "site-packages" / "toyworld" / "assets"
    installed.mkdir(parents=True)
    monkeypatch.setattr(toyworld.model, "ASSETS_DIR", installed)
    for main, argv in ((toyworld.train.main, ["--out", str(installed), "--steps", "1"]),
                       (toyworld.evaluate.main, ["--model-dir", str(installed), "--write"])):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "installed saesteer" in capsys.readouterr().err
    assert list(installed.iterdir()) == []


# The standard library's names newer than 3.10 that code here could reach for; an import of one
# inside `try: ... except ImportError` (a fallback, as configargs reads TOML) or under
# `if sys.version_info ...` is fine.
_NEWER_STDLIB = {
    (3, 11): {"tomllib": None, "datetime": {"UTC"}, "enum": {"StrEnum", "ReprEnum", "verify", "member", "nonmember"},
              "typing": {"Self", "LiteralString", "Never", "assert_never", "assert_type", "reveal_type", "Required",
                         "NotRequired", "Unpack", "TypeVarTuple", "dataclass_transform"},
              "asyncio": {"TaskGroup", "timeout", "timeout_at", "Runner", "Barrier"}, "sys": {"exception"},
              "hashlib": {"file_digest"}, "contextlib": {"chdir"}, "operator": {"call"}, "math": {"cbrt", "exp2"},
              "logging": {"getLevelNamesMapping"}, "re": {"NOFLAG"},
              "builtins": {"ExceptionGroup", "BaseExceptionGroup"}},
    (3, 12): {"itertools": {"batched"}, "typing": {"override", "TypeAliasType", "get_original_bases"},
              "math": {"sumprod"}},
    (3, 13): {"copy": {"replace"}, "warnings": {"deprecated"}, "typing": {"TypeIs", "ReadOnly", "NoDefault"},
              "math": {"fma"}},
}


def _requires_python_floor() -> tuple[int, int]:
    import re

    spec = _pyproject()["project"]["requires-python"]
    m = re.fullmatch(r">=\s*3\.(\d+)", spec.strip())
    assert m, f"requires-python {spec!r}: this check reads a plain '>=3.N'"
    return 3, int(m.group(1))


def _newer_than(floor: tuple[int, int], tree) -> list[str]:
    """The uses in `tree` of standard-library names newer than `floor` (outside ImportError fallbacks)."""
    import ast

    newer: dict[str, set[str] | None] = {}
    for version, names in _NEWER_STDLIB.items():
        if version > floor:
            for module, members in names.items():
                newer[module] = None if members is None else (newer.get(module) or set()) | members
    def falls_back(handler) -> bool:  # except ImportError / ModuleNotFoundError (alone or in a tuple)
        caught = ast.unparse(handler.type) if handler.type is not None else ""
        return "ImportError" in caught or "ModuleNotFoundError" in caught

    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(falls_back(h) for h in node.handlers):
            guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
        elif isinstance(node, ast.If) and "version_info" in ast.unparse(node.test):  # either branch
            guarded |= {id(n) for stmt in node.body + node.orelse for n in ast.walk(stmt)}
    modules = {m: m for m in newer}  # the name a module goes by here: `import asyncio as aio` -> aio
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update({a.asname: a.name for a in node.names if a.asname and a.name in newer})
    found = []
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name in newer and newer[a.name] is None]
        elif isinstance(node, ast.ImportFrom) and node.module in newer:
            members = newer[node.module]
            found += [f"{node.module}.{a.name}" for a in node.names if members is None or a.name in members]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            module = modules[node.value.id]
            found += [f"{module}.{node.attr}"] if node.attr in (newer[module] or ()) else []
        elif isinstance(node, ast.Name) and node.id in (newer.get("builtins") or ()):
            found.append(node.id)
    return found


def test_the_python_floor_check_finds_what_a_newer_python_added() -> None:
    """The check below can fail: a 3.11 grammar or standard-library name planted in a module is found
    (an alias included), a guarded fallback is not."""
    import ast

    planted = ("import asyncio as aio\nimport sys\nimport tomllib\nfrom typing import Self\n"
               "x = aio.TaskGroup, sys.exception(), ExceptionGroup\nimport copy\ny = copy.replace\n")
    assert sorted(_newer_than((3, 10), ast.parse(planted))) == \
        ["ExceptionGroup", "asyncio.TaskGroup", "copy.replace", "sys.exception", "tomllib", "typing.Self"]
    assert _newer_than((3, 12), ast.parse(planted)) == ["copy.replace"]
    guarded = ("try:\n    import tomllib\nexcept ModuleNotFoundError:\n    tomllib = None\n"
               "import sys\nif sys.version_info < (3, 11):\n    pass\nelse:\n    from typing import Self\n")
    assert _newer_than((3, 10), ast.parse(guarded)) == []
    with pytest.raises(SyntaxError, match="3.11"):
        ast.parse("try:\n    pass\nexcept* ValueError:\n    pass\n", feature_version=(3, 10))


def test_the_code_runs_on_the_oldest_python_requires_python_names() -> None:
    """requires-python promises 3.10: every shipped module parses as that version's grammar (no
    `except*`, no `type X = ...`) and uses no standard-library name added after it. (Checked by hand
    with a 3.10 interpreter and vermin; this keeps it true without one. 3.12's nested f-strings are
    refused by the parser of the 3.11 this runs on; ast's feature_version does not look at them.)"""
    import ast

    floor = _requires_python_floor()
    problems = []
    for f in _package_files():
        if f.suffix != ".py":
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"), filename=str(f), feature_version=floor)
        except SyntaxError as e:
            problems.append(f"{f.relative_to(ROOT)}:{e.lineno}: not Python {floor[0]}.{floor[1]} syntax ({e.msg})")
            continue
        problems += [f"{f.relative_to(ROOT)}: {name} is newer than Python {floor[0]}.{floor[1]}"
                     for name in _newer_than(floor, tree)]
    assert problems == [], "\n".join(problems)


def _checkout_with_a_fake_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of what scripts/setup.sh reads, with a .venv whose python has torch and whose pip
    only writes its arguments down (one call a line), so the script's choices show without installing."""
    for name in ("scripts/setup.sh", "scripts/constraints.txt", "scripts/interop-libraries.txt", "pyproject.toml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    (tmp_path / "scripts" / "setup.sh").chmod(0o755)
    calls = tmp_path / "pip-calls.txt"
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text("#!/bin/sh\nexit 0\n")  # `import torch` succeeds
    (bin_dir / "pip").write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return tmp_path, calls


def test_setup_sh_installs_the_map_extra_and_redoes_it_when_the_script_changes(tmp_path) -> None:
    """A checkout's plain setup installs the map extra (umap-learn, for `features map`); --dev its dev
    extra. A second run only checks, unless pyproject.toml or the script itself changed since: a
    stamp left by an older setup.sh may stand for other extras. An unknown argument is refused."""
    import os
    import time

    repo, calls = _checkout_with_a_fake_venv(tmp_path)

    def setup(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
        calls.unlink(missing_ok=True)
        r = subprocess.run(["bash", str(repo / "scripts" / "setup.sh"), *args], capture_output=True, text=True)
        return r, calls.read_text().splitlines() if calls.exists() else []

    r, pip = setup()
    assert r.returncode == 0, r.stderr
    assert pip == ["install --quiet -c scripts/constraints.txt -e .[map]"], pip
    assert setup()[1] == []  # done already
    later = time.time() + 10
    os.utime(repo / "scripts" / "setup.sh", (later, later))  # a newer setup.sh (git pull)
    assert setup()[1] == ["install --quiet -c scripts/constraints.txt -e .[map]"]
    (repo / ".venv" / "wheels").mkdir()
    (repo / ".venv" / "wheels" / "eai_delphi-0.1.3-py3-none-any.whl").write_text("")  # downloaded already
    r, pip = setup("--dev")
    assert r.returncode == 0 and pip[0] == "install --quiet -c scripts/constraints.txt -e .[dev]", (r.stderr, pip)
    r, pip = setup("-dev")
    assert r.returncode == 2 and pip == [] and "unknown argument '-dev'" in r.stderr, r.stderr


def test_the_dev_extra_holds_every_other_extra() -> None:
    """`scripts/setup.sh --dev` (what `make test` and CI run) installs the dev extra only: it must hold
    every requirement of the other extras (map's umap-learn, semantic's MiniLM), or their tests cannot run."""
    extras = _pyproject()["project"]["optional-dependencies"]
    missing = {name: sorted(set(reqs) - set(extras["dev"])) for name, reqs in extras.items() if name != "dev"}
    assert {k: v for k, v in missing.items() if v} == {}, "add these to the dev extra"
