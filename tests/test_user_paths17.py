"""A seventeenth round of user paths: `saesteer api` spoken to by the chat clients of today (the real
`openai` client, and raw httpx for the payloads LangChain's ChatOpenAI and LiteLLM send), over two
tiny models with real chat templates: a Qwen2-family byte-level BPE with Qwen3's template (thinking
switch, think blocks, reasoning_content), and a Llama-3-Instruct checkpoint loaded as users load one
(`saesteer.models.load_model`: a TransformerBridge) whose template writes BOS itself and whose
generation_config.json lists <|eot_id|> beside the tokenizer's eos. What only these paths show:

- vLLM's `chat_template_kwargs` (`{"enable_thinking": false}`, how clients turn Qwen3's thinking
  off) was refused as an unknown field; it now reaches the template, a variable the template does
  not read is ignored as vLLM ignores it (named in a response header and the log), and one the server
  sets itself is refused;
- a message's `name` and an assistant message's `reasoning_content` (or `reasoning`) were dropped
  without a word; they now go to the template, which decides whether the model sees them (as
  vLLM: agent frameworks put `name` on every message, so a template that ignores it is no error);
- a text part with LiteLLM's `cache_control` (a provider's caching hint) was refused with two
  pydantic errors; it is read as its text;
- content given as text parts was joined with nothing (["Hello", "world"] read "Helloworld"); the
  parts are now joined by line breaks, as vLLM joins them;
- an assistant message in the history that called tools (`tool_calls`) was read as one that said
  nothing; it is refused, as tool messages are;
- a Llama-3-Instruct prompt sent to /v1/completions (the chat rendered to text by the client) ran
  past <|eot_id|> to max_tokens: only the tokenizer's eos (<|end_of_text|>) ended it; the
  checkpoint's generation_config.json eos_token_id list now ends every reply, as transformers'
  generate and vLLM end it, and so does `saesteer steer` (and the Python API and web playground,
  which generate the same way), which ran on past <|eot_id|> after the API was fixed;
- role:/turn: positions were refused on every Qwen3 chat with assistant history (the template writes
  an earlier assistant turn otherwise once a user message follows, so prefixes no longer cut the
  chat); that turn now ends where its content ends plus the template's closing text;
- a tokenizer with several named chat templates (Hermes 2 Pro, Command R: a list in
  tokenizer_config.json) could not chat at all ('unhashable type'); it takes the default one;
- what works and stays working: one BOS where the template writes it and the tokenizer would add
  another; <|eot_id|> ends a chat reply; Qwen3 history with <think> blocks rendered as the template
  renders it (earlier reasoning dropped); `developer` read as `system`; LangChain's and LiteLLM's
  streamed bodies (`max_completion_tokens`, `stream_options`, `n`, `user`, `metadata`) honoured;
  `tools` / `tool_choice` refused in OpenAI's error shape.
"""

from __future__ import annotations

import json

import httpx
import pytest

openai = pytest.importorskip("openai")

from helpers.chat_templates import QWEN2_TEMPLATE, QWEN3_TEMPLATE  # noqa: E402
from helpers.api_server import openai_client, serve_entries  # noqa: E402
from helpers.web_app import make_entry  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread")]

MAX_NEW = 24
ASK = [{"role": "system", "content": "You write Python."},
       {"role": "user", "content": "Écris: def parse(args):"}]


@pytest.fixture(scope="module")
def llama3_path(tmp_path_factory):
    """A Llama-3-Instruct checkpoint (template writes BOS, generation_config.json lists <|eot_id|>)."""
    from helpers.real_models import save_real_model, write_corpus

    work = tmp_path_factory.mktemp("user17-llama3")
    return save_real_model(work / "gqa-instruct", "llama3", write_corpus(work / "corpus"), train_steps=0,
                           vocab_size=512)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, llama3_path):
    """'qwen3': a HookedTransformer over a Qwen2-family tokenizer with Qwen3's template; 'llama3': the
    Llama-3-Instruct checkpoint loaded through saesteer.models.load_model; 'hermes': the
    Qwen2-family tokenizer with two named templates."""
    from transformers import AutoTokenizer

    from helpers.real_models import build_family_tokenizer, corpus_documents
    from helpers.web_store import build_web_store
    from saesteer.models import load_model

    work = tmp_path_factory.mktemp("user17")
    tok = build_family_tokenizer("qwen2", corpus_documents(), vocab_size=512)
    tok.chat_template = QWEN3_TEMPLATE
    qwen3 = build_web_store(work / "qwen3", tokenizer=tok, name="qwen3", n_layers=2, n_ctx=160)
    llama3 = build_web_store(work / "llama3", model=load_model(str(llama3_path), device="cpu"), name="llama3")
    # several named templates in tokenizer_config.json (Hermes 2 Pro, Command R): AutoTokenizer reads a dict
    tok.save_pretrained(work / "hermes-tok")
    cfg = json.loads((work / "hermes-tok" / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [{"name": "default", "template": QWEN2_TEMPLATE},
                            {"name": "tool_use", "template": QWEN2_TEMPLATE.replace("helpful", "tool-using")}]
    (work / "hermes-tok" / "tokenizer_config.json").write_text(json.dumps(cfg))
    (work / "hermes-tok" / "chat_template.jinja").unlink(missing_ok=True)
    hermes = build_web_store(work / "hermes", tokenizer=AutoTokenizer.from_pretrained(work / "hermes-tok"),
                             name="hermes", n_layers=2, n_ctx=160)
    return {"qwen3": qwen3, "llama3": llama3, "hermes": hermes}


@pytest.fixture(scope="module")
def server(stores):
    from saesteer.web import Limits

    limits = Limits(max_new_tokens=MAX_NEW)
    srv, _ = serve_entries([make_entry(ws, sid, limits=limits) for sid, ws in stores.items()], limits=limits)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server, timeout=60)


def _greedy(client, model, messages, **extra_body):
    """(prompt tokens, generated token ids) of a greedy chat reply that ignores end-of-text."""
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0,
                                       extra_body={"ignore_eos": True, **extra_body})
    return r.usage.prompt_tokens, r.choices[0].model_extra["steering"]["token_ids"]


def _refusal(excinfo) -> tuple[str, str]:
    err = excinfo.value.body
    return err["param"], err["message"]


# -- Qwen3: the thinking switch, think blocks, reasoning_content -----------------------------------


def test_enable_thinking_false_reaches_the_template(client, stores):
    """chat_template_kwargs {"enable_thinking": false} (vLLM's field, sent in extra_body): the prompt
    is Qwen3's with the empty think block after the assistant's opening, and the reply is the one
    /v1/completions gives for those tokens."""
    from steering.chat import render_chat

    tok = stores["qwen3"].model.tokenizer
    off = render_chat(tok, ASK, template_kwargs={"enable_thinking": False})
    assert off.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    n_on = len(render_chat(tok, ASK).token_ids)
    n_off, ids = _greedy(client, "qwen3", ASK, chat_template_kwargs={"enable_thinking": False})
    assert (n_off, n_on) == (len(off.token_ids), n_off - len(tok("<think>\n\n</think>\n\n")["input_ids"]))
    plain = client.completions.create(model="qwen3", prompt=off.token_ids, max_tokens=6, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert plain.choices[0].model_extra["steering"]["token_ids"] == ids
    assert plain.usage.prompt_tokens == n_off


def test_template_kwargs_the_template_does_not_read_are_ignored_and_named(client, caplog):
    """Open WebUI sends enable_thinking to every model; Llama 3's template has no thinking switch. As
    vLLM: the variable is dropped and the reply is the one without it; the response header names it
    and the server's log says so once (naming what the template reads). One the server sets itself
    is refused."""
    from saesteer.api.prepare import IGNORED_TEMPLATE_KWARGS_HEADER

    caplog.set_level("WARNING", logger="saesteer.api")
    want = client.chat.completions.create(model="llama3", messages=ASK, max_tokens=4, temperature=0)
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="llama3", messages=ASK, max_tokens=4, temperature=0,
            extra_body={"chat_template_kwargs": {"enable_thinking": False}})
        got = raw.parse()
        assert got.choices[0].message.content == want.choices[0].message.content
        assert got.usage.prompt_tokens == want.usage.prompt_tokens
        assert json.loads(raw.headers[IGNORED_TEMPLATE_KWARGS_HEADER]) == ["enable_thinking"]
    told = [r.getMessage() for r in caplog.records if "does not read 'enable_thinking'" in r.getMessage()]
    assert len(told) == 1 and "'llama3'" in told[0] and "reads: none" in told[0], told
    # Qwen3's reads enable_thinking: that one reaches it (no header), the other is dropped and named
    raw = client.chat.completions.with_raw_response.create(
        model="qwen3", messages=ASK, max_tokens=2, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert IGNORED_TEMPLATE_KWARGS_HEADER not in raw.headers
    mixed = client.chat.completions.with_raw_response.create(
        model="qwen3", messages=ASK, max_tokens=2,
        extra_body={"chat_template_kwargs": {"thinking": True, "enable_thinking": False}})
    assert json.loads(mixed.headers[IGNORED_TEMPLATE_KWARGS_HEADER]) == ["thinking"]
    assert mixed.parse().usage.prompt_tokens == raw.parse().usage.prompt_tokens
    assert any("does not read 'thinking'" in r.getMessage() and "enable_thinking" in r.getMessage()
               for r in caplog.records)
    # streamed: the header too; a name with a line break cannot break the header
    with client.chat.completions.with_streaming_response.create(
            model="llama3", messages=ASK, max_tokens=2, stream=True,
            extra_body={"chat_template_kwargs": {"enable_thinking": True, "x\r\nSet-Cookie: a=b": 1}}) as r:
        assert json.loads(r.headers[IGNORED_TEMPLATE_KWARGS_HEADER]) == ["enable_thinking", "x\r\nSet-Cookie: a=b"]
        assert "set-cookie" not in r.headers
        assert any("[DONE]" in line for line in r.iter_lines())
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="qwen3", messages=ASK, max_tokens=2,
                                       extra_body={"chat_template_kwargs": {"add_generation_prompt": False}})
    param, msg = _refusal(e)
    assert param == "chat_template_kwargs" and "set by the server" in msg, msg


def test_many_ignored_template_kwargs_make_one_bounded_header_and_one_log_line(client, caplog):
    """The most a request may send (16 names of 64 characters) stays a header proxies and clients
    take: escaped for the header an emoji is 12 characters, so 16 names of emoji would make 12 KB
    (nginx refuses a reply whose headers pass 4 KB, aiohttp a header past 8 KB). The names that fit
    are listed in order, the rest counted; the log says every new name in one line, not one each."""
    from saesteer.api.prepare import IGNORED_HEADER_MAX_CHARS, IGNORED_TEMPLATE_KWARGS_HEADER

    caplog.set_level("WARNING", logger="saesteer.api")
    names = [f"k{i:02d}_" + "😀日é"[i % 3] * 60 for i in range(16)]
    assert all(len(n) == 64 for n in names)
    for stream in (False, True):
        with client.chat.completions.with_streaming_response.create(
                model="llama3", messages=ASK, max_tokens=2, stream=stream,
                extra_body={"chat_template_kwargs": dict.fromkeys(names, True)}) as r:
            value = r.headers[IGNORED_TEMPLATE_KWARGS_HEADER]
            assert r.status_code == 200 and len(value) <= IGNORED_HEADER_MAX_CHARS, len(value)
            *shown, rest = json.loads(value)
            assert shown and shown == names[:len(shown)], shown
            assert rest == f"... {16 - len(shown)} more: see the server's log"
            r.read()
    told = [r.getMessage() for r in caplog.records if "k00_" in r.getMessage()]
    assert len(told) == 1 and all(repr(n) in told[0] for n in names), told

@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_of_a_prefill_reaches_the_template(client, stores, field):
    """An assistant prefill with vLLM's `reasoning_content`, or `reasoning`, its newer name (Qwen3's
    template writes it inside the think block): the prompt holds it, as transformers renders the
    message with `reasoning_content`."""
    from steering.chat import render_chat

    tok = stores["qwen3"].model.tokenizer
    reasoning = "Une liste; 日本 aussi."
    want = render_chat(tok, ASK + [{"role": "assistant", "content": "def parse(self, args):",
                                    "reasoning_content": reasoning}],
                       add_generation_prompt=False, continue_final_message=True)
    assert "日本 aussi.\n</think>\n\ndef parse" in want.text
    msgs = ASK + [{"role": "assistant", "content": "def parse(self, args):", field: reasoning}]
    n, _ = _greedy(client, "qwen3", msgs, continue_final_message=True, add_generation_prompt=False)
    assert n == len(want.token_ids)


NAME_TEMPLATE = "{% for m in messages %}{{ m.get('name', m['role']) }}: {{ m['content'] }}\n{% endfor %}"


def test_names_and_reasoning_reach_the_template_which_decides(client, stores, monkeypatch):
    """`name` on every message (AutoGen, LangChain's HumanMessage(name=...)) and `reasoning_content`
    on a reply in the history, sent to templates that do not write them (Qwen3 and Llama 3 write no
    name; Llama 3 no reasoning): accepted, the prompt as without them (they were refused, a 400 for
    every such agent); a template that writes `name` gets it. They count in the request's bound on
    text, as content does."""
    named = [{**m, "name": n} for m, n in zip(ASK, ("rules", "alice"))]
    history = [*named, {"role": "assistant", "content": "return args", "name": "coder",
                        "reasoning_content": "une liste"}, {"role": "user", "content": "Et?", "name": "alice"}]
    plain = [{"role": m["role"], "content": m["content"]} for m in history]
    for model in ("qwen3", "llama3"):
        assert _greedy(client, model, history) == _greedy(client, model, plain), model
    long = [*ASK, {"role": "assistant", "content": "ok", "reasoning_content": "réflexion " * 200}]
    with pytest.raises(openai.BadRequestError) as e:  # counted in the request's bound on text, as content is
        client.chat.completions.create(model="qwen3", max_tokens=2, messages=long)
    assert "characters in all" in _refusal(e)[1]
    tok = stores["qwen3"].model.tokenizer
    monkeypatch.setattr(tok, "chat_template", NAME_TEMPLATE)
    n, _ = _greedy(client, "qwen3", named, add_generation_prompt=False)
    assert n == len(tok("rules: You write Python.\nalice: Écris: def parse(args):\n")["input_ids"])


def test_think_blocks_in_history_are_rendered_as_the_template_does(client, stores):
    """A multi-turn chat whose earlier assistant reply holds a <think> block: Qwen3's template drops
    that reasoning from history; the server's prompt is transformers' rendering."""
    tok = stores["qwen3"].model.tokenizer
    msgs = ASK + [{"role": "assistant", "content": "<think>\nune liste\n</think>\n\nreturn args[1:]"},
                  {"role": "user", "content": "Et avec argparse?"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert "une liste" not in text and "return args[1:]" in text
    n, _ = _greedy(client, "qwen3", msgs)
    assert n == len(tok(text, add_special_tokens=False)["input_ids"])


def test_role_positions_in_a_qwen3_chat_with_history(client, stores):
    """Qwen3 writes an earlier assistant turn otherwise once a user message follows (no think block):
    role:user was refused on every chat with assistant history ('needs per-token roles'); it now
    steers the user turns, as the same edit at those token indices does."""
    from steering.chat import render_chat

    tok = stores["qwen3"].model.tokenizer
    msgs = ASK + [{"role": "assistant", "content": "<think>\nune liste\n</think>\n\nreturn args"},
                  {"role": "user", "content": "Et argparse?"}]
    chat = render_chat(tok, msgs)
    users = [i for i, r in enumerate(chat.roles) if r == "user"]
    assert tok.decode([chat.token_ids[i] for i in users]).count("<|im_start|>user") == 2
    latent = 5
    by_role = _greedy(client, "qwen3", msgs, steering={"edits": [f"{latent}:add=30@role:user"]})
    by_index = _greedy(client, "qwen3", msgs, steering={"edits": [{"latent": latent, "op": "add", "value": 30,
                                                                   "positions": users}]})
    assert by_role == by_index
    assert by_role != _greedy(client, "qwen3", msgs)  # the edit changes the reply: the comparison means something


def test_a_tokenizer_with_several_named_templates_chats_with_the_default_one(client, stores):
    """tokenizer_config.json with a list of named templates (Hermes 2 Pro, Command R): the chat
    endpoint answered 'cannot render these messages: unhashable type' (the templates were passed to
    transformers as one); a chat without tools now takes the default one, as transformers does."""
    tok = stores["hermes"].model.tokenizer
    assert isinstance(tok.chat_template, dict)
    want = tok.apply_chat_template(ASK[1:], tokenize=False, add_generation_prompt=True)
    assert "You are a helpful assistant." in want
    r = client.chat.completions.create(model="hermes", messages=ASK[1:], max_tokens=2,
                                       extra_body={"steering": {"edits": ["5:add=2@role:system"]}})
    assert r.usage.prompt_tokens == len(tok(want, add_special_tokens=False)["input_ids"])


# -- payload shapes of other clients ---------------------------------------------------------------


def test_tool_calls_in_the_history_are_refused(client):
    """An assistant message that called a tool (a history from an agent framework) was read as an
    assistant who said nothing; refused now, naming the message; an empty list stays accepted."""
    call = {"id": "call_1", "type": "function", "function": {"name": "parse", "arguments": "{}"}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="qwen3", max_tokens=2, messages=[
            *ASK, {"role": "assistant", "content": None, "tool_calls": [call]}, {"role": "user", "content": "Et?"}])
    param, msg = _refusal(e)
    assert param == "messages" and msg.startswith("messages.2.tool_calls:") and "tool calling" in msg, msg
    r = client.chat.completions.create(model="qwen3", max_tokens=2, messages=[
        *ASK, {"role": "assistant", "content": "ok", "tool_calls": []}, {"role": "user", "content": "Et?"}])
    assert r.usage.completion_tokens >= 1


def test_text_parts_are_joined_by_line_breaks(client):
    """Content as a list of text parts (LangChain, LiteLLM): read as the parts joined by line breaks,
    the prompt vLLM builds from them, not run together."""
    parts = [{"type": "text", "text": "def parse(self, args):"}, {"type": "text", "text": "    return args"}]
    as_parts = _greedy(client, "qwen3", [ASK[0], {"role": "user", "content": parts}])
    assert as_parts == _greedy(client, "qwen3", [ASK[0], {"role": "user", "content": "def parse(self, args):\n"
                                                                                       "    return args"}])


def test_a_text_part_with_cache_control_is_read_as_its_text(client):
    """LiteLLM (and Anthropic-style clients) mark text parts with `cache_control`, a provider's
    prompt-caching hint: read as the text (it was refused with two pydantic errors, one for each
    form content may take); another unknown key on a part is still refused, in one line."""
    cached = [{"type": "text", "text": ASK[1]["content"], "cache_control": {"type": "ephemeral"}}]
    assert _greedy(client, "qwen3", [ASK[0], {"role": "user", "content": cached}]) == _greedy(client, "qwen3", ASK)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="qwen3", max_tokens=2, messages=[
            {"role": "user", "content": [{"type": "text", "text": "x", "colour": "red"}]}])
    param, msg = _refusal(e)
    assert param == "messages" and msg == "messages.0.content: part 0: colour: not supported by this server (or misspelt)", msg


def test_langchain_and_litellm_bodies(server):
    """The streamed body LangChain's ChatOpenAI sends (max_completion_tokens, stream_options, n,
    temperature) and LiteLLM's (user, metadata, developer role): honoured; tools refused in
    OpenAI's error shape."""
    body = {"model": "qwen3", "stream": True, "stream_options": {"include_usage": True}, "n": 2,
            "temperature": 0.7, "max_completion_tokens": 5, "user": "u-17", "metadata": {"run": "a"},
            "messages": [{"role": "developer", "content": ASK[0]["content"]}, ASK[1]], "ignore_eos": True}
    chunks = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    assert chunks[-1]["usage"]["completion_tokens"] == 10 and not chunks[-1]["choices"]
    assert {c["choices"][0]["index"] for c in chunks[:-1]} == {0, 1}
    system = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                        json={**body, "stream": False, "stream_options": None, "messages": ASK}).json()
    assert chunks[-1]["usage"]["prompt_tokens"] == system["usage"]["prompt_tokens"]  # developer read as system
    tools = [{"type": "function", "function": {"name": "parse", "parameters": {"type": "object"}}}]
    r = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                   json={**body, "stream": False, "tools": tools, "tool_choice": "auto", "parallel_tool_calls": False})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools", r.text


# -- Llama 3: BOS written by the template, <|eot_id|> ending a turn ---------------------------------


def test_llama3_one_bos_and_eot_ends_chat_and_completion(client, stores):
    """The template writes <|begin_of_text|> and the tokenizer would add another: the chat prompt has
    one. <|eot_id|> (forced by logit_bias) ends a chat reply, and a /v1/completions reply to the same
    chat rendered to text: generation_config.json lists it (the tokenizer's eos is <|end_of_text|>)."""
    tok = stores["llama3"].model.tokenizer
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert tok.eos_token == "<|end_of_text|>"
    text = tok.apply_chat_template(ASK, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|begin_of_text|>") and tok(text)["input_ids"][:2] == [tok.bos_token_id] * 2
    bias = {str(eot): 100}
    chat = client.chat.completions.create(model="llama3", messages=ASK, max_tokens=8, logit_bias=bias)
    assert chat.usage.prompt_tokens == len(tok(text, add_special_tokens=False)["input_ids"])
    plain = client.completions.create(model="llama3", prompt=text, max_tokens=8, logit_bias=bias)
    for r in (chat, plain):
        c = r.choices[0]
        assert (c.finish_reason, c.model_extra["steering"]["stopped_by"], r.usage.completion_tokens) == (
            "stop", "end-of-text token", 0)
    assert plain.usage.prompt_tokens == chat.usage.prompt_tokens  # the written BOS is not doubled either


def _eot_sae(model_dir, out):
    """A StandardSAE written by SAELens for the checkpoint's last block, whose latent 0 writes the
    unembedding direction of <|eot_id|>: adding it makes <|eot_id|> the most likely next token."""
    import torch
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    eot = AutoTokenizer.from_pretrained(model_dir).convert_tokens_to_ids("<|eot_id|>")
    unembed = AutoModelForCausalLM.from_pretrained(model_dir).lm_head.weight[eot].detach()
    sl = StandardSAE(StandardSAEConfig(d_in=unembed.shape[0], d_sae=16))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in sl.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        sl.W_dec[0] = unembed / unembed.norm()
    sl.cfg.metadata.hook_name, sl.cfg.metadata.model_name = "blocks.1.hook_resid_post", str(model_dir)
    sl.save_model(out)
    return out


def test_steer_ends_a_llama3_text_at_eot(llama3_path, tmp_path):
    """`saesteer steer` on the Llama-3-Instruct checkpoint, with an edit at the last prompt token that
    makes the next token <|eot_id|>: the steered text ends there, as transformers' generate (and the
    API) end it; it ran on past <|eot_id|> (only the tokenizer's <|end_of_text|> stopped it), the
    rest of the text written after the end of the turn."""
    pytest.importorskip("sae_lens")
    from helpers.real_cli import saesteer

    sae = _eot_sae(llama3_path, tmp_path / "sae")
    r = saesteer("steer", "--model", llama3_path, "--sae", sae, "--latent", "0:add=50@-1", "--prompt", ASK[1]["content"],
                 "--prompt", "def parse(args):\n    return [a for a in args]", "--max-new-tokens", 8,
                 "--do-sample", "false", "--json", "--no-progress").ok()
    results = json.loads(r.out)["results"]
    assert [x["steered"] for x in results] == ["", ""], results
    assert all(x["unsteered"] for x in results)  # unsteered, the model writes on
