"""Publish a feature store: Neuronpedia's import format and SAEDashboard's batch JSON.

    export_neuronpedia(store, "exports", NeuronpediaInfo(model_id="gpt2-small", source_set="saesteer-res-1k"))
    check_neuronpedia_export("exports/gpt2-small/6-saesteer-res-1k")     # our schema check; raises on a bad row
    export_saedashboard(store, "out/batch-0.json", model_id="gpt2-small", source_set="saesteer-res-1k")

Neuronpedia imports a source as a directory of JSON-lines files (public sources, read for this
module: the exporter `utils/neuronpedia-utils/neuronpedia_utils/export-data.py` and the converter
`convert-saedashboard-to-neuronpedia-export.py` of github.com/hijohnnylin/neuronpedia, and the
table definitions in its `apps/webapp/prisma/schema.prisma`, models Neuron, Activation,
Explanation, ExplanationScore, Model, Source, SourceSet, SourceRelease):

    {out}/{model_id}/{layer}-{source_set}/
        model.jsonl  source.jsonl  sourceset.jsonl  release.jsonl      one row each
        features/batch-0.jsonl.gz        one row per latent (table Neuron)
        activations/batch-0.jsonl.gz     one row per stored top / quantile example (table Activation)
        explanations/batch-0.jsonl.gz    one row per current label (table Explanation)
        explanation_scores/batch-0.jsonl.gz   one row per score of a current label (table
                                         ExplanationScore; Neuronpedia's exporter writes none, its
                                         schema has the table: import it with the rest)
        saesteer_export.json             the files this export wrote (ours: `saes.export_folder`)
    {out}/config/explanation_score_type.jsonl, explanation_model_type.jsonl   our score methods and explainers

Batches hold `batch_size` latents. Ids are deterministic (store fingerprint + row), so a re-export
gives the same files, and a smaller one removes the batches it no longer writes. What the store
does not have is written empty, as Neuronpedia's own defaults (correlated neurons, logit
histograms, DFA values). Correlated features are the store's `correlations` (Pearson and cosine of activations, see `_correlated_features`).

SAEDashboard (github.com/jbloomAus/SAEDashboard) writes one `batch-N.json` per batch of latents:
`{model_id, layer, sae_set, sae_id_suffix, features: [...]}` with the feature and activation
fields of `sae_dashboard/neuronpedia/neuronpedia_dashboard.py` (NeuronpediaDashboardFeature,
NeuronpediaDashboardActivation); Neuronpedia's converter reads those files.

The checks (`features.publishfields`: `FIELDS`, `check_rows`) are ours: field names and JSON types
of each row, taken from the sources above; they refuse a missing or mistyped field, naming the file,
the row and the field.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from features.imported_labels import made_here
from features.publishfields import PublishError, check_rows
from saes.export_folder import ExportFolder
from saes.fileio import atomic_write_bytes

__all__ = ["NeuronpediaInfo", "NeuronpediaExport", "export_neuronpedia", "export_saedashboard", "check_neuronpedia_export",
           "check_saedashboard_batch", "check_neuronpedia_id", "neuronpedia_id"]

_TABLE_FILES = {"model": "model.jsonl", "source": "source.jsonl", "sourceset": "sourceset.jsonl",
                "release": "release.jsonl"}
_BATCHED = ("features", "activations", "explanations", "explanation_scores")


# ------------------------------------------------------------------------------------------------


# The one rule for the names that become Neuronpedia / SAEDashboard ids and folder names (model id,
# source set): letters, digits, '.', '_' or '-', starting with a letter or digit.
_ID_CHARS = "A-Za-z0-9._-"
_ID_RULE = re.compile(f"[A-Za-z0-9][{_ID_CHARS}]*")


def check_neuronpedia_id(what: str, value: Any) -> None:
    """Refuse a `value` (named `what`) that breaks the id rule."""
    if not isinstance(value, str) or not _ID_RULE.fullmatch(value):
        raise ValueError(f"{what} must be letters, digits, '.', '_' or '-' (starting with a letter or digit), "
                         f"got {value!r}")


def neuronpedia_id(name: str) -> str | None:
    """`name` made to follow the id rule (runs of other characters become '-', leading and trailing
    '-', '.', '_' go), or None when nothing is left."""
    cleaned = re.sub(f"[^{_ID_CHARS}]+", "-", str(name)).strip("-._")
    return cleaned if _ID_RULE.fullmatch(cleaned) else None


@dataclass
class NeuronpediaInfo:
    """Who and what the export is: Neuronpedia's model, source set and release names."""

    model_id: str  # Neuronpedia / TransformerLens model name, e.g. "gpt2-small"
    source_set: str  # e.g. "saesteer-res-1k" (the layer is prepended: "6-saesteer-res-1k")
    layer: int | None = None  # default: from the store's hook name (blocks.L....)
    release: str | None = None  # default: the source set
    description: str = "SAE features exported by saesteer"
    creator_name: str = "saesteer"
    creator_id: str = "saesteer"
    url: str | None = None
    dataset: str | None = None
    n_layers: int | None = None  # the model's layer count (default: layer + 1)
    batch_size: int = 1024

    def __post_init__(self) -> None:
        for name in ("model_id", "source_set"):
            check_neuronpedia_id(f"NeuronpediaInfo.{name}", getattr(self, name))
        if self.batch_size < 1:
            raise ValueError("NeuronpediaInfo.batch_size must be >= 1")


def _layer_of(store: Any, given: int | None) -> int:
    if given is not None:
        return int(given)
    hook = (store.meta.get("sae") or {}).get("hook_name") or ""
    m = re.match(r"^blocks\.(\d+)\.", hook)
    if not m:
        raise ValueError(f"cannot tell the layer from the hook {hook!r}; give it (--layer)")
    return int(m.group(1))


def _uid(*parts: Any) -> str:
    return "sst" + hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:22]


def _finite(x: Any, default: float = 0.0) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


# What json.dumps(ensure_ascii=False) writes as it is but line readers other than a split at "\n"
# take for a line end (Python's str.splitlines, JavaScript before ES2019): NEL, U+2028, U+2029,
# all three common in scraped web text. Escaped, a row is one line for every reader.
_LINE_ENDS_ESCAPED = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})
# Neuronpedia's importer (apps/webapp/lib/db/import.ts, importJsonlString) replaces every `\u0000`
# of a file's text with a space before parsing it (Postgres's jsonb takes no NUL). A NUL, written
# `\u0000`, becomes a space as meant; but text that spells the escape (a label quoting code's
# "\u0000") is written `\\u0000`, and the replacement leaves `\ `: invalid JSON, the batch refused.
# Such a backslash is written `\u005c` instead, which no replacement touches. The pattern walks the
# escapes in order (`\\.`), so a backslash is never paired with the one before it.
_SPELLED_NUL = re.compile(r"(?P<backslash>\\\\)(?=u0000)|\\.")


def _json_line(row: dict) -> str:
    """One row as JSON text, as every JSON Lines reader and Neuronpedia's importer read it back."""
    text = json.dumps(row, ensure_ascii=False, allow_nan=False).translate(_LINE_ENDS_ESCAPED)
    if "u0000" not in text:
        return text
    return _SPELLED_NUL.sub(lambda m: "\\u005c" if m.group("backslash") else m.group(), text)


def _write_jsonl(path: Path, rows: Iterable[dict], gz: bool) -> bytes:
    """One JSON object a line (no character in it that any reader takes for a line end), written
    atomically: a temporary file in the same directory, fsynced, renamed; returns the bytes written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(_json_line(r) + "\n" for r in rows).encode("utf-8")
    if gz:
        data = gzip.compress(data, compresslevel=5, mtime=0)
    atomic_write_bytes(path, data)
    return data


def _read_jsonl(path: Path) -> Iterator[dict]:
    """The rows of an exported file, read as the Neuronpedia import reads one (split at "\n" only, JSON
    Lines' one line end, not str.splitlines's NEL or U+2028)."""
    from features.neuronpedia_import import file_rows

    return (row for _, row in file_rows(path))


def _hist(rec) -> tuple[list[float], list[float]]:
    """(bar heights, bar centres) of the activation histogram, trailing empty bins dropped."""
    counts = [float(c) for c in rec.histogram.counts]
    while counts and counts[-1] == 0:
        counts.pop()
    w = rec.histogram.bin_width
    return counts, [round((i + 0.5) * w, 6) for i in range(len(counts))]


def _example_bin(rec, e) -> tuple[float | None, float | None, float | None]:
    """(bin_min, bin_max, bin_contains) of an example, as SAEDashboard's groups of examples describe
    theirs (and Neuronpedia's converter copies): a top example is in its top group (-1, the latent's
    max activation, -1); a quantile example in the histogram interval its activation lies in
    ("INTERVAL lo - hi, CONTAINS x%": bin_contains the fraction of all tokens in [lo, hi)); without a
    histogram (None, None, None): no bin, never the top group's marker."""
    if e.kind == "top":
        return -1.0, _finite(rec.stats.max_act), -1.0
    counts, w = rec.histogram.counts, rec.histogram.bin_width
    total = sum(counts)
    if not counts or not w or w <= 0 or total <= 0:
        return None, None, None
    i = min(max(int(_finite(e.activation) // w), 0), len(counts) - 1)
    return i * w, (i + 1) * w, _finite(rec.stats.freq) * counts[i] / total


def _correlated_features(rec) -> dict[str, list]:
    """SAEDashboard's feature table "correlated features", as its converter writes it: the latents
    most correlated with this one by activation over all tokens, descending Pearson correlation
    (`_indices`, `_pearson`), and the cosine similarity of the same two activation vectors, which
    the format calls `_l1`. Empty for a store built before correlations were kept. (Co-activation
    neighbours, a Jaccard index of co-firing, have no field in these formats.)"""
    return {"correlated_features_indices": [int(c.latent) for c in rec.correlated],
            "correlated_features_pearson": [_finite(c.pearson) for c in rec.correlated],
            "correlated_features_l1": [_finite(c.cossim) for c in rec.correlated]}


def _iter_latents(store: Any, latents: Sequence[int] | None):
    if latents is None:
        latents = [r.latent for r in store.list_features(sort="latent", filter={"alive_only": True}, limit=store.d_sae)]
    for i in latents:
        yield store.feature(int(i))


@dataclass
class _ExportContext:
    """What every exported row shares, and the score methods and explainers met on the way
    (written to `config/` at the end)."""

    info: NeuronpediaInfo
    source_id: str
    now: str
    fp: str  # the store fingerprint's prefix: row ids derive from it
    hook: str | None
    xy: dict[int, tuple[float, float]]  # latent -> its decoder map position
    score_types: dict[str, str] = field(default_factory=dict)
    explainers: dict[str, str] = field(default_factory=dict)


def _header_rows(store: Any, info: NeuronpediaInfo, layer: int, source_id: str, now: str) -> dict[str, dict]:
    """The one-row tables: model, source, source set, release."""
    release = info.release or info.source_set
    ctx_len = store.meta.get("context_length")
    creator = info.creator_id
    return {
        "model": {"id": info.model_id, "displayNameShort": info.model_id, "displayName": info.model_id, "creatorId": creator,
                  "layers": int(info.n_layers or layer + 1), "neuronsPerLayer": int(store.d_sae), "owner": info.creator_name,
                  "instruct": info.model_id.endswith("-it"), "visibility": "PUBLIC", "createdAt": now, "updatedAt": now,
                  "tlensId": info.model_id},
        "source": {"id": source_id, "modelId": info.model_id, "setName": info.source_set, "creatorId": creator,
                   "visibility": "PUBLIC", "hasDashboards": True, "num_prompts": None,
                   "num_tokens_in_prompt": int(ctx_len) if ctx_len else None, "dataset": info.dataset,
                   "hfRepoId": None, "hfFolderId": None, "createdAt": now},
        "sourceset": {"modelId": info.model_id, "name": info.source_set, "description": info.description,
                      "creatorName": info.creator_name, "creatorId": creator, "releaseName": release,
                      "visibility": "PUBLIC", "type": "", "createdAt": now},
        "release": {"name": release, "description": info.description, "descriptionShort": info.description,
                    "creatorName": info.creator_name, "creatorNameShort": info.creator_name, "creatorId": creator,
                    "visibility": "PUBLIC", "urls": [info.url] if info.url else [], "createdAt": now},
    }


def _feature_row(ex: _ExportContext, rec) -> dict:
    """The latent's row of table Neuron."""
    info = ex.info
    heights, centres = _hist(rec)
    prom = rec.logits.promoted if rec.logits else []
    supp = rec.logits.suppressed if rec.logits else []
    tmax = rec.stats.typical_max_act
    steer = rec.recommended_strength * tmax if (rec.recommended_strength and tmax) else None
    return {
        "modelId": info.model_id, "layer": ex.source_id, "index": str(rec.latent), "maxActApprox": _finite(rec.stats.max_act),
        "creatorId": info.creator_id, "frac_nonzero": _finite(rec.stats.freq),
        "freq_hist_data_bar_heights": heights, "freq_hist_data_bar_values": centres,
        "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
        "neuron_alignment_indices": [], "neuron_alignment_l1": [], "neuron_alignment_values": [],
        "correlated_neurons_indices": [], "correlated_neurons_l1": [], "correlated_neurons_pearson": [],
        **_correlated_features(rec), "decoder_weights_dist": [],
        "neg_str": [t.token for t in supp], "neg_values": [_finite(t.value) for t in supp],
        "pos_str": [t.token for t in prom], "pos_values": [_finite(t.value) for t in prom],
        "sourceSetName": info.source_set,
        "topkCosSimIndices": [int(n.latent) for n in rec.decoder_neighbours],
        "topkCosSimValues": [_finite(n.score) for n in rec.decoder_neighbours],
        "vector": [], "vectorLabel": None, "hookName": ex.hook, "vectorDefaultSteerStrength": steer, "hasVector": False,
        "umap_x": ex.xy[rec.latent][0] if rec.latent in ex.xy else None, "umap_y": ex.xy[rec.latent][1] if rec.latent in ex.xy else None,
    }


def _activation_rows(ex: _ExportContext, rec) -> list[dict]:
    """One row of table Activation per stored top / quantile example that fires."""
    info = ex.info
    rows = []
    for e in rec.top_examples + rec.quantile_examples:
        vals = [_finite(a) for a in e.acts]
        if not vals or max(vals) <= 0:
            continue
        top = max(range(len(vals)), key=lambda k: vals[k])
        bin_min, bin_max, contains = _example_bin(rec, e)
        rows.append({
            "id": _uid(ex.fp, "act", e.id), "modelId": info.model_id, "layer": ex.source_id, "index": str(rec.latent),
            "creatorId": info.creator_id, "dataSource": info.dataset, "dataIndex": str(e.seq_index),
            "tokens": list(e.tokens), "maxValue": vals[top], "minValue": min(vals), "values": vals,
            "maxValueTokenIndex": top, "dfaValues": [], "dfaMaxValue": None, "dfaTargetIndex": None,
            "binContains": contains, "binMin": bin_min, "binMax": bin_max, "qualifyingTokenIndex": int(e.centre),
            "lossValues": [], "createdAt": ex.now,
        })
    return rows


def _explanation_rows(ex: _ExportContext, rec) -> tuple[list[dict], list[dict]]:
    """(the current label's Explanation row, its ExplanationScore rows); both empty without a
    label or with one imported (from Neuronpedia, delphi). Records the explainer and score methods met in `ex`."""
    lab = rec.label
    if lab is None or not made_here(lab.provenance):
        return [], []  # an imported label is not ours to publish as saesteer's (Neuronpedia's is there already)
    info, creator = ex.info, ex.info.creator_id
    p = lab.provenance
    model_name = f"saesteer:{p.judge_model}" if p else "saesteer:unknown"
    ex.explainers[model_name] = p.judge_kind if p else "unknown"
    eid = _uid(ex.fp, "expl", lab.id)
    freq = _finite(rec.stats.freq)
    explanation = {
        "id": eid, "modelId": info.model_id, "layer": ex.source_id, "index": str(rec.latent), "authorId": creator,
        "description": lab.text, "embedding": None, "typeName": "saesteer-" + (p.prompt_version if p else "label"),
        "explanationModelName": model_name,
        "umap_x": ex.xy[rec.latent][0] if rec.latent in ex.xy else None, "umap_y": ex.xy[rec.latent][1] if rec.latent in ex.xy else None,
        "umap_cluster": None, "umap_log_feature_sparsity": math.log10(freq) if freq > 0 else None,
    }
    scores = []
    for s in rec.scores:
        if s.label_id != lab.id:
            continue
        stype = f"saesteer-{s.method}"
        ex.score_types[stype] = s.method
        scores.append({
            "id": _uid(ex.fp, "score", s.id), "initiatedByUserId": creator, "value": _finite(s.value),
            "explanationId": eid, "explanationScoreTypeName": stype, "explanationScoreModelName": model_name,
            "jsonDetails": json.dumps(s.details or {}, sort_keys=True), "createdAt": s.created_at or ex.now,
        })
    return [explanation], scores


def _write_latent_batches(store: Any, ex: _ExportContext, folder: ExportFolder, latents: Sequence[int] | None) -> None:
    """The batched tables, `batch_size` latents per file (one file each, even for no latent)."""
    batch: dict[str, list[dict]] = {t: [] for t in _BATCHED}
    n_batch = 0

    def flush() -> None:
        nonlocal n_batch
        for t in _BATCHED:
            check_rows(t, batch[t])
            path = folder.folder / t / f"batch-{n_batch}.jsonl.gz"
            folder.wrote(path, _write_jsonl(path, batch[t], gz=True))
            batch[t] = []
        n_batch += 1

    count = 0
    for rec in _iter_latents(store, latents):
        batch["features"].append(_feature_row(ex, rec))
        batch["activations"].extend(_activation_rows(ex, rec))
        explanations, scores = _explanation_rows(ex, rec)
        batch["explanations"].extend(explanations)
        batch["explanation_scores"].extend(scores)
        count += 1
        if count % ex.info.batch_size == 0:
            flush()
    if count % ex.info.batch_size or n_batch == 0:
        flush()


def _write_config(cfg: Path, ex: _ExportContext) -> None:
    """config/: the score methods and explainers the exported rows name."""
    info, creator, now = ex.info, ex.info.creator_id, ex.now
    st_rows = [{"name": n, "displayName": f"saesteer {m}", "description": _SCORE_DESCRIPTIONS.get(m, m),
                "creatorName": info.creator_name, "creatorId": creator, "scoreDescription": None, "featured": True,
                "isAttention": False, "createdAt": now} for n, m in sorted(ex.score_types.items())]
    em_rows = [{"name": n, "displayName": n, "description": f"saesteer labeller ({k})", "creatorName": info.creator_name,
                "creatorId": creator, "url": None, "featured": True, "createdAt": now} for n, k in sorted(ex.explainers.items())]
    check_rows("explanation_score_type", st_rows)
    check_rows("explanation_model_type", em_rows)
    _write_jsonl(cfg / "explanation_score_type.jsonl", st_rows, gz=False)
    _write_jsonl(cfg / "explanation_model_type.jsonl", em_rows, gz=False)


@dataclass
class NeuronpediaExport:
    root: Path  # the source directory, {out}/{model_id}/{layer}-{source_set}
    removed: list[Path]  # files an earlier export of this source wrote that this one does not (stale batches)


def export_neuronpedia(store: Any, out: str | os.PathLike, info: NeuronpediaInfo,
                       latents: Sequence[int] | None = None) -> NeuronpediaExport:
    """Write the store's live latents (or just `latents`) in Neuronpedia's import format, and remove
    the files an earlier export of this source wrote that this one does not (`saes.export_folder`:
    an upload of the folder would import a stale batch). See the module docstring for the layout."""
    layer = _layer_of(store, info.layer)
    source_id = f"{layer}-{info.source_set}"
    root = Path(out) / info.model_id / source_id
    folder = ExportFolder(root, "neuronpedia")
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    fp = store.sae_fingerprint[:16]
    hook = (store.meta.get("sae") or {}).get("hook_name")
    for table, row in _header_rows(store, info, layer, source_id, now).items():
        check_rows(table, [row])
        folder.wrote(root / _TABLE_FILES[table], _write_jsonl(root / _TABLE_FILES[table], [row], gz=False))

    # Neuronpedia's umap_x / umap_y: the decoder map's UMAP layout when the store has one, else another
    # decoder layout (e.g. decoder-pca, which sorts first)
    maps = [k for k in store.feature_map_methods() if k.startswith("decoder")]
    layout = "decoder-umap" if "decoder-umap" in maps else next(iter(maps), None)
    xy = {i: (x, y) for i, x, y in store.feature_map(layout)} if layout else {}
    ex = _ExportContext(info, source_id, now, fp, hook, xy)
    _write_latent_batches(store, ex, folder, latents)
    _write_config(Path(out) / "config", ex)  # shared by the sources in `out`, always the same two files
    return NeuronpediaExport(root, folder.finish())


_SCORE_DESCRIPTIONS = {
    "detection": "balanced accuracy: which contexts does the label say the feature fires on?",
    "fuzzing": "balanced accuracy: are the marked tokens the ones the label describes?",
    "simulation": "Pearson correlation of activations predicted from the label with the true ones",
    "intruder": "share of rounds in which the label finds the one context where the feature is silent",
    "embedding": "AUROC of label-context embedding similarity, firing vs silent contexts",
    "output": "win rate: does steering with the feature move generated text toward its label? (0.5 = no)",
}


def check_neuronpedia_export(source_dir: str | os.PathLike) -> dict[str, int]:
    """Check every file of one exported source (and the config beside its model folder) against
    `FIELDS`; rows per table. Also: one row in each single-row file, and every activation,
    explanation and score points at an exported latent or explanation."""
    root = Path(source_dir)
    counts: dict[str, int] = {}
    for table, name in _TABLE_FILES.items():
        rows = list(_read_jsonl(root / name))
        if len(rows) != 1:
            raise PublishError(f"{root / name}: {len(rows)} rows, expected 1")
        counts[table] = check_rows(table, rows, str(root / name))
    latents: set[str] = set()
    explanations: set[str] = set()
    for table in _BATCHED:
        files = sorted((root / table).glob("batch-*.jsonl.gz"), key=lambda p: int(p.name.split("-")[1].split(".")[0]))
        if not files:
            raise PublishError(f"{root / table}: no batch-N.jsonl.gz files")
        counts[table] = 0
        for f in files:
            rows = list(_read_jsonl(f))
            counts[table] += check_rows(table, rows, str(f))
            for r in rows:
                if table == "features":
                    latents.add(r["index"])
                elif table in ("activations", "explanations") and r["index"] not in latents:
                    raise PublishError(f"{f}: {table} row of latent {r['index']} that has no features row")
                if table == "explanations":
                    explanations.add(r["id"])
                if table == "explanation_scores" and r["explanationId"] not in explanations:
                    raise PublishError(f"{f}: score {r['id']} of an explanation that is not exported")
    cfg = root.parent.parent / "config"
    for table in ("explanation_score_type", "explanation_model_type"):
        counts[table] = check_rows(table, list(_read_jsonl(cfg / f"{table}.jsonl")), str(cfg / f"{table}.jsonl"))
    return counts


# ------------------------------------------------------------------------------------------------


def export_saedashboard(store: Any, path: str | os.PathLike, *, model_id: str, source_set: str,
                        layer: int | None = None, latents: Sequence[int] | None = None, dataset: str = "",
                        n_prompts: int = 0) -> Path:
    """One SAEDashboard-style batch JSON of the store's live latents (or just `latents`)."""
    check_neuronpedia_id("model_id", model_id)
    check_neuronpedia_id("source_set", source_set)
    layer = _layer_of(store, layer)
    feats = []
    for rec in _iter_latents(store, latents):
        heights, centres = _hist(rec)
        prom = rec.logits.promoted if rec.logits else []
        supp = rec.logits.suppressed if rec.logits else []
        acts = []
        for e in rec.top_examples + rec.quantile_examples:
            vals = [_finite(a) for a in e.acts]
            if not vals or max(vals) <= 0:
                continue
            bin_min, bin_max, contains = _example_bin(rec, e)
            acts.append({"bin_min": bin_min, "bin_max": bin_max, "bin_contains": contains, "tokens": list(e.tokens),
                         "values": vals, "qualifying_token_index": int(e.centre)})
        feats.append({
            "feature_index": int(rec.latent), "neuron_alignment_indices": [], "neuron_alignment_values": [],
            "neuron_alignment_l1": [], "correlated_neurons_indices": [], "correlated_neurons_l1": [],
            "correlated_neurons_pearson": [], **_correlated_features(rec),
            "neg_str": [t.token for t in supp], "neg_values": [_finite(t.value) for t in supp],
            "pos_str": [t.token for t in prom], "pos_values": [_finite(t.value) for t in prom],
            "frac_nonzero": _finite(rec.stats.freq), "freq_hist_data_bar_values": centres,
            "freq_hist_data_bar_heights": heights, "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
            "n_prompts_total": int(n_prompts), "n_tokens_in_prompt": int(store.meta.get("context_length") or 0),
            "dataset": dataset, "decoder_weights_dist": [], "activations": acts, "vector": [],
        })
    batch = {"model_id": model_id, "layer": layer, "sae_set": source_set, "sae_id_suffix": None, "features": feats}
    check_saedashboard_batch(batch)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(batch, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    return path


def check_saedashboard_batch(batch: Any, where: str = "batch") -> int:
    """Check a SAEDashboard batch (dict) against `FIELDS`; returns its feature count."""
    check_rows("dashboard_batch", [batch], where)
    n = check_rows("dashboard_feature", batch["features"], f"{where} features")
    for f in batch["features"]:
        check_rows("dashboard_activation", f["activations"], f"{where} feature {f['feature_index']} activations")
    return n
