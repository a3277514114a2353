"""The GPU check: everything the CUDA path needs proven, in one run, with one JSON of figures.

    bash benchmarks/gpu_check.sh [--out FILE]        # on a machine with one CUDA GPU (<= 8 min on an H100)
    bash benchmarks/gpu_check.sh --dry [--out FILE]  # the same code on the CPU at tiny sizes (CI runs this)

Sections (each recorded in the JSON, with its seconds; a failing section is recorded and the
others still run; the exit status is 1 when any failed):
  tests      the `gpu`-marked tests (tests/test_gpu.py): fast paths vs references bit for bit on
             the device, bitwise-reproducible steps under deterministic algorithms, exact resume,
             bf16 learning curves against fp32, steering under the KV cache
  selection  exact top-k selections against torch's (row top-k and BatchTopK, fp32 and bf16)
  step       one training step, ours (fast, fast_bf16) against SAELens, three architectures, at
             d_sae 16k and 65k (benchmarks/bench_step.py); goal on an H100: >= 5x SAELens at 65k
  train      `training.train` from a disk cache on the device: tokens/s end to end
  cache      `build_cache` on the device with a GPT-2-small-shaped random model: tokens/s, GB/s
  steering   greedy generation with and without a steering edit (KV cache on): new tokens/s

--dry runs every section on the CPU with tiny sizes (so that the script cannot rot on machines
without a GPU; tests/test_gpu_check_dry.py runs it in the default test suite).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS for the tests

import torch  # noqa: E402

SECTIONS = ("tests", "selection", "step", "train", "cache", "steering")
HOOK = "blocks.0.hook_resid_post"


def sizes(dry: bool) -> dict[str, Any]:
    if dry:
        return {"widths": [128], "d_in": 16, "k": 4, "batch": 64, "steps": 1, "warmup": 1, "select_rows": 64,
                "train_tokens": 64 * 8, "cache_tokens": 32 * 32, "model": dict(d_model=32, n_layers=2, n_heads=4),
                "gen_batch": 2, "gen_tokens": 4}
    return {"widths": [16384, 65536], "d_in": 2304, "k": 32, "batch": 4096, "steps": 5, "warmup": 2, "select_rows": 4096,
            "train_tokens": 4096 * 150, "cache_tokens": 128 * 4096,
            "model": dict(d_model=768, n_layers=12, n_heads=12), "gen_batch": 16, "gen_tokens": 64}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], Any], device: torch.device, repeat: int = 5) -> float:
    """Median seconds of `fn` (after one warm-up call), waiting for the device each time."""
    fn()
    sync(device)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


# ---------------------------------------------------------------------------------- sections
def section_tests(device, sz, dry: bool, work: Path) -> dict:
    env = {**os.environ, "SAESTEER_GPU_DRY": "1" if dry else "0", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    junit = work / "gpu-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "--junitxml", str(junit),
           str(ROOT / "tests" / "test_gpu.py")]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    import xml.etree.ElementTree as ET

    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in counts}
    out = {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
           "returncode": p.returncode, "tail": p.stdout[-4000:]}
    if p.returncode != 0 or out["passed"] == 0:
        raise RuntimeError(f"gpu tests: {out['passed']} passed, {counts['failures']} failed, {counts['errors']} errors, "
                           f"{counts['skipped']} skipped\n{p.stdout[-4000:]}\n{p.stderr[-2000:]}")
    return out


def section_selection(device, sz, dry: bool, work: Path) -> dict:
    from saes.topk_select import batch_top_entries, row_topk

    out = {}
    B, k = sz["select_rows"], sz["k"]
    g = torch.Generator().manual_seed(0)
    for F in sz["widths"]:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(B, F, generator=g).to(device=device, dtype=dtype)
            vals, _ = row_topk(x, k)
            ref = x.topk(k, dim=1).values
            assert torch.equal(vals.sort(dim=1, descending=True).values, ref), "row_topk differs from torch.topk"
            bv, _, _ = batch_top_entries(x, k)
            flat = x.reshape(-1).topk(k * B).values
            assert torch.equal(bv.sort(descending=True).values, flat[flat > 0]), "batch_top_entries differs"
            name = f"d_sae={F},{str(dtype).removeprefix('torch.')}"
            out[name] = {
                "torch_topk_ms": timeit(lambda: x.topk(k, dim=1, sorted=False), device) * 1e3,
                "row_topk_ms": timeit(lambda: row_topk(x, k), device) * 1e3,
                "flat_topk_ms": timeit(lambda: x.reshape(-1).topk(k * B, sorted=False), device) * 1e3,
                "batch_top_entries_ms": timeit(lambda: batch_top_entries(x, k), device) * 1e3,
            }
    return out


def section_step(device, sz, dry: bool, work: Path) -> dict:
    import bench_step

    out = {}
    for F in sz["widths"]:
        widths = f"{F // 16},{F // 4},{F}"
        argv = ["--device", str(device), "--d-in", str(sz["d_in"]), "--d-sae", str(F), "--k", str(sz["k"]),
                "--batch", str(sz["batch"]), "--steps", str(sz["steps"]), "--warmup", str(sz["warmup"]),
                "--widths", widths, "--check-dead", str(F // 4), "--no-native"]
        rows = bench_step.main(argv)
        out[f"d_sae={F}"] = [{k: r[k] for k in ("arch", "precision", "method", "ours_tok_s", "sl_tok_s", "ratio",
                                                 "paired_ratio")} | {"loss_rel_diff": (r["check"] or {}).get("loss_rel_diff")}
                             for r in rows]
    return out


def section_train(device, sz, dry: bool, work: Path) -> dict:
    from bench_train import synthetic_cache

    from training import train
    from training.config import CheckpointConfig, EvalConfig, LogConfig, RunConfig, SAESpec, TrainConfig
    from training.reader import CacheReader

    F = sz["widths"][-1]
    B = sz["batch"]
    cache = synthetic_cache(work / "train_cache", sz["d_in"], rows=sz["train_tokens"] + 2 * B)
    out = {}
    for method in ("fast", "fast_bf16"):
        cfg = RunConfig(
            saes=[SAESpec("topk", d_sae=F, k=sz["k"])],
            train=TrainConfig(total_tokens=sz["train_tokens"], batch_size=B, holdout_tokens=B, step_method=method,
                              device=str(device)),
            checkpoint=CheckpointConfig(every_tokens=0), eval=EvalConfig(every_tokens=0, ce_contexts=0),
            log=LogConfig(progress=False),
        )
        # stored fp16 rows go to the device as they are and become fp32 there (half the bytes to copy)
        reader = CacheReader(cache, B, seed=0, epochs=None, dtype=None)
        res = train(cfg, reader, work / f"train_{method}", resume="never")
        out[method] = {"tokens": res.tokens, "train_seconds": res.metrics["train_seconds"],
                       "tokens_per_s": res.metrics["tokens_per_second"],
                       "explained_variance": res.metrics["saes"][cfg.saes[0].name]["explained_variance"]}
    return out


def _model(sz, device):
    from helpers.tiny_model import make_model, make_tokenizer

    tok = make_tokenizer()
    m = sz["model"]
    model = make_model(tok, d_model=m["d_model"], n_layers=m["n_layers"], n_heads=m["n_heads"], n_ctx=128, seed=0)
    return model.to(device), tok


def section_cache(device, sz, dry: bool, work: Path) -> dict:
    from helpers.tiny_model import write_corpus

    from training.cache import build_cache

    from training.cache_config import CacheConfig
    from training.text import TextConfig

    model, tok = _model(sz, device)
    corpus = work / "corpus"
    write_corpus(corpus, n_docs=max(200, sz["cache_tokens"] // 40), seed=0, n_files=2)
    hook = f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
    out_dir = work / "cache"
    cfg = CacheConfig(out=str(out_dir), hooks=[hook], dtype="fp16", batch_size=32 if dry else 256,
                      max_tokens=sz["cache_tokens"])
    res = build_cache(model, TextConfig(dataset=str(corpus), context_length=128 if not dry else 32), cfg,
                      tokenizer=tok, progress=False, log=None)
    nbytes = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
    out = {"tokens": res.tokens_written, "seconds": res.seconds, "seconds_caching": res.seconds_caching,
           "tokens_per_s": res.tokens_written / max(res.seconds_caching, 1e-9), "gb_per_s": nbytes / 1e9 / max(res.seconds_caching, 1e-9),
           "hook": hook, "d_model": model.cfg.d_model, "n_layers": model.cfg.n_layers}
    shutil.rmtree(out_dir, ignore_errors=True)
    return out


def section_steering(device, sz, dry: bool, work: Path) -> dict:
    import saes
    from steering import FeatureEdit, GenerationConfig, generate, steer

    model, tok = _model(sz, device)
    hook = f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
    d_sae = sz["widths"][-1]
    sae = saes.create_sae("topk", model.cfg.d_model, d_sae, k=sz["k"], metadata={"hook_name": hook},
                          generator=torch.Generator().manual_seed(0)).to(device)
    prompts = ["the ship sails on the ocean and"] * sz["gen_batch"]
    cfg = GenerationConfig(max_new_tokens=sz["gen_tokens"], do_sample=False, stop_at_eos=False)
    n_new = sz["gen_batch"] * sz["gen_tokens"]
    plain = timeit(lambda: generate(model, prompts, cfg), device, repeat=3)

    def steered():
        with steer(model, sae, [FeatureEdit(3, "add", 8.0, positions="all")]) as s:
            s.generate(prompts, cfg)

    st = timeit(steered, device, repeat=3)
    return {"new_tokens_per_s_unsteered": n_new / plain, "new_tokens_per_s_steered": n_new / st,
            "steered_over_unsteered_time": st / plain, "batch": sz["gen_batch"], "new_tokens": sz["gen_tokens"],
            "d_sae": d_sae}


RUNNERS: dict[str, Callable] = {"tests": section_tests, "selection": section_selection, "step": section_step,
                                "train": section_train, "cache": section_cache, "steering": section_steering}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry", action="store_true", help="run every section on the CPU at tiny sizes")
    p.add_argument("--out", default=None, help="JSON of figures (default: $OUT/gpu_check.json, else ./gpu_check.json)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    args = p.parse_args(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        p.error(f"unknown --sections {unknown}; choose from {', '.join(SECTIONS)}")
    if not args.dry and not torch.cuda.is_available():
        print("error: no CUDA device here; run with --dry to check the script on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry else "cuda")
    out_path = Path(args.out or Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    sz = sizes(args.dry)
    report: dict[str, Any] = {
        "dry": args.dry, "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "sizes": sz, "sections": {},
    }
    work = Path(tempfile.mkdtemp(prefix="saesteer-gpu-check-"))
    failed = []
    t_all = time.perf_counter()
    try:
        for name in wanted:
            t0 = time.perf_counter()
            print(f"== {name}", flush=True)
            try:
                figures = RUNNERS[name](device, sz, args.dry, work)
                report["sections"][name] = {"ok": True, "seconds": time.perf_counter() - t0, "figures": figures}
            except Exception as e:  # recorded; the other sections still run
                failed.append(name)
                report["sections"][name] = {"ok": False, "seconds": time.perf_counter() - t0,
                                            "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
                print(f"   FAILED: {type(e).__name__}: {str(e)[:2000]}", flush=True)
            print(f"   {time.perf_counter() - t0:.1f} s", flush=True)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(report, indent=1))  # after every section: a timeout keeps what was done
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = time.perf_counter() - t_all
    report["failed"] = failed
    out_path.write_text(json.dumps(report, indent=1))
    print(f"wrote {out_path} ({report['seconds']:.0f} s); failed sections: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
