"""Whether HuggingFace's libraries are in offline mode, by their own rules: the one answer behind
every hint that says so (loading a model, reading a hub dataset, SAELens's registry).

    huggingface_hub, and transformers (which asks huggingface_hub's `is_offline_mode`):
        HF_HUB_OFFLINE, or TRANSFORMERS_OFFLINE where HF_HUB_OFFLINE is unset or empty,
        is 1 / ON / YES / TRUE (any case)
    datasets: HF_DATASETS_OFFLINE where it is set (set but empty: online), else huggingface_hub's answer

Each library reads these variables once, when it is imported, and acts on that reading: once it is
imported its own flag is the answer (`huggingface_hub.constants.HF_HUB_OFFLINE`,
`datasets.config.HF_HUB_OFFLINE`), before that the environment read by the same rule.
Standard library only: the libraries are looked up in `sys.modules`, never imported here.
"""

from __future__ import annotations

import os
import sys
from typing import Literal, Mapping

Library = Literal["huggingface_hub", "datasets"]
TRUE_VALUES = frozenset({"1", "ON", "YES", "TRUE"})  # huggingface_hub's and datasets' ENV_VARS_TRUE_VALUES
_FLAG_MODULE = {"huggingface_hub": "huggingface_hub.constants", "datasets": "datasets.config"}


def hf_offline(library: Library = "huggingface_hub") -> bool:
    """True where `library` works offline (transformers: ask for "huggingface_hub")."""
    if library not in _FLAG_MODULE:
        raise ValueError(f"hf_offline: library must be one of {', '.join(_FLAG_MODULE)}; got {library!r}")
    flag = getattr(sys.modules.get(_FLAG_MODULE[library]), "HF_HUB_OFFLINE", None)
    if isinstance(flag, bool):
        return flag
    return offline_by_environment(os.environ, library)


def offline_by_environment(environ: Mapping[str, str], library: Library = "huggingface_hub") -> bool:
    """What `library` reads from `environ` when it is imported."""
    hub = environ.get("HF_HUB_OFFLINE") or environ.get("TRANSFORMERS_OFFLINE")
    datasets_own = environ.get("HF_DATASETS_OFFLINE") if library == "datasets" else None
    value = datasets_own if datasets_own is not None else hub
    return value is not None and value.upper() in TRUE_VALUES
