"""What to steer: edit specifications, their text form, and the limits that guard them.

An edit names a latent of an SAE (`FeatureEdit`) or a raw direction at a hook (`VectorEdit`),
an operation, a strength and the token positions it applies to:

- add:    add `value` to the latent, i.e. add `value * W_dec[latent]` to the activation
- clamp:  set the latent's activation to `value`
- scale:  multiply the latent's activation by `value`
- ablate: set the latent's activation to 0

Latent edits keep the SAE's reconstruction error: x' = x + (edited - acts) @ W_dec, so only the
chosen latents change and an edit that changes nothing leaves x bit-identical.

Strength units: `unit="raw"` (activation units) or `unit="max_act"` (multiples of the latent's
typical maximum activation, e.g. `123:clamp=2x`), resolved through a typical-max provider.

Positions (per row of a batch; left padding is accounted for, pad tokens are never edited):
- "all": every real token, prompt and generated
- "prompt": the tokens of the prompt
- "generated": the tokens produced by generation (from the first sampled token on)
- "last": the last prompt token (the one whose output predicts the first new token)
- a tuple of ints: token indices within each row (0 = the first real token, BOS included when
  prepended); negative indices count back from the end of the prompt (-1 = last prompt token);
  indices at or beyond the prompt length address generated tokens.
- "role:NAME" (chat prompts only): the tokens of every message with that role (its whole
  rendered span, template markup included); "role:assistant" also covers the generated reply.
- "turn:I" (chat prompts only): the tokens of message I (0 = the first; -1 = the last message of
  the prompt).

Conditional edits: `when=Trigger(latent, above)` applies the edit only at positions (among its
own) where the trigger latent's current activation (read before any edit at that hook) is
above `above` (raw units, or multiples of its typical max with unit="max_act"). The trigger
latent belongs to the same SAE as the edited one.

Text form (CLI, web): `[SAE/]LATENT:OP[=VALUE[x]][@POSITIONS][?TRIGGER>THRESHOLD[x]]`, e.g.
`123:clamp=8`, `123:clamp=2x`, `res/77:add=-3@generated`, `5:ablate@0,1,-1`, `9:scale=0.5@prompt`,
`123:add=4?77>1.5` (add where latent 77 is above 1.5).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from saes.errors import SaesteerError, SaesteerWarning

OPS: tuple[str, ...] = ("add", "clamp", "scale", "ablate")
POSITION_NAMES: tuple[str, ...] = ("all", "prompt", "generated", "last")
UNITS: tuple[str, ...] = ("raw", "max_act")

Op = Literal["add", "clamp", "scale", "ablate"]
Unit = Literal["raw", "max_act"]
Positions = Union[str, tuple[int, ...]]  # a name of POSITION_NAMES, "role:NAME", "turn:I", or token indices
CHAT_POSITION_KINDS: tuple[str, ...] = ("role", "turn")

# A typical-max provider: latent -> typical max activation (float), as a mapping or callable;
# or, with several SAEs, a mapping from SAE name to one of those.
TypicalMax = Union[Mapping[int, float], Callable[[int], "float | None"]]


class SteeringError(SaesteerError, ValueError):
    """A steering request that cannot be carried out; the message says how to fix it."""


class SteeringWarning(SaesteerWarning):
    """A steering request that runs but may not do all that was asked (e.g. unreachable positions)."""


def normalize_positions(positions: Any) -> Positions:
    """Check and canonicalise a positions spec (names, or a tuple of ints)."""
    if isinstance(positions, str):
        text = positions.strip()
        if text in POSITION_NAMES:
            return text  # type: ignore[return-value]
        kind, sep, arg = text.partition(":")
        if sep and kind in CHAT_POSITION_KINDS:
            return _chat_positions(kind, arg.strip(), positions)
        try:
            return _parse_indices(text)
        except ValueError:
            raise SteeringError(
                f"unknown positions {positions!r}; use one of {', '.join(POSITION_NAMES)}, token indices like 0,3,-1, "
                f"or (chat prompts) role:user / turn:-1"
            ) from None
    if isinstance(positions, int) and not isinstance(positions, bool):
        return (int(positions),)
    if isinstance(positions, (list, tuple)):
        if not positions:
            raise SteeringError("positions is an empty list; give at least one token index, or 'all'")
        out = []
        for p in map(plain_scalar, positions):
            if isinstance(p, bool) or not isinstance(p, int):
                raise SteeringError(f"token indices must be integers, got {p!r} in positions {positions!r}")
            out.append(int(p))
        return tuple(sorted(set(out)))
    raise SteeringError(
        f"positions must be one of {', '.join(POSITION_NAMES)} or a list of token indices, got {positions!r}"
    )


def _chat_positions(kind: str, arg: str, original: Any) -> str:
    if kind == "role":
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,31}", arg):
            raise SteeringError(f"positions {original!r}: a role is a name such as system, user or assistant")
        return f"role:{arg}"
    try:
        return f"turn:{int(arg)}"
    except ValueError:
        raise SteeringError(f"positions {original!r}: a turn is a message index such as turn:0 or turn:-1") from None


def chat_position(positions: Positions) -> tuple[str, str] | None:
    """('role', NAME) or ('turn', I) for chat-scoped positions, else None."""
    if isinstance(positions, str):
        kind, sep, arg = positions.partition(":")
        if sep and kind in CHAT_POSITION_KINDS:
            return kind, arg
    return None


def _parse_indices(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError(text)
    return tuple(sorted({int(p) for p in parts}))


def positions_text(positions: Positions) -> str:
    return positions if isinstance(positions, str) else ",".join(str(p) for p in positions)


def plain_scalar(v: Any) -> Any:
    """A one-value tensor or NumPy scalar as the Python number it holds (what a notebook computes:
    `acts.argmax()`, `np.float32(...)`); anything else as given, for the checks that follow."""
    if not isinstance(v, (bool, int, float)) and getattr(v, "ndim", None) == 0 and callable(getattr(v, "item", None)):
        return v.item()
    return v


def _check_finite(what: str, value: float) -> None:
    if not math.isfinite(value):
        raise SteeringError(f"{what} is {value}; strengths must be finite numbers")


@dataclass(frozen=True)
class Trigger:
    """A condition on a latent of the edited SAE: its current activation is above `above`."""

    latent: int = field(metadata={"help": "latent id whose activation is tested"})
    above: float = field(default=0.0, metadata={"help": "threshold (raw units, or multiples of the typical max)"})
    unit: Unit = field(default="raw", metadata={"help": "raw activation units, or max_act"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "latent", plain_scalar(self.latent))
        object.__setattr__(self, "above", plain_scalar(self.above))
        if isinstance(self.latent, bool) or not isinstance(self.latent, int) or self.latent < 0:
            raise SteeringError(f"a trigger names a latent id (a non-negative integer), got {self.latent!r}")
        if isinstance(self.above, bool) or not isinstance(self.above, (int, float)):
            raise SteeringError(f"a trigger threshold must be a number, got {self.above!r}")
        object.__setattr__(self, "above", float(self.above))
        _check_finite(f"the threshold of trigger {self.latent}", self.above)
        if self.unit not in UNITS:
            raise SteeringError(f"unknown unit {self.unit!r} for a trigger; choose raw or max_act")

    @classmethod
    def parse(cls, text: str) -> "Trigger":
        """`77>1.5` or `77>0.5x`."""
        m = re.fullmatch(r"\s*(\d+)\s*>\s*([^\sxX]+)\s*([xX])?\s*", text)
        if not m:
            raise SteeringError(f"cannot parse trigger {text!r}; expected LATENT>THRESHOLD[x], e.g. 77>1.5 or 77>0.5x")
        try:
            above = float(m.group(2))
        except ValueError:
            raise SteeringError(f"threshold {m.group(2)!r} in trigger {text!r} is not a number") from None
        return cls(int(m.group(1)), above, "max_act" if m.group(3) else "raw")

    def describe(self) -> str:
        return f"{self.latent}>{self.above:g}" + ("x" if self.unit == "max_act" else "")


@dataclass(frozen=True)
class FeatureEdit:
    """Edit one latent of one SAE. `sae` names the SAE (None: the only SAE given to `steer`)."""

    latent: int = field(metadata={"help": "latent id in the SAE (0 .. d_sae-1)"})
    op: Op = field(default="clamp", metadata={"help": "add | clamp | scale | ablate"})
    value: float | None = field(
        default=None,
        metadata={"help": "add: amount added to the latent; clamp: target activation; scale: factor; ablate: unused"},
    )
    unit: Unit = field(default="raw", metadata={"help": "raw activation units, or max_act: multiples of the typical max"})
    positions: Positions = field(default="all", metadata={"help": "all | prompt | generated | last | token indices"})
    sae: str | None = field(default=None, metadata={"help": "name of the SAE (key in the saes mapping)"})
    when: Trigger | None = field(default=None, metadata={"help": "apply only where this trigger latent is above its threshold"})

    def __post_init__(self) -> None:
        if isinstance(self.when, str):
            object.__setattr__(self, "when", Trigger.parse(self.when))
        if self.when is not None and not isinstance(self.when, Trigger):
            raise SteeringError(f"when must be a Trigger (or text like '77>1.5'), got {self.when!r}")
        object.__setattr__(self, "latent", plain_scalar(self.latent))
        object.__setattr__(self, "value", plain_scalar(self.value))
        if isinstance(self.latent, bool) or not isinstance(self.latent, int):
            raise SteeringError(f"latent must be an integer (an SAE latent index), got {self.latent!r}")
        if self.op not in OPS:
            raise SteeringError(f"unknown op {self.op!r}; choose one of {', '.join(OPS)}")
        if self.unit not in UNITS:
            raise SteeringError(f"unknown unit {self.unit!r}; choose raw or max_act")
        if self.op == "ablate":
            if self.value not in (None, 0, 0.0):
                raise SteeringError(f"ablate takes no value (got {self.value!r}); use clamp=VALUE to set a value")
            object.__setattr__(self, "value", None)
        else:
            if self.value is None:
                raise SteeringError(f"{self.op} needs a value, e.g. {self.latent}:{self.op}=4")
            if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
                raise SteeringError(f"value must be a number, got {self.value!r}")
            object.__setattr__(self, "value", float(self.value))
            _check_finite(f"the {self.op} value of latent {self.latent}", self.value)
        if self.unit == "max_act" and self.op in ("scale", "ablate"):
            raise SteeringError(f"{self.op} does not take a max-activation unit ('x'); scale takes a plain factor")
        object.__setattr__(self, "positions", normalize_positions(self.positions))

    @classmethod
    def parse(cls, text: str, positions: Positions | None = None) -> FeatureEdit:
        """Parse `[SAE/]LATENT:OP[=VALUE[x]][@POSITIONS]` (see the module docstring)."""
        return parse_edit(text, positions)

    def describe(self) -> str:
        head = f"{self.sae}/" if self.sae is not None else ""
        val = ""
        if self.value is not None:
            val = f"={self.value:g}" + ("x" if self.unit == "max_act" else "")
        pos = "" if self.positions == "all" else f"@{positions_text(self.positions)}"
        cond = "" if self.when is None else f"?{self.when.describe()}"
        return f"{head}{self.latent}:{self.op}{val}{pos}{cond}"


@dataclass(frozen=True, eq=False)
class VectorEdit:
    """Add `strength * vector` to the activation at `hook_name` (steering vectors, baselines)."""

    hook_name: str
    vector: Any  # torch.Tensor [d]; kept untyped so this module does not import torch
    strength: float = 1.0
    positions: Positions = "all"
    label: str = "vector"

    def __post_init__(self) -> None:
        if not isinstance(self.hook_name, str) or not self.hook_name:
            raise SteeringError("VectorEdit needs a hook_name such as 'blocks.1.hook_resid_post'")
        object.__setattr__(self, "strength", plain_scalar(self.strength))
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)):
            raise SteeringError(f"strength must be a number, got {self.strength!r}")
        object.__setattr__(self, "strength", float(self.strength))
        _check_finite(f"the strength of vector {self.label!r}", self.strength)
        if getattr(self.vector, "ndim", None) != 1:
            raise SteeringError(
                f"vector {self.label!r} must be a 1-d tensor, got shape {tuple(getattr(self.vector, 'shape', ()))}"
            )
        object.__setattr__(self, "positions", normalize_positions(self.positions))

    def describe(self) -> str:
        pos = "" if self.positions == "all" else f"@{positions_text(self.positions)}"
        return f"{self.label}@{self.hook_name}*{self.strength:g}{pos}"


Edit = Union[FeatureEdit, VectorEdit]

_EDIT_RE = re.compile(
    r"""^\s*(?:(?P<sae>[^/:@\s]+)/)?(?P<latent>-?\d+)\s*
        (?::\s*(?P<op>[a-z]+)\s*(?:=\s*(?P<value>[^@?\s]+?)\s*(?P<x>[xX])?)?)?\s*
        (?:@\s*(?P<pos>[^?\s]+))?\s*
        (?:\?\s*(?P<when>[^\s].*?))?\s*$""",
    re.VERBOSE,
)


def parse_edit(text: str, positions: Positions | None = None) -> FeatureEdit:
    """`123:clamp=8`, `123:clamp=2x`, `res/123:add=-4@generated`, `123:ablate@0,3`.

    `positions` (if given) applies when the text names none."""
    m = _EDIT_RE.match(text)
    if not m or m.group("op") is None:
        raise SteeringError(
            f"cannot parse edit {text!r}; expected LATENT:OP[=VALUE[x]][@POSITIONS] with OP one of "
            f"{', '.join(OPS)}, e.g. 123:clamp=8, 123:clamp=2x, 123:add=-3@generated, 123:ablate, 123:add=4?77>1.5"
        )
    op = m.group("op")
    if op not in OPS:
        raise SteeringError(f"unknown op {op!r} in {text!r}; choose one of {', '.join(OPS)}")
    value: float | None = None
    if m.group("value") is not None:
        raw = m.group("value")
        try:
            value = float(raw)
        except ValueError:
            raise SteeringError(f"value {raw!r} in {text!r} is not a number") from None
    pos = m.group("pos")
    return FeatureEdit(
        latent=int(m.group("latent")),
        op=op,  # type: ignore[arg-type]
        value=value,
        unit="max_act" if m.group("x") else "raw",
        positions=pos if pos is not None else (positions if positions is not None else "all"),
        sae=m.group("sae"),
        when=Trigger.parse(m.group("when")) if m.group("when") else None,
    )


@dataclass
class SteerLimits:
    """Guards against absurd requests (each error names the limit to raise)."""

    max_abs_value: float = field(
        default=1e4, metadata={"help": "largest |add| or |clamp| value in raw activation units"}
    )
    max_multiple: float = field(
        default=100.0,
        metadata={"help": "largest |value| as a multiple of the latent's typical max activation (when known)"},
    )
    max_abs_scale: float = field(default=100.0, metadata={"help": "largest |scale| factor"})
    max_vector_norm_multiple: float = field(
        default=1e3, metadata={"help": "largest |strength| * ||vector|| of a VectorEdit, relative to ||vector||"}
    )

    def __post_init__(self) -> None:
        for name in ("max_abs_value", "max_multiple", "max_abs_scale", "max_vector_norm_multiple"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0) or not math.isfinite(v):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")


def lookup_typical_max(provider: TypicalMax | None, latent: int) -> float | None:
    """Typical max activation of `latent` from a mapping or callable (None if unknown)."""
    if provider is None:
        return None
    if callable(provider) and not isinstance(provider, Mapping):
        value = provider(latent)
    else:
        value = provider.get(latent)  # type: ignore[union-attr]
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) and value > 0 else None


def raw_value(edit: FeatureEdit, typical_max: float | None, limits: SteerLimits, sae_name: str) -> float:
    """The edit's value in raw activation units, checked against `limits`."""
    where = f"latent {edit.latent} of SAE {sae_name!r}"
    if edit.op == "ablate":
        return 0.0
    assert edit.value is not None
    value = edit.value
    if edit.unit == "max_act":
        if typical_max is None:
            raise SteeringError(
                f"{edit.describe()}: {where} has no known typical max activation, so '{edit.value:g}x' cannot be "
                f"resolved; pass typical_max= (a dict or callable latent -> max activation, e.g. from the "
                f"feature store) or give a raw value"
            )
        if abs(value) > limits.max_multiple:
            raise SteeringError(
                f"{edit.describe()}: {abs(value):g}x the typical max is above the limit of {limits.max_multiple:g}x; "
                f"use a smaller value or raise SteerLimits.max_multiple"
            )
        value = value * typical_max
    if edit.op == "scale":
        if abs(value) > limits.max_abs_scale:
            raise SteeringError(
                f"{edit.describe()}: scale factor {value:g} is above the limit of {limits.max_abs_scale:g}; "
                f"use a smaller factor or raise SteerLimits.max_abs_scale"
            )
        return value
    if abs(value) > limits.max_abs_value:
        raise SteeringError(
            f"{edit.describe()}: |{value:g}| is above the limit of {limits.max_abs_value:g} activation units; "
            f"use a smaller value or raise SteerLimits.max_abs_value"
        )
    if edit.unit == "raw" and typical_max is not None and abs(value) > limits.max_multiple * typical_max:
        raise SteeringError(
            f"{edit.describe()}: |{value:g}| is {abs(value) / typical_max:.0f}x the typical max activation "
            f"({typical_max:g}) of {where}, above the limit of {limits.max_multiple:g}x; use a smaller value "
            f"or raise SteerLimits.max_multiple"
        )
    return value
