"""`pip install saesteer` as a user gets it: the sdist and the wheel built from the tracked files,
the wheel installed into a fresh virtualenv that sees this environment's dependencies (a .pth file)
but not the repository, and used from an empty folder: `--version`, `--help`, the demo (its toy model
from the package), the web app's pages and static files, an HTML export. Slow (a build, the demo).

The virtualenv sits inside a git repository of the "user's project", as `.venv/` often does: the
SAE's provenance must not record that project's commit as saesteer's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest

from helpers.demo_small import small_flags
from helpers.real_cli import OFFLINE_ENV
from helpers.web_app import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("saes", "training", "features", "autointerp", "steering", "evals", "toyworld", "saesteer")


def _run(argv: list, cwd: Path, env: dict | None = None, timeout: float = 900) -> str:
    out = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{argv} -> {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False)
    if out.returncode != 0 or not out.stdout:
        pytest.skip("needs a git checkout (the build starts from the tracked files)")
    return [p for p in out.stdout.decode().split("\0") if p and (ROOT / p).is_file()]


def _build_requirements_met() -> None:
    """The build runs without isolation (no download): pyproject's build requirements must be here."""
    import importlib.metadata

    from packaging.requirements import Requirement

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]:
        req = Requirement(spec)
        try:
            have = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"building the wheel needs {spec} in this environment")
        if not req.specifier.contains(have, prereleases=True):
            pytest.skip(f"building the wheel needs {spec}; this environment has {req.name} {have}")


def _build(tmp: Path) -> tuple[Path, Path, list[str]]:
    """sdist from a copy of the tracked files (no stale build/ of the checkout, nothing written
    into it), then the wheel from the unpacked sdist, as pip builds one."""
    _build_requirements_met()
    tracked = _tracked()
    src, dist = tmp / "src", tmp / "dist"
    for rel in tracked:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    # setuptools' deprecations as errors: each one is a date after which the build stops working
    _run([sys.executable, "-c", "import warnings; from setuptools.warnings import SetuptoolsDeprecationWarning as W; "
          "warnings.simplefilter('error', W); from setuptools import build_meta as b; "
          f"b.build_sdist({str(dist)!r})"], src)
    (sdist,) = dist.glob("saesteer-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (unpacked,) = (tmp / "unpacked").iterdir()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, unpacked], tmp)
    (wheel,) = dist.glob("saesteer-*.whl")
    return sdist, wheel, tracked


def _user_venv(project: Path, wheel: Path) -> Path:
    """A fresh venv in the user's project, this environment's site-packages reachable through a .pth
    (plain paths: their .pth files, this checkout's editable install among them, are not run)."""
    _run([sys.executable, "-m", "venv", "--without-pip", project / ".venv"], project)
    python = project / ".venv" / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], project).strip()
    ours = [p for p in site.getsitepackages() if Path(p).is_dir()]
    Path(purelib, "zz_dependencies.pth").write_text("\n".join(ours) + "\n")
    # --ignore-installed: never touch the saesteer this environment has (an editable install)
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", "--no-compile", wheel], project)
    return python


def _serve(saesteer: Path, store: Path, cwd: Path, env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([saesteer, "serve", "--store", store, "--port", str(port)], cwd=cwd, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = ""
    for line in proc.stdout:
        seen += line
        if "serving on http://127.0.0.1:" in line:
            return proc, f"http://127.0.0.1:{port}"
    proc.wait(timeout=60)
    raise AssertionError(f"saesteer serve did not start:\n{seen[-3000:]}")


def test_the_wheel_installed_outside_the_repo(tmp_path: Path) -> None:
    sdist, wheel, tracked = _build(tmp_path / "build")
    runtime = sorted(p for p in tracked if p.split("/")[0] in PACKAGES)

    # the sdist holds the packages and what building them needs; the wheel exactly the packages
    with tarfile.open(sdist) as tar:
        in_sdist = sorted(m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile())
    generated = {"PKG-INFO", "setup.cfg"}
    assert [p for p in in_sdist if p not in generated and not p.startswith("saesteer.egg-info/")] == \
        sorted(runtime + ["MANIFEST.in", "README.md", "pyproject.toml"])
    with zipfile.ZipFile(wheel) as whl:
        in_wheel = sorted(n for n in whl.namelist() if ".dist-info/" not in n)
    assert in_wheel == runtime

    project = tmp_path / "project"  # the user's own repository, .venv inside it
    project.mkdir()
    git_env = {**os.environ, "GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@x", "GIT_COMMITTER_NAME": "u",
               "GIT_COMMITTER_EMAIL": "u@x"}
    _run(["git", "init", "-q"], project, git_env)
    (project / "notes.txt").write_text("mine\n")
    _run(["git", "add", "notes.txt"], project, git_env)
    _run(["git", "commit", "-qm", "init"], project, git_env)
    python = _user_venv(project, wheel)
    bin_dir = python.parent
    saesteer = bin_dir / "saesteer"
    work = project / "work"  # empty; neither the repository nor PYTHONPATH in sight
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OFFLINE_ENV, PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONNOUSERSITE="1")

    where = _run([python, "-c", "import saesteer, toyworld, importlib.metadata as m; "
                  "print(saesteer.__file__, toyworld.__file__, m.version('saesteer'), saesteer.__version__)"], work, env)
    saesteer_file, toyworld_file, dist_version, version = where.split()
    purelib = project / ".venv" / "lib"
    assert Path(saesteer_file).is_relative_to(purelib) and Path(toyworld_file).is_relative_to(purelib), where
    assert dist_version == version, "pip's version and saesteer.__version__ differ"
    # what pip reads: no project links (no public address yet: a placeholder would be published as
    # one), and umap-learn (numba, llvmlite) only with the map extra
    meta = json.loads(_run([python, "-c", "import json, importlib.metadata as m; d = m.metadata('saesteer'); "
                            "print(json.dumps([d.get_all('Project-URL'), d.get_all('Requires-Dist')]))"], work, env))
    assert meta[0] is None, meta[0]
    umap = [r for r in meta[1] if r.startswith("umap-learn")]
    assert 'umap-learn>=0.5.5; extra == "map"' in umap and all("; extra == " in r for r in umap), meta[1]
    assert _run([saesteer, "--version"], work, env).strip() == f"saesteer {version}"
    assert "saesteer demo" in _run([saesteer, "--help"], work, env)
    assert "saesteer demo" in _run([python, "-m", "saesteer", "--help"], work, env)

    _run([saesteer, "demo", "--fresh", "--no-serve", "--no-progress", *small_flags()], work, env)
    demo = work / "runs" / "demo"
    assert (demo / "summary.json").is_file() and (demo / "features.db").is_file()
    (sae_dir,) = (demo / "train" / "saes").iterdir()
    provenance = json.loads((sae_dir / "saesteer.json").read_text())
    assert provenance["git_commit"] is None, "the user's project commit was recorded as saesteer's"
    assert provenance["saesteer_version"] == version

    proc, base = _serve(saesteer, demo / "features.db", work, env)
    try:
        with httpx.Client(base_url=base, timeout=120, follow_redirects=True) as c:
            sid = c.get("/api/status").json()["stores"][0]["id"]
            statics = set()
            for page in ("", "/steer", "/f/0", "/map", "/fire", "/search?q=the"):
                r = c.get(f"/s/{sid}{page}")
                assert r.status_code == 200, (page, r.status_code, r.text[:300])
                statics |= {s.split("?")[0] for s in re.findall(r'(?:src|href)="(/static/[^"]+)"', r.text)}
            assert {"/static/app.js", "/static/app.css", "/static/readable.js", "/static/steer.js"} <= statics, statics
            for path in statics:
                r = c.get(path)
                assert r.status_code == 200, (path, r.status_code)
                shipped = ROOT / "saesteer" / "web" / path.lstrip("/")
                if shipped.is_file():
                    assert r.content == shipped.read_bytes(), path
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        proc.stdout.close()

    _run([saesteer, "features", "export", demo / "features.db", work / "dash", "--limit", "3", "--no-progress"], work, env)
    assert (work / "dash" / "index.html").is_file()
    # nothing written into the installed packages (a user's site-packages may be read-only)
    site_dir = Path(saesteer_file).parent.parent
    record = (site_dir / f"saesteer-{version}.dist-info" / "RECORD").read_text()
    recorded = {line.split(",")[0] for line in record.splitlines()}
    written = [str(p.relative_to(site_dir)) for top in PACKAGES for p in (site_dir / top).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts]
    assert [p for p in written if p not in recorded] == []
