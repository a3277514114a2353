"""From a validated API request to the engine's rows: prompts tokenized (chat ones through the
tokenizer's chat template), edits / presets / stop triggers resolved against the model's SAE and
store, sampling settings per choice, every bound of the server's `Limits` checked.

Each refusal is an `ApiError` with the HTTP status and the parameter at fault; its message says
how to fix the request. Choice i of a request with `seed` s samples with seed s + i (so n=2 with
seed 5 gives the choices of seed 5 and seed 6); without a seed each choice draws a fresh one and
reports it (`choices[i].steering.seed`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from saes.bos import prompt_tokens
from saes.bytefallback import text_of
from saesteer.api.protocol import ChatRequest, CompletionRequest, EditIn, SteeringIn, TriggerIn
from saesteer.api.service import OVERRIDE_HINT, ServedModel

__all__ = ["ApiError", "Prepared", "prepare_completion", "prepare_chat", "END_OF_TURN_TOKENS",
           "IGNORED_TEMPLATE_KWARGS_HEADER", "ignored_template_kwargs_header"]

# end-of-turn markers of common chat templates: a chat reply also ends at these
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>")
# the response header naming the chat_template_kwargs a model's template does not read (dropped, as vLLM drops them)
IGNORED_TEMPLATE_KWARGS_HEADER = "X-Saesteer-Ignored-Chat-Template-Kwargs"
# its value's bound: 16 names of 64 emoji (12 characters each once escaped for the header) would make
# 12 KB, past what proxies (nginx: 4 KB) and clients (aiohttp: 8 KB) take in one header
IGNORED_HEADER_MAX_CHARS = 1024

log = logging.getLogger("saesteer.api")


def ignored_template_kwargs_header(names: list[str]) -> dict[str, str]:
    """The response header naming the dropped `names` (none: no header): a JSON list, ASCII with
    control characters escaped so no name can break the header; at most IGNORED_HEADER_MAX_CHARS,
    the names that do not fit counted in a last entry ("... 3 more: see the server's log")."""
    if not names:
        return {}
    value = json.dumps(names)
    shown = len(names)
    while len(value) > IGNORED_HEADER_MAX_CHARS:  # ends: the count alone fits
        shown -= 1
        value = json.dumps(names[:shown] + [f"... {len(names) - shown} more: see the server's log"])
    return {IGNORED_TEMPLATE_KWARGS_HEADER: value}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


@dataclass
class Prepared:
    kind: str  # 'completion' | 'chat'
    model_id: str
    rows: list[Any]
    n: int
    stream: bool
    include_usage: bool
    logprobs: int | None  # None: no logprobs
    echo_texts: list[str] = field(default_factory=list)  # per prompt (completions with echo)
    steering_summary: dict[str, Any] | None = None
    ignored_template_kwargs: list[str] = field(default_factory=list)  # chat_template_kwargs the template never reads


def _steer_limits(limits):
    from steering import SteerLimits

    return SteerLimits(max_abs_value=float(limits.max_abs_strength), max_multiple=float(limits.max_abs_multiple),
                       max_abs_scale=float(limits.max_abs_multiple))


class _Peers:
    """The served models over the request's transformer (the request's own first), each with its
    Neuronpedia latents: an edit's latents are read against the SAE the edit names, and the edits of
    each SAE resolve against it and its store."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        # the request's own first: a Neuronpedia latent of an SAE two stores share stays the request's
        self.by_id = {served.id: served, **served.peers}
        self._owners: dict[str, Any] = {}

    def check(self, name: str | None, what: str) -> str:
        """The id of the served model `name` (None: the request's), refused when not one of these."""
        from steering.spec import SteeringError

        if name is None:
            return self.served.id
        if name not in self.by_id:
            raise SteeringError(f"{what}: {name!r} is not a model served over the same transformer as "
                                f"{self.served.id!r}; name one of {', '.join(self.by_id)}")
        return name

    def owners(self, sae_id: str):
        """The Neuronpedia latents of that served model's SAE, as its indices
        (`saes.formats.neuronpedia.LatentOwners`, read once per request); a refusal names the models
        served beside it."""
        from features.neuronpedia_import import store_latent_owners

        if sae_id not in self._owners:
            others = [p for p in self.by_id if p != sae_id]
            beside = f", or name a model served beside it whose SAE that is ({', '.join(others)})" if others else ""
            self._owners[sae_id] = store_latent_owners(self.by_id[sae_id].store, whose=f"the SAE of model {sae_id!r}",
                                                       fix=f"give a latent of that SAE{beside}")
        return self._owners[sae_id]

    def of_neuronpedia(self, ref) -> str:
        """The served model whose SAE a Neuronpedia latent (`NeuronpediaRef` or None) names; the
        request's when none does (its refusal then names it and the others)."""
        if ref is not None:
            for sae_id in self.by_id:
                if ref.id in self.owners(sae_id).ids.values():
                    return sae_id
        return self.served.id

    def group(self, edits: list[Any]) -> dict[str, list[Any]]:
        """The edits by the served model whose SAE they name (the request's own first: an edit naming
        none is of it); each group resolves against its own SAE and store."""
        groups: dict[str, list[Any]] = {self.served.id: []}
        for e in edits:
            groups.setdefault(self.check(e.sae, e.describe()), []).append(e)
        return {k: v for k, v in groups.items() if v}


def _trigger(t: TriggerIn | str, owners):
    from steering.spec import Trigger

    if isinstance(t, str):
        return Trigger.parse(owners.trigger(t))
    return Trigger(owners.latent(t.latent)[1], t.above, t.unit)


def _edit(e: EditIn | str, peers: _Peers):
    """An edit of the request in saesteer's terms: its latent (and its trigger's, which reads the
    same SAE) resolved against the SAE it names (`"sae"`, `ID/...`, or a Neuronpedia latent of a
    served SAE), so a Neuronpedia latent of one SAE is never read as an index of another."""
    from saes.formats.neuronpedia import edit_sae_name, parse_ref, split_latent_head
    from steering.spec import FeatureEdit, parse_edit

    if isinstance(e, str):
        head = split_latent_head(e)
        if head is None:
            return parse_edit(peers.owners(peers.check(edit_sae_name(e), e)).edit(e))
        sae_id = peers.of_neuronpedia(head[0])
        text = peers.owners(sae_id).edit(e)
        return parse_edit(text if sae_id == peers.served.id else f"{sae_id}/{text}")
    if e.sae is not None:
        sae_id = peers.check(e.sae, f"the edit of latent {e.latent!r}")
    else:
        sae_id = peers.of_neuronpedia(None if isinstance(e.latent, int) else parse_ref(str(e.latent)))
    owners = peers.owners(sae_id)
    positions = tuple(e.positions) if isinstance(e.positions, list) else e.positions
    return FeatureEdit(owners.latent(e.latent)[1], e.op, None if e.op == "ablate" else e.value,
                       e.unit if e.op in ("add", "clamp") else "raw", positions,
                       e.sae or (None if sae_id == peers.served.id else sae_id),
                       _trigger(e.when, owners) if e.when is not None else None)


def _preset(spec: str | dict, peers: _Peers):
    """The request's preset (a name in its store, or a preset object) checked against its SAE. A
    preset of a store served beside it is refused naming that model: a preset's stop triggers read
    the request's SAE, so such a request goes to that model (its other edits naming `"sae"`)."""
    from steering.presets import Preset, PresetMismatchError
    from steering.resolve import expand_presets
    from steering.spec import SteeringError

    served = peers.served
    others = [p for p in peers.by_id.values() if p.id != served.id]

    def hint(owner: str | None) -> str:
        return "" if owner is None else (
            f"; it belongs to model {owner!r}, served beside it over the same transformer: send the request to "
            f"model {owner!r} (edits of {served.id!r}'s SAE then give \"sae\": {served.id!r})")

    try:
        preset = served.preset(spec) if isinstance(spec, str) else Preset.from_json(spec)
    except SteeringError as e:
        owner = next((p.id for p in others if isinstance(spec, str) and spec in p.preset_names()), None)
        raise SteeringError(str(e) + hint(owner)) from None
    try:
        edits = expand_presets(served.model, {served.id: served.sae}, [preset],
                               allow_model_mismatch=served.allow_model_mismatch,
                               fingerprints={served.id: served.fingerprint}, model_override=OVERRIDE_HINT)
    except PresetMismatchError as e:
        owner = next((p.id for p in others if p.fingerprint == preset.sae_fingerprint), None)
        raise PresetMismatchError(str(e) + hint(owner)) from None
    return preset, edits


def resolve_steering(spec: SteeringIn | None, served: ServedModel, limits) -> tuple[Any, dict[str, Any] | None]:
    """(RowSteering or None, a summary for the response) for a request's `steering` field."""
    if spec is None or (not spec.edits and spec.preset is None and not spec.stop_when):
        return None, None
    from saes.formats.neuronpedia import LatentRefError
    from saes.identity import ModelIdentityError
    from steering.rowedits import RowEdit, RowSteering, StopTrigger
    from steering.resolve import check_latent_index, resolve_edits
    from steering.spec import SteeringError, lookup_typical_max

    items: list[Any] = []
    preset = None
    stops = []
    peers = _Peers(served)
    owners = peers.owners(served.id)
    try:
        if spec.preset is not None:
            preset, items = _preset(spec.preset, peers)
        items += [_edit(e, peers) for e in spec.edits]
        # an edit naming no SAE is of the request's model; one may name another store over the same transformer
        resolved = []
        for sae_id, group in peers.group(items).items():
            peer = peers.by_id[sae_id]
            resolved += resolve_edits(
                served.model, {peer.id: peer.sae}, group, typical_max=peer.typical_max, limits=_steer_limits(limits),
                allow_model_mismatch=served.allow_model_mismatch, chat_positions=True,
                fingerprints={peer.id: peer.fingerprint}, model_override=OVERRIDE_HINT)
        triggers = (preset.stop_triggers() if preset is not None else []) + [_trigger(t, owners) for t in spec.stop_when]
        for t in triggers:
            check_latent_index(t.latent, served.sae, served.id, f"stop_when {t.describe()}: latent")
            above = t.above
            if t.unit == "max_act":
                tmax = lookup_typical_max(served.typical_max, t.latent)
                if tmax is None:
                    raise SteeringError(f"stop_when {t.describe()}: latent {t.latent} has no typical max activation "
                                        f"in the store; give a raw threshold")
                above *= tmax
            stops.append(StopTrigger(served.id, t.latent, above, t.describe()))
    except (SteeringError, ModelIdentityError, LatentRefError) as e:  # bad edits; a preset of another SAE or model
        raise ApiError(400, str(e), "steering") from None
    if len(resolved) > limits.max_edits:
        raise ApiError(400, f"steering.edits: at most {limits.max_edits} edits per request (got {len(resolved)}, "
                            f"presets included)", "steering")
    edits = [RowEdit(r.sae_name, r.latent, r.op, r.value, r.positions, r.trigger, r.describe()) for r in resolved]
    summary = {"edits": [r.describe() for r in resolved], "stop_when": [s.label for s in stops]}
    if preset is not None:
        summary["preset"] = preset.name
    return RowSteering(edits, stops), summary


def _check_positions(steering, layouts, served: ServedModel) -> None:
    """Compile the edits' positions against each prompt now: a role on a plain prompt, or a turn
    the chat does not have, is the caller's error (400), not the batch's."""
    if steering is None:
        return
    from steering.rowedits import check_positions
    from steering.spec import SteeringError

    for layout in layouts:
        try:
            check_positions(steering, layout)
        except SteeringError as e:
            raise ApiError(400, str(e), "steering") from None


def _common(req, served: ServedModel, limits, default_max: int | None, n_prompts: int) -> dict[str, Any]:
    if req.model != served.id:  # routes pick `served` by req.model; a safety net
        raise ApiError(404, f"model {req.model!r} not found", "model", "model_not_found")
    if req.stream_options is not None and not req.stream:  # OpenAI's refusal, in its words
        raise ApiError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                       "stream_options")
    n = req.n or 1
    if n * n_prompts > limits.max_choices:
        raise ApiError(400, f"n: at most {limits.max_choices} generations per request (prompts x n; got "
                            f"{n * n_prompts})", "n")
    # newer clients send max_completion_tokens (chat), older ones max_tokens; errors name the one sent
    newer = getattr(req, "max_completion_tokens", None)  # chat requests only
    if newer is not None and req.max_tokens is not None and newer != req.max_tokens:
        raise ApiError(400, f"max_completion_tokens ({newer}) and max_tokens ({req.max_tokens}) disagree; send one "
                            f"of them (max_tokens is the older name)", "max_completion_tokens")
    field_name = "max_completion_tokens" if newer is not None else "max_tokens"
    given = newer if newer is not None else req.max_tokens
    max_tokens = given or default_max
    if max_tokens is not None and max_tokens > limits.max_new_tokens:
        raise ApiError(400, f"{field_name}: at most {limits.max_new_tokens} on this server (got {max_tokens})", field_name)
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    bias = []
    vocab = int(getattr(served.model.cfg, "d_vocab", 0) or 0)
    for k, v in (req.logit_bias or {}).items():
        try:
            tok = int(k)
        except ValueError:
            raise ApiError(400, f"logit_bias: keys are token ids, got {k!r}", "logit_bias") from None
        if not 0 <= tok < vocab:
            raise ApiError(400, f"logit_bias: token id {tok} is not in the vocabulary (0..{vocab - 1})", "logit_bias")
        bias.append((tok, float(v)))
    if len(bias) > 300:
        raise ApiError(400, "logit_bias: at most 300 tokens", "logit_bias")
    return dict(n=n, max_tokens=max_tokens, max_tokens_field=field_name,
                max_tokens_default=None if given else default_max, stop=tuple(stop), bias=tuple(bias))


def eos_ids(model, chat: bool) -> tuple[int, ...]:
    """The tokens that end a reply: the model's stop tokens (`steering.generation.stop_token_ids`:
    the tokenizer's eos and generation_config.json's eos_token_id, as every generation path stops),
    and for chat the end-of-turn markers of common templates."""
    from steering.generation import stop_token_ids

    ids = set(stop_token_ids(model))
    if chat:
        vocab = model.tokenizer.get_vocab() if hasattr(model.tokenizer, "get_vocab") else {}
        ids.update(int(vocab[t]) for t in END_OF_TURN_TOKENS if t in vocab)
    return tuple(sorted(ids))


def _temperature(req) -> float:
    """The sampling temperature; `top_p=0` (accepted by OpenAI) is greedy: a nucleus of no mass
    keeps only the most likely token, which is what temperature 0 picks."""
    if req.top_p == 0:
        return 0.0
    return 1.0 if req.temperature is None else float(req.temperature)


def _rows(prompts, layouts, served: ServedModel, req, c: dict, steering, logprobs, stream: bool, chat: bool) -> list:
    from steering.engine import Row
    from steering.sampling import SamplingParams
    from steering.spec import SteeringError

    n_ctx = getattr(served.model.cfg, "n_ctx", None)
    eos = () if req.ignore_eos else served.stop_ids(chat)
    rows = []
    for ids, layout in zip(prompts, layouts):
        room = (n_ctx - len(ids)) if n_ctx else None
        max_tokens = c["max_tokens"]
        if max_tokens is None:  # chat without a limit: as much as the server and the context allow
            max_tokens = min(c["limit"], room) if room is not None else c["limit"]
        if room is not None and room < 1:  # no max_tokens fits: the prompt is at fault
            raise ApiError(400, f"This model's maximum context length is {n_ctx} tokens, and the prompt is {len(ids)} "
                                f"tokens, which leaves no room for the completion; shorten it to at most {n_ctx - 1} "
                                f"tokens", "messages" if chat else "prompt", "context_length_exceeded")
        if room is not None and len(ids) + max_tokens > n_ctx:
            raise _over_context(n_ctx, len(ids), max_tokens, c, "messages" if chat else "prompt")
        for i in range(c["n"]):
            try:
                params = SamplingParams(
                    max_new_tokens=int(max_tokens),
                    temperature=_temperature(req),
                    top_p=1.0 if req.top_p in (None, 0) else float(req.top_p),
                    top_k=req.top_k,
                    seed=None if req.seed is None else (req.seed + i) % (2**63),
                    frequency_penalty=float(req.frequency_penalty or 0.0),
                    presence_penalty=float(req.presence_penalty or 0.0),
                    logit_bias=c["bias"],
                    logprobs=logprobs,
                    stop=c["stop"],
                    stop_token_ids=eos,
                )
            except SteeringError as e:
                raise ApiError(400, str(e)) from None
            rows.append(Row(ids, params, steering, layout, stream=stream, offsets=logprobs is not None and not chat))
    return rows


def _over_context(n_ctx: int, n_prompt: int, max_tokens: int, c: dict, prompt_word: str) -> ApiError:
    """A prompt that fits with fewer new tokens, refused in OpenAI's words up to "Please reduce" (clients
    match them, some read the numbers), then the most that fits and the field that asks for it."""
    field = c["max_tokens_field"]
    default = f", {c['max_tokens_default']} when not given" if c["max_tokens_default"] else ""
    return ApiError(400, f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                         f"{n_prompt + max_tokens} tokens ({n_prompt} in the {prompt_word}, {max_tokens} in the "
                         f"completion). Please reduce the length of the {prompt_word} or completion: ask for at most "
                         f"{n_ctx - n_prompt} tokens ({field}{default})", field, "context_length_exceeded")


def prepare_completion(req: CompletionRequest, served: ServedModel, limits) -> Prepared:
    from steering.rowedits import RowLayout

    if req.suffix:
        raise ApiError(400, "suffix is not supported by this server", "suffix")
    if req.best_of is not None and req.best_of != (req.n or 1):
        raise ApiError(400, "best_of other than n is not supported by this server", "best_of")
    if req.echo and req.logprobs is not None:
        raise ApiError(400, "echo together with logprobs (log-probabilities of the prompt) is not supported", "echo")
    tok = served.model.tokenizer
    p = req.prompt
    if isinstance(p, str):
        texts, id_lists = [p], None
    elif p and all(isinstance(x, int) for x in p):
        texts, id_lists = None, [list(p)]
    elif p and all(isinstance(x, str) for x in p):
        texts, id_lists = list(p), None
    elif p and all(isinstance(x, list) for x in p):
        texts, id_lists = None, [list(x) for x in p]
    else:
        raise ApiError(400, "prompt must be a string, a list of strings, a list of token ids or a list of such lists",
                       "prompt")
    vocab = int(getattr(served.model.cfg, "d_vocab", 0) or 0)
    if texts is not None:
        for t in texts:
            if len(t) > limits.max_text_chars:
                raise ApiError(400, f"prompt: at most {limits.max_text_chars} characters (got {len(t)})", "prompt")
        # never truncated: an overlong prompt is refused below with its real length
        id_lists = [prompt_tokens(served.model, t, served.prepend_bos, truncate=False)[0].tolist() for t in texts]
    else:
        for ids in id_lists:
            if not ids or any(not 0 <= i < vocab for i in ids):
                raise ApiError(400, f"prompt: token ids must be in the vocabulary (0..{vocab - 1}) and a prompt must not be empty", "prompt")
    for ids in id_lists:
        if not ids:
            raise ApiError(400, "prompt: an empty prompt leaves the model no token to start from (its tokenizer has "
                                "no BOS token); give a prompt", "prompt")
    c = _common(req, served, limits, 16, len(id_lists))
    c["limit"] = limits.max_new_tokens
    steering, summary = resolve_steering(req.steering, served, limits)
    layouts = [RowLayout(len(ids)) for ids in id_lists]
    _check_positions(steering, layouts, served)
    rows = _rows(id_lists, layouts, served, req, c, steering, req.logprobs, bool(req.stream), chat=False)
    echo = []
    if req.echo:
        echo = list(texts) if texts is not None else [text_of(tok, ids) for ids in id_lists]  # as replies read
    return Prepared("completion", served.id, rows, c["n"], bool(req.stream),
                    bool(req.stream_options and req.stream_options.include_usage), req.logprobs, echo, summary)


def prepare_chat(req: ChatRequest, served: ServedModel, limits) -> Prepared:
    from steering.chat import check_template_kwargs, render_chat, template_variables, unread_template_kwargs
    from steering.rowedits import RowLayout
    from steering.spec import SteeringError

    if req.tools or req.functions or req.tool_choice not in (None, "none") or req.function_call not in (None, "none"):
        raise ApiError(400, "tools and function calling are not supported by this server", "tools")
    if req.response_format is not None and req.response_format.get("type") not in (None, "text"):
        raise ApiError(400, "response_format other than text is not supported by this server", "response_format")
    msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(), **m.template_fields()}
            for m in req.messages]
    # what the template may write counts: names and reasoning too (the reasoning once, under either name)
    chars = sum(len(m["content"]) + len(m.get("name", "")) + len(m.get("reasoning", "")) for m in msgs)
    if chars > limits.max_text_chars:
        raise ApiError(400, f"messages: at most {limits.max_text_chars} characters in all (got {chars})", "messages")
    cont = bool(req.continue_final_message)
    if cont and req.add_generation_prompt:  # vLLM's refusal, in its words
        raise ApiError(400, "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
                       "continue_final_message")
    if cont and msgs[-1]["role"] != "assistant":
        raise ApiError(400, f"continue_final_message continues the last message, which must be the assistant's (a "
                            f"prefill); the last message here is from {msgs[-1]['role']!r}", "continue_final_message")
    tok = served.model.tokenizer
    template_kwargs = dict(req.chat_template_kwargs or {})
    try:
        # variables the template never reads are dropped, as vLLM drops them (chat clients such as Open
        # WebUI send enable_thinking to every model); the log and a response header say so
        ignored = unread_template_kwargs(tok, template_kwargs)
        for key in ignored:
            del template_kwargs[key]
        check_template_kwargs(tok, template_kwargs)  # those the server sets itself are refused
    except SteeringError as e:
        raise ApiError(400, f"chat_template_kwargs: {e}", "chat_template_kwargs") from None
    new = served.not_yet_told(ignored)
    if new:  # one line per model and variable, not one per request (Open WebUI sends it every time)
        log.warning("chat_template_kwargs: the chat template of %r does not read %s, so %s ignored (as vLLM "
                    "does); the variables it reads: %s", served.id, ", ".join(map(repr, new)),
                    "it is" if len(new) == 1 else "they are", ", ".join(template_variables(tok)) or "none")
    try:
        chat = render_chat(tok, msgs, continue_final_message=cont, template_kwargs=template_kwargs,
                           add_generation_prompt=not cont and req.add_generation_prompt is not False)
    except SteeringError as e:
        raise ApiError(400, str(e), "messages") from None
    c = _common(req, served, limits, None, 1)
    c["limit"] = limits.max_new_tokens
    steering, summary = resolve_steering(req.steering, served, limits)
    layout = RowLayout(len(chat.token_ids), chat.roles, chat.turns, chat.n_messages, chat.why_no_roles)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    if req.top_logprobs and not req.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    _check_positions(steering, [layout], served)
    rows = _rows([chat.token_ids], [layout], served, req, c, steering, logprobs, bool(req.stream), chat=True)
    return Prepared("chat", served.id, rows, c["n"], bool(req.stream),
                    bool(req.stream_options and req.stream_options.include_usage), logprobs, [], summary, ignored)
