"""`saesteer features export`: a store as static HTML dashboards, Neuronpedia's import format or
SAEDashboard's batch JSON (`features.export`, `features.publish`). Part of `saesteer features`."""

from __future__ import annotations

import argparse


def add_export(sub) -> None:
    """`features export`: HTML dashboards, Neuronpedia or SAEDashboard files."""
    e = sub.add_parser("export", help="static HTML dashboards, Neuronpedia's import format, or SAEDashboard JSON",
                       description="html: static dashboards that open offline. neuronpedia: the JSON-lines layout "
                                   "Neuronpedia imports (features, activations, explanations, scores; see "
                                   "docs/features.md in saesteer's source repository). saedashboard: one "
                                   "SAEDashboard-style batch JSON.")
    e.add_argument("store", help="feature store file")
    e.add_argument("out", help="output directory (saedashboard: the JSON file)")
    e.add_argument("--format", default="html", choices=["html", "neuronpedia", "saedashboard"],
                   help="what to write (default: html)")
    e.add_argument("--latents", default=None, help="latents and ranges, e.g. 0-99,120 (default: all, or --limit most frequent)")
    e.add_argument("--features", dest="latents", default=None, help=argparse.SUPPRESS)  # the older name of --latents
    e.add_argument("--limit", type=int, default=None, help="export the N most frequent latents")
    e.add_argument("--model-id", default=None, help="neuronpedia / saedashboard: the model's name there, e.g. "
                                                    "gpt2-small (default: the last part of the model name the store "
                                                    "records, e.g. pythia-70m)")
    e.add_argument("--source-set", default="saesteer", help="neuronpedia / saedashboard: the source set name, e.g. "
                                                            "res-1k (the layer is prepended) (default: saesteer)")
    e.add_argument("--layer", type=int, default=None, help="neuronpedia / saedashboard: layer number (default: from "
                                                           "the hook name)")
    e.add_argument("--creator-name", default="saesteer", help="neuronpedia: creator and release author name")
    e.add_argument("--url", default=None, help="neuronpedia: a URL for the release (paper, weights)")
    e.add_argument("--no-progress", action="store_true")


def export(args) -> int:
    from features import FeatureStore
    from autointerp.config import parse_latents
    from features.export import export_html
    from saesteer.terminal import removed_note

    with FeatureStore.open(args.store) as store:
        ids = parse_latents(args.latents, "--latents") if args.latents else None
        if args.format == "html":
            done = export_html(store, args.out, ids, limit=args.limit, progress=not args.no_progress)
            print(f"wrote {done.index} (open it in a browser; works offline)")
            if note := removed_note(done.removed, "page"):
                print(note)
            return 0
        if ids is None and args.limit is not None:
            ids = [r.latent for r in store.list_features(sort="freq", filter={"alive_only": True}, limit=args.limit)]
        model_id = args.model_id or _default_model_id(store)
        if not model_id:
            raise ValueError("the store records no model; give --model-id (its name on Neuronpedia, e.g. gpt2-small)")
        from features.publish import NeuronpediaInfo
        from saesteer.configargs import dataclass_from_args

        # built through the flags' names, so a refused value names --model-id / --source-set (both formats)
        info = dataclass_from_args(NeuronpediaInfo, argparse.Namespace(), model_id=model_id,
                                   source_set=args.source_set, layer=args.layer,
                                   creator_name=args.creator_name, url=args.url)
        if args.format == "neuronpedia":
            from features.publish import check_neuronpedia_export, export_neuronpedia

            done = export_neuronpedia(store, args.out, info, ids)
            counts = check_neuronpedia_export(done.root)
            print(f"wrote {done.root}: {counts['features']} features, {counts['activations']} activations, "
                  f"{counts['explanations']} explanations, {counts['explanation_scores']} scores (checked)")
            if note := removed_note(done.removed, "file"):
                print(note)
            return 0
        from features.publish import export_saedashboard

        path = export_saedashboard(store, args.out, model_id=info.model_id, source_set=info.source_set,
                                   layer=info.layer, latents=ids)
        print(f"wrote {path} (SAEDashboard batch JSON, checked)")
    return 0


def _default_model_id(store) -> str | None:
    """The model's name for Neuronpedia / SAEDashboard when --model-id is not given: the last part of
    the name the store records ('EleutherAI/pythia-70m' -> 'pythia-70m', a checkpoint directory's
    name), without the record's source, commit and hash (which such ids cannot hold), made to follow
    the id rule (`features.publish.neuronpedia_id`)."""
    from features.publish import neuronpedia_id

    recorded = store.recorded_model()
    name = recorded.name if recorded is not None else (store.meta.get("sae") or {}).get("model_name")
    if not name:
        return None
    return neuronpedia_id(str(name).rstrip("/").split("/")[-1])
