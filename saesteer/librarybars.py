"""The progress bars of the libraries a command calls, quiet when ours are.

`--no-progress` turns off our bars (tqdm, `disable=not progress`); the libraries draw their own:
transformers ("Loading weights" of a checkpoint), the hub's downloads, datasets ("Generating train
split", map and filter). `library_bars(enabled=False)` turns those off for the length of a command and
puts each library's setting back afterwards, so a Python session that calls `saesteer.cli.main`
keeps the bars it had.

    with library_bars(enabled=not args.no_progress):
        run(args)

Each library has a switch of its own. transformers reads the hub's when it is imported, so one not
imported yet needs nothing but the hub's (and gets its own setting back, as the hub's was, if the
command imported it); datasets' own switch is read only from the environment at import, so
datasets is imported here (only when quiet was asked for) to turn it off. An environment variable
that forces a library's bars on or off (HF_HUB_DISABLE_PROGRESS_BARS, HF_DATASETS_DISABLE_PROGRESS_BARS)
wins, as the libraries document.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple

__all__ = ["library_bars"]


class _Switch(NamedTuple):
    is_on: Callable[[], bool]
    turn: Callable[[bool], None]


@contextmanager
def library_bars(enabled: bool) -> Iterator[None]:
    """Nothing when `enabled`; otherwise the libraries' bars are off inside and as before after."""
    if enabled:
        yield
        return
    # transformers first: setting its switch sets the hub's too, so the hub's is put back after it
    switches = [s for s in (_transformers(), _hub(), _datasets()) if s is not None]
    was_on = [s.is_on() for s in switches]  # all read before any is turned
    with warnings.catch_warnings():  # "cannot disable: an environment variable has priority": it does
        warnings.simplefilter("ignore")
        for s in switches:
            s.turn(False)
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for s, on in zip(switches, was_on):
                s.turn(on)


def _installed(name: str) -> bool:
    return name in sys.modules or importlib.util.find_spec(name) is not None


def _hub() -> _Switch | None:
    if not _installed("huggingface_hub"):
        return None
    from huggingface_hub import utils

    return _library_switch(utils)


def _transformers() -> _Switch | None:
    """Its own switch once imported; before, the hub's stands for it (its import copies it), so a
    command that imports it gets it off, and it is set back to what the import would have given."""
    if not _installed("huggingface_hub"):
        return None
    from huggingface_hub.utils import are_progress_bars_disabled

    def is_on() -> bool:
        logging = sys.modules.get("transformers.utils.logging")
        return logging.is_progress_bar_enabled() if logging is not None else not are_progress_bars_disabled()

    def turn(on: bool) -> None:
        logging = sys.modules.get("transformers.utils.logging")
        if logging is not None:
            logging.enable_progress_bar() if on else logging.disable_progress_bar()

    return _Switch(is_on, turn)


def _datasets() -> _Switch | None:
    if not _installed("datasets"):
        return None
    from datasets import utils

    return _library_switch(utils)


def _library_switch(module) -> _Switch:
    """The switch of a library whose `utils` has are_progress_bars_disabled / enable_progress_bars /
    disable_progress_bars (the hub's, datasets')."""
    return _Switch(lambda: not module.are_progress_bars_disabled(),
                   lambda on: module.enable_progress_bars() if on else module.disable_progress_bars())
