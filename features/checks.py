"""Whether an SAE, an activation source and a model fit each other, before a feature store is built
over them: the width, hook point and BOS (`check_compatible`), the models and their weight
processing (`check_models`); every refusal names both sides and the fix.

    checked = check_inputs(loaded_sae, CacheSource("caches/toy"))     # before loading the model
    build_feature_store("toy.db", loaded_sae, source, model=model, checked=checked)

`build_feature_store` makes these checks itself. Given `checked` (what `check_inputs` returned for
the same SAE, source and allow_model_mismatch) it does not make them again, only those of a model
the checks did not see; a `CheckedInputs` made otherwise (by hand, a copy) vouches for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from features.source import ActivationSource
from saes.bos import check_cache_bos
from saes.formats.base import sae_of

_ISSUED = object()  # what marks a CheckedInputs that check_inputs made


def check_compatible(sae, source: ActivationSource, *, bos_policy_as: str = "bos_policy") -> None:
    """The SAE (bare, or a `LoadedSAE`) reads the source's width, hook point and BOS."""
    loaded, sae = sae, sae_of(sae)
    if sae.cfg.d_in != source.d_in:
        raise ValueError(
            f"the SAE reads d_in={sae.cfg.d_in} but the cache's activations ({source.hook_name}) have width "
            f"{source.d_in}; use the cache of the SAE's hook point"
        )
    hook = (sae.cfg.metadata or {}).get("hook_name")
    if hook and source.hook_name and hook != source.hook_name:
        raise ValueError(
            f"the SAE was trained on hook {hook!r} but the cache source reads {source.hook_name!r}; "
            f"pick that hook from the cache (hook={hook!r})"
        )
    # the BOS: exactly the policy an SAE trained here records (a `LoadedSAE`'s saesteer.json), else by
    # cfg.json's prepend_bos; only caches record how their contexts were packed
    check_cache_bos(loaded, getattr(source, "bos_policy", None), getattr(source, "path", ""), policy_as=bos_policy_as)


def library_processing_fix(wanted: bool) -> str:
    return f"use a cache of the model loaded with process_weights={wanted} (saesteer.models.load_model)"


def check_models(sae, source: ActivationSource, model=None, allow_mismatch: bool = False, *,
                 override: str = "allow_model_mismatch=True",
                 processing_fix: Callable[[bool], str] = library_processing_fix, sae_name: str | None = None):
    """The model the store belongs to (the cache's recorded model, else the SAE's), after refusing
    (ModelMismatchError) an SAE or a model recorded for another model than the cache's, or a cache
    whose model's weight processing is not what the SAE's SAELens kwargs ask for (`saes.processing`).
    `override`, `processing_fix(wanted)`: how the caller allows a mismatch and gets a cache processed
    (wanted=True) or raw, for the refusals (the CLI: its flags); `sae_name`: the SAE as the caller
    names it (the CLI: its --sae)."""
    from saes.identity import check_named_model, check_same_model, identity_of_model, recorded_model_of

    cache_model = _recorded(source, "recorded_model")
    sae_model = recorded_model_of(sae)
    if not allow_mismatch:
        check_same_model(cache_model, sae_model, recorded_in=_where(source),
                         given_as=f"the SAE {sae_name}'s model" if sae_name else "the SAE's model (its saesteer.json)",
                         override=override, fix="use the cache the SAE was trained on")
        _check_model_given(cache_model or sae_model, cache_model is not None, source, model, override)
        check_named_model(sae, cache_model or identity_of_model(model), override=override,
                          sae_as=f"the SAE {sae_name}" if sae_name else "the SAE",
                          given_as=f"the model of {_where(source)}" if cache_model else "the model given",
                          fix="use a cache of the model it names")
        _check_processing(sae, source, model, override, processing_fix, sae_name)
    return cache_model or sae_model


def _check_model_given(recorded, by_cache: bool, source: ActivationSource, model, override: str) -> None:
    """The model given (if any) is the one recorded (by the cache, else by the SAE)."""
    from saes.identity import check_same_model, identity_of_model

    check_same_model(recorded, identity_of_model(model), recorded_in=_where(source) if by_cache else "the SAE",
                     given_as="the model given", override=override, fix="pass the model the cache was made with")


def _recorded(source: ActivationSource, name: str):
    """What the source records of its model, where it records anything (a cache)."""
    method = getattr(source, name, None)
    return method() if callable(method) else None


def _where(source: ActivationSource) -> str:
    return f"the activation cache {getattr(source, 'path', '')}".rstrip()


def _check_processing(sae, source: ActivationSource, model, override: str, processing_fix: Callable[[bool], str],
                      sae_name: str | None) -> None:
    """The model's weight processing against the SAE's (`saes.processing.check_processing`), by the
    loaded model's config where given, else the one the cache records."""
    from saes.processing import check_processing

    check_processing(sae, _recorded(source, "recorded_model"), sae_name=sae_name or "sae",
                     model_as=f"the model of {_where(source)}", override=override,
                     model_cfg=getattr(model, "cfg", None) or _recorded(source, "model_config"),
                     applied=_recorded(source, "processing_applied"), fix=processing_fix)


@dataclass(frozen=True)
class CheckedInputs:
    """What `check_inputs` found to fit: an SAE (or `LoadedSAE`), an activation source and a model
    (or None), under `allow_model_mismatch`. `recorded`: the model the store belongs to. Only one
    that `check_inputs` made counts (`covers`): not a copy, not one made by hand."""

    sae: object
    source: ActivationSource
    model: object
    recorded: object
    allow_model_mismatch: bool
    by_model_config: bool  # the weight processing was checked by a model config (the model's, or the cache's record)
    sae_name: str | None = None
    _issued: object = field(default=None, init=False, repr=False, compare=False)  # _ISSUED: made by check_inputs

    def covers(self, sae, source: ActivationSource, allow_model_mismatch: bool) -> bool:
        """Whether these checks hold for a build of `sae` over `source` under `allow_model_mismatch`."""
        return (self._issued is _ISSUED and self.sae is sae and self.source is source
                and self.allow_model_mismatch == allow_model_mismatch)

    def check_model(self, model, override: str, processing_fix: Callable[[bool], str]) -> None:
        """Check a model these checks did not see against `recorded` (and, where no model config was
        known then, the weight processing by its config); nothing under allow_model_mismatch."""
        if model is None or model is self.model or self.allow_model_mismatch:
            return
        _check_model_given(self.recorded, _recorded(self.source, "recorded_model") is not None, self.source, model,
                           override)
        if not self.by_model_config:
            _check_processing(self.sae, self.source, model, override, processing_fix, self.sae_name)


def check_inputs(sae, source: ActivationSource, model=None, allow_model_mismatch: bool = False, *,
                 override: str = "allow_model_mismatch=True",
                 processing_fix: Callable[[bool], str] = library_processing_fix, sae_name: str | None = None,
                 bos_policy_as: str = "bos_policy") -> CheckedInputs:
    """Every check of an SAE against an activation source (and the model, if given) that a build
    makes: the width, hook point and BOS (`check_compatible`), the models and their weight
    processing (`check_models`). `bos_policy_as`: how the caller sets a cache's BOS policy."""
    recorded = check_models(sae, source, model, allow_model_mismatch, override=override,
                            processing_fix=processing_fix, sae_name=sae_name)
    check_compatible(sae, source, bos_policy_as=bos_policy_as)
    by_config = getattr(model, "cfg", None) is not None or _recorded(source, "model_config") is not None
    checked = CheckedInputs(sae, source, model, recorded, allow_model_mismatch, by_config, sae_name)
    object.__setattr__(checked, "_issued", _ISSUED)  # frozen: set the one way a dataclass allows
    return checked
