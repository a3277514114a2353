"""`saesteer --help` stays fast: building the parser (every subcommand's flags) imports no heavy
library. Checked by what lands in `sys.modules` in a fresh interpreter, not by timing."""

from __future__ import annotations

import json
import subprocess
import sys

# numpy and asyncio too: together they were half of `saesteer --help`'s CPU time (a config module imported them)
HEAVY = ("torch", "transformers", "transformer_lens", "sae_lens", "datasets", "fastapi", "openai", "anthropic", "plotly",
         "wandb", "numpy", "asyncio")

PROBE = """
import contextlib, io, json, sys
from saesteer import cli
{action}
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _heavy_imported(action: str) -> list[str]:
    code = PROBE.format(action=action, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_building_the_parser_imports_no_heavy_library() -> None:
    assert _heavy_imported("cli.build_parser()") == []


def test_help_of_every_command_imports_no_heavy_library() -> None:
    action = """
parser = cli.build_parser()
names = [a for a in parser._subparsers._group_actions[0].choices]
assert len(names) >= 8, names
for argv in [["--help"]] + [[n, "--help"] for n in names]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main(argv)
        except SystemExit:
            pass
"""
    assert _heavy_imported(action) == []
