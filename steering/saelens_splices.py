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


def _module_path(model: Any, hook: str) -> str:
    # SAETransformerBridge's hook_dict lists module paths only (blocks.0.hook_out), not the aliases
    # TransformerLens's names resolve to (blocks.0.hook_resid_post): its own resolver maps them
    resolve = getattr(model, "_resolve_hook_name", None)
    return resolve(hook) if callable(resolve) and hook not in model.hook_dict else hook


def spliced_sae_at(model: Any, hook: str) -> Any | None:
    """The SAELens wrapper spliced at `hook`, or None (also for models that cannot splice)."""
    if not getattr(model, "_acts_to_saes", None):
        return None
    try:
        module = model.get_submodule(_module_path(model, hook))
    except (AttributeError, KeyError, ValueError):
        return None
    return module if hasattr(module, _OUTPUT) and hasattr(module, "use_error_term") else None


def steered_hook(model: Any, hook: str, who: str) -> str:
    """Where an edit at `hook` is applied: `hook` itself (on SAETransformerBridge the module path it
    names), or the output of a SAELens SAE spliced there with its error term."""
    wrapper = spliced_sae_at(model, hook)
    if wrapper is None:
        return _module_path(model, hook)
    out = f"{_module_path(model, hook)}.{_OUTPUT}"
    if model.hook_dict.get(out) is not getattr(wrapper, _OUTPUT):  # SAETransformerBridge lists the SAE's own
        raise SteeringError(
            f"{who}: the model has a SAELens SAE spliced at {hook}, and {out} on this model is not the hook its "
            f"output passes, so an edit there would not apply; remove the splice (model.reset_saes()) before "
            f"steering, or splice on a HookedSAETransformer")
    if not wrapper.use_error_term:
        raise SteeringError(
            f"{who}: the model has a SAELens SAE spliced at {hook} without its error term, so the model runs on that "
            f"SAE's reconstruction and an edit there would read the latents of the reconstruction; splice it with "
            f"use_error_term=True (model.add_sae(sae, use_error_term=True)) or remove it (model.reset_saes())")
    return out


class HookWatch:
    """Steering's hooks in one block, checked after each forward of the block: a hook that did not run
    means its hook point was replaced or bypassed since it was hooked (a SAELens splice added or removed
    inside the `steer` block; on SAETransformerBridge a hook point stays out of the forward after
    `reset_saes`), and the edit would silently not apply (or read a transcoder's input of an earlier
    forward). `hook_fns`: objects counting their `calls` (edits and transcoder input captures)."""

    def __init__(self, hook_fns: list[Any]) -> None:
        self.hook_fns = hook_fns
        self.counts: list[int] = []

    def before(self) -> None:
        self.counts = [h.calls for h in self.hook_fns]

    def after(self) -> None:
        for h, n in zip(self.hook_fns, self.counts):
            if h.calls == n:
                raise SteeringError(
                    f"steering's hook at {h.hook_name} did not run in this forward pass: that hook point was replaced "
                    f"or taken out of the forward since `steer` hooked it (SAELens's add_sae, run_with_saes, saes() "
                    f"and reset_saes do; on SAETransformerBridge a hook point stays out of the forward after "
                    f"reset_saes: boot the model again), or the hook was removed (model.reset_hooks()), so the edit "
                    f"would silently not apply; splice SAELens SAEs (with use_error_term=True) before entering "
                    f"`steer`, and reset hooks only after it")
