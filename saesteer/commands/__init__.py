"""One module per CLI subcommand.

Each module defines NAME, HELP, `add_arguments(parser)` and `run(args) -> int`.
Keep the top of each module light (no torch import): `saesteer --help` imports them all.
Heavy imports go inside `run`.
"""
