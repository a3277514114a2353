"""Steering benchmarks.

    python benchmarks/bench_steering.py speed [--model toy] [--rounds 7] [--write]
    python benchmarks/bench_steering.py matrix [--rounds 5] [--flush-denormal] [--write]
    python benchmarks/bench_steering.py hook-time [--rounds 3] [--write]
    python benchmarks/bench_steering.py toy --sae DIR [--store FILE] [--write]
    python benchmarks/bench_steering.py toy --work DIR --hook HOOK [--sae-arch A --sae-widths W,...] [--write]
    python benchmarks/bench_steering.py latents --sae DIR [--store FILE]
    python benchmarks/bench_steering.py topk-read [--reps 5]

speed: steered generation tokens/s beside unsteered (KV cache on, batch 8, 64 new tokens,
sampling with a fixed seed, no early stop), for our hooks and for SAELens in the same run:
SAELens = HookedSAETransformer (same weights) with the same SAE attached (use_error_term=True)
and a clamp hook on hook_sae_acts_post. Runs are interleaved round by round; medians. The SAE is
the one given with --sae, else random ones with the toy SAE's shape (d_sae 32 x d_model):
a threshold-form (BatchTopK inference) SAE and a TopK SAE. It also checks, greedily, that our
clamp and SAELens's clamp generate the same tokens.

matrix: steered generation speed for every op (add, clamp, scale, ablate, all positions) and every
SAE architecture's read path (threshold: BatchTopK inference form; TopK; ReLU "standard"), as
the process CPU time of unsteered / steered generation (toy model, batch 8, 64 new tokens, KV
cache, sampling with a fixed seed, interleaved rounds, medians). Each edit acts on the latent that
fires most on the unsteered text (so clamp, scale and ablate have work to do). Steering changes the
text, and the cost of generating depends on the text (by several percent either way on this CPU),
so two "same text" rows per architecture do an edit's work and leave the text as it is: reading
the busiest latent exactly at every token (the trigger of a conditional edit that never passes;
an edit such as scale 1 would not do: edits that change nothing are skipped, nothing is read) and
clamping a latent that never fires to 0. A TopK "floor" row times a hook that computes the SAE's
full pre-activations at every step and nothing else: whether a firing TopK latent is among its
row's k largest depends on all d_sae of them, so an exact read pays at least this on every step
where a row's latent fires. A second floor row times the same product from a bf16 copy of W_enc:
what a read certifying membership from low-precision pre-activations (with error bounds) would pay
at least (slow where the CPU lacks bf16 instructions: oneDNN emulates them there).

hook-time: the matrix's runs with the steering hook's CPU time per call (thread CPU time around
`steering.session._HookFn.__call__`, medians): steadier than whole-generate ratios, which move by
a few percent between runs with the text and the machine's load.

topk-read: what the TopK exact read costs, per call of one generation step's rows (8): the bound
path (`TopKReader.read`: candidate bound, then the full encode when it leaves a row open) against
the full path alone (`TopKReader.full`: the SAE's own expression and selection), process CPU time on the toy model's own activations of its greedy text and,
for comparison, on random rows at wider shapes; and how many rows a steered generation sent to the
full path (`TopKReader.full_rows`) with the busiest latent read at every token; and how often a
membership test certified from a bf16 copy of the encoder (error bounds instead of the exact product)
would leave a row undecided (`bf16_certified_decisions`).

toy: steering each toy-world topic (setting): find the topic's feature by contrast (topic
documents vs other documents), pick the strength on development seeds (weakest strength that
lifts the topic's share of content words to >= 50% with >= 80% grammatical sentences, else the
best harmonic mean), then report on held-out seeds: topic share (base rate -> steered) and
grammatical sentences, for the SAE feature, the difference-of-means vector at the same hook
(same selection rule), and prompting (a topic cue sentence before the prompt).

Without --sae, toy builds (once, in --work) a toy-world cache at --hook, an SAE of --sae-arch /
--sae-width / --sae-k / --sae-widths / --train-tokens / --init-scale on it, and its feature store.

latents: per topic, the SAE's most topic-like latents: the store's best lexical concept F1, the
best document-topic F1 (fires vs the token lies in a topic document), and the largest cosine of a
decoder row with the topic's difference-of-means vector.

--write replaces this script's subsection of "## Steering" in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Steering"

PROMPTS = [
    "anna was a happy sailor .", "the", "tom was a tired farmer . he", "there are two red boats",
    "mia was a calm chef . the old", "did leo find", "robin was a scared student . yesterday robin", "a",
]


def load_average() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def load_model(name: str):
    if name == "toy":
        from toyworld.model import load_model as toy

        return toy(device="cpu")
    from helpers.tiny_model import make_model, make_tokenizer

    return make_model(make_tokenizer(), n_layers=4, d_model=128, n_ctx=128, n_heads=4, d_mlp=512)


def random_sae(arch: str, d_in: int, hook: str, seed: int = 0):
    import saes

    g = torch.Generator().manual_seed(seed)
    kw = {"k": 32} if arch in ("topk", "batchtopk") else {}
    sae = saes.create_sae(arch, d_in, 32 * d_in, generator=g, metadata={"hook_name": hook}, **kw)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.05, generator=g)
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(0.3)
    return sae


# ------------------------------------------------------------------------------------ speed
def speed(args) -> str:
    from sae_lens import HookedSAETransformer

    import saes
    from saes.interop import to_sae_lens
    from steering import steer

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    hook = args.hook or f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
    if args.sae:
        sae_list = [("given", saes.load_sae(args.sae))]
        hook = sae_list[0][1].cfg.metadata["hook_name"]
    else:
        sae_list = [("threshold (BatchTopK inference form)", random_sae("batchtopk", model.cfg.d_model, hook)),
                    ("TopK", random_sae("topk", model.cfg.d_model, hook, seed=1))]
    sl_model = HookedSAETransformer(model.cfg, tokenizer=model.tokenizer)
    sl_model.load_state_dict(model.state_dict())
    sl_model.eval()
    tokens = model.to_tokens(PROMPTS[: args.batch] * (args.batch // len(PROMPTS) + 1), padding_side="left")[: args.batch]
    feature, value = 123, 8.0
    gen_kw = dict(max_new_tokens=args.new_tokens, do_sample=True, stop_at_eos=False, use_past_kv_cache=True,
                  padding_side="left", return_type="tokens", verbose=False)
    with torch.no_grad():  # per SAE, a latent that stays silent on these prompts' generations (checked below)
        _, cache = model.run_with_cache(model.generate(tokens, **dict(gen_kw, do_sample=False)), names_filter=hook)
        quiet_of = {id(sae): int((cache[hook] @ sae.W_enc + sae.b_enc).amax((0, 1)).argmin()) for _, sae in sae_list}

    def gen(m):
        torch.manual_seed(0)
        t0, c0 = time.perf_counter(), time.process_time()
        m.generate(tokens, **gen_kw)
        return time.perf_counter() - t0, time.process_time() - c0

    def clamp_hook(acts, hook):
        acts[..., feature] = value
        return acts

    @contextlib.contextmanager
    def saelens_hooked(sl, hook_fn):
        """SAELens's way: the SAE attached with its error term, `hook_fn` on its latent activations."""
        sl_model.add_sae(sl, use_error_term=True)
        try:
            with sl_model.hooks(fwd_hooks=[(f"{hook}.hook_sae_acts_post", hook_fn)]):
                yield
        finally:
            sl_model.reset_saes()

    cases = {"unsteered (HookedTransformer)": lambda: gen(model),
             "unsteered (HookedSAETransformer, no SAE)": lambda: gen(sl_model)}
    for name, sae in sae_list:
        sl = to_sae_lens(sae)

        def ours(sae=sae, edit=f"{feature}:clamp={value:g}"):
            with steer(model, sae, [edit]):
                return gen(model)

        def ours_gen(sae=sae, edit=f"{feature}:clamp={value:g}@generated"):
            with steer(model, sae, [edit]):
                return gen(model)

        def ours_add(sae=sae, edit=f"{feature}:add={value:g}"):
            with steer(model, sae, [edit]):
                return gen(model)

        quiet = quiet_of[id(sae)]

        def ours_same_text(sae=sae, quiet=quiet):  # the clamp's work (read the latent, write the change) on a latent
            with steer(model, sae, [f"{quiet}:clamp=0"]):  # that never fires here: the generated text stays the same
                return gen(model)

        def saelens(sl=sl):
            with saelens_hooked(sl, clamp_hook):
                return gen(sl_model)

        cases[f"ours: clamp 1 latent, all positions [{name}]"] = ours
        cases[f"ours: clamp 1 latent, generated positions [{name}]"] = ours_gen
        cases[f"ours: add 1 latent (no encode) [{name}]"] = ours_add
        cases[f"ours: clamp a silent latent to 0 (same text as unsteered) [{name}]"] = ours_same_text
        cases[f"SAELens: SAE attached, error term, clamp hook [{name}]"] = saelens

        def saelens_same_text(sl=sl, quiet=quiet):
            def silent(acts, hook):
                acts[..., quiet] = 0.0
                return acts

            with saelens_hooked(sl, silent):
                return gen(sl_model)

        cases[f"SAELens: clamp a silent latent to 0 (same text as unsteered) [{name}]"] = saelens_same_text

    for f in cases.values():  # warm-up
        f()
    with torch.no_grad():  # the "same text" case must not change the text: its latent must stay silent
        for name, sae in sae_list:
            _, cache = model.run_with_cache(model.generate(tokens, **dict(gen_kw, verbose=False)), names_filter=hook)
            quiet = quiet_of[id(sae)]
            fired = int((sae.encode(cache[hook])[..., quiet] > 0).sum())
            if fired:
                print(f"warning: latent {quiet} of the {name} SAE fires {fired} times; its 'same text' row changes the text",
                      file=sys.stderr)
    wall: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    load_before = load_average()
    for r in range(args.rounds):
        for k, f in cases.items():
            w, c = f()
            wall[k].append(w)
            cpu[k].append(c)
    load_after = load_average()
    n_tok = args.batch * args.new_tokens
    base_of = {k: ("unsteered (HookedSAETransformer, no SAE)" if (k.startswith("SAELens") or "HookedSAETransformer" in k)
                   else "unsteered (HookedTransformer)") for k in cases}

    def ratios(k):
        b = base_of[k]
        med = statistics.median(wall[b]) / statistics.median(wall[k])
        paired = statistics.median(x / y for x, y in zip(wall[b], wall[k]))  # same round: less drift
        cpu_ratio = statistics.median(cpu[b]) / statistics.median(cpu[k])
        return med, paired, cpu_ratio

    # greedy agreement of our clamp with SAELens's clamp
    agree = []
    for name, sae in sae_list:
        g_kw = dict(gen_kw, do_sample=False, max_new_tokens=min(32, args.new_tokens))
        with steer(model, sae, [f"{feature}:clamp={value:g}"]):
            a = model.generate(tokens, **g_kw)
        with saelens_hooked(to_sae_lens(sae), clamp_hook):
            b = sl_model.generate(tokens, **g_kw)
        new_a, new_b = a[:, tokens.shape[1]:], b[:, tokens.shape[1]:]
        agree.append((name, float((new_a == new_b).float().mean())))

    lines = [
        "### Generation speed: steered vs unsteered",
        "",
        f"Machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} thread(s); "
        f"{time.strftime('%Y-%m-%d')}; load average before/after {load_before} / {load_after}.",
        f"Model: {args.model} ({model.cfg.n_layers} layers, d_model {model.cfg.d_model}); SAE at {hook}, "
        f"d_sae {sae_list[0][1].d_sae}; batch {args.batch} (left padded), {args.new_tokens} new tokens, KV cache on, "
        f"sampling with a fixed seed; median of {args.rounds} interleaved rounds. "
        f"`python benchmarks/bench_steering.py speed --rounds {args.rounds} --threads {args.threads}`",
        "",
        "Generation speed here depends on the text generated (with sampling, a steered run writes other tokens; part of "
        "it is denormal arithmetic), by up to ~10% either way, so the 'clamp a silent latent' row, which does the "
        "clamp's work but leaves the text as it is, measures the overhead of the hooks alone.",
        "",
        "Ratios are speed relative to the unsteered run of the same model class (1.0 = no slowdown): of median "
        "wall times, median of per-round wall-time ratios, and of median process CPU times (this process's "
        "own work, less sensitive to other load on the machine).",
        "",
        "| run | s per generate | tokens/s | ratio (median wall) | ratio (per round) | ratio (CPU time) |",
        "|---|---|---|---|---|---|",
    ]
    for k in cases:
        t = statistics.median(wall[k])
        a, b, c = ratios(k)
        lines.append(f"| {k} | {t:.3f} | {n_tok / t:,.0f} | {a:.3f}x | {b:.3f}x | {c:.3f}x |")
    lines.append("")
    lines.append("Greedy tokens identical between our clamp and SAELens's clamp (error term kept by both): "
                 + ", ".join(f"{n}: {a:.0%}" for n, a in agree) + ".")
    lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ matrix
def matrix_cases(args, timed=None):
    """(model, hook, cases) of the matrix: name -> a function that runs one generate and returns
    its process CPU time. `timed(fn)` (hook-time) wraps the floor row's hook so its calls are timed."""
    from steering import steer

    torch.set_num_threads(args.threads)
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    model = load_model("toy")
    hook = f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
    archs = [("threshold (BatchTopK inference form)", "batchtopk"), ("TopK", "topk"), ("ReLU (standard)", "standard")]
    tokens = model.to_tokens(PROMPTS[: args.batch] * (args.batch // len(PROMPTS) + 1), padding_side="left")[: args.batch]
    gen_kw = dict(max_new_tokens=args.new_tokens, do_sample=True, stop_at_eos=False, use_past_kv_cache=True,
                  padding_side="left", return_type="tokens", verbose=False)

    def gen():
        torch.manual_seed(0)
        c0 = time.process_time()
        model.generate(tokens, **gen_kw)
        return time.process_time() - c0

    cases = {"unsteered": gen}
    with torch.no_grad():
        text = model.generate(tokens, **dict(gen_kw, do_sample=False))
        _, cache = model.run_with_cache(text, names_filter=hook)
    for label, arch in archs:
        sae = random_sae(arch, model.cfg.d_model, hook, seed=1)
        if arch == "standard":  # a ReLU SAE with a sparse-ish code, as trained ones have
            with torch.no_grad():
                sae.b_enc.fill_(-1.0)
        acts = sae.encode(cache[hook])
        busy = int((acts > 0).sum((0, 1)).argmax())
        quiet = int((cache[hook] @ sae.W_enc + sae.b_enc).amax((0, 1)).argmin())
        for op, edit in (("add", f"{busy}:add=8"), ("clamp", f"{busy}:clamp=8"), ("scale", f"{busy}:scale=2"),
                         ("ablate", f"{busy}:ablate"), ("same text: read the busiest latent", f"{quiet}:add=8?{busy}>1000000"),
                         ("same text: clamp a silent latent to 0", f"{quiet}:clamp=0")):
            def run(sae=sae, edit=edit):
                with steer(model, sae, [edit]):
                    return gen()
            cases[f"{label}: {op}"] = run
        if arch == "topk":  # what any exact read of a firing TopK latent must at least do at every step
            def encoder_product(x, hook, sae=sae):
                x_ND = x.reshape(-1, x.shape[-1])
                (x_ND - sae.b_dec) @ sae.W_enc + sae.b_enc  # the SAE's own pre-activations, nothing else

            def floor(fn=timed(encoder_product) if timed else encoder_product):
                with model.hooks(fwd_hooks=[(hook, fn)]):
                    return gen()
            cases[f"{label}: floor: the SAE's full encoder product alone at every step (same text)"] = floor
            # what a certified read from a bf16 copy of W_enc (deciding top-k membership from low-precision
            # pre-activations with error bounds) must at least do: its product alone, on the layout oneDNN
            # runs fastest at 8 rows ([d_sae, d_in], read transposed); no bound, count or exact value
            W_bf16_FD = sae.W_enc.detach().t().contiguous().bfloat16()

            def bf16_product(x, hook, sae=sae, W_FD=W_bf16_FD):
                x_ND = x.reshape(-1, x.shape[-1])
                (x_ND - sae.b_dec).bfloat16() @ W_FD.t()

            def bf16_floor(fn=timed(bf16_product) if timed else bf16_product):
                with model.hooks(fwd_hooks=[(hook, fn)]):
                    return gen()
            cases[f"{label}: floor: a bf16 copy's full encoder product alone at every step (same text)"] = bf16_floor
    return model, hook, cases


def matrix(args) -> str:
    model, hook, cases = matrix_cases(args)
    for f in cases.values():
        f()
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    load_before = load_average()
    for _ in range(args.rounds):
        for k, f in cases.items():
            cpu[k].append(f())
    load_after = load_average()
    base = statistics.median(cpu["unsteered"])
    lines = [
        "### Steered generation speed for every op and architecture",
        "",
        f"{time.strftime('%Y-%m-%d')}; {os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} thread(s)"
        f"{', denormals flushed' if args.flush_denormal else ''}; load average before/after {load_before} / {load_after}. "
        f"Toy model, SAEs random with the toy SAE's shape (d_sae {32 * model.cfg.d_model}) at {hook}; batch {args.batch} "
        f"(left padded), {args.new_tokens} new tokens, KV cache, sampling with a fixed seed; every edit at all positions "
        f"on the latent that fires most on the unsteered text; the 'same text' rows do an edit's work without changing "
        f"the text (the cost of generating depends on the text: compare the add rows, which read nothing). "
        f"Ratio = median process CPU time unsteered / steered over {args.rounds} interleaved rounds (1.0 = no slowdown); "
        f"per round = median of the rounds' own ratios. "
        f"`python benchmarks/bench_steering.py matrix --rounds {args.rounds}{' --flush-denormal' if args.flush_denormal else ''}`",
        "",
        "| run | CPU s per generate | ratio (median CPU) | ratio (per round) |",
        "|---|---|---|---|",
    ]
    for k in cases:
        t = statistics.median(cpu[k])
        per_round = statistics.median(b / x for b, x in zip(cpu["unsteered"], cpu[k]))
        lines.append(f"| {k} | {t:.3f} | {base / t:.3f}x | {per_round:.3f}x |")
    worst = min((base / statistics.median(v), k) for k, v in cpu.items() if k != "unsteered")
    lines += ["", f"Slowest: {worst[1]} at {worst[0]:.3f}x.", ""]
    return "\n".join(lines)


def hook_time(args) -> str:
    """See the module docstring (hook-time)."""
    from steering import session as steering_session
    from steering import positions as steering_positions

    calls: list[int] = []  # thread CPU ns of each hook call of the current case
    observes: list[int] = []

    def timed(fn, into=calls):
        def wrapper(*a, **kw):
            t0 = time.thread_time_ns()
            out = fn(*a, **kw)
            into.append(time.thread_time_ns() - t0)
            return out
        return wrapper

    model, hook, cases = matrix_cases(args, timed=timed)
    if args.only:
        cases = {k: f for k, f in cases.items() if k == "unsteered" or any(w in k for w in args.only.split(","))}
    hook_call = steering_session._HookFn.__call__
    observe = steering_positions.SequenceTracker.observe
    steering_session._HookFn.__call__ = timed(hook_call)
    steering_positions.SequenceTracker.observe = timed(observe, observes)
    per_call: dict[str, list[float]] = {k: [] for k in cases}
    per_gen: dict[str, list[float]] = {k: [] for k in cases}
    per_obs: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    load_before = load_average()
    try:
        for f in cases.values():
            f()
        for _ in range(args.rounds):
            for k, f in cases.items():
                calls.clear()
                observes.clear()
                cpu[k].append(f())
                if calls:
                    per_call[k].append(statistics.median(calls) / 1e3)
                    per_gen[k].append(sum(calls) / 1e6)
                if observes:
                    per_obs[k].append(statistics.median(observes) / 1e3)
    finally:
        steering_session._HookFn.__call__ = hook_call
        steering_positions.SequenceTracker.observe = observe
    load_after = load_average()
    base = statistics.median(cpu["unsteered"])

    def med(v: list[float], fmt: str) -> str:
        return format(statistics.median(v), fmt) if v else "-"

    lines = [
        "### Steering hook: CPU time per call",
        "",
        f"{time.strftime('%Y-%m-%d')}; {os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} thread(s); "
        f"load average before/after {load_before} / {load_after}. The matrix's runs (toy model, batch {args.batch}, "
        f"{args.new_tokens} new tokens, KV cache, at {hook}); per call = median thread CPU time of one call of the "
        f"steering hook (`steering.session._HookFn.__call__`; the floor row: its own hook) over every call of a "
        f"generate (the prompt's forward and {args.new_tokens - 1} decode steps), median over {args.rounds} rounds; "
        f"per generate = all calls of one generate; tracker = the block pre-hook's `SequenceTracker.observe` per call. "
        f"Ratio as in the matrix, from the same rounds (noisier than the per-call time). "
        f"`python benchmarks/bench_steering.py hook-time --rounds {args.rounds}`",
        "",
        "| run | hook us per call | hook ms per generate | tracker us per call | ratio (median CPU) |",
        "|---|---|---|---|---|",
    ]
    for k in cases:
        if k == "unsteered":
            continue
        lines.append(f"| {k} | {med(per_call[k], '.0f')} | {med(per_gen[k], '.2f')} | {med(per_obs[k], '.1f')} | "
                     f"{base / statistics.median(cpu[k]):.3f}x |")
    lines.append("")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- toy
def toy(args) -> str:
    from saesteer.toyscore import toy_scorer
    from steering import CompareConfig, FeatureEdit, GenerationConfig, generate, steer
    from steering.evaluate import score_generation
    from steering.methods import compare_methods
    from steering.search import contrast_features
    from steering.sweeps import recommend_strength, sweep_edits
    from toyworld.grammar import generate_document
    from toyworld.lexicon import TOPICS
    from toyworld.validate import TERMINALS, split_sentences, topic_counts, validate_document, validate_sentence

    import saes

    torch.set_num_threads(args.threads)
    if args.sae is None:  # a toy SAE and its store at --hook, built in --work when missing
        args.sae, args.store = build_toy_sae(
            Path(args.work), args.hook or "blocks.3.hook_resid_post", d_sae=args.sae_width, k=args.sae_k,
            train_tokens=args.train_tokens, arch=args.sae_arch, widths=args.sae_widths, init_scale=args.init_scale)
    model = load_model("toy")
    sae = saes.load_sae(args.sae)
    hook = sae.cfg.metadata.get("hook_name") or args.hook
    if not hook:
        import json

        manifest = Path(args.sae).parent.parent.parent / "cache" / "manifest.json"  # <work>/run/saes/<name>
        hook = json.loads(manifest.read_text())["hooks"][0] if manifest.is_file() else None
    if not hook:
        raise SystemExit(f"{args.sae} records no hook_name; pass --hook")
    sae.cfg.metadata["hook_name"] = hook
    link = store = None
    if args.store:
        from features import FeatureStore

        from steering import StoreLink

        store = FeatureStore.open(args.store)
        link = StoreLink(store)
    topics = list(TOPICS) if not args.topics else args.topics.split(",")
    if "-" in args.positions:  # "A-B": token indices A..B (0 = BOS), e.g. the start of the generation
        lo, hi = (int(v) for v in args.positions.split("-"))
        where = tuple(range(lo, hi + 1))
    else:
        where = args.positions
    docs = {t: [generate_document(f"steer-bench-{t}-{i}", topic=t).text for i in range(args.n_docs)] for t in TOPICS}
    prompts = [""] * args.samples  # unconditional: the base rate of each topic is its share in free generation
    n_test = args.test_samples or args.samples
    test_prompts = [""] * n_test  # the held-out evaluation may use more samples than the dev sweeps

    def cfg(seed):
        return GenerationConfig(max_new_tokens=args.new_tokens, do_sample=True, seed=seed, stop_at_eos=False)

    def pooled(texts, topic, context=""):
        """(topic share of the texts' content words, grammatical share of their complete sentences
        judged alone, and judged with the document rules, the prompt being the document's start;
        the prompt's own sentences are not counted)."""
        num = den = good = good_doc = total = 0
        n_ctx = len(validate_document(context).sentences) if context else 0
        for t in texts:
            c = topic_counts(t)
            num += c[topic]
            den += sum(c.values())
            doc = validate_document(f"{context} {t}" if context else t).sentences[n_ctx:]
            sents = split_sentences(t)
            if sents and sents[-1][-1] not in TERMINALS:
                sents = sents[:-1]
            good += sum(validate_sentence(w).grammatical for w in sents)
            good_doc += sum(r.grammatical for r in doc)
            total += len(sents)
        return (num / den if den else 0.0), (good / total if total else 0.0), (good_doc / total if total else 0.0)

    base = generate(model, test_prompts, cfg(args.test_seed))
    from steering.evaluate import perplexity

    base_ppl = perplexity(model, base)
    rows = []
    for topic in topics:
        pos = docs[topic]
        neg = [d for t in TOPICS if t != topic for d in docs[t][: max(1, args.n_docs // 4)]]
        ranked = contrast_features(model, sae, pos, neg, top=args.top_n)
        by_f1 = store.concept_matches(f"topic:{topic}") if store is not None else []
        if args.select == "concept":
            if not by_f1:
                raise SystemExit(f"the store has no concept match for topic:{topic}; use --select contrast")
            pool = [by_f1[0].latent]
        else:  # the top --candidates latents by contrast, plus the store's concept-F1-best latent
            pool = [c.latent for c in ranked[: args.candidates]]
            if by_f1 and args.candidates > 1 and by_f1[0].latent not in pool:
                pool.append(by_f1[0].latent)
        scorer = toy_scorer(topic, "sentence")
        cue = " ".join(generate_document(f"steer-cue-{topic}", topic=topic).sentences[0])
        # SAE feature, difference of means and prompting: the package's protocol (steering.methods);
        # without typical maxima the SAE strengths are multiples of 4x the latent's mean activation
        card = compare_methods(
            model, sae, scorer, prompts=prompts, test_prompts=test_prompts, positive=pos, negative=neg, cue=cue,
            latents=pool, gen_config=cfg(args.dev_seed), typical_max=link.typical_max if link else None,
            config=CompareConfig(op=args.op, positions=where if isinstance(where, str) else ",".join(map(str, where)),
                                 sae_strengths=args.strengths if link else [4 * s for s in args.strengths],
                                 vector_strengths=args.vec_strengths, target_concept=0.5, min_fluency=0.8,
                                 rule=args.rule, dev_seed=args.dev_seed, test_seed=args.test_seed),
            say=lambda msg, t=topic: print(f"  {t}: {msg}", file=sys.stderr, flush=True))
        pick = card.picks["SAE feature"]
        result = {"topic": topic, "latent": pick.latent, "pool": pool,
                  "f1_feature": by_f1[0].latent if by_f1 else None, "f1": by_f1[0].f1 if by_f1 else None}
        for method, label, ctx in (("SAE feature", "SAE feature", ""), ("diff-of-means", "diff-of-means", ""),
                                   ("prompting", "prompting", cue)):
            r = card.row(method)
            share, gram, gram_doc = pooled(card.generations[method].texts, topic, context=ctx)
            strength = cue if method == "prompting" else card.picks[method].strength
            result[label] = (strength, share, gram, gram_doc, r.perplexity)

        def top_edits(s):  # the top-N contrast features, each added in proportion to its activation difference
            return [FeatureEdit(c.latent, "add", s * c.score, positions=where) for c in ranked] if s else None

        pts = sweep_edits(model, sae, top_edits, args.top_strengths, prompts, scorer, gen_config=cfg(args.dev_seed),
                          with_perplexity=False)
        s = recommend_strength(pts, min_fluency=0.8, target_concept=0.5, rule=args.rule)
        if s is None:
            s = recommend_strength(pts)
        with steer(model, sae, top_edits(s)) as sess:
            gen = sess.generate(test_prompts, cfg(args.test_seed))
        r = score_generation(f"SAE top-{args.top_n}", model, test_prompts, gen, scorer)
        result[f"SAE top-{args.top_n}"] = (s,) + pooled(gen.texts, topic) + (r.perplexity,)
        result["base"] = pooled(base.texts, topic) + (base_ppl,)
        rows.append(result)
        print(result, flush=True)

    lines = [
        "### Toy world: steering toward each setting" + ("" if args.positions == "all" else f" (positions {args.positions})"),
        "",
        f"{time.strftime('%Y-%m-%d')}; toy model, SAE {args.sae} at {hook} (d_sae {sae.d_sae}); "
        f"{args.samples} unconditional samples of {args.new_tokens} tokens per cell (temperature 1)"
        + (f" on the dev seed, {n_test} on the test seed" if n_test != args.samples else "")
        + "; strength picked on "
        f"seed {args.dev_seed} ("
        + ("the point with the largest worst-case margin min(share - 50%, grammatical - 80%)" if args.rule == "margin" else
           "the point with the largest worst-case margin in standard errors over the samples, "
           "min((share - 50%) / se(share), (grammatical - 80%) / se(grammatical))" if args.rule == "z" else
           "weakest reaching share >= 50% with >= 80% of sentences grammatical, else best harmonic mean")
        + f"), reported on seed {args.test_seed}. Share = topic words / all topic-bearing "
        f"content words (pooled over samples); gram. = complete sentences the toy validator accepts, each judged alone; "
        f"in doc. = also obeying the document rules (one tense, names introduced, pronouns resolvable; the prompt "
        f"starts the document); ppl = perplexity of the continuation under the unsteered model. Prompting = a "
        f"topic sentence from the toy grammar as the prompt. Feature = "
        + ("top latent by contrast" if args.select == "contrast" else "best latent by concept F1 (store)")
        + f" ({args.n_docs} topic documents vs others)"
        + (f"; with --candidates {args.candidates}, the top {args.candidates} latents by contrast and the store's "
           f"concept-F1-best latent are each swept on the dev seed and the (latent, strength) with the best margin "
           f"is kept" if args.select == "contrast" and args.candidates > 1 else "")
        + f"; edit: {args.op} at {'all positions' if where == 'all' else 'token positions ' + args.positions + ' (0 = BOS)' if isinstance(where, tuple) else args.positions + ' positions'} (every method), strength in "
        f"{'multiples of the typical max activation' if link else 'raw units'}. SAE top-{args.top_n}: the {args.top_n} "
        f"latents with the largest mean-activation difference, each added with strength x its difference (raw units). "
        f"Difference of means: strength in multiples of the mean difference. "
        f"`python benchmarks/bench_steering.py toy --select {args.select} --op {args.op} --rule {args.rule} "
        f"--positions {args.positions} --candidates {args.candidates} --samples {args.samples}"
        + (f" --test-samples {n_test}" if n_test != args.samples else "")
        + f" --dev-seed {args.dev_seed} --test-seed {args.test_seed}`",
        f"Load average at the end: {load_average()}.",
        "",
        f"| topic | base: share / gram. / in doc. / ppl | SAE feature (F1-best) of candidates | strength | share | gram. | in doc. | ppl "
        f"| SAE top-{args.top_n} strength | share | gram. | in doc. | ppl "
        f"| diff-of-means strength | share | gram. | in doc. | ppl | prompting: share | gram. | in doc. | ppl |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cells(v):
        return f"{v[1]:.0%} | {v[2]:.0%} | {v[3]:.0%} | {v[4]:.1f}"

    for r in rows:
        f1 = "" if r["f1_feature"] is None else f" ({r['f1_feature']}, F1 {r['f1']:.2f})"
        b = r["base"]
        lines.append(f"| {r['topic']} | {b[0]:.0%} / {b[1]:.0%} / {b[2]:.0%} / {b[3]:.1f} | {r['latent']}{f1}"
                     f"{' of ' + ','.join(map(str, r['pool'])) if len(r['pool']) > 1 else ''} | "
                     f"{r['SAE feature'][0]:g} | {cells(r['SAE feature'])} | "
                     f"{r[f'SAE top-{args.top_n}'][0]:g} | {cells(r[f'SAE top-{args.top_n}'])} | {r['diff-of-means'][0]:g} | "
                     f"{cells(r['diff-of-means'])} | {cells(r['prompting'])} |")
    ok = sum(r["SAE feature"][1] >= 0.5 and r["SAE feature"][2] >= 0.8 for r in rows)
    ok_v = sum(r["diff-of-means"][1] >= 0.5 and r["diff-of-means"][2] >= 0.8 for r in rows)
    ok_n = sum(r[f"SAE top-{args.top_n}"][1] >= 0.5 and r[f"SAE top-{args.top_n}"][2] >= 0.8 for r in rows)
    ok_p = sum(r["prompting"][1] >= 0.5 and r["prompting"][2] >= 0.8 for r in rows)
    lines += ["", f"Topics reaching share >= 50% with >= 80% of sentences grammatical (judged alone): SAE feature "
                  f"{ok}/{len(rows)}, SAE top-{args.top_n} features {ok_n}/{len(rows)}, difference of means "
                  f"{ok_v}/{len(rows)}, prompting {ok_p}/{len(rows)}.", ""]
    return "\n".join(lines)


def build_toy_sae(work: Path, hook: str, *, tokens: int = 200_000, d_sae: int = 1024, k: int = 16,
                  train_tokens: int = 2_000_000, arch: str = "topk", widths: list[int] | None = None,
                  init_scale: float | None = None) -> tuple[str, str]:
    """cache -> SAE (TopK by default; `arch` and `widths` as in training.SAESpec) -> feature store
    (with concept matches) for the toy model at `hook`; each step is skipped when its output exists
    (the store is named after the SAE, except the default TopK's toy.db). Returns (SAE folder, store file)."""
    import subprocess

    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    manifest = cache / "manifest.json"
    if not manifest.exists() or '"complete": true' not in manifest.read_text():
        print(f"caching {tokens:,} toy-world tokens at {hook} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "saesteer", "cache", "--model", "toy", "--dataset", "toy", "--hooks", hook,
                        "--max-tokens", str(tokens), "--out", str(cache), "--exclude-tokens", "special", "--no-progress"],
                       check=True)
    from training import SAESpec
    from training.config import takes_k

    spec = SAESpec(arch, d_sae=d_sae, k=k if takes_k(arch) else None, matryoshka_widths=list(widths or []))
    default = spec.architecture == "topk" and init_scale is None and train_tokens == 2_000_000
    if not default:  # every non-default choice in the folder name, so two builds never share one
        spec.name += (("_w" + "-".join(map(str, widths))) if widths else "") + (
            f"_init{init_scale:g}" if init_scale is not None else "") + f"_t{train_tokens // 1000}k"
    run = work / ("run" if default else f"run_{spec.name}")
    sae_dir = run / "saes" / spec.name
    if not (sae_dir / "cfg.json").exists():
        from training import RunConfig, train
        from training.config import TrainConfig
        from training.reader import CacheReader

        print(f"training SAE {spec.name} on {train_tokens:,} tokens ...", file=sys.stderr, flush=True)
        cfg = RunConfig(saes=[spec], train=TrainConfig(total_tokens=train_tokens, batch_size=4096, holdout_tokens=8192,
                                                       encoder_init_scale=init_scale))
        train(cfg, CacheReader(cache, batch_size=4096, epochs=None, seed=0), run,
              provenance={"model": "toy", "hook_name": hook, "dataset": "toy"})
    store = work / ("toy.db" if default else f"{spec.name}.db")
    if not store.exists():
        from bench_autointerp import concept_matches
        from features import BuildConfig, CacheSource, FeatureStore, build_feature_store
        from saes import load_sae
        from toyworld.model import load_model as toy

        print("building the feature store ...", file=sys.stderr, flush=True)
        sae = load_sae(sae_dir)
        model = toy(device="cpu")
        build_feature_store(store, sae, CacheSource(cache), BuildConfig(), model=model, tokenizer=model.tokenizer,
                            sae_path=str(sae_dir), progress=False)
        with FeatureStore.open(store, readonly=False) as st:
            matches, source = concept_matches(sae, cache)
            st.write_concept_matches(matches, source=source)
    return str(sae_dir), str(store)


def topic_latents(sae, store=None, *, n_docs: int = 32) -> list[dict]:
    """Per toy topic, how close the SAE comes to a "this document is about T" latent: the store's
    best lexical concept F1 (latent fires vs token is a topic-T word), the best document F1 (latent
    fires vs token lies in a topic-T document, over n_docs documents per topic, held apart from the
    steering benchmark's documents), and the largest cosine between a decoder row and the topic's
    difference-of-means vector (the benchmark's 48 documents per topic vs 12 of each other topic)."""
    from steering.activations import iter_hook_activations
    from steering.baselines import diff_of_means
    from toyworld.grammar import generate_document
    from toyworld.lexicon import TOPICS
    from toyworld.model import load_model as toy_model

    model = toy_model(device="cpu")
    hook = sae.cfg.metadata["hook_name"]
    fires, labels = [], []
    for t in TOPICS:
        docs = [generate_document(f"topic-latents-{t}-{i}", topic=t).text for i in range(n_docs)]
        for acts_ND in iter_hook_activations(model, hook, docs):
            fires.append(sae.encode(acts_ND.to(sae.device)).cpu() > 0)
            labels += [t] * acts_ND.shape[0]
    fire_NF = torch.cat(fires).double()
    dec_FD = sae.W_dec.detach().float().cpu()
    dec_FD = dec_FD / dec_FD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    bench_docs = {t: [generate_document(f"steer-bench-{t}-{i}", topic=t).text for i in range(48)] for t in TOPICS}
    out = []
    for t in TOPICS:
        y_N = torch.tensor([x == t for x in labels], dtype=torch.float64)
        tp_F = fire_NF.T @ y_N
        prec_F, rec_F = tp_F / fire_NF.sum(0).clamp_min(1), tp_F / y_N.sum()
        f1_F = 2 * prec_F * rec_F / (prec_F + rec_F).clamp_min(1e-12)
        d = int(f1_F.argmax())
        neg = [x for u in TOPICS if u != t for x in bench_docs[u][:12]]
        vec_D = diff_of_means(model, hook, bench_docs[t], neg).vector.float().cpu()
        cos_F = dec_FD @ (vec_D / vec_D.norm())
        c = int(cos_F.argmax())
        lex = store.concept_matches(f"topic:{t}") if store is not None else []
        out.append({"topic": t, "lex": (lex[0].latent, lex[0].f1) if lex else None,
                    "doc": (d, float(f1_F[d]), float(prec_F[d]), float(rec_F[d])), "cos": (c, float(cos_F[c]))})
    return out


def latents(args) -> str:
    """Markdown rows: how topic-like the SAE's best latents are (see topic_latents)."""
    import saes

    torch.set_num_threads(args.threads)
    sae = saes.load_sae(args.sae)
    if args.hook:
        sae.cfg.metadata["hook_name"] = args.hook
    store = None
    if args.store:
        from features import FeatureStore

        store = FeatureStore.open(args.store)
    rows = topic_latents(sae, store, n_docs=args.n_docs)
    lines = [f"{args.sae} at {sae.cfg.metadata['hook_name']}:", "",
             "| topic | best lexical F1 (store) | best document F1 (precision, recall) | max cos(decoder, diff of means) |",
             "|---|---|---|---|"]
    for r in rows:
        lex = f"{r['lex'][0]}: {r['lex'][1]:.2f}" if r["lex"] else "n/a"
        d = r["doc"]
        lines.append(f"| {r['topic']} | {lex} | {d[0]}: {d[1]:.2f} ({d[2]:.2f}, {d[3]:.2f}) | {r['cos'][0]}: {r['cos'][1]:.2f} |")
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    lines += ["", f"means: lexical F1 {mean([r['lex'][1] for r in rows if r['lex']] or [float('nan')]):.2f}, "
                  f"document F1 {mean([r['doc'][1] for r in rows]):.2f}, cosine {mean([r['cos'][1] for r in rows]):.2f}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- results
def write_subsection(text: str, results: Path = RESULTS) -> None:
    """Replace (or add) the subsection starting with text's first line inside "## Steering"."""
    sub = text.splitlines()[0]
    body = results.read_text() if results.exists() else "# Benchmark results\n"
    if SECTION not in body:
        body = body.rstrip("\n") + f"\n\n{SECTION}\n\n"
    head, _, rest = body.partition(SECTION)
    nxt = rest.find("\n## ")
    section, tail = (rest, "") if nxt < 0 else (rest[:nxt + 1], rest[nxt + 1:])
    parts = section.split("\n### ")
    intro, subs = parts[0], ["### " + p for p in parts[1:]]
    subs = [s for s in subs if s.splitlines()[0] != sub] + [text.rstrip("\n") + "\n"]
    subs.sort(key=lambda s: s.splitlines()[0])
    new_section = intro.rstrip("\n") + "\n\n" + "\n".join(s.rstrip("\n") + "\n" for s in subs)
    out = head + SECTION + new_section + ("\n" + tail if tail else "")
    from saes.fileio import atomic_write_bytes

    atomic_write_bytes(results, out.encode())


def bf16_certified_decisions(sae, X_BTD, m: int) -> tuple:
    """(selected [B, T], undecided [B, T]) of latent m of a float32 TopK SAE, the second for a test
    that decides membership from a bf16 copy of the encoder (the product oneDNN would run) with
    error bounds instead of the SAE's own float32 pre-activations P, given the SAE's own P_m:
    m is off when k others are surely above P_m, on when at most k - 1 others may be at or above it.
    The bound on |P_j - (bf16 product_j + b_j)| (u = x - b_dec, ub / wb rounded to bf16, D = d_in):
    ||ub - u|| ||wb_j|| + ||u|| ||wb_j - w_j|| (rounding the inputs; Cauchy-Schwarz), plus
    gamma_D ||ub|| ||wb_j|| (float32 sums of exact bf16 products, gamma_D = D eps32 / (1 - D eps32)),
    plus 2^-8 / (1 - 2^-8) |out_j| (the bf16 output), plus gamma_D ||u|| ||w_j|| + 2 eps32 max(|P|, |b|)
    (the SAE's own float32 product and bias add); maxima over j. Asserts the test never contradicts P."""
    W, b = sae.W_enc.detach(), sae.b_enc.detach().double()
    U = (X_BTD - sae.b_dec.detach()).reshape(-1, W.shape[0])
    P = U @ W + sae.b_enc.detach()  # the SAE's own expression
    k, D = int(sae.cfg.k), W.shape[0]
    Ub, Wb = U.bfloat16(), W.bfloat16()
    out = (Ub @ Wb).double()
    eps32 = 2.0 ** -24
    gamma = D * eps32 / (1 - D * eps32)
    w, wb = float(W.norm(dim=0).max()), float(Wb.double().norm(dim=0).max())
    dw = float((Wb.double() - W.double()).norm(dim=0).max())
    u = U.double().norm(dim=1, keepdim=True)
    du = (Ub.double() - U.double()).norm(dim=1, keepdim=True)
    ub = Ub.double().norm(dim=1, keepdim=True)
    c = du * wb + u * dw + gamma * ub * wb + gamma * u * w + 2 * eps32 * (P.abs().amax(1, keepdim=True).double() + b.abs().max())
    err = c + 2.0 ** -8 / (1 - 2.0 ** -8) * out.abs()
    q, p_m = out + b, P[:, m : m + 1].double()
    off = ((q - err) > p_m).sum(1) >= k
    on = ((q + err) >= p_m).sum(1) <= k  # m itself included
    selected = (P > p_m).sum(1) < k
    assert not bool((on & ~selected).any() or (off & selected).any()), "the bound contradicts the SAE's own values"
    B, T = X_BTD.shape[:2]
    return selected.view(B, T), (~(on | off)).view(B, T)


def topk_read(args) -> str:
    """See the module docstring (topk-read)."""
    from saes import create_sae
    from steering import steer
    from steering.interventions import TopKReader

    torch.set_num_threads(args.threads)
    model = load_model("toy")
    hook = f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
    tokens = model.to_tokens(PROMPTS[:8] * 2, padding_side="left")[:8]
    with torch.no_grad():
        text = model.generate(tokens, max_new_tokens=64, do_sample=False, stop_at_eos=False, use_past_kv_cache=True,
                              padding_side="left", return_type="tokens", verbose=False)  # as `matrix` picks its latents
        _, cache = model.run_with_cache(text, names_filter=hook)

    def per_call_us(reader, steps) -> tuple[float, float]:
        def best(fn):
            runs = []
            for _ in range(args.reps):
                c0 = time.process_time()
                for x in steps:
                    fn(x)
                runs.append(time.process_time() - c0)
            return min(runs) / len(steps) * 1e6
        return best(reader.read), best(reader.full)

    rows = ["| activations | d_in | d_sae | bound path us/call | full path us/call |", "|---|---|---|---|---|"]
    sae = random_sae("topk", model.cfg.d_model, hook, seed=1)
    X = cache[hook]
    busy = int((sae.encode(X) > 0).sum((0, 1)).argmax())
    with torch.no_grad():
        r = TopKReader(sae, torch.tensor([busy]))
        r.cands.learn_rows = X.shape[0] * X.shape[1]
        r.full(X.reshape(-1, X.shape[-1]))  # the candidates learn from a first full pass
        b, f = per_call_us(r, [X[:, t] for t in range(X.shape[1])])
        rows.append(f"| toy model, its greedy text | {sae.cfg.d_in} | {sae.d_sae} | {b:.0f} | {f:.0f} |")
        for D, F in ((256, 8192), (768, 24576)):
            g = torch.Generator().manual_seed(1)
            wide = create_sae("topk", D, F, k=32, generator=g)
            R = torch.randn(264, 8, D, generator=g) + wide.b_dec
            top = ((R.reshape(-1, D) - wide.b_dec) @ wide.W_enc + wide.b_enc).topk(32, -1).indices
            r = TopKReader(wide, torch.tensor([int(top.flatten().bincount(minlength=F).argmax())]))
            r.cands.learn_rows = 64 * 8
            r.full(R[:64].reshape(-1, D))
            b, f = per_call_us(r, list(R[64:]))
            rows.append(f"| random rows | {D} | {F} | {b:.0f} | {f:.0f} |")
        # the batched engine's shape: 32 rows, 32 latents (one per client), each row needing its own
        ids32 = torch.tensor([37 * i % sae.d_sae for i in range(32)])
        r = TopKReader(sae, ids32)
        r.cands.learn_rows = 0
        need = torch.eye(32, dtype=torch.bool)
        flat = X.reshape(-1, X.shape[-1])
        steps32 = [flat[32 * t: 32 * (t + 1)] for t in range(flat.shape[0] // 32)]

        def bound_us() -> float:
            runs = []
            for _ in range(args.reps):
                c0 = time.process_time()
                for x in steps32:
                    r.all_off(x, need)
                runs.append(time.process_time() - c0)
            return min(runs) / len(steps32) * 1e6
        pairs_us = bound_us()
        r.count_latents = r.M  # every (row, latent) pair counted, as for few latents
        every_us = bound_us()

    readers: list = []
    init = TopKReader.__init__

    def counting_init(self, *a, **kw):
        init(self, *a, **kw)
        readers.append(self)

    quiet = int((X @ sae.W_enc + sae.b_enc).amax((0, 1)).argmin())
    TopKReader.__init__ = counting_init
    try:
        with steer(model, sae, [f"{quiet}:add=8?{busy}>1000000"]):  # reads the busiest latent, changes nothing
            torch.manual_seed(0)
            model.generate(tokens, max_new_tokens=64, do_sample=True, stop_at_eos=False, use_past_kv_cache=True,
                           padding_side="left", return_type="tokens", verbose=False)
    finally:
        TopKReader.__init__ = init
    full = sum(x.full_rows for x in readers)
    total = full + sum(x.bound_hits for x in readers)
    with torch.no_grad():
        on_BT, undecided_BT = bf16_certified_decisions(sae, X, busy)
    return "\n".join([
        "### TopK exact read: bound path vs full path", "",
        f"{time.strftime('%Y-%m-%d')}; {os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} "
        f"thread(s); load average {load_average()}. Process CPU time per call on 8 rows (one "
        f"generation step of batch 8), best of {args.reps} passes. `python benchmarks/bench_steering.py topk-read "
        f"--reps {args.reps}`", "", *rows, "",
        f"A steered generation (toy model, batch 8, 64 new tokens) reading the busiest latent {busy} at every "
        f"token: {full} of {total} rows went to the full path.", "",
        f"A membership test certified from a bf16 copy of W_enc (`bf16_certified_decisions`) on the same "
        f"text: latent {busy} is selected in {on_BT.float().mean():.1%} of rows and in at least one row of "
        f"{on_BT.any(0).float().mean():.1%} of steps; the test leaves {undecided_BT.float().mean():.1%} of rows "
        f"undecided, which would send {undecided_BT.any(0).float().mean():.1%} of steps to the exact fp32 product "
        f"on top of the bf16 one.", "",
        f"The batched engine's shape (32 rows, 32 latents, each row needing its own, toy model activations): "
        f"the bound counting the needed pairs only {pairs_us:.0f} us per call, counting every (row, latent) pair "
        f"{every_us:.0f} us.",
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--model", default="toy", choices=["toy", "tiny"])
    s.add_argument("--sae", default=None, help="SAE folder (default: random SAEs of the toy SAE's shape)")
    s.add_argument("--hook", default=None)
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--new-tokens", type=int, default=64)
    s.add_argument("--rounds", type=int, default=7)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--write", action="store_true")
    mx = sub.add_parser("matrix", help="steered speed for every op and SAE architecture (process CPU time)")
    mx.add_argument("--batch", type=int, default=8)
    mx.add_argument("--new-tokens", type=int, default=64)
    mx.add_argument("--rounds", type=int, default=5)
    mx.add_argument("--threads", type=int, default=1)
    mx.add_argument("--flush-denormal", action="store_true",
                    help="flush denormal floats to zero (their slow arithmetic depends on the text generated)")
    mx.add_argument("--write", action="store_true")
    ht = sub.add_parser("hook-time", help="CPU time per call of the steering hook for every matrix row")
    ht.add_argument("--batch", type=int, default=8)
    ht.add_argument("--new-tokens", type=int, default=64)
    ht.add_argument("--rounds", type=int, default=3)
    ht.add_argument("--threads", type=int, default=1)
    ht.add_argument("--flush-denormal", action="store_true")
    ht.add_argument("--only", default="", help="comma-separated parts of row names to run (default: every row)")
    ht.add_argument("--write", action="store_true")
    t = sub.add_parser("toy")
    t.add_argument("--sae", default=None, help="SAE folder (default: build the auto-interp benchmark's toy SAE in --work)")
    t.add_argument("--store", default=None, help="its feature store (typical max activations, concept matches)")
    t.add_argument("--work", default="runs/steering_toy_l3", help="where the default toy SAE and store are built")
    t.add_argument("--hook", default=None,
                   help="hook of the default SAE (blocks.3.hook_resid_post), or of --sae when it records none")
    t.add_argument("--sae-arch", default="topk", choices=["topk", "batchtopk", "matryoshka_batchtopk"],
                   help="architecture of the SAE built when --sae is not given")
    t.add_argument("--sae-width", type=int, default=1024, help="d_sae of the SAE built when --sae is not given")
    t.add_argument("--sae-k", type=int, default=16, help="k of the SAE built when --sae is not given")
    t.add_argument("--sae-widths", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="Matryoshka prefix widths of the built SAE, e.g. 32,128,1024")
    t.add_argument("--train-tokens", type=int, default=2_000_000, help="training tokens of the built SAE")
    t.add_argument("--init-scale", type=float, default=None,
                   help="TrainConfig.encoder_init_scale of the built SAE (default: the least-squares fit)")
    t.add_argument("--select", default="contrast", choices=["contrast", "concept"],
                   help="pick each topic's feature by contrast of topic documents, or by the store's concept F1")
    t.add_argument("--op", default="add", choices=["add", "clamp"])
    t.add_argument("--rule", default="margin", choices=["margin", "z", "weakest"],
                   help="how the dev seed picks the strength (see steering.sweeps.recommend_strength)")
    t.add_argument("--positions", default="all",
                   help="where every method steers: all, generated, or A-B (token indices A..B, 0 = BOS; e.g. 0-10 "
                        "steers the first ten generated tokens of an unconditional sample, then lets the model run)")
    t.add_argument("--topics", default=None, help="comma-separated subset (default: all eight)")
    t.add_argument("--samples", type=int, default=64)
    t.add_argument("--test-samples", type=int, default=None,
                   help="samples per cell on the test seed (default: --samples); more samples, less seed noise")
    t.add_argument("--new-tokens", type=int, default=48)
    t.add_argument("--n-docs", type=int, default=48)
    t.add_argument("--strengths", type=lambda s: [float(x) for x in s.split(",")], default=[0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2])
    t.add_argument("--candidates", type=int, default=3,
                   help="SAE feature: sweep the top N latents by contrast (plus the store's concept-F1-best latent) on "
                        "the dev seed and keep the (latent, strength) with the best margin (1: the top latent only)")
    t.add_argument("--top-n", type=int, default=8, help="features in the 'SAE top-N' method")
    t.add_argument("--top-strengths", type=lambda s: [float(x) for x in s.split(",")],
                   default=[1, 1.25, 1.5, 1.75, 2, 2.5])
    t.add_argument("--vec-strengths", type=lambda s: [float(x) for x in s.split(",")],
                   default=[0.75, 1, 1.25, 1.5, 1.75, 2, 2.5])
    t.add_argument("--dev-seed", type=int, default=1)
    t.add_argument("--test-seed", type=int, default=3)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--write", action="store_true")
    tr = sub.add_parser("topk-read", help="what the TopK exact read costs: bound path vs full path, rows it cannot settle")
    tr.add_argument("--reps", type=int, default=5)
    tr.add_argument("--threads", type=int, default=1)
    la = sub.add_parser("latents", help="how topic-like an SAE's latents are (lexical F1, document F1, cosine to diff of means)")
    la.add_argument("--sae", required=True)
    la.add_argument("--store", default=None)
    la.add_argument("--hook", default=None, help="hook of --sae when its cfg records none")
    la.add_argument("--n-docs", type=int, default=32)
    la.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    print(f"{platform.node()} load {load_average()}", file=sys.stderr)
    if args.what == "latents":
        print(latents(args))
        return 0
    if args.what == "topk-read":
        print(topk_read(args))
        return 0
    text = {"speed": speed, "matrix": matrix, "hook-time": hook_time, "toy": toy}[args.what](args)
    print(text)
    if args.write:
        write_subsection(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
