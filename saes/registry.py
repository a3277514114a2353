"""Architecture name -> SAE class: the one string-keyed map, and the name `cfg.json` records
(convention 10). A new architecture is its class (see the contract in `saes/base.py`) and one
`register` line here; `register` also serves code that adds one at run time (tests, plugins)."""

from __future__ import annotations

import dataclasses

from saes.base import SAE
from saes.batchtopk import BatchTopKSAE
from saes.gated import GatedSAE
from saes.matryoshka import MatryoshkaSAE
from saes.relu import ReLUSAE
from saes.jumprelu import JumpReLUSAE
from saes.topk import TopKSAE

ARCHITECTURES: dict[str, type[SAE]] = {}
ALIASES: dict[str, str] = {}


def register(cls: type[SAE]) -> type[SAE]:
    """Make `cls` known under `cls.architecture` (and its `aliases`); usable as a decorator."""
    name = cls.architecture
    if not name or not issubclass(cls, SAE):
        raise ValueError(f"{cls.__name__} must be an SAE subclass with an architecture name")
    known = ARCHITECTURES.get(name) or ARCHITECTURES.get(ALIASES.get(name, ""))
    if known is not None and known is not cls:
        raise ValueError(f"architecture {name!r} is already registered to {known.__name__}")
    ARCHITECTURES[name] = cls
    for alias in cls.aliases:
        ALIASES[alias] = name
    return cls


for _cls in (TopKSAE, BatchTopKSAE, MatryoshkaSAE, JumpReLUSAE, ReLUSAE, GatedSAE):
    register(_cls)


def canonical_name(architecture: str) -> str:
    """The registered name of `architecture` (an alias resolved); unknown names come back as given."""
    return ALIASES.get(architecture, architecture)


def trainable_architectures() -> list[str]:
    return [name for name, cls in ARCHITECTURES.items() if cls.trainable]


def sae_class(architecture: str) -> type[SAE]:
    try:
        return ARCHITECTURES[canonical_name(architecture)]
    except KeyError:
        raise ValueError(
            f"unknown SAE architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        ) from None


def config_fields(architecture: str) -> set[str]:
    """Names of the config fields an architecture takes (e.g. k, matryoshka_widths)."""
    return {f.name for f in dataclasses.fields(sae_class(architecture).config_class)}


def create_sae(architecture: str, d_in: int, d_sae: int, **cfg_fields) -> SAE:
    """Build a freshly initialised SAE, e.g. `create_sae("topk", 512, 8192, k=32)`.

    `device`, `dtype` and `generator` are passed to the module; the rest go to its config."""
    module_kw = {key: cfg_fields.pop(key) for key in ("device", "dtype", "generator") if key in cfg_fields}
    cls = sae_class(architecture)
    return cls(cls.config_class(d_in=d_in, d_sae=d_sae, **cfg_fields), **module_kw)
