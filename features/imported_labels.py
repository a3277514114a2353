"""Labels made elsewhere (a delphi run, Neuronpedia) written into a feature store, one way for every source.

    writes = write_imported_labels(store, [ImportedLabel(17, "closing brackets", provenance, key="clx17")])

An importer (autointerp/delphi_store.py, features/neuronpedia_import.py) reads and checks its whole
source first, then hands its labels here, so both follow the same rules:

- a label's `key` is the source's identity of it (Neuronpedia's explanation id; delphi's text and
  files); it is kept in the provenance (`extra["import_key"]`);
- per latent, in the order given, a label already in the latent's history (same kind, same key)
  is not written again; the latent's last label becomes its current label, written again when a
  later label (`saesteer label`) took its place: re-importing makes the source's label current;
- labels made here stay in the history, and the ones replaced are reported.

`made_here` tells labels made here from imported ones: exports (`features export --format
neuronpedia`, `label --export-delphi`) send only those back out. `label_source` says where an
imported label came from, for `features show`, the web and the HTML export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from features.records import LabelProvenance

__all__ = ["IMPORTED_KINDS", "ImportedLabel", "ImportWrites", "write_imported_labels", "made_here", "label_source"]

IMPORTED_KINDS = ("delphi", "neuronpedia")  # judge kinds of labels made elsewhere (features/records.py)


@dataclass(frozen=True)
class ImportedLabel:
    latent: int
    text: str
    provenance: LabelProvenance  # judge_kind one of IMPORTED_KINDS
    key: str  # the source's identity of this label: the same key on a re-import is the same label


@dataclass
class ImportWrites:
    written: list[tuple[ImportedLabel, int]] = field(default_factory=list)  # (label, its new label id)
    unchanged: list[ImportedLabel] = field(default_factory=list)  # in the store already (or twice in the source)
    replaced_ours: list[int] = field(default_factory=list)  # latents whose current label was made here


def made_here(p: LabelProvenance | None) -> bool:
    """Whether a label with provenance `p` was made by saesteer (a judge, a person), not imported."""
    return p is None or p.judge_kind not in IMPORTED_KINDS


def _key(p: LabelProvenance | None) -> str | None:
    return (p.extra or {}).get("import_key") if p is not None else None


def _imported_keys(store: Any, kind: str) -> dict[int, set[str]]:
    """latent -> keys of every label of `kind` its history holds, current or not."""
    with store._read() as c:
        rows = c.execute("SELECT l.latent, p.extra FROM labels l JOIN label_provenance p ON p.id = l.provenance_id "
                         "WHERE p.judge_kind = ?", (kind,)).fetchall()
    out: dict[int, set[str]] = {}
    for latent, extra in rows:
        key = (json.loads(extra) if extra else {}).get("import_key")
        if key:
            out.setdefault(int(latent), set()).add(key)
    return out


def write_imported_labels(store: Any, labels: Iterable[ImportedLabel]) -> ImportWrites:
    """Write checked labels of one source into `store` (a writable, complete FeatureStore); see the
    module docstring for what is written and what is not."""
    labels = list(labels)
    if not store.complete:
        raise ValueError(f"{store.path}: the feature store build is not complete; finish it before importing labels")
    kinds = {lab.provenance.judge_kind for lab in labels}
    if not kinds <= set(IMPORTED_KINDS) or len(kinds) > 1:
        raise ValueError(f"imported labels are of one kind of {', '.join(IMPORTED_KINDS)}; got {sorted(kinds)}")
    by_latent: dict[int, list[ImportedLabel]] = {}
    for lab in labels:
        by_latent.setdefault(lab.latent, []).append(lab)
    history = _imported_keys(store, kinds.pop()) if labels else {}
    out = ImportWrites()
    for latent, mine in by_latent.items():
        seen = history.setdefault(latent, set())
        *earlier, last = mine
        for lab in earlier:
            if lab.key in seen:
                out.unchanged.append(lab)
                continue
            out.written.append((lab, _write(store, lab)))
            seen.add(lab.key)
        current = store.label(latent)
        cp = current.provenance if current is not None else None
        if cp is not None and cp.judge_kind == last.provenance.judge_kind and _key(cp) == last.key:
            out.unchanged.append(last)
            continue
        if current is not None and made_here(cp):
            out.replaced_ours.append(latent)
        out.written.append((last, _write(store, last)))
        seen.add(last.key)
    return out


def _write(store: Any, lab: ImportedLabel) -> int:
    prov = replace(lab.provenance, extra={**(lab.provenance.extra or {}), "import_key": lab.key})
    return store.write_label(lab.latent, lab.text, provenance=prov)


def label_source(p: LabelProvenance | None) -> tuple[str, str | None] | None:
    """(where an imported label came from, in words; its page, only a neuronpedia.org address, since
    the store is data and the web and the HTML export link it), or None for a label made here."""
    from saes.formats.neuronpedia import SITE

    if made_here(p):
        return None
    extra = p.extra or {}
    if p.judge_kind == "neuronpedia":
        url = extra.get("url")
        url = url if isinstance(url, str) and url.startswith(SITE + "/") else None  # the only pages linked
        return f"Neuronpedia {extra.get('neuronpedia_id') or ''}".rstrip(), url
    run = (extra.get("delphi") or {}) if isinstance(extra.get("delphi"), dict) else {}
    where = f" run {Path(str(run['run'])).name}" if run.get("run") else ""
    module = f", module {run['module']}" if run.get("module") else ""
    return f"delphi{where}{module}", None
