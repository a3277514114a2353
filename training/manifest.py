"""The activation cache's manifest (`manifest.json`), its build log, and the directory lock.

A cache directory holds:
  * `manifest.json`: the settings that produced the cache, `complete`, totals and the shard list
    (file, contexts, rows, bytes, SHA-256, where in the text the shard starts and ends);
  * `shard_NNNNNN.safetensors`: the shards (see `training.shards`);
  * while building only: `progress.jsonl` (one line per finished shard, appended and fsynced) and
    `.lock` (an flock held by the building process).

`manifest.json` is written atomically at the start (complete: false, no shards) and again at the
end (complete: true, all shards); the log is then deleted. It holds no timestamps, so an
interrupted and resumed build ends byte-identical to an uninterrupted one.

Manifest fields (format_version 1):
  format "saesteer.activation_cache", format_version 1, complete (bool),
  model {id, revision, fingerprint, n_ctx, d_model},
  model_identity {id, source, name, revision, path, weights_sha256, d_model, n_layers, d_vocab}
    (not a setting; absent in caches from older versions),
  model_processing {config {normalization_type, final_rms, positional_embedding_type,
    original_architecture, output_logits_soft_cap}, applied {fold_ln, center_writing_weights,
    center_unembed, fold_value_biases: bool}} (not a setting; `saes.processing.processing_record`:
    what the weight-processing check needs without the model; absent in caches from older
    versions, whose model config counts as unknown there),
  hooks [names], d_in {hook: int}, dtype "fp16"|"bf16"|"fp32",
  context_length, bos_policy, separator ("eos"|"bos"|"none"; a pretokenized dataset's: what its rows
  hold between documents, "rows" when unknown: training.pretokenized), eos_is_next_bos (bool: no EOS after a document, as
  the next one's BOS is the same token; training.packing; false when absent, as in older caches),
  literal_special_tokens (bool: a special token written out in a document is tokenized as its
  characters, not as that token; training.packing.make_tokenize; false when absent, as in older caches),
  exclude_tokens, excluded_token_ids [ints],
  tokenizer {name, vocab_size, bos_id, eos_id, pad_id, sha256},
  dataset {name, config, split (the split read), text_column, files?: [[path below the data folder, bytes]],
    chat_template_sha256? (conversations written by the tokenizer's chat template: training.packing.document_tokenize)},
  dataset_files? [absolute paths of the local files read] (provenance, not compared on resume),
  max_tokens (int|null), shard_contexts (int),
  totals {shards, contexts, tokens, rows, bytes},
  shards [{index, file, first_context, contexts, rows, bytes, sha256, text_start [doc, offset],
           text_end [doc, offset], part_sha256 {part: sha256}}].

A shard's `sha256` covers the whole file (`saesteer cache --verify`, fingerprints); `part_sha256`
has one SHA-256 per part of it (`training.shards`: the header, each hook's activations, each row
tensor), so a run that reads one hook checks only what it reads. Caches made before part checksums
existed lack the field; their runs check each shard's whole file, as those versions did.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saes.errors import SaesteerError
from saes.fileio import FileLock, append_durably, atomic_write_bytes

FORMAT_NAME = "saesteer.activation_cache"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PROGRESS_NAME = "progress.jsonl"
LOCK_NAME = ".lock"

# Fields that define a cache; resuming with any of them different is refused.
SETTING_FIELDS = (
    "format", "format_version", "model", "hooks", "d_in", "dtype", "context_length", "bos_policy",
    "separator", "eos_is_next_bos", "literal_special_tokens", "exclude_tokens", "excluded_token_ids", "tokenizer", "dataset", "max_tokens",
    "shard_contexts",
)
# settings added after format_version 1 was out, with the value that caches made before them had
SETTING_DEFAULTS = {"eos_is_next_bos": False, "literal_special_tokens": False}


class CacheMismatchError(SaesteerError, ValueError):
    """An existing cache was made with other settings than the ones requested."""


class CacheFormatError(SaesteerError, ValueError):
    """A directory is not a readable activation cache."""


def shard_file_name(index: int) -> str:
    return f"shard_{index:06d}.safetensors"


@dataclass(frozen=True)
class ShardInfo:
    index: int
    file: str
    first_context: int
    contexts: int
    rows: int
    bytes: int
    sha256: str
    text_start: tuple[int, int]
    text_end: tuple[int, int]
    # SHA-256 of each part of the file (`training.shards.HEADER_PART`, tensor names); None in
    # caches made before part checksums (their readers hash the whole file)
    part_sha256: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["text_start"], d["text_end"] = list(self.text_start), list(self.text_end)
        if self.part_sha256 is None:
            del d["part_sha256"]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ShardInfo":
        try:
            return cls(
                index=int(d["index"]), file=str(d["file"]), first_context=int(d["first_context"]),
                contexts=int(d["contexts"]), rows=int(d["rows"]), bytes=int(d["bytes"]),
                sha256=str(d["sha256"]), text_start=tuple(map(int, d["text_start"])),
                text_end=tuple(map(int, d["text_end"])), part_sha256=_part_sha256(d.get("part_sha256")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CacheFormatError(f"bad shard entry {d!r}: {e}") from None


def _part_sha256(parts: Any) -> dict[str, str] | None:
    if parts is None:
        return None
    if not isinstance(parts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in parts.items()):
        raise ValueError(f"part_sha256 is not a mapping of names to SHA-256s: {parts!r}")
    return dict(parts)


@dataclass
class Manifest:
    """A parsed `manifest.json`. `settings` holds the SETTING_FIELDS."""

    settings: dict[str, Any]
    complete: bool = False
    shards: list[ShardInfo] = field(default_factory=list)
    # which forward pass computed the activations ("fast" / "transformer_lens"); informational,
    # not a setting (the two agree up to rounding), but a resumed build reuses it
    forward: str | None = None
    # who the model is (`saes.identity.ModelIdentity.to_json()`): informational, not a setting
    # (settings.model.id already pins the weights); None in caches from older versions
    model_identity: dict[str, Any] | None = None
    # the model's config fields and the weight processing applied (`saes.processing.processing_record`):
    # informational, not a setting; None in caches from older versions (the config is then unknown)
    model_processing: dict[str, Any] | None = None
    # the absolute paths of the local data files read (provenance; `dataset.files` is what must match)
    dataset_files: list[str] | None = None

    # convenient views -------------------------------------------------------------------
    @property
    def hooks(self) -> list[str]:
        return list(self.settings["hooks"])

    @property
    def d_in(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.settings["d_in"].items()}

    @property
    def dtype(self) -> str:
        return self.settings["dtype"]

    @property
    def context_length(self) -> int:
        return int(self.settings["context_length"])

    @property
    def total_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def total_contexts(self) -> int:
        return sum(s.contexts for s in self.shards)

    def totals(self) -> dict[str, int]:
        return {
            "shards": len(self.shards),
            "contexts": self.total_contexts,
            "tokens": self.total_contexts * self.context_length,
            "rows": self.total_rows,
            "bytes": sum(s.bytes for s in self.shards),
        }

    def to_json(self) -> dict[str, Any]:
        d = {k: _setting(self.settings, k) for k in SETTING_FIELDS}
        if self.forward is not None:
            d["forward"] = self.forward
        if self.model_identity is not None:
            d["model_identity"] = self.model_identity
        if self.model_processing is not None:
            d["model_processing"] = self.model_processing
        if self.dataset_files is not None:
            d["dataset_files"] = list(self.dataset_files)
        d["complete"] = self.complete
        d["totals"] = self.totals()
        d["shards"] = [s.to_json() for s in self.shards]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str = "manifest") -> "Manifest":
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise CacheFormatError(f"{where}: not a saesteer activation cache manifest")
        if d.get("format_version") != FORMAT_VERSION:
            raise CacheFormatError(
                f"{where}: format_version {d.get('format_version')} is not supported by this "
                f"saesteer (it reads version {FORMAT_VERSION}); rebuild the cache or upgrade saesteer"
            )
        missing = [k for k in SETTING_FIELDS if k not in d and k not in SETTING_DEFAULTS]
        if missing:
            raise CacheFormatError(f"{where}: missing field(s) {', '.join(missing)}")
        shards = [ShardInfo.from_json(s) for s in d.get("shards", [])]
        for i, s in enumerate(shards):
            if s.index != i or s.file != shard_file_name(i):
                raise CacheFormatError(f"{where}: shard list out of order at entry {i} ({s.file})")
        settings = {k: _setting(d, k) for k in SETTING_FIELDS}
        ds = settings.get("dataset")
        if isinstance(ds, dict) and _txt_files_without_reading(ds):
            # caches made before `txt_documents` existed read .txt files one line per document
            settings["dataset"] = {**ds, "txt_documents": "line"}
        fwd = d.get("forward")
        ident = d.get("model_identity")
        processing = d.get("model_processing")
        files = d.get("dataset_files")
        return cls(settings, bool(d.get("complete")), shards,
                   forward=fwd if isinstance(fwd, str) else None,
                   model_identity=ident if isinstance(ident, dict) else None,
                   model_processing=processing if isinstance(processing, dict) else None,
                   dataset_files=[str(f) for f in files] if isinstance(files, list) else None)

    def recorded_model(self):
        """The `saes.identity.ModelIdentity` of the model the cache was made with: the recorded
        identity, else (caches from older versions) the one its model id tells; None if unknown."""
        from saes.identity import ModelIdentity

        if self.model_identity is not None:
            return ModelIdentity.from_json(self.model_identity)
        m = self.settings.get("model") or {}
        return ModelIdentity.from_id(m.get("id"), m.get("revision"))

    def model_config(self):
        """The config fields of the cache's model that `saes.processing`'s checks read, or None (a
        cache from an older version: the config is unknown there)."""
        from saes.processing import config_of_record

        return config_of_record(self.model_processing)

    def processing_applied(self) -> dict[str, bool] | None:
        """The weight-processing flags the cache's model loader applied ({flag: bool}), or None (a
        cache from an older version)."""
        from saes.processing import applied_of_record

        return applied_of_record(self.model_processing)


def _txt_files_without_reading(dataset: dict[str, Any]) -> bool:
    files = dataset.get("files")
    return ("txt_documents" not in dataset and isinstance(files, list) and bool(files)
            and all(isinstance(f, list) and str(f[0]).endswith(".txt") for f in files))


# ----------------------------------------------------------------------------------------------
# Files


def dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode()


def write_manifest(cache_dir: str | Path, manifest: Manifest) -> None:
    """Write `cache_dir/manifest.json` atomically (`saes.fileio`)."""
    atomic_write_bytes(Path(cache_dir) / MANIFEST_NAME, dumps(manifest.to_json()))


def read_manifest(cache_dir: str | Path) -> Manifest:
    """Parse `cache_dir/manifest.json` (clear errors when absent or not a cache)."""
    path = Path(cache_dir) / MANIFEST_NAME
    if not path.is_file():
        raise CacheFormatError(f"{cache_dir}: no {MANIFEST_NAME}; not an activation cache (build one with `saesteer cache`)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CacheFormatError(f"{path}: not valid JSON ({e})") from None
    return Manifest.from_json(d, where=str(path))


def append_progress(cache_dir: Path, shard: ShardInfo) -> None:
    """Append one finished shard to the build log, durably."""
    append_durably(Path(cache_dir) / PROGRESS_NAME, (json.dumps(shard.to_json(), separators=(",", ":")) + "\n").encode())


def read_progress(cache_dir: Path) -> list[ShardInfo]:
    """The finished shards recorded in the build log, in order.

    A torn last line (a crash mid-append) is dropped and the log truncated to its valid part;
    entries whose file is missing or has the wrong size end the list there (their shard and all
    later ones will be rebuilt)."""
    path = Path(cache_dir) / PROGRESS_NAME
    if not path.exists():
        return []
    raw = path.read_bytes()
    shards: list[ShardInfo] = []
    valid_end = 0
    pos = 0
    while pos < len(raw):
        nl = raw.find(b"\n", pos)
        if nl < 0:
            break
        try:
            s = ShardInfo.from_json(json.loads(raw[pos:nl]))
        except (CacheFormatError, json.JSONDecodeError, UnicodeDecodeError):
            break
        f = Path(cache_dir) / s.file
        if s.index != len(shards) or not f.is_file() or f.stat().st_size != s.bytes:
            break
        shards.append(s)
        pos = valid_end = nl + 1
    if valid_end != len(raw):
        with open(path, "r+b") as f:
            f.truncate(valid_end)
            os.fsync(f.fileno())
    return shards


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        if not d:
            out[prefix] = {}
        return out
    return {prefix: d}


def _setting(settings: dict[str, Any], name: str) -> Any:
    return settings[name] if name in settings else SETTING_DEFAULTS.get(name)


def setting_differences(existing: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Human-readable differences between two settings dicts, one per differing field."""
    a = _flatten({k: _setting(existing, k) for k in SETTING_FIELDS})
    b = _flatten({k: _setting(requested, k) for k in SETTING_FIELDS})
    diffs = []
    for k in sorted(set(a) | set(b), key=lambda k: (SETTING_FIELDS.index(k.split(".")[0]) if k.split(".")[0] in SETTING_FIELDS else 99, k)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if va != vb:
            diffs.append(f"{k}: cache has {va!r}, this run asks for {vb!r}")
    return diffs


def lock_cache_dir(cache_dir: str | Path) -> FileLock:
    """The building process's exclusive lock on `cache_dir/.lock` (released when it dies)."""
    return FileLock(Path(cache_dir) / LOCK_NAME, busy=lambda holder: RuntimeError(
        f"another process is writing the cache in {cache_dir}: {holder}; wait for it to finish (or stop it) before "
        "running this command"))
