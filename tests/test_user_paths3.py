"""A third user's paths: a tiny Qwen2 chat model (byte-level BPE, the Qwen2-Instruct chat template in
its tokenizer_config.json) and a folder of their files (CRLF Python, HTML with `<script>`, prose with
accents and CJK), driven as the docs say: cache -> train -> features build through the CLI, then
`saesteer api` spoken to by the real `openai` client, a preset from a sweep judged by an
OpenAI-protocol server, labels from that judge, the web app's pages and playground, and `steer
--contrast`. Checks what only these paths show:

- the chat prompt is the tokenizer's own template, and Qwen2's default system prompt (written by the
  template when the messages have no system message) is role "system", not part of the user's turn;
- 'x' strengths that cannot be resolved say what to give at the face the user is at (no `typical_max=`);
- a CRLF line end cut into two tokens ("\\r", "\\n") is drawn as one line break, not a blank line;
- prompts for the judge show BPE text readably (indentation, one mark per line break, whole characters).
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3

import pytest

from helpers.chat_templates import DEEPSEEK_TEMPLATE, LLAMA2_TEMPLATE, MISTRAL_SMALL3_TEMPLATE, QWEN2_TEMPLATE
from helpers.real_cli import OFFLINE_ENV, cache_train_store, saesteer

openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.usefixtures("one_thread")]

HOOK = "blocks.1.hook_resid_post"
DOCS = {
    "page.txt": ("<script>alert('x')</script>\r\n<div class=\"a\">caf\u00e9 &amp; \u65e5\u672c</div>\r\n"
                 "def run(x):\r\n    if x:\r\n\treturn '</textarea><img src=x onerror=alert(1)>'\r\n") * 30,
    "code.txt": "import os\n\nclass A:\n    def f(self):\n        return {\"k\": [1, 2]}\n" * 30,
}


@pytest.fixture(scope="module")
def user(real_models, tmp_path_factory):
    """The Qwen2 checkpoint with its chat template, a store built from DOCS through the CLI."""
    work = tmp_path_factory.mktemp("user3")
    model = work / "qwen2-chat"
    shutil.copytree(real_models.path("qwen2"), model)
    (model / "chat_template.jinja").unlink(missing_ok=True)  # the template in tokenizer_config.json, as Qwen2 ships it
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg["chat_template"] = QWEN2_TEMPLATE
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    text = work / "text"
    text.mkdir()
    for name, doc in DOCS.items():
        (text / name).write_bytes(doc.encode("utf-8"))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in OFFLINE_ENV.items():
            mp.setenv(k, v)
        cache_train_store(model, text, work, "chat.db", "--hooks", HOOK)
        yield work


def _latents(db, where: str) -> list[int]:
    with sqlite3.connect(db) as c:
        return [r[0] for r in c.execute(f"SELECT latent FROM features WHERE {where} ORDER BY n_fires DESC")]


@pytest.fixture(scope="module")
def api(user):
    """`saesteer api --store chat.db` (the app it builds) served on a free loopback port."""
    from helpers.api_server import api_served
    from helpers.web_app import record_server

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        calls = record_server(mp)
        saesteer("api", "--store", user / "chat.db", "--port", 0).ok()
        (app, kw), = calls
        with api_served(app, kw["port"]) as (_, client):  # the port it chose (Host headers are checked against it)
            yield client, app


def _ext(obj) -> dict:
    return (obj.model_extra or {})["steering"]


# ---------------------------------------------------------------------------------------------
# 1. chat: the tokenizer's own template, roles, the OpenAI parameters


def test_chat_prompts_are_the_tokenizers_template_and_its_default_system_turn_is_role_system(user, api):
    """Qwen2's template writes "You are a helpful assistant." when no system message is given: those
    tokens were counted as the user's (role:user steered them; role:system was refused as absent)."""
    from transformers import AutoTokenizer

    from steering.chat import render_chat

    client, app = api
    tok = AutoTokenizer.from_pretrained(str(user / "qwen2-chat"))
    msgs = [{"role": "user", "content": "def run(x):\r\n    return '\u65e5\u672c'"}]
    chat = render_chat(tok, msgs)
    own = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    assert chat.token_ids == list(own["input_ids"] if hasattr(own, "keys") else own)
    system_text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    n_sys = len(tok(system_text, add_special_tokens=False)["input_ids"])
    assert chat.roles[:n_sys] == ["system"] * n_sys and chat.turns[:n_sys] == [-1] * n_sys
    user_idx = [i for i, r in enumerate(chat.roles) if r == "user"]
    assert tok.decode([chat.token_ids[i] for i in user_idx]).startswith("<|im_start|>user\ndef run")
    # through the API: role:system is the default system turn; role:user the user's message alone
    latent = _latents(user / "chat.db", "n_fires > 0")[0]

    def reply(positions):
        r = client.chat.completions.create(model="chat", messages=msgs, max_tokens=6, temperature=0, extra_body={
            "steering": {"edits": [{"latent": latent, "op": "add", "value": 40, "positions": positions}]}})
        assert r.usage.prompt_tokens == len(chat.token_ids)
        return _ext(r.choices[0])["token_ids"]

    reply("role:system")  # was 400: "the prompt has no 'system' message"
    assert reply("role:user") == reply(user_idx)
    assert reply("turn:0") == reply(user_idx)


def test_llama31_style_template_default_system_header_is_role_system(real_models):
    """The same for a template that writes its system header (knowledge date) itself, BOS first."""
    from transformers import AutoTokenizer

    from steering.chat import render_chat

    tok = AutoTokenizer.from_pretrained(str(real_models.path("llama")))
    tmpl = ("{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set sysmsg = messages[0]['content'] %}"
            "{%- set messages = messages[1:] %}{%- else %}{%- set sysmsg = '' %}{%- endif %}"
            "{{- '<|start_header_id|>system<|end_header_id|>\\n\\nToday Date: 26 Jul 2024\\n\\n' + sysmsg + '<|eot_id|>' }}"
            "{%- for m in messages %}{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + "
            "'<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}"
            "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
    bare = render_chat(tok, [{"role": "user", "content": "hi"}], chat_template=tmpl)
    first_user = bare.text.index("<|start_header_id|>user")
    starts = [s for s, _ in tok(bare.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    assert bare.roles == ["system" if s < first_user else r for s, r in zip(starts, bare.roles)]
    assert bare.roles[0] == "system" and "user" in bare.roles
    given = render_chat(tok, [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                        chat_template=tmpl)
    assert -1 not in given.turns and given.roles[0] == "system"  # a system message given: it is message 0


def _role_spans(tok, chat) -> list[tuple[str, int, str]]:
    """(role, turn, text) for each run of tokens with the same role and turn."""
    offsets = tok(chat.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    spans: list[list] = []
    for (s, e), role, turn in zip(offsets, chat.roles, chat.turns):
        if not spans or spans[-1][:2] != [role, turn]:
            spans.append([role, turn, ""])
        spans[-1][2] += chat.text[s:e]
    return [tuple(x) for x in spans]


def test_a_bare_bos_is_no_system_turn_and_alternating_templates_find_their_default_system(real_models):
    """DeepSeek-R1/V3 writes BOS and then the system prompt as plain text: with no system message the
    BOS alone had the shape of a system turn (the probe's head), so role:system was accepted and steered
    the BOS. Mistral-Small-3 writes a default system prompt but refuses [m0, m0] (alternation), so the
    default system prompt fell back to being part of the user's turn."""
    from transformers import AutoTokenizer

    from steering.chat import render_chat

    tok = AutoTokenizer.from_pretrained(str(real_models.path("llama")))
    bos, user = tok.bos_token, [{"role": "user", "content": "hi"}]
    deepseek = render_chat(tok, user, chat_template=DEEPSEEK_TEMPLATE)
    assert _role_spans(tok, deepseek) == [("user", 0, f"{bos}<|User|>hi"), ("assistant", 1, "<|Assistant|>")]
    mistral = render_chat(tok, user, chat_template=MISTRAL_SMALL3_TEMPLATE, add_generation_prompt=False)
    assert _role_spans(tok, mistral) == [("system", -1, f"{bos}[SYSTEM_PROMPT]You are Mistral.[/SYSTEM_PROMPT]"),
                                         ("user", 0, "[INST]hi[/INST]")]
    given = render_chat(tok, [{"role": "system", "content": "be brief"}] + user,
                        chat_template=MISTRAL_SMALL3_TEMPLATE, add_generation_prompt=False)
    assert [s[:2] for s in _role_spans(tok, given)] == [("system", 0), ("user", 1)]


def test_gemma3_folds_the_system_message_into_the_first_user_turn_and_role_system_still_finds_it(real_corpus):
    """Gemma 3's template writes the system message at the head of the first user turn
    ("<start_of_turn>user\nSYSTEM\n\nUSER"): by prefixes, rendering [system] alone writes only BOS, so
    the system text was labelled "user" (role:system steered the BOS alone, role:user the system
    text too). Gemma 2 refuses a system message: a clear error."""
    from helpers.real_models import GEMMA2_CHAT_TEMPLATE, build_family_tokenizer
    from steering.chat import render_chat
    from steering.rowedits import RowLayout, compile_positions
    from steering.spec import SteeringError

    tok = build_family_tokenizer("gemma", real_corpus.train_docs)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the sea?"},
            {"role": "assistant", "content": "Water."}, {"role": "user", "content": "and?"}]
    chat = render_chat(tok, msgs)
    assert chat.token_ids == tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert _role_spans(tok, chat) == [
        ("system", 0, "<bos>"), ("user", 1, "<start_of_turn>user\n"), ("system", 0, "Be brief."),
        ("user", 1, "\n\nWhat is the sea?<end_of_turn>\n"), ("assistant", 2, "<start_of_turn>model\nWater.<end_of_turn>\n"),
        ("user", 3, "<start_of_turn>user\nand?<end_of_turn>\n"), ("assistant", 4, "<start_of_turn>model\n")]
    layout = RowLayout(len(chat.token_ids), chat.roles, chat.turns, chat.n_messages, chat.why_no_roles)
    ids = chat.token_ids

    def text_at(positions):
        return tok.decode([i for i, on in zip(ids, compile_positions(positions, layout).prompt) if on])

    assert text_at("role:system") == "<bos>Be brief." and text_at("turn:0") == "<bos>Be brief."
    assert "brief" not in text_at("role:user") and "What is the sea?" in text_at("role:user")
    # no system message: no system turn at all (Gemma 3 writes no default one)
    bare = render_chat(tok, msgs[1:])
    assert "system" not in bare.roles and bare.roles[0] == "user"
    # a template that changes the system text on its way into the user turn: it cannot be located, so
    # the prompt has no roles (role positions refused, saying why) rather than wrong ones
    upper = GEMMA2_CHAT_TEMPLATE.replace(
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{% for message in messages %}",
        "{{ bos_token }}{% set ns = namespace(sp='') %}{% if messages[0]['role'] == 'system' %}"
        "{% set ns.sp = messages[0]['content'] | upper + '\n\n' %}{% set messages = messages[1:] %}{% endif %}"
        "{% for message in messages %}{% if loop.first %}{{ ns.sp }}{% endif %}")
    assert upper != GEMMA2_CHAT_TEMPLATE
    lost = render_chat(tok, msgs, chat_template=upper)
    assert "BE BRIEF." in lost.text and lost.roles is None
    assert "message 0 ('system') somewhere other than its own turn" in lost.why_no_roles
    # Llama 2 folds it into the first [INST] the same way
    llama2 = render_chat(tok, msgs, chat_template=LLAMA2_TEMPLATE)
    assert [s for s in _role_spans(tok, llama2) if s[0] == "system"] == [("system", 0, "Be brief.")]
    assert "<<SYS>>" in llama2.text and "Be brief." not in "".join(s[2] for s in _role_spans(tok, llama2) if s[0] == "user")
    # Gemma 2 has no system role at all: refused with the template's own words
    with pytest.raises(SteeringError, match="cannot render these messages: System role not supported"):
        render_chat(tok, msgs, chat_template=GEMMA2_CHAT_TEMPLATE)
    gemma2 = render_chat(tok, msgs[1:], chat_template=GEMMA2_CHAT_TEMPLATE)
    assert [s[:2] for s in _role_spans(tok, gemma2)] == [("user", 0), ("assistant", 1), ("user", 2), ("assistant", 3)]


def test_api_n_seeds_stream_stop_and_logprobs_on_a_bpe_chat_model(user, api):
    client, _ = api
    msgs = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "class A:\n    def"}]
    latent = _latents(user / "chat.db", "n_fires > 0")[1]
    steering = {"steering": {"edits": [f"{latent}:add=3x@role:assistant"]}}
    kw = dict(model="chat", messages=msgs, max_tokens=10, temperature=1.0, extra_body=steering)
    both = client.chat.completions.create(n=2, seed=5, **kw)
    alone = client.chat.completions.create(n=1, seed=6, **kw)
    assert [_ext(c)["seed"] for c in both.choices] == [5, 6]
    assert both.choices[1].message.content == alone.choices[0].message.content
    parts = {0: "", 1: ""}
    for chunk in client.chat.completions.create(n=2, seed=5, stream=True, **kw):
        for c in chunk.choices:
            parts[c.index] += c.delta.content or ""
    assert parts == {c.index: c.message.content for c in both.choices}
    full = both.choices[0].message.content
    # a stop string from the middle of the text: the text ends just before its first occurrence
    cut = next((full[:i] for i in range(1, len(full)) if full[i - 1] != full[i] and full[i:i + 2].strip()), None)
    assert cut is not None, f"no stop string to take from {full!r}"
    stop = full[len(cut):len(cut) + 2]
    r = client.chat.completions.create(n=1, seed=5, stop=[stop], **kw).choices[0]
    assert r.finish_reason == "stop" and r.message.content == full[:full.index(stop)]
    lp = client.chat.completions.create(model="chat", messages=msgs, max_tokens=3, temperature=0, logprobs=True,
                                        top_logprobs=3).choices[0].logprobs.content
    assert len(lp) == 3 and all(t.logprob == max(a.logprob for a in t.top_logprobs) for t in lp)  # greedy: the top one


def test_chat_logprobs_bytes_are_each_tokens_own_bytes(user, api):
    """A byte-level token holding part of a character decodes alone to U+FFFD; its `bytes` were
    those of U+FFFD ([239, 191, 189]), so a client joining them (what the field is for) got garbage.
    logit_bias makes the reply three such tokens (bytes 0xE6, 0xA5, 0xC3: byte-level BPE writes
    them as the Latin-1 characters of the same code)."""
    from transformers import AutoTokenizer

    client, _ = api
    tok = AutoTokenizer.from_pretrained(str(user / "qwen2-chat"))
    ids = tok.convert_tokens_to_ids(["\u00e6", "\u00a5", "\u00c3"])
    r = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "caf\u00e9 \u65e5\u672c"}],
                                       max_tokens=3, temperature=0, logprobs=True, top_logprobs=2,
                                       logit_bias={str(i): 100 for i in ids}).choices[0]
    chosen = _ext(r)["token_ids"]
    assert set(chosen) <= set(ids) and len(chosen) == 3
    assert [t.bytes for t in r.logprobs.content] == [[ord(tok.convert_ids_to_tokens(i))] for i in chosen]
    # `token` as everywhere (features.tokentext.token_label): U+FFFD and the byte escaped, e.g. "\ufffd\\xe6"
    assert [t.token for t in r.logprobs.content] == ["\ufffd" + "".join(f"\\x{b:02x}" for b in t.bytes)
                                                     for t in r.logprobs.content]
    others = [e for t in r.logprobs.content for e in t.top_logprobs]
    assert all(e.bytes == list(e.token.encode()) for e in others if "\ufffd" not in e.token)


# ---------------------------------------------------------------------------------------------
# 'x' strengths: the errors say what the user at this face can give


def test_x_strength_errors_name_what_this_face_takes(user, api):
    """A latent that never fired has no typical max: the API and the CLI said "pass typical_max= (a
    dict or callable ...)", a Python argument neither of them has."""
    client, _ = api
    dead = _latents(user / "chat.db", "n_fires = 0")
    live = _latents(user / "chat.db", "n_fires > 0")[0]
    assert dead, "the tiny SAE has no dead latent to try"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       extra_body={"steering": {"edits": [f"{dead[0]}:add=2x"]}})
    msg = str(e.value)
    assert "typical_max=" not in msg and "never fired" in msg and "raw value" in msg
    sae, db = user / "run/saes/sae", user / "chat.db"
    r = saesteer("steer", "--sae", sae, "--store", db, "-l", f"{live}:add=2x?{dead[0]}>1x", "--prompt", "x",
                 "--max-new-tokens", 2)
    assert r.rc == 2 and "typical_max=" not in r.err and "never fired" in r.err and "raw threshold" in r.err
    r = saesteer("steer", "--sae", sae, "-l", f"{live}:add=2x", "--prompt", "x", "--max-new-tokens", 2)
    assert r.rc == 2 and "typical_max=" not in r.err and "--store FILE" in r.err
    r = saesteer("preset", "save", "p", "--store", db, "-l", f"{dead[0]}:add=2x")
    assert r.rc == 2 and "never fired" in r.err and "save it again from a store with statistics" not in r.err


# ---------------------------------------------------------------------------------------------
# a preset from a sweep judged over OpenAI's protocol, applied through the API, refused on GPT-2


@pytest.mark.slow
def test_a_preset_from_a_judged_sweep_applies_through_the_api_and_is_refused_on_gpt2(user, api, real_models, tmp_path):
    from helpers.judge_server import JudgeServer

    client, _ = api
    db, sae = user / "chat.db", user / "run/saes/sae"
    latent = _latents(db, "n_fires > 0")[0]

    def judge(body):  # AxBench-style 0-2 ratings: "concept present" when the fragment has a parenthesis
        frag = body["messages"][1]["content"].split("<<<FRAGMENT\n", 1)[1]
        return json.dumps({"rating": 2 if "(" in frag else 0, "reason": "-"})

    with JudgeServer(judge) as srv:
        saesteer("sweep", "--sae", sae, "--store", db, "--latent", latent, "--concept", "parentheses",
                 "--judge-backend", "openai", "--judge-model", "judge", "--judge-base-url", srv.url,
                 "--judge-api-key", "k", "--prompt", "def run(x):", "--samples", 2, "--max-new-tokens", 6,
                 "--strengths", "0,2,4", "--out", tmp_path / "sweeps", "--no-progress").ok()
    card = tmp_path / "sweeps" / f"sweep_sae_{latent}.json"
    assert [p["strength"] for p in json.loads(card.read_text())["points"]] == [0, 2, 4]
    other = _latents(db, "n_fires > 0")[1]
    r = saesteer("preset", "save", "wrong", "--store", db, "-l", f"{other}:add=2x", "--scorecard", card)
    assert r.rc == 2 and f"a sweep of latent {latent}" in r.err and f"edits latent(s) {other}" in r.err  # was saved
    saesteer("preset", "save", "parens", "--store", db, "-l", f"{latent}:add=2x@generated", "--scorecard", card).ok()
    saesteer("preset", "export", "parens", "--store", db, "--out", tmp_path / "parens.json").ok()
    record = json.loads((tmp_path / "parens.json").read_text())
    assert client.models.list().data[0].model_extra["saesteer"]["presets"] == ["parens"]
    kw = dict(model="chat", messages=[{"role": "user", "content": "def run(x):"}], max_tokens=6, seed=2)
    by_name = client.chat.completions.create(extra_body={"steering": {"preset": "parens"}}, **kw)
    by_record = client.chat.completions.create(extra_body={"steering": {"preset": record}}, **kw)
    inline = client.chat.completions.create(extra_body={"steering": {"edits": [f"{latent}:add=2x@generated"]}}, **kw)
    assert _ext(by_name.choices[0])["token_ids"] == _ext(by_record.choices[0])["token_ids"] \
        == _ext(inline.choices[0])["token_ids"]
    assert by_name.model_extra["steering"]["preset"] == "parens"
    # a GPT-2 store: the preset is refused by `preset import` and by the API, naming both SAEs
    g = tmp_path / "g"
    saesteer("cache", "--model", real_models.path("gpt2"), "--dataset", user / "text", "--context-length", 32,
             "--max-tokens", 2048, "--hooks", HOOK, "--out", g / "cache", "--no-progress").ok()
    saesteer("train", "--cache", g / "cache", "--out", g / "run", "--architecture", "topk", "--d-sae", 64, "--k", 4,
             "--total-tokens", 1024, "--batch-size", 256, "--holdout-tokens", 256, "--eval-every-tokens", 0,
             "--checkpoint-every-tokens", 0, "--model-eval", "false", "--no-progress", "--sae-name", "sae").ok()
    saesteer("features", "build", "--sae", g / "run/saes/sae", "--cache", g / "cache", "--out", g / "g.db",
             "--no-progress").ok()
    r = saesteer("preset", "import", tmp_path / "parens.json", "--store", g / "g.db")
    ours = record["sae_fingerprint"][:12]
    assert r.rc == 2 and ours in r.err and "weights hash" in r.err
    # a steer-eval scorecard records the SAE it measured: not kept with a preset of another SAE
    (tmp_path / "eval.json").write_text(json.dumps({"format": "saesteer-steer-eval/1",
                                                    "provenance": {"sae_fingerprint": record["sae_fingerprint"]}}))
    r = saesteer("preset", "save", "p", "--store", g / "g.db", "-l", "1:add=1", "--scorecard", tmp_path / "eval.json")
    assert r.rc == 2 and ours in r.err and "give this SAE's scorecard" in r.err
    from fastapi.testclient import TestClient

    from helpers.web_app import record_server

    with pytest.MonkeyPatch.context() as mp:
        calls = record_server(mp)
        saesteer("api", "--store", g / "g.db", "--port", 0).ok()
        (app, kw), = calls
    resp = TestClient(app, base_url=f"http://127.0.0.1:{kw['port']}").post("/v1/completions", json={
        "model": "g", "prompt": "def run(x):", "max_tokens": 2, "steering": {"preset": record}})
    msg = resp.json()["error"]["message"]
    assert resp.status_code == 400 and ours in msg and "SAE 'g' has hash" in msg


# ---------------------------------------------------------------------------------------------
# 4. the web app on this store: CRLF, `<script>` text, the playground through /v1


def _crlf_latent(db) -> int:
    """A latent whose activating examples have CRLF line ends and no blank line (page.txt has none)."""
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT latent, sum(instr(text, ?) > 0), sum(instr(text, ?) > 0) FROM examples "
                         "WHERE kind != 'negative' GROUP BY latent", ("\r\n", "\n\n")).fetchall()
    ok = [(n, latent) for latent, n, blank in rows if n and not blank]
    assert ok, "no latent fires on the CRLF file alone"
    return max(ok)[1]


def test_a_crlf_cut_between_two_tokens_is_one_line_break_everywhere(user):
    """Qwen2's BPE cuts "\\r\\n" into "\\r" and "\\n" here: both were drawn as ↵, so every line of a
    Windows file looked followed by a blank line (CLI, web pages, HTML export)."""
    from features.tokentext import visible

    assert visible("\r", "\n") == "\u240d" and visible(":\r", "\n    ") == ":\u240d" and visible("\r") == "\u21b5"
    assert visible("x\r\n") == "x\u21b5" and visible("\n") == "\u21b5"
    db = user / "chat.db"
    latent = _crlf_latent(db)
    shown = saesteer("features", "show", db, latent).ok().out
    shown = shown.split("top examples", 1)[1].split("non-activating", 1)[0]
    assert "\u21b5" in shown and "\u21b5\u21b5" not in shown  # page.txt has no blank line
    from helpers.real_cli import captured_serve

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        _, web = captured_serve(mp, "--store", db, "--model", "none")
    page = web.get(f"/s/chat/f/{latent}").text
    examples = ["".join(re.findall(r'<span class="tok s\d+[^"]*"[^>]*>([^<]*)</span>', li.split("</li>")[0]))
                for li in page.split('<li class="ex">')[1:]]
    assert any("\u21b5" in ex for ex in examples) and not any("\u21b5\u21b5" in ex for ex in examples)
    saesteer("features", "export", db, user / "html", "--latents", latent, "--no-progress").ok()
    exported = (user / "html" / "f" / f"{latent:05d}.html").read_text(encoding="utf-8")
    exported = exported.split("Random non-activating")[0]  # those come from code.txt too (blank lines)
    examples = [re.sub(r"<[^>]+>", "", div.split("</div>")[0]) for div in exported.split('<div class="ex"')[1:]]
    assert any("\u21b5" in ex for ex in examples) and not any("\u21b5\u21b5" in ex for ex in examples)


def test_a_latent_peaking_on_the_cr_of_a_crlf_is_drawn_on_a_visible_token():
    """The "\\r" of a CRLF cut in two was drawn empty (the "\\n" drew the break), so a latent peaking on
    the "\\r" showed an empty span (CLI, HTML export, web), and the demo's [[ ]] moved onto the "\\n"."""
    from features.export import _example_html
    from features.records import Example
    from saesteer.commands.features import _example_text
    from saesteer.demo.showcase import _marked
    from saesteer.web.pages import make_templates

    e = Example(id=1, latent=3, kind="top", rank=0, activation=5.0, quantile=None, seq_index=0, position=1, centre=1,
                token_ids=[1, 2, 3, 4], tokens=["x:", "\r", "\n", "    y"], acts=[0.0, 5.0, 0.0, 0.0],
                text="x:\r\n    y")
    cli = _example_text(e)
    assert [cli.plain[s.start:s.end] for s in cli.spans] == ["\u240d"] and cli.plain == "x:\u240d\u21b5    y"
    assert re.search(r'<span class="tok centre"[^>]*>\u240d</span>', _example_html(e, 5.0))
    assert _marked(e) == "x:[[\u240d]]\u21b5    y"
    web = make_templates().from_string("{% import '_macros.html' as M %}{{ M.tokens(ex) }}")
    html = web.render(ex={"tokens": e.tokens, "acts": e.acts, "shade": [0, 4, 0, 0], "centre": 1})
    assert re.search(r'<span class="tok s4 centre"[^>]*>\u240d</span>', html)
    # a window cut between the two: its last piece "\\r" draws the break (the "\\n" is not shown)
    cut = Example(id=2, latent=3, kind="top", rank=0, activation=5.0, quantile=None, seq_index=0, position=9,
                  centre=9, token_ids=list(range(11)), tokens=["a"] * 9 + ["\r", "\n"], acts=[0.0] * 9 + [5.0, 0.0],
                  text="a" * 9 + "\r\n")
    assert _marked(cut, after=0) == "... " + "a" * 8 + "[[\u21b5]] ..."


def test_web_pages_escape_the_files_markup_and_the_playground_generates_through_v1(user):
    from helpers.real_cli import captured_serve

    db = user / "chat.db"
    with sqlite3.connect(db) as c:
        latent = c.execute("SELECT latent FROM examples WHERE kind = 'top' AND text LIKE '%<script>%' "
                           "GROUP BY latent ORDER BY count(*) DESC").fetchone()[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        r, web = captured_serve(mp, "--store", db)
    page = web.get(f"/s/chat/f/{latent}").text
    drawn = "".join(re.findall(r'<span class="tok[^"]*"[^>]*>([^<]*)</span>', page))
    assert "&lt;" in drawn and "<script>alert" not in page and "onerror=alert" not in page.replace("onerror=a", "")
    fire = web.get("/s/chat/fire", params={"text": "<script>\r\n\tx = 1\r\n</script>"}).text
    tokens = fire.split('class="toks firetoks">', 1)[1].split("</p>", 1)[0]
    drawn = "".join(re.findall(r'<span class="tok s\d+[^"]*"[^>]*>([^<]*)</span>', tokens))
    # Qwen2's BPE cuts each "\\r\\n" in two here: "\\r" drawn ␍, "\\n" ↵ (one line break, no token empty)
    assert drawn == "&lt;script&gt;\u240d\u21b5\u21e5x = 1\u240d\u21b5&lt;/script&gt;" and "<script>\r" not in fire
    # what steer.js posts: two completions with the same seed, one with edits (no positions; ablate's value null)
    live = _latents(db, "n_fires > 0")
    body = {"model": "chat", "prompt": "def run(x):\r\n    if x:\r\n", "max_tokens": 6, "temperature": 0.7, "seed": 3}
    headers = {"Origin": str(web.base_url)}
    base = web.post("/v1/completions", json=body, headers=headers)
    steered = web.post("/v1/completions", headers=headers, json={**body, "steering": {"edits": [
        {"latent": live[0], "op": "add", "value": 8, "unit": "max_act"},
        {"latent": live[1], "op": "ablate", "value": None, "unit": "raw"}]}})
    assert base.status_code == steered.status_code == 200, steered.text
    assert steered.json()["steering"]["edits"][1] == f"{live[1]}:ablate"
    again = web.post("/v1/completions", json=body, headers=headers)
    assert again.json()["choices"][0]["text"] == base.json()["choices"][0]["text"]  # same seed, same text


# ---------------------------------------------------------------------------------------------
# 2. auto-interp through an OpenAI-protocol judge on BPE text


def test_judge_prompts_show_bpe_text_readably_and_bad_answers_say_what_went_wrong(user, tmp_path):
    from helpers.judge_server import FaultPlan, JudgeServer, fake_llm_answer

    db = tmp_path / "l.db"
    shutil.copy(user / "chat.db", db)
    with sqlite3.connect(db) as c:
        latent = c.execute("SELECT latent FROM examples WHERE kind = 'top' AND instr(text, ?) > 0 GROUP BY latent "
                           "ORDER BY count(*) DESC", ("\r\n",)).fetchone()[0]
    bodies = []

    def answer(body):
        bodies.append(body)
        return fake_llm_answer(body)

    with JudgeServer(answer) as srv:
        saesteer("label", "--store", db, "--latents", latent, "--judge-model", "judge", "--judge-base-url", srv.url,
                 "--judge-api-key", "k", "--scorers", "detection,fuzzing,simulation", "--embed-backend", "none",
                 "--no-progress").ok()
    explain = next(b for b in bodies if "labelling one latent" in b["messages"][0]["content"])["messages"][1]["content"]
    examples = explain.split("<examples>\n", 1)[1].split("\n</examples>", 1)[0].splitlines()
    assert examples and all(re.match(r"Example \d+: ", ln) for ln in examples)  # one line per example
    joined = "\n".join(examples)
    assert "\r" not in joined and "<script>" not in joined and "\u2039script\u203a" in joined
    # whole characters inside a line (a window may cut one at its edges), a CRLF drawn once, indentation kept
    assert all("\ufffd" not in ln.split(": ", 1)[1].strip("\ufffd") for ln in examples)
    assert "\u00e9" in joined and "\u65e5" in joined
    assert "\u23ce    if x:" in joined.replace("<<", "").replace(">>", "") and "\u23ce\u23ce    if" not in joined
    kinds = {re.sub(r"[^a-z ]", "", b["messages"][0]["content"].split("\n")[0]) for b in bodies}
    assert len(kinds) == 3  # explain, detection/fuzzing and simulation prompts all sent
    with sqlite3.connect(db) as c:
        methods = {m for (m,) in c.execute("SELECT method FROM scores WHERE latent = ?", (latent,))}
    assert {"detection", "fuzzing", "simulation"} <= methods
    with JudgeServer(fake_llm_answer, faults=FaultPlan({"malformed": 1.0}, seed=0)) as srv:
        r = saesteer("label", "--store", db, "--latents", latent, "--judge-model", "judge2", "--judge-base-url",
                     srv.url, "--judge-api-key", "k", "--embed-backend", "none", "--no-progress")
    assert r.rc == 4 and f"latent {latent} failed at explain" in r.text and "not valid JSON" in r.text


# ---------------------------------------------------------------------------------------------
# 5. steer --contrast with files of code


def test_contrast_prompts_keep_their_indentation(user, tmp_path):
    """Lines of a contrast file were stripped, so '    return x' lost its indentation tokens."""
    from saesteer.commands._steering import read_prompt_file

    (tmp_path / "code.txt").write_bytes(b"def f(x):\r\n    return x\r\n\r\n\tpass  \r\n")
    assert read_prompt_file(str(tmp_path / "code.txt"), "--contrast") == ["def f(x):", "    return x", "\tpass"]
    (tmp_path / "prose.txt").write_text("The caf\u00e9 is open.\nWe walked.\n", encoding="utf-8")
    r = saesteer("steer", "--sae", user / "run/saes/sae", "--store", user / "chat.db", "--contrast",
                 tmp_path / "code.txt", tmp_path / "prose.txt", "--top", 3, "--json").ok()
    rows = json.loads(r.out)
    assert len(rows) == 3 and all(row["mean_positive"] - row["mean_negative"] > 0 for row in rows)
