"""The request shapes of the OpenAI-compatible API, with the steering extension.

Requests follow OpenAI's /v1/completions and /v1/chat/completions (the `openai` client sends
them unchanged); steering rides along as one extra field, `steering` (the client's
`extra_body={"steering": {...}}`):

    "steering": {
      "edits": [{"latent": 123, "op": "clamp", "value": 2, "unit": "max_act", "positions": "generated",
                 "when": {"latent": 77, "above": 1.5}},
                "45:add=4@role:user"],                       # or the CLI's text form
      "preset": "ocean",                                     # a preset saved in the model's feature store
      "stop_when": [{"latent": 77, "above": 3.0}, "90>0.5x"]  # end a choice when a latent fires on a generated token
    }

A latent (in an edit, its trigger or a stop trigger, objects or text alike) may also be named as
Neuronpedia names it, `"gpt2-small/6-res-jb/123"` or its page address, when it is a latent of the
model's SAE.

`"feature"` is accepted as an alias of `"latent"` (the key's name before it was renamed), so
older requests keep working; the schema shows only `latent`.

More extensions, as other servers have them: `top_k`, `ignore_eos` (keep generating past
end-of-text: fixed-length outputs for benchmarks), and vLLM's `continue_final_message` with
`add_generation_prompt` (chat: continue the last, assistant, message: a prefill) and
`chat_template_kwargs` (variables for the chat template, such as Qwen3's `enable_thinking`).
Fields OpenAI defines that this server does not implement are refused by name (never silently
ignored), except purely informational ones (`user`, `metadata`, `store`, `service_tier`, ...). Hard ceilings are in the field
constraints; the server's configured `Limits` are checked in `saesteer.api.prepare`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from saesteer.web.config import HARD_LIMITS

MAX_STOP = 4
MAX_STOP_CHARS = 200
MAX_LOGIT_BIAS = 300
MAX_N = 16

Positions = Union[str, list[int]]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# a latent's index; "feature" is its older name, still accepted in requests (hidden from the schema)
_LATENT = AliasChoices("latent", "feature")
# or a Neuronpedia latent of the model's SAE (its id or page address)
Latent = Union[Annotated[int, Field(ge=0, le=2**31 - 1)], Annotated[str, Field(min_length=1, max_length=200)]]
_LATENT_HELP = "latent index (of the model's SAE), or its Neuronpedia id or address (gpt2-small/6-res-jb/123)"


class TriggerIn(_In):
    latent: Latent = Field(validation_alias=_LATENT, description=_LATENT_HELP)
    above: float = Field(allow_inf_nan=False, ge=-1e6, le=1e6, description="threshold on its activation")
    unit: Literal["raw", "max_act"] = Field("raw", description="raw units, or multiples of the latent's typical max")


class EditIn(_In):
    latent: Latent = Field(validation_alias=_LATENT, description=_LATENT_HELP)
    op: Literal["add", "clamp", "scale", "ablate"] = "clamp"
    value: Optional[float] = Field(None, allow_inf_nan=False, ge=-1e6, le=1e6,
                                   description="add/clamp: the amount (see unit); scale: the factor; ablate: none")
    unit: Literal["raw", "max_act"] = Field("raw", description="raw activation units, or multiples of the typical max")
    positions: Positions = Field("all", description="all | prompt | generated | last | token indices | role:NAME | turn:I")
    when: Optional[TriggerIn] = Field(None, description="apply only where this latent is above its threshold")
    sae: Optional[str] = Field(None, max_length=64, description="the model id (store) whose SAE the latent is of, "
                               "when not the request's model: another store over the same transformer")


class SteeringIn(_In):
    edits: list[Union[EditIn, Annotated[str, Field(max_length=200)]]] = Field(
        default_factory=list, max_length=int(HARD_LIMITS["max_edits"]))
    preset: Optional[Union[Annotated[str, Field(max_length=64)], dict[str, Any]]] = Field(
        None, description="a preset name (saved in the model's feature store) or a whole preset record")
    stop_when: list[Union[TriggerIn, Annotated[str, Field(max_length=64)]]] = Field(default_factory=list, max_length=16)


class StreamOptions(_In):
    include_usage: Optional[StrictBool] = None
    include_obfuscation: Optional[StrictBool] = None  # sent by newer clients; ignored (nothing to hide)


class _Common(_In):
    model: str = Field(min_length=1, max_length=200)
    max_tokens: Optional[StrictInt] = Field(None, ge=1, le=int(HARD_LIMITS["max_new_tokens"]))
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: Optional[float] = Field(None, ge=0.0, le=1.0, allow_inf_nan=False, description="0: greedy")
    top_k: Optional[StrictInt] = Field(None, ge=1, le=100000, description="extension: sample among the k most likely")
    n: Optional[StrictInt] = Field(None, ge=1, le=MAX_N)
    stream: Optional[StrictBool] = None
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[Annotated[str, Field(max_length=MAX_STOP_CHARS)],
                         Annotated[list[Annotated[str, Field(max_length=MAX_STOP_CHARS)]], Field(max_length=MAX_STOP)]]] = None
    seed: Optional[StrictInt] = Field(None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False)
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False)
    logit_bias: Optional[dict[str, Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False)]]] = None
    ignore_eos: Optional[StrictBool] = Field(None, description="extension: do not stop at end-of-text")
    steering: Optional[SteeringIn] = None
    # informational fields OpenAI clients may send; accepted and ignored
    user: Optional[str] = None
    metadata: Optional[dict[str, Any]] = None
    store: Optional[bool] = None
    service_tier: Optional[str] = None
    safety_identifier: Optional[str] = None
    prompt_cache_key: Optional[str] = None


class CompletionRequest(_Common):
    prompt: Union[str, list[str], list[StrictInt], list[list[StrictInt]]]
    echo: Optional[StrictBool] = None
    logprobs: Optional[StrictInt] = Field(None, ge=0, le=20)
    best_of: Optional[StrictInt] = Field(None, ge=1, le=MAX_N)
    suffix: Optional[str] = None


class TextPart(_In):
    type: Literal["text"]
    text: str
    # LiteLLM's / Anthropic's prompt-caching hint for the provider: no effect on the text; ignored
    cache_control: Optional[dict[str, Any]] = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. 'refusal', 'annotations' on echoed messages

    role: Literal["system", "developer", "user", "assistant"]
    content: Optional[Union[str, list[TextPart]]] = None
    # given to the chat template as message fields; the template decides whether the model sees them
    # (as transformers and vLLM do: agent frameworks put `name` on every message)
    name: Optional[str] = Field(None, max_length=256)
    reasoning_content: Optional[str] = Field(None, description="an assistant message's reasoning, for templates "
                                                               "that write it (Qwen3)")
    reasoning: Optional[str] = Field(None, description="the same, by its newer name (vLLM, OpenRouter)")
    # an assistant's calls of tools in the history: refused unless empty (dropped, the chat would read
    # as if the assistant had said nothing)
    tool_calls: Optional[list[Any]] = None
    function_call: Optional[Any] = None

    @field_validator("tool_calls", "function_call")
    @classmethod
    def _no_tool_calls(cls, v):
        if v:
            raise ValueError("an assistant message that calls tools needs tool calling, which this server does not "
                             "do; leave the tool calls out of the history")
        return v

    @field_validator("role", mode="before")
    @classmethod
    def _no_tool_results(cls, v):
        if v in ("tool", "function"):
            raise ValueError(f"a {v!r} message (a tool's result) needs tool calling, which this server does not do")
        return v

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, v):
        # refused here, in one line: left to the union, a bad part reads as two errors (not a string;
        # not a list of text parts)
        if isinstance(v, list):
            for i, part in enumerate(v):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                if kind != "text":  # the name is the client's: cut, the refusal stays one line
                    raise ValueError(f"only text content parts are supported (got {str(kind)[:40]!r})")
                if not isinstance(part.get("text"), str):
                    raise ValueError(f"part {i}: a text part needs its 'text', a string")
                unknown = sorted(map(str, set(part) - set(TextPart.model_fields)))
                if unknown:
                    raise ValueError(f"part {i}: {', '.join(k[:40] for k in unknown[:3])}: not supported by this "
                                     f"server (or misspelt)")
        return v

    def template_fields(self) -> dict[str, str]:
        """The fields beyond role and content that go to the chat template, where given: `name`, and
        the reasoning under both its names (vLLM sets both; Qwen3's template reads
        `reasoning_content`, newer ones `reasoning`)."""
        out = {"name": self.name} if self.name is not None else {}
        reasoning = self.reasoning if self.reasoning is not None else self.reasoning_content
        if reasoning is not None:
            out.update(reasoning=reasoning, reasoning_content=reasoning)
        return out

    def text(self) -> str:
        """The content as one string; text parts joined by line breaks, as vLLM joins them (joined
        with nothing, ["Hello", "world"] would read "Helloworld")."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content)


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1, max_length=256)
    max_completion_tokens: Optional[StrictInt] = Field(None, ge=1, le=int(HARD_LIMITS["max_new_tokens"]))
    logprobs: Optional[StrictBool] = None
    top_logprobs: Optional[StrictInt] = Field(None, ge=0, le=20)
    response_format: Optional[dict[str, Any]] = None
    tools: Optional[list[Any]] = None
    tool_choice: Optional[Any] = None
    parallel_tool_calls: Optional[bool] = None
    functions: Optional[list[Any]] = None
    function_call: Optional[Any] = None
    # vLLM's names: continue the last message, the assistant's, instead of starting a new turn (a prefill)
    continue_final_message: Optional[StrictBool] = Field(
        None, description="extension (vLLM): the last message, the assistant's, is left open and the reply continues "
                          "it (a prefill); no generation prompt is added")
    add_generation_prompt: Optional[StrictBool] = Field(
        None, description="extension (vLLM): false renders the chat without the opening of the assistant's turn")
    chat_template_kwargs: Optional[dict[Annotated[str, Field(max_length=64)], Any]] = Field(
        None, max_length=16, description="extension (vLLM): variables for the chat template, e.g. "
                                         "{\"enable_thinking\": false} (Qwen3); those the template does not "
                                         "read are ignored, as vLLM ignores them (named in the "
                                         "X-Saesteer-Ignored-Chat-Template-Kwargs header)")
