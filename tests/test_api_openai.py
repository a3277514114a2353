"""The OpenAI-compatible steering API, spoken to by the real `openai` client over HTTP.

The app runs in uvicorn on a free loopback port over a small real feature store whose model's
tokenizer has a chat template (helpers.tiny_model.make_chat_tokenizer: the word-level toy
tokenizers have none). Results are checked against the model itself: TransformerLens's own
generate, `steering.steer` (the eager path), and the SAE's encoder over the generated tokens.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import torch

from steering.generation import continuation_text

openai = pytest.importorskip("openai")

from helpers.api_server import build_chat_store, openai_client, serve_chat, serve_entries  # noqa: E402

HOOK = "blocks.0.hook_resid_post"
MSGS = [{"role": "system", "content": "the ship"}, {"role": "user", "content": "the sea and the whale"}]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return build_chat_store(tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def server(ws):
    srv, app = serve_chat(ws)
    yield srv, app
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    srv, _ = server
    return openai_client(srv, api_key="loopback-needs-no-key")


def _firing_latent(ws, ids: list[int], lo: float = 0.2, hi: float = 0.7) -> int:
    """A latent that fires on some but not all of these tokens."""
    acts = _latents(ws, ids)
    rate = (acts > 0).float().mean(0)
    ok = ((rate >= lo) & (rate <= hi)).nonzero().flatten().tolist()
    assert ok, "no latent fires on a middling share of the tokens"
    return int(ok[0])


@torch.no_grad()
def _latents(ws, ids: list[int]) -> torch.Tensor:
    """The SAE's latents [T, F] at every position of the unsteered model reading `ids`."""
    _, cache = ws.model.run_with_cache(torch.tensor([ids]), names_filter=HOOK)
    return ws.sae.encode(cache[HOOK][0])


def _ext(choice) -> dict:
    return choice.model_extra["steering"]


# -- models, plain generation ---------------------------------------------------------------------


def test_models_list_the_store_with_its_sae(client, ws):
    models = client.models.list().data
    assert [m.id for m in models] == ["chat"]
    card = models[0].model_extra["saesteer"]
    assert card["d_sae"] == ws.d_sae and card["sae_hook"] == HOOK and card["chat_template"] is True
    assert client.models.retrieve("chat").id == "chat"
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.models.retrieve("gpt-4")


def test_unsteered_greedy_completion_is_the_models_own(client, ws):
    prompt = "the sea and the ship"
    r = client.completions.create(model="chat", prompt=prompt, max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
    toks = ws.model.to_tokens(prompt)
    ref = ws.model.generate(toks, max_new_tokens=10, do_sample=False, stop_at_eos=False, verbose=False,
                            return_type="tokens")[0, toks.shape[1]:].tolist()
    got = _ext(r.choices[0])["token_ids"]
    assert got == ref
    # the text reads on from the prompt, with the space before its first word (as `steer` prints it)
    assert r.choices[0].text == continuation_text(ws.model.tokenizer, toks[0].tolist(), ref)
    assert r.choices[0].text.startswith(" ")
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == toks.shape[1] and r.usage.completion_tokens == 10
    s = client.completions.create(model="chat", prompt=prompt, max_tokens=10, temperature=0, stream=True,
                                  stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(s)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].usage.completion_tokens == 10  # the usage chunk comes last
    kw = dict(model="chat", prompt=prompt, max_tokens=10, temperature=0, echo=True, extra_body={"ignore_eos": True})
    echoed = client.completions.create(**kw)
    assert echoed.choices[0].text == prompt + r.choices[0].text
    assert "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw)) == echoed.choices[0].text


# -- steering ---------------------------------------------------------------------------------------


def test_steered_stream_equals_the_non_streamed_result(client, ws):
    prompt = "a tree"
    ids = ws.model.to_tokens(prompt)[0].tolist()
    target = _firing_latent(ws, ids + ws.model.to_tokens("the sea and the ship sees the whale")[0].tolist())
    steering = {"edits": [{"latent": target, "op": "add", "value": 12.0, "positions": "all"}]}
    kw = dict(model="chat", prompt=prompt, max_tokens=16, temperature=1.0, seed=11, extra_body={"steering": steering})
    whole = client.completions.create(**kw)
    stream = client.completions.create(stream=True, **kw)
    pieces, last = [], None
    for ch in stream:
        pieces.append(ch.choices[0].text)
        last = ch.choices[0]
    assert "".join(pieces) == whole.choices[0].text
    assert _ext(last)["token_ids"] == _ext(whole.choices[0])["token_ids"]
    assert last.finish_reason == whole.choices[0].finish_reason
    plain = client.completions.create(model="chat", prompt=prompt, max_tokens=16, temperature=1.0, seed=11)
    assert _ext(plain.choices[0])["token_ids"] != _ext(whole.choices[0])["token_ids"]  # the edit changed the text
    assert whole.model_extra["steering"]["edits"] == [f"{target}:add=12"]


def test_steered_greedy_equals_the_eager_steering_path(client, ws):
    from steering import GenerationConfig, steer

    prompt = "the whale sees the harbor"
    edits = ["5:clamp=6@generated", "9:scale=3@0,1,-1", "17:ablate@prompt", "20:add=4@last"]
    r = client.completions.create(model="chat", prompt=prompt, max_tokens=12, temperature=0,
                                  extra_body={"steering": {"edits": edits}, "ignore_eos": True})
    with steer(ws.model, ws.sae, edits) as s:
        ref = s.generate([prompt], GenerationConfig(max_new_tokens=12, do_sample=False, stop_at_eos=False))
    assert _ext(r.choices[0])["token_ids"] == ref.new_tokens[0].tolist()


def test_n_choices_use_consecutive_seeds(client):
    kw = dict(model="chat", prompt="the sea", max_tokens=8, temperature=1.0)
    many = client.completions.create(n=3, seed=5, **kw)
    assert [c.index for c in many.choices] == [0, 1, 2]
    for i, c in enumerate(many.choices):
        one = client.completions.create(seed=5 + i, **kw)
        assert _ext(c)["seed"] == 5 + i and _ext(c)["token_ids"] == _ext(one.choices[0])["token_ids"]
    assert len({tuple(_ext(c)["token_ids"]) for c in many.choices}) > 1


def test_chat_template_is_applied(client, ws):
    tok = ws.model.tokenizer
    ids = tok.apply_chat_template(MSGS, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[-1] == "<|assistant|>"
    chat = client.chat.completions.create(model="chat", messages=MSGS, max_tokens=10, temperature=0.9, seed=3)
    plain = client.completions.create(model="chat", prompt=ids, max_tokens=10, temperature=0.9, seed=3,
                                      extra_body={"ignore_eos": True})
    got = _ext(chat.choices[0])["token_ids"]
    assert chat.usage.prompt_tokens == len(ids)
    assert got == _ext(plain.choices[0])["token_ids"][: len(got)]  # the same prompt; the chat reply may end at <|end|>
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content == tok.decode(
        got, skip_special_tokens=True)
    stream = client.chat.completions.create(model="chat", messages=MSGS, max_tokens=10, temperature=0.9, seed=3,
                                            stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == chat.choices[0].message.content


def test_role_scoped_edit_covers_exactly_that_roles_tokens(client, ws):
    tok = ws.model.tokenizer
    ids = tok.apply_chat_template(MSGS, add_generation_prompt=True, tokenize=True)["input_ids"]
    names = tok.convert_ids_to_tokens(ids)
    user = [i for i in range(names.index("<|user|>"), len(names) - 1)]  # the user's message, markers included
    edit = {"latent": 3, "op": "add", "value": 25.0}
    kw = dict(max_tokens=8, temperature=0)
    by_role = client.chat.completions.create(model="chat", messages=MSGS, extra_body={
        "steering": {"edits": [dict(edit, positions="role:user")]}, "ignore_eos": True}, **kw)
    by_index = client.completions.create(model="chat", prompt=ids, extra_body={
        "steering": {"edits": [dict(edit, positions=user)]}, "ignore_eos": True}, **kw)
    by_turn = client.chat.completions.create(model="chat", messages=MSGS, extra_body={
        "steering": {"edits": [dict(edit, positions="turn:-1")]}, "ignore_eos": True}, **kw)
    unsteered = client.chat.completions.create(model="chat", messages=MSGS, extra_body={"ignore_eos": True}, **kw)
    a, b, c = (_ext(x.choices[0])["token_ids"] for x in (by_role, by_index, by_turn))
    assert a == b == c
    assert a != _ext(unsteered.choices[0])["token_ids"]
    with pytest.raises(openai.BadRequestError, match="role"):  # a plain prompt has no roles
        client.completions.create(model="chat", prompt="the sea", max_tokens=2,
                                  extra_body={"steering": {"edits": [dict(edit, positions="role:user")]}})


def test_conditional_edit_fires_only_where_its_trigger_fires(client, ws):
    prompt = "the sea and the ship sees the whale at the shore"
    ids = ws.model.to_tokens(prompt)[0].tolist()
    trigger = _firing_latent(ws, ids)
    edit = {"latent": 7, "op": "clamp", "value": 15.0, "when": {"latent": trigger, "above": 0.0}}
    r = client.completions.create(model="chat", prompt=prompt, max_tokens=10, temperature=0,
                                  extra_body={"steering": {"edits": [edit]}, "ignore_eos": True})
    ext = _ext(r.choices[0])
    (label, fired), = ext["fired"].items()
    assert label == f"7:clamp=15?{trigger}>0"
    # the trigger reads the activation before any edit at its hook, which edits at that hook do not
    # change: the unsteered model over the final tokens shows where it fired (the last generated
    # token is never fed back, so it cannot fire)
    seq = ids + ext["token_ids"]
    fires = (_latents(ws, seq)[:, trigger] > 0).nonzero().flatten().tolist()
    assert fired == [p for p in fires if p < len(seq) - 1]
    assert 0 < len(fired) < len(seq) - 1
    # and the edit applied there and nowhere else: the same edit at exactly those token indices
    same = client.completions.create(model="chat", prompt=prompt, max_tokens=10, temperature=0, extra_body={
        "steering": {"edits": [{"latent": 7, "op": "clamp", "value": 15.0, "positions": fired}]}, "ignore_eos": True})
    assert _ext(same.choices[0])["token_ids"] == ext["token_ids"]
    everywhere = client.completions.create(model="chat", prompt=prompt, max_tokens=10, temperature=0, extra_body={
        "steering": {"edits": [{"latent": 7, "op": "clamp", "value": 15.0}]}, "ignore_eos": True})
    assert _ext(everywhere.choices[0])["token_ids"] != ext["token_ids"]


def test_feature_the_older_name_of_latent_is_accepted_in_edits_and_triggers(client, ws):
    """Requests written before the key was renamed keep working: "feature" reads as "latent"."""
    prompt = "the sea and the ship sees the whale at the shore"
    trigger = _firing_latent(ws, ws.model.to_tokens(prompt)[0].tolist())
    kw = dict(model="chat", prompt=prompt, max_tokens=8, temperature=0)
    new = {"latent": 7, "op": "clamp", "value": 15.0, "when": {"latent": trigger, "above": 0.0}}
    old = {"feature": 7, "op": "clamp", "value": 15.0, "when": {"feature": trigger, "above": 0.0}}
    a, b = (client.completions.create(**kw, extra_body={"steering": {"edits": [e], "stop_when": [dict(e["when"], above=1e5)]},
                                                          "ignore_eos": True}) for e in (new, old))
    assert _ext(a.choices[0])["token_ids"] == _ext(b.choices[0])["token_ids"] and _ext(a.choices[0])["fired"]
    with pytest.raises(openai.BadRequestError, match="feature"):  # one edit naming its latent twice
        client.completions.create(**kw, extra_body={"steering": {"edits": [dict(new, feature=7)]}})


def test_stop_when_a_latent_fires_on_a_generated_token(client, ws):
    prompt = "the sea"
    ids = ws.model.to_tokens(prompt)[0].tolist()
    free = client.completions.create(model="chat", prompt=prompt, max_tokens=24, temperature=0,
                                     extra_body={"ignore_eos": True})
    gen = _ext(free.choices[0])["token_ids"]
    acts = _latents(ws, ids + gen)[len(ids):]
    latent = next(f for f in range(ws.d_sae) if 0 < int((acts[:-1, f] > 0).sum()) and not bool(acts[0, f] > 0))
    first = int((acts[:, latent] > 0).nonzero()[0])
    r = client.completions.create(model="chat", prompt=prompt, max_tokens=24, temperature=0,
                                  extra_body={"steering": {"stop_when": [f"{latent}>0"]}, "ignore_eos": True})
    ext = _ext(r.choices[0])
    assert r.choices[0].finish_reason == "stop" and f"{latent}>0" in ext["stopped_by"]
    assert ext["token_ids"] == gen[: first + 1]  # the token it fired on is the last one


def test_stop_strings_and_logprobs(client, ws):
    free = client.completions.create(model="chat", prompt="the sea", max_tokens=12, temperature=0,
                                     extra_body={"ignore_eos": True})
    words = free.choices[0].text.split()
    stop_word = words[3]
    cut = free.choices[0].text[: free.choices[0].text.index(stop_word)]
    r = client.completions.create(model="chat", prompt="the sea", max_tokens=12, temperature=0, stop=[stop_word],
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    s = client.completions.create(model="chat", prompt="the sea", max_tokens=12, temperature=0, stop=stop_word,
                                  stream=True, extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].text for c in s) == cut
    # chat log-probabilities: those of the model's next-token distribution
    chat = client.chat.completions.create(model="chat", messages=MSGS, max_tokens=3, temperature=0, logprobs=True,
                                          top_logprobs=2)
    first = chat.choices[0].logprobs.content[0]
    ids = ws.model.tokenizer.apply_chat_template(MSGS, add_generation_prompt=True, tokenize=True)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(ws.model(torch.tensor([ids]))[0, -1].float(), -1)
    assert first.logprob == pytest.approx(float(logp.max()), abs=1e-4)
    assert len(first.top_logprobs) == 2 and first.top_logprobs[0].logprob == pytest.approx(first.logprob, abs=1e-6)
    comp = client.completions.create(model="chat", prompt="the sea", max_tokens=3, temperature=0, logprobs=2)
    assert len(comp.choices[0].logprobs.tokens) == 3 and len(comp.choices[0].logprobs.top_logprobs[0]) == 2


# -- presets ------------------------------------------------------------------------------------------


def test_presets_apply_by_name_and_are_refused_on_another_sae_or_model(client, ws):
    import saes
    from features import FeatureStore, StoreMismatchError
    from saes.identity import ModelIdentity
    from steering import make_preset
    from steering.store import StoreLink

    edits = ["4:add=2x@generated", "11:clamp=5@prompt?3>0"]
    with FeatureStore.open(ws.path, readonly=False) as store:
        link = StoreLink(store)
        preset = make_preset("seaward", edits, sae=ws.sae, model=ws.model, typical_max=link.typical_max,
                             stops=["30>0.5x"], description="test preset")
        link.save_preset(preset, overwrite=True)
        other = saes.create_sae("matryoshka_batchtopk", ws.sae.d_in, ws.d_sae, k=4,
                                matryoshka_widths=[ws.d_sae // 4, ws.d_sae], generator=torch.Generator().manual_seed(9),
                                metadata={"hook_name": HOOK})
        foreign = make_preset("foreign", ["4:add=1"], sae=other, model=ws.model)
        with pytest.raises(StoreMismatchError, match="another SAE"):
            link.save_preset(foreign)
    assert "seaward" in client.models.retrieve("chat").model_extra["saesteer"]["presets"]
    kw = dict(model="chat", prompt="the whale", max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
    by_name = client.completions.create(**dict(kw, extra_body={"ignore_eos": True, "steering": {"preset": "seaward"}}))
    tmax = preset.typical_max(4)
    explicit = client.completions.create(**dict(kw, extra_body={"ignore_eos": True, "steering": {
        "edits": [f"4:add={2 * tmax!r}@generated", "11:clamp=5@prompt?3>0"],
        "stop_when": [f"30>{0.5 * preset.typical_max(30)!r}"]}}))
    assert _ext(by_name.choices[0])["token_ids"] == _ext(explicit.choices[0])["token_ids"]
    assert by_name.model_extra["steering"]["preset"] == "seaward"
    # a preset made for another SAE, sent whole: refused, naming both SAEs
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**dict(kw, extra_body={"steering": {"preset": foreign.to_json()}}))
    assert foreign.sae_fingerprint[:12] in str(e.value) and preset.sae_fingerprint[:12] in str(e.value)
    # made for another model: refused naming both models and the server's override
    alien = dict(preset.to_json(), model=ModelIdentity("hub", "gpt2", revision="607a30d").to_json())
    with pytest.raises(openai.BadRequestError, match="gpt2.*--allow-model-mismatch"):
        client.completions.create(**dict(kw, extra_body={"steering": {"preset": alien}}))
    with pytest.raises(openai.BadRequestError, match="no preset named 'nope'.*seaward"):
        client.completions.create(**dict(kw, extra_body={"steering": {"preset": "nope"}}))


# -- bounds, errors, security, batching -------------------------------------------------------------


def test_bad_requests_get_a_400_that_says_why(client):
    cases = [
        (dict(prompt="the", max_tokens=49), "at most 48"),
        (dict(prompt="the", max_tokens=2, temperature=0, frobnicate=1), "frobnicate"),
        (dict(prompt="the sea " * 40, max_tokens=20), "context"),
        (dict(prompt="the", max_tokens=2, steering={"edits": ["999:add=1"]}), "out of range"),
        (dict(prompt="the", max_tokens=2, steering={"stop_when": ["999>1"]}),
         r"stop_when 999>1: latent 999 is out of range for SAE '.+' \(d_sae \d+\); valid ids are 0\.\.\d+"),
        (dict(prompt="the", max_tokens=2, steering={"edits": ["4:add=500x"]}), "limit"),
        (dict(prompt="the", max_tokens=2, n=9), "at most 8 generations"),
        (dict(prompt="the", max_tokens=2, suffix="x"), "suffix"),
        (dict(prompt=[99999], max_tokens=2), "vocabulary"),
        (dict(prompt="the", max_tokens=2, stop_when=["4>1"]), 'stop_when: goes inside the steering field'),
        # a latent as text (an index, or a Neuronpedia latent): '²' is a digit to str.isdigit, not to int (a 500)
        (dict(prompt="the", max_tokens=2, steering={"edits": [{"latent": "\u00b2", "op": "add", "value": 1}]}),
         "'\u00b2' is not a latent"),
        (dict(prompt="the", max_tokens=2, steering={"stop_when": [{"latent": "4\u00b2", "above": 1}]}), "is not a latent"),
        (dict(prompt="the", max_tokens=2, steering={"edits": [{"latent": "-1", "op": "add", "value": 1}]}), "out of range"),
    ]
    for body, msg in cases:
        extra = {k: body.pop(k) for k in list(body) if k in ("frobnicate", "steering", "stop_when")}
        with pytest.raises(openai.BadRequestError, match=msg):
            client.completions.create(model="chat", extra_body=extra, **body)
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(model="chat", messages=MSGS, tools=[{"type": "function", "function": {"name": "f"}}])


def test_stream_options_without_stream_is_refused_as_openai_refuses_it(client):
    """OpenAI answers 400 to stream_options on a request that does not stream (LiteLLM met it); it
    was accepted and ignored here. The same body, message and param, on both endpoints."""
    want = {"message": "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "type": "invalid_request_error", "param": "stream_options", "code": None}
    for stream in (None, False):
        extra = {} if stream is None else {"stream": stream}
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="chat", prompt="the", max_tokens=2, stream_options={"include_usage": True},
                                      **extra)
        assert e.value.body == want
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="chat", messages=MSGS, max_tokens=2,
                                           stream_options={"include_usage": False}, **extra)
        assert e.value.body == want
    # null is no stream_options (LangChain sends it so on a request that does not stream)
    r = client.chat.completions.create(model="chat", messages=MSGS, max_tokens=2, extra_body={"stream_options": None})
    assert r.choices[0].message.content is not None


def test_token_is_required_when_configured(ws):
    srv, _ = serve_chat(ws, token="t" * 32)
    try:
        bad = openai_client(srv, api_key="wrong-token-of-some-length")
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model="chat", prompt="the", max_tokens=1)
        good = openai_client(srv, api_key="t" * 32)
        assert good.completions.create(model="chat", prompt="the", max_tokens=1).choices[0].finish_reason
    finally:
        srv.stop()


def test_full_queue_answers_503_with_retry_after_and_a_closed_stream_is_cancelled(ws):
    from saesteer.api.config import BatchConfig

    srv, app = serve_chat(ws, batch=BatchConfig(max_queued=1, max_batch_rows=4))
    sched = app.state.openai.schedulers[0]
    model_lock = app.state.web.queues[0].lock  # generation waits for it at every forward pass
    body = {"model": "chat", "prompt": "the", "max_tokens": 48, "temperature": 0, "ignore_eos": True}
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as h:
            results = []
            with model_lock:  # hold the model: the first request stays in
                t = threading.Thread(target=lambda: results.append(h.post("/v1/completions", json=body)))
                t.start()
                deadline = time.monotonic() + 30
                while sched.in_flight == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
                busy = h.post("/v1/completions", json=body)
                assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
                assert "try again" in busy.json()["error"]["message"]
            t.join(60)
            assert results[0].status_code == 200 and results[0].json()["usage"]["completion_tokens"] == 48
            # a stream the client closes early is cancelled, and its slot frees up
            with h.stream("POST", "/v1/completions", json=dict(body, stream=True)) as first:
                next(first.iter_lines())
                model_lock.acquire()  # pause generation, then go away mid-stream
            model_lock.release()
            deadline = time.monotonic() + 30
            while (sched.in_flight or sched.engine.busy) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert sched.cancelled_count == 1 and sched.in_flight == 0 and not sched.engine.busy
            assert h.post("/v1/completions", json=dict(body, max_tokens=2)).status_code == 200
    finally:
        srv.stop()


def test_concurrent_requests_with_different_edits_share_batches(client, server):
    _, app = server
    engine = app.state.openai.schedulers[0].engine
    engine.max_rows_seen = 0
    jobs = [("the sea", [f"{f}:clamp=9"]) for f in (2, 6, 10)] + [("a tree", []), ("the whale", ["8:add=5@generated"]),
                                                                   ("bread", ["12:scale=4"])]

    def ask(prompt, edits):
        r = client.completions.create(model="chat", prompt=prompt, max_tokens=24, temperature=0,
                                      extra_body={"steering": {"edits": edits}, "ignore_eos": True})
        return _ext(r.choices[0])["token_ids"]

    alone = [ask(p, e) for p, e in jobs]
    together: list = [None] * len(jobs)

    def run(i):
        together[i] = ask(*jobs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
    assert engine.max_rows_seen > 1  # they did share forward passes


def _scripted(tok, prompt_ids: list[int], new_ids: list[int], *, stream: bool, kind: str = "completion",
              stop: tuple[str, ...] = ()) -> tuple[dict, list[dict]]:
    """The API's answer (body, stream chunks) when the model generates exactly `new_ids`: the real
    engine, text assembly and response assembly on a tiny model with this tokenizer, only the sampler
    replaced by the script. End-of-text is not a stop token (ignore_eos)."""
    import warnings
    from unittest import mock

    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from saesteer.api.prepare import Prepared
    from saesteer.api.responses import Assembler
    from steering.engine import BatchEngine, Row
    from steering.sampling import Choice, SamplingParams

    script = iter(new_ids)

    def choose(logits_BV, params, streams, counts_BV=None):
        return [Choice((t := next(script)), -0.5, [(t, -0.5)]) for _ in params]

    # the model is built without the tokenizer (TransformerLens takes only some tokenizers; the
    # engine reads model.tokenizer)
    cfg = HookedTransformerConfig(d_model=16, n_layers=1, n_ctx=len(prompt_ids) + len(new_ids) + 1, n_heads=2,
                                  d_head=8, d_vocab=len(tok), act_fn="gelu_new", device="cpu")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated")
        model = HookedTransformer(cfg).eval()
    model.tokenizer = tok
    params = SamplingParams(max_new_tokens=len(new_ids), temperature=0, logprobs=1, stop=stop)
    row = Row(prompt_ids, params, stream=stream, tag=0, offsets=kind == "completion")
    out = Assembler(Prepared(kind, "m", [row], 1, stream, False, 1), tok)
    engine = BatchEngine(model)
    engine.add([row])
    chunks = []
    with mock.patch("steering.engine.choose", choose):
        while engine.busy:
            for ev in engine.step():
                chunk = out.add(ev)
                if chunk is not None:
                    chunks.append(chunk)
    assert out.error is None
    return out.body(), chunks


def _offset_reference(tok, prompt_ids: list[int], new_ids: list[int], text: str) -> list[int]:
    """Token i starts where the decoding of the prompt and ids[:i] (`continuation_text`, which the
    engine's text is) stops agreeing with the text (never before token i-1)."""
    out, at = [], 0
    for i in range(len(new_ids)):
        before = continuation_text(tok, prompt_ids, new_ids[:i], stop_ids=())
        n = next((k for k, (a, b) in enumerate(zip(before, text)) if a != b), min(len(before), len(text)))
        at = max(at, n)
        out.append(at)
    return out


def _check_offsets(tok, prompt_ids, new_ids, stop=()) -> tuple[str, list[int]]:
    """Streamed and whole completions agree on text, tokens and text_offset, and the offsets are the
    reference's over the returned text. Returns (text, offsets)."""
    body, _ = _scripted(tok, prompt_ids, new_ids, stream=False, stop=stop)
    _, chunks = _scripted(tok, prompt_ids, new_ids, stream=True, stop=stop)
    choice = body["choices"][0]
    text, lp = choice["text"], choice["logprobs"]
    assert "".join(c["choices"][0]["text"] for c in chunks) == text
    streamed = [c["choices"][0]["logprobs"] for c in chunks if c["choices"][0]["logprobs"]]
    assert [t for s in streamed for t in s["tokens"]] == lp["tokens"]
    assert [o for s in streamed for o in s["text_offset"]] == lp["text_offset"]
    n = len(choice["steering"]["token_ids"])
    assert len(lp["text_offset"]) == n
    assert lp["text_offset"] == _offset_reference(tok, prompt_ids, new_ids[:n], text)
    return text, lp["text_offset"]


def _spans(text: str, offsets: list[int]) -> list[str]:
    ends = offsets[1:] + [len(text)]
    return [text[a:b] for a, b in zip(offsets, ends)]


@pytest.mark.parametrize("stop", [(), ("\n\nX",), ("\n\nthe",)])
def test_text_offsets_of_byte_level_bpe_index_the_returned_text(stop):
    """GPT-2 style tokens with CJK and an emoji (characters split over tokens) and a blank line (held
    back by the stream: whitespace, and the start of a stop string). text_offset was the tokens'
    own bytes summed up (the stream's: the emitted text's length, so that held-back tokens shared
    one offset); now each token starts where its text starts in the returned text."""
    from features.tokentext import token_bytes
    from helpers.text_tokenizers import byte_level_bpe

    tok = byte_level_bpe()
    prompt = tok("the sea", add_special_tokens=False)["input_ids"]
    new = tok(" sat 你好 🐳 done\n\nthe mat", add_special_tokens=False)["input_ids"]
    text, offsets = _check_offsets(tok, prompt, new, stop)
    assert text == (" sat 你好 🐳 done" if stop == ("\n\nthe",) else " sat 你好 🐳 done\n\nthe mat")
    ends = offsets[1:] + [len(text)]
    whole = 0
    for t, start, end in zip(new, offsets, ends):
        try:
            own = token_bytes(tok, t).decode("utf-8")
        except UnicodeDecodeError:  # part of a character: the character is in the span of the token completing it
            continue
        if end < len(text) or not stop:  # (a stop string cuts the last ones short)
            assert text[start:end] == own, (t, own)
            whole += 1
    assert 0 < whole < len(new) - 3  # whole tokens checked; some tokens are parts of characters


def test_text_offsets_of_sentencepiece_start_at_the_texts_first_word_and_count_its_byte_tokens():
    """Llama-2 style: after an empty prompt (BOS only) the text starts with the first word, not its
    space (the first offsets were one past each word: [0, 4, ...] for "The cat"); byte-fallback tokens
    of a CJK character start where it starts; a cut-off character is one U+FFFD, as the text writes it
    (UTF-8 as Python reads it, `saes.bytefallback`), on the span of the byte that began it."""
    from helpers.text_tokenizers import sentencepiece_bpe

    tok = sentencepiece_bpe()
    byte = {b: tok.convert_tokens_to_ids(f"<0x{b:02X}>") for b in (0xE4, 0xBD)}
    words = tok("The localization of a boundary 你好", add_special_tokens=False)["input_ids"]
    of, a = tok(" of a", add_special_tokens=False)["input_ids"]
    # "你" cut short (not a character; after a word: a byte run decodes as a whole)
    new = words + [of, byte[0xE4], byte[0xBD], a]
    text, offsets = _check_offsets(tok, [tok.bos_token_id], new)
    assert text == "The localization of a boundary 你好 of\ufffd a"
    spans = _spans(text, offsets)
    assert spans[:3] == ["The", " localization", " of"]
    assert spans[len(words):] == [" of", "\ufffd", "", " a"]
    assert spans[len(words) - 6:len(words)] == ["", "", "你", "", "", "好"]


def test_text_offsets_of_word_level_tokens_count_the_joining_space():
    """The toy tokenizer's decoder puts a space between words; a token's bytes are the bare word
    (offsets were [0, 6, 13] for " sailor sailors diver"); a line break is a word of its own."""
    from features.tokentext import token_labels
    from toyworld.tokenizer import load_tokenizer

    tok = load_tokenizer()
    prompt = tok("the", add_special_tokens=False)["input_ids"]
    new = tok("sailor sailors diver", add_special_tokens=False)["input_ids"]
    text, offsets = _check_offsets(tok, prompt, new)
    assert text == " sailor sailors diver" and offsets == [0, 7, 15]
    # the label (the store's, the logprob `token`) stays the bare word, as docs/features.md says
    assert token_labels(tok, new) == ["sailor", "sailors", "diver"]


def test_a_special_token_generated_mid_text_has_an_empty_span():
    """With ignore_eos an end-of-text token can come mid-text: the text leaves it out (skip special
    tokens) and so does its offset (it was counted: later offsets ran past the text's end)."""
    from helpers.text_tokenizers import byte_level_bpe

    tok = byte_level_bpe()
    prompt = tok("the sea", add_special_tokens=False)["input_ids"]
    first, second = (tok(s, add_special_tokens=False)["input_ids"] for s in (" sat down", " and done"))
    new = first + [tok.eos_token_id] + second
    text, offsets = _check_offsets(tok, prompt, new)
    assert text == " sat down and done"
    k = len(first)
    assert offsets[k] == offsets[k + 1] == len(" sat down") and offsets[-1] < len(text)


def test_logprob_token_and_bytes_of_a_sentencepiece_word_keep_its_space():
    """A SentencePiece word's `token` and `bytes` are its text with its leading space (" The"), as a
    byte-level BPE token's are; they were the word decoded alone ("The", the space lost)."""
    from helpers.text_tokenizers import sentencepiece_bpe

    tok = sentencepiece_bpe()
    text = "The localization of a boundary 你好"
    prompt = tok("the sea", add_special_tokens=False)["input_ids"]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    body, _ = _scripted(tok, prompt, ids, stream=False, kind="chat")
    choice = body["choices"][0]
    chat = choice["logprobs"]["content"]
    assert choice["message"]["content"] == " " + text
    assert bytes(b for e in chat for b in e["bytes"]).decode("utf-8") == choice["message"]["content"]
    assert [e["token"] for e in chat[:3]] == [" The", " localization", " of"]
    assert all(e["token"].encode("utf-8") == bytes(e["bytes"]) for e in chat if "\ufffd" not in e["token"])
    plain = _scripted(tok, prompt, ids, stream=False)[0]["choices"][0]
    assert plain["logprobs"]["tokens"][:3] == [" The", " localization", " of"]
    assert plain["logprobs"]["text_offset"][:4] == [0, 4, 17, 20] and plain["text"].startswith(" The localization of")


def test_logprob_tokens_of_part_of_a_character_are_marked_and_looked_up_once(monkeypatch):
    """The byte tokens of 你好 (SentencePiece byte fallback): each `token` is shown as everywhere else
    (U+FFFD and its escaped bytes, `features.tokentext.token_label`), their `bytes` join to the
    returned text, and each token's bytes are looked up once (they were looked up twice: once for
    `token`, once for `bytes`)."""
    from collections import Counter

    from helpers.text_tokenizers import sentencepiece_bpe

    import features.tokentext as tokentext

    tok = sentencepiece_bpe()
    prompt = tok("the sea", add_special_tokens=False)["input_ids"]
    ids = tok("a boundary 你好", add_special_tokens=False)["input_ids"]
    calls: Counter = Counter()
    real = tokentext.token_bytes

    def counted(tokenizer, token_id, decoded=None):
        calls[token_id] += 1
        return real(tokenizer, token_id, decoded)

    monkeypatch.setattr(tokentext, "token_bytes", counted)
    choice = _scripted(tok, prompt, ids, stream=False, kind="chat")[0]["choices"][0]
    chat = choice["logprobs"]["content"]
    assert set(calls.values()) == {1} and set(calls) == set(ids)
    assert [e["token"] for e in chat[-6:]] == ["\ufffd" + f"\\x{b:02x}" for b in "你好".encode("utf-8")]
    text = choice["message"]["content"]
    assert bytes(b for e in chat for b in e["bytes"]).decode("utf-8") == text == " a boundary 你好"


def test_streamed_completion_offsets_over_http_equal_the_whole_ones(client):
    """Through the server (the rows of a completion with logprobs track offsets): a stop string
    holds text back; the stream sends each token's logprobs once its offset is certain."""
    kw = dict(model="chat", prompt="the sea", max_tokens=12, temperature=0, logprobs=1, extra_body={"ignore_eos": True})
    free = client.completions.create(**kw).choices[0].text
    stop = free.split()[3]
    r = client.completions.create(stop=[stop], **kw).choices[0]
    chunks = list(client.completions.create(stop=[stop], stream=True, **kw))
    got = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs is not None]
    assert "".join(c.choices[0].text for c in chunks) == r.text == free[: free.index(stop)]
    assert [o for lp in got for o in lp.text_offset] == r.logprobs.text_offset
    assert [t for lp in got for t in lp.tokens] == r.logprobs.tokens
    spans = _spans(r.text, r.logprobs.text_offset)
    assert spans[:3] == [" " + t for t in r.logprobs.tokens[:3]]  # a word and the space joining it on


def test_a_generation_that_fails_mid_stream_ends_the_stream_with_an_openai_error(client, server, monkeypatch):
    """The stream has answered 200 already: the failure comes as one last event in OpenAI's error
    shape (type server_error), which the openai client raises with the message."""
    _, app = server
    engine = app.state.openai.schedulers[0].engine
    monkeypatch.setattr(engine, "_decode", lambda events: (_ for _ in ()).throw(RuntimeError("boom")))
    stream = client.completions.create(model="chat", prompt="the", max_tokens=4, stream=True)
    with pytest.raises(openai.APIError, match="generation failed: RuntimeError: boom") as e:
        list(stream)
    assert e.value.body["type"] == "server_error"


def test_a_text_prompt_gets_the_bos_the_sae_was_trained_with(ws):
    """The API reads a text prompt as `saesteer steer`, the web playground's sweeps and the feature
    store read it for this SAE (saes.bos.prepend_bos_for: its cfg.json's prepend_bos over the model's
    default); it took the model's default, so a model that prepends no BOS (GPT-NeoX, Qwen2 in
    TransformerLens) was steered on other activations than the SAE's."""
    import copy
    from dataclasses import replace

    from features import FeatureStore
    from saesteer.web import Limits, ModelQueue, StoreEntry
    from saesteer.web.model_source import ModelEngine
    from saesteer.web.store_source import StoreCatalog

    default = bool(ws.model.cfg.default_prepend_bos)
    sae = copy.deepcopy(ws.sae)
    sae.cfg = replace(sae.cfg, metadata={**(sae.cfg.metadata or {}), "prepend_bos": not default})
    limits = Limits(max_new_tokens=8)
    entry = StoreEntry("chat", cat := StoreCatalog(FeatureStore.open(ws.path), name="chat"),
                       ModelEngine(ws.model, sae, cat, limits), ModelQueue("tiny-test-model", limits.max_pending))
    srv, _ = serve_entries([entry], limits=limits)
    try:
        c = openai_client(srv, api_key="x")
        prompt = "the sea and the ship"
        r = c.completions.create(model="chat", prompt=prompt, max_tokens=1, temperature=0)
        assert r.usage.prompt_tokens == ws.model.to_tokens(prompt, prepend_bos=not default).shape[1]
        assert r.usage.prompt_tokens != ws.model.to_tokens(prompt).shape[1]
        # an empty prompt for this SAE trained without BOS starts from the BOS token, as `saesteer sweep`
        # without --prompt does (it was refused as empty)
        assert default, "the tiny model prepends BOS: the SAE here is one trained without"
        r = c.completions.create(model="chat", prompt="", max_tokens=2, temperature=0)
        assert r.usage.prompt_tokens == 1 and r.usage.completion_tokens == 2
    finally:
        srv.stop()
