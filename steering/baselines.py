"""Baselines that steering by SAE features is measured against, in the same evaluation.

- Difference of means: the mean activation at a hook over prompts showing the concept minus the
  mean over neutral prompts, added at the same hook (`SteeringVector.edit(strength)`); strength 1
  adds the full difference.
- Prompting: prepend an instruction or a topic cue to every prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from steering.activations import mean_hook_activation
from steering.spec import Positions, SteeringError, VectorEdit

if TYPE_CHECKING:
    from steering.config import GenerationConfig
    from steering.inputs import Model


@dataclass(eq=False)
class SteeringVector:
    """A direction at a hook, e.g. from `diff_of_means`."""

    hook_name: str
    vector: Tensor  # [D]
    label: str = "diffmean"
    n_positive: int = 0
    n_negative: int = 0

    @property
    def norm(self) -> float:
        return float(self.vector.float().norm())

    def edit(self, strength: float = 1.0, positions: Positions = "all") -> VectorEdit:
        return VectorEdit(self.hook_name, self.vector, strength, positions, self.label)


def diff_of_means(
    model: Model,
    hook_name: str,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    batch_size: int = 16,
    label: str = "diffmean",
) -> SteeringVector:
    """mean(act | positive prompts) - mean(act | negative prompts) over real tokens at `hook_name`
    (of the model unsteered: refused inside a `steer` block on it, whose edits would shift the means)."""
    from steering.session import check_not_steered

    check_not_steered(model, "steering.diff_of_means")
    mean_p, n_p = mean_hook_activation(model, hook_name, positive, batch_size=batch_size)
    mean_n, n_n = mean_hook_activation(model, hook_name, negative, batch_size=batch_size)
    return SteeringVector(hook_name, mean_p - mean_n, label, n_p, n_n)


def prompting_baseline(prompts: Sequence[str], cue: str | Callable[[str], str], *, separator: str = " ") -> list[str]:
    """Prompts with an instruction/topic cue prepended: `cue + separator + prompt`, or `cue(prompt)`."""
    if isinstance(prompts, str):
        raise SteeringError("prompts must be a list of strings")
    if callable(cue):
        return [cue(p) for p in prompts]
    if not isinstance(cue, str) or not cue.strip():
        raise SteeringError("the prompting cue must be a non-empty string or a function prompt -> prompt")
    return [cue.rstrip() + separator + p.lstrip() if p else cue for p in prompts]


def check_prompting_fits(model: Model, prompts: Sequence[str], cue: str | Callable[[str], str],
                         config: GenerationConfig) -> None:
    """The prompting baseline's prompts (`prompting_baseline`: the cue before each) checked against
    the model's context (`steering.generation.check_prompts_fit`): a comparison generates them last,
    after every other method has run."""
    from steering.generation import check_prompts_fit

    try:
        check_prompts_fit(model, prompting_baseline(prompts, cue), config)
    except SteeringError as e:
        raise SteeringError(f"the prompting baseline (the cue before each prompt): {e.message} (the cue's tokens "
                            f"included: a shorter cue fits too)", field=e.field) from None
