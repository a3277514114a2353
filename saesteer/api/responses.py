"""OpenAI response bodies, whole or as server-sent-event chunks, from the engine's row events.

Besides OpenAI's fields, every choice carries `steering`: the seed it sampled with, the
generated token ids (an end-of-text token that ended it excluded), where each
conditional edit fired (token indices, 0 = the first prompt token), and what stopped it (an
end-of-text token, a stop string, or a stop trigger naming the latent). The response carries
`steering` too: the edits applied (presets expanded) when the request steered.

Log-probabilities: completions use the legacy shape (tokens, token_logprobs, top_logprobs,
text_offset); chat uses `logprobs.content` entries (token, logprob, bytes, top_logprobs). A
token ending the choice at end-of-text is not part of the text and not listed. A completion's
`text_offset` is where each token's text starts in the returned text, as the engine decoded it
(`steering.textstream`: the common prefix of the text and the decoding before the token; a
character split over tokens belongs to the token that completes it, the earlier ones start where it
starts; a special token that the text leaves out has an empty span). A stream sends a token's
logprobs once its offset is certain, with the chunk whose text settles it (a token whose text is
held back, such as a line break that may start a stop string, comes in a later chunk).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from saesteer.api.prepare import Prepared

__all__ = ["Assembler", "sse", "SSE_DONE"]

SSE_DONE = b"data: [DONE]\n\n"


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), allow_nan=False).encode() + b"\n\n"


@dataclass
class _Choice:
    index: int
    text: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    tops: list[list[tuple[int, float]]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # completions: text_offset of the tokens certain so far
    sent: int = 0  # streamed completions: tokens whose logprobs were sent
    finish_reason: str | None = None
    detail: dict[str, Any] | None = None
    started: bool = False  # chat streams: the role chunk was sent


class Assembler:
    """Collects the events of one request into its response (or its stream of chunks)."""

    def __init__(self, prep: Prepared, tokenizer: Any) -> None:
        self.prep = prep
        self.tok = tokenizer
        self.id = ("chatcmpl-" if prep.kind == "chat" else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.choices = [_Choice(i) for i in range(len(prep.rows))]
        self.prompt_tokens = sum(len(r.prompt_ids) for i, r in enumerate(prep.rows) if i % prep.n == 0)
        self.error: str | None = None
        self._tokens: dict[int, tuple[str, bytes]] = {}  # token id -> (label, bytes), looked up once

    # -- events ---------------------------------------------------------------------------------
    def add(self, ev) -> dict[str, Any] | None:
        """Record an event; returns the stream chunk for it (None when there is nothing to send)."""
        c = self.choices[ev.tag]
        if ev.finish_reason == "error":
            self.error = (ev.detail or {}).get("error", "generation failed")
            c.finish_reason = "error"
            return None
        counted = ev.token is not None and not (ev.finish_reason == "stop" and
                                               (ev.detail or {}).get("stopped_by") == "end-of-text token")
        if counted and ev.logprob is not None:
            c.tokens.append(ev.token)
            c.logprobs.append(ev.logprob)
            c.tops.append(ev.top or [])
        if ev.offsets:
            c.offsets.extend(ev.offsets)
        if ev.text:
            c.text.append(ev.text)
        if ev.finish_reason is not None:
            c.finish_reason = "stop" if ev.finish_reason == "cancelled" else ev.finish_reason
            c.detail = ev.detail
        if not self.prep.stream:
            return None
        lp = None
        if self.prep.kind == "chat":
            if counted and ev.logprob is not None:
                lp = self._logprobs([ev.token], [ev.logprob], [ev.top or []])
        elif self.prep.logprobs is not None and len(c.offsets) > c.sent:  # tokens whose offsets are now certain
            k, c.sent = c.sent, len(c.offsets)
            lp = self._logprobs(c.tokens[k:c.sent], c.logprobs[k:c.sent], c.tops[k:c.sent], c.offsets[k:c.sent])
        if not ev.text and lp is None and ev.finish_reason is None:
            return None
        return self._chunk(c, ev.text, lp, ev.finish_reason is not None)

    # -- tokens -----------------------------------------------------------------------------------
    def _token(self, t: int) -> tuple[str, bytes]:
        """The token's `token` and its own UTF-8 `bytes` (OpenAI's: part of a character for a byte-level
        token, so that a client joining them gets the text), from one look-up of its bytes; `token` is
        how a token is shown everywhere (`features.tokentext.label_of_bytes`: a SentencePiece word keeps
        its leading space, part of a character is U+FFFD and its escaped bytes)."""
        got = self._tokens.get(t)
        if got is None:
            from features.tokentext import label_of_bytes, token_bytes

            raw = token_bytes(self.tok, t)
            got = self._tokens[t] = (label_of_bytes(raw), raw)
        return got

    def _logprobs(self, tokens: list[int], lps: list[float], tops: list[list[tuple[int, float]]],
                  offsets: list[int] | None = None):
        if self.prep.kind == "chat":
            def entry(t, lp):
                label, raw = self._token(t)
                return {"token": label, "logprob": lp, "bytes": list(raw)}

            return {"content": [dict(entry(t, lp), top_logprobs=[entry(a, b) for a, b in top])
                                for t, lp, top in zip(tokens, lps, tops)], "refusal": None}
        if offsets is None or len(offsets) != len(tokens):  # the engine tracks them for completions' logprobs
            raise RuntimeError(f"{len(tokens)} logprob tokens but {0 if offsets is None else len(offsets)} text "
                               "offsets from the engine (the row was not marked Row.offsets)")
        want_top = bool(self.prep.logprobs)
        return {"tokens": [self._token(t)[0] for t in tokens], "token_logprobs": lps,
                "top_logprobs": [{self._token(a)[0]: b for a, b in top} for top in tops] if want_top else None,
                "text_offset": offsets}

    # -- bodies -----------------------------------------------------------------------------------
    def _steering(self, c: _Choice) -> dict[str, Any] | None:
        d = c.detail or {}
        out = {"seed": d.get("seed"), "stopped_by": d.get("stopped_by"), "token_ids": d.get("token_ids")}
        if "fired" in d:
            out["fired"] = d["fired"]
        return out

    def _chunk(self, c: _Choice, text: str, lp, last: bool) -> dict[str, Any]:
        if self.prep.kind == "chat":
            delta: dict[str, Any] = {}
            if not c.started:
                delta["role"] = "assistant"
                c.started = True
            if text or "role" in delta:
                delta["content"] = text
            choice: dict[str, Any] = {"index": c.index, "delta": delta, "logprobs": lp,
                                      "finish_reason": c.finish_reason if last else None}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": c.index, "text": text, "logprobs": lp, "finish_reason": c.finish_reason if last else None}
            obj = "text_completion"
        if last:
            choice["steering"] = self._steering(c)
        return {"id": self.id, "object": obj, "created": self.created, "model": self.prep.model_id, "choices": [choice]}

    def first_chunks(self) -> list[dict[str, Any]]:
        """Chunks sent before any token: the echoed prompt (completions with echo); for chat, as
        OpenAI does, one chunk per choice saying the role with empty content (clients that build
        the message from the first delta's role see it even when no text comes)."""
        out = []
        if self.prep.kind == "chat":
            for c in self.choices:
                c.started = True
                out.append({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                            "model": self.prep.model_id,
                            "choices": [{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}]})
        if self.prep.kind == "completion" and self.prep.echo_texts:
            for c in self.choices:
                text = self.prep.echo_texts[c.index // self.prep.n]
                c.text.append(text)
                out.append({"id": self.id, "object": "text_completion", "created": self.created,
                            "model": self.prep.model_id,
                            "choices": [{"index": c.index, "text": text, "logprobs": None, "finish_reason": None}]})
        return out

    def usage(self) -> dict[str, int]:
        completion = sum((c.detail or {}).get("completion_tokens", 0) for c in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    def usage_chunk(self) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.prep.kind == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.prep.model_id, "choices": [],
                "usage": self.usage()}

    def body(self) -> dict[str, Any]:
        choices = []
        for c in self.choices:
            # the engine's whole text (a non-streamed row sends no pieces on the way)
            text = (c.detail or {}).get("text", "".join(c.text))
            if self.prep.kind == "completion" and self.prep.echo_texts:
                text = self.prep.echo_texts[c.index // self.prep.n] + text
            lp = self._logprobs(c.tokens, c.logprobs, c.tops, c.offsets) if self.prep.logprobs is not None else None
            if self.prep.kind == "chat":
                choice = {"index": c.index, "message": {"role": "assistant", "content": text, "refusal": None},
                          "logprobs": lp, "finish_reason": c.finish_reason}
            else:
                choice = {"index": c.index, "text": text, "logprobs": lp, "finish_reason": c.finish_reason}
            choice["steering"] = self._steering(c)
            choices.append(choice)
        out = {"id": self.id, "object": "chat.completion" if self.prep.kind == "chat" else "text_completion",
               "created": self.created, "model": self.prep.model_id, "choices": choices, "usage": self.usage(),
               "system_fingerprint": None}
        if self.prep.steering_summary is not None:
            out["steering"] = self.prep.steering_summary
        return out
