"""Whether text fed to an SAE starts with BOS: one rule for every stage that runs a model on text
for an SAE (steering, sweeps, `features top-on-text`, the web app, /v1 completions).

    bos = prepend_bos_for(model, [sae])            # the SAE's record, else the model's default
    bos = prepend_bos_for(model, [sae], False)     # an explicit choice wins
    bos = prepend_bos_for(model, [loaded])         # a LoadedSAE: its saesteer.json's BOS policy too

`saesteer cache` prepends BOS to every context by default and records it in cfg.json's metadata
(`prepend_bos`, SAELens's field), while models such as GPT-NeoX and Qwen2 do not prepend one by
default (TransformerLens's `cfg.default_prepend_bos`). Text fed without the BOS the SAE was trained
with gives other activations at every position, so the record wins over the model's default.
An SAE trained here with BOS policy "doc" (BOS starts every document; contexts are plain slices of
the stream, so cfg.json says prepend_bos=false) saw every document start after BOS: a prompt, a
document's start, gets one. Only its saesteer.json says "doc": a `LoadedSAE` carries it, and an SAE
read from a folder (`saes.load_sae`, `resolve_sae`) keeps it as `sae.trained_bos_policy` (never
written to cfg.json), so a bare SAE from a folder is fed as the CLI feeds it (`recorded_bos`:
`steering.compare`/`sweep`/`compare_methods`, `mean_latent_activation`, a steer() session's
`generate` and `with_sae_bos` read it too, as the CLI's steer / sweep / steer-eval do; a plain
`generate` takes the model's default unless told). An SAE object built in memory (a training run's
result before it is saved) carries no policy: its cfg.json record counts. The /v1 API's completions
feed a text prompt by this rule too (the web engine's `prepend_bos`); a chat prompt gets the BOS its
template writes (docs/api.md).

A prompt text that already starts with the BOS token written out (a chat template rendered to
text: "<s>[INST] ...") gets no second one (`prompt_tokens`): two BOS are in no chat prompt and no
cached context, so every activation after them would be off. HF's tokenizer(text), vLLM and
TransformerLens's `to_tokens` add the second; llama.cpp warns about it.

An empty prompt (`saesteer sweep` without --prompt: unconditional generation) starts from the BOS
token even where no BOS is prepended (an SAE trained with BOS policy "none", a model that adds none):
generating from nothing means generating from BOS, as transformers' `generate` does given no input,
and without it there is no token to start from. A tokenizer without a BOS token cannot: callers
refuse the empty prompt and ask for one.

It lives in `saes` because `features` and `steering` both need it and neither may import the other.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

__all__ = ["recorded_prepend_bos", "recorded_bos", "trained_bos_policy", "prepend_bos_for", "check_cache_bos", "starts_with_bos",
           "prompt_tokens"]

BOS_POLICIES = ("prepend", "doc", "none")  # training.text.TextConfig.bos_policy


def recorded_prepend_bos(saes: Iterable[Any]) -> bool | None:
    """The `prepend_bos` the SAEs' cfg.json metadata records (each an SAE or a `LoadedSAE`); None
    when none records it or they disagree."""
    found = {bool(v) for sae in saes
             if (v := (getattr(getattr(getattr(sae, "sae", sae), "cfg", None), "metadata", None) or {}).get("prepend_bos"))
             is not None}
    return found.pop() if len(found) == 1 else None


def recorded_bos(saes: Iterable[Any]) -> bool | None:
    """Whether the SAEs' training says a prompt starts with BOS (each an SAE or a `LoadedSAE`): True
    for an SAE trained here on BOS policy "doc" (`trained_bos_policy`): BOS started every document it
    saw, and a prompt is a document's start, though its cfg.json records prepend_bos=false (for
    SAELens: its contexts, plain slices of the stream, do not start with BOS); else what its cfg.json
    records. None when none says or they disagree (a "doc" SAE beside one recorded without BOS)."""
    found = {True if trained_bos_policy(sae) == "doc" else recorded_prepend_bos([sae]) for sae in saes} - {None}
    return found.pop() if len(found) == 1 else None


def prepend_bos_for(model: Any, saes: Iterable[Any], override: bool | None = None) -> bool:
    """Whether a prompt fed to these SAEs (each an SAE or a `LoadedSAE`) starts with BOS:
    `override` when given, else what their training says (`recorded_bos`), else the model's default."""
    if override is not None:
        return bool(override)
    recorded = recorded_bos(saes)
    if recorded is not None:
        return recorded
    return bool(getattr(getattr(model, "cfg", None), "default_prepend_bos", True))


def trained_bos_policy(loaded: Any) -> str | None:
    """The BOS policy of the contexts an SAE trained here was trained on (its saesteer.json: the
    cache's `data.bos_policy`, or `data.text.bos_policy` for a run without a cache), read from the
    provenance `loaded` carries (a `LoadedSAE`, or the dict), else from the SAE itself (an SAE read
    from a folder keeps it as `trained_bos_policy`); None where neither records one: another
    library's SAE, or one trained here before the policy was recorded (its cfg.json's prepend_bos
    reads "doc" as "none")."""
    prov = loaded if isinstance(loaded, dict) else getattr(loaded, "provenance", None)
    data = (prov or {}).get("data") or {}
    policy = data.get("bos_policy") or (data.get("text") or {}).get("bos_policy")
    if policy is None and not isinstance(loaded, dict):
        policy = getattr(getattr(loaded, "sae", loaded), "trained_bos_policy", None)
    return policy if policy in BOS_POLICIES else None


def check_cache_bos(sae: Any, bos_policy: str | None, cache: Any = "", *,
                    policy_as: str = "bos_policy", sae_as: str = "the SAE",
                    data_as: str | None = None, fix_as: str = "build a cache with",
                    override: str | None = None) -> None:
    """Refuse (ValueError) a cache whose contexts start with BOS (`bos_policy` "prepend") for an SAE
    (bare or a `LoadedSAE`) recorded as trained without one, or the other way round: the model's
    activations differ at every position, not only at the first. Nothing known on either side: nothing
    to refuse. `policy_as`: how the caller sets a cache's BOS policy (the CLI: its flag). The policy
    the SAE's training recorded (`trained_bos_policy`) is matched exactly where known ("doc" is not
    "none"), and cfg.json's prepend_bos must fit too (a hand-edited one can disagree).
    `sae_as`, `data_as` (default "the cache CACHE"): the two sides as the caller names them;
    `fix_as`: how the fix starts ("build a cache with" POLICY_AS POLICY); `override`: how the caller
    accepts a mismatch, if it can. The data's policy is said by `policy_as`, the SAE's as "BOS
    policy": a bare field name in a CLI error is read as the command's own flag (train's
    --bos-policy packs its own text, not a cache)."""
    data_as = data_as or f"the cache {cache}"
    anyway = f", or pass {override} to use it anyway" if override else ""
    trained_policy = trained_bos_policy(sae)
    if trained_policy is not None and bos_policy is not None and trained_policy != bos_policy:
        raise ValueError(
            f"{sae_as} was trained on contexts packed with BOS policy {trained_policy!r} (its saesteer.json) "
            f"but {data_as} was packed with {policy_as} {bos_policy!r}; {fix_as} {policy_as} "
            f"{trained_policy!r} for this SAE{anyway}")
    wants = recorded_prepend_bos([sae])
    if wants is None or bos_policy is None or wants == (bos_policy == "prepend"):
        return
    fits = "'prepend'" if wants else "'none' or 'doc'"
    raise ValueError(
        f"{sae_as} records prepend_bos={wants} (cfg.json metadata) but {data_as} was "
        f"packed with {policy_as} {bos_policy!r}, so its contexts {'do not start' if wants else 'start'} with BOS; "
        f"{fix_as} {policy_as} {fits} for this SAE{anyway}"
    )


def starts_with_bos(tokenizer: Any, text: str) -> bool:
    """Whether `text` starts with the tokenizer's BOS token written out ("<s>[INST] ..."), as the
    tokenizer reads it: that one token."""
    bos = getattr(tokenizer, "bos_token", None)
    if not bos or not isinstance(text, str) or not text.startswith(bos):
        return False
    return tokenizer(bos, add_special_tokens=False)["input_ids"] == [tokenizer.bos_token_id]


def prompt_tokens(model: Any, texts: str | Sequence[str], prepend_bos: bool | None = None, *,
                  padding_side: str | None = None, truncate: bool = True) -> Any:
    """`model.to_tokens(texts, prepend_bos, ...)` [B, S], but a text that already starts with the
    BOS token written out (`starts_with_bos`) gets none prepended: it is read as written, one BOS.
    Every row starts with BOS where `prepend_bos` (None: the model's default) says so; an empty
    text starts with it regardless (where the tokenizer has one), since without it there is no token
    to run or generate from. Rows are padded on `padding_side` (None: the tokenizer's) as
    `to_tokens` pads them."""
    import torch

    batch = [texts] if isinstance(texts, str) else list(texts)
    wanted = bool(getattr(model.cfg, "default_prepend_bos", True)) if prepend_bos is None else bool(prepend_bos)
    written = [wanted and starts_with_bos(model.tokenizer, t) for t in batch]
    # an empty text without BOS would be no token at all: it starts from the BOS, as unconditional generation does
    from_bos = [not wanted and t == "" and getattr(model.tokenizer, "bos_token", None) is not None for t in batch]
    kw: dict[str, Any] = {"truncate": truncate}
    if padding_side is not None:
        kw["padding_side"] = padding_side
    if not any(written) and not any(from_bos):
        return model.to_tokens(texts, **kw, **({} if prepend_bos is None else {"prepend_bos": prepend_bos}))
    if all(written) or all(from_bos):
        return model.to_tokens(texts, prepend_bos=all(from_bos), **kw)
    rows = [model.to_tokens(t, prepend_bos=(wanted and not w) or b, **kw)[0] for t, w, b in zip(batch, written, from_bos)]
    return padded_rows(rows, model.tokenizer, padding_side)


def padded_rows(rows: Sequence[Any], tokenizer: Any, padding_side: str | None = None) -> Any:
    """Token rows [n_i] of different lengths as one batch [B, max n_i], padded as `to_tokens` pads
    them: with the tokenizer's pad (else its EOS), on `padding_side` (None: the tokenizer's)."""
    import torch

    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    left = (padding_side or getattr(tokenizer, "padding_side", "right")) == "left"
    padded = [torch.cat([r.new_full((width - len(r),), pad), r] if left else [r, r.new_full((width - len(r),), pad)])
              for r in rows]
    return torch.stack(padded)
