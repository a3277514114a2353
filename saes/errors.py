"""The one exception type for failures a user can fix, and the data that explains them.

Domain code raises `SaesteerError` (or a subclass) when a file is corrupt or unsafe, two things
that must match do not, a value is out of range, or the disk is full: anything that is not a bug
in saesteer. It carries what the face needs to print one or two useful lines:

- `file`:  the path the failure concerns (put in front of the message unless it names it),
- `field`: the config field at fault, as its dataclass spells it (`freq_penalty`, `k`); the CLI
  turns it into its flag (`--freq-penalty`), other callers show it as it is,
- `hint`:  how to fix it (appended unless the message already says it).

Subclasses also derive from the builtin type older callers catch (`ValueError`, `OSError`), so
raising them changes no `except` clause. This module imports nothing (no torch): every package of
ours may import it, torch-free config modules included (`saes/__init__` loads lazily).

    raise SAEFormatError("k must be a positive integer, got 'sixteen'", file=cfg_path, field="k")
"""

from __future__ import annotations

import os
import warnings

__all__ = ["SaesteerError", "SaesteerWarning", "note"]


class SaesteerError(Exception):
    """An expected failure the user can fix; see the module docstring."""

    def __init__(
        self,
        message: str,
        *,
        file: str | os.PathLike | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = None if file is None else os.fspath(file)
        self.field = field
        self.hint = hint

    def __str__(self) -> str:
        text = self.message
        if self.file and self.file not in text:
            text = f"{self.file}: {text}"
        if self.hint and self.hint not in text:
            text = f"{text}; {self.hint}"
        return text


class SaesteerWarning(UserWarning):
    """Something the user should know that does not stop the work (the CLI prints it as a note)."""


def note(message: str, stacklevel: int = 2) -> None:
    """Tell the user something that does not stop the work (a `SaesteerWarning`)."""
    warnings.warn(message, SaesteerWarning, stacklevel=stacklevel + 1)
