"""`saesteer features`: build the feature store of an SAE and browse it from the terminal."""

from __future__ import annotations

import argparse
import sys

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
    sub = parser.add_subparsers(dest="features_command", metavar="SUBCOMMAND", title="subcommands")
    sub.required = True
    _add_build(sub)
    _add_show(sub)
    _add_list(sub)
    _add_search(sub)
    _add_top_on_text(sub)
    _add_map(sub)
    _add_embed(sub)
    _add_export(sub)
    up = sub.add_parser("upgrade", help="bring a store written by an older saesteer to this version's schema, in place")
    up.add_argument("store", help="feature store file (written)")


def _add_build(sub) -> None:
    """`features build`: SAE over a cache into a feature store."""
    from features.config import BuildConfig
    from saesteer.configargs import add_dataclass_arguments

    b = sub.add_parser("build", help="run an SAE over an activation cache and write its feature store",
                       description="Build (or resume, after a crash: re-run the same command) a feature store.")
    b.add_argument("--sae", required=True,
                   help="SAE: a folder (saesteer, SAELens, sparsify, dictionary_learning, Gemma Scope), an OpenAI .pt file, or "
                        "sae_lens:RELEASE/SAE_ID")
    b.add_argument("--cache", required=True, help="activation cache directory (from `saesteer cache`)")
    b.add_argument("--out", required=True, help="store file to write, e.g. stores/toy-topk.db")
    b.add_argument("--hook", default=None, help="hook point to read from the cache (default: the SAE's hook_name)")
    b.add_argument("--model", default=None,
                   help="model for logit effects and token strings (default: the cache's model; 'none' skips both)")
    b.add_argument("--allow-model-mismatch", action="store_true",
                   help="accept an SAE or --model recorded for another model than the cache's")
    b.add_argument("--device", default=None, help="where the SAE (and model) run (default: cuda if available, else cpu)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing store built from something else")
    b.add_argument("--no-verify", action="store_true", help="skip the cache shards' SHA-256 checks")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_dataclass_arguments(b, BuildConfig, title="what the store keeps")


def _add_show(sub) -> None:
    s = sub.add_parser("show", help="everything about one latent")
    s.add_argument("store", help="feature store file")
    s.add_argument("latent", type=int, help="the latent's index")
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
    q = sub.add_parser("search", help="full-text search over labels and example text")
    q.add_argument("store", help="feature store file")
    q.add_argument("text", help="words to look for")
    q.add_argument("--limit", type=int, default=20)


def _add_top_on_text(sub) -> None:
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
                   help="prepend BOS to the text (none: as the SAE was trained, from its cfg.json; else the "
                        "model's default) (default: None)")
    t.add_argument("--no-bos", action="store_true", help="the same as --prepend-bos false")


def _add_map(sub) -> None:
    """`features map`: the 2-d layout for the web map page."""
    m = sub.add_parser("map", help="2-d layout of the latents (UMAP or PCA) for the web app's map page",
                       description="Lay the live latents out in 2-d by their decoder directions or their label "
                                   "embeddings, and store the layout for `saesteer serve`'s map page.")
    m.add_argument("store", help="feature store file (written)")
    m.add_argument("--source", default="decoder", choices=["decoder", "labels"],
                   help="decoder directions of the SAE, or the stored label embeddings (default: decoder)")
    m.add_argument("--method", default="umap", choices=["umap", "pca"],
                   help="umap (umap-learn; compiles numba code on first use) or pca (instant) (default: umap)")
    m.add_argument("--sae", default=None, help="SAE folder for --source decoder (default: the one the store records)")
    m.add_argument("--embed-model", default=None, help="for --source labels: which stored embedding model (default: "
                                                         "a real model's over the offline hashing)")
    m.add_argument("--seed", type=int, default=0)


def _add_embed(sub) -> None:
    from autointerp.embeddings import EmbedConfig
    from saesteer.configargs import add_dataclass_arguments

    em = sub.add_parser("embed", help="embed the current labels (search by meaning, map by labels)")
    em.add_argument("store", help="feature store file (written)")
    add_dataclass_arguments(em, EmbedConfig, prefix="embed_", title="label embeddings")


def _add_export(sub) -> None:
    """`features export`: HTML dashboards, Neuronpedia or SAEDashboard files."""
    e = sub.add_parser("export", help="static HTML dashboards, Neuronpedia's import format, or SAEDashboard JSON",
                       description="html: static dashboards that open offline. neuronpedia: the JSON-lines layout "
                                   "Neuronpedia imports (features, activations, explanations, scores; see "
                                   "docs/features.md). saedashboard: one SAEDashboard-style batch JSON.")
    e.add_argument("store", help="feature store file")
    e.add_argument("out", help="output directory (saedashboard: the JSON file)")
    e.add_argument("--format", default="html", choices=["html", "neuronpedia", "saedashboard"],
                   help="what to write (default: html)")
    e.add_argument("--latents", default=None, help="latents and ranges, e.g. 0-99,120 (default: all, or --limit most frequent)")
    e.add_argument("--features", dest="latents", default=None, help=argparse.SUPPRESS)  # the older name of --latents
    e.add_argument("--limit", type=int, default=None, help="export the N most frequent latents")
    e.add_argument("--model-id", default=None, help="neuronpedia / saedashboard: the model's name there, e.g. "
                                                    "gpt2-small (default: the store's model)")
    e.add_argument("--source-set", default="saesteer", help="neuronpedia / saedashboard: the source set name, e.g. "
                                                            "res-1k (the layer is prepended) (default: saesteer)")
    e.add_argument("--layer", type=int, default=None, help="neuronpedia / saedashboard: layer number (default: from "
                                                           "the hook name)")
    e.add_argument("--creator-name", default="saesteer", help="neuronpedia: creator and release author name")
    e.add_argument("--url", default=None, help="neuronpedia: a URL for the release (paper, weights)")
    e.add_argument("--no-progress", action="store_true")


def _ids(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def _recorded_model(recorded, spec: str | None, recorded_in: str, device: str | None, allow: bool):
    """The model to run: --model (checked against the record) or the recorded one."""
    from saesteer.models import load_recorded_model

    return load_recorded_model(recorded, spec, recorded_in=recorded_in, device=device, allow_mismatch=allow)


def _console():
    from rich.console import Console

    return Console()


def run(args) -> int:
    from features.store import StoreError

    cmd = {"build": _build, "show": _show, "list": _list, "search": _search, "top-on-text": _top_on_text,
           "export": _export, "map": _map, "embed": _embed, "upgrade": _upgrade}[args.features_command]
    try:
        return cmd(args)
    except (StoreError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------
def _build(args) -> int:
    import torch
    from rich.text import Text

    from saes.formats import resolve_sae
    from features import CacheSource, build_feature_store
    from features.config import BuildConfig
    from saes.identity import ModelIdentityError, ModelMismatchError, check_same_model, identity_of_sae
    from saesteer.configargs import dataclass_from_args
    from saesteer.models import OVERRIDE_FLAG, model_id, pick_record
    from saesteer.terminal import plain

    cfg = dataclass_from_args(BuildConfig, args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    given_model = args.model if args.model and args.model.lower() != "none" else None
    loaded = resolve_sae(args.sae, hook=args.hook, model=given_model, device=device)
    sae = loaded.sae
    sae.eval()
    hook = args.hook or (sae.cfg.metadata or {}).get("hook_name")
    source = CacheSource(args.cache, hook=hook, verify=not args.no_verify)
    cache_model, sae_model = source.recorded_model(), identity_of_sae(loaded)
    where = f"the cache {args.cache}"
    if not args.allow_model_mismatch:
        check_same_model(cache_model, sae_model, recorded_in=where, given_as=f"the SAE {args.sae}'s model",
                         override=OVERRIDE_FLAG, fix="use the cache the SAE was trained on")
    recorded, where = pick_record([(cache_model, where), (sae_model, f"the SAE {args.sae}")])
    model = None
    spec = args.model
    if spec is None or spec.lower() != "none":
        try:
            model = _recorded_model(recorded, spec, where, device, args.allow_model_mismatch)
        except ModelMismatchError:
            raise
        except ModelIdentityError as e:
            raise ModelIdentityError(f"{e} (or --model none to skip logit effects and token strings)") from None
    con = _console()
    con.print(Text.assemble(("feature store ", "bold"), plain(
        f"{args.out}: {sae.architecture} d_sae={sae.d_sae} over {source.n_rows:,} tokens of {args.cache} "
        f"({source.hook_name}); model: {model_id(model) if model is not None else 'none (no logit effects)'}")))
    res = build_feature_store(args.out, loaded, source, cfg, model=model, overwrite=args.overwrite,
                              progress=not args.no_progress, allow_model_mismatch=args.allow_model_mismatch)
    if res.already_complete:
        con.print(plain(f"{args.out} is already complete (same SAE, cache and settings); nothing to do"))
        return 0
    rate = f", pass {res.tokens_per_s:,.0f} tokens/s" if res.pass_rows else ""
    con.print(plain(f"done in {res.total_seconds:.1f} s{rate}{' (resumed)' if res.resumed else ''}; "
                    + ", ".join(f"{k} {v}" for k, v in res.summary.items())
                    + f" (dead: no firing on the {res.n_rows:,} tokens of this pass)"))
    return 0


def _fmt(x, spec: str = ".4g") -> str:
    return "-" if x is None or x != x else format(x, spec)


def _example_text(e):
    """A rich Text of an example's window: its pieces as they are (features.tokentext), shaded by
    activation, the centre token underlined (or, when its piece is empty, the piece completing it)."""
    from rich.text import Text

    from features.tokentext import visible

    toks = e.tokens if any(e.tokens) else [f"<{x}>" for x in e.token_ids]
    t = Text()
    peak = max([a for a in e.acts] + [1e-9])
    underline = False
    for i, (tok, a) in enumerate(zip(toks, e.acts)):
        style = ""
        if a > 0:
            level = min(1.0, a / peak)
            style = "black on " + ("#ffb347" if level > 0.66 else "#ffd9a0" if level > 0.33 else "#fff0d6")
        underline = underline or i == e.centre
        if underline and tok:
            style = (style + " bold underline").strip()
            underline = False
        t.append(visible(tok), style=style)
    return t


def _show(args) -> int:
    from rich.table import Table
    from rich.text import Text

    from features import FeatureStore
    from features.records import without_start_bos
    from saesteer.terminal import plain

    con = _console()
    with FeatureStore.open(args.store) as store:
        rec = store.feature(args.latent)
        st = rec.stats
        title = f"feature {rec.latent}" + (f": {rec.label.text}" if rec.label else "")
        con.rule(plain(title, "bold"))
        if rec.label and rec.label.provenance:
            p = rec.label.provenance
            con.print(plain(f"label by {p.judge_model} ({p.judge_kind}{', offline' if p.offline else ''}), "
                            f"prompt {p.prompt_version}"))
        if rec.scores:
            con.print(plain("scores: " + ", ".join(f"{s.method} {s.value:.3f}" for s in rec.scores)))
        tab = Table(show_header=False, box=None)
        for k, v in (("frequency", _fmt(st.freq)), ("firings", str(st.n_fires)), ("mean act", _fmt(st.mean_act)),
                     ("max act", _fmt(st.max_act)), ("typical max", _fmt(st.typical_max_act)),
                     ("p50/p90/p99", f"{_fmt(st.q50)} / {_fmt(st.q90)} / {_fmt(st.q99)}"),
                     ("flags", ", ".join(st.flags) or "-"), ("level", _fmt(rec.level, "d") if rec.level is not None else "-"),
                     ("parent", str(rec.parent.parent_latent) if rec.parent else "-"),
                     ("children", ", ".join(str(c.child_latent) for c in rec.children[:20]) or "-"),
                     ("recommended strength", _fmt(rec.recommended_strength))):
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
            snippet.append(text.replace("\n", " "), style="bold" if matched else "")
        snippet.truncate(120)
        tab.add_row(str(h.latent), f"{h.score:.2f}", plain(h.label), _fmt(h.freq), snippet)
    con.print(tab)
    return 0


def _top_on_text(args) -> int:
    from pathlib import Path

    import torch
    from rich.table import Table

    from features import FeatureStore
    from features.text import features_on_text
    from saes.formats import resolve_sae
    from saesteer.terminal import plain

    from saes.identity import identity_of_sae
    from saesteer.commands._steering import CLIError, require_hook
    from saesteer.models import pick_record

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
        try:
            require_hook("sae", sae_dir, loaded.sae)
        except CLIError as e:
            raise ValueError(str(e)) from None
        candidates = [(store.recorded_model(), f"the feature store {args.store}")] if store is not None else []
        recorded, recorded_in = pick_record(candidates + [(identity_of_sae(loaded), f"the SAE {sae_dir}")])
        model = _recorded_model(recorded, args.model, recorded_in, device, args.allow_model_mismatch)
        res = features_on_text(model, loaded, args.text, store=store, top_n=args.top, prepend_bos=prepend_bos,
                               allow_model_mismatch=args.allow_model_mismatch)
    finally:
        if store is not None:
            store.close()
    con = _console()
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
    return 0


def _upgrade(args) -> int:
    """Opening a store for writing upgrades its schema (`features.store.base`); say what it is now."""
    from features import FeatureStore

    with FeatureStore.open(args.store, readonly=False) as store:
        print(f"{store.path}: feature-store schema version {store.meta['schema_version']}")
    return 0


def _export(args) -> int:
    from features import FeatureStore
    from features.export import export_html

    with FeatureStore.open(args.store) as store:
        ids = _ids(args.latents) if args.latents else None
        if args.format == "html":
            index = export_html(store, args.out, ids, limit=args.limit, progress=not args.no_progress)
            print(f"wrote {index} (open it in a browser; works offline)")
            return 0
        if ids is None and args.limit is not None:
            ids = [r.latent for r in store.list_features(sort="freq", filter={"alive_only": True}, limit=args.limit)]
        recorded = store.recorded_model()
        model_id = args.model_id or (recorded.id.split("@")[0].replace("/", "-") if recorded is not None
                                     else (store.meta.get("sae") or {}).get("model_name"))
        if not model_id:
            raise ValueError("the store records no model; give --model-id (its name on Neuronpedia, e.g. gpt2-small)")
        if args.format == "neuronpedia":
            from features.publish import NeuronpediaInfo, check_neuronpedia_export, export_neuronpedia

            info = NeuronpediaInfo(model_id=model_id, source_set=args.source_set, layer=args.layer,
                                   creator_name=args.creator_name, url=args.url)
            root = export_neuronpedia(store, args.out, info, ids)
            counts = check_neuronpedia_export(root)
            print(f"wrote {root}: {counts['features']} features, {counts['activations']} activations, "
                  f"{counts['explanations']} explanations, {counts['explanation_scores']} scores (checked)")
            return 0
        from features.publish import export_saedashboard

        path = export_saedashboard(store, args.out, model_id=model_id, source_set=args.source_set, layer=args.layer,
                                   latents=ids)
        print(f"wrote {path} (SAEDashboard batch JSON, checked)")
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
        n = embed_labels(store, embedder)
    print(f"label embeddings: {n} new ({embedder.name}) in {args.store}")
    return 0
