"""SAELens SAEs spliced into the model being steered (`HookedSAETransformer.add_sae`, `run_with_saes`,
`with model.saes(...)`; `SAETransformerBridge` alike): where an edit at their hook goes, and the check
that a splice made inside a `steer` block has not taken steering's hooks away.

SAELens splices an SAE by putting a wrapper module in place of the hook point; the wrapper's
`HOOK.hook_sae_output` is what flows on. With `use_error_term=True` that is the activation itself
(reconstruction + error), so an edit there is the edit the model gets without the splice. Without the
error term the model runs on the reconstruction, and an edit would read the latents of that
reconstruction (a second SAE pass): refused. Adding or removing a splice puts a new module at the hook's
path, so hooks on the old hook point (steering's) stop firing without a sound: `HookWatch` notices.
"""

from __future__ import annotations

from typing import Any

from steering.spec import SteeringError

_OUTPUT = "hook_sae_output"


def spliced_sae_at(model: Any, hook: str) -> Any | None:
    """The SAELens wrapper spliced at `hook`, or None (also for models that cannot splice)."""
    if not getattr(model, "_acts_to_saes", None):
        return None
    resolve = getattr(model, "_resolve_hook_name", None)  # SAETransformerBridge: aliases -> module paths
    try:
        module = model.get_submodule(resolve(hook) if callable(resolve) else hook)
    except (AttributeError, KeyError, ValueError):
        return None
    return module if hasattr(module, _OUTPUT) and hasattr(module, "use_error_term") else None


def steered_hook(model: Any, hook: str, who: str) -> str:
    """Where an edit at `hook` is applied: `hook` itself, or the output of a SAELens SAE spliced there
    with its error term."""
    wrapper = spliced_sae_at(model, hook)
    if wrapper is None:
        return hook
    if not wrapper.use_error_term:
        raise SteeringError(
            f"{who}: the model has a SAELens SAE spliced at {hook} without its error term, so the model runs on that "
            f"SAE's reconstruction and an edit there would read the latents of the reconstruction; splice it with "
            f"use_error_term=True (model.add_sae(sae, use_error_term=True)) or remove it (model.reset_saes())")
    return f"{hook}.{_OUTPUT}"


class HookWatch:
    """The hook points steering hooked, checked before each forward of a block: one replaced since
    (a SAELens splice added or removed inside the `steer` block) no longer runs steering's hook."""

    def __init__(self, model: Any, hook_names: list[str]) -> None:
        self.model = model
        hook_dict = model.hook_dict
        points = [(name, getattr(hook_dict[name], "name", None) or name, hook_dict[name]) for name in hook_names]
        # only points found at their module path (TransformerBridge aliases may have another)
        self.points = [(name, path, point) for name, path, point in points if self._at(path) is point]

    def _at(self, path: str) -> Any:
        try:
            return self.model.get_submodule(path)
        except AttributeError:
            return None

    def check(self) -> None:
        for name, path, point in self.points:
            if self._at(path) is not point:
                raise SteeringError(
                    f"steering's hook at {name} is no longer in the model: something replaced that hook point inside "
                    f"the `steer` block (SAELens's add_sae, run_with_saes, saes() and reset_saes do), so the edit "
                    f"would silently stop; splice SAELens SAEs (with use_error_term=True) before entering `steer`")
