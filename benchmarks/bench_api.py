"""Throughput and time to first token of the OpenAI-compatible API under concurrent clients.

    python benchmarks/bench_api.py [--clients 1,8,32] [--seconds 20] [--rounds 1] [--max-tokens 64] [--arch topk] [--write]

The server is `saesteer api` in its own process (toy model, a random SAE of the toy SAE's shape
(d_sae 32 x d_model) at blocks.2.hook_resid_post and a small feature store built for it here);
this process runs N concurrent clients (asyncio + httpx, streaming, `ignore_eos` so every request
makes exactly --max-tokens tokens, sampling with a seed per request), each sending requests back
to back for --seconds. Steered: every client carries its own edits (client i clamps latent
(37 i mod d_sae) to 8 at all positions; with --edits 2 also adds to another latent), so the
server batches rows with different per-row edits. Unsteered: no steering field.

Per cell: completion tokens per wall second, per second of the server process's CPU time (its
own work, /proc/PID/stat, less sensitive to other load), and the median / 90th percentile time to
first token. Cells run interleaved, steered and unsteered back to back at each client count
(unsteered first in even rounds, steered first in odd ones, so neither always runs on a warmer
or cooler machine); ratios are within one run (with --rounds R: every cell R times, medians of the rounds' own ratios). --write replaces this script's subsection of "## Steering" in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

HOOK = "blocks.2.hook_resid_post"


def load_average() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def build(work: Path, arch: str) -> tuple[Path, Path]:
    """A random SAE of the toy SAE's shape and a feature store for it (toy-world text)."""
    import torch

    import saes
    from bench_steering import random_sae
    from features import BuildConfig, TensorSource, build_feature_store
    from saesteer.models import load_model
    from toyworld.grammar import generate_document

    model = load_model("toy", device="cpu")
    sae = random_sae(arch, model.cfg.d_model, HOOK, seed=1)
    sae_dir, store = work / "sae", work / "store.db"
    saes.save_sae(sae, sae_dir)
    texts = [generate_document(f"bench-api-{i}").text for i in range(64)]
    L = 48
    ids = model.to_tokens(texts, prepend_bos=True)[:, :L]
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=HOOK)
    acts = cache[HOOK].reshape(-1, model.cfg.d_model).float()
    build_feature_store(store, sae, TensorSource(acts, ids, hook_name=HOOK, bos_id=model.tokenizer.bos_token_id,
                                                 name="bench-api"),
                        BuildConfig(batch_rows=1024, checkpoint_rows=0), model=model, sae_path=str(sae_dir),
                        progress=False)
    return sae_dir, store


def start_server(sae_dir: Path, store: Path, port: int, threads: int, max_rows: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), WANDB_MODE="offline",
               HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "saesteer", "api", "--store", str(store), "--sae", str(sae_dir), "--model", "toy", "--port", str(port),
           "--max-batch-rows", str(max_rows), "--max-queued", "256", "--max-new-tokens", "512", "--max-choices", "8"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not start within 120 s")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def client(i: int, base: str, until: float, args, steered: bool, d_sae: int, out: dict) -> None:
    import httpx

    body = {"model": "store", "prompt": "", "max_tokens": args.max_tokens, "temperature": 1.0, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    if steered:
        edits = [{"latent": (37 * i) % d_sae, "op": "clamp", "value": 8.0}]
        if args.edits > 1:
            edits.append({"latent": (37 * i + 11) % d_sae, "op": "add", "value": 2.0, "positions": "generated"})
        body["steering"] = {"edits": edits}
    n = 0
    async with httpx.AsyncClient(base_url=base, timeout=600) as h:
        while time.monotonic() < until:
            body["seed"] = 1000 * i + n
            t0 = time.monotonic()
            first = None
            async with h.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    raise SystemExit(f"request failed: {r.status_code} {await r.aread()}")
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if first is None and chunk.get("choices"):
                        first = time.monotonic() - t0
                    if chunk.get("usage"):
                        out["tokens"] += chunk["usage"]["completion_tokens"]
            out["ttft"].append(first)
            out["requests"] += 1
            n += 1


async def cell(base: str, n_clients: int, args, steered: bool, d_sae: int, pid: int) -> dict:
    out = {"tokens": 0, "requests": 0, "ttft": []}
    c0, t0 = cpu_seconds(pid), time.monotonic()
    until = t0 + args.seconds
    await asyncio.gather(*(client(i, base, until, args, steered, d_sae, out) for i in range(n_clients)))
    wall, cpu = time.monotonic() - t0, cpu_seconds(pid) - c0
    tt = sorted(x for x in out["ttft"] if x is not None)
    return {"clients": n_clients, "steered": steered, "tokens": out["tokens"], "requests": out["requests"],
            "wall": wall, "cpu": cpu, "tok_s": out["tokens"] / wall, "tok_cpu_s": out["tokens"] / max(cpu, 1e-9),
            "ttft_p50": statistics.median(tt) if tt else float("nan"),
            "ttft_p90": tt[int(0.9 * (len(tt) - 1))] if tt else float("nan")}


def run(args) -> str:
    import socket

    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    print(f"building the SAE and store in {work} ...", file=sys.stderr, flush=True)
    sae_dir, store = build(work, args.arch)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start_server(sae_dir, store, port, args.threads, args.max_batch_rows)
    base = f"http://127.0.0.1:{port}"
    d_sae = 32 * 128
    results = []
    load_before = load_average()
    try:
        asyncio.run(cell(base, 2, argparse.Namespace(**{**vars(args), "seconds": 3}), True, d_sae, proc.pid))  # warm-up
        for rnd in range(args.rounds):
            for n in args.clients:
                for steered in ((False, True) if rnd % 2 == 0 else (True, False)):  # alternate the order: no bias
                    r = asyncio.run(cell(base, n, args, steered, d_sae, proc.pid))
                    r["round"] = rnd
                    print(json.dumps(r), file=sys.stderr, flush=True)
                    results.append(r)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    load_after = load_average()

    def cells(n, steered):
        return [r for r in results if r["clients"] == n and r["steered"] == steered]  # one per round, in order

    def get(n, steered):
        """The cell's medians over rounds (requests: the total)."""
        rs = cells(n, steered)
        med = {key: statistics.median(r[key] for r in rs) for key in ("tok_s", "tok_cpu_s", "ttft_p50", "ttft_p90")}
        return {**rs[0], **med, "requests": sum(r["requests"] for r in rs)}

    def ratio(a_cells, b_cells, key):
        """Median over rounds of a / b within each round, with the rounds' range when several."""
        per = sorted(a[key] / b[key] for a, b in zip(a_cells, b_cells))
        med = statistics.median(per)
        return f"{med:.2f}x" if len(per) == 1 else f"{med:.2f}x ({per[0]:.2f}-{per[-1]:.2f})"

    rounds_note = (f"{args.rounds} rounds of every cell, interleaved; the table gives each cell's median over rounds "
                   f"(requests: total), the ratios the median of the rounds' own ratios (range in brackets). "
                   if args.rounds > 1 else "")
    lines = [
        "### API throughput under concurrent clients",
        "",
        f"{time.strftime('%Y-%m-%d')}; {os.cpu_count()} CPU cores; server `saesteer api` in its own process with "
        f"{args.threads} torch thread(s), --max-batch-rows {args.max_batch_rows}; toy model, random {args.arch} SAE "
        f"(d_sae {d_sae}) at {HOOK}; each client streams requests back to back for {args.seconds} s "
        f"({args.max_tokens} tokens each, ignore_eos, temperature 1, a seed per request). Steered: client i clamps "
        f"latent 37i mod d_sae to 8 at all positions" + (" and adds 2 to another on generated tokens" if args.edits > 1
                                                           else "") + " (every client different). Load average "
        f"before/after: {load_before} / {load_after}. {rounds_note}"
        f"`python benchmarks/bench_api.py --clients {','.join(map(str, args.clients))} --seconds {args.seconds} "
        f"--max-tokens {args.max_tokens} --arch {args.arch}" + (f" --rounds {args.rounds}" if args.rounds > 1 else "") + "`",
        "",
        "tok/s: completion tokens per wall second; tok/CPU-s: per second of the server process's CPU time; "
        "TTFT: time from sending a request to its first streamed token (median, 90th percentile).",
        "",
        "| clients | steering | requests | tok/s | tok/CPU-s | TTFT p50 | TTFT p90 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in (get(n, steered) for n in args.clients for steered in (False, True)):
        lines.append(f"| {r['clients']} | {'steered' if r['steered'] else 'unsteered'} | {r['requests']} | "
                     f"{r['tok_s']:,.0f} | {r['tok_cpu_s']:,.0f} | {r['ttft_p50'] * 1000:.0f} ms | "
                     f"{r['ttft_p90'] * 1000:.0f} ms |")
    lines.append("")
    ratios = []
    for n in args.clients:
        s, u = cells(n, True), cells(n, False)
        ratios.append(f"{n} client(s): steered / unsteered {ratio(s, u, 'tok_s')} (wall), {ratio(s, u, 'tok_cpu_s')} (CPU)")
    one = args.clients[0]
    for n in args.clients[1:]:
        for steered in (False, True):
            a, b = cells(n, steered), cells(one, steered)
            ratios.append(f"{n} vs {one} client(s), {'steered' if steered else 'unsteered'}: "
                          f"{ratio(a, b, 'tok_s')} throughput (wall), {ratio(a, b, 'tok_cpu_s')} (CPU)")
    lines += ["Ratios within this run: " + "; ".join(ratios) + ".", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    ap.add_argument("--seconds", type=float, default=20.0, help="per cell")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every cell this many times, interleaved; report medians (the ratios vary by several "
                         "percent between runs on a shared machine)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--arch", default="topk", choices=["topk", "batchtopk", "jumprelu", "standard"])
    ap.add_argument("--edits", type=int, default=1, choices=[1, 2], help="edits per steered client")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    ap.add_argument("--max-batch-rows", type=int, default=32)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    text = run(args)
    print(text)
    if args.write:
        from bench_steering import write_subsection

        write_subsection(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
