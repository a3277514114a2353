"""One progress flag: every command with long work takes `--no-progress`, and none shows another
spelling (`sweep` had none, `train` had `--progress BOOL`)."""

from __future__ import annotations

import argparse
import json

from saesteer import docs
from saesteer.cli import build_parser, main

LONG_WORK = {("cache",), ("demo",), ("features", "build"), ("features", "export"), ("label",), ("sweep",), ("train",)}


def test_every_command_with_long_work_takes_no_progress_and_nothing_else() -> None:
    seen = set()
    for path, sub in docs._walk(build_parser(), []):
        shown = {o for a in sub._actions if a.help != argparse.SUPPRESS for o in a.option_strings if "progress" in o}
        if tuple(path) in LONG_WORK:
            seen.add(tuple(path))
            assert shown == {"--no-progress"}, (path, shown)
        else:
            assert shown <= {"--no-progress"}, (path, shown)
    assert seen == LONG_WORK


def test_train_no_progress_reaches_the_config(tmp_path, capsys) -> None:
    def log_config(*flags):
        assert main(["train", "--print-config", "--out", str(tmp_path / "run"), *flags]) == 0
        return json.loads(capsys.readouterr().out)["log"]

    assert log_config()["progress"] is True
    assert log_config("--no-progress")["progress"] is False
    assert log_config("--progress", "false")["progress"] is False  # the old spelling still works, unlisted
