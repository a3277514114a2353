"""A prompt's result does not depend on who else is in its batch, on tiny checkpoints of real
architectures loaded as users load them (`saesteer.models.load_model`: a TransformerBridge):
GPT-2 (absolute positions), Llama / Qwen2 (rotary), GPT-NeoX (parallel attention), Gemma-2
(sliding window every other layer, soft-capping) and Mistral (a sliding window in every layer);
and Qwen3.5 (a hybrid: gated delta-net layers, whose cache keeps per-row states and no length).
Batching pads prompts of different lengths on the left, with an attention mask and position ids;
padding must not shift a token's position, nor which tokens an edit lands on.

- `steer()` sessions (`saesteer steer`, the Python API, the web playground): several prompts
  generated together give each prompt's tokens alone, and those of the API's engine (an
  independent reading of positions). A sliding-window layer's attention mask hides keys beyond
  the window as well as pads, and past the window covers only the window: positions were read
  from its last query's row (T - S as the offset), so `@prompt` edits missed the prompt's start
  on a prompt longer than the window (alone or batched), and index / `@last` edits failed with an
  IndexError once generation went past the window.
- the mask read for pads: SDPA masks that open a pad's query row (transformers before 4.53, on
  CUDA) read as eager ones, in GPT-2 and Gemma-2; flash and flex attention, which hand blocks no
  4-d mask, are refused by `steer()` in one line.
- `saesteer api` through the real `openai` client: concurrent greedy completions and chat
  completions, steered and not, prompts from 1 token to the context's end, give the tokens of the
  same request sent alone, log-probabilities within 1e-4 of it, and a seeded sampled request the
  same text.
- the context's edge: prompt + max_tokens up to the context is served; one more is refused as
  OpenAI refuses it (400, code context_length_exceeded, "maximum context length is N tokens",
  naming the prompt's and the completion's tokens).
"""

from __future__ import annotations

import threading

import httpx
import pytest
import torch
from helpers.forwards import hf_greedy

pytestmark = [pytest.mark.usefixtures("one_thread")]

HOOK = "blocks.0.hook_resid_post"  # Gemma-2's layer 0 and every Mistral layer attend through a window
N_NEW = 10
EDITS = [["3:add=20@0,2,-1"], ["5:add=30@prompt", "7:add=-20@generated"], ["9:clamp=25@last"], ["11:add=15@1"]]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, real_corpus):
    """Untrained tiny checkpoints (random weights: the tokens still vary with every position)."""
    from helpers.real_models import build_family_tokenizer, save_arch_model, save_real_model

    root = tmp_path_factory.mktemp("batchpad")
    paths = {fam: save_real_model(root / fam, fam, real_corpus, train_steps=0, vocab_size=512)
             for fam in ("gpt2", "qwen2", "neox", "mistral")}
    paths["gemma2"] = save_arch_model(root / "gemma2", "gemma2",
                                      build_family_tokenizer("gemma", real_corpus.train_docs, 512))
    paths["qwen3_5"] = save_arch_model(root / "qwen3_5", "qwen3_5",
                                       build_family_tokenizer("qwen2", real_corpus.train_docs, 512))
    return paths


@pytest.fixture(scope="module")
def models(checkpoints):
    from saesteer.models import load_model

    return {fam: load_model(str(path), device="cpu") for fam, path in checkpoints.items()}


def _sae(model, seed: int = 1, hook: str = HOOK):
    from helpers.steering_fixtures import random_sae

    return random_sae(model, "jumprelu", hook=hook, d_sae=64, seed=seed)


def _prompt_ids(model, text: str, lengths) -> list[list[int]]:
    ids = model.tokenizer(text)["input_ids"]
    return [ids[:n] for n in lengths]


def _engine_alone(model, sae, ids, edits) -> list[int]:
    """The API's engine on one row: positions from the row's own layout, no padding."""
    from steering.engine import BatchEngine, Row
    from steering.sampling import SamplingParams

    engine = BatchEngine(model, {"s": sae})
    engine.add([Row(ids, SamplingParams(max_new_tokens=N_NEW, temperature=0), _row_steering(model, sae, edits))])
    while engine.busy:
        for ev in engine.step():
            if ev.finish_reason:
                return ev.detail["token_ids"]
    raise AssertionError("the row never finished")


@pytest.mark.parametrize("family, hook", [(f, HOOK) for f in ("gpt2", "qwen2", "neox", "gemma2", "mistral")]
                         + [("qwen3_5", "blocks.1.hook_resid_post"), ("qwen3_5", "blocks.3.hook_resid_post")])
def test_steered_prompts_batched_equal_alone_and_the_engine(models, real_corpus, family, hook):
    """Prompts of 1 token to near the context (longer than the window: 16 tokens in Gemma-2, 64 in
    Mistral), steered (at a window layer there) with edits at indices, the prompt, the generated
    tokens and the last prompt token: each prompt's row of the session's batch equals the API's
    engine on that prompt alone (one row, no padding, its own reading of positions), and so does
    the session given that prompt alone (the 70-token one, padded in the batch). Qwen3.5 is steered
    at delta-net layers past the first, whose cache keeps no length (HF's get_seq_length(layer)
    raised a ValueError: every steer() at such a layer failed), before and after its attention
    layer (which this forward has already extended there)."""
    from steering import GenerationConfig, generate, steer
    from steering.generation import prompt_lengths

    model = models[family]
    sae = _sae(model, hook=hook)
    n_ctx = model.cfg.n_ctx
    ids = _prompt_ids(model, real_corpus.test_docs[0], [1, 4, 19, 70, n_ctx - N_NEW - 2])
    texts = [model.tokenizer.decode(i, skip_special_tokens=True) for i in ids]
    cfg = GenerationConfig(max_new_tokens=N_NEW, do_sample=False, stop_at_eos=False)
    lengths = prompt_lengths(model, texts, None)  # each row's own tokens, as steer reads its text
    for edits in EDITS:
        with steer(model, {"s": sae}, edits) as s:
            together = s.generate(texts, cfg)
            alone = s.generate([texts[3]], cfg)
        P = together.prompt_len
        for i, n in enumerate(lengths):
            engine = _engine_alone(model, sae, together.tokens[i, P - n:P].tolist(), edits)
            assert together.new_tokens[i].tolist() == engine, (edits, i)
        assert alone.tokens[0].tolist() == together.tokens[3, P - lengths[3]:].tolist()
    plain = generate(model, texts, cfg).new_tokens
    with steer(model, {"s": sae}, EDITS[1]) as s:  # the edits change the text
        assert not torch.equal(s.generate(texts, cfg).new_tokens, plain)



@pytest.mark.parametrize("family", ["gpt2", "gemma2"])
def test_pads_are_read_from_sdpa_masks_that_open_a_pads_row(models, real_corpus, monkeypatch, family):
    """SDPA attention as transformers before 4.53 builds its masks on CUDA: a pad's query row, which
    would be fully masked (NaN in the memory-efficient kernel), attends to every key instead
    (`AttentionMaskConverter._unmask_unattended`). A steered batch still equals each prompt alone:
    a pad's row attends to itself there too, so the diagonal alone read pads as real tokens (in
    GPT-2 as well, whose pads the last query's row had told)."""
    import transformers.masking_utils as mu

    from steering import GenerationConfig, steer

    def opened(*args, **kwargs):  # what `_unmask_unattended` (deprecated in transformers 5) did, as a float mask
        m = mu.sdpa_mask(*args, **kwargs)
        return None if m is None else torch.where(m | ~m.any(-1, keepdim=True), 0.0, torch.finfo(torch.float32).min)

    model = models[family]
    monkeypatch.setattr(model.original_model.config, "_attn_implementation", "sdpa")
    monkeypatch.setitem(mu.ALL_MASK_ATTENTION_FUNCTIONS._global_mapping, "sdpa", opened)
    ids = _prompt_ids(model, real_corpus.test_docs[0], [1, 4, 19, 70])
    texts = [model.tokenizer.decode(i, skip_special_tokens=True) for i in ids]
    cfg = GenerationConfig(max_new_tokens=N_NEW, do_sample=False, stop_at_eos=False)
    with steer(model, {"s": _sae(model)}, ["3:add=20@0,2,-1", "5:add=20@0,1,2,3"]) as s:
        together = s.generate(texts, cfg)
        for i, t in enumerate(texts):
            alone = s.generate([t], cfg)
            assert alone.tokens[0].tolist() == together.tokens[i, together.prompt_len - alone.prompt_len:].tolist(), i


@pytest.mark.parametrize("impl", ["flash_attention_2", "flex_attention"])
def test_steering_refuses_attention_that_hands_blocks_no_4d_mask(models, monkeypatch, impl):
    """Flash and flex attention give an HF block a [B, T] mask or a BlockMask, from which pads cannot
    be read as steering reads them: steer() refuses in one line naming the implementation and how to
    load the model (load_model picks eager)."""
    from steering import steer
    from steering.spec import SteeringError

    model = models["qwen2"]
    assert model.original_model.config._attn_implementation == "eager"  # as load_model loads it
    monkeypatch.setattr(model.original_model.config, "_attn_implementation", impl)
    with pytest.raises(SteeringError) as e:
        with steer(model, {"s": _sae(model)}, ["3:add=20@prompt"]):
            pass
    assert impl in str(e.value) and "attn_implementation='eager'" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "neox", "gemma2", "mistral", "qwen3_5"])
def test_engine_rows_of_every_length_in_one_batch_or_joining_equal_each_row_alone(models, real_corpus, family):
    """The API's engine: rows of 1 token to the context's end, each with its own edits (indices,
    prompt, generated, last), greedy and seeded sampled, in one left-padded prefill or joining a
    running batch (its cache padded on the left), leaving it at different steps: each row's tokens
    are its tokens alone, and its log-probabilities within 1e-4. (A row leaving a batch of Gemma-2
    or Mistral, whose window layers' caches keep only their last columns, failed the whole batch:
    CacheMergeUnsupported, a 500 for every request in it; of Qwen3.5, a hybrid whose delta-net
    layer's cache keeps per-row states and no keys: an AttributeError, the same 500.)"""
    from steering.engine import BatchEngine, Row
    from steering.sampling import SamplingParams

    model = models[family]
    sae = _sae(model)
    ids = _prompt_ids(model, real_corpus.test_docs[1], [1, 3, 17, 60, model.cfg.n_ctx - N_NEW])
    edits = [None, *EDITS]

    def rows(temperature):
        return [Row(p, SamplingParams(max_new_tokens=N_NEW - 2 * i, temperature=temperature, seed=40 + i, logprobs=1),
                    _row_steering(model, sae, e), tag=i) for i, (p, e) in enumerate(zip(ids, edits))]

    def run(rows_, stagger=0, max_rows=64):
        engine, out = BatchEngine(model, {"s": sae}, max_rows=max_rows), {}
        for r in rows_:
            engine.add([r])
            for _ in range(stagger):
                _events(engine.step(), out)
        while engine.busy:
            _events(engine.step(), out)
        return out

    for temperature in (0.0, 1.0):
        alone = {}
        for r in rows(temperature):
            alone.update(run([r]))
        for got in (run(rows(temperature)), run(rows(temperature)[::-1], stagger=3, max_rows=3)):
            for i in alone:
                assert got[i][0] == alone[i][0], (family, temperature, i)
                assert max(abs(a - b) for a, b in zip(got[i][1], alone[i][1])) < 1e-4



@pytest.mark.parametrize("family", ["qwen2", "qwen3_5"])
def test_a_long_row_that_leaves_takes_its_padding_columns_with_it(models, real_corpus, family):
    """A 90-token row and a 3-token row prefill together (the short one padded to 90 columns); once the
    long row has finished, the cache keeps only the short row's columns where every layer keeps all
    of them (Qwen2), as before sliding-window and hybrid caches were let shed rows; in a hybrid
    (Qwen3.5), whose delta-net layer keeps no columns, the padding stays, hidden by the mask."""
    from steering.engine import BatchEngine, Row
    from steering.sampling import SamplingParams

    model = models[family]
    long, short = _prompt_ids(model, real_corpus.test_docs[1], [90, 3])
    engine, out = BatchEngine(model, {}), {}
    engine.add([Row(long, SamplingParams(max_new_tokens=1, temperature=0), tag=0),
                Row(short, SamplingParams(max_new_tokens=6, temperature=0), tag=1)])
    while 0 not in out or len(engine.running) > 1:
        _events(engine.step(), out)
    (row,) = engine.running
    kept = engine.runner.length(engine.cache)
    assert kept == (len(short) + row.fed if family == "qwen2" else 90 + row.fed), kept


def _events(events, out: dict) -> None:
    """(token ids, log-probabilities) of each finished row, by tag."""
    for ev in events:
        ids, lps = out.setdefault(ev.tag, ([], []))
        if ev.token is not None:
            ids.append(ev.token)
            lps.append(ev.logprob)


def _row_steering(model, sae, edits):
    from steering.resolve import resolve_edits
    from steering.rowedits import RowEdit, RowSteering

    if not edits:
        return None
    rs = resolve_edits(model, {"s": sae}, edits, chat_positions=True)
    return RowSteering([RowEdit("s", r.latent, r.op, r.value, r.positions, r.trigger, r.describe()) for r in rs], [])


# -- saesteer api through the openai client --------------------------------------------------------

API_NEW = 8
# the served SAE's edits, in multiples of the latents' typical max activations (the store's)
API_EDITS = [["3:add=15x@0,2,-1"], ["5:add=15x@prompt", "7:add=-15x@generated", "6:add=10x@all?3>-1"],
             ["9:clamp=15x@last"], ["11:add=15x@1"]]  # a conditional edit (everywhere): where it fired is reported


@pytest.fixture(scope="module")
def api(tmp_path_factory, models):
    """`saesteer api`'s app over GPT-2 (absolute positions) and Gemma-2 (windows, soft-capping, a
    chat template), served by uvicorn; (openai client, app)."""
    pytest.importorskip("openai")
    from helpers.api_server import openai_client, serve_entries
    from helpers.web_app import make_entry
    from helpers.web_store import build_web_store
    from saesteer.web import Limits

    work = tmp_path_factory.mktemp("batchpad-api")
    limits = Limits(max_new_tokens=64)
    entries = [make_entry(build_web_store(work / fam, model=models[fam], name=fam), fam, limits=limits)
               for fam in ("gpt2", "gemma2")]
    srv, app = serve_entries(entries, limits=limits)
    try:
        yield openai_client(srv), app
    finally:
        srv.stop()


def _ask(client, job: dict):
    """(token ids, log-probabilities or None, text, where conditional edits fired) of a request's first choice."""
    kind, body = job["kind"], dict(job["body"])
    if kind == "chat":
        r = client.chat.completions.create(**body)
        c = r.choices[0]
        lps = [t.logprob for t in c.logprobs.content] if c.logprobs else None
        return c.model_extra["steering"]["token_ids"], lps, c.message.content, c.model_extra["steering"].get("fired")
    r = client.completions.create(**body)
    c = r.choices[0]
    return (c.model_extra["steering"]["token_ids"], (c.logprobs.token_logprobs if c.logprobs else None), c.text,
            c.model_extra["steering"].get("fired"))


def _jobs(model, sid: str, text: str, chat: bool) -> list[dict]:
    """Completions of token prompts of 1 token to the context's end (greedy, steered or not, at
    indices / prompt / generated / last; with logprobs), a seeded sampled one, and chats."""
    n_ctx = model.cfg.n_ctx
    ids = _prompt_ids(model, text, [1, 2, 9, 33, n_ctx - API_NEW])
    edits = [[], *API_EDITS]
    jobs = []
    for i, (p, e) in enumerate(zip(ids, edits)):
        jobs.append(dict(kind="completion", body=dict(
            model=sid, prompt=p, max_tokens=API_NEW - i, temperature=0, logprobs=2,  # rows leave one by one
            extra_body={"ignore_eos": True, "steering": {"edits": e}})))
    jobs.append(dict(kind="completion", body=dict(model=sid, prompt=ids[2], max_tokens=API_NEW, temperature=1.0,
                                                  seed=11, extra_body={"ignore_eos": True})))
    if chat:
        for words, e in ((text[:12], ["5:add=30@role:user"]), (text[:100], []), ("Écris 東京", ["9:clamp=25@generated"])):
            jobs.append(dict(kind="chat", body=dict(
                model=sid, messages=[{"role": "user", "content": words}], max_tokens=API_NEW + 4, temperature=0,
                logprobs=True, extra_body={"ignore_eos": True, "steering": {"edits": e}})))
    return jobs


@pytest.mark.parametrize("sid", ["gpt2", "gemma2"])
def test_concurrent_requests_of_every_length_give_what_each_gives_alone(api, models, real_corpus, sid):
    """Requests sent together from several clients (completions and chats, steered and not, greedy
    and seeded sampled, prompts of 1 token to the context's end) give the tokens they give sent one
    at a time, log-probabilities within 1e-4; and they did share forward passes: the model is held
    while they come in, so they join in one step, prefilled in groups of close lengths (GPT-2; a
    windowed model's caches do not merge: one left-padded prefill)."""
    client, app = api
    jobs = _jobs(models[sid], sid, real_corpus.test_docs[2], chat=sid == "gemma2")
    alone = [_ask(client, job) for job in jobs]
    sched = next(s for s in app.state.openai.schedulers if s.name == sid)
    sched.engine.max_rows_seen = 0
    padding, positions = sched.engine.prefill_padding, sched.engine.prefill_positions
    together: list = [None] * len(jobs)

    def run(i):
        together[i] = _ask(client, jobs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    with sched.engine.lock:  # hold this model (each has its own): every request gets in before the first prefill
        for t in threads:
            t.start()
        _wait(lambda: sched.in_flight == len(jobs))
    for t in threads:
        t.join(120)
    # the worker may have taken a request or two in before the lock held it; a window model's batch
    # takes no rows while it runs (its cache is not merged), so those come in the next batch
    assert sched.engine.max_rows_seen >= len(jobs) // 2
    if sid == "gpt2":  # prefilled in groups of close lengths (steering.lengthgroups), not all padded to the longest
        assert (sched.engine.prefill_padding - padding) / (sched.engine.prefill_positions - positions) < 0.25
    for job, a, b in zip(jobs, alone, together):
        assert b[0] == a[0] and b[2] == a[2] and b[3] == a[3], job  # tokens, text, where edits fired
        if a[1] is not None:
            assert max(abs(x - y) for x, y in zip(a[1], b[1])) < 1e-4, job
    assert len({tuple(a[0]) for a in alone}) > len(jobs) // 2  # the requests do differ
    fired = next(a[3] for a in alone if a[3])
    assert 0 < len(next(iter(fired.values()))) < models[sid].cfg.n_ctx  # the conditional edit fired here and there


def _wait(cond, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "the requests never all came in"
        time.sleep(0.01)


# -- the context's edge ----------------------------------------------------------------------------


def test_prompt_and_max_tokens_up_to_the_context_are_served_and_one_more_is_refused_as_openai_does(api, models,
                                                                                                  real_corpus):
    """GPT-2's context is 128 positions (n_positions). A prompt of 120 tokens with max_tokens 8 fills
    it exactly and gets its 8 tokens; max_tokens 9 is refused with 400 and code
    context_length_exceeded, in OpenAI's words ("This model's maximum context length is 128 tokens.
    However, you requested 129 tokens (120 in the prompt, 9 in the completion"), as clients such as
    LiteLLM recognise it, then the most that fits; without max_tokens, OpenAI's default of 16 counts
    and the message says so; a chat counts its template's tokens (as usage does), names
    max_completion_tokens when sent, and asks n choices no more room than one; a prompt that fills
    the context alone is refused naming its length. `steer`'s generation (and the Python API's) refuses in one line naming both."""
    import openai

    from steering import GenerationConfig, generate
    from steering.spec import SteeringError

    client, _ = api
    model = models["gpt2"]
    n_ctx = model.cfg.n_ctx
    ids = model.tokenizer(real_corpus.test_docs[0])["input_ids"]
    r = client.completions.create(model="gpt2", prompt=ids[:n_ctx - 8], max_tokens=8, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 8 and r.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="gpt2", prompt=ids[:n_ctx - 8], max_tokens=9)
    body = e.value.body
    assert (body["code"], body["param"]) == ("context_length_exceeded", "max_tokens")
    assert body["message"].startswith(f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                                      f"{n_ctx + 1} tokens ({n_ctx - 8} in the prompt, 9 in the completion). Please "
                                      f"reduce the length of the prompt or completion")
    assert "ask for at most 8 tokens (max_tokens)" in body["message"]
    with pytest.raises(openai.BadRequestError) as e:  # max_tokens not sent: OpenAI's default for completions, 16
        client.completions.create(model="gpt2", prompt=ids[:n_ctx - 8], n=2)
    assert f"{n_ctx + 8} tokens ({n_ctx - 8} in the prompt, 16 in the completion)." in e.value.body["message"]
    assert "ask for at most 8 tokens (max_tokens, 16 when not given)" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="gpt2", prompt=ids[:n_ctx], max_tokens=1)
    assert e.value.body["param"] == "prompt" and f"maximum context length is {n_ctx} tokens" in e.value.body["message"]
    assert f"the prompt is {n_ctx} tokens" in e.value.body["message"]
    msgs = [{"role": "user", "content": real_corpus.test_docs[0][:150]}]
    n_chat = client.chat.completions.create(model="gemma2", messages=msgs, max_tokens=1).usage.prompt_tokens
    assert n_chat > len(models["gemma2"].tokenizer(msgs[0]["content"])["input_ids"])  # the template's tokens count
    with pytest.raises(openai.BadRequestError) as e:  # each of n choices is the prompt and its completion
        client.chat.completions.create(model="gemma2", messages=msgs, max_completion_tokens=64, n=3)
    assert e.value.body["param"] == "max_completion_tokens"
    assert f"requested {n_chat + 64} tokens ({n_chat} in the messages, 64 in the completion). Please reduce the " \
           f"length of the messages or completion: ask for at most {models['gemma2'].cfg.n_ctx - n_chat} tokens (max_completion_tokens)" \
           in e.value.body["message"]
    text = model.tokenizer.decode(ids[:n_ctx - 8])
    cfg = GenerationConfig(max_new_tokens=8, do_sample=False, stop_at_eos=False, prepend_bos=False)
    assert generate(model, [text, "a"], cfg).new_tokens.shape == (2, 8)
    with pytest.raises(SteeringError) as e:
        generate(model, [text, "a"], cfg, max_new_tokens=9)
    assert str(e.value).startswith("prompt 1 of 2 (")  # which prompt is too long
    assert f": {n_ctx - 8} tokens) + max_new_tokens (9)" in str(e.value) and f"context of {n_ctx}" in str(e.value)
    assert "\n" not in str(e.value)
    # the web playground: the same refusal, a 422 in one line
    play = str(client.base_url).removesuffix("/v1/")
    body = {"prompt": text, "max_new_tokens": 9, "edits": [{"latent": 1, "op": "add", "value": 1}]}
    r = httpx.post(f"{play}/api/stores/gpt2/steer", json=body, timeout=60)
    assert r.status_code == 422 and "max_new_tokens (9)" in r.json()["detail"], r.text
    assert f"context of {n_ctx}" in r.json()["detail"] and "\n" not in r.json()["detail"]


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "neox", "gemma2", "mistral"])
def test_unsteered_batches_equal_transformers_own_generate_of_each_prompt(models, checkpoints, real_corpus, family):
    """The reference that knows nothing of saesteer: the transformers model's greedy continuation of
    each prompt alone (no padding, no cache). The API's engine and `generate` (steer's) batch the prompts, left
    padded, and give its tokens."""
    from transformers import AutoModelForCausalLM

    from steering import GenerationConfig, generate
    from steering.engine import BatchEngine, Row
    from steering.generation import prompt_lengths
    from steering.sampling import SamplingParams

    model = models[family]
    hf = AutoModelForCausalLM.from_pretrained(str(checkpoints[family])).eval()
    ids = _prompt_ids(model, real_corpus.test_docs[3], [1, 6, 25, model.cfg.n_ctx - N_NEW])
    want = [hf_greedy(hf, p, N_NEW) for p in ids]
    engine, out = BatchEngine(model, {}), {}
    engine.add([Row(p, SamplingParams(max_new_tokens=N_NEW, temperature=0), tag=i) for i, p in enumerate(ids)])
    while engine.busy:
        _events(engine.step(), out)
    assert [out[i][0] for i in range(len(ids))] == want
    texts = [model.tokenizer.decode(p, skip_special_tokens=True) for p in ids]
    g = generate(model, texts, GenerationConfig(max_new_tokens=N_NEW, do_sample=False, stop_at_eos=False))
    for i, n in enumerate(prompt_lengths(model, texts, None)):  # each row's own tokens, as steer read its text
        own = g.tokens[i, g.prompt_len - n:g.prompt_len].tolist()
        assert g.new_tokens[i].tolist() == hf_greedy(hf, own, N_NEW), (family, i)

