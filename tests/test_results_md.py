"""benchmarks/results_md.py: a benchmark replaces only its own part of RESULTS.md."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from results_md import replace_block, replace_section  # noqa: E402

DOC = """# Benchmark results

## Alpha

old alpha

## Scale

intro

<!-- scale:a -->
old a
<!-- /scale:a -->

<!-- scale:b -->
old b
<!-- /scale:b -->

## Omega

omega stays
"""


def test_a_section_is_replaced_in_place_and_the_others_are_kept(tmp_path: Path) -> None:
    p = tmp_path / "R.md"
    p.write_text(DOC)
    replace_section("## Alpha", "## Alpha\n\nnew alpha\n", p)
    assert p.read_text() == DOC.replace("old alpha", "new alpha")
    replace_section("## Alpha", "## Alpha\n\nnew alpha\n", p)  # idempotent
    assert p.read_text() == DOC.replace("old alpha", "new alpha")


def test_a_missing_section_is_appended_and_a_prefix_heading_is_not_matched(tmp_path: Path) -> None:
    p = tmp_path / "R.md"
    p.write_text(DOC)
    replace_section("## Alp", "## Alp\n\nshort\n", p)  # not "## Alpha"
    assert p.read_text() == DOC + "\n## Alp\n\nshort\n"


def test_a_keyed_block_is_replaced_or_added_inside_its_section(tmp_path: Path) -> None:
    p = tmp_path / "R.md"
    p.write_text(DOC)
    replace_block("## Scale", "scale:a", "new a", p)
    assert p.read_text() == DOC.replace("old a\n", "new a\n")
    replace_block("## Scale", "scale:c", "c", p)
    text = p.read_text()
    assert "<!-- scale:c -->\nc\n<!-- /scale:c -->\n\n## Omega" in text and "old b" in text and "new a\n" in text
    assert not list(tmp_path.glob(".*"))  # no temporary file left
