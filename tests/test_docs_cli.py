"""docs/cli.md is generated from every command's --help (saesteer/docs.py); it must not go stale."""

from __future__ import annotations

import pytest

from saesteer import docs


def test_cli_reference_is_up_to_date() -> None:
    text = docs.DEFAULT_PATH.read_text(encoding="utf-8")
    made_with = docs.recorded_python(text)
    if made_with != docs.python_version():  # argparse's layout differs between Python versions
        pytest.skip(f"docs/cli.md was generated with Python {made_with}; this is {docs.python_version()}")
    assert text == docs.render_cli_markdown(), f"docs/cli.md is stale: run `{docs.REGENERATE}`"


def test_cli_reference_covers_every_command_and_option() -> None:
    import argparse

    from saesteer.cli import build_parser

    text = docs.render_cli_markdown()
    parser = build_parser()
    for path, sub in docs._walk(parser, []):
        assert f"## {' '.join(['saesteer', *path])}\n" in text
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            for opt in action.option_strings:
                assert opt in text, (path, opt)
    assert "\x1b[" not in text, "no terminal colours in the reference"


def test_no_option_shows_an_empty_default() -> None:
    """'(default: )' says nothing: an empty default is left out (the help says what empty means)."""
    text = docs.render_cli_markdown()
    assert "(default: )" not in text.replace("\n", " ")


def test_check_mode_reports_a_stale_file(tmp_path) -> None:
    out = tmp_path / "cli.md"
    out.write_text("old\n")
    assert docs.main(["--out", str(out), "--check"]) == 1
    assert docs.main(["--out", str(out)]) == 0
    assert docs.main(["--out", str(out), "--check"]) == 0


def test_an_installed_copy_writes_nowhere_without_out(tmp_path, monkeypatch, capsys) -> None:
    """pip-installed, the folder above saesteer/ is site-packages: `python -m saesteer.docs` must not
    create site-packages/docs/cli.md (a stray top-level "docs" in the venv) but ask for --out."""
    site = tmp_path / "lib" / "python3" / "site-packages"
    site.mkdir(parents=True)
    monkeypatch.setattr(docs, "DEFAULT_PATH", site / "docs" / "cli.md")
    with pytest.raises(SystemExit) as exc:
        docs.main([])
    assert exc.value.code == 2
    assert "pass --out FILE" in capsys.readouterr().err
    assert list(site.iterdir()) == []


def test_help_that_points_to_a_doc_says_where_it_is() -> None:
    """A pip-installed user has no docs/ folder: every --help (and the transcoder refusal) that names
    docs/<page>.md says it is in saesteer's source repository."""
    import re

    from saes.formats.base import TRANSCODER_HINT

    text = " ".join((docs.render_cli_markdown() + " " + TRANSCODER_HINT).split())  # help wraps lines anywhere
    pointers = [m for m in re.finditer(r"docs/[\w-]+\.md", text)]
    assert len(pointers) >= 3, "the check found no pointer to check"
    bare = [text[m.start():m.start() + 80] for m in pointers if "in saesteer's source repository" not in text[m.end():m.end() + 60]]
    assert bare == [], f"say where the page is (\"docs/x.md in saesteer's source repository\"): {bare}"
