"""benchmarks/gpu_check.sh runs end to end in its dry mode (the CPU, tiny sizes), so that the GPU
check cannot rot on machines without a GPU: every section runs the code it runs on CUDA."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def run(*args, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    env.pop("SAESTEER_GPU_DRY", None)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_gpu_check_runs_every_section_in_dry_mode(tmp_path):
    p = run("--dry", tmp_path=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry"] is True and report["failed"] == []
    sections = report["sections"]
    assert list(sections) == ["tests", "selection", "step", "train", "cache", "steering"]
    assert all(s["ok"] for s in sections.values())
    tests = sections["tests"]["figures"]
    assert tests["passed"] >= 20 and tests["failures"] == tests["errors"] == tests["skipped"] == 0
    for name, t in sections["selection"]["figures"].items():
        assert set(t) == {"torch_topk_ms", "row_topk_ms", "flat_topk_ms", "batch_top_entries_ms"}, name
        assert all(v > 0 for v in t.values())
    (rows,) = sections["step"]["figures"].values()
    assert {(r["arch"], r["precision"]) for r in rows} == {
        (a, p) for a in ("topk", "batchtopk", "matryoshka_batchtopk") for p in ("fp32", "bf16")}
    assert all(r["ours_tok_s"] > 0 and r["sl_tok_s"] > 0 for r in rows)
    assert all(r["loss_rel_diff"] < 1e-5 for r in rows if r["precision"] == "fp32")  # same loss as SAELens
    train = sections["train"]["figures"]
    assert set(train) == {"fast", "fast_bf16"} and all(t["tokens_per_s"] > 0 for t in train.values())
    assert sections["cache"]["figures"]["tokens"] > 0 and sections["cache"]["figures"]["tokens_per_s"] > 0
    st = sections["steering"]["figures"]
    assert st["new_tokens_per_s_steered"] > 0 and st["new_tokens_per_s_unsteered"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real check")
def test_gpu_check_without_a_gpu_says_to_use_the_dry_mode(tmp_path):
    p = run(tmp_path=tmp_path)
    assert p.returncode == 2
    assert "no CUDA device" in p.stderr and "--dry" in p.stderr
    assert not (tmp_path / "gpu_check.json").exists()


def test_unknown_sections_are_refused_naming_them(tmp_path):
    p = run("--dry", "--sections", "selection,nonsense", tmp_path=tmp_path)
    assert p.returncode == 2 and "unknown --sections ['nonsense']" in p.stderr
