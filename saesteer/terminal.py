"""Printing data through rich, literally.

rich reads `[...]` in a string as markup (a label "[/x]" raises MarkupError, "[bold]" vanishes)
and `:name:` as an emoji code. Labels, example text, search snippets, prompts, paths and anything
else a user or a dataset wrote therefore reach rich only as `Text` objects, which rich never parses:

    con.print(Text.assemble(("feature 3: ", "bold"), plain(label)))
    table.add_row(str(i), plain(label))
    con.rule(plain(f"feature {i}: {label}"))

Only our own constant strings are written as markup.

Nor does a terminal get the text's control characters: rich passes ESC on (ESC[2J clears the
screen, ESC]0;...BEL retitles the window, ESC]8;;URL makes a link) and a bidi override reorders the
rest of the line, so `plain` draws them (features.drawing.readable: ␛[2J, ⟨RLO⟩), as the error
boundary does for messages printed without rich.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rich.text import Text

from features.drawing import readable

__all__ = ["plain", "counted", "removed_note", "print_failed_latents", "judge_streak_stop", "SHOWN_FAILURES"]


def plain(value: Any, style: str = "") -> Text:
    """`value` as text rich prints as it is (no markup, no emoji codes), its control characters drawn."""
    return Text(readable("" if value is None else str(value)), style=style)


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """'1 latent', '3 latents', '0 latents' (`plural` where adding 's' is wrong)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def removed_note(removed: list[Any], noun: str) -> str | None:
    """The line saying what an export removed from its folder: the files an earlier, larger export
    wrote there that this one does not (`saes.export_folder`); None when it removed none."""
    if not removed:
        return None
    return (f"  removed {counted(len(removed), noun)} an earlier export wrote there for latents not exported now "
            f"(e.g. {Path(removed[0]).name})")


SHOWN_FAILURES = 20  # failed latents listed one a line; the rest are counted


def print_failed_latents(failed: Sequence[tuple[int, str | None, str]], more: str = "") -> None:
    """The first failed latents of a judge run, one a line ('latent 17 failed at explain: <reason>';
    the stage is left out where None), then how many more there are (`more` says where they are
    listed). A reason may quote the judge's reply: printed with its control characters drawn."""
    for latent, stage, reason in failed[:SHOWN_FAILURES]:
        at = f" at {stage}" if stage else ""
        print(f"  latent {latent} failed{at}: {readable(reason)}")
    if len(failed) > SHOWN_FAILURES:
        print(f"  ... and {len(failed) - SHOWN_FAILURES} more{more}")


def judge_streak_stop(in_a_row: int, last_reason: str) -> str:
    """The line saying a judge run stopped after `in_a_row` latents failed in a row."""
    return (f"stopped: {counted(in_a_row, 'latent')} failed in a row; the judge looks unreachable or misconfigured "
            f"(last reason: {readable(last_reason)}). Fix it and re-run to continue.")
