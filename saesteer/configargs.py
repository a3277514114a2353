"""Build argparse flags from dataclass configs, and configs back from parsed flags.

One config dataclass per concern (design convention 2) is the single source of truth:
its fields, defaults and `metadata={"help": ...}` become the CLI flags, so the CLI and the
Python API cannot drift apart. A config file (JSON, or TOML on Python 3.11+) supplies
values too; flags given on the command line win over the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from saes.errors import SaesteerError

T = TypeVar("T")

_MISSING = object()


def _flag(prefix: str, name: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def _dest(prefix: str, name: str) -> str:
    return (prefix + name).replace("-", "_")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parser_for(tp: Any):
    """A function turning one command-line string into a value of type `tp`."""
    tp, optional = _unwrap_optional(tp)
    origin = typing.get_origin(tp)

    def parse(text: str):
        if optional and text.lower() in ("none", "null", ""):
            return None
        if tp is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
        if origin in (list, tuple) or tp in (list, tuple):
            args = typing.get_args(tp)
            item = args[0] if args else str
            items = [s for s in text.split(",") if s.strip()]
            conv = _parser_for(item)
            out = [conv(s.strip()) for s in items]
            return tuple(out) if (origin is tuple or tp is tuple) else out
        if origin is typing.Literal:
            choices = typing.get_args(tp)
            for c in choices:
                if str(c) == text:
                    return c
            raise argparse.ArgumentTypeError(
                f"expected one of {', '.join(map(str, choices))}; got {text!r}"
            )
        if tp in (int, float, str):
            try:
                value = tp(text)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected {tp.__name__}, got {text!r}"
                ) from None
            if tp is float and not math.isfinite(value):  # no setting of ours means NaN or infinity
                raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
            return value
        if tp is Path:
            return Path(text)
        return text

    return parse


def _type_name(tp: Any) -> str:
    tp, optional = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        name = "{" + ",".join(map(str, typing.get_args(tp))) + "}"
    elif origin in (list, tuple):
        args = typing.get_args(tp)
        name = f"{getattr(args[0], '__name__', 'X') if args else 'X'},..."
    else:
        name = getattr(tp, "__name__", str(tp))
    return name + ("|none" if optional else "")


def add_dataclass_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    prefix: str = "",
    title: str | None = None,
    skip: tuple[str, ...] = (),
    helps: dict[str, str] | None = None,
):
    """Add one `--flag` per field of dataclass `cls` (defaults stay unset, so a config
    file can fill them; `dataclass_from_args` applies the dataclass defaults). `helps`: a field's
    help as this command words it, its default included (a default that depends on other flags).
    Returns the argument group (for a skipped field added by hand)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title or (cls.__doc__ or cls.__name__).strip().split("\n")[0])
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init or f.metadata.get("cli") is False:
            continue
        tp = hints[f.name]
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        help_text = f.metadata.get("help", "")
        if default is not dataclasses.MISSING:
            shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            if shown != "":  # an empty default says nothing; the help says what empty means
                help_text = f"{help_text} (default: {shown})" if help_text else f"(default: {shown})"
        else:
            help_text = f"{help_text} (required)"
        help_text = (helps or {}).get(f.name, help_text)
        action = group.add_argument(
            _flag(prefix, f.name),
            dest=_dest(prefix, f.name),
            type=_parser_for(tp),
            default=argparse.SUPPRESS,
            metavar=_type_name(tp).upper() if typing.get_origin(tp) is not typing.Literal else _type_name(tp),
            help=help_text,
        )
        action.config_field = (cls, f.name)  # what it sets: a domain error naming the field can name the flag
    return group


def flag_of_field(parser: argparse.ArgumentParser, cls: type, name: str) -> str | None:
    """The flag `add_dataclass_arguments` made for field `name` of `cls` in `parser` (None: it has none)."""
    for a in parser._actions:
        if getattr(a, "config_field", None) == (cls, name) and a.help != argparse.SUPPRESS:
            return a.option_strings[0]
    return None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML config file into a dict (a ConfigValueError naming the file if it cannot)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigValueError(f"config file not found: {path}", file=path, field="config")
    from saes.fileio import read_text_file

    try:
        text = read_text_file(path, "config file")
    except ValueError as e:  # not UTF-8 (a byte-order mark is fine)
        raise ConfigValueError(str(e), file=path) from None
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            raise ConfigValueError(f"{path}: TOML configs need Python 3.11+; use JSON instead", file=path) from None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigValueError(f"{path}: not valid TOML: {e}", file=path) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigValueError(f"{path}: not valid JSON: {e}", file=path) from None
    if not isinstance(data, dict):
        raise ConfigValueError(f"{path}: expected a JSON object at the top level", file=path)
    return data


def dataclass_from_args(
    cls: type[T],
    args: argparse.Namespace,
    prefix: str = "",
    file_values: dict[str, Any] | None = None,
    **overrides: Any,
) -> T:
    """Build `cls` from (in rising priority) its defaults, `file_values`, parsed flags, overrides.

    Unknown keys in `file_values` are an error naming them, so a typo in a config file
    is never silently ignored.
    """
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values: dict[str, Any] = {}
    if file_values:
        unknown = sorted(set(file_values) - names)
        if unknown:
            raise ConfigValueError(
                f"unknown {cls.__name__} key(s) in config: {', '.join(unknown)}; "
                f"valid keys: {', '.join(sorted(names))}"
            )
        values.update(file_values)
    for name in names:
        v = getattr(args, _dest(prefix, name), _MISSING)
        if v is not _MISSING:
            values[name] = v
    values.update({k: v for k, v in overrides.items() if v is not _MISSING})
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigValueError(f"{cls.__name__}: {e}") from None
    except ValueError as e:  # a config's own check: say it with the flag of the field it names
        found = _named_field(str(e), cls)
        if found is None:
            raise
        span, field = found
        text = str(e)
        text = text[:span[0]] + _flag(prefix, field) + text[span[1]:]
        if isinstance(e, SaesteerError):  # keep its type (callers catch e.g. SteeringError)
            e.message, e.args, e.field = text, (text,), _dest(prefix, field)
            raise
        raise ConfigValueError(text, field=_dest(prefix, field)) from None


class ConfigValueError(SaesteerError, ValueError):
    """A value a config refused; its message names the flag that sets it (where the config named
    the field)."""


def _named_field(message: str, cls: type) -> tuple[tuple[int, int], str] | None:
    """Where `message` first names a field of dataclass `cls` that has a flag (as `field` or
    `Cls.field`), and which field."""
    best: tuple[tuple[int, int], str] | None = None
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli") is False:
            continue
        m = re.search(rf"(?<![\w-])(?:{re.escape(cls.__name__)}\.)?{re.escape(f.name)}(?![\w-])", message)
        if m and (best is None or m.start() < best[0][0]):
            best = (m.span(), f.name)
    return best
