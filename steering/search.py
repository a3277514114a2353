"""Find features to steer: by label search ("ocean") or by contrast between two prompt sets.

Label search goes through a search function (the feature store's full-text search once it is
wired: anything callable as `search(query, limit)` returning hits with a feature id, a label and a
score). Contrast ranks latents by the difference of their mean activation over the real tokens of
two prompt sets (the prompts that show the concept, and neutral ones).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from steering.activations import mean_latent_activation
from steering.spec import SteeringError

if TYPE_CHECKING:
    from steering.inputs import Model, SAEArg


@dataclass(frozen=True)
class FeatureCandidate:
    """A latent proposed for steering, with the evidence behind it."""

    latent: int
    score: float  # contrast: mean activation difference; label search: the search rank score
    label: str | None = None
    mean_positive: float | None = None
    mean_negative: float | None = None
    rate_positive: float | None = None
    rate_negative: float | None = None


def contrast_features(
    model: Model,
    sae: SAEArg,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    top: int = 10,
    batch_size: int = 16,
    min_rate: float = 0.0,
    labels: Callable[[int], str | None] | None = None,
    allow_model_mismatch: bool = False,
    progress: bool = False,
) -> list[FeatureCandidate]:
    """Latents ranked by mean activation on `positive` minus mean on `negative` prompts.

    `min_rate` drops latents that fire on fewer than that fraction of positive tokens. `sae`: an
    SAE or a `saes.formats.LoadedSAE`; one recorded for another model is refused (see
    `steering.steer`) unless `allow_model_mismatch`. `progress`: a bar (stderr) over both prompt sets."""
    from saes.bos import prepend_bos_for
    from saes.formats.base import sae_of
    from saes.identity import check_sae_model
    from saes.interop import as_sae
    from steering.session import check_not_steered

    check_not_steered(model, "steering.contrast_features")  # it reads the model's own activations
    sae = as_sae(sae)  # a sae_lens.SAE object: converted to ours
    check_sae_model(model, sae, allow_mismatch=allow_model_mismatch)
    bos = prepend_bos_for(model, [sae])  # a LoadedSAE of a 'doc'-policy SAE: prompts after BOS (saes.bos)
    sae = sae_of(sae)
    if top < 1:
        raise SteeringError(f"top must be positive, got {top}")
    from tqdm.auto import tqdm

    with tqdm(total=len(positive) + len(negative), desc="contrast activations", unit="prompt",
              disable=not progress) as bar:
        mean_p, rate_p, _ = mean_latent_activation(model, sae, positive, batch_size=batch_size, prepend_bos=bos, bar=bar)
        mean_n, rate_n, _ = mean_latent_activation(model, sae, negative, batch_size=batch_size, prepend_bos=bos, bar=bar)
    diff = mean_p - mean_n
    if min_rate > 0:
        diff = diff.masked_fill(rate_p < min_rate, float("-inf"))
    k = min(top, diff.numel())
    vals, ids = diff.topk(k)
    out = []
    for v, f in zip(vals.tolist(), ids.tolist()):
        if v == float("-inf"):
            break
        out.append(
            FeatureCandidate(
                f, v, labels(f) if labels else None, float(mean_p[f]), float(mean_n[f]), float(rate_p[f]), float(rate_n[f])
            )
        )
    return out


def label_search(search: Callable[..., Any], query: str, *, limit: int = 10) -> list[FeatureCandidate]:
    """Features whose label matches `query`, through `search(query, limit)`.

    A hit may be a (latent, label, score) tuple, a dict with those keys ("latent", "label",
    "score"/"rank"), or an object with such attributes."""
    if not isinstance(query, str) or not query.strip():
        raise SteeringError("give a non-empty search query, e.g. 'ocean'")
    hits = search(query, limit)
    out = []
    for h in list(hits)[:limit]:
        out.append(_candidate(h))
    return out


def _candidate(hit: Any) -> FeatureCandidate:
    if isinstance(hit, FeatureCandidate):
        return hit
    if isinstance(hit, tuple):
        latent, label, score = (list(hit) + [None, None])[:3]
        return FeatureCandidate(int(latent), float(score or 0.0), label)
    get = hit.get if isinstance(hit, dict) else (lambda k, d=None: getattr(hit, k, d))
    latent = get("latent")
    if latent is None:
        raise SteeringError(f"search hit {hit!r} names no latent")
    score = get("score", get("rank", 0.0))
    return FeatureCandidate(int(latent), float(score or 0.0), get("label"))
