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

pytestmark = [pytest.mark.usefixtures("one_thread")]

HOOK = "blocks.0.hook_resid_post"
N_NEW = 10
LP_TOL = 1e-4  # see the module docstring
EDITS = [None, ["3:add=20@0,2,-1"], ["5:add=30@prompt", "7:add=-20@generated"], ["9:clamp=25@last"],
         ["11:add=15@1", "6:add=10@all?3>-1"]]  # the last: a conditional edit, where latent 3 fires
FAST_ARCHS = ("phi", "mixtral")  # partial rotary; a mixture of experts
SLOW_ARCHS = ("llama3_1", "phi3", "gemma3", "gemma4", "gpt_oss", "qwen3", "qwen3_moe", "qwen2_moe", "olmoe",
              "granitemoe", "smollm3", "starcoder2", "stablelm", "gptj", "olmo2")


def _arch_params():
    return [*FAST_ARCHS, *(pytest.param(a, marks=pytest.mark.slow) for a in SLOW_ARCHS)]


@pytest.fixture(scope="module")
def arch_path(tmp_path_factory, real_corpus):
    from helpers.real_models import arch_models, build_family_tokenizer

    root = tmp_path_factory.mktemp("batchpad-archs")
    toks = {}

    def path(arch: str):
        family = "gemma" if arch.startswith("gemma") else "llama" if arch.startswith(("llama", "phi")) else "qwen2"
        if family not in toks:
            toks[family] = arch_models(root / family, build_family_tokenizer(family, real_corpus.train_docs, 512))
        return toks[family](arch)

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
            got = out.setdefault(ev.tag, dict(ids=[], lps=[], top=[], finish=None, text=""))
            if ev.token is not None and not (ev.finish_reason == "stop" and ev.token in rows_by_tag[ev.tag].params.stop_token_ids):
                got["ids"].append(ev.token)
                got["lps"].append(ev.logprob)
                got["top"].append(ev.top)
            if ev.finish_reason:
                got["finish"], got["text"] = ev.finish_reason, ev.detail["text"]

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
    assert max(abs(a - b) for a, b in zip(got["lps"], alone["lps"])) < LP_TOL, what
    for t_got, t_alone in zip(got["top"], alone["top"]):  # the alternatives: the same tokens, near log-probs
        assert [i for i, _ in t_got] == [i for i, _ in t_alone], what
        assert max(abs(a - b) for (_, a), (_, b) in zip(t_got, t_alone)) < LP_TOL, what


@pytest.mark.parametrize("arch", _arch_params())
def test_engine_rows_of_every_length_equal_each_row_alone(load, real_corpus, arch):
    """Five rows of 1 token to the context's end, each its own edits (or none), greedy and seeded
    sampled with 3 top alternatives; one row ends early at a stop string, another at a token taken
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
                                      **stops.get(i, {})),
                    _row_steering(model, sae, e), tag=i) for i, (p, e) in enumerate(zip(ids, EDITS))]

    for temperature in (0.0, 1.0):
        free = {}
        for r in rows(temperature):
            free.update(_run(model, sae, [r]))
        # row 1 stops at the text of its 4th token, row 3 at its 3rd token taken for end-of-text
        piece = model.tokenizer.decode(free[1]["ids"][3])
        stops = {1: dict(stop=(piece,)) if piece.strip() else {}, 3: dict(stop_token_ids=(free[3]["ids"][2],))}
        alone = {}
        for r in rows(temperature, stops):
            alone.update(_run(model, sae, [r]))
        assert alone[3]["finish"] == "stop" and len(alone[3]["ids"]) <= 2  # it did end early
        assert len({tuple(a["ids"]) for a in alone.values()}) == len(alone)  # the rows do differ
        for how, got in (("together", _run(model, sae, rows(temperature, stops))),
                         ("joining", _run(model, sae, rows(temperature, stops)[::-1], stagger=3, max_rows=3))):
            for i in alone:
                _same(got[i], alone[i], (arch, temperature, how, i))
        if temperature == 0.0:  # the edits change the text
            plain = _run(model, sae, [Row(ids[2], SamplingParams(max_new_tokens=N_NEW, temperature=0), tag=0)])
            assert plain[0]["ids"] != free[2]["ids"]


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
def eos_pad_models(tmp_path_factory, real_corpus):
    """GPT-2 (BOS = EOS = pad) and Llama-3 (pad = EOS, BOS its own) as saved by transformers, (path, model)
    (untrained, with wide initial weights: what comes next depends on every token)."""
    from helpers.real_models import build_family_tokenizer, save_arch_model
    from saesteer.models import load_model

    root = tmp_path_factory.mktemp("batchpad-eospad")
    out = {}
    for fam, arch in (("gpt2", "gpt2"), ("llama", "llama3_1")):
        path = save_arch_model(root / arch, arch, build_family_tokenizer(fam, real_corpus.train_docs, 512))
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
        want = _hf_greedy(hf, own)
        assert alone.new_tokens[0].tolist() == want, (family, i)
        assert together.tokens[i, P - len(own):].tolist() == own + want, (family, i)
    sae = _sae(model)
    edits = ["3:add=40@0", "5:add=-30@1"]
    with steer(model, {"s": sae}, edits) as s:
        steered = s.generate(texts, cfg)
    for i, t in enumerate(texts):
        n = len(generate(model, [t], cfg, max_new_tokens=1).tokens[0]) - 1
        own = steered.tokens[i, P - n:P].tolist()
        engine = _run(model, sae, [Row(own, SamplingParams(max_new_tokens=N_NEW, temperature=0),
                                       _row_steering(model, sae, edits), tag=0)])
        assert steered.new_tokens[i].tolist() == engine[0]["ids"], (family, i)


def _hf_greedy(hf, ids: list[int]) -> list[int]:
    """transformers' most likely next token N_NEW times, each from a whole forward of the sequence so far."""
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(N_NEW):
            x = torch.cat([x, hf(x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x[0, len(ids):].tolist()
