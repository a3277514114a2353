"""`saesteer features top-on-text`: which latents fire on a text, token by token (runs the model;
the store, when given, adds labels and names the SAE and model). Part of `saesteer features`."""

from __future__ import annotations


def add_top_on_text(sub) -> None:
    """`features top-on-text`: which latents fire on a text."""
    from saesteer.configargs import _parser_for

    t = sub.add_parser("top-on-text", help="which latents fire on a text, token by token")
    t.add_argument("store", nargs="?", default=None, help="feature store (for labels; its SAE is used unless --sae)")
    t.add_argument("text", help="the text")
    t.add_argument("--sae", default=None, help="SAE folder or sae_lens:RELEASE/SAE_ID (default: the one the store was "
                                               "built from)")
    t.add_argument("--hook", default=None, help="hook point of an SAE whose files do not record one")
    t.add_argument("--model", default=None, help="model (default: the one the store or the SAE records)")
    t.add_argument("--allow-model-mismatch", action="store_true",
                   help="run --model even if the store or SAE records another model")
    t.add_argument("--device", default=None)
    t.add_argument("--top", type=int, default=5, help="latents shown per token (default: 5)")
    t.add_argument("--prepend-bos", type=_parser_for(bool | None), default=None, metavar="BOOL|NONE",
                   help="prepend BOS to the text (none: as the SAE was trained: its saesteer.json's BOS policy, "
                        "always BOS for --bos-policy doc; else its cfg.json; else the model's default) (default: None)")
    t.add_argument("--no-bos", action="store_true", help="the same as --prepend-bos false")
    t.add_argument("--special-tokens", choices=("text", "match"), default=None,
                   help="a special token written out in the text (<|endoftext|>, <s>): text = read as its characters, "
                        "match = as the token it names (default: matched where the model's chat template writes it, a chat "
                        "rendered to text; else as the SAE's training data read them, recorded in its saesteer.json; "
                        "else match, as the model's tokenizer reads a prompt)")


def top_on_text(args) -> int:
    from pathlib import Path

    import torch
    from rich.console import Console
    from rich.table import Table

    from features import FeatureStore
    from features.text import features_on_text, written_special_tokens
    from saes.formats import resolve_sae
    from saesteer.terminal import plain

    from saesteer.commands._steering import load_model

    if args.no_bos and args.prepend_bos:
        raise ValueError("--no-bos and --prepend-bos true contradict each other; give one of them")
    prepend_bos = False if args.no_bos else args.prepend_bos  # None: as the SAE was trained (saes.bos)
    store = FeatureStore.open(args.store) if args.store else None
    try:
        sae_dir = args.sae
        if store is not None and not sae_dir:
            sae_dir = (store.meta.get("sae") or {}).get("path")
            if sae_dir and not sae_dir.startswith("sae_lens:") and not Path(sae_dir).exists():
                raise FileNotFoundError(f"the SAE folder the store records, {sae_dir}, does not exist (moved or "
                                        f"deleted?); pass --sae DIR")
        if not sae_dir:
            raise ValueError("give --sae (or a store that records the SAE folder it was built from)")
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        recorded_hook = (store.meta.get("sae") or {}).get("hook_name") if store is not None else None
        loaded = resolve_sae(sae_dir, hook=args.hook or recorded_hook, model=args.model, device=device)
        loaded.sae.eval()
        model = load_model(args, {"sae": loaded}, store, sae_specs={"sae": sae_dir})
        res = features_on_text(model, loaded, args.text, store=store, top_n=args.top, prepend_bos=prepend_bos,
                               allow_model_mismatch=args.allow_model_mismatch, special_tokens=args.special_tokens)
    finally:
        if store is not None:
            store.close()
    con = Console()
    tab = Table(title=plain(f"latents firing on {args.text!r} ({res.hook_name})"))
    tab.add_column("pos", justify="right")
    tab.add_column("token")
    tab.add_column("latents (activation)")
    for t in res.tokens:
        tab.add_row(str(t.position), plain(repr(t.token)),
                    plain(", ".join(f"{l.latent} ({l.act:.2f})" + (f" {l.label}" if l.label else "") for l in t.latents) or "-"))
    con.print(tab)
    if res.latents:
        con.print(plain("strongest over the text: " + ", ".join(
            f"{l.latent} max {l.max_act:.2f} on {l.n_tokens} tok" + (f" [{l.label}]" if l.label else "") for l in res.latents[:10])))
    written = written_special_tokens(model.tokenizer, args.text)
    if written:
        how = ("read as text (their characters)" if res.special_tokens == "text" else
               "read as the special tokens they name")
        why = "as given" if args.special_tokens else (
            "as the SAE's training data read them" if res.special_tokens == "text" else "as the model's tokenizer reads a prompt")
        other = "match" if res.special_tokens == "text" else "text"
        con.print(plain(f"note: {', '.join(written)} written in the text: {how}, {why}; --special-tokens {other} "
                        f"reads them the other way"))
    return 0
