"""Steered and unsteered continuations side by side (same prompts, config and seed).

    cmp = compare(model, sae, ["123:clamp=2x"], prompts, typical_max=store_max)
    cmp.steered[i], cmp.unsteered[i]

Sits above both `steering.session` (the hooks) and `steering.generation` (plain generation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from saes.hookpoints import opt_in_hooks
from steering.config import GenerationConfig
from steering.generation import Generation, as_prompts, fitting_prompts, generate_tokenized, with_sae_bos
from steering.inputs import Model, SAEs, TypicalMaxArg
from steering.session import check_not_steered, steer
from steering.spec import Edit, SteerLimits


@dataclass
class Comparison:
    """Steered and unsteered continuations of the same prompts with the same seed."""

    prompts: list[str]
    steered: list[str]
    unsteered: list[str]
    edits: str


def compare(
    model: Model,
    saes: SAEs,
    edits: Sequence[Edit | str] | Edit | str,
    prompts: str | Sequence[str],
    config: GenerationConfig | None = None,
    *,
    typical_max: TypicalMaxArg = None,
    limits: SteerLimits | None = None,
    allow_model_mismatch: bool = False,
    progress: bool = False,
    **overrides: Any,
) -> Comparison:
    """Generate with and without `edits` (same config and seed) for a side-by-side view. Prompts get
    the BOS the SAEs were trained with unless `config.prepend_bos` says otherwise. `overrides`
    replace fields of `config` (e.g. max_new_tokens=10). The unsteered pass runs with the opt-in hook
    points the edits use switched on as the steered one does (the same forward path: an edit that
    changes nothing gives exactly the unsteered text). `progress`: a bar (stderr) over the tokens
    the two generation passes make (each forward pass of a batch: one new token of every prompt)."""
    from tqdm.auto import tqdm

    check_not_steered(model, "steering.compare")
    config = with_sae_bos(dataclasses.replace(config or GenerationConfig(), **overrides), saes)
    prompts = as_prompts(prompts)
    per_pass = config.max_new_tokens * len(prompts)
    # checked before the bar (a refusal, not a bar at 0/N), and tokenized once for both passes
    tokenized = fitting_prompts(model, prompts, config)
    with tqdm(total=2 * per_pass, desc="generating steered", unit="tok", disable=not progress) as bar:
        with steer(model, saes, edits, typical_max=typical_max, limits=limits,
                   allow_model_mismatch=allow_model_mismatch) as s:
            hooks = [h for h, _ in s.plan.fwd_hooks]
            with _ticks(model, hooks, bar, until=per_pass):
                steered = generate_tokenized(model, prompts, tokenized, config, session=s)
            described = s.describe()
        _end_pass(bar, steered, 0, per_pass)
        bar.set_description("generating unsteered")
        start = bar.n
        with opt_in_hooks(model, hooks, "comparison"), _ticks(model, hooks, bar, until=start + per_pass):
            base = generate_tokenized(model, prompts, tokenized, config)
        _end_pass(bar, base, start, per_pass)
    return Comparison(base.prompts, steered.texts, base.texts, described)


def _end_pass(bar: Any, made: Generation, start: int, per_pass: int) -> None:
    """Bring `bar` to the end of a pass that began at `start` with the tokens it made (one of every
    prompt per forward pass). A pass that stopped early (every prompt at its EOS) made fewer than the
    `per_pass` planned: the total drops by those, so the bar never counts tokens that were not made."""
    n = int(made.new_tokens.numel())
    if n < per_pass:
        bar.total -= per_pass - n
    bar.update(start + n - bar.n)


def _ticks(model: Model, hooks: list[str], bar: Any, until: int):
    """Advance `bar` by one token of every row at each forward pass of generation, up to `until`
    (read at the first hook point the edits use, which each forward pass runs once; its batch: the
    prompts, or those of one length where `generate` samples them by length); nothing without a
    hook point or with the bar off."""
    import contextlib

    if not hooks or bar.disable:
        return contextlib.nullcontext()

    def tick(act, hook):  # reads nothing, changes nothing
        bar.update(min(int(act.shape[0]), until - bar.n))

    return model.hooks(fwd_hooks=[(hooks[0], tick)])
