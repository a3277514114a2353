"""The examples in README.md and docs/*.md as a user copies them (docs/cli.md is generated from
--help and checked by tests/test_docs_cli.py; the notebooks run in tests/test_notebooks.py).

What is checked, without a marker:
- every `saesteer ...` command line in a fenced or indented code block (also `python -m saesteer`, `torchrun ... -m
  saesteer`, `.venv/bin/saesteer`; backslash continuations joined, `# comments` and `...` dropped,
  `VAR=value` lines substituted into `$VAR`; in a block whose commands start with `$ `, only those
  lines, the rest being output) parses with the real argument parser;
- every `saesteer CMD ...` in an inline code span (of the docs and of the notebooks' markdown cells)
  names a command that exists and only options it has; every `--option` in an inline code span is an
  option of some command (other programs' spans and `KNOWN_OTHER_FLAGS` excepted);
- every row of the README's "What we measured" table names the benchmarks/ script that prints it;
- every python block compiles; every name it imports from our packages (or reaches through one it
  imports) exists and is public, every call of one binds to its signature, and no class or config of
  ours is used without being imported.

Markers: an HTML comment on the line before a fence (blank lines allowed between):
- `<!-- docs-test: synopsis -->`: command forms with placeholders (`STORE`, `[--opt]`): only the
  command and its options are checked, as for inline spans;
- `<!-- docs-test: sketch -->`: python that is not meant to run as is (signatures): only the dotted
  names of our packages it mentions are checked;
- `<!-- docs-test: run -->`: a python block executed, in order with the file's other `run` blocks, in
  a temporary folder holding what the README's tour would have written at the paths it names, with
  stand-ins made in a second (a toy-model SAE of the right shape with random weights);
- `<!-- docs-test: run-after-tour -->`: a python block executed after the README's tour itself ran
  on the toy world in a temporary folder, budgets shrunk by `TOUR_BUDGETS` (slow);
- `<!-- docs-test: run-on-tiny-gpt2 -->`: a GPT-2 python block executed on the CPU with a tiny local
  GPT-2 (tests/helpers/tiny_hf.py) and local toy-world text, the hub names, device and sizes swapped
  by `TINY_GPT2` (slow).

A failure names the doc file and line of the example.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import importlib
import inspect
import io
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "cli.md")]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
OURS = ("saes", "training", "features", "autointerp", "steering", "toyworld", "saesteer")
MARKERS = ("", "synopsis", "sketch", "run", "run-after-tour", "run-on-tiny-gpt2")
# inline spans of other programs that name their own flags
OTHER_PROGRAMS = ("torchrun", "python", "bench_", "pip", ".venv/bin/pip", "huggingface-cli", "bash", "make")
KNOWN_OTHER_FLAGS = {"--train-tags": "python -m toyworld.corpus", "--dry": "benchmarks/gpu_check.sh"}
# the README's tour at toy size: (as written, as run)
TOUR_BUDGETS = [("--max-tokens 2000000", "--max-tokens 60000"), ("--max-tokens 500000", "--max-tokens 40000"),
                ("--total-tokens 1000000", "--total-tokens 40000"), ("--total-tokens 400000", "--total-tokens 30000"),
                ("--total-tokens 200000", "--total-tokens 20000"), ("--latents 0-99", "--latents 0-2"),
                ("--limit 100", "--limit 20")]

# a GPT-2 example on the CPU: (as written, as run); {model} is the tiny GPT-2's folder
TINY_GPT2 = [('load_model("gpt2", device="cuda")', 'load_model({model!r}, device="cpu")'),
             ('"Skylion007/openwebtext"', '"data/train.jsonl"'), ("context_length=128", "context_length=32"),
             ("max_tokens=100_000_000", "max_tokens=8_000"), ("d_sae=24576, k=64", "d_sae=64, k=4"),
             ("total_tokens=300_000_000, batch_size=4096", "total_tokens=8_000, batch_size=512"),
             ('device="cuda", step_method="fast_bf16"', 'device="cpu", step_method="fast"'),
             ("every_tokens=20_000_000", "every_tokens=4_000"), ("wandb=True", "wandb=False"),
             ('CacheReader("caches/gpt2-l6", 4096', 'CacheReader("caches/gpt2-l6", 512'),
             ("model.tokenizer, 64,", "model.tokenizer, 4,")]


# ------------------------------------------------------------------------------------------ extraction
@dataclass
class Block:
    path: Path
    line: int  # of the block's first line (after the fence)
    lang: str
    lines: list[str]
    marker: str

    def where(self, offset: int = 0) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line + offset}"

    @property
    def code(self) -> str:
        return "\n".join(self.lines)


def blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        m = re.match(r"^\s*```(\w*)\s*$", lines[i])
        if not m:
            if lines[i].startswith("    ") and lines[i].strip() and (i == 0 or not lines[i - 1].strip()):
                j = i  # an indented code block
                while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                    j += 1
                found.append(Block(path, i + 1, "indented", [s[4:] for s in lines[i:j]], ""))
                i = j
                continue
            i += 1
            continue
        j = i + 1
        while not lines[j].strip().startswith("```"):
            j += 1
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        mk = re.fullmatch(r"<!-- docs-test: ([\w-]+) -->", lines[k].strip()) if k >= 0 else None
        marker = mk.group(1) if mk else ""
        assert marker in MARKERS, f"{path.relative_to(ROOT)}:{k + 1}: unknown marker {marker!r}"
        found.append(Block(path, i + 2, m.group(1), lines[i + 1:j], marker))
        i = j + 1
    return found


def command_lines(block: Block) -> list[tuple[int, str, list[str]]]:
    """(line, text, argv after `saesteer`) of each saesteer command in a shell block."""
    prompted = any(line.startswith("$ ") for line in block.lines)
    env: dict[str, str] = {}
    found, buf, first = [], "", None
    for n, raw in enumerate(block.lines):
        first = n if first is None else first
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        text, buf, start, first = (buf + raw).strip(), "", first, None
        if prompted:
            if not text.startswith("$ "):
                continue
            text = text[2:]
        try:
            toks = shlex.split(text, comments=True)
        except ValueError:
            continue
        if len(toks) == 1 and re.fullmatch(r"[A-Z_]+=\S+", toks[0]):
            key, value = toks[0].split("=", 1)
            env[key] = value
            continue
        at = next((i for i, t in enumerate(toks) if (t == "saesteer" or t.endswith("/saesteer"))
                   and (i == 0 or toks[i - 1] == "-m")), None)
        if at is None:
            continue
        argv = [re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), m.group(0)), t) for t in toks[at + 1:]]
        found.append((start, text, [t for t in argv if t != "..."]))
    return found


def prose(path: Path) -> list[tuple[str, str]]:
    """(where, line) of each line of markdown outside fenced blocks; a notebook's markdown cells."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        texts = [(f"{path.relative_to(ROOT)} cell {i}", "".join(c["source"])) for i, c in enumerate(cells)
                 if c["cell_type"] == "markdown"]
    else:
        texts = [(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))]
    lines, fenced = [], False
    for name, text in texts:
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip().startswith("```"):
                fenced = not fenced
            elif not fenced:
                lines.append((f"{name}:{n}", line))
    return lines


def inline_spans(path: Path) -> list[tuple[str, str]]:
    return [(where, m.group(1)) for where, line in prose(path) for m in re.finditer(r"`([^`]+)`", line)]


# ------------------------------------------------------------------------------------------ the parser
@functools.lru_cache(maxsize=1)
def _parser() -> argparse.ArgumentParser:
    from saesteer.cli import build_parser

    return build_parser()


def _subparsers(p: argparse.ArgumentParser):
    return next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)


def parse_error(argv: list[str]) -> str | None:
    """What the real parser says about `saesteer ARGV` (None: it parses)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            _parser().parse_args(argv)
        except SystemExit as e:
            return err.getvalue().strip().replace("\n", " ") or f"exit {e.code}"
    return None


def option_error(argv: list[str]) -> str | None:
    """Whether a partial command line names an existing command and only options it has."""
    p, path, rest = _parser(), [], list(argv)
    while rest and not rest[0].startswith("-") and (sub := _subparsers(p)):
        name = rest.pop(0)
        if name not in sub.choices:
            return f"no command `saesteer {' '.join([*path, name])}`"
        path.append(name)
        p = sub.choices[name]
    options = {o for a in p._actions for o in a.option_strings}
    for flag in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)(?!\*)", " ".join(rest)):
        if flag not in options:
            return f"`saesteer {' '.join(path)}` has no option {flag}"
    return None


def every_option() -> set[str]:
    found: set[str] = set()

    def walk(p):
        for a in p._actions:
            found.update(a.option_strings)
            if isinstance(a, argparse._SubParsersAction):
                for child in a.choices.values():
                    walk(child)
    walk(_parser())
    return found


# ------------------------------------------------------------------------------------------ python names
def _imported(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted name, for what the code imports from our packages."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OURS:
            names.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in OURS:
                    names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
    return names


def _dotted(node: ast.AST, names: dict[str, str]) -> str | None:
    chain = []
    while isinstance(node, ast.Attribute):
        chain.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in names:
        return ".".join([names[node.id], *reversed(chain)])
    return None


def lookup(dotted: str):
    """The object a dotted name of ours means, or a string saying why there is none."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ImportError:
            continue
    else:
        return f"{dotted}: no such module"
    for part in parts[i:]:
        if part.startswith("_"):
            return f"{dotted}: {part} is private"
        if not hasattr(obj, part) and inspect.ismodule(obj):
            with contextlib.suppress(ImportError):
                importlib.import_module(f"{obj.__name__}.{part}")
        if not hasattr(obj, part):
            return f"{dotted}: {getattr(obj, '__name__', obj)} has no {part}"
        obj = getattr(obj, part)
    return obj


def name_problems(block: Block) -> list[str]:
    if block.marker == "sketch":
        mentioned = set(re.findall(r"\b((?:%s)(?:\.\w+)+)" % "|".join(OURS), block.code))
        return [f"{block.where()}: {r}" for d in sorted(mentioned) if isinstance(r := lookup(d), str)]
    try:
        tree = ast.parse(block.code)
    except SyntaxError as e:
        return [f"{block.where((e.lineno or 1) - 1)}: does not compile ({e.msg}); mark it `sketch` if it is not Python"]
    names, problems = _imported(tree), []
    for node in ast.walk(tree):
        dotted = _dotted(node, names) if isinstance(node, (ast.Attribute, ast.Name)) else None
        if dotted and isinstance(r := lookup(dotted), str):
            problems.append(f"{block.where(node.lineno - 1)}: {r}")
        if not isinstance(node, ast.Call) or not (dotted := _dotted(node.func, names)):
            continue
        if isinstance(obj := lookup(dotted), str) or any(isinstance(a, ast.Starred) for a in node.args) \
                or any(k.arg is None for k in node.keywords):
            continue
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            continue
        try:
            sig.bind(*node.args, **{k.arg: None for k in node.keywords})
        except TypeError as e:
            problems.append(f"{block.where(node.lineno - 1)}: {dotted}(...): {e}")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OURS:
            problems += [f"{block.where(node.lineno - 1)}: {r}"
                         for a in node.names if isinstance(r := lookup(f"{node.module}.{a.name}"), str)]
    return problems + _not_imported(block, tree)


def _not_imported(block: Block, tree: ast.AST) -> list[str]:
    """Names of our packages' APIs the code uses but never imports (a copied snippet's NameError)."""
    bound = {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
             for a in n.names}
    bound |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    bound |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    bound |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments) for a in n.args}
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in bound \
                and node.id[:1].isupper() and not hasattr(__builtins__ if isinstance(__builtins__, dict) else
                                                           __builtins__, node.id):
            homes = [pkg for pkg in OURS if not isinstance(lookup(f"{pkg}.{node.id}"), str)]
            if homes:
                problems.append(f"{block.where(node.lineno - 1)}: uses {node.id} without importing it "
                                f"(from {homes[0]} import {node.id})")
    return problems


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


# ------------------------------------------------------------------------------------------ fast checks
@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_command_lines_parse(doc: Path) -> None:
    problems = []
    for block in blocks(doc):
        for n, text, argv in command_lines(block):
            error = option_error(argv) if block.marker == "synopsis" else parse_error(argv)
            if error:
                problems.append(f"{block.where(n)}: `{text}`\n    {error}")
    assert not problems, "\n".join(problems)


def test_the_extractor_finds_the_examples() -> None:
    """A parser change that found nothing would pass every check above."""
    tour = _tour_commands()
    assert len(tour) >= 20 and tour[0][1][:1] == ["cache"], tour
    found = {(b.marker, b.lang) for d in DOCS for b in blocks(d)}
    assert {("run", "python"), ("run-after-tour", "python"), ("synopsis", ""), ("", "indented")} <= found, found


@pytest.mark.parametrize("doc", DOCS + NOTEBOOKS, ids=_ids(DOCS + NOTEBOOKS))
def test_inline_commands_and_options_exist(doc: Path) -> None:
    known, problems = every_option(), []
    for where, span in inline_spans(doc):
        if span.startswith("saesteer "):
            if error := option_error(shlex.split(span)[1:]):
                problems.append(f"{where}: `{span}`: {error}")
        elif not span.startswith(OTHER_PROGRAMS):
            problems += [f"{where}: `{span}`: no command has {flag}"
                         for flag in re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)(?![\w*-])", span)
                         if flag not in known and flag not in KNOWN_OTHER_FLAGS]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_python_blocks_name_what_exists(doc: Path) -> None:
    problems = [p for b in blocks(doc) if b.lang == "python" for p in name_problems(b)]
    assert not problems, "\n".join(problems)


def _run_blocks(marker: str, folder: Path, monkeypatch, replace: tuple[str, str] = ("", "")) -> list[str]:
    """Execute every python block marked `marker`, each doc's in order in one namespace, in `folder`
    (`replace`: a text of the examples swapped for another, e.g. the API's address)."""
    monkeypatch.chdir(folder)
    ran = []
    for doc in DOCS:
        namespace: dict = {"__name__": "__docs__"}
        for block in (b for b in blocks(doc) if b.marker == marker):
            out = io.StringIO()
            code = block.code.replace(*replace) if replace[0] else block.code
            try:
                with contextlib.redirect_stdout(out):
                    exec(compile(code, block.where(), "exec"), namespace)
            except Exception as e:
                raise AssertionError(f"{block.where()}: the example fails: {type(e).__name__}: {e}") from e
            ran.append(f"{block.where()}\n{out.getvalue()}")
    return ran


def _tour_stand_ins(folder: Path) -> None:
    """What the README's tour writes at the paths the `run` examples read: toy-model SAEs, random."""
    import torch

    import saes

    g = torch.Generator().manual_seed(0)
    for name, arch, kw in [("matryoshka_batchtopk_k32_f1024", "matryoshka_batchtopk",
                            {"matryoshka_widths": [256, 1024]}),
                           ("topk_k32_f1024", "topk", {})]:
        sae = saes.create_sae(arch, 128, 1024, k=32, generator=g, **kw)
        sae.cfg.metadata["hook_name"] = "blocks.2.hook_resid_post"
        saes.save_sae(sae, folder / "runs" / "toy" / "saes" / name, provenance={"model": "toy"})


def test_run_examples_run(tmp_path: Path, monkeypatch) -> None:
    from helpers.threads import torch_threads

    _tour_stand_ins(tmp_path)
    with torch_threads(1):
        ran = _run_blocks("run", tmp_path, monkeypatch)
    assert ran, "no block is marked `<!-- docs-test: run -->`"
    printed = {r.split("\n", 1)[0].split(":")[0]: r.split("\n", 1)[1] for r in ran}
    assert re.fullmatch(r"\[['\"].+['\"]\]\n", printed["README.md"]), printed  # the steered text, a list of one
    assert printed["docs/api.md"].strip(), printed  # the engine's finished row


# ------------------------------------------------------------------------------------------ the tour
def _tour_commands() -> list[tuple[str, list[str]]]:
    block = next(b for b in blocks(ROOT / "README.md") if any(a[:1] == ["train"] for _, _, a in command_lines(b)))
    tour = []
    for n, _, argv in command_lines(block):
        line = shlex.join(argv)
        for written, run in TOUR_BUDGETS:
            line = line.replace(written, run)
        tour.append((block.where(n), shlex.split(line)))
    return tour


def _server(argv: list[str], cwd: Path, env: dict, where: str) -> subprocess.Popen:
    """`saesteer serve/api ...` started; returned once it prints the address it serves."""
    proc = subprocess.Popen([sys.executable, "-m", "saesteer", *argv], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = ""
    for line in proc.stdout:
        seen += line
        if "serving on http://127.0.0.1:" in line:
            return proc
    proc.wait(timeout=60)
    raise AssertionError(f"{where}: `saesteer {shlex.join(argv)}` did not start:\n{seen[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    finally:
        proc.stdout.close()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_readme_tour_runs_on_the_toy_world(tmp_path: Path, monkeypatch) -> None:
    """The README's tour, in order, through the CLI's `main` in this process (one import of torch and
    TransformerLens for all); the servers through `python -m saesteer`, started, then stopped once they
    serve. Then the `run-after-tour` examples, the API ones against `saesteer api` on its store."""
    from helpers.real_cli import OFFLINE_ENV, saesteer
    from helpers.web_app import free_port

    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(ROOT)}
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    for where, argv in _tour_commands():
        if argv[0] in ("serve", "api"):
            _stop(_server([*argv, "--port", str(free_port())], tmp_path, env, where))
            continue
        r = saesteer(*argv)
        assert r.rc == 0, f"{where}: `saesteer {shlex.join(argv)}` failed:\n{r.text[-3000:]}"
    port = free_port()
    api = _server(["api", "--store", "stores/toy.db", "--port", str(port)], tmp_path, env, "docs/api.md")
    try:
        ran = _run_blocks("run-after-tour", tmp_path, monkeypatch,
                          replace=("http://127.0.0.1:8000", f"http://127.0.0.1:{port}"))
    finally:
        _stop(api)
    assert {r.split(":", 1)[0] for r in ran} >= {"docs/api.md", "docs/features.md"}, ran


@pytest.mark.slow
def test_gpt2_examples_run_on_a_tiny_gpt2(tmp_path: Path, monkeypatch) -> None:
    import toyworld
    from helpers.tiny_hf import save_tiny_gpt2

    model = save_tiny_gpt2(tmp_path / "tiny-gpt2", n_layer=8, n_positions=128)  # the examples read blocks.6
    (tmp_path / "data").mkdir()
    for name, n, first in [("train.jsonl", 300, 0), ("held-out.jsonl", 40, 10_000)]:
        docs = (json.dumps({"text": toyworld.generate_document(f"doc-{first + i}").text}) for i in range(n))
        (tmp_path / "data" / name).write_text("\n".join(docs) + "\n")
    monkeypatch.chdir(tmp_path)
    ran = 0
    for doc in DOCS:
        for block in (b for b in blocks(doc) if b.marker == "run-on-tiny-gpt2"):
            code = block.code
            for written, run in TINY_GPT2:
                assert written in code, f"{block.where()}: update TINY_GPT2, the example no longer says {written!r}"
                code = code.replace(written, run.format(model=str(model)))
            exec(compile(code, block.where(), "exec"), {"__name__": "__docs__"})
            ran += 1
    assert ran and (tmp_path / "runs" / "gpt2-l6" / "metrics.json").is_file()


# ------------------------------------------------------------------------------------------ figures
def test_each_measured_figure_names_the_script_that_prints_it() -> None:
    """A row of the README's "What we measured" table names a script of benchmarks/ (and its
    subcommand, when it has subcommands) that exists."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("## What we measured", 1)[1].split("\n## ", 1)[0]
    problems = []
    for n, row in enumerate(table.splitlines()):
        if not row.startswith("| ") or row.startswith(("| what |", "|---")):
            continue
        scripts = re.findall(r"`(\w+\.py)(?: ([a-z][\w-]*))?", row)
        if not scripts:
            problems.append(f"no benchmarks/ script named in: {row[:90]}")
        for script, sub in scripts:
            path = ROOT / "benchmarks" / script
            if not path.is_file():
                problems.append(f"{script}: no such file")
            elif sub and not re.search(rf"[\"']{re.escape(sub)}[\"']", path.read_text(encoding="utf-8")):
                problems.append(f"{script} has no subcommand {sub}")
    assert not problems, "\n".join(problems)
