"""Checks of config values, shared by every config dataclass (`__post_init__`).

A failed check is a `ConfigError` whose message names the field as `Owner.field` (the CLI says
it as the command's flag: `saesteer.configargs` / `saesteer.boundary`). Standard library only,
so torch-free config modules use it.

    whole_number("TrainConfig", "batch_size", self.batch_size)           # >= 1
    whole_number("TrainConfig", "seed", self.seed, minimum=0)
    finite_number("OptimConfig", "warmup_frac", self.warmup_frac, 0.0, 1.0)
    require(self.k <= self.d_sae, "SAESpec.k (...) must not exceed d_sae (...)", field="k")
"""

from __future__ import annotations

import math
from typing import Any

from saes.errors import SaesteerError


class ConfigError(SaesteerError, ValueError):
    """A config value out of range; `field` is the field at fault."""


def _name(owner: str, name: str) -> str:
    return f"{owner}.{name}" if owner else name


def require(cond: Any, message: str, field: str | None = None) -> None:
    """Raise `ConfigError(message)` unless `cond` holds."""
    if not cond:
        raise ConfigError(message, field=field)


def whole_number(owner: str, name: str, value: Any, minimum: int = 1) -> None:
    """`value` is an int (not a bool) >= `minimum`."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    kind = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")
    require(ok, f"{_name(owner, name)} must be {kind}; got {value!r}", field=name)


def finite_number(owner: str, name: str, value: Any, lo: float | None = None, hi: float | None = None) -> None:
    """`value` is a finite int or float (not a bool) in [lo, hi] (either bound may be absent)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo is None or value >= lo) and (hi is None or value <= hi)
    rng = f" in [{lo}, {hi}]" if lo is not None and hi is not None else (f" >= {lo}" if lo is not None else
                                                                         f" <= {hi}" if hi is not None else "")
    require(ok, f"{_name(owner, name)} must be a finite number{rng}; got {value!r}", field=name)


def one_of(owner: str, name: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    """`value` is one of `choices`."""
    require(value in choices, f"{_name(owner, name)} must be one of {', '.join(choices)}; got {value!r}", field=name)
