"""What a demo run returns and `summary.json` holds: the run's figures, the labelled features shown,
the steering example."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saesteer.demo.config import DemoConfig, DemoPaths


@dataclass
class FeatureShowcase:
    """One labelled latent for the summary."""

    latent: int
    label: str
    scores: dict[str, float]
    freq: float
    level: int | None
    examples: list[str]  # top-example windows, the activating token in [[ ]]
    concept: str | None = None  # the toy-world concept it matches best (ground truth), if chosen for it
    f1: float | None = None  # token F1 of the latent for that concept


@dataclass
class SteeringExample:
    """The steering example: a sparse latent that matches a toy-world topic, its strength picked on
    dev samples, its effect measured on held-out samples, and held-out samples side by side."""

    topic: str
    latent: int
    label: str | None
    concept_f1: float  # token F1 of the latent for topic:<topic> (ground truth)
    freq: float  # share of tokens the latent fires on (feature store)
    detection: float | None  # its label's detection score, if labelled and scored
    strength: float  # multiples of the feature's typical max activation (op: add)
    raw_strength: float | None
    rule: str
    met: bool  # the dev sweep found a strength meeting every target (else: the closest one is shown)
    verdict: str
    dev: dict[str, Any]  # {seed, samples, share/fluency/grammar at 0 and at the strength}
    test: dict[str, Any]  # the same on held-out samples (another seed), with standard errors
    examples: list[dict[str, Any]]  # held-out samples side by side: {sample, default, steered, shares}
    visible: int  # held-out samples whose steered text is on topic (share >= 0.5) and whose default is not
    candidates: list[dict[str, Any]]  # every latent swept: {latent, topic, f1, freq, recommended, margin}
    sweep_html: str
    sae_fingerprint: str = ""
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoResult:
    config: DemoConfig
    paths: DemoPaths
    sae_name: str
    sae_dir: Path
    metrics: dict[str, Any]  # this SAE's final metrics (train/metrics.json "saes" entry)
    train_info: dict[str, Any]  # tokens_trained, steps, tokens_per_second, ...
    store_summary: dict[str, int]  # dead / dense / alive ... over the whole cache
    cache_rows: int
    concepts: dict[str, Any]  # toy-world ground truth: best-latent F1 per concept
    judge: str
    labelled: int
    showcase: list[FeatureShowcase]
    steering: SteeringExample | None
    stage_seconds: dict[str, float]
    stage_status: dict[str, str]  # "ran" or "reused"
    total_seconds: float = 0.0
    model: Any = field(default=None, repr=False, compare=False)  # the loaded toy model (not serialised)

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        d = json.loads(json.dumps(d, default=_jsonable))
        d["paths"] = {k: str(p) for k, p in self.paths.named().items()}
        return d


def _jsonable(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")

