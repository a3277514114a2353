"""`bench_scale.py realsae`: the flow of a user with a real-size SAE, through the CLI.

A GPT-2-small-shaped model (d_model 768, 12 heads, GPT-2's 50,257-row embedding over a byte-level
BPE tokenizer trained on the corpus, a few training steps; `helpers.real_models`), a cache of its
residual stream on the real-text corpus (code, prose, accents, CJK) made by `saesteer cache`, and
SAEs saved by SAELens's own `save_model`: a ReLU StandardSAE of 24,576 latents (the shape of
gpt2-small-res-jb) and a TopK SAE of 65,536 (k 32, the shape of OpenAI's v5 SAEs), whose latents
fire with power-law rates (`helpers.foreign_saes.saelens_calibrated`). Then, per SAE:
`saesteer features build` (process CPU, wall, peak RSS, store size), `saesteer features show`
for one latent, the web app of `saesteer serve` (list, search, a latent page, the playground,
fire on text, a steered generation) and `saesteer steer` (one steered generation: its startup),
and SAELens's encoder alone over the same rows (the part of the build SAELens can do: a ratio).
Everything made lives in --work and is reused by the next run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.1.hook_resid_pre"
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
SAES = {"res-jb-24k": ("standard", 24576), "topk-65k": ("topk", 65536)}


def timed(cmd: list[str], log: Path | None = None) -> dict[str, float]:
    """Run `cmd`; its own process CPU seconds, wall seconds and peak RSS (MB), from wait4."""
    t0 = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}")
    return {"cpu_s": ru.ru_utime + ru.ru_stime, "wall_s": time.perf_counter() - t0, "rss_mb": ru.ru_maxrss / 1024}


def cli(*argv: Any) -> list[str]:
    return [sys.executable, "-m", "saesteer", *map(str, argv)]


def setup(work: Path, max_tokens: int) -> dict[str, Path]:
    """Model, cache and SAELens SAE folders under `work` (each made once)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from safetensors.torch import load_file

    from helpers.foreign_saes import saelens_calibrated
    from helpers.real_models import save_real_model, write_corpus

    work.mkdir(parents=True, exist_ok=True)
    paths = {"model": work / "gpt2-768", "cache": work / "cache"}
    if not (paths["model"] / "model.safetensors").exists():
        corpus = write_corpus(work / "corpus")
        save_real_model(paths["model"], "gpt2", corpus, train_steps=60, vocab_size=8192, d_model=768, n_layers=2,
                        model_vocab=50257)
    if not (paths["cache"] / "manifest.json").exists():
        timed(cli("cache", "--model", paths["model"], "--dataset", work / "corpus" / "jsonl", "--hooks", HOOK,
                  "--context-length", 128, "--max-tokens", max_tokens, "--out", paths["cache"], "--no-progress"),
              work / "cache.log")
    acts = load_file(str(paths["cache"] / "shard_000000.safetensors"))[f"acts/{HOOK}"][:8192].float()
    for name, (kind, F) in SAES.items():
        paths[name] = work / name
        if not (paths[name] / "cfg.json").exists():
            saelens_calibrated(kind, acts, F, l0=64 if kind == "standard" else 48, k=32, hook_name=HOOK,
                               model_name="gpt2").save_model(paths[name])
    torch.set_num_threads(1)
    return paths


def saelens_encode_cpu(sae_dir: Path, cache: Path) -> dict[str, float]:
    """SAELens's own encoder over every cached row in batches of 4096 (process CPU seconds)."""
    import torch
    from safetensors.torch import load_file
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(sae_dir))
    rows, t = 0, 0.0
    for shard in sorted(cache.glob("shard_*.safetensors")):
        x = load_file(str(shard))[f"acts/{HOOK}"]
        for i in range(0, x.shape[0], 4096):
            b = x[i:i + 4096].float()
            c0 = time.process_time()
            with torch.no_grad():
                sae.encode(b)
            t += time.process_time() - c0
            rows += b.shape[0]
    return {"rows": rows, "cpu_s": t}


def run(work: Path, max_tokens: int, repeats: int, latent: int, names: list[str], requests: int) -> dict[str, Any]:
    paths = setup(work, max_tokens)
    out: dict[str, Any] = {}
    for name in names:
        store = work / f"{name}.db"
        r: dict[str, Any] = {}
        if not store.exists():
            r["build"] = timed(cli("features", "build", "--sae", paths[name], "--cache", paths["cache"], "--out", store,
                                   "--model", paths["model"], "--no-progress"), work / f"build-{name}.log")
        r["store_mb"] = sum(p.stat().st_size for p in work.glob(f"{name}.db*")) / 1e6
        show = [timed(cli("features", "show", store, latent)) for _ in range(repeats)]
        r["show"] = {k: statistics.median(s[k] for s in show) for k in show[0]}
        steer = [timed(cli("steer", "--sae", paths[name], "--store", store, "--prompt", "def parse(text):",
                           "--latent", f"{latent}:add=4", "--max-new-tokens", 8, "--seed", 0, "--no-progress"))
                 for _ in range(repeats)]
        r["steer"] = {k: statistics.median(s[k] for s in steer) for k in steer[0]}
        web = subprocess.run([sys.executable, str(Path(__file__).resolve()), "web", str(store), str(latent), str(requests)],
                             capture_output=True, text=True, env=ENV, cwd=ROOT)
        if web.returncode:
            raise RuntimeError(web.stderr[-2000:])
        r["web"] = json.loads(web.stdout.strip().splitlines()[-1])
        r["saelens_encode"] = saelens_encode_cpu(paths[name], paths["cache"])
        out[name] = r
        print(name, json.dumps(r), flush=True)
    return out


def web(store: str, latent: int, n: int) -> dict[str, Any]:
    """`saesteer serve --store STORE` in this process (stopped where uvicorn would start) and the
    median process CPU time of each page / API request, after one warm-up."""
    sys.path.insert(0, str(ROOT / "tests"))
    import pytest

    from helpers.real_cli import captured_serve

    c0 = time.process_time()
    r, client = captured_serve(pytest.MonkeyPatch(), "--store", store)
    if client is None:
        raise RuntimeError(r.err)
    out: dict[str, Any] = {"serve startup": {"cpu_ms": (time.process_time() - c0) * 1e3}}
    edit = {"latent": latent, "op": "add", "value": 4, "unit": "raw"}  # raw: the latent may be dead
    with client as c:
        sid = c.get("/api/stores").json()
        sid = (sid["stores"] if isinstance(sid, dict) else sid)[0]["id"]
        cases = {
            "latent list page": ("GET", f"/s/{sid}", None),
            "latent list API (by frequency)": ("GET", f"/api/stores/{sid}/features?sort=frequency&limit=50", None),
            "search API ('the')": ("GET", f"/api/stores/{sid}/search?q=the&limit=20", None),
            "search page ('string')": ("GET", f"/s/{sid}/search?q=string", None),
            f"latent page ({latent})": ("GET", f"/s/{sid}/f/{latent}", None),
            f"latent API ({latent})": ("GET", f"/api/stores/{sid}/features/{latent}", None),
            "playground page": ("GET", f"/s/{sid}/steer", None),
            "fire on text API": ("POST", f"/api/stores/{sid}/fire",
                                 {"text": "def parse(self, text):\n    return text.split(',')  # café 東京", "top_k": 5}),
            "steer API (8 tokens)": ("POST", f"/api/stores/{sid}/steer",
                                     {"prompt": "The function returns", "edits": [edit], "max_new_tokens": 8, "seed": 0}),
        }
        for name, (method, url, body) in cases.items():
            cpu, size = [], 0
            for i in range(n + 1):
                t = time.process_time()
                resp = c.request(method, url, json=body)
                if resp.status_code != 200:
                    raise RuntimeError(f"{method} {url}: {resp.status_code} {resp.text[:300]}")
                if i:
                    cpu.append(time.process_time() - t)
                size = len(resp.content)
            out[name] = {"cpu_ms": statistics.median(cpu) * 1e3, "kb": size / 1024}
    return out


def table(figs: dict[str, Any], cmd: str, tokens: int) -> str:
    names = list(figs)
    lines = [f"`{cmd}`", "",
             f"Model: GPT-2-shaped, d_model 768, 2 layers, vocab 50,257; cache: {tokens:,} tokens of "
             f"{HOOK} (contexts of 128) of the real-text corpus. SAEs saved by SAELens 6.54 (`save_model`). Process CPU "
             "time (medians of the repeats; the build once), 1 torch thread where the CLI sets it.", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]

    def row(label: str, fn) -> None:
        cells = []
        for n in names:
            try:
                cells.append(fn(figs[n]))
            except KeyError:
                cells.append("")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("features build: CPU s (wall s)", lambda f: f"{f['build']['cpu_s']:.0f} ({f['build']['wall_s']:.0f})")
    row("features build: tokens per CPU-second", lambda f: f"{tokens / f['build']['cpu_s']:,.0f}")
    row("features build: peak RSS MB", lambda f: f"{f['build']['rss_mb']:,.0f}")
    row("SAELens encoder alone over the same rows: CPU s", lambda f: f"{f['saelens_encode']['cpu_s']:.0f}")
    row("build CPU / SAELens encoder CPU", lambda f: f"{f['build']['cpu_s'] / f['saelens_encode']['cpu_s']:.2f}x")
    row("store on disk MB", lambda f: f"{f['store_mb']:,.0f}")
    row("`features show` (whole command) CPU s", lambda f: f"{f['show']['cpu_s']:.2f}")
    row("`steer` 8 tokens (whole command) CPU s", lambda f: f"{f['steer']['cpu_s']:.2f}")
    for key in next(iter(figs.values()))["web"]:
        row(f"web: {key} CPU ms", lambda f, k=key: f"{f['web'][k]['cpu_ms']:.1f}")
    return "\n".join(lines)


if __name__ == "__main__" and sys.argv[1] == "web":
    print(json.dumps(web(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
