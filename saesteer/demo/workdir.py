"""The demo's work folder: refuse a folder that is not one, delete it for --fresh, note changed settings."""

from __future__ import annotations

import json
import shutil
from typing import Callable

from saesteer.demo.config import MARKER, DemoConfig, DemoError, DemoPaths


def prepare_out(cfg: DemoConfig, paths: DemoPaths, fresh: bool, say: Callable[[str], None]) -> None:
    """Make the work folder (refusing a non-empty folder that is not a demo's), delete it first with
    `fresh`, note the settings changed since the last run; then record this run's config in it."""
    out = paths.out
    if out.exists() and not out.is_dir():
        raise DemoError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not paths.marker.is_file():
            raise DemoError(f"{out} is not empty and is not a demo work folder (no {MARKER}); choose another --out")
        if fresh:
            say(f"--fresh: deleting {out}")
            shutil.rmtree(out)
        else:
            old = json.loads(paths.marker.read_text(encoding="utf-8"))
            changed = sorted(k for k in set(old) | set(cfg.to_json()) if old.get(k) != cfg.to_json().get(k))
            if changed:
                say(f"note: settings changed since the last run in {out}: {', '.join(changed)}; stages whose "
                    f"inputs changed are redone where they can be (use --fresh to start over)")
    out.mkdir(parents=True, exist_ok=True)
    from saes.fileio import atomic_write_json

    atomic_write_json(paths.marker, cfg.to_json())

