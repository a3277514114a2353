"""`saesteer preset`: named steering presets kept in a feature store (save, list, show, export, import, delete)."""

from __future__ import annotations

NAME = "preset"
ORDER = 72
HELP = "save, list, export and import named steering presets (kept in the feature store)"
DESCRIPTION = """\
A preset is a named set of feature edits (and optional stop triggers) with its provenance: the
model and the SAE (weights hash, hook) it was made for, and its strength calibration (the typical
max activation that 'x' strengths resolved with, the store's recommended strengths), plus an
optional scorecard (e.g. from `saesteer steer-eval --json` or `saesteer sweep`). It is kept in the
SAE's feature store and applies anywhere an edit is accepted: `saesteer steer --preset NAME`, the
web playground, the API ("steering": {"preset": "NAME"}), and Python (`steer(model, sae, [preset])`).
A preset is refused on another SAE (weights hash or hook) and on another model.

examples:
  saesteer preset save seaward --store toy.db -f 123:add=2x@generated -f 45:ablate --stop-when 77>1x
  saesteer preset list --store toy.db
  saesteer preset show seaward --store toy.db
  saesteer preset export seaward --store toy.db --out seaward.json
  saesteer preset import seaward.json --store other.db       # refused: made for another SAE
  saesteer preset delete seaward --store toy.db"""


def add_arguments(parser) -> None:
    from saesteer.commands._steering import OneStore, add_latent_argument

    sub = parser.add_subparsers(dest="preset_command", metavar="SUBCOMMAND", title="subcommands")
    sub.required = True

    def store_arg(p) -> None:
        p.add_argument("--store", required=True, metavar="FILE", action=OneStore,
                       help="the SAE's feature store (from `saesteer features build`)")

    s = sub.add_parser("save", help="save a preset of edits into the store", description="Save a preset into the store.")
    s.add_argument("name", help="preset name: letters, digits, '_', '-', '.'")
    store_arg(s)
    add_latent_argument(s, required=True, metavar="EDIT",
                        help="LATENT:OP[=VALUE[x]][@POSITIONS][?TRIGGER>THRESHOLD[x]], repeatable (as in `saesteer steer`; "
                             "a latent as Neuronpedia names it too, gpt2-small/6-res-jb/17, of the store's SAE)")
    s.add_argument("--stop-when", action="append", default=[], metavar="LATENT>THRESHOLD[x]",
                   help="end a generation when this latent (an index, or as Neuronpedia names it) fires on a generated "
                        "token (API), repeatable")
    s.add_argument("--description", default="", help="what the preset is for")
    s.add_argument("--scorecard", default=None, metavar="FILE", help="a JSON scorecard to keep with it (steer-eval, sweep)")
    s.add_argument("--overwrite", action="store_true", help="replace a preset of the same name")

    ls = sub.add_parser("list", help="list the store's presets", description="List the presets in a store.")
    store_arg(ls)

    sh = sub.add_parser("show", help="print one preset as JSON", description="Print a preset (JSON).")
    sh.add_argument("name")
    store_arg(sh)

    ex = sub.add_parser("export", help="write a preset to a JSON file", description="Write a preset to a JSON file.")
    ex.add_argument("name")
    store_arg(ex)
    ex.add_argument("--out", required=True, metavar="FILE", help="JSON file to write")

    im = sub.add_parser("import", help="add a preset from a JSON file (refused if made for another SAE)",
                        description="Add a preset from a JSON file; refused if it was made for another SAE.")
    im.add_argument("file", help="a preset JSON file (from `saesteer preset export`)")
    store_arg(im)
    im.add_argument("--name", default=None, help="save it under another name")
    im.add_argument("--overwrite", action="store_true", help="replace a preset of the same name")

    d = sub.add_parser("delete", help="remove a preset", description="Remove a preset from the store.")
    d.add_argument("name")
    store_arg(d)


def run(args) -> int:
    from features import StoreError
    from saesteer.commands._steering import CLIError, print_error
    from steering.spec import SteeringError

    try:
        return _run(args)
    except (CLIError, SteeringError, StoreError, ValueError) as e:
        return print_error(e)


def _open(path: str, writable: bool):
    from pathlib import Path

    from features import FeatureStore
    from saesteer.commands._steering import CLIError

    if not Path(path).is_file():
        raise CLIError(f"no feature store at {path}; build one with `saesteer features build`")
    return FeatureStore.open(path, readonly=not writable)


def _run(args) -> int:
    from saesteer.commands._steering import CLIError
    from steering.store import StoreLink

    cmd = args.preset_command
    writable = cmd in ("save", "import", "delete")
    with _open(args.store, writable) as store:
        link = StoreLink(store)
        if cmd == "save":
            _save(args, store, link)
        elif cmd == "list":
            _list(args, link)
        elif cmd == "show":
            print(link.preset(args.name).dumps())
        elif cmd == "export":
            _export(args, link)
        elif cmd == "import":
            _import(args, link)
        elif cmd == "delete":
            if not store.delete_preset(args.name):
                raise CLIError(f"{args.store} has no preset named {args.name!r}")
            print(f"deleted preset {args.name!r}")
    return 0


def _save(args, store, link) -> None:
    """`preset save`: the --latent edits as a preset, checked against the store's SAE and model."""
    from features.neuronpedia_import import store_latent_owners
    from steering.presets import make_preset

    owners = store_latent_owners(store)  # Neuronpedia's latents of the store's SAE, as its indices
    args.latent = [owners.edit(t) for t in args.latent]
    args.stop_when = [owners.trigger(t) for t in args.stop_when]
    scorecard = _read_json(args.scorecard, "--scorecard") if args.scorecard else None
    if scorecard is not None:
        _check_scorecard(scorecard, args, store)
    sae = store.meta.get("sae") or {}
    preset = make_preset(args.name, args.latent, d_sae=store.d_sae, hook_name=sae.get("hook_name"),
                         fingerprint=store.sae_fingerprint, model_identity=store.recorded_model(),
                         typical_max=link.typical_max, recommended=link.recommended, stops=args.stop_when,
                         description=args.description, scorecard=scorecard)
    link.save_preset(preset, overwrite=args.overwrite)
    print(f"saved {preset.describe()} in {args.store}")


def _check_scorecard(card, args, store) -> None:
    """A scorecard is the preset's evidence: refuse one measured on another SAE (steer-eval and sweep record its
    hash) or, for a sweep (it records its latent), on a latent the preset does not edit."""
    from saesteer.commands._steering import CLIError
    from steering.spec import parse_edit

    if not isinstance(card, dict):
        raise CLIError(f"--scorecard {args.scorecard}: expected a JSON object (from `saesteer sweep` or "
                       f"`steer-eval --json`)")
    fingerprint = (card.get("provenance") or {}).get("sae_fingerprint")
    if fingerprint and store.sae_fingerprint and fingerprint != store.sae_fingerprint:
        raise CLIError(f"--scorecard {args.scorecard} was measured on the SAE with weights hash {fingerprint[:12]}, but "
                       f"{args.store} describes the SAE with hash {store.sae_fingerprint[:12]}; "
                       f"give this SAE's scorecard")
    edited = {parse_edit(t).latent for t in args.latent}
    swept = card.get("latent")
    if isinstance(swept, int) and not isinstance(swept, bool) and swept not in edited:
        raise CLIError(f"--scorecard {args.scorecard} is a sweep of latent {swept}, but the preset edits latent(s) "
                       f"{', '.join(map(str, sorted(edited)))}; give the sweep of a latent it edits")


def _list(args, link) -> None:
    names = link.presets()
    if not names:
        print(f"{args.store} has no presets (save one with `saesteer preset save`)")
    for n in names:
        print(link.preset(n).describe())


def _export(args, link) -> None:
    from pathlib import Path

    from saes.fileio import atomic_write_bytes
    from saesteer.commands._steering import CLIError

    out = Path(args.out)
    if not out.parent.is_dir():
        raise CLIError(f"--out {out}: the folder {out.parent} does not exist")
    atomic_write_bytes(out, (link.preset(args.name).dumps() + "\n").encode())
    print(f"wrote preset {args.name!r} to {args.out}")


def _import(args, link) -> None:
    """`preset import`: a preset JSON file into the store (renamed with --name)."""
    from steering.presets import Preset

    preset = Preset.from_json(_read_json(args.file, "preset file"))
    if args.name:
        preset = Preset.from_json(dict(preset.to_json(), name=args.name))
    link.save_preset(preset, overwrite=args.overwrite)
    print(f"imported {preset.describe()} into {args.store}")


def _read_json(path: str, what: str):
    """The JSON in `path`, or a CLI error naming it (`what`: how the message names the file)."""
    from pathlib import Path

    from saes.fileio import read_json
    from saesteer.commands._steering import CLIError

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{what} {p}: no such file")
    try:
        return read_json(p, what)
    except ValueError as e:  # not JSON, UTF-16, or not UTF-8 (a byte-order mark is fine)
        raise CLIError(str(e)) from None
