"""What auto-interp needs from a feature store, and the record it writes back.

`LabelStore` is the narrow interface the runner uses: which latents exist (most frequent first), their examples, which
already have a label from this labeller, and an atomic write of one latent's label + scores +
provenance (or of its failure). `MemoryLabelStore` implements it in memory (tests, notebooks);
`autointerp.featurestore.FeatureStoreLabels` implements it over the SQLite feature store.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol

from .examples import LatentExamples

__all__ = ["LabelResult", "LabelFailure", "LabelStore", "MemoryLabelStore", "utc_now"]


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LabelResult:
    """One latent's label with its scores and provenance, written in one transaction."""

    latent: int
    label: str
    source: str  # "openai" | "transformers" | "offline"
    judge_model: str
    prompt_version: str
    scores: dict[str, float | None]  # scorer name -> balanced accuracy
    provenance: dict[str, Any]  # examples used, score details, usage, settings
    created: str = field(default_factory=utc_now)


@dataclass(frozen=True)
class LabelFailure:
    latent: int
    stage: str  # "examples" | "explain" | "detection" | "fuzzing"
    reason: str
    source: str
    judge_model: str
    created: str = field(default_factory=utc_now)


class LabelStore(Protocol):
    def latents(self) -> list[int]:
        """The latents that can be labelled (they fire), most frequent first (ties: lower id first)."""
        ...

    def examples(self, latent: int) -> LatentExamples: ...

    def labelled(self, source: str, judge_model: str) -> set[int]: ...

    def write_result(self, result: LabelResult) -> None: ...

    def write_failure(self, failure: LabelFailure) -> None: ...


class MemoryLabelStore:
    """An in-memory `LabelStore` over a dict of LatentExamples (`frequencies`: latent -> share of
    tokens it fires on; without them every latent counts as equally frequent, so ids go in order)."""

    def __init__(self, latents: Iterable[LatentExamples], frequencies: Mapping[int, float] | None = None) -> None:
        self._ex = {lx.latent: lx for lx in latents}
        self._freq = dict(frequencies or {})
        self.results: dict[tuple[int, str, str], LabelResult] = {}
        self.failures: list[LabelFailure] = []

    def latents(self) -> list[int]:
        return sorted(self._ex, key=lambda i: (-self._freq.get(i, 0.0), i))

    def examples(self, latent: int) -> LatentExamples:
        if latent not in self._ex:
            raise KeyError(f"latent {latent} is not in the store")
        return self._ex[latent]

    def labelled(self, source: str, judge_model: str) -> set[int]:
        return {k[0] for k in self.results if k[1] == source and k[2] == judge_model}

    def write_result(self, result: LabelResult) -> None:
        self.results[(result.latent, result.source, result.judge_model)] = result

    def write_failure(self, failure: LabelFailure) -> None:
        self.failures.append(failure)

    def label(self, latent: int) -> LabelResult | None:
        for k, v in self.results.items():
            if k[0] == latent:
                return v
        return None
