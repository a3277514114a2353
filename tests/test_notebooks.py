"""The notebooks: the two toy-world ones run top to bottom (small budgets injected after their
`parameters` cell, as papermill does), the GPU one lists and covers every API it uses.

The kernel is this very interpreter (`helpers.notebook_kernel`).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from helpers.demo_small import SMALL
from helpers.notebook_kernel import execute
from helpers.notebook_kernel import outputs_text as _outputs_text

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CI_NOTEBOOKS = ("quickstart.ipynb", "steering_recipes.ipynb")
GPU_NOTEBOOK = NOTEBOOKS / "train_on_hf_model_gpu.ipynb"
OURS = ("saes", "training", "features", "autointerp", "steering", "toyworld", "saesteer")


def run_notebook(path: Path, overrides: str, tmp_path: Path, timeout: int = 900):
    """Execute a copy of notebook `path` with `overrides` run right after its parameters cell."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell(overrides)
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(idx + 1, injected)
    return execute(nb, tmp_path, path.parent, timeout=timeout)


@pytest.mark.parametrize("name", [*CI_NOTEBOOKS, GPU_NOTEBOOK.name])
def test_notebooks_are_stored_without_outputs(name: str) -> None:
    nb = json.loads((NOTEBOOKS / name).read_text())
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            assert c["outputs"] == [] and c["execution_count"] is None, f"{name}: clear the outputs before committing"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{name}: exactly one cell tagged 'parameters' holds the budgets"


def test_quickstart_runs_top_to_bottom(tmp_path: Path) -> None:
    overrides = (f"WORK = {str(tmp_path / 'work')!r}\nCACHE_TOKENS = 12_000\nTRAIN_TOKENS = 32_000\nD_SAE = 256\n"
                 "K = 8\nBATCH_SIZE = 1024\nCE_CONTEXTS = 8\nNEW_TOKENS = 12\n")
    nb = run_notebook(NOTEBOOKS / "quickstart.ipynb", overrides, tmp_path)
    out = _outputs_text(nb)
    assert "explained_variance" in out and "ocean share of topic words" in out, out[-3000:]
    assert "steered:" in out and "labelled" in out
    assert (tmp_path / "work" / "features.db").is_file()


def test_steering_recipes_run_top_to_bottom(tmp_path_factory, tmp_path: Path) -> None:
    # the same small demo folder as tests/test_demo.py: when that ran first, every stage is reused
    work = tmp_path_factory.getbasetemp() / "small-demo"
    overrides = f"WORK = {str(work)!r}\nDEMO = {SMALL!r}\nSAMPLES = 2\nNEW_TOKENS = 12\n"
    nb = run_notebook(NOTEBOOKS / "steering_recipes.ipynb", overrides, tmp_path)
    out = _outputs_text(nb)
    for text in ("unsteered", "clamp", "@generated", "ablate", "diff-of-means", "prompting", "fluency", "grammatical",
                 "sae_lens: "):
        assert text in out, (text, out[-3000:])
    assert "recommended strength" in out or "no strength works" in out, out[-3000:]  # the sweep's verdict


# ------------------------------------------------------------------------------------------ GPU notebook
def _used_apis(nb) -> set[str]:
    """Dotted names of our APIs the code cells import or reach through an imported package."""
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    tree = compile(code, "<notebook>", "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    used: set[str] = set()
    imported_modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OURS:
            used.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            imported_modules.update(a.name for a in node.names if a.name.split(".")[0] in OURS)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported_modules:
            used.add(f"{node.value.id}.{node.attr}")
    return used


def _api_table(nb) -> list[tuple[list[str], list[str]]]:
    cell = next(c for c in nb.cells if c.cell_type == "markdown" and "| API |" in c.source)
    rows = []
    for line in cell.source.splitlines():
        if not line.startswith("| `"):
            continue
        api_col, tests_col = line.strip("|").split("|")[:2]
        rows.append((re.findall(r"`([A-Za-z_][\w.]*)`", api_col), re.findall(r"`(tests/[\w/]+\.py)`", tests_col)))
    return rows


def test_gpu_notebook_lists_every_api_it_uses_and_each_is_tested() -> None:
    import nbformat

    nb = nbformat.read(GPU_NOTEBOOK, as_version=4)
    rows = _api_table(nb)
    listed = {api for apis, _ in rows for api in apis}
    missing = _used_apis(nb) - listed
    assert not missing, f"add these to the notebook's API table (with their tests): {sorted(missing)}"
    pipeline = "\n".join(p.read_text() for p in sorted((ROOT / "saesteer" / "demo").glob("*.py")))
    for apis, tests in rows:
        assert tests, f"no test named for {apis}"
        texts = {t: (ROOT / t).read_text() for t in tests}  # a missing file fails here
        for api in apis:
            short = api.rsplit(".", 1)[-1]
            direct = any(re.search(rf"\b{re.escape(short)}\b", text) for text in texts.values())
            via_demo = "tests/test_demo.py" in tests and re.search(rf"\b{re.escape(short)}\b", pipeline)
            assert direct or via_demo, f"{api}: not used in {tests}"


@pytest.mark.slow
def test_gpu_notebook_runs_on_cpu_with_a_tiny_local_model(tmp_path: Path) -> None:
    """The GPU notebook end to end with a tiny local GPT-2, a local dataset and device cpu."""
    import toyworld
    from helpers.tiny_hf import save_tiny_gpt2

    model_dir = save_tiny_gpt2(tmp_path / "tiny-gpt2", n_positions=64)
    data = tmp_path / "docs.jsonl"
    with open(data, "w") as f:
        for i in range(400):
            f.write(json.dumps({"text": toyworld.generate_document(f"gpu-nb-{i}").text}) + "\n")
    overrides = "\n".join([
        f"MODEL = {str(model_dir)!r}", f"DATASET = {str(data)!r}", "DEVICE = 'cpu'", "CONTEXT_LENGTH = 32",
        "CACHE_TOKENS = 8_000", "TRAIN_TOKENS = 16_000", "D_SAE = 64", "K = 4", "BATCH_SIZE = 512",
        "STEP_METHOD = 'fast'", "MODEL_BATCH_SIZE = 16", "CE_CONTEXTS = 4", "LABEL_LIMIT = 20",
        "STEER_PROMPTS = ['anna saw two', 'the crabs swim']", "NEW_TOKENS = 8", f"WORK = {str(tmp_path / 'work')!r}",
    ])
    nb = run_notebook(GPU_NOTEBOOK, overrides, tmp_path)
    out = _outputs_text(nb)
    assert "explained_variance" in out and "same reconstruction: True" in out and "steered:" in out, out[-3000:]
