"""`saesteer features`: build the feature store of an SAE and browse it from the terminal."""

from __future__ import annotations

import sys
from pathlib import Path

from saesteer.boundary import print_error

NAME = "features"
ORDER = 40
HELP = "build and browse the feature store (stats, examples, neighbours, search, HTML dashboards)"
DESCRIPTION = """\
The feature store is one SQLite file per SAE: per-latent statistics, histograms, top / quantile /
negative examples, logit effects, neighbours and (later) labels and scores.

examples:
  saesteer features build --sae runs/toy-topk/sae --cache caches/toy --out stores/toy-topk.db
  saesteer features show stores/toy-topk.db 42
  saesteer features list stores/toy-topk.db --sort freq --limit 20
  saesteer features search stores/toy-topk.db "ocean"
  saesteer features top-on-text stores/toy-topk.db "the sailor sees a whale ." --model toy
  saesteer features export stores/toy-topk.db out/dash --limit 200
  saesteer features export stores/toy-topk.db exports --format neuronpedia --model-id toy --source-set res-1k
  saesteer features map stores/toy-topk.db --method umap          # the web app's map page
  saesteer features embed stores/toy-topk.db --embed-backend openai --embed-model text-embedding-3-small"""


def add_arguments(parser) -> None:
    from saesteer.commands._features_export import add_export
    from saesteer.commands._features_text import add_top_on_text

    sub = parser.add_subparsers(dest="features_command", metavar="SUBCOMMAND", title="subcommands")
    sub.required = True
    _add_build(sub)
    _add_show(sub)
    _add_list(sub)
    _add_search(sub)
    add_top_on_text(sub)
    _add_map(sub)
    _add_embed(sub)
    add_export(sub)
    up = sub.add_parser("upgrade", help="bring a store written by an older saesteer to this version, in place: its "
                        "schema, and token labels of an older rule rewritten with the recorded model's tokenizer")
    up.add_argument("store", help="feature store file (written)")


def _add_build(sub) -> None:
    """`features build`: SAE over a cache into a feature store."""
    from features.config import BuildConfig
    from saesteer.configargs import add_dataclass_arguments

    b = sub.add_parser("build", help="run an SAE over an activation cache and write its feature store",
                       description="Build (or resume, after a crash or a stop: re-run the same command) a feature "
                                   "store. It is built in <out>.building and renamed to --out when complete: a store "
                                   "already at --out (--overwrite) stays whole until then.")
    b.set_defaults(_on_stop="the store at --out is unchanged; the build waits in <out>.building: run the same command "
                            "to resume it")  # the CLI's stop line (saesteer.stopsignals)
    b.add_argument("--sae", required=True,
                   help="SAE: a folder (saesteer, SAELens, sparsify, dictionary_learning, Gemma Scope), an OpenAI .pt file, "
                        "sae_lens:RELEASE/SAE_ID, or a Neuronpedia id or address (gpt2-small/6-res-jb)")
    b.add_argument("--cache", required=True, help="activation cache directory (from `saesteer cache`)")
    b.add_argument("--out", required=True, help="store file to write, e.g. stores/toy-topk.db")
    b.add_argument("--hook", default=None, help="hook point to read from the cache (default: the SAE's hook_name)")
    b.add_argument("--model", default=None,
                   help="model for logit effects and token strings (default: the cache's model; 'none' skips both)")
    b.add_argument("--allow-model-mismatch", action="store_true",
                   help="accept an SAE or --model recorded for another model than the cache's")
    b.add_argument("--device", default=None, help="where the SAE (and model) run (default: cuda if available, else cpu)")
    b.add_argument("--overwrite", action="store_true",
                   help="replace an existing store built from something else (once the new one is complete)")
    b.add_argument("--no-verify", action="store_true", help="skip the cache shards' SHA-256 checks")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_dataclass_arguments(b, BuildConfig, title="what the store keeps")


def _add_show(sub) -> None:
    s = sub.add_parser("show", help="everything about one latent")
    s.add_argument("store", help="feature store file")
    s.add_argument("latent", help="the latent's index, or a Neuronpedia latent of the store's SAE (gpt2-small/6-res-jb/17, "
                                  "or its page address)")
    s.add_argument("--examples", type=int, default=5, help="examples shown per kind (default: 5)")


def _add_list(sub) -> None:
    ls = sub.add_parser("list", help="a table of latents, sorted and filtered")
    ls.add_argument("store", help="feature store file")
    ls.add_argument("--sort", default="freq", help="latent, freq, n_fires, mean_act, max_act, typical_max_act, level, label, "
                                                   "or score:<method> (default: freq)")
    ls.add_argument("--ascending", action="store_true", help="smallest first")
    ls.add_argument("--limit", type=int, default=30)
    ls.add_argument("--offset", type=int, default=0)
    ls.add_argument("--flag", action="append", default=None, help="only latents with this flag (dead, dense, bos_only, single_position)")
    ls.add_argument("--alive", action="store_true", help="leave out dead latents")
    ls.add_argument("--labelled", action="store_true", help="only latents with a label")


def _add_search(sub) -> None:
    # features.store.substring.MAX_PARTS, written out: importing it would load the store package (and
    # numpy) while building the parser; tests/test_features_cli.py checks the two agree.
    max_parts = 128
    q = sub.add_parser("search", help="full-text search over labels and example text")
    q.add_argument("store", help="feature store file")
    q.add_argument("text", help="words to look for (a query in Chinese, Japanese or Thai, or with an emoji or another "
                                f"symbol, is looked for as substrings: at most {max_parts} space-separated parts)")
    q.add_argument("--limit", type=int, default=20, help="most latents listed")


def _add_map(sub) -> None:
    """`features map`: the 2-d layout for the web map page."""
    m = sub.add_parser("map", help="2-d layout of the latents (UMAP or PCA) for the web app's map page",
                       description="Lay the live latents out in 2-d by their decoder directions or their label "
                                   "embeddings, and store the layout for `saesteer serve`'s map page.")
    m.add_argument("store", help="feature store file (written)")
    m.add_argument("--source", default="decoder", choices=["decoder", "labels"],
                   help="decoder directions of the SAE, or the stored label embeddings (default: decoder)")
    m.add_argument("--method", default="umap", choices=["umap", "pca"],
                   help="umap (umap-learn: pip install 'saesteer[map]'; compiles numba code on first use) or pca "
                        "(instant) (default: umap)")
    m.add_argument("--sae", default=None, help="SAE folder for --source decoder (default: the one the store records)")
    m.add_argument("--embed-model", default=None, help="for --source labels: which stored embedding model (default: "
                                                         "a real model's over the offline hashing)")
    m.add_argument("--seed", type=int, default=0)


def _add_embed(sub) -> None:
    from autointerp.embeddings import EmbedConfig
    from saesteer.configargs import add_dataclass_arguments

    em = sub.add_parser("embed", help="embed the current labels (search by meaning, map by labels)")
    em.add_argument("store", help="feature store file (written)")
    em.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataclass_arguments(em, EmbedConfig, prefix="embed_", title="label embeddings")


def _console():
    from rich.console import Console

    return Console()


def run(args) -> int:
    from features.store import StoreError

    from saesteer.commands._features_export import export
    from saesteer.commands._features_text import top_on_text

    cmd = {"build": _build, "show": _show, "list": _list, "search": _search, "top-on-text": top_on_text,
           "export": export, "map": _map, "embed": _embed, "upgrade": _upgrade}[args.features_command]
    try:
        return cmd(args)
    except (StoreError, FileNotFoundError, FileExistsError, ValueError) as e:
        print_error(e)
        return 2


# ---------------------------------------------------------------------------------------------
def _cache_processing_fix(wanted: bool) -> str:
    return f"make the cache {'with' if wanted else 'without'} `saesteer cache --process-weights`"


def _build(args) -> int:
    import torch
    from rich.text import Text

    from saes.formats import resolve_sae
    from features import CacheSource, build_feature_store
    from features.build import building_path
    from features.checks import check_inputs
    from features.config import BuildConfig
    from features.store import writer_lock
    from saes.identity import ModelIdentityError, ModelMismatchError, identity_of_sae
    from saesteer.configargs import dataclass_from_args
    from saesteer import stopsignals
    from saesteer.models import OVERRIDE_FLAG, load_recorded_model, model_id, pick_record
    from saesteer.terminal import plain

    cfg = dataclass_from_args(BuildConfig, args)
    out = Path(args.out)
    if out.is_dir():  # found when the store is written, after the model loaded
        raise ValueError(f"--out {out} is a folder; the feature store is one file: give its name (e.g. {out / 'features.db'})")
    if out.is_file() or building_path(out).is_file():  # another writer (a label, a build): said before loading anything
        writer_lock(out).refuse_if_held()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    given_model = args.model if args.model and args.model.lower() != "none" else None
    loaded = resolve_sae(args.sae, hook=args.hook, model=given_model, device=device)
    sae = loaded.sae
    sae.eval()
    hook = args.hook or (sae.cfg.metadata or {}).get("hook_name")
    source = CacheSource(args.cache, hook=hook, verify=not args.no_verify)
    # every SAE-vs-cache check, once, before loading the model (build_feature_store is told they were made)
    checked = check_inputs(loaded, source, allow_model_mismatch=args.allow_model_mismatch, override=OVERRIDE_FLAG,
                           processing_fix=_cache_processing_fix, sae_name=str(args.sae),
                           bos_policy_as="`saesteer cache --bos-policy`")
    recorded, where = pick_record([(source.recorded_model(), f"the cache {args.cache}"),
                                   (identity_of_sae(loaded), f"the SAE {args.sae}")])
    model = None
    spec = args.model
    if spec is None or spec.lower() != "none":
        try:  # checked against the record here, with --model's wording
            model = load_recorded_model(recorded, spec, recorded_in=where, device=device,
                                        allow_mismatch=args.allow_model_mismatch)
        except ModelMismatchError:
            raise
        except ModelIdentityError as e:
            raise ModelIdentityError(f"{e} (or --model none to skip logit effects and token strings)") from None
    con = _console()
    con.print(Text.assemble(("feature store ", "bold"), plain(
        f"{args.out}: {sae.architecture} d_sae={sae.d_sae} over {source.n_rows:,} tokens of {args.cache} "
        f"({source.hook_name}); model: {model_id(model) if model is not None else 'none (no logit effects)'}")))
    res = build_feature_store(args.out, loaded, source, cfg, model=model, overwrite=args.overwrite,
                              progress=not args.no_progress, allow_model_mismatch=args.allow_model_mismatch,
                              mismatch_override=OVERRIDE_FLAG, processing_fix=_cache_processing_fix,
                              checked=checked, stop_signals=stopsignals.deferred)  # a stop saves the pass state
    if res.already_complete:
        done = ("its token labels rewritten by the current rule" if res.relabelled else "nothing to do")
        con.print(plain(f"{args.out} is already complete (same SAE, cache and settings); {done}"))
        return 0
    rate = f", pass {res.tokens_per_s:,.0f} tokens/s" if res.pass_rows else ""
    con.print(plain(f"done in {res.total_seconds:.1f} s{rate}{' (resumed)' if res.resumed else ''}; "
                    + ", ".join(f"{k} {v}" for k, v in res.summary.items())
                    + f" (dead: no firing on the {res.n_rows:,} tokens of this pass)"))
    return 0


def _fmt(x, spec: str = ".4g") -> str:
    return "-" if x is None or x != x else format(x, spec)


def _example_text(e):
    """A rich Text of an example's window: its pieces as they are (features.tokentext), a character
    split over tokens drawn once in the strongest shade of its tokens and underlined when one of them
    is the centre (`character_spans`, as the web app and the HTML export draw it: the shade of a
    character's first byte tokens, which have no text, was lost)."""
    from rich.text import Text

    from features.tokentext import character_spans

    toks = (e.tokens if any(e.tokens) else [f"<{x}>" for x in e.token_ids])[:len(e.acts)]
    t = Text()
    peak = max([a for a in e.acts] + [1e-9])
    for g, shown in character_spans(toks):
        a = max(e.acts[i] for i in g)
        style = ""
        if a > 0:
            level = min(1.0, a / peak)
            style = "black on " + ("#ffb347" if level > 0.66 else "#ffd9a0" if level > 0.33 else "#fff0d6")
        if e.centre in g:
            style = (style + " bold underline").strip()
        t.append(shown, style=style)
    return t


def _show(args) -> int:
    from rich.table import Table
    from rich.text import Text

    from features import FeatureStore
    from features.imported_labels import label_source
    from features.neuronpedia_import import store_latent_owners
    from features.records import without_start_bos
    from saesteer.terminal import plain

    con = _console()
    with FeatureStore.open(args.store) as store:
        rec = store.feature(store_latent_owners(store).latent(args.latent)[1])
        st = rec.stats
        title = f"feature {rec.latent}" + (f": {rec.label.text}" if rec.label else "")
        con.rule(plain(title, "bold"))
        if rec.label and rec.label.provenance:
            p = rec.label.provenance
            con.print(plain(f"label by {p.judge_model} ({p.judge_kind}{', offline' if p.offline else ''}), "
                            f"prompt {p.prompt_version}"))
            source = label_source(p)
            if source is not None:
                con.print(plain(f"imported from {source[0]}" + (f": {source[1]}" if source[1] else "")),
                          soft_wrap=True)  # an address broken over lines cannot be copied
        if rec.scores:
            con.print(plain("scores: " + ", ".join(f"{s.method} {s.value:.3f}" for s in rec.scores)))
        tab = Table(show_header=False, box=None)
        for k, v in (("frequency", _fmt(st.freq)), ("firings", str(st.n_fires)), ("mean act", _fmt(st.mean_act)),
                     ("max act", _fmt(st.max_act)), ("typical max", _fmt(st.typical_max_act)),
                     ("p50/p90/p99", f"{_fmt(st.q50)} / {_fmt(st.q90)} / {_fmt(st.q99)}"),
                     ("flags", ", ".join(st.flags) or "-"), ("level", _fmt(rec.level, "d") if rec.level is not None else "-"),
                     ("parent", str(rec.parent.parent_latent) if rec.parent else "-"),
                     ("children", ", ".join(str(c.child_latent) for c in rec.children[:20]) or "-"),
                     ("recommended strength", "-" if rec.recommended_strength is None
                      else f"{_fmt(rec.recommended_strength)}x typical max")):
            tab.add_row(plain(k, "dim"), plain(v))
        con.print(tab)
        if rec.logits is not None:
            con.print(Text.assemble(("promotes ", "green"), plain(
                "  ".join(f"{t.token!r} {t.value:+.3g}" for t in rec.logits.promoted[:8]))))
            con.print(Text.assemble(("suppresses ", "red"), plain(
                "  ".join(f"{t.token!r} {t.value:+.3g}" for t in rec.logits.suppressed[:8]))))
        for name, nbs in (("decoder neighbours", rec.decoder_neighbours), ("co-activation neighbours", rec.coact_neighbours)):
            if nbs:
                con.print(Text.assemble((f"{name}: ", "dim"), plain(
                    ", ".join(f"{n.latent} ({n.score:.2f})" + (f" {n.label}" if n.label else "") for n in nbs[:8]))))
        for name, exs in (("top examples", rec.top_examples), ("across quantiles", rec.quantile_examples),
                          ("non-activating", rec.negative_examples)):
            if not exs:
                continue
            con.rule(plain(name, "dim"), align="left")
            for e in (without_start_bos(e, store.meta.get("bos_id")) for e in exs[: args.examples]):
                head = f"{e.activation:7.3f}" + (f" q{e.quantile:.2f}" if e.quantile is not None else "")
                con.print(Text.assemble((head, "dim"), " ", _example_text(e)))
    return 0


def _summary_table(rows, title: str):
    from rich.table import Table

    from saesteer.terminal import plain

    tab = Table(title=plain(title))
    for c in ("latent", "label", "freq", "max act", "typical max", "flags", "level"):
        tab.add_column(c, justify="right" if c in ("latent", "freq", "max act", "typical max", "level") else "left")
    for s in rows:
        tab.add_row(str(s.latent), plain(s.label), _fmt(s.freq), _fmt(s.max_act), _fmt(s.typical_max_act), " ".join(s.flags),
                    "" if s.level is None else str(s.level))
    return tab


def _list(args) -> int:
    from features import FeatureStore

    flt = {"flags": args.flag, "alive_only": args.alive, "has_label": True if args.labelled else None}
    with FeatureStore.open(args.store) as store:
        total = store.count_features(flt)
        rows = store.list_features(sort=args.sort, filter=flt, offset=args.offset, limit=args.limit,
                                   descending=False if args.ascending else None)
        _console().print(_summary_table(rows, f"{args.store}: {total} latents match, showing {args.offset}.."
                                              f"{args.offset + len(rows) - 1}"))
    return 0


def _search(args) -> int:
    from rich.table import Table
    from rich.text import Text

    from features import FeatureStore
    from features.drawing import readable
    from saesteer.terminal import plain

    with FeatureStore.open(args.store) as store:
        hits = store.search(args.text, limit=args.limit)
    con = _console()
    if not hits:
        con.print(plain(f"no latent matches {args.text!r}"))
        return 0
    tab = Table(title=plain(f"latents matching {args.text!r}"))
    for c in ("latent", "score", "label", "freq", "match"):
        tab.add_column(c)
    for h in hits:
        snippet = Text()
        for text, matched in h.parts:
            snippet.append(readable(text.replace("\r\n", " ").replace("\n", " ")), style="bold" if matched else "")
        snippet.truncate(120)
        tab.add_row(str(h.latent), f"{h.score:.2f}", plain(h.label), _fmt(h.freq), snippet)
    con.print(tab)
    return 0


def _upgrade(args) -> int:
    """Upgrade the store in place (`features.upgrade`): its schema, and its token labels where an older
    rule wrote them, with the tokenizer of the model it records; say what it is now."""
    from features import upgrade as up
    from saesteer.models import load_recorded_tokenizer

    def tokenizer_for(recorded):
        return load_recorded_tokenizer(recorded, recorded_in=f"the store {args.store}")

    res = up.upgrade_store(args.store, tokenizer_for=tokenizer_for)
    upgraded = res.schema_from != res.schema_version
    print(f"{res.path}: feature-store schema version {res.schema_version}"
          + (f" (upgraded from version {res.schema_from})" if upgraded else " (already current)"))
    if res.vocab == up.VOCAB_CURRENT:
        print("token labels: already of the current rule; left as they are")
    elif res.vocab == up.VOCAB_NONE:
        print("token labels: none (the store was built without a tokenizer); nothing to relabel")
    elif res.vocab == up.VOCAB_RELABELLED:
        print(f"token labels: rewritten by the current rule with the tokenizer of {res.model.describe()}")
    elif res.vocab in (up.VOCAB_NO_MODEL, up.VOCAB_NO_TOKENIZER):
        why = (f"the model it records ({res.model.describe()}) could not be loaded: {res.why}" if res.model is not None
               else "it records no model to take a tokenizer from")
        print(f"note: its token labels follow an older rule (SentencePiece words lack their leading space) and {why}; "
              f"to rewrite them, re-run the `saesteer features build` command that made it with --model MODEL "
              f"(its model)", file=sys.stderr)
    return 0


def _map(args) -> int:
    from features import FeatureStore
    from saesteer.featuremap import build_map

    with FeatureStore.open(args.store, readonly=False) as store:
        sae = None
        if args.source == "decoder":
            from saes import load_sae

            path = args.sae or (store.meta.get("sae") or {}).get("path")
            if not path:
                raise ValueError(f"{args.store} records no SAE folder; give --sae DIR")
            sae = load_sae(path)
        key = build_map(store, source=args.source, method=args.method, sae=sae, embed_model=args.embed_model,
                        seed=args.seed)
        n = len(store.feature_map(key))
    print(f"map {key}: {n} latents laid out in {args.store} (see the Map page of `saesteer serve`)")
    return 0


def _embed(args) -> int:
    from autointerp.embeddings import EmbedConfig, make_embedder
    from autointerp.semantic import embed_labels
    from features import FeatureStore
    from saesteer.configargs import dataclass_from_args

    embedder = make_embedder(dataclass_from_args(EmbedConfig, args, prefix="embed_"))
    if embedder is None:
        raise ValueError("--embed-backend none embeds nothing; choose auto, openai, sentence-transformers or offline")
    with FeatureStore.open(args.store, readonly=False) as store:
        n = embed_labels(store, embedder, progress=not args.no_progress)
    print(f"label embeddings: {n} new ({embedder.name}) in {args.store}")
    return 0
