"""Bring a feature store written by an older saesteer to this version, in place (`saesteer features upgrade`).

    result = upgrade_store("old.db", tokenizer_for=lambda identity: load_recorded_tokenizer(identity, recorded_in="..."))
    result.schema_from, result.schema_version, result.vocab      # e.g. 2, 3, "relabelled"

Two things can be old:
- the schema: opening a store for writing renames a version-1 store's columns (`features.store.base`);
  a version-2 store's examples are rewritten with each window once, and the file VACUUMed to its
  new size (`features.store.windows`; until then it reads the same, only larger: a version-3 store
  mostly of free pages, an upgrade stopped in its VACUUM, is VACUUMed again);
- the token labels (meta "vocab_labels" missing or of an older rule, `features.tokentext.LABEL_RULE`):
  rule 1 dropped a SentencePiece word's leading space ("▁the" read "the") and showed part of a
  character as bare escaped bytes. They can only be recomputed from the tokenizer, so they are
  rewritten (`features.build.refresh_vocab`, as a re-run build does) when the store records its
  model and `tokenizer_for` gives that model's tokenizer; otherwise they stay, and reading them
  marks the parts of characters (the lost spaces cannot be told).

This module loads no model: the caller (the CLI) turns the recorded identity into a tokenizer.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# what became of the store's token labels
VOCAB_CURRENT = "current"  # already of the current rule
VOCAB_RELABELLED = "relabelled"  # rewritten with the recorded model's tokenizer
VOCAB_NO_MODEL = "no model"  # of an older rule, and the store records no model to take a tokenizer from
VOCAB_NO_TOKENIZER = "no tokenizer"  # of an older rule; the recorded model's tokenizer could not be had
VOCAB_NONE = "none"  # the store has no vocabulary (built without a tokenizer)


@dataclass(frozen=True)
class UpgradeResult:
    path: Path
    schema_version: int
    schema_from: int  # the schema version before the upgrade (== schema_version: it was current)
    vocab: str  # one of the VOCAB_* values
    model: Any = None  # the recorded `saes.identity.ModelIdentity`, where there is one
    why: str | None = None  # VOCAB_NO_TOKENIZER: why tokenizer_for gave none


def upgrade_store(path: str | Path, tokenizer_for: Callable[[Any], Any] | None = None) -> UpgradeResult:
    """Upgrade the store at `path` in place: its schema, and token labels of an older rule rewritten
    with `tokenizer_for(recorded model identity)` (None, or an exception it raises, leaves them and
    says why in the result)."""
    from features.build import refresh_vocab
    from features.store import FeatureStore, writer_lock
    from features.tokentext import LABEL_RULE

    # a missing store is refused by open, with no folder or lock file made for it (a mistyped path)
    lock = writer_lock(path) if Path(path).is_file() else contextlib.nullcontext()
    with lock, FeatureStore.open(path, readonly=False) as store:  # opening it for writing renames version 1's columns
        store.share_windows(vacuum=True)  # version 2: each example window once, and the file shrunk
        version = store.schema_version

        def result(vocab: str, model: Any = None, why: str | None = None) -> UpgradeResult:
            return UpgradeResult(store.path, version, store.schema_from, vocab, model, why)

        if not store.has_vocab():
            return result(VOCAB_NONE)
        if store.meta.get("vocab_labels") == LABEL_RULE:
            return result(VOCAB_CURRENT)
        recorded = store.recorded_model()
        if recorded is None:
            return result(VOCAB_NO_MODEL)
        try:
            tokenizer = tokenizer_for(recorded) if tokenizer_for is not None else None
        except (OSError, ValueError) as e:  # not loadable here (offline, moved, another hash): say why
            return result(VOCAB_NO_TOKENIZER, recorded, _why(e))
        if tokenizer is None:
            return result(VOCAB_NO_TOKENIZER, recorded, "no tokenizer given")
        refresh_vocab(store, tokenizer)
        return result(VOCAB_RELABELLED, recorded)


def _why(error: Exception) -> str:
    """The first line of a loader's error up to its advice ("; pass --model ...", "... or pass
    --allow-model-mismatch"): that advice names its own command's flags, not upgrade's."""
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else type(error).__name__
    return re.split(r"[;,.]? (?:or )?(?:[Pp]ass|[Ll]eave out) --", first)[0].rstrip(" ;,.")
