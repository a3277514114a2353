"""Chat prompts: messages rendered with the tokenizer's chat template, and which message each token is in.

    chat = render_chat(tokenizer, [{"role": "system", "content": "be brief"},
                                   {"role": "user", "content": "tell me about the sea"}])
    chat.token_ids            # the prompt, ready to generate the assistant's reply
    chat.roles, chat.turns    # per token: the role and message index it belongs to

The template decides everything about the text (markup, BOS); the text is tokenized as it is
(no special tokens added). To know which tokens belong to which message, the messages are
rendered one prefix at a time: message i spans the characters that rendering messages[:i+1] adds
to rendering messages[:i] (the template's preamble goes with message 0), and the generation prompt
(e.g. "<|assistant|>") belongs to the reply: role "assistant", turn len(messages). A token belongs
to the message holding its first character that is not whitespace (its first character when it is
all whitespace): a word's token carries the space before it (SentencePiece's "▁Be", byte-level
BPE's " Be"), and where the template writes that space ("[INST] " + the system message) the word
is still the message's. A message the template writes otherwise once more messages follow (Qwen3
drops the think block of an assistant turn that a user message follows) ends where its content
ends in the chat plus the text the template closes it with when it is last. A template whose turns
cannot be cut either way gives no per-token roles (`roles is None`, `why_no_roles` says why); then
role:/turn: positions are refused and everything else works.

A template that writes a system turn of its own before the first message when the messages have
none (Qwen2's "You are a helpful assistant.", Llama 3.1's date header) gives that turn's tokens role
"system" and turn -1: it is what the model reads as its system prompt, not part of the first user
message (role:user would otherwise steer it too, and role:system be refused as absent).

Template variables (`template_kwargs`, vLLM's `chat_template_kwargs`: Qwen3's `enable_thinking`)
reach the template only where it reads them: `check_template_kwargs` refuses the others, naming
those it reads, so a switch the template never looks at is not taken for one that worked (the API
drops them instead, as vLLM does: `unread_template_kwargs`). Message
fields beyond role and content (`name`, `reasoning_content`) go to the template as they are, and
the template decides whether the model sees them (as with transformers and vLLM).

A template that writes a message inside a later message's turn (Gemma 3 and Llama 2 fold the system
message into the first user turn: "<start_of_turn>user\nSYSTEM\n\nUSER") gives that text its own
message's role and turn (role:system steers the system text, role:user does not); the markup around
it stays the turn's. Where such text cannot be located, the prompt has no roles (`why_no_roles`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from steering.spec import SteeringError

REPLY_ROLE = "assistant"
_SENTINEL = "SAESTEER-SYSTEM-SENTINEL-7f3a"  # content of a probe system message (never in real text)


@dataclass
class ChatPrompt:
    text: str
    token_ids: list[int]
    roles: list[str] | None  # per token (None: the template does not allow telling)
    # per token: message index; len(messages) for the generation prompt; -1 for a system turn the
    # template writes by itself before message 0 (its default system prompt; role 'system'; no turn:I
    # position reaches it, as turn:-1 means the last message)
    turns: list[int] | None
    n_messages: int
    why_no_roles: str | None = None


def _template_of(tokenizer: Any, chat_template: str | None) -> str:
    tmpl = chat_template or getattr(tokenizer, "chat_template", None)
    if isinstance(tmpl, Mapping):  # several named templates (Hermes 2 Pro, Command R): chats without tools
        named = tmpl                # take the default one, as transformers picks it
        tmpl = named.get("default")
        if not tmpl:
            raise SteeringError(f"this model's tokenizer has several chat templates ({', '.join(map(str, named))}) "
                                f"and none named 'default', the one a chat without tools takes")
    if not tmpl:
        raise SteeringError(
            "this model's tokenizer has no chat template, so it cannot take chat messages; use the completions "
            "endpoint (a plain prompt), or give the tokenizer a chat_template"
        )
    return tmpl


def render_chat(tokenizer: Any, messages: Sequence[Mapping[str, Any]], *, chat_template: str | None = None,
                add_generation_prompt: bool = True, continue_final_message: bool = False,
                template_kwargs: Mapping[str, Any] | None = None) -> ChatPrompt:
    """Render `messages` (dicts with 'role' and 'content') for generating the next assistant turn;
    `template_kwargs` are variables for the template (checked by `check_template_kwargs`).

    With `continue_final_message` (and no generation prompt) the last message is left open for the
    model to continue (a prefill): the text ends where its content ends, as transformers'
    `apply_chat_template(..., continue_final_message=True)` renders it (what vLLM serves), and its
    tokens keep that message's role and turn."""
    tmpl = _template_of(tokenizer, chat_template)
    msgs = [dict(m) for m in messages]
    extra = dict(template_kwargs or {})
    check_template_kwargs(tokenizer, extra, chat_template=tmpl)
    if not msgs:
        raise SteeringError("messages is empty; give at least one message")
    if continue_final_message and add_generation_prompt:
        raise SteeringError("continue_final_message continues the last message, add_generation_prompt starts a new "
                            "turn: set one of them")

    def render(ms: list[dict], gen: bool) -> str:
        try:
            return tokenizer.apply_chat_template(ms, chat_template=tmpl, tokenize=False, add_generation_prompt=gen,
                                                 **extra)
        except Exception as e:  # jinja errors: the template refuses these messages (e.g. roles out of order)
            raise SteeringError(f"the chat template cannot render these messages: {e}") from None

    full = render(msgs, add_generation_prompt)  # roles and turns are read from the whole rendering
    text, why_open = full, None
    if continue_final_message:
        text = _render_open(tokenizer, tmpl, msgs, extra)
        if not full.startswith(text):
            why_open = "the chat template writes the last message otherwise when it is left open"
    enc = _tokenize(tokenizer, text)
    # where each content lies in the chat: located at most once, for whichever of the two steps needs it first
    spans = functools.cache(lambda: _content_spans_in(render, msgs, full, add_generation_prompt))
    ends, why = _prefix_ends(render, msgs, full, spans)
    why = why or why_open
    offsets = enc.get("offset_mapping")
    if why is None and offsets is None:
        why = "this tokenizer does not report character offsets (a 'fast' tokenizer does)"
    moved: list[tuple[int, int, int]] = []
    if why is None:
        moved, why = _moved_contents(msgs, ends, full, spans())
    roles = turns = None
    if why is None:
        starts = [_first_visible(text, a, b) for a, b in offsets]
        turns = _token_turns(starts, ends, moved, _injected_system_turn(render, msgs), len(msgs))
        roles = ["system" if t == -1 else str(msgs[t]["role"]) if t < len(msgs) else REPLY_ROLE for t in turns]
    return ChatPrompt(text, list(enc["input_ids"]), roles, turns, len(msgs), why)


def _render_open(tokenizer: Any, tmpl: str, msgs: list[dict], extra: dict[str, Any]) -> str:
    """The chat rendered with its last message left open (transformers cuts the rendering where the
    message's content ends)."""
    try:
        return tokenizer.apply_chat_template(msgs, chat_template=tmpl, tokenize=False, add_generation_prompt=False,
                                             continue_final_message=True, **extra)
    except Exception as e:  # e.g. a template that rewrites the last message's content
        reason = str(e).strip() or type(e).__name__
        first = re.split(r"(?<=[.!?])\s", reason, maxsplit=1)[0]  # transformers' first sentence, not the whole chat
        raise SteeringError(f"the chat template cannot leave the last message open to continue it: {first[:300]} "
                            "(a template that rewrites the assistant's message, as Qwen3's and DeepSeek-R1's drop a "
                            "finished <think>...</think> block, cannot continue it as given: prefill the text after "
                            "such a block only)") from None


# what apply_chat_template sets itself (from the request's own fields) or takes as its own arguments
_RESERVED_KWARGS = frozenset({
    "messages", "conversation", "tools", "documents", "add_generation_prompt", "continue_final_message",
    "chat_template", "tokenize", "padding", "truncation", "max_length", "return_tensors", "return_dict",
    "return_assistant_tokens_mask", "tokenizer_kwargs", "sanitize_control_tokens", "raise_exception", "strftime_now"})


@functools.lru_cache(maxsize=16)  # one parse per template, not per request
def _variables_of(tmpl: str) -> frozenset[str] | None:
    """The variables a chat template reads (what template kwargs can set), as vLLM finds them:
    jinja's undeclared names; None when jinja cannot parse the template here."""
    import jinja2
    from jinja2 import meta

    # transformers' {% generation %} tag (assistant masks) only marks text: parsed as plain text here
    source = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", tmpl)
    try:
        ast = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(source)
    except jinja2.TemplateError:  # a template jinja cannot parse here: nothing known about what it reads
        return None
    return frozenset(meta.find_undeclared_variables(ast))


def _set_by_renderer(tokenizer: Any) -> frozenset[str]:
    """The template variables the renderer sets itself: apply_chat_template's own (from the request's
    fields) and the tokenizer's special tokens (bos_token, ...)."""
    return _RESERVED_KWARGS | set(getattr(tokenizer, "special_tokens_map", {}) or {})


def unread_template_kwargs(tokenizer: Any, kwargs: Mapping[str, Any], *,
                           chat_template: str | None = None) -> list[str]:
    """The template variables in `kwargs` that the chat template never reads (they would change
    nothing), in the request's order; none when jinja cannot parse the template here. Variables the
    renderer sets itself are not listed: `check_template_kwargs` refuses those."""
    if not kwargs:
        return []
    reads = _variables_of(_template_of(tokenizer, chat_template))
    if reads is None:
        return []
    own = _set_by_renderer(tokenizer)
    return [k for k in kwargs if k not in reads and k not in own]


def template_variables(tokenizer: Any, *, chat_template: str | None = None) -> list[str]:
    """The variables a caller may set on this chat template (what it reads, less what the renderer
    sets itself), sorted; empty when jinja cannot parse the template here."""
    reads = _variables_of(_template_of(tokenizer, chat_template)) or frozenset()
    return sorted(reads - _set_by_renderer(tokenizer))


def check_template_kwargs(tokenizer: Any, kwargs: Mapping[str, Any], *, chat_template: str | None = None) -> None:
    """Refuse template variables the chat template does not read (they would change nothing, so a
    misspelt `enable_thinkng` would leave thinking on) and those the renderer sets itself (messages,
    add_generation_prompt, special tokens, ...). The API drops the unread ones instead, as vLLM
    does (`unread_template_kwargs`), since chat clients send the same variables to every model."""
    if not kwargs:
        return
    own = _set_by_renderer(tokenizer)
    for key in kwargs:
        if key in own:
            raise SteeringError(f"{key!r} is set by the server (from the request's own fields and the tokenizer), "
                                f"not by template variables; leave it out")
    unread = unread_template_kwargs(tokenizer, kwargs, chat_template=chat_template)
    if unread:
        known = template_variables(tokenizer, chat_template=chat_template)
        raise SteeringError(f"this model's chat template does not read {unread[0]!r}, so it would change nothing; "
                            f"the variables it reads: {', '.join(known) if known else 'none'}")


def _prefix_ends(render, msgs: list[dict], text: str,
                 spans: Callable[[], dict[int, tuple[int, int] | None]]) -> tuple[list[int], str | None]:
    """Where each message's turn ends in `text` (message i = [ends[i-1], ends[i]); the generation
    prompt after ends[-1]), from the renderings of the growing prefixes; or why the template's
    text cannot be cut that way.

    A template may write a message otherwise once more messages follow it (Qwen3 writes the
    assistant message after the last user message with a think block, and without it when a user
    message follows): its prefix is then no prefix of `text`, and its turn ends where its content
    ends in `text` plus the text the template closes it with (`_rewritten_end`)."""
    ends: list[int] = []
    for i in range(len(msgs)):
        cur = render(msgs[: i + 1], False)
        if text.startswith(cur) and len(cur) >= (ends[-1] if ends else 0):
            ends.append(len(cur))
            continue
        if i == len(msgs) - 1:  # only the generation prompt follows the last message
            return ends, "the chat template's generation prompt rewrites the text before it"
        end = _rewritten_end(render, msgs, i, text, spans().get(i), ends[-1] if ends else 0)
        if end is None:
            return ends, (f"the chat template renders message {i + 1} by rewriting the text before it, and where "
                          f"message {i}'s turn ends cannot be found")
        ends.append(end)
    return ends, None


def _rewritten_end(render, msgs: list[dict], i: int, text: str, span: tuple[int, int] | None,
                   start: int) -> int | None:
    """Where message i's turn ends in `text` when the template writes it otherwise as the last
    message: where its content (`span` in `text`) ends, plus the text the template writes after
    that content when the message is last (Qwen3's "<|im_end|>\\n"); None where that text does not
    follow it or the turn would start after its own content."""
    if span is None or span[0] < start:
        return None
    try:
        alone = render([*msgs[:i], {**msgs[i], "content": _SENTINEL}], False)
    except SteeringError:
        return None
    if alone.count(_SENTINEL) != 1:
        return None
    tail = alone.split(_SENTINEL)[1]
    return span[1] + len(tail) if text.startswith(tail, span[1]) else None


def _content_spans_in(render, msgs: list[dict], text: str, gen: bool) -> dict[int, tuple[int, int] | None]:
    """Where each message's content lies in `text` ({i: (start, end)}, None where not found): from
    one rendering with every content probed (`_content_spans`), else one per message
    (`_content_span_alone`). `_prefix_ends` and `_moved_contents` both read them."""
    probed = [i for i, m in enumerate(msgs) if isinstance(m.get("content"), str) and m["content"].strip()]
    spans = _content_spans(render, msgs, probed, text, gen)
    if spans is None:
        spans = {i: _content_span_alone(render, msgs, i, text, gen) for i in probed}
    return spans


def _first_visible(text: str, start: int, end: int) -> int:
    """Where a token's span text[start:end] has its first character that is not whitespace (`start`
    when it is all whitespace)."""
    span = text[start:end]
    core = span.lstrip()
    return start + len(span) - len(core) if core else start


def _token_turns(starts: list[int], ends: list[int], moved: list[tuple[int, int, int]], injected: int,
                 n_msgs: int) -> list[int]:
    """Each token's turn by where it starts (`starts`: its first visible character): -1 in a system
    turn the template wrote by itself (before `injected`), a message's index inside a content
    written in another turn (`moved`) or inside its own turn, `n_msgs` in the generation prompt."""
    turns = []
    for start in starts:
        if start < injected:
            turns.append(-1)
            continue
        turn = next((i for a, b, i in moved if a <= start < b), None)
        if turn is None:
            turn = next((i for i, e in enumerate(ends) if start < e), n_msgs)
        turns.append(turn)
    return turns


def _moved_contents(msgs: list[dict], ends: list[int], text: str,
                    spans: dict[int, tuple[int, int] | None]) -> tuple[list[tuple[int, int, int]], str | None]:
    """Messages whose text the template writes inside a later message's turn: [(start, end, i)] in
    `text`, or why they cannot be located.

    Gemma 3 and Llama 2 write the system message as a prefix of the first user turn: rendering
    [system] alone writes nothing of it, so by prefixes its text would be the user's. A message's text
    is found by rendering the messages with its content replaced by a probe: the text around the probe
    is what surrounds the real content (checked against the real rendering): `spans`, from
    `_content_spans_in`."""
    moved = []
    for i in spans:
        m, where = msgs[i], spans[i]
        start = ends[i - 1] if i else 0
        if where is not None and not start <= where[0] < ends[i]:
            moved.append((*where, i))
        elif where is None and m["content"].strip() not in text[start:ends[i]]:
            return [], (f"the chat template writes message {i} ({m.get('role')!r}) somewhere other than its own "
                        "turn, and where cannot be found")
    return moved, None


def _probe(i: int) -> str:
    return f"{_SENTINEL}:{i}:"  # ":" ends the number: no probe is a prefix of another


def _content_spans(render, msgs: list[dict], probed: list[int], text: str,
                   gen: bool) -> dict[int, tuple[int, int] | None] | None:
    """Where each probed message's content lies in `text` ({i: (start, end)}, None for a content
    the template does not write exactly once), from one rendering with every probed content
    replaced by its own probe: the text between the probes is the template's own, so walking the
    real text along it gives each content's span (where the walk is not forced, the content as
    given or trimmed, followed by the template's text after it, or that text's only occurrence).
    None when the real text does not follow the probed one (a template that rewrites content or
    refuses the probes): the caller then probes one message at a time."""
    if not probed:
        return {}
    try:
        rendered = render([{**m, "content": _probe(i)} if i in probed else m for i, m in enumerate(msgs)], gen)
    except SteeringError:
        return None
    parts = re.split(f"{re.escape(_SENTINEL)}:(\\d+):", rendered)
    texts, order = parts[0::2], [int(i) for i in parts[1::2]]  # text, probe, text, ..., text
    found: dict[int, list[tuple[int, int]]] = {i: [] for i in probed}
    pos = 0
    for j, i in enumerate(order):
        if i not in found or not text.startswith(texts[j], pos):
            return None
        pos += len(texts[j])
        after = texts[j + 1]
        if j + 1 == len(order):  # the last content: up to the template's closing text
            end = len(text) - len(after)
            if end < pos or not text.endswith(after):
                return None
        else:
            content = msgs[i]["content"]
            end = next((pos + len(c) for c in (content, content.strip())
                        if text.startswith(c, pos) and text.startswith(after, pos + len(c))), None)
            if end is None and after and text.count(after, pos) == 1:
                end = text.index(after, pos)
            if end is None:
                return None
        found[i].append((pos, end))
        pos = end
    if not text.startswith(texts[-1], pos) or pos + len(texts[-1]) != len(text):
        return None
    return {i: spans[0] if len(spans) == 1 else None for i, spans in found.items()}


def _content_span_alone(render, msgs: list[dict], i: int, text: str, gen: bool) -> tuple[int, int] | None:
    """Where message i's content lies in `text`, from a rendering with only its content probed
    (None when the template does not write the probe once or the rest does not match)."""
    try:
        probed = render([*msgs[:i], {**msgs[i], "content": _SENTINEL}, *msgs[i + 1:]], gen)
    except SteeringError:
        return None
    if probed.count(_SENTINEL) != 1:
        return None
    before, after = probed.split(_SENTINEL)
    if text.startswith(before) and text.endswith(after) and len(text) >= len(before) + len(after):
        return len(before), len(text) - len(after)
    return None


def _injected_system_turn(render, msgs: list[dict]) -> int:
    """Characters of a system turn the template writes before message 0 by itself (0 if none).

    Message 0's own block is what the template writes for it after a probe system message (rendering
    [probe, m0] minus the probe's rendering; [m0, m0] would break templates that insist on alternating
    roles); what rendering [m0] writes before that block is a preamble. It is a system turn when it has
    the shape of one (the text a system message renders to, around some content) and holds something
    of its own beyond the probe's head: a bare BOS before a plain-text system prompt (DeepSeek-R1/V3)
    is no system turn."""
    if msgs[0].get("role") == "system":
        return 0
    probe_msg = {"role": "system", "content": _SENTINEL}
    try:
        one = render(msgs[:1], False)
        probe = render([probe_msg], False)
        both = render([probe_msg, msgs[0]], False)
    except SteeringError:  # e.g. a template that refuses the system role
        return 0
    if probe.count(_SENTINEL) != 1 or not both.startswith(probe):
        return 0
    block = both[len(probe):]
    if not block or not one.endswith(block):
        return 0
    preamble = one[: len(one) - len(block)]
    head, tail = probe.split(_SENTINEL)
    fits = (preamble.startswith(head) and preamble.endswith(tail) and len(preamble) >= len(head) + len(tail)
            and len(preamble) > len(head))
    return len(preamble) if fits else 0


def _tokenize(tokenizer: Any, text: str) -> dict:
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        enc = tokenizer(text, add_special_tokens=False)
    out = {"input_ids": list(enc["input_ids"])}
    if "offset_mapping" in enc:
        out["offset_mapping"] = [tuple(o) for o in enc["offset_mapping"]]
    return out
