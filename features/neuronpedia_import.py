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
of one latent are all kept; the last in the export is its current label. The store writes them as
it writes every imported label (features/imported_labels.py): a row already imported (same
explanation id, or same text without one) is not written twice, and a re-import makes Neuronpedia's
label current again where `saesteer label` replaced it. Files are read as streams (gzip told by its
bytes), at most MAX_FILE_BYTES each once gunzipped.

Its own module with one entry point (`import_neuronpedia_explanations`): label imports from other
tools (delphi) live beside it.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from features.imported_labels import ImportedLabel, write_imported_labels
from features.records import LabelProvenance
from saes.fileio import files_in

__all__ = ["NeuronpediaImportError", "ImportReport", "import_neuronpedia_explanations", "store_neuronpedia_id",
           "read_explanation_rows", "file_rows", "store_latent_owners"]

JUDGE_KIND = "neuronpedia"
MAX_FILE_BYTES = 2 << 30  # gunzipped, per file: an export of one SAE is a few hundred MB at most; refuse what is not one


class NeuronpediaImportError(ValueError):
    """An export that does not fit the store (or is not an export); the message says how to fix it."""


@dataclass
class ImportReport:
    neuronpedia_id: str
    imported: int = 0
    unchanged: int = 0  # rows imported before (or twice in the export)
    replaced_ours: int = 0  # latents whose current label, made here, an imported one replaced
    blank: int = 0  # rows without a description (Neuronpedia keeps some)
    latents: set[int] = field(default_factory=set)
    explainers: dict[str, int] = field(default_factory=dict)


def store_neuronpedia_id(store: Any) -> str | None:
    """The Neuronpedia id of the SAE a store was built from (its recorded spec, through SAELens's
    registry); None for an SAE Neuronpedia does not host."""
    from saes.formats.neuronpedia import neuronpedia_id_of_spec

    spec = (store.meta.get("sae") or {}).get("path")
    return neuronpedia_id_of_spec(spec) if spec else None


def _imported_as(store: Any) -> list[str]:
    """The Neuronpedia ids the store's Neuronpedia labels were imported as (`--neuronpedia-sae`, for
    an SAE SAELens's registry does not know)."""
    with store._read() as c:
        rows = c.execute("SELECT DISTINCT json_extract(extra, '$.neuronpedia_id') FROM label_provenance "
                         "WHERE judge_kind = ?", (JUDGE_KIND,)).fetchall()
    return sorted(str(r[0]) for r in rows if r[0])


def store_latent_owners(store: Any, whose: str = "the store's SAE", fix: str = "give its index") -> Any:
    """The `saes.formats.neuronpedia.LatentOwners` of a store's SAE, which reads a latent given as its
    index or as a Neuronpedia latent (its id or page address) of that SAE, refusing one of another
    (naming both): its Neuronpedia id in SAELens's registry, else those its Neuronpedia labels were
    imported as (`features show`, `preset save`, the API's edits); `whose` and `fix` word a refusal."""
    from saes.formats.neuronpedia import LatentOwners

    def ids() -> dict[str, str | None]:
        np_id = store_neuronpedia_id(store)
        return {"store": np_id} if np_id else {f"store{i}": imported for i, imported in enumerate(_imported_as(store))}

    def sides() -> str:
        found = list(owners.ids.values())
        return ("it is " + " or ".join(map(repr, found)) + ("" if "store" in owners.ids else ", its Neuronpedia labels' SAE")
                if found else "it is not on Neuronpedia: not in SAELens's registry, and no Neuronpedia labels were imported")

    owners = LatentOwners(ids, whose=whose, fix=fix, sides=sides)
    return owners


def _sae_id(text: str) -> str:
    """The SAE id ('gpt2-small/6-res-jb') of --neuronpedia-sae, given so or as a page address."""
    from saes.formats.neuronpedia import parse_ref

    ref = parse_ref(text)
    if ref is None:
        raise NeuronpediaImportError(f"--neuronpedia-sae {text!r} names no Neuronpedia SAE: give MODEL/SAE, e.g. "
                                     "gpt2-small/6-res-jb, or its page address")
    return ref.id


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
    found = sorted(p for p in files_in(where) if p.name.endswith((".json", ".jsonl", ".jsonl.gz", ".json.gz")))
    if not found:
        raise NeuronpediaImportError(f"{path} holds no explanation file of {np_id or 'an SAE'} (.json, .jsonl, .jsonl.gz, "
                                     f"or an explanations/ folder of them, as in Neuronpedia's dataset exports "
                                     f"v1/MODEL/SAE/explanations/)")
    return found


def _stream(p: Path) -> BinaryIO:
    """`p`'s bytes, gunzipped when it is gzip (told by its first bytes, not its name)."""
    f = p.open("rb")
    if f.read(2) == b"\x1f\x8b":
        f.seek(0)
        return gzip.GzipFile(fileobj=f)  # type: ignore[return-value]
    f.seek(0)
    return f


def _decoded(p: Path, where: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NeuronpediaImportError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _too_big(p: Path) -> NeuronpediaImportError:
    return NeuronpediaImportError(f"{p} holds over {MAX_FILE_BYTES >> 20} MB (gunzipped); not an explanation export of "
                                  f"one SAE")


def file_rows(p: Path) -> Iterator[tuple[str, Any]]:
    """(where, parsed row) of one file of Neuronpedia's (JSON Lines or a JSON array, gzip told by its
    bytes), read as a stream: at most MAX_FILE_BYTES of it, gunzipped (a gzip that inflates past that
    is refused), one row in memory at a time for JSON Lines. `features/publish.py` reads back what it
    writes with it too."""
    try:
        yield from _rows_of_stream(p)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # a download cut short, or not gzip after all
        raise NeuronpediaImportError(f"{p}: a damaged gzip file ({e}); download it again") from None


def _rows_of_stream(p: Path) -> Iterator[tuple[str, Any]]:
    with _stream(p) as f:
        head = f.read(4096)
        if head.lstrip()[:1] == b"[":  # the API's export: one JSON array
            raw = head + f.read(MAX_FILE_BYTES + 1 - len(head))
            if len(raw) > MAX_FILE_BYTES:
                raise _too_big(p)
            try:
                rows = json.loads(_decoded(p, str(p), raw))
            except json.JSONDecodeError as e:
                raise NeuronpediaImportError(f"{p}: not JSON ({e.msg}, line {e.lineno})") from None
            yield from ((f"{p}:{n + 1}", r) for n, r in enumerate(rows if isinstance(rows, list) else [rows]))
            return
        f.seek(0)
        total = 0
        for n, line in enumerate(iter(lambda: f.readline(MAX_FILE_BYTES + 1 - total), b""), 1):
            total += len(line)
            if total > MAX_FILE_BYTES:
                raise _too_big(p)
            text = _decoded(p, f"{p}, line {n}", line)
            if not text.strip():
                continue
            try:
                yield f"{p}:{n}", json.loads(text)
            except json.JSONDecodeError as e:
                raise NeuronpediaImportError(f"{p}, line {n}: not a JSON row ({e.msg})") from None


def read_explanation_rows(path: str | Path, np_id: str | None = None) -> Iterator[tuple[str, dict]]:
    """(where, row) of every explanation row in a file or export folder (of the SAE `np_id`, in a
    folder of several); `where` is 'FILE:N'."""
    for p in _files(Path(path), np_id):
        for where, row in file_rows(p):
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


def import_neuronpedia_explanations(store: Any, path: str | Path, neuronpedia_id: str | None = None) -> ImportReport:
    """Import the explanation rows at `path` as labels of `store` (a writable FeatureStore); see the
    module docstring. `neuronpedia_id` ("gpt2-small/6-res-jb") names the store's SAE on Neuronpedia
    when the store's record cannot (an SAE not from SAELens's registry); one that contradicts the
    record is refused. It may be given as Neuronpedia's page address (of the SAE, or of one of its latents)."""
    recorded = store_neuronpedia_id(store)
    if neuronpedia_id:
        neuronpedia_id = _sae_id(neuronpedia_id)
    if neuronpedia_id and recorded and neuronpedia_id != recorded:
        raise NeuronpediaImportError(f"the store's SAE is Neuronpedia's {recorded!r} (SAELens's registry), not "
                                     f"{neuronpedia_id!r}; drop --neuronpedia-sae or use that SAE's store")
    np_id = recorded or neuronpedia_id
    if not np_id:
        spec = (store.meta.get("sae") or {}).get("path")
        raise NeuronpediaImportError(f"the store's SAE ({spec}) has no Neuronpedia id in SAELens's registry; name it "
                                     f"with --neuronpedia-sae MODEL/SAE (e.g. gpt2-small/6-res-jb) if it is one")
    d_sae = int(store.d_sae)
    report, labels = ImportReport(np_id), []
    for where, row in read_explanation_rows(path, np_id):  # every row checked before anything is written
        latent, text = _checked(where, row, np_id, d_sae)
        if text is None:
            report.blank += 1
            continue
        key = f"id:{row['id']}" if row.get("id") not in (None, "") else f"text:{text}"
        labels.append(ImportedLabel(latent, text, _provenance(row, np_id, where.rsplit(":", 1)[0]), key))
    writes = write_imported_labels(store, labels)
    report.unchanged = len(writes.unchanged)
    report.replaced_ours = len(writes.replaced_ours)
    for lab, _ in writes.written:
        report.imported += 1
        report.latents.add(lab.latent)
        model = lab.provenance.judge_model
        report.explainers[model] = report.explainers.get(model, 0) + 1
    return report
