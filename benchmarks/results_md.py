"""benchmarks/RESULTS.md: each benchmark owns one `## ` section (or keyed blocks inside one) and
replaces only that, leaving the rest of the file as it is. Writes are atomic (`saes.fileio`).

    replace_section("## Activation cache", "## Activation cache\n\n| ... |")
    replace_block("## Scale", "scale:cache", "| ... |")     # <!-- scale:cache --> ... <!-- /scale:cache -->
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from saes.fileio import atomic_write_bytes  # noqa: E402

RESULTS = REPO / "benchmarks" / "RESULTS.md"


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else "# Benchmark results\n"


def _write(path: Path, text: str) -> None:
    atomic_write_bytes(path, (text.rstrip("\n") + "\n").encode())


def _section_span(text: str, heading: str) -> tuple[int, int] | None:
    """[start, end) of the section whose first line is `heading` (up to the next `## ` line)."""
    m = re.search(rf"^{re.escape(heading)}[ \t]*$", text, flags=re.M)
    if m is None:
        return None
    nxt = re.search(r"^## ", text[m.end():], flags=re.M)
    return m.start(), m.end() + nxt.start() if nxt else len(text)


def replace_section(heading: str, block: str, path: Path = RESULTS) -> None:
    """Put `block` (which starts with the line `heading`) in place of that section, or at the end."""
    text = _read(path)
    span = _section_span(text, heading)
    if span is None:
        text = text.rstrip("\n") + "\n\n" + block.strip("\n") + "\n"
    else:
        text = text[:span[0]] + block.strip("\n") + "\n\n" + text[span[1]:]
    _write(path, text)


def replace_block(heading: str, key: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or add) `<!-- key -->...<!-- /key -->` inside the section `heading` (made if missing)."""
    text = _read(path)
    block = f"<!-- {key} -->\n{body.strip()}\n<!-- /{key} -->"
    span = _section_span(text, heading)
    if span is None:
        _write(path, text.rstrip() + f"\n\n{heading}\n\n{block}\n")
        return
    section = text[span[0]:span[1]]
    pat = re.compile(rf"<!-- {re.escape(key)} -->.*?<!-- /{re.escape(key)} -->", flags=re.S)
    section = pat.sub(lambda _: block, section) if pat.search(section) else section.rstrip() + f"\n\n{block}\n\n"
    _write(path, text[:span[0]] + section + text[span[1]:])
