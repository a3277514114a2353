"""Printing data through rich, literally.

rich reads `[...]` in a string as markup (a label "[/x]" raises MarkupError, "[bold]" vanishes)
and `:name:` as an emoji code. Labels, example text, search snippets, prompts, paths and anything
else a user or a dataset wrote therefore reach rich only as `Text` objects, which rich never parses:

    con.print(Text.assemble(("feature 3: ", "bold"), plain(label)))
    table.add_row(str(i), plain(label))
    con.rule(plain(f"feature {i}: {label}"))

Only our own constant strings are written as markup.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text

__all__ = ["plain"]


def plain(value: Any, style: str = "") -> Text:
    """`value` as text rich prints exactly as it is (no markup, no emoji codes)."""
    return Text("" if value is None else str(value), style=style)
