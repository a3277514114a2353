"""The CLI's error boundary: every exception becomes one or two `error:` lines and an exit status;
config fields become flags; tracebacks only with --debug."""

from __future__ import annotations

import argparse
import errno
import warnings

import pytest

from saes.errors import SaesteerError, note
from saesteer.boundary import _option_actions, flag_for, message_for, warnings_as_notes


def parser() -> argparse.ArgumentParser:
    from saesteer.configargs import add_dataclass_arguments
    from training.config import CheckpointConfig

    p = argparse.ArgumentParser(prog="saesteer steer")
    p.add_argument("--freq-penalty", dest="freq_penalty")
    add_dataclass_arguments(p, CheckpointConfig, prefix="checkpoint_")
    return p


def test_a_config_field_is_named_as_its_flag():
    p = parser()
    assert flag_for(p, "freq_penalty") == "--freq-penalty"
    assert flag_for(p, "keep_last") == "--checkpoint-keep-last"  # a prefixed config's field
    assert flag_for(p, "temperature") is None  # never a flag that does not exist
    text, status = message_for(SaesteerError("freq_penalty must be finite, got inf", field="freq_penalty"), p)
    assert (text, status) == ("--freq-penalty must be finite, got inf", 2)
    text, _ = message_for(SaesteerError("must be finite", field="freq_penalty"), p)
    assert text == "--freq-penalty: must be finite"
    text, _ = message_for(SaesteerError("temperature must be positive", field="temperature"), p)
    assert text == "temperature must be positive"  # no such flag here: the field stays


def test_a_field_named_with_its_section_of_the_run_config_is_named_as_its_flag():
    # every `train --init-from` refusal began "error: train.init_from: ..."
    from saesteer.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    assert flag_for(sub, "train.init_from") == "--init-from"
    text, _ = message_for(SaesteerError("train.init_from: no SAE at runs/x", field="train.init_from"), sub)
    assert text == "--init-from: no SAE at runs/x"
    # the flag made for that section's field, and a field two sections share told apart; never a hidden alias
    # (train's old `--progress false`, kept working for scripts, not shown: --no-progress is the one flag)
    assert flag_for(sub, "log.progress") is None
    assert flag_for(sub, "eval.every_tokens") == "--eval-every-tokens"
    assert flag_for(sub, "checkpoint.every_tokens") == "--checkpoint-every-tokens"
    assert flag_for(sub, "progress") is None


@pytest.mark.parametrize("command, field, other_flag", [
    ("eval", "k", "--absorption-max-k"), ("features", "k", "--top-k"), ("steer", "k", "--top-k"),
    ("train", "steps", "--l0-warm-up-steps"),
])
def test_a_flag_of_another_setting_that_ends_with_the_field_is_never_named(command, field, other_flag):
    # an SAE file's bad `k` in `saesteer eval` was said as `--absorption-max-k`
    from saesteer.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    assert other_flag in {s for a in _option_actions(sub) for s in a.option_strings} and flag_for(sub, field) is None
    text, _ = message_for(SaesteerError(f"{field} must be a positive integer, got 0", field=field), sub)
    assert text == f"{field} must be a positive integer, got 0"


def test_file_and_hint_are_part_of_the_message():
    e = SaesteerError("k must be a positive integer", file="/x/cfg.json", hint="fix the file")
    assert str(e) == "/x/cfg.json: k must be a positive integer; fix the file"
    e = SaesteerError("/x/cfg.json: bad k; fix the file", file="/x/cfg.json", hint="fix the file")
    assert str(e) == "/x/cfg.json: bad k; fix the file"  # not said twice


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "disk is full"), (errno.EACCES, "no permission"), (errno.EROFS, "read-only"),
    (errno.EFBIG, "file size limit"), (errno.ENOENT, "check the path"),
])
def test_os_errors_name_their_file_and_what_to_do(code, words):
    import os

    text, status = message_for(OSError(code, os.strerror(code), "/data/out/shard.tmp"))
    assert text.startswith("/data/out/shard.tmp: ") and words in text and status == 1


def test_an_os_error_with_our_own_message_is_a_user_error():
    text, status = message_for(FileExistsError("another training run is using /r"))
    assert (text, status) == ("another training run is using /r", 2)


def test_an_unexpected_exception_is_two_lines_pointing_at_debug():
    text, status = message_for(KeyError("W_enc"))
    lines = text.splitlines()
    assert status == 1 and len(lines) == 2
    assert lines[0] == "unexpected KeyError: 'W_enc'" and "--debug" in lines[1]


def test_warnings_print_as_single_lines(capsys):
    with warnings_as_notes():
        note("loading unverified weights")
        warnings.warn("something odd", RuntimeWarning)
    err = capsys.readouterr().err
    assert err == "note: loading unverified weights\nwarning: something odd\n"


def _failing_info(monkeypatch, exc):
    from saesteer.commands import info

    def boom(args):
        raise exc

    monkeypatch.setattr(info, "run", boom)


def test_main_turns_any_exception_into_lines_and_a_status(monkeypatch, capsys):
    from saesteer.cli import main

    _failing_info(monkeypatch, RuntimeError("the kernel said no\nsecond line of detail"))
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected RuntimeError: the kernel said no\n") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 2
    _failing_info(monkeypatch, SaesteerError("bad thing in /f", file="/f"))
    assert main(["info"]) == 2
    assert capsys.readouterr().err == "error: bad thing in /f\n"


@pytest.mark.parametrize("argv", [["--debug", "info"], ["info", "--debug"]])
def test_debug_lets_the_traceback_through(monkeypatch, argv):
    from saesteer.cli import main

    _failing_info(monkeypatch, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        main(argv)


def test_the_environment_variable_also_turns_debug_on(monkeypatch):
    from saesteer.cli import main

    _failing_info(monkeypatch, RuntimeError("boom"))
    monkeypatch.setenv("SAESTEER_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["info"])


def test_bad_flags_print_two_lines_not_the_usage(capsys):
    from saesteer.cli import main

    with pytest.raises(SystemExit) as e:
        main(["steer", "--sae", "x", "--freq-penalty", "inf"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == ("error: saesteer steer: argument --freq-penalty: expected a finite number, got 'inf'\n"
                   "see `saesteer steer --help` for the options\n")
