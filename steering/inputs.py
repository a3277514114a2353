"""What the public steering API takes (the model, the SAEs, typical max activations), as types,
and the one normalisation of the SAEs argument. No hooks here: every other steering module may
import this one.

- `Model`: a TransformerLens `HookedTransformer` or `TransformerBridge`
  (`saesteer.models.load_model` gives either).
- `SAEArg`: an `SAE`, or the `saes.formats.LoadedSAE` `resolve_sae` returns (the SAE beside its
  provenance: its recorded model is then checked against `model`), or a `sae_lens.SAE` (loaded with
  `SAE.from_pretrained` or trained with SAELens: converted by `saes.interop.as_sae`, its hook its
  `cfg.metadata.hook_name`).
- `SAEs`: one `SAEArg`, a dict name -> `SAEArg`, a list of them (named "0", "1", ...), or None.
- `TypicalMaxArg`: typical max activations for "x" units: a `steering.spec.TypicalMax` shared by
  every SAE, or a dict SAE name -> `TypicalMax`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Union

from saes.base import SAE
from saes.formats.base import LoadedSAE, sae_of
from saes.interop import as_sae
from steering.spec import SteeringError, TypicalMax

if TYPE_CHECKING:  # transformer_lens loads slowly; the names are for readers and type checkers
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge

Model = Union["HookedTransformer", "TransformerBridge"]
SAEArg = Union[SAE, LoadedSAE]
SAEs = Union[SAEArg, Mapping[str, SAEArg], Sequence[SAEArg], None]
TypicalMaxArg = Union[TypicalMax, Mapping[str, TypicalMax], None]


def named_saes(saes: SAEs) -> dict[str, SAEArg]:
    """name -> SAE or `LoadedSAE`, as given (a single one is named "sae"; a `sae_lens.SAE` converted);
    anything else is refused naming the entry."""
    if saes is None:
        return {}
    saes = as_sae(saes)
    if isinstance(saes, (SAE, LoadedSAE)):
        return {"sae": saes}
    if isinstance(saes, Mapping):
        items = [(str(k), as_sae(v), f"saes[{k!r}]") for k, v in saes.items()]
    elif isinstance(saes, Sequence):
        items = [(str(i), as_sae(v), f"saes[{i}]") for i, v in enumerate(saes)]
    else:
        raise SteeringError(f"saes must be an SAE, a dict name -> SAE, or a list of SAEs; got {type(saes).__name__}")
    for _, v, where in items:
        if not isinstance(v, (SAE, LoadedSAE)):
            raise SteeringError(f"{where} is a {type(v).__name__}, not an SAE (load one with saes.formats.resolve_sae)")
    return {name: v for name, v, _ in items}


def converted_saes(saes: SAEs) -> SAEs:
    """`saes` with every `sae_lens.SAE` in it converted once (an entry point calls this, so that the
    checks after it do not convert again)."""
    if isinstance(saes, Mapping):
        return {k: as_sae(v) for k, v in saes.items()}
    if isinstance(saes, Sequence) and not isinstance(saes, (str, LoadedSAE)):
        return [as_sae(v) for v in saes]
    return as_sae(saes)


def sae_mapping(saes: SAEs) -> dict[str, SAE]:
    """name -> the SAE itself (a `LoadedSAE` unwrapped)."""
    return {name: sae_of(v) for name, v in named_saes(saes).items()}
