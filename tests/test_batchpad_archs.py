"""Batched generation of prompts of different lengths, on tiny checkpoints of real architectures
(`tests/helpers/real_models.py`, loaded as users load them: `saesteer.models.load_model`, a
TransformerBridge), beyond the families `test_batch_padding.py` covers: partial rotary (Phi),
Llama-3.1's rescaled RoPE, Phi-3's joint projections, mixtures of experts (Mixtral, Qwen2-MoE,
Qwen3-MoE, OLMoE, Granite-MoE, gpt-oss with attention sinks and windows), Gemma-3/4 windows, ...

Every comparison is a row of a left-padded batch against the same prompt generated alone. Greedy
tokens must be equal; log-probabilities within 1e-4: fp32 throughout, the only difference being
the batch's shape (a padded row's matmuls and softmaxes reduce in another order and over masked
columns, ~1e-6 here; a pad leaking into attention or a shifted position moves them by 1e-2 and
more, and changes the tokens). Seeded sampling must give the same tokens: each row draws from its
own stream (`steering.sampling`), so only its logits matter.

- `saesteer steer` / the Python API / the web playground (`steering.generate`, a `steer()`
  session): a prompt whose first real tokens share the pad's id (GPT-2's and Llama-3's
  end-of-text is their pad: a document separator at the start of a prompt with no other BOS, or
  a second one after the BOS) was read as padding, hidden from attention and from steering's
  positions, alone or batched; the API's engine, which knows each row's length, read it whole.
- the API's engine (`saesteer api`): rows of 1 token to the context's end, each with its own
  edits (indices, prompt, generated, last, a conditional edit) or none, greedy and seeded
  sampled, with stop strings and end-of-text tokens that end some rows early while the others go
  on, prefilled together or joining a running batch.
"""

from __future__ import annotations

import pytest
import torch
from helpers.forwards import hf_greedy

pytestmark = [pytest.mark.usefixtures("one_thread")]

HOOK = "blocks.0.hook_resid_post"
N_NEW = 10
LP_TOL = 1e-4  # see the module docstring
EDITS = [None, ["3:add=20@0,2,-1"], ["5:add=30@prompt", "7:add=-20@generated", "6:add=10@all?3>-1"],
         ["9:clamp=25@last"], ["11:add=15@1"]]  # 6:...?3>-1: a conditional edit, where latent 3 fires
# each sampled row's own settings (the batch's rows are chosen from together: steering.sampling.choose)
SAMPLING = [dict(top_k=5), dict(top_p=0.8), dict(frequency_penalty=1.5, presence_penalty=0.5),
            dict(logit_bias=((7, 5.0), (9, -100.0))), dict(top_k=50, top_p=0.95, frequency_penalty=-0.5)]
FAST_ARCHS = ("phi", "mixtral")  # partial rotary; a mixture of experts
SLOW_ARCHS = ("llama3_1", "phi3", "gemma3", "gemma4", "gpt_oss", "qwen3", "qwen3_moe", "qwen2_moe", "olmoe",
              "granitemoe", "smollm3", "starcoder2", "stablelm", "gptj", "olmo2")


def _arch_params():
    return [*FAST_ARCHS, *(pytest.param(a, marks=pytest.mark.slow) for a in SLOW_ARCHS)]


@pytest.fixture(scope="module")
def family_tokenizer(real_corpus):
    """`tok(family)`: the family's tokenizer trained on `real_corpus`, built once for the module."""
    from helpers.real_models import build_family_tokenizer

    toks = {}

    def tok(family: str):
        if family not in toks:
            toks[family] = build_family_tokenizer(family, real_corpus.train_docs, 512)
        return toks[family]

    return tok


@pytest.fixture(scope="module")
def arch_path(tmp_path_factory, family_tokenizer):
    from helpers.real_models import arch_models

    root = tmp_path_factory.mktemp("batchpad-archs")
    made = {}

    def path(arch: str):
        family = "gemma" if arch.startswith("gemma") else "llama" if arch.startswith(("llama", "phi")) else "qwen2"
        if family not in made:
            made[family] = arch_models(root / family, family_tokenizer(family))
        return made[family](arch)

    return path


@pytest.fixture(scope="module")
def load(arch_path):
    from saesteer.models import load_model

    loaded = {}

    def get(arch: str):
        if arch not in loaded:
            loaded[arch] = load_model(str(arch_path(arch)), device="cpu")
        return loaded[arch]

    return get


def _sae(model, seed: int = 1):
    from helpers.steering_fixtures import random_sae

    return random_sae(model, "jumprelu", hook=HOOK, d_sae=64, seed=seed)


def _row_steering(model, sae, edits):
    from steering.resolve import resolve_edits
    from steering.rowedits import RowEdit, RowSteering

    if not edits:
        return None
    rs = resolve_edits(model, {"s": sae}, edits, chat_positions=True)
    return RowSteering([RowEdit("s", r.latent, r.op, r.value, r.positions, r.trigger, r.describe()) for r in rs], [])


def _run(model, sae, rows, stagger: int = 0, max_rows: int = 64) -> dict:
    """tag -> (token ids, log-probabilities, top alternatives, finish reason, text) of each row."""
    from steering.engine import BatchEngine

    engine, out = BatchEngine(model, {"s": sae}, max_rows=max_rows), {}

    def take(events):
        for ev in events:
            got = out.setdefault(ev.tag, dict(ids=[], lps=[], top=[], finish=None, text="", fired=None))
            if ev.token is not None and not (ev.finish_reason == "stop" and ev.token in rows_by_tag[ev.tag].params.stop_token_ids):
                got["ids"].append(ev.token)
                got["lps"].append(ev.logprob)
                got["top"].append(ev.top)
            if ev.finish_reason:
                got["finish"], got["text"], got["fired"] = ev.finish_reason, ev.detail["text"], ev.detail.get("fired")

    rows_by_tag = {r.tag: r for r in rows}
    for r in rows:
        engine.add([r])
        for _ in range(stagger):
            take(engine.step())
    while engine.busy:
        take(engine.step())
    return out


def _same(got: dict, alone: dict, what) -> None:
    assert got["ids"] == alone["ids"], what
    assert (got["finish"], got["text"]) == (alone["finish"], alone["text"]), what
    assert got["fired"] == alone["fired"], what  # the token indices where conditional edits fired
    assert max((abs(a - b) for a, b in zip(got["lps"], alone["lps"])), default=0.0) < LP_TOL, what
    for t_got, t_alone in zip(got["top"], alone["top"]):  # the alternatives: the same tokens, near log-probs
        assert [i for i, _ in t_got] == [i for i, _ in t_alone], what
        assert max((abs(a - b) for (_, a), (_, b) in zip(t_got, t_alone)), default=0.0) < LP_TOL, what


@pytest.mark.parametrize("arch", _arch_params())
def test_engine_rows_of_every_length_equal_each_row_alone(load, real_corpus, arch):
    """Five rows of 1 token to the context's end, each its own edits (or none), greedy and seeded
    sampled (each row its own top-k / top-p / penalties / logit bias) with 3 top alternatives; one row ends early at a stop string, another at a token taken
    for end-of-text, while the rest go on; prefilled together, or joining a running batch three
    at a time in reverse order: each row's tokens, text, finish reason and log-probabilities are
    those it gets alone."""
    from steering.engine import Row
    from steering.sampling import SamplingParams

    model = load(arch)
    sae = _sae(model)
    full = model.tokenizer(real_corpus.test_docs[1])["input_ids"]
    ids = [full[:n] for n in (1, 3, 17, 60, model.cfg.n_ctx - N_NEW)]

    def rows(temperature, stops=None):
        stops = stops or {}
        return [Row(p, SamplingParams(max_new_tokens=N_NEW - i, temperature=temperature, seed=40 + i, logprobs=3,
                                      **stops.get(i, {}), **(SAMPLING[i] if temperature else {})),
                    _row_steering(model, sae, e), tag=i) for i, (p, e) in enumerate(zip(ids, EDITS))]

    for temperature in (0.0, 1.0):
        free = {}  # the rows that will stop early, run without their stops
        for r in rows(temperature)[1:4:2]:
            free.update(_run(model, sae, [r]))
        # row 1 stops at the text of its 4th token, row 3 at its 3rd token taken for end-of-text
        piece = model.tokenizer.decode(free[1]["ids"][3])
        stops = {1: dict(stop=(piece,)) if piece.strip() else {}, 3: dict(stop_token_ids=(free[3]["ids"][2],))}
        alone = {}
        for r in rows(temperature, stops):
            alone.update(_run(model, sae, [r]))
        assert alone[3]["finish"] == "stop" and len(alone[3]["ids"]) <= 2  # it did end early
        assert len({tuple(a["ids"]) for a in alone.values()}) == len(alone)  # the rows do differ
        assert any(alone[2]["fired"].values())  # the conditional edit fired somewhere (prompt of 17 tokens)
        for how, got in (("together", _run(model, sae, rows(temperature, stops))),
                         ("joining", _run(model, sae, rows(temperature, stops)[::-1], stagger=3, max_rows=3))):
            for i in alone:
                _same(got[i], alone[i], (arch, temperature, how, i))
        if temperature == 0.0:  # the edits change the text
            plain = _run(model, sae, [Row(ids[2], SamplingParams(max_new_tokens=N_NEW - 2, temperature=0), tag=0)])
            assert plain[0]["ids"] != alone[2]["ids"]


@pytest.mark.parametrize("arch", _arch_params())
def test_steered_session_batch_equals_each_prompt_alone(load, real_corpus, arch):
    """`saesteer steer` with several prompts (a `steer()` session's generate, left padded through
    TransformerLens's generate): each prompt's greedy tokens in the batch are its tokens alone,
    for edits at indices, the prompt, the generated tokens, the last prompt token and a
    conditional edit."""
    from steering import GenerationConfig, steer

    model = load(arch)
    sae = _sae(model)
    full = model.tokenizer(real_corpus.test_docs[0])["input_ids"]
    texts = [model.tokenizer.decode(full[:n], skip_special_tokens=True) for n in (1, 4, 19, 70)]
    cfg = GenerationConfig(max_new_tokens=8, do_sample=False, stop_at_eos=False)
    for edits in EDITS[1:]:
        with steer(model, {"s": sae}, edits) as s:
            together = s.generate(texts, cfg)
            for i, t in enumerate(texts):
                alone = s.generate([t], cfg)
                assert alone.tokens[0].tolist() == together.tokens[i, together.prompt_len - alone.prompt_len:].tolist(), \
                    (arch, edits, i)


# -- prompts that start with the pad token's id ------------------------------------------------------


@pytest.fixture(scope="module")
def eos_pad_models(tmp_path_factory, family_tokenizer):
    """GPT-2 (BOS = EOS = pad) and Llama-3 (pad = EOS, BOS its own) as saved by transformers, (path, model)
    (untrained, with wide initial weights: what comes next depends on every token)."""
    from helpers.real_models import save_arch_model
    from saesteer.models import load_model

    root = tmp_path_factory.mktemp("batchpad-eospad")
    out = {}
    for fam, arch in (("gpt2", "gpt2"), ("llama", "llama3_1")):
        path = save_arch_model(root / arch, arch, family_tokenizer(fam))
        out[fam] = (path, load_model(str(path), device="cpu"))
    return out


@pytest.mark.parametrize("family, prepend_bos", [("gpt2", None), ("llama", False)])
def test_prompts_starting_with_the_pad_tokens_id_are_read_whole(eos_pad_models, real_corpus, family, prepend_bos):
    """A prompt that starts with end-of-text (a document separator), on a model whose pad is that
    token: GPT-2 after its BOS (two in a row), Llama-3 with no BOS prepended (an SAE trained
    without one). `generate` (alone or batched with a longer prompt) continues what transformers
    continues from those tokens, and a steered session's edit at token 0 lands where the API's
    engine puts it: TransformerLens read the pads off the tokens, so that leading token was hidden
    as a pad and token 0 was the next one."""
    from transformers import AutoModelForCausalLM

    from steering import GenerationConfig, generate, steer
    from steering.engine import Row
    from steering.sampling import SamplingParams

    path, model = eos_pad_models[family]
    hf = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    eos = model.tokenizer.eos_token
    code = real_corpus.test_docs[0][:60]
    texts = [eos + eos + "Café 東京, naïve", "The parser reads " + code, eos + code]
    cfg = GenerationConfig(max_new_tokens=N_NEW, do_sample=False, stop_at_eos=False, prepend_bos=prepend_bos)
    together = generate(model, texts, cfg)
    P = together.prompt_len
    for i, t in enumerate(texts):
        alone = generate(model, [t], cfg)
        own = alone.tokens[0, :alone.prompt_len].tolist()
        assert own[0] == model.tokenizer.pad_token_id or i == 1  # the case at hand: a real token with the pad's id
        want = hf_greedy(hf, own, N_NEW)
        assert alone.new_tokens[0].tolist() == want, (family, i)
        assert together.tokens[i, P - len(own):].tolist() == own + want, (family, i)
    # without the KV cache each step rereads the whole sequence: the mask, grown per token, still says which are pads
    uncached = generate(model, texts, cfg, use_past_kv_cache=False)
    assert torch.equal(uncached.tokens, together.tokens), family
    sae = _sae(model)
    edits = ["3:add=40@0", "5:add=-30@1"]
    with steer(model, {"s": sae}, edits) as s:
        steered = s.generate(texts, cfg)
        assert torch.equal(s.generate(texts, cfg, use_past_kv_cache=False).tokens, steered.tokens), family
    for i, t in enumerate(texts):
        n = len(generate(model, [t], cfg, max_new_tokens=1).tokens[0]) - 1
        own = steered.tokens[i, P - n:P].tolist()
        engine = _run(model, sae, [Row(own, SamplingParams(max_new_tokens=N_NEW, temperature=0),
                                       _row_steering(model, sae, edits), tag=0)])
        assert steered.new_tokens[i].tolist() == engine[0]["ids"], (family, i)



# -- saesteer api through the openai client ------------------------------------------------------------

API_NEW = 8


@pytest.fixture(scope="module")
def mixtral_api(tmp_path_factory, load):
    """`saesteer api` serving Mixtral (a mixture of experts: every token, pads included, is routed),
    its SAE's store built on it; (openai client, app, model)."""
    pytest.importorskip("openai")
    from helpers.api_server import openai_client, serve_entries
    from helpers.web_app import make_entry
    from helpers.web_store import build_web_store
    from saesteer.web import Limits

    model = load("mixtral")
    limits = Limits(max_new_tokens=32)
    entry = make_entry(build_web_store(tmp_path_factory.mktemp("batchpad-api") / "moe", model=model, name="moe"),
                       "moe", limits=limits)
    srv, app = serve_entries([entry], limits=limits)
    try:
        yield openai_client(srv), app, model
    finally:
        srv.stop()


def _choices(client, body: dict) -> list[tuple]:
    """(token ids, log-probabilities, text, finish reason, seed) of each choice, by index; a streamed
    request's pieces joined."""
    if body.get("stream"):
        parts: dict[int, list] = {}
        for chunk in client.completions.create(**body):
            for c in chunk.choices:
                got = parts.setdefault(c.index, [[], "", None, None])
                got[1] += c.text
                got[2] = c.finish_reason or got[2]
                st = (c.model_extra or {}).get("steering")
                if st:
                    got[0], got[3] = st.get("token_ids", got[0]), st.get("seed", got[3])
        return [(tuple(g[0]), None, g[1], g[2], g[3]) for _, g in sorted(parts.items())]
    r = client.completions.create(**body)
    return [(tuple(c.model_extra["steering"]["token_ids"]), tuple(c.logprobs.token_logprobs) if c.logprobs else None,
             c.text, c.finish_reason, c.model_extra["steering"]["seed"]) for c in sorted(r.choices, key=lambda c: c.index)]


def test_concurrent_api_requests_with_n_stop_and_prompt_lists_give_what_each_gives_alone(mixtral_api, real_corpus):
    """Requests sent together to `saesteer api` (held until all are in, so they share one
    left-padded prefill): a list of two prompts of 2 and 40 tokens with n=2, seed 7, sampled and
    steered; greedy ones with a stop string that ends them early, with max_tokens 2, and streamed;
    each prompt from 1 token to the context's end. Each choice equals the same prompt sent alone
    with n=1 and the seed it reported (7 and 8: choice i samples with seed + i), tokens, text and
    finish reason equal, log-probabilities within 1e-4."""
    import threading

    client, app, model = mixtral_api
    full = model.tokenizer(real_corpus.test_docs[2])["input_ids"]
    short, mid, longest = full[:2], full[:40], full[:model.cfg.n_ctx - API_NEW]
    steer_prompt = {"edits": ["5:add=15x@prompt", "7:add=-15x@generated"]}
    base = dict(model="moe", max_tokens=API_NEW, logprobs=2, extra_body={"ignore_eos": True})
    free = _choices(client, dict(base, prompt=mid, temperature=0))[0]
    piece = model.tokenizer.decode(list(free[0][3:5]))
    jobs = [
        dict(base, prompt=[short, mid], n=2, seed=7, temperature=1.0, extra_body={"ignore_eos": True, "steering": steer_prompt}),
        dict(base, prompt=mid, temperature=0, stop=[piece]),
        dict(base, prompt=longest, temperature=0, extra_body={"ignore_eos": True, "steering": {"edits": ["9:clamp=15x@last"]}}),
        dict(base, prompt=full[:1], temperature=0, max_tokens=2),
        dict(model="moe", prompt=full[:17], max_tokens=API_NEW, temperature=0, stream=True,
             extra_body={"ignore_eos": True, "steering": {"edits": ["3:add=15x@0,2,-1"]}}),
    ]
    alone = []
    for job in jobs:
        if isinstance(job["prompt"][0], list):  # each prompt of the list, each choice: n=1 with its seed
            alone.append([_choices(client, dict(job, prompt=p, n=1, seed=job["seed"] + i))[0]
                          for p in job["prompt"] for i in range(job["n"])])
        else:
            alone.append(_choices(client, job))
    assert alone[1][0][3] == "stop" and len(alone[1][0][0]) < API_NEW  # the stop string ended it early
    assert [c[4] for c in alone[0]] == [7, 8, 7, 8] and len({c[0] for c in alone[0]}) == 4

    sched = next(s for s in app.state.openai.schedulers if s.name == "moe")
    sched.engine.max_rows_seen = 0
    together: list = [None] * len(jobs)

    def run(i):
        together[i] = _choices(client, jobs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    with sched.engine.lock:  # every request gets in before the first prefill
        for t in threads:
            t.start()
        _wait(lambda: sched.in_flight == len(jobs))
    for t in threads:
        t.join(120)
    assert sched.engine.max_rows_seen >= 6  # they did share forward passes
    for job, a, b in zip(jobs, alone, together):
        assert len(a) == len(b), job
        for ca, cb in zip(a, b):
            assert (ca[0], ca[2], ca[3]) == (cb[0], cb[2], cb[3]), job  # tokens, text, finish reason
            assert "seed" not in job or ca[4] == cb[4], job  # (unseeded: a fresh seed each, greedy anyway)
            if ca[1] is not None:
                assert max(abs(x - y) for x, y in zip(ca[1], cb[1])) < LP_TOL, job


def _wait(cond, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "the requests never all came in"
        time.sleep(0.01)


def test_hooked_transformer_prompts_whose_start_it_reads_as_padding_are_warned_about(eos_pad_models, real_corpus):
    """SAELens's HookedSAETransformer (GPT-2, BOS = EOS = pad): TransformerLens's `generate` takes no
    mask and reads the pads off the tokens, keeping one leading BOS. A prompt starting with two
    end-of-text tokens, or with one and no BOS prepended, continues another text than transformers
    does from the same tokens: `generate` warns naming the prompt and how many tokens go unread;
    a prompt it reads whole (one BOS) gets no warning and transformers' continuation."""
    import warnings

    from helpers.real_models import hooked_sae_transformer
    from transformers import AutoModelForCausalLM

    from steering import GenerationConfig, generate
    from steering.spec import SteeringWarning

    path, _ = eos_pad_models["gpt2"]
    model = hooked_sae_transformer(path)
    hf = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    eos = model.tokenizer.eos_token
    code = real_corpus.test_docs[0][:40]
    for text, prepend_bos, unread in ((eos + eos + code, None, 1), (eos + code, False, 1), (eos + code, None, 0)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            g = generate(model, [text, "x"], GenerationConfig(max_new_tokens=N_NEW, do_sample=False, stop_at_eos=False,
                                                              prepend_bos=prepend_bos))
        said = [str(w.message) for w in caught if issubclass(w.category, SteeringWarning)]
        own = g.tokens[0].tolist()[:g.prompt_len]
        read_whole = g.new_tokens[0].tolist() == hf_greedy(hf, own, N_NEW)
        assert read_whole == (unread == 0), (text[:20], prepend_bos)  # the warning's premise, on this model
        if unread:
            assert len(said) == 1 and said[0].startswith("prompt 1 of 2 starts with") and \
                f"reads {unread} of them as padding" in said[0] and "load_model" in said[0], said
        else:
            assert not said, said


def test_hooked_gpt2_reads_a_leading_bos_whole_under_an_sae_trained_without_bos(eos_pad_models, real_corpus):
    """`compare` with an SAE recorded prepend_bos=False (as SAELens records its SAEs: plain slices of the
    stream) on SAELens's HookedSAETransformer, GPT-2: the empty prompt (which starts from BOS, there
    being no other token) and one that writes <|endoftext|> out continue what transformers continues
    from their tokens, alone and batched, without a warning; steered at token 0, they read as the
    TransformerBridge of the same checkpoint reads them (told by a mask). Told prepend_bos=False,
    TransformerLens hid that BOS as a pad: the empty prompt's row attended to nothing."""
    import warnings

    from helpers.real_models import hooked_sae_transformer
    from transformers import AutoModelForCausalLM

    from steering import GenerationConfig, compare, generate
    from steering.spec import SteeringWarning

    path, bridge = eos_pad_models["gpt2"]
    hooked = hooked_sae_transformer(path)
    hf = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    eos = hooked.tokenizer.eos_token
    code = real_corpus.test_docs[0][:50]
    cfg = GenerationConfig(max_new_tokens=N_NEW, do_sample=False, stop_at_eos=False)
    sae = _sae(hooked)
    sae.cfg.metadata["prepend_bos"] = False
    edits = ["3:add=40@0", "5:add=-30@1"]
    for prompts in ([""], [eos + code], ["", eos + "Café 東京, naïve " + code]):
        with warnings.catch_warnings():
            warnings.simplefilter("error", SteeringWarning)
            got = compare(hooked, sae, edits, prompts, cfg)
            for i, p in enumerate(prompts):
                alone = generate(hooked, [p], cfg, prepend_bos=False)
                own = alone.tokens[0, :alone.prompt_len].tolist()
                assert own[0] == hooked.tokenizer.pad_token_id  # the case at hand: a real token with the pad's id
                assert alone.new_tokens[0].tolist() == hf_greedy(hf, own, N_NEW), (prompts, i)
                assert got.unsteered[i] == alone.texts[0], (prompts, i)
        assert got.steered == compare(bridge, sae, edits, prompts, cfg).steered, prompts
