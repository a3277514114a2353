"""Neuronpedia's explanations of an SAE's latents, imported as labels of its feature store.

    report = import_neuronpedia_explanations(store, "v1/gpt2-small/6-res-jb")
    saesteer label --store gpt2-l6.db --import-neuronpedia v1/gpt2-small/6-res-jb

What is read: Neuronpedia's Explanation rows, as its exports give them: its dataset exports
(neuronpedia-datasets, `v1/MODEL/SAE/explanations/batch-N.jsonl.gz`; give the batch file, the SAE's
folder, or a folder above it), the layout `features/publish.py` writes for a Neuronpedia upload,
JSON Lines (`.jsonl`), or a JSON array (what the API's `/api/explanation/export` returned before
Neuronpedia removed it for the datasets). A row is `{modelId, layer, index, description,
explanationModelName, typeName, id, authorId, ...}`; `layer` is Neuronpedia's SAE id ("6-res-jb").

Every row is checked before anything is written: its `modelId/layer` must be the store's SAE's
Neuronpedia id (from SAELens's registry, for a store built from a registry SAE or its Neuronpedia
id; else given), its index a latent of the SAE. A row that fails refuses the import, naming both
sides. Imported labels carry `judge_kind="neuronpedia"`, the explainer model and the explanation
type, so `features show/search` and the web tell them from labels made here. Several explanations
of one latent are all kept; the last in the export is its current label. A row already
imported (same explanation id, or same text without one) is not written twice.

Its own module with one entry point (`import_neuronpedia_explanations`): label imports from other
tools (delphi) live beside it.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from features.records import LabelProvenance

__all__ = ["NeuronpediaImportError", "ImportReport", "import_neuronpedia_explanations", "store_neuronpedia_id",
           "read_explanation_rows", "imported_label_url", "store_latent"]

JUDGE_KIND = "neuronpedia"
MAX_FILE_BYTES = 2 << 30  # an export of one SAE is a few hundred MB at most; refuse what is not one


class NeuronpediaImportError(ValueError):
    """An export that does not fit the store (or is not an export); the message says how to fix it."""


@dataclass
class ImportReport:
    neuronpedia_id: str
    imported: int = 0
    already: int = 0  # rows imported before (or twice in the export)
    blank: int = 0  # rows without a description (Neuronpedia keeps some)
    latents: set[int] = field(default_factory=set)
    explainers: dict[str, int] = field(default_factory=dict)


def store_neuronpedia_id(store: Any) -> str | None:
    """The Neuronpedia id of the SAE a store was built from (its recorded spec, through SAELens's
    registry); None for an SAE Neuronpedia does not host."""
    from saes.formats.neuronpedia import neuronpedia_id_of_spec

    spec = (store.meta.get("sae") or {}).get("path")
    return neuronpedia_id_of_spec(spec) if spec else None


def store_latent(store: Any, text: str | int) -> int:
    """A latent of `store` given as its index or as a Neuronpedia latent (its id or page address),
    which must be of the store's SAE (refused naming both)."""
    from saes.formats.neuronpedia import parse_ref

    if isinstance(text, int) or str(text).strip().lstrip("-").isdigit():
        return int(text)
    ref = parse_ref(str(text))
    if ref is None or ref.index is None:
        raise NeuronpediaImportError(f"{text!r} is not a latent: give its index, or a Neuronpedia latent such as "
                                     f"gpt2-small/6-res-jb/17 (or its page address)")
    np_id = store_neuronpedia_id(store)
    if ref.id != np_id:
        raise NeuronpediaImportError(f"{text} is a latent of Neuronpedia SAE {ref.id!r}, but the store's SAE is "
                                     + (repr(np_id) if np_id else "not on Neuronpedia") + "; give its index")
    return ref.index


def _files(path: Path, np_id: str | None = None) -> list[Path]:
    """The explanation files at `path`: a file; a folder of them; an SAE's export folder (its
    `explanations/`); or a folder above it, the model's or the dataset's root (`MODEL/SAE/explanations/`
    of `np_id` is taken)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise NeuronpediaImportError(f"no Neuronpedia export at {path}")
    below = [path / "explanations"]
    if np_id:
        below += [path / np_id.split("/", 1)[1] / "explanations", path / np_id / "explanations"]
    where = next((d for d in below if d.is_dir()), path)
    found = sorted(p for p in where.iterdir() if p.is_file() and p.name.endswith((".json", ".jsonl", ".jsonl.gz",
                                                                                   ".json.gz")))
    if not found:
        raise NeuronpediaImportError(f"{path} holds no explanation file of {np_id or 'an SAE'} (.json, .jsonl, .jsonl.gz, "
                                     f"or an explanations/ folder of them, as in Neuronpedia's dataset exports "
                                     f"v1/MODEL/SAE/explanations/)")
    return found


def _text(p: Path) -> str:
    if p.stat().st_size > MAX_FILE_BYTES:
        raise NeuronpediaImportError(f"{p} is over {MAX_FILE_BYTES >> 20} MB; not an explanation export of one SAE")
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NeuronpediaImportError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_explanation_rows(path: str | Path, np_id: str | None = None) -> Iterator[tuple[str, dict]]:
    """(where, row) of every explanation row in a file or export folder (of the SAE `np_id`, in a
    folder of several); `where` is 'FILE:N'."""
    for p in _files(Path(path), np_id):
        text = _text(p)
        stripped = text.lstrip()
        if stripped.startswith("["):  # the API's export: one JSON array
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                raise NeuronpediaImportError(f"{p}: not JSON ({e.msg}, line {e.lineno})") from None
            items = [(f"{p}:{n + 1}", r) for n, r in enumerate(rows)]
        else:
            items = []
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    items.append((f"{p}:{n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise NeuronpediaImportError(f"{p}, line {n}: not a JSON row ({e.msg})") from None
        for where, row in items:
            if not isinstance(row, dict):
                raise NeuronpediaImportError(f"{where}: an explanation row is a JSON object, got {type(row).__name__}")
            if "newUrl" in row and "modelId" not in row:  # what the removed /api/explanation/export answers
                raise NeuronpediaImportError(f"{p} is Neuronpedia's answer that the export endpoint is gone, not an "
                                             f"export; download the SAE's explanations/ from {row['newUrl']}")
            yield where, row


def _checked(where: str, row: dict, np_id: str, d_sae: int) -> tuple[int, str | None]:
    """(latent, description or None when blank) of a row of `np_id`'s SAE; refuses any other."""
    missing = [k for k in ("modelId", "layer", "index") if row.get(k) in (None, "")]
    if missing:
        raise NeuronpediaImportError(f"{where}: no {', '.join(missing)}; not a Neuronpedia explanation row "
                                     f"(expected modelId, layer, index, description)")
    row_id = f"{row['modelId']}/{row['layer']}"
    if row_id != np_id:
        raise NeuronpediaImportError(f"{where}: an explanation of Neuronpedia SAE {row_id!r}, but the store's SAE is "
                                     f"{np_id!r}; import that SAE's export (or build a store of {row_id})")
    try:
        index = int(str(row["index"]).strip())
    except ValueError:
        raise NeuronpediaImportError(f"{where}: index {row['index']!r} is not a latent index") from None
    if not 0 <= index < d_sae:
        raise NeuronpediaImportError(f"{where}: latent {index} of {np_id} is out of range: the store's SAE has "
                                     f"d_sae {d_sae} (latents 0..{d_sae - 1})")
    text = row.get("description")
    if text is not None and not isinstance(text, str):
        raise NeuronpediaImportError(f"{where}: description is {type(text).__name__}, not text")
    return index, (text.strip() or None) if text else None


def imported_label_url(p: LabelProvenance | None) -> str | None:
    """The Neuronpedia page of a label imported from there (only a neuronpedia.org address: the
    store is data, and the web app links it)."""
    from saes.formats.neuronpedia import SITE

    url = (p.extra or {}).get("url") if p is not None and p.judge_kind == JUDGE_KIND else None
    return url if isinstance(url, str) and url.startswith(SITE + "/") else None


def _provenance(row: dict, np_id: str, source: str) -> LabelProvenance:
    from saes.formats.neuronpedia import SITE

    model = str(row.get("explanationModelName") or "unknown")
    return LabelProvenance(
        judge_model=model, judge_kind=JUDGE_KIND, prompt_version=str(row.get("typeName") or "neuronpedia"),
        created_at=str(row["createdAt"]) if row.get("createdAt") else None,
        extra={"source": "neuronpedia", "neuronpedia_id": np_id, "explanation_id": row.get("id"),
               "author_id": row.get("authorId"), "url": f"{SITE}/{np_id}/{int(row['index'])}",
               "file": source},
    )


def _imported(store: Any) -> set[tuple[int, str]]:
    """(latent, explanation id or text) of every Neuronpedia label the store holds, current or not."""
    with store._read() as c:
        rows = c.execute("SELECT l.latent, l.label, p.extra FROM labels l JOIN label_provenance p ON "
                         "p.id = l.provenance_id WHERE p.judge_kind = ?", (JUDGE_KIND,)).fetchall()
    return {(int(i), json.loads(extra).get("explanation_id") or text) for i, text, extra in rows}


def import_neuronpedia_explanations(store: Any, path: str | Path, neuronpedia_id: str | None = None) -> ImportReport:
    """Import the explanation rows at `path` as labels of `store` (a writable FeatureStore); see the
    module docstring. `neuronpedia_id` ("gpt2-small/6-res-jb") names the store's SAE on Neuronpedia
    when the store's record cannot (an SAE not from SAELens's registry); one that contradicts the
    record is refused."""
    recorded = store_neuronpedia_id(store)
    if neuronpedia_id and recorded and neuronpedia_id != recorded:
        raise NeuronpediaImportError(f"the store's SAE is Neuronpedia's {recorded!r} (SAELens's registry), not "
                                     f"{neuronpedia_id!r}; drop --neuronpedia-sae or use that SAE's store")
    np_id = recorded or neuronpedia_id
    if not np_id:
        spec = (store.meta.get("sae") or {}).get("path")
        raise NeuronpediaImportError(f"the store's SAE ({spec}) has no Neuronpedia id in SAELens's registry; name it "
                                     f"with --neuronpedia-sae MODEL/SAE (e.g. gpt2-small/6-res-jb) if it is one")
    d_sae = int(store.d_sae)
    checked = [(where, row, *_checked(where, row, np_id, d_sae)) for where, row in read_explanation_rows(path, np_id)]
    report = ImportReport(np_id)
    seen = _imported(store)
    for where, row, latent, text in checked:
        if text is None:
            report.blank += 1
            continue
        key = (latent, row.get("id") or text)
        if key in seen:
            report.already += 1
            continue
        seen.add(key)
        prov = _provenance(row, np_id, where.rsplit(":", 1)[0])
        store.write_label(latent, text, provenance=prov)
        report.imported += 1
        report.latents.add(latent)
        report.explainers[prov.judge_model] = report.explainers.get(prov.judge_model, 0) + 1
    return report
