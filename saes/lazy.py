"""Lazy package exports: a package names what it exports and where each lives, and a name's
module is imported on first use (so importing a package stays cheap: `saesteer --help` loads no
torch). One mechanism for every package of ours.

    _EXPORTS = {"FeatureStore": "features.store", "BuildConfig": "config"}   # absolute or relative
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
    __all__ = sorted(_EXPORTS)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str], *, submodules: bool = False
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` of `package`. A value found is kept in the
    package's namespace (later lookups skip `__getattr__`). `submodules`: an unlisted name may be a
    submodule reached as an attribute (`saes.io`)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            if submodules:
                try:
                    return importlib.import_module(f"{package}.{name}")
                except ModuleNotFoundError as e:
                    if e.name != f"{package}.{name}":
                        raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        full = module if module.startswith(f"{package}.") else f"{package}.{module}"
        value = getattr(importlib.import_module(full), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
