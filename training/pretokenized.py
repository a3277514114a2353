"""Pretokenized datasets: rows that are already model inputs (a column of token ids, `tokens` or
`input_ids`), as SAELens's `PretokenizeRunner` writes them (and as hub datasets such as
apollo-research/Skylion007-openwebtext-tokenizer-gpt2 publish them), read without tokenizing again.

Each row is one context: its first `context_length` tokens (a row shorter than that is skipped, as
SAELens's packing never writes one). Nothing is added: the rows carry their own BOS and separators,
so the BOS policy asked for must be the one the rows already follow (`check_token_rows`):
  * prepend: every row starts with BOS (SAELens's default `begin_batch_token="bos"`);
  * doc:     BOS inside rows at document starts, rows not all starting with it;
  * none:    rows that do not all start with BOS.
and the separator recorded is what the rows hold between documents (`rows_separator`), so that text
packed later for an SAE trained on them (`saesteer eval`) is packed alike: read from `sae_lens.json`
(SAELens's `sequence_separator_token` and `begin_sequence_token`, and the special tokens its
tokenizing adds to each document: Llama's and Mistral's BOS), "rows" when unknown.
The ids must be the model tokenizer's: a `sae_lens.json` beside the data names the tokenizer they
were made with (compared by vocabulary); without one, the first rows must read back as that
tokenizer's text (decode, encode again: the same ids, edges cut mid-word or mid-character aside:
`round_trip_share`), which rows made by another tokenizer do not.

A `TextPointer(doc, 0)` names row `doc` (the next one to read); offsets are always 0.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from saes.fileio import read_json
from training.packing import between_documents, special_tokens, tokenizer_name, tokenizer_revision
from training.text import START, TextConfig, TextPointer, separators_for

TOKEN_COLUMNS = ("tokens", "input_ids")  # the columns SAELens reads as token ids, in its order
METADATA_NAME = "sae_lens.json"  # what SAELens's PretokenizeRunner writes beside the dataset
CHECK_ROWS = 32  # rows read to check ids and BOS
ROUND_TRIP_ROWS = 8  # of those, rows decoded and encoded again (without a sae_lens.json naming the tokenizer)
ROUND_TRIP_MIN = 0.97  # share of ids that decode and encode back unchanged (own rows: >= 0.99, another's: <= 0.95)


def is_token_ids(value: Any) -> bool:
    """True for one row's token ids (a list / array / tensor of integers)."""
    if isinstance(value, (str, bytes)) or value is None:
        return False
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        return False
    return arr.ndim == 1 and arr.size > 0 and np.issubdtype(arr.dtype, np.integer)


def as_ids(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.int64).reshape(-1)


class RowPacker:
    """The `ContextPacker` of pretokenized rows: `take(n)` returns up to `n` contexts [N, L], each the
    first L tokens of a row, and the pointer to the row after the last one used."""

    def __init__(self, rows: Iterator[list], cfg: TextConfig, start: TextPointer = START):
        self.cfg = cfg
        self.K = cfg.context_length  # stream tokens per context (nothing is prepended)
        self._rows = rows
        self._next = self.first_row(start)
        self._last = TextPointer(self._next, 0)
        self._pending: list[tuple[int, np.ndarray]] = []

    @staticmethod
    def first_row(start: TextPointer) -> int:
        """The row a pointer names (one into a row names the next: rows are never split)."""
        return start.doc + (1 if start.offset else 0)

    def take(self, n: int) -> tuple[np.ndarray, TextPointer]:
        L = self.cfg.context_length
        out: list[np.ndarray] = []
        while len(out) < n:
            if not self._pending:
                chunk = next(self._rows, None)
                if chunk is None:
                    break
                first, self._next = self._next, self._next + len(chunk)
                self._pending = [(first + j, ids) for j, ids in enumerate(map(as_ids, chunk)) if len(ids) >= L]
                continue
            row, ids = self._pending.pop(0)
            out.append(ids[:L])
            self._last = TextPointer(row + 1, 0)
        if not out:
            return np.empty((0, L), np.int64), self._last
        return np.ascontiguousarray(np.stack(out)), self._last


# ----------------------------------------------------------------------------------------------
# Checks: the rows are this model's tokens, under the BOS policy asked for


def saelens_metadata(cfg: TextConfig, root: Path | None) -> dict[str, Any] | None:
    """The `sae_lens.json` of a pretokenized dataset: in the folder given (or a folder between it and
    the data files), or, for a hub dataset, in its repo as the HF cache holds it. None without one."""
    found = None
    if root is not None:
        given = Path(os.path.abspath(Path(cfg.dataset).expanduser()))
        # the data files' folder, and those above it up to the folder given (none above a file given)
        for folder in [root, *(root.parents if given.is_dir() and given in root.parents else ())]:
            if (folder / METADATA_NAME).is_file():
                found = folder / METADATA_NAME
                break
            if folder == given:
                break
    elif cfg.dataset != "toy":
        try:
            from huggingface_hub import hf_hub_download

            found = Path(hf_hub_download(cfg.dataset, METADATA_NAME, repo_type="dataset"))
        except Exception:  # not published with one, or not in the cache offline
            found = None
    if found is None:
        return None
    try:
        meta = read_json(found, METADATA_NAME)  # malformed or not UTF-8: ValueError naming the file
    except OSError as e:
        raise ValueError(f"{found} is not readable ({e}); fix or remove it") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{found} is not a JSON object; fix or remove it")
    return {**meta, "path": str(found)}


def _check_metadata_tokenizer(meta: dict[str, Any], dataset: str, tokenizer):
    """Refuse rows whose `sae_lens.json` names a tokenizer of another vocabulary than the model's;
    returns that tokenizer as SAELens loaded it (None: it names none, or it cannot be loaded here)."""
    name = meta.get("tokenizer_name")
    if not isinstance(name, str) or not name:
        return None
    ours = tokenizer_name(tokenizer)
    theirs = _load_tokenizer(name)
    if theirs is None:  # not loadable here (offline, not in the cache): names must agree then
        if Path(name).name == Path(ours).name:
            return None
        raise ValueError(
            f"dataset {dataset!r} was tokenized with {name!r} ({meta['path']}), which cannot be loaded here to compare "
            f"with the model's tokenizer {ours!r}; put it in the HF cache, or, if the ids are this model's, set "
            f"tokenizer_name in that file to {ours!r}")
    their_vocab, our_vocab = theirs.get_vocab(), tokenizer.get_vocab()
    if their_vocab != our_vocab:
        moved = sum(1 for piece, i in their_vocab.items() if our_vocab.get(piece) != i)
        raise ValueError(
            f"dataset {dataset!r} was tokenized with {name!r} ({meta['path']}), whose vocabulary differs from the "
            f"model's tokenizer {ours!r} ({moved} of its {len(their_vocab)} tokens have another id or none there); "
            f"its ids would be read as other tokens. Use a dataset tokenized for this model, or its text")
    return theirs


def _load_tokenizer(name: str, revision: str | None = None):
    """`AutoTokenizer.from_pretrained(name, revision=revision)` with the tokenizer's own defaults, as
    SAELens's PretokenizeRunner loads it; None when it cannot be loaded here (offline and not in the HF
    cache). `revision`: the model's (`training.packing.tokenizer_revision`; a sae_lens.json's
    tokenizer_name names none: its default branch, as SAELens read it).
    Loaded once per process and state of a local folder's files: a command checks rows more than once
    (before and after its model loads, the cache's text and its held-out text), and only reads the
    tokenizer (vocabulary, encode, decode). A failure is not kept: the tokenizer put where the
    refusal says loads on the next try (a notebook, a server), as does a folder written anew."""
    try:
        return _tokenizer_as_saved(name, revision, _folder_state(name))
    except Exception:
        return None


@functools.lru_cache(maxsize=4)
def _tokenizer_as_saved(name: str, revision: str | None, state: tuple) -> Any:
    """`_load_tokenizer`'s loads, by name, revision and `_folder_state` (lru_cache keeps no exception)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name, revision=revision)


def _folder_state(name: str) -> tuple:
    """(file, size, modification time) of each file of a local tokenizer folder; () for a hub name."""
    try:
        files = [p for p in Path(name).iterdir() if p.is_file()]
        return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    except OSError:
        return ()


def round_trip_share(rows: list[np.ndarray], tokenizer) -> float:
    """Share of the ids that come back when the rows are decoded and encoded again by `tokenizer`,
    text between special tokens (BOS, separators) at a time. The edges of those texts may be where
    PretokenizeRunner cut the row: mid-character (byte tokens that decode to U+FFFD; a byte-fallback
    decoder then replaces the whole run of bytes) and mid-word (a SentencePiece word read from its
    middle gains a "▁" when encoded again). So the ids that decode to U+FFFD at either end are left
    out, and the first and last id of what remains are not counted."""
    special = set(tokenizer.all_special_ids)
    same = total = 0
    for row in rows:
        for piece in _between(row.tolist(), special):
            ids = _whole_characters(piece, tokenizer)
            text = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
            back = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            match = difflib.SequenceMatcher(a=ids, b=list(back), autojunk=False)
            last = len(ids) - 1  # ids 1 .. last-1 are counted
            same += sum(max(0, min(b.a + b.size, last) - max(b.a, 1)) for b in match.get_matching_blocks())
            total += max(0, last - 1)
    return same / max(1, total)


def _between(ids: list[int], special: set[int]) -> Iterator[list[int]]:
    """The runs of `ids` between special ids."""
    run: list[int] = []
    for i in ids:
        if i in special:
            if run:
                yield run
            run = []
        else:
            run.append(i)
    if run:
        yield run


def _whole_characters(ids: list[int], tokenizer) -> list[int]:
    """`ids` less the fewest ids at either end (3 at most: a UTF-8 character has 4 bytes at most)
    that leave no character cut by the row's edge, i.e. no U+FFFD at either end of its text. Both
    ends at once: a byte-fallback decoder replaces a whole run of byte tokens when one is cut."""
    for cut in range(7):
        for start in range(min(cut, 3) + 1):
            if cut - start > 3 or cut >= len(ids):
                continue
            text = tokenizer.decode(ids[start:len(ids) - (cut - start)], clean_up_tokenization_spaces=False)
            if not text.startswith("\ufffd") and not text.endswith("\ufffd"):
                return ids[start:len(ids) - (cut - start)]
    return ids


def _bos_problem(rows: list[np.ndarray], policy: str, bos: int | None, tokenizer) -> str | None:
    """Why rows do not follow `policy` (None when they do)."""
    starts = [int(r[0]) for r in rows]
    shown = f"BOS (id {bos}, {tokenizer.convert_ids_to_tokens(bos)!r})" if bos is not None else "BOS"
    if policy == "prepend":
        if bos is None:
            return "--bos-policy prepend needs a BOS token, but the tokenizer has none; pass --bos-policy none"
        wrong = next((i for i, s in enumerate(starts) if s != bos), None)
        if wrong is not None:
            return (f"its rows do not all start with {shown} (row {wrong} starts with id {starts[wrong]}): it was "
                    f"tokenized without a BOS per context. Pass --bos-policy none (or doc if BOS starts its documents)")
        return None
    if bos is not None and all(s == bos for s in starts):
        return f"every row starts with {shown}, so its contexts begin with BOS: pass --bos-policy prepend"
    if policy == "doc" and not any((r == bos).any() for r in rows):
        return f"--bos-policy doc expects {shown} at document starts, and its first rows hold none: pass --bos-policy none"
    return None


def check_token_rows(cfg: TextConfig, rows: list[np.ndarray], tokenizer, meta: dict[str, Any] | None,
                     column: str) -> dict[str, Any]:
    """Refuse rows that are not this tokenizer's ids, shorter than a context, or under another BOS
    policy than `cfg.bos_policy`; returns what the manifest records of them."""
    name = cfg.dataset
    if not rows:
        raise ValueError(f"dataset {name!r} (split {cfg.split!r}) has no rows in its token column {column!r}")
    width = max(len(r) for r in rows)
    if cfg.context_length > width:
        raise ValueError(f"dataset {name!r} holds contexts of {width} tokens (column {column!r}, pretokenized); "
                         f"--context-length {cfg.context_length} is longer: pass --context-length {width} (or less)")
    vocab = len(tokenizer)
    top = max(int(r.max()) for r in rows)
    low = min(int(r.min()) for r in rows)
    if top >= vocab or low < 0:
        raise ValueError(f"dataset {name!r} holds token id {top if top >= vocab else low} (column {column!r}), outside "
                         f"the model's tokenizer {tokenizer_name(tokenizer)!r} (ids 0..{vocab - 1}): it was tokenized "
                         f"by another tokenizer. Use a dataset tokenized for this model, or its text")
    saelens_tokenizer = None  # the tokenizer as SAELens loaded it: what its tokenizing added to each document
    if meta is not None:  # is its doing, and the model's may differ (TransformerLens makes GPT-2's add BOS)
        saelens_tokenizer = (_check_metadata_tokenizer(meta, name, tokenizer)
                             or _load_tokenizer(tokenizer_name(tokenizer), tokenizer_revision(tokenizer)))
    else:
        share = round_trip_share(rows[:ROUND_TRIP_ROWS], tokenizer)
        if share < ROUND_TRIP_MIN:
            raise ValueError(
                f"dataset {name!r} (column {column!r}) does not read as text tokenized by the model's tokenizer "
                f"{tokenizer_name(tokenizer)!r}: decoded and encoded again, {share:.0%} of its ids come back (its own "
                f"rows: ~100%), so it was tokenized by another tokenizer. Use a dataset tokenized for this model; if "
                f"it is this model's, put a {METADATA_NAME} naming the tokenizer (tokenizer_name) beside the data")
    problem = _bos_problem(rows, cfg.bos_policy, special_tokens(tokenizer).bos, tokenizer)
    if problem:
        raise ValueError(f"dataset {name!r} is pretokenized and --bos-policy {cfg.bos_policy} does not fit it: {problem}")
    separator = cfg.separator if saelens_tokenizer is None else rows_separator(cfg, meta, saelens_tokenizer)
    record: dict[str, Any] = {"column": column, "row_tokens": width, "separator": separator}
    if meta is not None:
        keep = ("tokenizer_name", "context_size", "begin_batch_token", "begin_sequence_token",
                "sequence_separator_token", "original_dataset", "original_dataset_name", "original_split",
                "sae_lens_version")
        record["sae_lens"] = {k: meta.get(k) for k in keep}
    return record


# ----------------------------------------------------------------------------------------------
# The separator: what SAELens put between documents, as one of ours


def saelens_token(meta: dict[str, Any], key: str, tokenizer) -> int | None:
    """The id a sae_lens.json token setting names, as SAELens's `get_special_token_from_cfg` reads it."""
    spec = meta.get(key)
    if spec is None or (isinstance(spec, int) and not isinstance(spec, bool)):
        return spec
    if spec in ("bos", "eos", "sep"):
        return getattr(tokenizer, f"{spec}_token_id", None)
    raise ValueError(f"{meta['path']}: {key} {spec!r} is none of SAELens's (a token id, bos, eos, sep or null); fix it")


def _added_by_encode(tokenizer) -> tuple[list[int], list[int]] | None:
    """(ids before, ids after) a text that `tokenizer.encode` adds (Llama's and Mistral's add BOS
    before), as SAELens's PretokenizeRunner tokenizes each document; None if it changes the text's ids."""
    probe = "Separator probe, 1 2 3."
    plain = tokenizer(probe, add_special_tokens=False, verbose=False)["input_ids"]
    full = tokenizer.encode(probe)
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return full[:i], full[i + len(plain):]
    return None


def saelens_between(meta: dict[str, Any], tokenizer) -> list[int] | None:
    """The ids SAELens's `concat_and_batch_sequences` puts between two documents inside a row under
    the settings of its sae_lens.json `meta` (the ids its tokenizing adds to each document, then
    `sequence_separator_token` and `begin_sequence_token` before the next unless it starts with
    them already); None when that is not known (older metadata, chat formatting, a row per document)."""
    if not {"sequence_separator_token", "begin_sequence_token"} <= set(meta) or meta.get("use_chat_formatting") \
            or meta.get("disable_concat_sequences"):
        return None
    added = _added_by_encode(tokenizer)
    if added is None:
        return None
    before, after = added
    head = list(before)
    begin = saelens_token(meta, "begin_sequence_token", tokenizer)
    if begin is not None and head[:1] != [begin]:
        head = [begin, *head]
    sep = saelens_token(meta, "sequence_separator_token", tokenizer)
    return after + ([sep] if sep is not None and head[:1] != [sep] else []) + head


def rows_separator(cfg: TextConfig, meta: dict[str, Any] | None, tokenizer) -> str:
    """The separator to record for the rows: `cfg.separator` when it puts between documents the ids
    the rows hold there (under `cfg.bos_policy`); for "rows" (none asked for), the first of ours that
    does, "rows" when none does or no sae_lens.json says (then `cfg.separator` is the caller's word).
    A separator that puts other ids there than the rows hold is refused, naming both. `tokenizer`:
    as SAELens's PretokenizeRunner loaded it (`AutoTokenizer.from_pretrained`, its own defaults)."""
    held = None if meta is None else saelens_between(meta, tokenizer)
    if held is None:
        return cfg.separator
    specials = special_tokens(tokenizer)
    fits = [s for s in separators_for(cfg.bos_policy) if s != "rows"
            and between_documents(dataclasses.replace(cfg, separator=s), specials) == held]
    if cfg.separator == "rows":
        return fits[0] if fits else "rows"
    if cfg.separator in fits:
        return cfg.separator
    ours = between_documents(cfg, specials)
    fix = (f"pass --separator {fits[0]}, or leave it out" if fits else
           f"no --separator with --bos-policy {cfg.bos_policy} puts that there: leave it out (recorded as 'rows')")
    settings = ", ".join(f"{k} {meta.get(k)!r}" for k in ("sequence_separator_token", "begin_sequence_token"))
    before, after = _added_by_encode(tokenizer) or ([], [])
    added = " and ".join(f"{_shown(ids, tokenizer)} {where}" for ids, where in ((before, "before"), (after, "after"))
                         if ids) or "nothing"
    rows = (f"dataset {cfg.dataset!r} is pretokenized, and its rows hold {_shown(held, tokenizer)} between documents "
            f"({meta['path']}: {settings}; the tokenizer adds {added} to each document)")
    puts = _shown(ours, tokenizer)
    raise SeparatorMismatchError(f"{rows}; --separator {cfg.separator} with --bos-policy {cfg.bos_policy} puts {puts} "
                                 f"there: {fix}", rows, puts, fits)


class SeparatorMismatchError(ValueError):
    """A separator that puts other ids between documents (`puts`) than pretokenized rows hold there
    (`rows`: the dataset, what they hold, and where that was read); `fits`: the separators of ours that
    put what they hold. The message is for a --separator given; a caller whose separator came from
    elsewhere (a record) words its own from these."""

    def __init__(self, message: str, rows: str, puts: str, fits: list[str]):
        super().__init__(message)
        self.rows, self.puts, self.fits = rows, puts, fits


def _shown(ids: list[int], tokenizer) -> str:
    return " ".join(repr(t) for t in tokenizer.convert_ids_to_tokens(ids)) if ids else "nothing"


def checked_rows(source, tokenizer) -> dict[str, Any]:
    """`check_token_rows` on the first rows of a pretokenized `DocumentSource` (once per source);
    returns what the manifest records of them."""
    if source.token_record is None:
        rows: list[np.ndarray] = []
        for chunk in source.chunks(0, chunk_docs=CHECK_ROWS):
            rows.extend(as_ids(r) for r in chunk)
            if len(rows) >= CHECK_ROWS:
                break
        meta = saelens_metadata(source.cfg, source.data.root if source.data.is_local else None)
        source.token_record = check_token_rows(source.cfg, rows[:CHECK_ROWS], tokenizer, meta, source.column)
    return source.token_record
