"""`saesteer train`'s flags for an architecture's own settings (JumpReLU's l0_coefficient, ...).

They are generated from the architecture's config dataclass (its fields beyond those every SAE
has and beyond k / matryoshka_widths, which have their own SAE flags), reach each SAE of the run
whose architecture takes them as `SAESpec.options`, and a value its config refuses is reported
with the flag. Torch-free (the CLI parser is built without torch).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any


def option_configs() -> tuple[tuple[type, str], ...]:
    """(config class, title of its flag group) of the architectures whose settings have flags."""
    from saes.config import JumpReLUConfig

    return ((JumpReLUConfig, "JumpReLU (--architecture jumprelu; SAELens's names)"),)


def shared_sae_fields() -> tuple[str, ...]:
    """Config fields every SAE has (SAEConfig) or that have their own SAE flags."""
    from saes.config import SAEConfig

    return tuple(f.name for f in dataclasses.fields(SAEConfig)) + ("k", "matryoshka_widths")


def add_option_arguments(parser: Any) -> None:
    from saesteer.configargs import add_dataclass_arguments

    for cls, title in option_configs():
        add_dataclass_arguments(parser, cls, title=title, skip=shared_sae_fields())


def option_values(args: Any) -> dict[str, Any]:
    """The architecture settings given as flags, by field name."""
    names = {f.name for cls, _ in option_configs() for f in dataclasses.fields(cls)} - set(shared_sae_fields())
    return {n: getattr(args, n) for n in sorted(names) if hasattr(args, n)}


def apply_options(specs: list, options: dict[str, Any]) -> list:
    """Each spec with the settings its architecture takes; a setting no spec takes is refused,
    naming the architectures that do."""
    from saes.registry import trainable_architectures
    from saes.validators import ConfigError
    from training.config import option_fields

    if not options:
        return specs
    taken: set[str] = set()
    out = []
    for spec in specs:
        mine = {k: v for k, v in options.items() if k in option_fields(spec.architecture)}
        taken |= set(mine)
        try:
            out.append(dataclasses.replace(spec, options={**spec.options, **mine}))  # re-checked
        except ConfigError as e:  # the config names its field: say it as the flag
            raise ValueError(field_as_flag(str(e), e.field)) from None
    unused = sorted(set(options) - taken)
    if unused:
        flags = ", ".join(_flag(n) for n in unused)
        owners = [a for a in trainable_architectures() if set(unused) & option_fields(a)]
        raise ValueError(f"{flags}: no SAE of this run has that setting ({', '.join(s.architecture for s in specs)}); "
                         f"add --architecture {','.join(owners)} or drop {flags}")
    return out


def field_as_flag(message: str, field: str | None) -> str:
    """`JumpReLUConfig.l0_coefficient must ...` -> `--l0-coefficient must ...`."""
    if not field:
        return message
    return re.sub(rf"\b(?:[A-Z]\w*\.)?{re.escape(field)}\b", _flag(field), message, count=1)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
