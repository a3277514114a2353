"""What a cache build will make, checked before anything runs: the runner and hook widths, the
settings the manifest records (and a resume must match), the text source, the excluded tokens.

    plan = plan_cache(model, text, cfg, tokenizer, model_id, model_revision)
    refuse_mismatch(out, read_manifest(out), plan.settings)    # resuming another cache's folder

Used by the build (`training.cache`) and the dry run (`training.estimate`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from saes.identity import identity_of_model
from saes.validators import require
from training.cache_config import CacheConfig, ExcludeTokens
from training.manifest import (FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, SETTING_DEFAULTS, CacheMismatchError, Manifest,
                               read_manifest, setting_differences)
from training.runner import ActivationRunner
from training.shards import DTYPES
from training.packing import (SpecialTokensReading, decide_special_tokens, eos_is_next_bos, special_tokens,
                              tokenizer_fingerprint)
from training.sources import special_tokens_of_manifest
from training.text import DocumentSample, DocumentSource, TextConfig, dataset_spec, is_conversation, sample_documents

DEFAULT_SHARD_BYTES = 128 << 20


class CachePlan(NamedTuple):
    """What `plan_cache` fixed for a build."""

    runner: ActivationRunner
    d_in: dict[str, int]
    settings: dict[str, Any]
    source: DocumentSource
    excluded: np.ndarray
    dataset_files: list[str] | None  # the absolute paths of the local files read (provenance)
    special_tokens: SpecialTokensReading | None = None  # how special tokens written out are read (what auto decided)
    # the first documents, read from a source of their own (`first_source`: never the prefetcher's `source`),
    # for the special-token decision and `training.estimate.estimate_plan`
    first_source: DocumentSource | None = None
    first: DocumentSample | None = None


def identity_record(model) -> dict[str, Any] | None:
    """Who the model is, as the manifest's `model_identity` (None for a model of unknown identity)."""
    ident = identity_of_model(model)
    return None if ident is None else ident.to_json()


def plan_cache(model, text: TextConfig, cfg: CacheConfig, tokenizer, model_id, model_revision,
               source: DocumentSource | None = None) -> CachePlan:
    """Check everything a build needs (hooks, context length, tokens, dataset and text column) and
    fix its settings; runs one tiny forward pass (the hooks' widths) and nothing else. `source`:
    `text`'s dataset already opened (`training.text.source_as_read`), else opened here."""
    if source is not None and source.cfg != text:
        raise ValueError(f"the dataset source given is read as {source.cfg}, not as {text}")
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise ValueError("the model has no tokenizer; pass tokenizer=...")
    runner = ActivationRunner(model, cfg.hooks, forward=cfg.forward)
    runner.check_context_length(text.context_length)
    require(cfg.max_tokens is None or cfg.max_tokens >= text.context_length,
            f"CacheConfig.max_tokens {cfg.max_tokens} is less than one context ({text.context_length} tokens); raise "
            f"CacheConfig.max_tokens or lower TextConfig.context_length", field="max_tokens")
    d_in = runner.d_in(text.context_length)
    source = source or DocumentSource(text)  # checks the dataset and its text column
    spec = dataset_spec(text, source.data)
    if source.pretokenized:  # token ids: checked against the tokenizer and BOS policy now, and recorded
        from training.pretokenized import checked_rows

        spec["text_column"] = source.column
        spec["pretokenized"] = checked_rows(source, tokenizer)
        text = dataclasses.replace(text, separator=spec["pretokenized"]["separator"])  # what the rows hold
    ident = identity_of_model(model)
    if ident is not None:  # a model loaded by saesteer.models knows who it is
        model_id, model_revision = model_id or ident.id, model_revision or ident.revision
    # the first documents from a source of their own: plan.source is the prefetcher's, read in its thread
    first_source = DocumentSource(text)
    sample = sample_documents(first_source)
    first = [] if source.pretokenized else sample.texts
    if any(map(is_conversation, first)):  # written by the chat template: another template, other tokens
        spec["chat_template_sha256"] = hashlib.sha256(str(getattr(tokenizer, "chat_template", None) or "").encode()).hexdigest()
    reading = SpecialTokensReading("text") if source.pretokenized else _special_tokens_read(text, tokenizer, first, cfg.out)
    settings = cache_settings(model, runner, d_in, text, cfg, tokenizer, model_id, model_revision, spec, reading.literal)
    files = [str(p) for p in source.data.files] if source.data.is_local else None
    return CachePlan(runner, d_in, settings, source, np.asarray(settings["excluded_token_ids"], dtype=np.int64), files,
                     reading, first_source, sample)


def _special_tokens_read(text: TextConfig, tokenizer, first: list, out) -> SpecialTokensReading:
    """How special tokens written out in the documents (`first`: the first ones) are read
    (`decide_special_tokens`); under "auto", a resume reads them as the cache records (absent:
    matched, as caches made before the rule were packed), so that it continues as it was packed; a
    choice given is compared with it."""
    if text.special_tokens == "auto" and out and (Path(out) / MANIFEST_NAME).is_file():
        try:
            return SpecialTokensReading(special_tokens_of_manifest(read_manifest(out).settings))
        except (OSError, ValueError):  # not a readable cache: the build says so
            pass
    return decide_special_tokens(text, tokenizer, first)


def cache_settings(
    model, runner: ActivationRunner, d_in: dict[str, int], text: TextConfig, cfg: CacheConfig, tokenizer,
    model_id: str | None, model_revision: str | None, dataset: dict[str, Any], literal_specials: bool = True,
) -> dict[str, Any]:
    """The manifest's SETTING_FIELDS for this build (what must match to resume); `literal_specials`:
    `training.packing.decide_special_tokens` on the first documents."""
    excl = excluded_ids(tokenizer, cfg.exclude_tokens)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model": {
            "id": model_id or str(getattr(model.cfg, "model_name", "") or type(model).__name__),
            "revision": model_revision,
            "fingerprint": model_fingerprint(model),
            "n_ctx": runner.n_ctx,
            "d_model": int(getattr(model.cfg, "d_model", 0)),
        },
        "hooks": list(runner.hooks),
        "d_in": dict(d_in),
        "dtype": cfg.dtype,
        "context_length": text.context_length,
        "bos_policy": text.bos_policy,
        "separator": text.separator,
        "eos_is_next_bos": eos_is_next_bos(text, special_tokens(tokenizer)),
        "literal_special_tokens": literal_specials,  # training.packing.make_tokenize
        "exclude_tokens": cfg.exclude_tokens,
        "excluded_token_ids": excl,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "dataset": dataset,
        "max_tokens": cfg.max_tokens,
        "shard_contexts": cfg.shard_contexts or default_shard_contexts(d_in, cfg.dtype, text.context_length),
    }


def bytes_per_row(d_in: dict[str, int], dtype: str) -> int:
    item = torch.empty((), dtype=DTYPES[dtype]).element_size()
    return sum(d_in.values()) * item + 4 + 4 + 8  # acts + token_ids + positions + seq_index


def default_shard_contexts(d_in: dict[str, int], dtype: str, context_length: int) -> int:
    per_context = context_length * (bytes_per_row(d_in, dtype) + 4)
    return max(1, DEFAULT_SHARD_BYTES // per_context)


def model_fingerprint(model) -> str:
    """SHA-256 over parameter names, shapes, dtypes and a strided sample of each tensor's values:
    cheap even for large models, and different for a retrained or re-initialised model."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(f"{name}|{p.dtype}|{tuple(p.shape)}\n".encode())
        flat = p.detach().reshape(-1)
        if flat.numel():
            step = max(1, flat.numel() // 1024)
            sample = flat[::step][:1024].to("cpu", torch.float32).contiguous()
            h.update(sample.numpy().tobytes())
    return h.hexdigest()


def excluded_ids(tokenizer, mode: ExcludeTokens) -> list[int]:
    """The token ids whose positions are not cached (`CacheConfig.exclude_tokens`)."""
    sp = special_tokens(tokenizer)
    if mode == "none":
        return []
    if mode == "bos":
        return [] if sp.bos is None else [sp.bos]
    return sorted(set(sp.all) | {i for i in (sp.bos, sp.eos, sp.pad) if i is not None})


def refuse_mismatch(out: Path, existing: Manifest, settings: dict[str, Any]) -> None:
    """Refuse to resume (or estimate against) a cache made with other settings, naming each.
    The packing rule the cache was made with (`eos_is_next_bos`, absent in caches made before it:
    an EOS after every document) is first taken into `settings`: no flag chooses it, and a resume
    continues exactly as the cache was packed (the packer is opened with `settings`' value)."""
    if "eos_is_next_bos" in settings:
        settings["eos_is_next_bos"] = bool(existing.settings.get("eos_is_next_bos", SETTING_DEFAULTS["eos_is_next_bos"]))
    diffs = setting_differences(existing.settings, settings)
    if diffs:
        raise CacheMismatchError(
            f"{out} holds a cache made with other settings; refusing to mix them:\n  - "
            + "\n  - ".join(diffs) + _reading_hint(existing, settings)
            + "\nUse another cache folder (CacheConfig.out), or delete this one to rebuild it."
        )


def _reading_hint(existing: Manifest, settings: dict[str, Any]) -> str:
    """The flag that continues a cache whose special-token reading differs (the manifest's field is no flag's name)."""
    if "literal_special_tokens" not in settings or existing.settings["literal_special_tokens"] == settings[
            "literal_special_tokens"]:
        return ""
    reading = special_tokens_of_manifest(existing.settings)
    return (f"\nThe cache reads special tokens written out as {reading}: resume it with --special-tokens {reading} or "
            f"--special-tokens auto (which continues as the cache records).")
