"""`saesteer` command line: subcommands are discovered from `saesteer.commands`."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

import saesteer
import saesteer.commands

DESCRIPTION = """\
saesteer: sparse-autoencoder feature work on transformer language models.

Cache activations, train TopK / BatchTopK / Matryoshka / JumpReLU SAEs (or transcoders), build
a feature store, label features with an LLM judge, browse them, and steer generation by feature ID.
Start with `saesteer demo` (the built-in toy world: no GPU, no internet)."""


class _Parser(argparse.ArgumentParser):
    """Bad flags print two lines (what is wrong, where the help is), not the whole usage."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}\nsee `{self.prog} --help` for the options\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)


def command_modules() -> list:
    mods = []
    for info in pkgutil.iter_modules(saesteer.commands.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"saesteer.commands.{info.name}")
        if hasattr(mod, "NAME") and hasattr(mod, "run"):
            mods.append(mod)
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 50), m.NAME))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="saesteer", description=DESCRIPTION, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"saesteer {saesteer.__version__}")
    parser.add_argument("--debug", action="store_true", default=False,
                        help="show Python's traceback on errors (also: SAESTEER_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for mod in command_modules():
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=getattr(mod, "DESCRIPTION", mod.HELP),
            formatter_class=_Formatter,
        )
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show Python's traceback on errors")
        p.set_defaults(_run=mod.run, _parser=p, _on_stop=getattr(mod, "ON_STOP", ""))
    return parser


def main(argv: list[str] | None = None) -> int:
    from saesteer import stopsignals

    # Ctrl-C, SIGTERM (a scheduler's preemption), SIGHUP: one line and exit status 128 + the signal's number
    with stopsignals.installed():
        try:
            return _main(argv)
        except KeyboardInterrupt as e:
            if _debug_asked("--debug" in (sys.argv[1:] if argv is None else argv)):  # maybe not parsed yet
                raise
            return stopsignals.report(e)


def _debug_asked(flag: bool) -> bool:
    """--debug given (`flag`) or SAESTEER_DEBUG set (to anything but 0): tracebacks are shown."""
    return flag or os.environ.get("SAESTEER_DEBUG", "") not in ("", "0")


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    from saesteer.boundary import report, warnings_as_notes
    from saesteer.librarybars import library_bars
    from saesteer.stopsignals import Stopped

    debug = _debug_asked(args.debug)
    # --no-progress (train: also the old `--progress false`) quiets the libraries' bars too
    quiet = getattr(args, "no_progress", False) or getattr(args, "progress", None) is False
    _expand_home(args)
    _escape_what_stdout_cannot_encode()
    try:
        _check_devices(args)
        with library_bars(enabled=not quiet):
            if debug:
                return int(args._run(args) or 0)
            with warnings_as_notes():
                return int(args._run(args) or 0)
    except Stopped as e:  # a stop signal: what the command keeps and how it goes on (its ON_STOP)
        e.detail = e.detail or args._on_stop
        raise
    except Exception as e:  # the error boundary: one or two lines, no traceback (see saesteer/boundary.py)
        if debug:
            raise
        return report(e, getattr(args, "_parser", None))


# Flags and positionals whose values are files or folders (`--sae` and `--store` may repeat; `--sae
# NAME=DIR`). --model, --dataset and --init-from are expanded where they are resolved.
PATH_FLAGS = ("out", "cache", "store", "sae", "config", "prompts_file", "verify", "preset", "scorecard", "contrast",
              "positive", "negative", "judge_cache_path", "export_delphi", "import_delphi", "import_neuronpedia",
              "lexicon", "eval_dataset", "probing_dataset", "report", "file")


def _expand_home(args) -> None:
    """A path flag's leading `~` is the home folder, as --model's and --dataset's already are: the
    shell leaves it be in `--out=~/x`, in quotes, and on Windows (cmd, PowerShell for programs), and
    a folder named `~` in the working directory is no one's intent."""
    def expand(value):
        if isinstance(value, (list, tuple)):
            return type(value)(expand(v) for v in value)
        if not isinstance(value, str):
            return value
        name, sep, rest = value.partition("=")
        if sep and rest.startswith("~") and "/" not in name and ":" not in name:  # --sae NAME=~/dir
            return name + sep + os.path.expanduser(rest)
        return os.path.expanduser(value) if value.startswith("~") else value

    for dest in PATH_FLAGS:
        if getattr(args, dest, None) is not None:
            setattr(args, dest, expand(getattr(args, dest)))


def _escape_what_stdout_cannot_encode() -> None:
    """Text stdout's encoding lacks (a CJK label or prompt in Windows' cp1252, which a redirected
    stdout uses) is written as \\uXXXX, as stderr already does, not a UnicodeEncodeError once the
    work is done. Output in UTF-8 (Linux, macOS, a Windows console) is unchanged."""
    stream = sys.stdout
    if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
        stream.reconfigure(errors="backslashreplace")


def _check_devices(args) -> None:
    """--device / --judge-device naming a device this machine lacks (mps off a Mac, cuda without a
    GPU): refused before anything loads (`saes.devices.check_device`)."""
    for dest in ("device", "judge_device"):
        value = getattr(args, dest, None)
        if isinstance(value, str):
            from saes.devices import check_device

            check_device(value, field=dest)


if __name__ == "__main__":
    raise SystemExit(main())
