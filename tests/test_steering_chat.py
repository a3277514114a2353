"""steering.chat: which message each token of a chat prompt is in, with a bounded number of
renderings of the template per request (the probes of all messages in one rendering)."""

from __future__ import annotations

import pytest

from helpers.chat_templates import (DEEPSEEK_R1_TEMPLATE, DEEPSEEK_TEMPLATE, LLAMA2_TEMPLATE, LLAMA3_TEMPLATE,
                                   MISTRAL_SMALL3_TEMPLATE, QWEN2_TEMPLATE, QWEN3_TEMPLATE)
from helpers.real_models import GEMMA3_CHAT_TEMPLATE, build_family_tokenizer
from steering.chat import _SENTINEL
from steering.spec import SteeringError

TEXTS = ["the sea is deep and the ship sails on. What is the sea? Be brief, and answer in one line.\n" * 20]

S, U, A = "system", "user", "assistant"
MIXES = [  # (role, content) messages: system or not, multi-turn, contents the templates trim
    [(U, "hi")],
    [(S, "Be brief."), (U, "What is the sea?")],
    [(U, "What is the sea?"), (A, "Water."), (U, "and?")],
    [(S, "Be brief."), (U, "What is the sea?"), (A, "Water, deep."), (U, "and the ship?"), (A, "It sails.")],
    [(S, "  Be brief.\n"), (U, " What is the sea? "), (A, "Water.\n\n"), (U, "the sea")],  # trims, repeats
    [(S, "the sea"), (U, "the sea"), (A, "the sea"), (U, "the sea")],  # the same text in every turn
]


@pytest.fixture(scope="module")
def tokenizers():
    return {"qwen2": build_family_tokenizer("qwen2", TEXTS, vocab_size=300),
            "gemma": build_family_tokenizer("gemma", TEXTS, vocab_size=300)}


def _messages(mix):
    return [{"role": r, "content": c} for r, c in mix]


class _CountingTokenizer:
    """The tokenizer, counting its renderings of the chat template."""

    def __init__(self, tok):
        self.tok, self.renders = tok, 0

    def apply_chat_template(self, *a, **kw):
        self.renders += 1
        return self.tok.apply_chat_template(*a, **kw)

    def __call__(self, *a, **kw):
        return self.tok(*a, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_a_chat_request_renders_the_template_a_bounded_number_of_times_beyond_its_prefixes(tokenizers):
    """Qwen2's template: the prompt, one prefix per message (the turns' ends), one probed rendering
    of all messages, and the three of the default system turn check when there is no system
    message. Before, every message was probed in a rendering of its own."""
    from steering.chat import render_chat

    for n_turns in (1, 2, 4, 8):
        msgs = _messages([(U if t % 2 == 0 else A, f"turn {t} of the sea") for t in range(n_turns)])
        for system in (False, True):
            given = _messages([(S, "Be brief.")]) + msgs if system else msgs
            tok = _CountingTokenizer(tokenizers["qwen2"])
            chat = render_chat(tok, given, chat_template=QWEN2_TEMPLATE)
            assert chat.roles is not None and chat.roles[0] == S
            assert tok.renders == 1 + len(given) + 1 + (0 if system else 3), (n_turns, system)


def _rendered_both_ways(monkeypatch, tok, msgs, template):
    """`render_chat` as it is (recording, per call of `_content_spans`, whether the one probed
    rendering settled the spans) and with one rendering per message forced: (got, want, settled)."""
    import steering.chat as chat_mod

    content_spans, settled = chat_mod._content_spans, []

    def recorded(*a, **kw):
        spans = content_spans(*a, **kw)
        settled.append(spans is not None)
        return spans

    with monkeypatch.context() as m:
        m.setattr(chat_mod, "_content_spans", recorded)
        got = chat_mod.render_chat(tok, msgs, chat_template=template)
    with monkeypatch.context() as m:
        m.setattr(chat_mod, "_content_spans", lambda *a, **kw: None)  # no spans: one rendering per message
        want = chat_mod.render_chat(tok, msgs, chat_template=template)
    return got, want, settled


TEMPLATES = {"qwen2": ("qwen2", QWEN2_TEMPLATE), "gemma3": ("gemma", GEMMA3_CHAT_TEMPLATE),
             "llama2": ("gemma", LLAMA2_TEMPLATE), "deepseek": ("qwen2", DEEPSEEK_TEMPLATE),
             "mistral": ("qwen2", MISTRAL_SMALL3_TEMPLATE), "qwen3": ("qwen2", QWEN3_TEMPLATE)}


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_one_probed_rendering_gives_the_roles_of_one_rendering_per_message(tokenizers, name, monkeypatch):
    """Roles and turns from the one probed rendering equal those of probing each message in its own
    rendering (the way before), on system / user / assistant mixes, multi-turn, contents the
    template trims, and a text repeated in every turn; and the one rendering settled each of them."""
    family, template = TEMPLATES[name]
    tok = tokenizers[family]
    settled: list = []
    checked = 0
    for mix in MIXES:
        msgs = _messages(mix)
        if name in ("gemma3", "llama2", "mistral") and any(r == A for r, _ in mix[:1]):
            continue
        try:
            tok.apply_chat_template(msgs, chat_template=template, tokenize=False)
        except Exception:  # the template refuses this mix (roles must alternate, no system role)
            continue
        got, want, one_rendering = _rendered_both_ways(monkeypatch, tok, msgs, template)
        settled += one_rendering
        assert (got.roles, got.turns, got.why_no_roles) == (want.roles, want.turns, want.why_no_roles), mix
        assert got.token_ids == want.token_ids and got.roles is not None
        checked += 1
    assert checked >= 3 and settled and all(settled)


def test_a_folded_system_message_is_found_by_the_one_probed_rendering(tokenizers):
    """Gemma 3 writes the system message inside the first user turn: its tokens keep role system
    (the text the one probed rendering locates), the user's text stays the user's."""
    from steering.chat import render_chat

    tok = tokenizers["gemma"]
    msgs = _messages([(S, "  Be brief. "), (U, "What is the sea?"), (A, "Water."), (U, "and?")])
    chat = render_chat(tok, msgs, chat_template=GEMMA3_CHAT_TEMPLATE)
    offsets = tok(chat.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    system = "".join(chat.text[s:e] for (s, e), r in zip(offsets, chat.roles) if r == S)
    user = "".join(chat.text[s:e] for (s, e), r in zip(offsets, chat.roles) if r == U)
    assert system == "<bos>  Be brief. " and "What is the sea?" in user and "brief" not in user


def test_template_kwargs_a_template_does_not_read_are_refused_by_render_chat(tokenizers):
    """The library refuses what the API drops (as vLLM does): a variable the template never reads
    would change nothing (render_chat says which it reads), one the renderer sets itself is its own;
    the API's unread_template_kwargs lists the first kind only, in the request's order."""
    from steering.chat import render_chat, template_variables, unread_template_kwargs

    tok = tokenizers["qwen2"]
    msgs = _messages([(U, "Écris: def parse(args):")])
    with pytest.raises(SteeringError, match=r"does not read 'enable_thinkng'.*reads: .*enable_thinking"):
        render_chat(tok, msgs, chat_template=QWEN3_TEMPLATE, template_kwargs={"enable_thinkng": False})
    for own in ("add_generation_prompt", "eos_token"):
        with pytest.raises(SteeringError, match=f"'{own}' is set by the server"):
            render_chat(tok, msgs, chat_template=QWEN3_TEMPLATE, template_kwargs={own: "x"})
    kwargs = {"thinking": 1, "eos_token": 2, "enable_thinking": 3, "思考": 4}
    assert unread_template_kwargs(tok, kwargs, chat_template=QWEN3_TEMPLATE) == ["thinking", "思考"]
    assert "enable_thinking" in template_variables(tok, chat_template=QWEN3_TEMPLATE)
    assert not {"eos_token", "messages", "add_generation_prompt"} & set(
        template_variables(tok, chat_template=QWEN3_TEMPLATE))


def test_qwen3_history_keeps_its_turns(tokenizers):
    """Qwen3 writes the assistant message after the last user message with a think block and drops
    the block once a user message follows (its prefix is then no prefix of the chat): each message's
    turn is still its own, from '<|im_start|>' through '<|im_end|>\\n', the history's reasoning left
    out as the template leaves it out, the thinking switch's empty block in the reply's turn."""
    from steering.chat import render_chat

    tok = tokenizers["qwen2"]
    msgs = _messages([(S, "Be brief."), (U, "What is the sea?"), (A, "<think>\nsalt\n</think>\n\nWater."),
                      (U, "and the ship?"), (A, "It sails."), (U, "ok")])
    chat = render_chat(tok, msgs, chat_template=QWEN3_TEMPLATE, template_kwargs={"enable_thinking": False})
    assert chat.text == tok.apply_chat_template(msgs, chat_template=QWEN3_TEMPLATE, tokenize=False,
                                                add_generation_prompt=True, enable_thinking=False)
    offsets = tok(chat.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    turns: dict[int, str] = {}
    for (a, b), t in zip(offsets, chat.turns):
        turns[t] = turns.get(t, "") + chat.text[a:b]
    assert turns == {i: f"<|im_start|>{m['role']}\n{m['content'].split(chr(10))[-1]}<|im_end|>\n"
                     for i, m in enumerate(msgs)} | {6: "<|im_start|>assistant\n<think>\n\n</think>\n\n"}
    assert [chat.roles[chat.turns.index(i)] for i in range(7)] == [S, U, A, U, A, U, A]


@pytest.mark.parametrize("reads_name, written", [("{{ m.name }}", "ann"), ("{{ m['name'] }}", "ann"),
                                                 ("{{ m.get('name', '') }}", "ann"),
                                                 ("{% if 'name' in m %}someone{% endif %}", "someone")])
def test_a_message_field_reaches_the_template_which_decides(tokenizers, reads_name, written):
    """`name` on a message reaches a template that reads it, however it reads it; one that never
    reads it (Qwen2's) renders the chat as without it (as transformers and vLLM do: the template
    decides), and the turns are cut as without it."""
    from steering.chat import render_chat

    tok = tokenizers["qwen2"]
    tmpl = "{% for m in messages %}" + reads_name + ": {{ m['content'] }}\n{% endfor %}"
    msgs = [{"role": "user", "content": "What is the sea?", "name": "ann"}]
    assert render_chat(tok, msgs, chat_template=tmpl, add_generation_prompt=False).text.startswith(written + ": ")
    bare = render_chat(tok, [{"role": "user", "content": "What is the sea?"}], chat_template=QWEN2_TEMPLATE)
    named = render_chat(tok, msgs, chat_template=QWEN2_TEMPLATE)
    assert (named.token_ids, named.roles, named.turns) == (bare.token_ids, bare.roles, bare.turns)


ESCAPING = QWEN2_TEMPLATE.replace("message['content']", "(message['content'] | e)")
REWRITING = {  # templates that write a content other than as given, and the path that settles them
    "r1 drops the reasoning": (DEEPSEEK_R1_TEMPLATE, [(U, "What is the sea?"), (A, "<think>salt</think>Water."), (U, "and?")],
                               "one rendering"),
    "r1, the answer holds the template's next text": (
        DEEPSEEK_R1_TEMPLATE, [(U, "What is the sea?"), (A, "<think>salt</think>Water.<|end|><|User|>"), (U, "and?")],
        "per message"),
    "html escaped": (ESCAPING, [(S, "a <b> & c"), (U, "x < y?")], "one rendering"),
    # the text after the system content (up to the user's) recurs after the assistant's: not sure which
    "html escaped, the text after it twice": (ESCAPING, [(S, "a <b> & c"), (U, "x < y?"), (A, "yes & no"), (U, "ok")],
                                              "per message"),
    "lower cased (the probes too)": (QWEN2_TEMPLATE.replace("message['content']", "(message['content'] | lower)"),
                                     [(S, "be brief"), (U, "what is the sea?"), (A, "water"), (U, "and?")], "per message"),
    "a content that reads as a probe": (QWEN2_TEMPLATE, [(S, "be brief"), (U, f"{_SENTINEL}:0:"), (A, "water")],
                                        "one rendering"),
}


@pytest.mark.parametrize("case", list(REWRITING))
def test_a_template_that_rewrites_contents_gets_the_roles_of_one_rendering_per_message(tokenizers, case, monkeypatch):
    """Where the template transforms a content (DeepSeek-R1 drops the reasoning, an escape), the
    one probed rendering still places it, or, where it cannot be placed for sure (the rewritten
    content holds the template's own next text; the probes themselves rewritten), gives way to one
    rendering per message: the roles are those of one rendering per message either way."""
    template, mix, path = REWRITING[case]
    got, want, settled = _rendered_both_ways(monkeypatch, tokenizers["qwen2"], _messages(mix), template)
    assert got.roles is not None and (got.roles, got.turns) == (want.roles, want.turns)
    assert settled == [path == "one rendering"]


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_a_last_message_left_open_keeps_its_role_and_the_tokens_transformers_renders(tokenizers, name):
    """continue_final_message (an assistant prefill): the prompt is transformers' own rendering with
    the last message left open; its tokens keep the roles and turns of the closed chat's tokens, and
    the prefill's are the assistant's, last turn (Gemma 3 and Llama 2 fold the system message into
    the first user turn: it stays the system's)."""
    from steering.chat import render_chat

    family, template = TEMPLATES[name]
    tok = tokenizers[family]
    msgs = _messages([(S, "Be brief."), (U, "What is the sea?"), (A, "Water, déjà")])
    open_ = render_chat(tok, msgs, chat_template=template, add_generation_prompt=False, continue_final_message=True)
    closed = render_chat(tok, msgs, chat_template=template, add_generation_prompt=False)
    want = tok.apply_chat_template(msgs, chat_template=template, add_generation_prompt=False,
                                   continue_final_message=True, tokenize=False)
    assert open_.text == want and open_.token_ids == tok(want, add_special_tokens=False)["input_ids"]
    assert closed.text.startswith(open_.text) and len(closed.token_ids) > len(open_.token_ids)
    assert open_.roles is not None and open_.turns[-1] == 2 and open_.roles[-1] == A
    k = len(open_.token_ids) - 2  # the closing markup may merge with the text's last token: compare before it
    assert open_.roles[:k] == closed.roles[:k] and open_.turns[:k] == closed.turns[:k]
    assert S in open_.roles
    with pytest.raises(Exception, match="set one of them"):
        render_chat(tok, msgs, chat_template=template, continue_final_message=True)


@pytest.mark.parametrize("family, template", [("gemma", LLAMA3_TEMPLATE), ("qwen2", QWEN3_TEMPLATE),
                                              ("qwen2", DEEPSEEK_R1_TEMPLATE)], ids=["llama3", "qwen3", "r1"])
@pytest.mark.parametrize("prefill", ["The sea is ", "<think>\nLet me see, déjà"])
def test_a_prefill_in_templates_that_trim_or_rewrite_the_assistant_message(tokenizers, family, template, prefill):
    """Llama 3 trims the open message (transformers then cuts the text before the trimmed space),
    Qwen3 writes a think block before it, DeepSeek-R1 drops finished thinking: the prompt is still
    transformers' rendering and the prefill's tokens the last message's; a finished think block in
    the prefill, which Qwen3 and R1 do not write as given, is refused (as transformers refuses it)."""
    from steering.chat import render_chat

    tok = tokenizers[family]  # one with a BOS for Llama 3's template
    for history in ([], [(A, "<think>\nhm</think>\n\nWater."), (U, "and the ship?")]):
        msgs = _messages([(S, "Be brief."), (U, "What is the sea?"), *history, (A, prefill)])
        got = render_chat(tok, msgs, chat_template=template, add_generation_prompt=False, continue_final_message=True)
        want = tok.apply_chat_template(msgs, chat_template=template, add_generation_prompt=False,
                                       continue_final_message=True, tokenize=False)
        assert got.text == want and got.text.rstrip().endswith(prefill.strip())
        # Qwen3 rewrites an earlier assistant turn once a user message follows it: still roles
        assert got.roles is not None, got.why_no_roles
        last = [i for i, t in enumerate(got.turns) if t == len(msgs) - 1]
        assert prefill.strip() in tok.decode([got.token_ids[i] for i in last])
        assert {got.roles[i] for i in last} == {A} and last[-1] == len(got.token_ids) - 1
    if template is not LLAMA3_TEMPLATE:
        finished = _messages([(U, "What is the sea?"), (A, "<think>\nok</think>\n\nThe sea")])
        with pytest.raises(SteeringError, match="cannot leave the last message open") as refused:
            render_chat(tok, finished, chat_template=template, add_generation_prompt=False, continue_final_message=True)
        said = str(refused.value)  # transformers' reason in one sentence (not the rendered chat), and the way out
        assert "does not appear in the chat" in said and "Please verify" not in said and "Final message" not in said
        assert "prefill the text after" in said
