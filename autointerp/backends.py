"""Judge backends: an OpenAI-compatible HTTP server, and a local `transformers` model.

Both turn one `ChatRequest` into one `ChatResponse` and classify failures as `TransientError`
(retry) or `PermanentError` (don't). Heavy imports (`openai`, `torch`, `transformers`) happen in
the constructors, never at import time of this module.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from typing import Any

from .wire import ChatRequest, ChatResponse, PermanentError, TransientError, parse_retry_after

__all__ = ["OpenAIBackend", "TransformersBackend", "RETRYABLE_STATUS"]

RETRYABLE_STATUS = frozenset({408, 429})  # plus every 5xx


def _is_retryable(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


class OpenAIBackend:
    """Any server speaking OpenAI chat completions (OpenAI, vLLM, Ollama, llama.cpp server...).

    `base_url` defaults to $OPENAI_BASE_URL (else OpenAI's), `api_key` to $OPENAI_API_KEY (a
    placeholder is sent to servers that need none when a base URL is given). The client's own
    retries are off (`max_retries=0`): the `Judge` retries, counts and honours Retry-After.

    `timeout_s` is the deadline of one attempt as a whole (connect, send, wait, read the answer):
    httpx's timeouts are per read, so a server sending a byte now and then would hold a request
    forever under them alone."""

    kind = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_tokens_param: str = "max_tokens",
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        import openai  # noqa: F401  (fail early with a clear error if missing)

        if not model:
            raise ValueError("OpenAIBackend: model is empty; give --model or set SAESTEER_JUDGE_MODEL")
        if max_tokens_param not in ("max_tokens", "max_completion_tokens"):
            raise ValueError("max_tokens_param must be 'max_tokens' or 'max_completion_tokens'")
        self.model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if self.base_url is None:
                raise ValueError(
                    "no API key: set OPENAI_API_KEY (or give --base-url for a local server that needs none)"
                )
            key = "not-needed"
        self._api_key = key
        self.timeout_s = float(timeout_s)
        self.max_tokens_param = max_tokens_param
        self.extra_body = dict(extra_body or {})
        self._clients: dict[int, Any] = {}  # one AsyncOpenAI per event loop (httpx pools are loop-bound)

    def cache_extra(self) -> dict[str, Any]:
        return {"extra_body": self.extra_body} if self.extra_body else {}

    def _client(self):
        from openai import AsyncOpenAI

        loop = asyncio.get_running_loop()
        c = self._clients.get(id(loop))
        if c is None or getattr(c, "_saesteer_loop", None) is not loop:
            c = AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, timeout=self.timeout_s, max_retries=0)
            c._saesteer_loop = loop
            self._clients = {id(loop): c}  # drop clients of finished loops
        return c

    async def chat(self, request: ChatRequest) -> ChatResponse:
        import openai

        body: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in request.messages],
            "temperature": request.temperature,
            self.max_tokens_param: request.max_tokens,
        }
        if request.response_format:
            body["response_format"] = {"type": request.response_format}
        body.update(self.extra_body)
        try:
            # The client's raw `post` (its documented way to reach any endpoint): same base URL,
            # auth, timeout and error classes as `chat.completions.create`, minus the typed request
            # transform and response model, which cost more CPU per request than everything else
            # here; the JSON is read leniently below instead.
            text = await asyncio.wait_for(self._client().post("/chat/completions", cast_to=str, body=body),
                                          timeout=self.timeout_s)
        except (openai.APITimeoutError, asyncio.TimeoutError):
            raise TransientError(f"timed out after {self.timeout_s:g} s (no complete answer by then)") from None
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            raise TransientError(f"connection error ({type(cause).__name__}: {cause})") from None
        except openai.APIStatusError as e:
            status = e.status_code
            msg = _error_message(e)
            if _is_retryable(status):
                raise TransientError(
                    f"HTTP {status}: {msg}", status=status, retry_after=parse_retry_after(e.response.headers)
                ) from None
            raise PermanentError(f"HTTP {status}: {msg}", status=status) from None
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as e:
            raise TransientError(f"unreadable response body ({type(e).__name__})") from None
        return _to_response(data)

    async def aclose(self) -> None:
        for c in list(self._clients.values()):
            if getattr(c, "_saesteer_loop", None) is asyncio.get_running_loop():
                await c.close()
        self._clients = {}


def _error_message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
    return str(getattr(e, "message", e))[:300]


def _to_response(data: Any) -> ChatResponse:
    """A ChatResponse from a chat-completion JSON body, tolerating what lenient servers omit."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        # a 200 whose body is not a chat completion (a proxy's error page, an {"error": ...} body)
        raise TransientError("response had no choices (not a chat completion)")
    ch = choices[0]
    msg = ch.get("message") if isinstance(ch.get("message"), dict) else {}
    text = msg.get("content")
    if isinstance(text, list):  # content parts
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    refusal = msg.get("refusal")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}

    def _int(x: Any) -> int:
        try:
            return max(0, int(x or 0))
        except (TypeError, ValueError):
            return 0

    return ChatResponse(
        text if isinstance(text, str) else None,
        _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")),
        refusal if isinstance(refusal, str) and refusal else None,
        ch.get("finish_reason"),
    )


class TransformersBackend:
    """A local `transformers` causal LM answering through its chat template (greedy by default).

    Give a loaded `model` and `tokenizer` (the tokenizer needs a chat template), or use
    `TransformersBackend.from_pretrained(path)`. Generation runs in a worker thread, one request
    at a time. Token counts are exact; the cost is 0 unless a price is configured."""

    kind = "transformers"

    def __init__(self, model: Any, tokenizer: Any, *, name: str | None = None) -> None:
        if getattr(tokenizer, "chat_template", None) in (None, ""):
            raise ValueError(
                "TransformersBackend: the tokenizer has no chat template; use an instruction-tuned "
                "model or set tokenizer.chat_template"
            )
        self._model = model
        self._tok = tokenizer
        self.model = name or getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, path: str, *, device: str | None = None, dtype: str = "auto") -> "TransformersBackend":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        torch_dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
                       "float16": torch.float16}.get(dtype)
        if torch_dtype is None:
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device).eval()
        return cls(model, tok, name=str(path))

    def cache_extra(self) -> dict[str, Any]:
        return {}

    def _generate(self, request: ChatRequest) -> ChatResponse:
        import torch

        enc = self._tok.apply_chat_template(
            [dict(m) for m in request.messages], add_generation_prompt=True, return_tensors="pt", return_dict=True,
        )
        from saes.hookpoints import model_device

        device = model_device(self._model)
        input_ids = enc["input_ids"].to(device)
        self._check_context(int(input_ids.shape[1]), int(request.max_tokens))
        attn = enc.get("attention_mask")
        pad_id = self._tok.pad_token_id if self._tok.pad_token_id is not None else self._tok.eos_token_id
        gen_kw: dict[str, Any] = {"max_new_tokens": int(request.max_tokens), "pad_token_id": pad_id}
        if request.temperature and request.temperature > 0:
            gen_kw.update(do_sample=True, temperature=float(request.temperature))
        else:
            gen_kw.update(do_sample=False)
        with torch.no_grad():
            out = self._model.generate(
                input_ids=input_ids, attention_mask=None if attn is None else attn.to(device), **gen_kw
            )
        new = out[0, input_ids.shape[1]:]
        text = self._tok.decode(new, skip_special_tokens=True)
        n_new = int(new.shape[0])
        finish = "length" if n_new >= int(request.max_tokens) else "stop"
        return ChatResponse(text, int(input_ids.shape[1]), n_new, None, finish)

    def _check_context(self, n_prompt: int, n_answer: int) -> None:
        """A prompt (plus the answer's room) longer than the positions the model was trained on is
        refused: transformers only warns, and the model then answers from positions it never saw
        (or fails on an index error)."""
        cfg = getattr(self._model, "config", None)
        limit = next((int(v) for k in ("max_position_embeddings", "n_positions", "max_seq_len")
                      if isinstance(v := getattr(cfg, k, None), int) and v > 0), None)
        if limit is not None and n_prompt + n_answer > limit:
            raise PermanentError(
                f"the prompt is {n_prompt:,} tokens and the answer may take {n_answer:,}, but the judge model {self.model} "
                f"reads at most {limit:,}; use a judge with a longer context, or shorter prompts (`saesteer label`: "
                f"--max-example-tokens, --n-explain-top, --n-explain-quantile)")

    async def chat(self, request: ChatRequest) -> ChatResponse:
        def run() -> ChatResponse:
            with self._lock:
                try:
                    return self._generate(request)
                except (ValueError, TypeError) as e:
                    raise PermanentError(f"local generation failed: {type(e).__name__}: {e}") from None

        return await asyncio.to_thread(run)

    async def aclose(self) -> None:
        return None
