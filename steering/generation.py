"""Generation with TransformerLens, steered or not: batched (left padded), seeded, capped.

Shape key: B prompts, P padded prompt positions, T new tokens.

    res = generate(model, ["the ship", "in the forest"], GenerationConfig(max_new_tokens=20, seed=3))
    res.texts          # continuations only: res.prompts[i] + res.texts[i] reads as the model wrote it

Steered generation is `steering.session.SteeringSession.generate` (which calls `generate` with
the session); this module does not import the session: it asks of it only what
`SteeringContext` names. Steered vs unsteered side by side: `steering.comparison`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from saes.bos import padded_rows, prompt_tokens
from steering.config import GenerationConfig
from steering.inputs import Model, SAEs, named_saes
from steering.spec import Positions, SteeringError, SteeringWarning
from steering.textstream import TextAssembler


class PositionedEdit(Protocol):
    """An edit as generation sees it: where it applies, and how to name it in a message."""

    @property
    def positions(self) -> Positions: ...

    def describe(self) -> str: ...


class SteeringContext(Protocol):
    """What `generate` needs of the steering it runs inside (`steering.session.SteeringSession`)."""

    @property
    def active(self) -> bool: ...

    @property
    def edits(self) -> Sequence[PositionedEdit]: ...

    def prompt_length(self, n_positions: int | None) -> AbstractContextManager[None]: ...


@dataclass
class Generation:
    """Continuations of a batch of prompts."""

    prompts: list[str]
    texts: list[str]  # the continuations only, as they read after the prompt (`continuation_text`)
    tokens: Tensor  # [B, P + T] left-padded prompt tokens followed by the new tokens
    prompt_len: int  # P
    # each prompt's own length in tokens (BOS included when prepended), its row's pads before it;
    # (fluency masks the pads by it); None, a Generation built by hand: no row is read as padded
    prompt_lengths: list[int] | None = None

    @property
    def new_tokens(self) -> Tensor:
        return self.tokens[:, self.prompt_len :]

    @property
    def full_texts(self) -> list[str]:
        """Prompt and continuation: the continuation carries its own leading space or line break."""
        return [p + t for p, t in zip(self.prompts, self.texts)]


def as_prompts(prompts: str | Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    out = list(prompts)
    if not out or not all(isinstance(p, str) for p in out):
        raise SteeringError("prompts must be a string or a non-empty list of strings")
    return out


def _tokenize(model: Model, prompts: list[str], prepend_bos: bool | None, truncate: bool = False) -> Tensor:
    """Left-padded tokens of the prompts, by default never truncated (an overlong prompt is refused
    with its real length by the caller, not silently cut to the context)."""
    if getattr(model, "tokenizer", None) is None:
        raise SteeringError("the model has no tokenizer; pass a model loaded with one (saesteer.models.load_model)")
    return prompt_tokens(model, prompts, prepend_bos, padding_side="left", truncate=truncate)  # one BOS (saes.bos)


class PromptTokens(NamedTuple):
    tokens_BP: Tensor  # the prompts left-padded into one batch
    lengths: list[int]  # each prompt's own length in tokens (BOS included when prepended), without padding


def tokenize_prompts(model: Model, prompts: list[str], prepend_bos: bool | None, *,
                     truncate: bool = False) -> PromptTokens:
    """Each distinct prompt tokenized once, alone (its own length: a pad can share its id with a
    real token, GPT-2's <|endoftext|>, so it is not read back off a padded batch), then left-padded
    into the batch `_tokenize` gives for all of them at once. `truncate`: cut each to the model's
    context as `to_tokens` does (activations over a prompt set), else never."""
    rows: dict[str, Tensor] = {}
    for p in prompts:
        if p not in rows:
            rows[p] = _tokenize(model, [p], prepend_bos, truncate)[0]
    ordered = [rows[p] for p in prompts]
    return PromptTokens(padded_rows(ordered, model.tokenizer, "left"), [len(r) for r in ordered])


def positions_follow_mask(model: Model) -> bool:
    """Whether a forward given an attention mask also numbers each row's positions from it, so a
    left-padded row gives what its prompt gives alone. A HookedTransformer does (its positional
    embeddings read the mask); a TransformerBridge only where it hands the wrapped HF model
    mask-derived `position_ids` (its private `_accepts_derived_position_ids`: not a remote-code
    forward without them, nor an mRoPE or OPT model that derives its own). Unknown: assume not."""
    from transformer_lens.model_bridge import TransformerBridge

    if not isinstance(model, TransformerBridge):
        return True
    accepts = getattr(model, "_accepts_derived_position_ids", None)
    return bool(accepts()) if callable(accepts) else False


def prompt_lengths(model: Model, prompts: list[str], prepend_bos: bool | None) -> list[int]:
    """Each prompt's own length in tokens (BOS included when prepended), without padding."""
    return tokenize_prompts(model, prompts, prepend_bos).lengths


def check_positions_reachable(edits: Sequence[PositionedEdit], lengths: list[int], max_new_tokens: int) -> None:
    """Refuse an edit whose token indices lie outside every row's prompt + generation (it would
    change nothing); warn about single indices that no row reaches.

    `edits`: objects with `.positions` and `.describe()`; `lengths`: each prompt's token count."""
    import warnings

    if not lengths:
        return
    lo, hi = min(lengths), max(lengths)
    for e in edits:
        if not isinstance(e.positions, tuple):
            continue
        reach = []
        for i in e.positions:
            reach.append(any((i < n + max_new_tokens) if i >= 0 else (n + i >= 0) for n in lengths))
        span = (f"prompts of {lo} tokens" if lo == hi else f"prompts of {lo}-{hi} tokens") + \
               f" + {max_new_tokens} new tokens: indices 0..{hi + max_new_tokens - 1}, or -1..-{hi} from the prompt's end"
        if not any(reach):
            raise SteeringError(
                f"{e.describe()}: token position(s) {','.join(map(str, e.positions))} lie beyond every sequence "
                f"({span}), so the edit would change nothing; pick positions inside, or all / prompt / generated / last"
            )
        missed = [i for i, ok in zip(e.positions, reach) if not ok]
        if missed:
            warnings.warn(SteeringWarning(
                f"{e.describe()}: position(s) {','.join(map(str, missed))} lie beyond every sequence ({span}); "
                f"they are left unedited"), stacklevel=3)


def check_prompts_fit(model: Model, prompts: str | Sequence[str], config: GenerationConfig) -> Tensor:
    """The prompts' left-padded tokens; refuses an empty prompt with no token to start from and
    prompts + `config.max_new_tokens` longer than the model's context. `generate` checks so; a
    caller that shows a bar first checks before it starts (`steering.comparison.compare` keeps the
    tokens: `fitting_prompts`, then `generate_tokenized`)."""
    return fitting_prompts(model, as_prompts(prompts), config).tokens_BP


def fitting_prompts(model: Model, prompts: list[str], config: GenerationConfig) -> PromptTokens:
    """`check_prompts_fit`'s checks on the prompts tokenized once (`tokenize_prompts`): what
    `generate_tokenized` generates from."""
    got = tokenize_prompts(model, prompts, config.prepend_bos)
    P = int(got.tokens_BP.shape[1])
    if "" in prompts and got.lengths[prompts.index("")] == 0:
        raise SteeringError("an empty prompt leaves the model no token to start from (no BOS is prepended and its "
                            "tokenizer has no BOS token); give a prompt", field="prompts")
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if n_ctx is not None and P + config.max_new_tokens > n_ctx:
        one = len(prompts) == 1
        longest = f"the prompt ({P} tokens)" if one else _longest_prompt(prompts, got.lengths, P)
        it = "the prompt" if one else "it"
        fix = (f"ask for at most {n_ctx - P} new tokens or shorten {it}" if P < n_ctx else
               f"shorten {it} to at most {n_ctx - config.max_new_tokens} tokens")
        raise SteeringError(
            f"{longest} + max_new_tokens ({config.max_new_tokens}) = {P + config.max_new_tokens} "
            f"tokens exceeds the model's context of {n_ctx}; {fix}", field="max_new_tokens"
        )
    return got


def _longest_prompt(prompts: list[str], lengths: list[int], longest: int) -> str:
    """The first of several prompts that is `longest` tokens long, as a user finds it in a prompt file:
    its number (from 1) and first words."""
    i = lengths.index(longest)
    words = prompts[i].split()
    start = " ".join(words[:6]) + (" ..." if len(words) > 6 else "")
    return f"prompt {i + 1} of {len(prompts)} ({start!r}: {longest} tokens)"


def stop_token_ids(model: Model) -> tuple[int, ...]:
    """The tokens that end a generated text, as transformers' `generate` and vLLM end it: the
    tokenizer's eos and every id of the checkpoint's generation_config.json `eos_token_id` (an id or
    a list: Llama-3-Instruct lists <|eot_id|> beside the tokenizer's <|end_of_text|>, so its replies
    would otherwise run on past the end of the turn). The tokenizer's comes first: TransformerLens
    pads a finished row with it. One rule for `generate` (`saesteer steer`, sessions, the web
    playground) and the API."""
    ids: list[int] = []
    eos = getattr(getattr(model, "tokenizer", None), "eos_token_id", None)
    if eos is not None:
        ids.append(int(eos))
    # a TransformerBridge keeps the HF model, which read generation_config.json
    listed = getattr(getattr(getattr(model, "original_model", None), "generation_config", None), "eos_token_id", None)
    for i in [listed] if isinstance(listed, int) else listed or ():
        if int(i) not in ids:
            ids.append(int(i))
    return tuple(ids)


def generate(
    model: Model,
    prompts: str | Sequence[str],
    config: GenerationConfig | None = None,
    *,
    session: SteeringContext | None = None,
    **overrides: Any,
) -> Generation:
    """Generate continuations of `prompts` with `model.generate` (inside `session`'s steering if given).

    Keyword overrides replace fields of `config` (e.g. max_new_tokens=10, seed=3). Greedy text does
    not depend on the other prompts (left padding, masks and positions keep each row its own);
    sampled text does: `config.seed` seeds one stream for the whole batch (the API's engine,
    `steering.engine`, seeds each row), drawn from by the prompts of each length in turn where a
    frequency penalty samples them apart (see below)."""
    config = dataclasses.replace(config or GenerationConfig(), **overrides)
    prompts = as_prompts(prompts)
    return generate_tokenized(model, prompts, fitting_prompts(model, prompts, config), config, session=session)


def generate_tokenized(model: Model, prompts: list[str], tokenized: PromptTokens, config: GenerationConfig, *,
                       session: SteeringContext | None = None) -> Generation:
    """`generate` from `prompts` already tokenized and checked (`fitting_prompts` with this `config`):
    a caller generating twice from the same prompts (`steering.comparison.compare`, steered and not)
    tokenizes them once."""
    tokens_BP, lengths = tokenized
    P = int(tokens_BP.shape[1])
    if session is not None:
        check_positions_reachable(session.edits, lengths, config.max_new_tokens)
    kwargs: dict[str, Any] = dict(
        max_new_tokens=config.max_new_tokens,
        stop_at_eos=config.stop_at_eos,
        do_sample=config.do_sample,
        top_k=config.top_k,
        top_p=config.top_p,
        temperature=config.temperature,
        freq_penalty=config.freq_penalty,
        use_past_kv_cache=config.use_past_kv_cache,
        return_type="tokens",
        verbose=False,
    )
    stops = stop_token_ids(model) if config.stop_at_eos else ()
    if stops:
        kwargs["eos_token_id"] = list(stops)
    if config.prepend_bos is not None:
        kwargs["prepend_bos"] = config.prepend_bos
    # TransformerLens's frequency penalty counts every token of a row, its pads too: a padded row's pad
    # (GPT-2's, Llama-3's end-of-text) was penalised once per pad, so that row ended less often than alone.
    # Rows of one length are sampled together, unpadded, each length after the other from the one stream.
    # So do they where the model would number a padded row's positions from its first pad.
    by_length = (config.do_sample and config.freq_penalty > 0) or not positions_follow_mask(model)
    groups = _by_length(lengths) if by_length else [list(range(len(prompts)))]
    devices = [tokens_BP.device] if tokens_BP.device.type == "cuda" else []
    parts = []
    with torch.random.fork_rng(devices=devices, enabled=config.seed is not None):
        if config.seed is not None:
            torch.manual_seed(config.seed)
        if session is not None and not session.active:
            raise SteeringError("this steering session has ended; generate inside the `with steer(...)` block")
        for rows in groups:
            n = P if len(groups) == 1 else lengths[rows[0]]
            tokens = tokens_BP if len(groups) == 1 else tokens_BP[rows, P - n:]
            # `_padding` may set prepend_bos: see there
            kw = dict(kwargs, **_padding(model, prompts, tokens, [lengths[r] for r in rows], config.prepend_bos, rows))
            with session.prompt_length(n) if session is not None else contextlib.nullcontext():
                parts.append(model.generate(tokens, **kw))
    out_BT = parts[0] if len(groups) == 1 else _joined(parts, groups, tokens_BP, lengths, stops[0] if stops else 0)
    texts = [continuation_text(model.tokenizer, row[:P].tolist(), row[P:].tolist(), stops) for row in out_BT]
    return Generation(prompts, texts, out_BT, P, list(lengths))


def _by_length(lengths: Sequence[int]) -> list[list[int]]:
    """The rows' indices grouped by length, each group in the rows' order, the groups in order of first row."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    return list(groups.values())


def _joined(parts: list[Tensor], groups: list[list[int]], tokens_BP: Tensor, lengths: Sequence[int],
            fill: int) -> Tensor:
    """The groups' outputs [b, n + T_g] (n: the group's prompt length) as one left-padded batch [B, P + T]:
    a group that ended early (every row at its end of text) is filled on with `fill`, as TransformerLens
    fills a finished row."""
    new = [part[:, lengths[rows[0]]:] for part, rows in zip(parts, groups)]
    out_BT = torch.full((tokens_BP.shape[0], tokens_BP.shape[1] + max(int(t.shape[1]) for t in new)), fill,
                        dtype=tokens_BP.dtype, device=tokens_BP.device)
    out_BT[:, :tokens_BP.shape[1]] = tokens_BP
    for t, rows in zip(new, groups):
        out_BT[rows, tokens_BP.shape[1]:tokens_BP.shape[1] + t.shape[1]] = t.to(out_BT.device)
    return out_BT


def _padding(model: Model, prompts: list[str], tokens_BP: Tensor, lengths: Sequence[int],
             prepend_bos: bool | None, rows: Sequence[int]) -> dict[str, Any]:
    """How `model.generate` learns which of the left-padded `tokens_BP` are pads. A TransformerBridge
    is told by a mask built from each prompt's own length: read off the tokens (`padding_side`), a
    prompt's real leading tokens that share the pad's id (GPT-2's and Llama-3's end-of-text, their
    pad, at the start of a prompt that has no other BOS, or a second one after it) were taken for
    pads and hidden, so `saesteer steer` continued another text than the API's engine, which knows
    each row's length. A HookedTransformer's `generate` takes no mask: see `_hooked_padding`. `rows`: the
    rows' numbers among `prompts` (a warning names them)."""
    B, P = tokens_BP.shape
    mask_BP = torch.zeros(B, P, dtype=torch.long, device=tokens_BP.device)
    for b, n in enumerate(lengths):
        mask_BP[b, P - n:] = 1
    if "attention_mask" not in inspect.signature(model.generate).parameters:
        return _hooked_padding(model, prompts, tokens_BP, mask_BP, prepend_bos, rows)
    if bool(mask_BP.all()):
        return {}  # nothing padded: every token attended, as the model reads a prompt alone
    return {"attention_mask": mask_BP}


def _hooked_padding(model: Model, prompts: list[str], tokens_BP: Tensor, mask_BP: Tensor,
                    prepend_bos: bool | None, rows: Sequence[int]) -> dict[str, Any]:
    """A HookedTransformer's `generate` reads the pads off the tokens (TransformerLens's
    `get_attention_mask`): the leading run of the pad's id in each row, less its last token where
    `prepend_bos` says a BOS that is the pad starts every row. Given tokens, `prepend_bos` means that
    rule alone, so it is picked to match the rows' real lengths (`mask_BP`): GPT-2 with a prompt that
    starts with its BOS = pad under prepend_bos=False (an empty prompt, which starts from BOS anyway,
    or one that writes <|endoftext|> out) had that token hidden, a row of no token at all. Where no
    choice matches (two leading end-of-text tokens; a batch mixing such rows with padded ones that
    start otherwise), the prompts whose start is hidden are warned about (SteeringWarning)."""
    import warnings

    from transformer_lens.utilities.tokenize_utils import get_attention_mask

    tok = model.tokenizer
    if getattr(tok, "pad_token_id", None) is None:
        return {"padding_side": "left"}
    default = bool(getattr(model.cfg, "default_prepend_bos", True)) if prepend_bos is None else bool(prepend_bos)
    read = {}
    for bos in (default, not default):
        read[bos] = get_attention_mask(tok, tokens_BP, bos, padding_side="left").to(mask_BP.device)
        if torch.equal(read[bos], mask_BP):
            return {"padding_side": "left", "prepend_bos": bos}
    for i, (got, want) in enumerate(zip(read[default].tolist(), mask_BP.tolist())):
        hidden = sum(w and not g for g, w in zip(got, want))
        if hidden:
            n = sum(want)
            row = tokens_BP[i, len(want) - n:].tolist()
            lead = next((k for k, t in enumerate(row) if t != tok.pad_token_id), len(row))
            alone_whole = lead == 1 and tok.bos_token_id == tok.pad_token_id  # read whole in a batch of its own
            warnings.warn(SteeringWarning(
                f"prompt {rows[i] + 1} of {len(prompts)} starts with {lead} {tok.convert_ids_to_tokens(tok.pad_token_id)!r} "
                f"token(s), the pad token's id: this model's generate (TransformerLens) reads {hidden} of them as "
                f"padding and does not attend to them; load the model with saesteer.models.load_model (a "
                f"TransformerBridge), or " + ("generate it apart from prompts that start otherwise" if alone_whole
                                              else "start it otherwise")),
                stacklevel=4)
    return {"padding_side": "left", "prepend_bos": default}


def continuation_text(tokenizer: Any, prompt_ids: Sequence[int], new_ids: Sequence[int],
                      stop_ids: Sequence[int] | None = None) -> str:
    """What the new tokens add to the prompt's text, by the rule the batched engine's and the API's
    text follows (`steering.textstream.TextAssembler`, one rule for both): decode(prompt + new)
    less decode(prompt), so that the two texts joined are the tokenizer's decoding of all the
    tokens. The spaces, line breaks and indentation the new tokens carry are kept ("def main(" +
    ")" reads "def main()"); where the tokenizer puts a space between words (SentencePiece's "▁",
    a word-level tokenizer) it is the continuation's first character. Special tokens (BOS,
    padding) are left out, and the text stops at the first of `stop_ids` (`stop_token_ids`; None:
    the tokenizer's eos; empty: nowhere).
    The prompt counts from after its last control token (`steering.textstream.text_context`): a
    reply after a chat template's "<|assistant|>" brings no space. One exception, as streamed
    text: where a byte-fallback decoder (Llama-2's <0xNN> tokens) would rewrite characters
    already produced as U+FFFD after an invalid byte run, they are kept, and the tokens from the
    run on are decoded on their own (see `steering.textstream`).

    (`features.tokentext` gives each token's piece of a window the same way; steering does not
    import `features`, and needs only this one cut.)"""
    new = [int(i) for i in new_ids]
    if stop_ids is None:
        eos = getattr(tokenizer, "eos_token_id", None)
        stop_ids = () if eos is None else (eos,)
    stops = set(stop_ids)
    new = next((new[:k] for k, t in enumerate(new) if t in stops), new)
    if not new:
        return ""
    text = TextAssembler(tokenizer, context_ids=prompt_ids)
    for token in new:
        text.push(token, emit=False)  # nobody streams: decoded once at the end (token by token after a bad byte run)
    return text.finish()


def sae_prepend_bos(saes: SAEs) -> bool | None:
    """Whether the SAEs' prompts start with BOS as their training says (`saes.bos.recorded_bos`:
    always for a "doc"-policy SAE, else `prepend_bos` in their cfg.json metadata, as `saesteer cache`
    records it); None when none says or they disagree."""
    from saes.bos import recorded_bos

    return recorded_bos(named_saes(saes).values())  # a LoadedSAE as given: its provenance counts


def with_sae_bos(config: GenerationConfig, saes: SAEs) -> GenerationConfig:
    """`config` with prepend_bos set from the SAEs' training (`sae_prepend_bos`) when the caller left
    it to the default (None; the CLI's --prepend-bos not given); nothing recorded: left None, the
    model's default. The one step for the CLI's steer / sweep / steer-eval and the library's compare,
    sweep, compare_methods and a steer() session's generate; give `LoadedSAE`s where you have them."""
    if config.prepend_bos is not None:
        return config
    recorded = sae_prepend_bos(saes)
    return config if recorded is None else dataclasses.replace(config, prepend_bos=recorded)
