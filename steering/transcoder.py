"""Steering a transcoder: its latents are read at its input hook, its edits land on its target hook.

`steering.session` (and the batched engine) attach an `InputCapture` at the input hook, which keeps
that hook's activation of the current forward pass; the edit at the target hook reads the latents
from it and adds (edited - original latent) x decoder row. `transcoder_target_hook` checks the pair
on the model first (both hooks exist, the target runs after the input, the widths fit).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from saes.base import SAE
from saes.hookpoints import HookPairError, check_transcoder_hooks, transcoder_target
from steering.inputs import Model
from steering.saelens_splices import steered_hook
from steering.spec import SteeringError


class InputCapture:
    """A forward hook that keeps its hook's activation of the current forward pass (a
    transcoder's input, read at its target hook) and changes nothing."""

    def __init__(self, hook_name: str) -> None:
        self.hook_name = hook_name
        self.value: Tensor | None = None
        self.calls = 0  # a hook point replaced since it was hooked leaves this still (`HookWatch`)

    def __repr__(self) -> str:
        return f"steering-capture<{self.hook_name}>"

    def __call__(self, x: Tensor, hook: Any = None) -> None:
        self.value = x
        self.calls += 1

    def rows(self, B: int, S: int) -> Tensor:
        """The captured activation as [B * S, width] rows, for a forward pass of B x S positions."""
        v = self.value
        if v is None or tuple(v.shape[:2]) != (B, S):
            raise SteeringError(f"the transcoder input at {self.hook_name} was not captured in this forward pass "
                                f"(got {None if v is None else tuple(v.shape)}, expected [{B}, {S}, ...])")
        return v.reshape(B * S, -1)


def transcoder_target_hook(model: Model, sae: SAE, name: str, input_hook: str) -> str:
    """The hook a transcoder's edits land on (`saes.hookpoints.transcoder_target`; the output of a SAELens
    SAE spliced there, `steering.saelens_splices.steered_hook`), its pair checked on `model`."""
    try:
        target = steered_hook(model, transcoder_target(sae, f"transcoder {name!r}"), f"transcoder {name!r}")
        check_transcoder_hooks(model, input_hook, target, f"transcoder {name!r}", d_in=sae.d_in, d_out=sae.d_out)
    except HookPairError as e:
        raise SteeringError(e.message) from None
    return target
