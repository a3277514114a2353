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
command imported it). datasets' own switch starts from the environment when it is imported, and
importing it costs a second or more (pyarrow, pandas), which a command that reads no dataset must
not pay: one already imported is switched at once, one not imported yet is switched by an import
hook the moment the command imports it (and set back to on, as a fresh import has it).

An environment variable that forces a library's bars on (HF_HUB_DISABLE_PROGRESS_BARS=0 for the hub
and transformers, HF_DATASETS_DISABLE_PROGRESS_BARS=0 for datasets) keeps them on; one that forces
them off keeps them off.

Blocks nest (`saesteer train` quiets them again inside the CLI's block, for a config file's
log.progress = false): each puts back the settings it found, and only the outermost one installs
the import hook, so a library imported inside an inner block stays quiet until the outer one ends.
The switches are the process's: enter blocks from one thread (the CLI's), as the commands do.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple

__all__ = ["library_bars"]

DATASETS_BARS = "datasets.utils.tqdm"  # the module that holds datasets' switch
_import_hook: _QuietOnImport | None = None  # the outermost block's, while one is open


class _Switch(NamedTuple):
    is_on: Callable[[], object]  # a value `turn` takes back
    turn: Callable[[object], None]


@contextmanager
def library_bars(enabled: bool) -> Iterator[None]:
    """Nothing when `enabled`; otherwise the libraries' bars are off inside and as before after."""
    if enabled:
        yield
        return
    # transformers first: setting its switch sets the hub's too, so the hub's is put back after it
    switches = [s for s in (*_hub_and_transformers(), _datasets()) if s is not None]
    was_on = [s.is_on() for s in switches]  # all read before any is turned
    global _import_hook
    # one hook at a time: a second would find the module through the first (and it through the
    # second, without end), and an inner block's exit would turn the bars on inside the outer one
    hook = None
    if _import_hook is None and DATASETS_BARS not in sys.modules and _installed("datasets"):
        hook = _QuietOnImport(DATASETS_BARS)
    try:  # from the first switch turned: a failure part way still puts everything back
        with warnings.catch_warnings():  # "cannot disable: an environment variable has priority": it does
            warnings.simplefilter("ignore")
            for s in switches:
                s.turn(False)
        if hook is not None:
            sys.meta_path.insert(0, hook)
            _import_hook = hook
        yield
    finally:
        if hook is not None and hook in sys.meta_path:
            sys.meta_path.remove(hook)
        if hook is not None and _import_hook is hook:
            _import_hook = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for s, on in zip(switches, was_on):
                s.turn(on)
            if hook is not None and hook.quieted is not None:
                hook.quieted.enable_progress_bars()  # as the import would have left it


def _installed(name: str) -> bool:
    return name in sys.modules or importlib.util.find_spec(name) is not None


def _hub_and_transformers() -> tuple[_Switch | None, _Switch | None]:
    """transformers' switch and the hub's; neither when the hub is not installed or its environment
    variable forces bars on (transformers' own switch ignores it once imported; the variable wins)."""
    if not _installed("huggingface_hub"):
        return None, None
    from huggingface_hub import constants, utils

    if constants.HF_HUB_DISABLE_PROGRESS_BARS is False:
        return None, None
    return _transformers(utils), _hub(utils)


def _hub(utils) -> _Switch:
    """The hub's switch, its per-group settings (`progress_bar_states`) included: enabling or
    disabling all bars clears them, so they are saved and put back as they were."""
    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module (utils.tqdm is its class)
    states = getattr(hub_tqdm, "progress_bar_states", None)  # older hubs: one global switch

    def is_on():
        return dict(states) if states is not None else not utils.are_progress_bars_disabled()

    def turn(state) -> None:
        if state is False:
            utils.disable_progress_bars()
        elif isinstance(state, dict):
            states.clear()
            states.update(state)
        else:
            utils.enable_progress_bars()

    return _Switch(is_on, turn)


def _transformers(hub_utils) -> _Switch:
    """Its own switch once imported; before, the hub's stands for it (its import copies it), so a
    command that imports it gets it off, and it is set back to what the import would have given."""

    def is_on() -> bool:
        logging = sys.modules.get("transformers.utils.logging")
        return logging.is_progress_bar_enabled() if logging is not None else not hub_utils.are_progress_bars_disabled()

    def turn(on) -> None:
        logging = sys.modules.get("transformers.utils.logging")
        if logging is not None:
            logging.enable_progress_bar() if on else logging.disable_progress_bar()

    return _Switch(is_on, turn)


def _datasets() -> _Switch | None:
    """datasets' switch when it is imported already (see `_QuietOnImport` for when it is not)."""
    module = sys.modules.get(DATASETS_BARS)
    if module is None:
        return None
    return _Switch(lambda: not module.are_progress_bars_disabled(),
                   lambda on: module.enable_progress_bars() if on else module.disable_progress_bars())


class _QuietOnImport(importlib.abc.MetaPathFinder):
    """Turns a library's bars off (`disable_progress_bars()` of module `name`) as soon as that module
    is imported; `quieted` is the module then. Finds nothing itself: the other finders find it, and
    its loader runs the switch after running the module."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.quieted = None

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _ThenQuiet(spec.loader, self)
                return spec
        return None


class _ThenQuiet(importlib.abc.Loader):
    def __init__(self, loader, hook: _QuietOnImport) -> None:
        self.loader = loader
        self.hook = hook

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module.disable_progress_bars()
        self.hook.quieted = module
