"""A domain refusal's RunConfig paths (`train.k_aux`, `saes.0.k`, as training's resume check names
them) said as `saesteer train`'s flags (`--k-aux`, `--k (SAE 0)`): domain code names config fields,
the CLI names the flags a user would change. Torch-free."""

from __future__ import annotations

import argparse
import re

# an SAESpec field as the dest of the hand-made flag that sets it (an architecture's own settings,
# `options.<name>`, and the other sections' fields have flags made from their config dataclasses)
_SPEC_DEST = {"architecture": "architecture", "d_sae": "d_sae", "k": "k", "matryoshka_widths": "matryoshka_widths",
              "skip": "skip", "lr": "sae_lr", "name": "sae_name"}
_CONFIG_PATH = re.compile(
    r"(?<![\w./-])(?:saes\.(?P<index>\d+)\.(?P<options>options\.)?(?P<spec_field>[a-z]\w*)|saes\.len"
    r"|(?P<section>[a-z]\w*)\.(?P<field>[a-z]\w*))(?![\w/-])")


def config_paths_as_flags(message: str, parser) -> str:
    """A domain refusal's RunConfig paths (`train.k_aux`, `saes.0.k`, as the resume check names them)
    said as this command's flags (`--k-aux`, `--k (SAE 0)`); a path without a flag stays as it is.
    Each flag is the one made for that very field (`configargs.flag_of_field`): a flag of another
    section or config that shares the field's name is never named."""
    import dataclasses

    from saesteer.commands._train_options import option_configs
    from saesteer.configargs import flag_of_field
    from training.config import RunConfig

    if parser is None:
        return message
    sections = {f.name: type(f.default_factory()) for f in dataclasses.fields(RunConfig) if f.name != "saes"}
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS}

    def said(m) -> str:
        if m.group("section"):
            cls = sections.get(m.group("section"))
            return (cls and flag_of_field(parser, cls, m.group("field"))) or m.group(0)
        if m.group("index") is None:  # saes.len
            return "the number of SAEs (--architecture, --d-sae, --k)"
        field = m.group("spec_field")
        if m.group("options"):
            flag = next(filter(None, (flag_of_field(parser, cls, field) for cls, _ in option_configs())), None)
        else:
            flag = flags.get(_SPEC_DEST.get(field, ""))
        return f"{flag} (SAE {m.group('index')})" if flag else m.group(0)

    return _CONFIG_PATH.sub(said, message)
