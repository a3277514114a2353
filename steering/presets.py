"""Steering presets: named, reusable edits with the provenance that says where they hold.

    p = make_preset("ocean", ["123:add=2x@generated"], sae=sae, model=model, typical_max=store.typical_max)
    store.save_preset(p)                           # a StoreLink; kept in the SAE's feature store
    with steer(model, sae, [p]) as s: ...          # anywhere an edit is accepted (also CLI, web, API)

A preset records the model it was made for (`saes.identity.ModelIdentity`), the SAE's weights
hash (`saes.fingerprint`), the hook, and its strength calibration: for every feature it names,
the typical max activation that resolved its "x" strengths when it was saved (so "2x" means the
same activation wherever the preset travels) and the store's recommended strength with its
source. It may carry a scorecard (e.g. from `saesteer steer-eval` or a sweep).

Applying a preset to another SAE (another weights hash or hook) is refused: a feature id means
nothing in another SAE. Applying it to another model is refused naming both models and the
override (the SAE may still be usable on a fine-tuned sibling; the user decides).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from saes.version import __version__
from steering.spec import FeatureEdit, SteeringError, Trigger, TypicalMax, lookup_typical_max, parse_edit

if TYPE_CHECKING:
    from saes.base import SAE
    from steering.inputs import Model, SAEArg

PRESET_FORMAT = 1
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class PresetMismatchError(SteeringError):
    """A preset applied to an SAE (or model) other than the one it was made for."""


def check_preset_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise SteeringError(
            f"preset name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Preset:
    """A named set of feature edits (and optional stop triggers) for one SAE of one model."""

    name: str
    edits: tuple[str, ...]  # edit texts, e.g. "123:add=2x@generated?77>1"
    sae_fingerprint: str
    hook_name: str | None = None
    model: dict[str, Any] | None = None  # ModelIdentity.to_json() of the model it was made for
    stops: tuple[str, ...] = ()  # stop triggers, e.g. "77>2" (generation stops when one fires)
    description: str = ""
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)  # str(feature) -> typical_max, ...
    scorecard: dict[str, Any] | None = None
    created_at: str = ""
    saesteer_version: str = ""
    format: int = PRESET_FORMAT

    def __post_init__(self) -> None:
        check_preset_name(self.name)
        object.__setattr__(self, "edits", tuple(self.edits))
        object.__setattr__(self, "stops", tuple(self.stops))
        if not self.edits:
            raise SteeringError(f"preset {self.name!r} has no edits")
        for e in self.edits:
            parse_edit(e)  # a clear error for a damaged record
        for t in self.stops:
            Trigger.parse(t)
        if not isinstance(self.sae_fingerprint, str) or len(self.sae_fingerprint) < 16:
            raise SteeringError(f"preset {self.name!r} does not record the SAE it belongs to (sae_fingerprint)")
        if self.format > PRESET_FORMAT:
            raise SteeringError(f"preset {self.name!r} has format {self.format}; this saesteer reads {PRESET_FORMAT}: upgrade")

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["edits"], d["stops"] = list(self.edits), list(self.stops)
        return d

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> "Preset":
        if not isinstance(record, Mapping):
            raise SteeringError(f"a preset is a JSON object, got {type(record).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(record) - known)
        if unknown:
            raise SteeringError(f"preset record has unknown fields {unknown}; it was written by a newer saesteer?")
        try:
            return cls(**dict(record))
        except TypeError as e:
            raise SteeringError(f"preset record is incomplete: {e}") from None

    # -- checks --------------------------------------------------------------------------------
    def check(self, model: Model, sae: SAE, *, sae_name: str = "sae", allow_model_mismatch: bool = False,
              fingerprint: str | None = None, model_override: str = "allow_model_mismatch=True") -> None:
        """Refuse an SAE whose weights hash or hook differ from the preset's (PresetMismatchError),
        and a model other than the recorded one (saes.identity.ModelMismatchError) unless allowed.
        `fingerprint`: the SAE's hash when the caller already has it (computing it reads the weights)."""
        from saes.fingerprint import sae_fingerprint
        from saes.identity import ModelIdentity, check_same_model, identity_of_model

        fp = fingerprint or sae_fingerprint(sae)
        if fp != self.sae_fingerprint:
            raise PresetMismatchError(
                f"preset {self.name!r} was made for the SAE with weights hash {self.sae_fingerprint[:12]} "
                f"(hook {self.hook_name or '?'}), but SAE {sae_name!r} has hash {fp[:12]}; a feature id means "
                f"nothing in another SAE: save the preset again for this SAE"
            )
        hook = (getattr(sae, "cfg", None) and sae.cfg.metadata.get("hook_name")) or None
        if self.hook_name and hook and hook != self.hook_name:
            raise PresetMismatchError(
                f"preset {self.name!r} was made for the SAE at {self.hook_name}, but SAE {sae_name!r} reads {hook}"
            )
        if not allow_model_mismatch and self.model is not None and model is not None:
            check_same_model(ModelIdentity.from_json(self.model), identity_of_model(model),
                             recorded_in=f"preset {self.name!r}", given_as="the model", override=model_override,
                             fix="use the model the preset records")

    # -- use -------------------------------------------------------------------------------------
    def typical_max(self, latent: int) -> float | None:
        """The typical max activation recorded for `feature` when the preset was saved."""
        v = (self.calibration.get(str(int(latent))) or {}).get("typical_max")
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else None

    def feature_edits(self, sae_name: str | None = None) -> list[FeatureEdit]:
        """The edits with "x" strengths and thresholds resolved through the recorded calibration
        (raw units from here on), for the SAE named `sae_name`."""
        out = []
        for text in self.edits:
            e = parse_edit(text)
            value, unit = e.value, e.unit
            if unit == "max_act":
                tmax = self._recorded_max(e.latent, text)
                value, unit = (value or 0.0) * tmax, "raw"
            when = e.when
            if when is not None and when.unit == "max_act":
                when = Trigger(when.latent, when.above * self._recorded_max(when.latent, text), "raw")
            out.append(FeatureEdit(e.latent, e.op, value, unit, e.positions, sae_name, when))
        return out

    def stop_triggers(self) -> list[Trigger]:
        out = []
        for text in self.stops:
            t = Trigger.parse(text)
            if t.unit == "max_act":
                t = Trigger(t.latent, t.above * self._recorded_max(t.latent, text), "raw")
            out.append(t)
        return out

    def _recorded_max(self, latent: int, text: str) -> float:
        tmax = self.typical_max(latent)
        if tmax is None:
            raise SteeringError(
                f"preset {self.name!r}: {text!r} uses an 'x' strength but the preset records no typical max "
                f"activation for latent {latent} (its store had none: the latent never fired on the store's tokens, or "
                f"the store has no statistics); use a raw value (without 'x'), or save it from a store where it fires"
            )
        return tmax

    def describe(self) -> str:
        stops = f" stop when {', '.join(self.stops)}" if self.stops else ""
        return f"preset {self.name}: {'; '.join(self.edits)}{stops}"


def make_preset(
    name: str,
    edits: Sequence[FeatureEdit | str],
    *,
    sae: SAEArg | None = None,
    d_sae: int | None = None,
    hook_name: str | None = None,
    model: Model | None = None,
    typical_max: TypicalMax | None = None,
    recommended: Any = None,
    stops: Sequence[Trigger | str] = (),
    description: str = "",
    scorecard: Mapping[str, Any] | None = None,
    fingerprint: str | None = None,
    model_identity: Any = None,
) -> Preset:
    """A preset of `edits` for `sae` (on `model`, or the model identity given, or else the model
    a `LoadedSAE` records). Without the SAE
    object (e.g. from a feature store's records), give its `fingerprint`, `d_sae` and `hook_name`.
    `typical_max`: feature -> typical max activation (recorded for every feature named, needed
    for 'x' units); `recommended`: feature -> (strength, source, details) or None, recorded as
    calibration too."""
    from datetime import datetime, timezone

    from saes.fingerprint import sae_fingerprint
    from saes.formats.base import sae_of
    from saes.identity import identity_of_model, recorded_model_of

    check_preset_name(name)
    loaded, sae = sae, (sae_of(sae) if sae is not None else None)
    if sae is None and (fingerprint is None or d_sae is None):
        raise SteeringError("make_preset needs the SAE, or its fingerprint and d_sae")
    n = int(sae.d_sae) if sae is not None else int(d_sae)  # type: ignore[arg-type]
    parsed, triggers = _preset_edits(edits, stops, n)
    features = sorted({e.latent for e in parsed} | {e.when.latent for e in parsed if e.when}
                      | {t.latent for t in triggers})
    calibration = _calibration(features, typical_max, recommended)
    ident = model_identity or (identity_of_model(model) if model is not None else None) or \
        (recorded_model_of(loaded) if loaded is not None else None)
    if hook_name is None and sae is not None:
        hook_name = sae.cfg.metadata.get("hook_name")
    preset = Preset(
        name=name,
        edits=tuple(e.describe() if e.sae is None else FeatureEdit(e.latent, e.op, e.value, e.unit, e.positions,
                                                                  None, e.when).describe() for e in parsed),
        stops=tuple(t.describe() for t in triggers),
        sae_fingerprint=fingerprint or sae_fingerprint(sae),
        hook_name=hook_name,
        model=ident.to_json() if ident is not None else None,
        description=description,
        calibration=calibration,
        scorecard=dict(scorecard) if scorecard is not None else None,
        created_at=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        saesteer_version=__version__,
    )
    _check_resolves(preset)
    return preset


def _preset_edits(edits: Sequence[FeatureEdit | str], stops: Sequence[Trigger | str],
                  n: int) -> tuple[list[FeatureEdit], list[Trigger]]:
    """The edits and stop triggers parsed, checked to be feature edits of latents 0..n-1."""
    parsed = [parse_edit(e) if isinstance(e, str) else e for e in edits]
    if not parsed:
        raise SteeringError("a preset needs at least one edit, e.g. 123:add=2x")
    triggers = [Trigger.parse(t) if isinstance(t, str) else t for t in stops]
    for e in parsed:
        if not isinstance(e, FeatureEdit):
            raise SteeringError(f"a preset holds SAE latent edits only, got {e!r}")
    for f, what in [(e.latent, e.describe()) for e in parsed] + [(e.when.latent, e.describe()) for e in parsed if e.when] \
            + [(t.latent, f"stop {t.describe()}") for t in triggers]:
        if not 0 <= f < n:
            raise SteeringError(f"{what}: latent {f} is out of range (0..{n - 1})")
    return parsed, triggers


def _calibration(features: Sequence[int], typical_max: TypicalMax | None, recommended: Any) -> dict[str, dict[str, Any]]:
    """Per feature: its typical max activation and, where known, its recommended strength."""
    calibration: dict[str, dict[str, Any]] = {}
    for f in features:
        rec: dict[str, Any] = {"typical_max": lookup_typical_max(typical_max, f)}
        if recommended is not None:
            r = recommended(f) if callable(recommended) else recommended.get(f)
            if r is not None:
                rec["recommended_strength"], rec["strength_source"], rec["strength_details"] = r
        calibration[str(f)] = rec
    return calibration


def _check_resolves(preset: Preset) -> None:
    """'x' units and stop triggers must resolve now, not when someone applies the preset."""
    for e in preset.edits:
        pe = parse_edit(e)
        if pe.unit == "max_act" or (pe.when is not None and pe.when.unit == "max_act"):
            preset.feature_edits()
            break
    preset.stop_triggers()
