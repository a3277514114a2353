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
from typing import Any, Mapping

from .base_url import BaseURL, not_found_hint, parse_base_url
from .config import ENV_API_KEY, ENV_BASE_URL
from .openai_replies import chat_response, error_message, html_title, looks_like_html, unsupported_param
from .sdk_attempt import ClientPerLoop, attempt, status_failure
from .wire import (RETRYABLE_STATUS, ChatRequest, ChatResponse, PermanentError, TransientError, fold_system,
                   refuses_system_role, thinking_opened)

__all__ = ["OpenAIBackend", "TransformersBackend", "RETRYABLE_STATUS", "openai_endpoint"]


def openai_endpoint(base_url: str | None, api_key: str | None,
                    env: Mapping[str, str] | None = None) -> tuple[BaseURL, str]:
    """(where, with which key) an OpenAI-protocol judge sends its requests, from the settings given and
    the environment `env` (default the process's): the base URL (`base_url`, else $OPENAI_BASE_URL;
    `parse_base_url`) and the key (`api_key`, else $OPENAI_API_KEY, else for an Azure OpenAI deployment
    URL $AZURE_OPENAI_API_KEY, where Azure's own client looks, else a placeholder for a server of one's
    own: local servers check none). OpenAI's own API without a key is refused. The one lookup, for
    `check_judge` (before anything loads) and `OpenAIBackend` alike."""
    env = os.environ if env is None else env
    base = parse_base_url(base_url or env.get(ENV_BASE_URL) or None, env)
    key = api_key or env.get(ENV_API_KEY) or (env.get("AZURE_OPENAI_API_KEY") if base.azure_deployment else None)
    if key:
        return base, key
    if base.url is None:
        raise ValueError(f"no API key: set {ENV_API_KEY} (or give --judge-api-key; --judge-base-url for a local server "
                         "that needs none)")
    return base, "not-needed"


class OpenAIBackend:
    """Any server speaking OpenAI chat completions (OpenAI, vLLM, Ollama, llama.cpp server...).

    `base_url` defaults to $OPENAI_BASE_URL (else OpenAI's), `api_key` to $OPENAI_API_KEY (a
    placeholder is sent to servers that need none when a base URL is given), read from `env` (default
    the process's environment; `openai_endpoint`). The client's own
    retries are off (`max_retries=0`): the `Judge` retries, counts and honours Retry-After.

    `timeout_s` is the deadline of one attempt as a whole (connect, send, wait, read the answer):
    httpx's timeouts are per read, so a server sending a byte now and then would hold a request
    forever under them alone.

    Reasoning models (OpenAI o-series, gpt-5) reject `max_tokens` and any temperature but their
    default with a 400 naming the parameter: the backend then switches to `max_completion_tokens`
    / leaves the temperature out, says so once (a note), and resends; later requests go out that
    way from the start. So does a chat template that takes no system turn (a 400 in its words, as
    vLLM passes Gemma 2's on): the instructions then open the first user turn (`wire.fold_system`). A query in `base_url` (`?api-version=...`) is sent with every request; an
    Azure OpenAI deployment URL (`.../openai/deployments/NAME?api-version=...`) gets Azure's
    `api-key` header. `reasoning_effort` is sent as is (OpenAI, Ollama and vLLM read it)."""

    kind = "openai"
    sees_template = False

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_tokens_param: str = "max_tokens",
        extra_body: dict[str, Any] | None = None,
        reasoning_effort: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        import openai  # noqa: F401  (fail early with a clear error if missing)

        if not model:
            raise ValueError("OpenAIBackend: model is empty; give --model or set SAESTEER_JUDGE_MODEL")
        if max_tokens_param not in ("max_tokens", "max_completion_tokens"):
            raise ValueError("max_tokens_param must be 'max_tokens' or 'max_completion_tokens'")
        self.model = model
        self._base, self._api_key = openai_endpoint(base_url, api_key, env)
        self.base_url = self._base.url
        self.timeout_s = float(timeout_s)
        self.max_tokens_param = max_tokens_param
        self.send_temperature = True  # False once the model refused any but its default temperature
        self.fold_system = False  # True once the model's chat template refused a system turn (`wire.fold_system`)
        self.extra_body = dict(extra_body or {})
        if reasoning_effort:
            self.extra_body["reasoning_effort"] = reasoning_effort
        self._client = ClientPerLoop(self._make_client)

    def cache_extra(self) -> dict[str, Any]:
        return {"extra_body": self.extra_body} if self.extra_body else {}

    def provenance(self) -> dict[str, Any]:
        """What a label's provenance records of this backend's settings beyond the judge's own."""
        return {"reasoning_effort": self.extra_body.get("reasoning_effort")}

    def _make_client(self):
        from openai import AsyncAzureOpenAI, AsyncOpenAI

        if self._base.azure_deployment:  # Azure's key header (api-key) and api-version query
            query = dict(self._base.query)
            version = query.pop("api-version")
            return AsyncAzureOpenAI(base_url=self.base_url, api_key=self._api_key, api_version=version,
                                    default_query=query or None, timeout=self.timeout_s, max_retries=0)
        return AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, timeout=self.timeout_s, max_retries=0,
                           default_query=self._base.query or None)

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(fold_system(request.messages)) if self.fold_system else [dict(m) for m in request.messages],
            self.max_tokens_param: request.max_tokens,
        }
        if self.send_temperature:
            body["temperature"] = request.temperature
        if request.response_format:
            body["response_format"] = {"type": request.response_format}
        body.update(self.extra_body)
        return body

    async def chat(self, request: ChatRequest) -> ChatResponse:
        for resend in range(4):  # refusals of the length parameter, the temperature and a system turn: once each
            try:
                return await self._chat_once(request)
            except _Unsupported as e:
                if resend == 3 or not self._adapt(e):
                    raise PermanentError(e.reason, status=400) from None
        raise AssertionError("unreachable")

    def _adapt(self, e: "_Unsupported") -> bool:
        """Send what a reasoning model accepts, once it has refused a parameter; False if nothing is
        left to change. The refused request's own body decides: concurrent requests refused for the
        same parameter are resent in the form the first refusal switched to, without a second note."""
        from saes.errors import note

        if e.param == "system":
            if not any(m["role"] == "system" for m in e.sent["messages"]):
                return False  # the template refused something else than a system turn
            if not self.fold_system:
                self.fold_system = True
                note(f"judge model {self.model}'s chat template takes no system turn; its instructions are sent at "
                     "the head of the first user turn instead")
            return True
        if e.param not in e.sent:
            return False
        if e.param == "max_tokens":
            if self.max_tokens_param == "max_tokens":
                self.max_tokens_param = "max_completion_tokens"
                note(f"judge model {self.model} does not take max_tokens; sending max_completion_tokens instead "
                     "(--judge-max-tokens-param max_completion_tokens says so from the start)")
            return True
        if self.send_temperature:
            self.send_temperature = False
            note(f"judge model {self.model} takes only its default temperature; sending no temperature (its "
                 "answers are sampled, so a re-run may label differently)")
        return True

    async def _chat_once(self, request: ChatRequest) -> ChatResponse:
        import openai

        body = self._body(request)
        try:
            # The client's raw `post` (its documented way to reach any endpoint): same base URL,
            # auth, timeout and error classes as `chat.completions.create`, minus the typed request
            # transform and response model, which cost more CPU per request than everything else
            # here; the JSON is read leniently below instead.
            text = await attempt(self._client.get().post("/chat/completions", cast_to=str, body=body),
                                 timeout_s=self.timeout_s, sdk=openai, where=self.base_url or "https://api.openai.com/v1")
        except openai.APIStatusError as e:
            status = e.status_code
            msg = error_message(e)
            if status == 400 and (param := unsupported_param(e)):
                raise _Unsupported(param, f"HTTP 400: {msg}", body) from None
            if status == 404:
                msg += not_found_hint(self._base)
            raise status_failure(e, f"HTTP {status}: {msg}", credentials=f"set OPENAI_API_KEY to a valid key for "
                                 f"{self.base_url or 'OpenAI'} (or give --judge-api-key)") from None
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as e:
            if isinstance(text, str) and looks_like_html(text):
                raise PermanentError(
                    f"the server answered with an HTML page ({html_title(text)}), not a chat completion: is "
                    f"{self.base_url} the API's base URL (OpenAI-compatible servers serve it under /v1)?") from None
            raise TransientError(f"unreadable response body ({type(e).__name__})") from None
        try:
            return chat_response(data)
        except PermanentError as e:
            if e.status != 404:
                raise
            raise PermanentError(e.reason + not_found_hint(self._base), status=404) from None

    async def aclose(self) -> None:
        await self._client.aclose()


class _Unsupported(Exception):
    """A 400 refusing one request parameter (`param`) that the backend can change."""

    def __init__(self, param: str, reason: str, sent: dict[str, Any]) -> None:
        super().__init__(reason)
        self.param = param
        self.reason = reason
        self.sent = sent  # the body that was refused


class TransformersBackend:
    """A local `transformers` causal LM answering through its chat template (greedy by default).

    Give a loaded `model` and `tokenizer` (the tokenizer needs a chat template), or use
    `TransformersBackend.from_pretrained(path)`. Generation runs in a worker thread, one request
    at a time. Token counts are exact; the cost is 0 unless a price is configured."""

    kind = "transformers"
    sees_template = True

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
        self._fold_system = False  # True once the chat template refused a system turn (`wire.fold_system`)

    @classmethod
    def from_pretrained(cls, path: str, *, device: str | None = None, dtype: str = "auto") -> "TransformersBackend":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from saes.devices import check_device

        check_device(device, field="judge_device")  # a config file's judge.device too: before the model loads
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

        enc = self._render(request.messages)
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
        # a byte-fallback judge (Mistral, Llama-2) may sample a stray byte in a run of byte tokens: HF's
        # decode made the whole run U+FFFD; the one decoding keeps the run's characters
        from saes.bytefallback import text_of

        text = text_of(self._tok, new.tolist(), skip_special_tokens=True)
        n_new = int(new.shape[0])
        finish = "length" if n_new >= int(request.max_tokens) else "stop"
        # a template that opens the thinking block leaves the reply inside it: its tag goes back in front
        text = thinking_opened(self._tok.decode(input_ids[0, -8:], skip_special_tokens=False)) + text
        return ChatResponse(text, int(input_ids.shape[1]), n_new, None, finish)

    def _render(self, messages):
        """The chat template's encoding of `messages`; a template that refuses a system turn (Gemma 2,
        Mistral-7B-Instruct, Llama-2 with no <<SYS>> support) gets it at the head of the first user turn,
        said once; any other template error is the request's failure, in the template's words."""
        from jinja2 import TemplateError

        from saes.errors import note

        def render(msgs):
            return self._tok.apply_chat_template([dict(m) for m in msgs], add_generation_prompt=True,
                                                 return_tensors="pt", return_dict=True)

        if not self._fold_system:
            try:
                return render(messages)
            except TemplateError as e:
                if not (refuses_system_role(str(e)) and any(m["role"] == "system" for m in messages)):
                    raise PermanentError(f"the judge model's chat template refused the request: {e}") from None
                self._fold_system = True
                note(f"judge model {self.model}'s chat template takes no system turn ({e}); its instructions are "
                     "sent at the head of the first user turn instead")
        try:
            return render(fold_system(messages))
        except TemplateError as e:
            raise PermanentError(f"the judge model's chat template refused the request: {e}") from None

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
