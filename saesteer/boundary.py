"""The CLI's error boundary: every failure becomes one or two lines on stderr and an exit status.

    with warnings_as_notes():
        try:
            return run(args)
        except Exception as e:
            return report(e, parser)        # prints, returns the exit status

- `SaesteerError` (a corrupt or mismatched file, an unsafe format, a bad value): its message,
  with the config field it names turned into the command's flag; exit status 2.
- `OSError` (disk full, permission denied, read-only file system, missing file): the file, what
  the system said and what to do; exit status 1.
- `ValueError` (a config's own checks raise it): the message; exit status 2.
- anything else is a bug: its type and message, and how to get the traceback; exit status 1.

`saesteer --debug ...` (or SAESTEER_DEBUG=1) skips all this and shows Python's traceback.
Warnings print as `warning: ...` (and `SaesteerWarning`s as `note: ...`), without source lines.
Both print their message's control and bidi characters drawn (`features.drawing.readable`):
a message may quote a dataset's or a model's text.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import re
import sys
import warnings
from typing import Iterator

from saes.errors import SaesteerError, SaesteerWarning

USER_ERROR = 2
ENVIRONMENT_ERROR = 1
BUG = 1

_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or choose another output folder, then re-run the same command "
                  "(finished work is kept and resumed)",
    errno.EFBIG: "the file size limit was reached (see `ulimit -f`): raise it or choose another output folder, then "
                 "re-run the same command (finished work is kept and resumed)",
    errno.EACCES: "no permission to write there: choose another output folder or fix its permissions",
    errno.EPERM: "an immutable or protected path? choose another output folder or fix its attributes",
    errno.EROFS: "the file system is read-only: choose an output folder on a writable disk",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "that is a folder: give a file",
}
# Windows refuses to delete or replace a file another process has open (errno EACCES, so the
# permission hint would mislead): ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION, ERROR_USER_MAPPED_FILE
# (a safetensors file another process has memory-mapped).
_SHARING_VIOLATIONS = (32, 33, 1224)
_SHARING_HINT = ("another program has the file open (a `saesteer serve` or `web` of this store, an editor, a "
                 "sync or antivirus tool): close it, then re-run the same command")
if hasattr(errno, "EDQUOT"):
    _OS_HINTS[errno.EDQUOT] = "the disk quota is exceeded: " + _OS_HINTS[errno.ENOSPC].split(": ", 1)[1]


def flag_for(parser: argparse.ArgumentParser | None, field: str) -> str | None:
    """The command-line flag that sets config field `field` in `parser`, or None if it has none:
    the flag whose dest is the field, else the single flag `configargs` made for a field of that
    name (`keep_last` -> `--checkpoint-keep-last`). A field named by its section of the run's
    config (`train.init_from`) is the flag made for that section's field (`_config_paths`), never
    another section's flag of the same name. A flag that merely ends with the name is another
    setting (`k` is not `--top-k`, `steps` is not `--l0-warm-up-steps`); a hidden flag is never named."""
    if parser is None or not field:
        return None
    if "." in field:
        from saesteer.commands._config_paths import config_paths_as_flags

        said = config_paths_as_flags(field, parser)
        return None if said == field else said
    name = field
    actions = _option_actions(parser)
    exact = [a for a in actions if a.dest == name]
    made_for = [a for a in actions if getattr(a, "config_field", (None, None))[1] == name]
    hits = exact or (made_for if len(made_for) == 1 else [])
    if not hits:
        return None
    return max(hits[0].option_strings, key=len)


def _option_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's flags --help shows (a hidden alias, like train's old `--progress false`, is never
    named), those of its sub-commands included (argparse keeps them nowhere public)."""
    out = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                out.extend(_option_actions(sub))
        elif a.option_strings and a.help != argparse.SUPPRESS:
            out.append(a)
    return out


def _with_flag(message: str, field: str | None, flag: str | None) -> str:
    """The message with the config field's name replaced by its flag (or the flag put in front)."""
    if not flag or flag in message:
        return message
    # the field as it is (`k`) or qualified by its config (`CacheConfig.max_tokens`)
    pattern = re.compile(rf"(?<![\w.-])(?:[A-Z]\w*\.)?{re.escape(field)}(?![\w-])") if field else None
    if pattern is not None and pattern.search(message):
        return pattern.sub(flag, message, count=1)
    return f"{flag}: {message}"


_QUALIFIED_FIELD = re.compile(r"(?<![\w./-])[A-Z]\w*\.([a-z]\w*)(?![\w/-])")  # SteerLimits.max_multiple
_SNAKE_FIELD = re.compile(r"(?<![\w./-])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?![\w/-])")  # target_concept


def fields_as_flags(message: str, parser: argparse.ArgumentParser | None) -> str:
    """Config field names in a domain error (`SteerLimits.max_multiple`, `target_concept`) said as
    the command's flags (`--max-multiple`, `--target-concept`) where the command has that flag."""
    if parser is None:
        return message

    def flag(m: re.Match) -> str:
        hit = [a for a in _option_actions(parser) if a.dest == m.group(1)]
        return max(hit[0].option_strings, key=len) if hit else m.group(0)

    return _SNAKE_FIELD.sub(flag, _QUALIFIED_FIELD.sub(flag, message))


def message_for(e: BaseException, parser: argparse.ArgumentParser | None = None) -> tuple[str, int]:
    """(the text after `error: `, exit status) for an exception reaching the CLI."""
    if isinstance(e, SaesteerError):
        text = _with_flag(str(e), e.field, flag_for(parser, e.field or ""))
        return fields_as_flags(text, parser), USER_ERROR
    if isinstance(e, OSError):
        if e.errno is None and e.filename is None and str(e):  # raised with a message of ours
            return str(e), USER_ERROR
        return _os_message(e), ENVIRONMENT_ERROR
    if isinstance(e, ValueError) and str(e):
        return str(e), USER_ERROR
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return (f"unexpected {type(e).__name__}{': ' + first[:300] if first else ''}\n"
            f"this is a bug in saesteer: run the command again with `saesteer --debug ...` for the traceback and "
            f"report it"), BUG


def _os_message(e: OSError) -> str:
    what = e.strerror or str(e)
    text = f"{e.filename}: {what}" if e.filename is not None else what
    if getattr(e, "filename2", None):
        text += f" (-> {e.filename2})"
    hint = _SHARING_HINT if getattr(e, "winerror", None) in _SHARING_VIOLATIONS else _OS_HINTS.get(e.errno or -1)
    if hint and hint not in text:
        text += f"; {hint}"
    return text


def report(e: BaseException, parser: argparse.ArgumentParser | None = None) -> int:
    """Print `e` as `error: ...` (one or two lines) and return the exit status."""
    text, status = message_for(e, parser)
    print_error(text)
    return status


def print_error(message) -> None:
    """`error: MESSAGE` on stderr, its control and bidi characters drawn: the one way a command says
    it failed (a message may quote a dataset's column names, a model's text or a judge's reply)."""
    from features.drawing import readable

    print(f"error: {readable(str(message))}", file=sys.stderr)


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    from features.drawing import readable

    kind = "note" if issubclass(category, SaesteerWarning) else "warning"
    print(f"{kind}: {readable(str(message))}", file=file or sys.stderr)


@contextlib.contextmanager
def warnings_as_notes() -> Iterator[None]:
    """Within the block, warnings print as one `warning: ...` / `note: ...` line each."""
    with warnings.catch_warnings():
        warnings.showwarning = _show
        yield
