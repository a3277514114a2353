"""A finished activation cache opened for reading, and the checks of its shards.

    cache = ShardSet("caches/toy", hook=None, verify="once")
    with cache.open_shard(i) as (f, entries):   # shard i checked first (see below)
        read_into(f, entries["token_ids"], out)
    cache.fingerprint                           # what a feature store built from it records

Every reader of a cache goes through here: `training.reader.CacheReader` (shuffled training
batches), `iter_shards` / `all_rows` (sequential passes), `features.source.CacheSource` (the
feature store's pass) and `verify_cache` (`saesteer cache --verify`). A shard is checked before
any of its rows is used: present, of the manifest's size, the SHA-256 of every part it reads equal
to the manifest's (`verify="once"` per ShardSet, `"always"` every time it is opened, `"never"`), a
readable header holding the hook's activations [rows, d_in] in the manifest's dtype, `token_ids`,
`positions`, `seq_index` [rows] and `context_tokens`. A bad shard is a `ShardCorruptError` naming it.

What "every part it reads" is: the header, this hook's activations (and the target hook's) and the
row tensors, each against its own SHA-256 in the manifest (`part_sha256`); the other hooks'
activations, which this reader never reads, are not hashed, so one run per hook of a many-hook cache
reads each shard's other hooks not at all. A shard of a cache made before part checksums has only
the whole file's SHA-256, and is checked whole, as before. `verify_cache` hashes each whole file and
(in the same pass) every part of it, so it finds every bad checksum a reader of any hook can meet.

Transcoder pairs (`target_hook=`): every shard holds every cached hook for the same rows (one model
pass wrote them, in one order), so row i of the input hook and row i of the target hook come from
the same token. The shard checks then cover both hooks, the fingerprint names both, and a cache
that lacks either hook is refused naming the pair asked for and the hooks it holds.

Shape key: R rows of a shard, D d_in.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Literal, NamedTuple, Sequence

import numpy as np
import torch

from saes.errors import SaesteerError
from training.manifest import Manifest, ShardInfo, read_manifest, read_progress
from saes.fileio import sha256_file
from training.shards import (DTYPES, HEADER_PART, WHOLE_FILE, ShardCorruptError, TensorEntry, part_sha256,
                             read_header, read_tensors)

Verify = Literal["once", "always", "never"]
ROW_TENSORS = ("token_ids", "positions", "seq_index")  # one value per row, beside the activations
# the settings that shape every cached activation (with the hook and the shards: the fingerprint)
_CONTENT_SETTINGS = ("model", "dtype", "context_length", "bos_policy", "exclude_tokens", "tokenizer", "dataset")


def parts_read(shard: ShardInfo, hooks: Sequence[str]) -> list[str] | None:
    """The parts of `shard` whose SHA-256 a reader of `hooks` checks: the header, those hooks'
    activations and the row tensors (every byte it reads). None: the whole file (a shard from a
    cache made before part checksums)."""
    if shard.part_sha256 is None:
        return None
    return [HEADER_PART, *(f"acts/{h}" for h in hooks), *ROW_TENSORS, "context_tokens"]


def shard_digests(path: Path, shard: ShardInfo, hooks: Sequence[str], *, whole_file: bool = False) -> dict[str, str]:
    """The SHA-256s a reader of `hooks` compares with the manifest: {part: SHA-256} of the parts it
    reads, or {WHOLE_FILE: SHA-256} for a shard without part checksums. whole_file: the whole file's
    SHA-256 too, hashed in the same pass as the parts (`saesteer cache --verify`)."""
    names = parts_read(shard, hooks)
    if names is None:
        return {WHOLE_FILE: sha256_file(path)}
    return part_sha256(path, names[1:], whole_file=whole_file)


def _digest_problem(shard: ShardInfo, hooks: Sequence[str], got: dict[str, str]) -> str | None:
    """What the SHA-256s `got` (shard_digests': the whole file's, the parts read by `hooks`, or
    both) say is wrong with `shard`. With both, the two checks tell a corrupt file from a damaged
    manifest; with parts alone, a bad part may be either's."""
    whole_bad = WHOLE_FILE in got and got[WHOLE_FILE] != shard.sha256
    part = _part_problem(shard, hooks, got, "the manifest is damaged (the file matches its whole-file SHA-256)"
                         if WHOLE_FILE in got and not whole_bad else "the file is corrupt or the manifest is damaged")
    if whole_bad:
        intact = shard.part_sha256 is not None and part is None
        return _mismatch("", got[WHOLE_FILE], shard.sha256, "the manifest is damaged (every part of the file "
                         "matches its SHA-256)" if intact else "the file is corrupt")
    return part


def _part_problem(shard: ShardInfo, hooks: Sequence[str], got: dict[str, str], blame: str) -> str | None:
    for name in parts_read(shard, hooks) or ():
        sha = (shard.part_sha256 or {}).get(name)
        if sha is None:
            return f"SHA-256 in {name} missing from the manifest: the manifest is damaged"
        if got.get(name, "none") != sha:
            return _mismatch(f" in {name}", got.get(name, "none"), sha, blame)
    return None


def _mismatch(where: str, have: str, want: str, blame: str) -> str:
    return f"SHA-256 mismatch{where} (file {have[:16]}..., manifest {want[:16]}...): {blame}"


def shard_problem(path: Path, shard: ShardInfo, d_in: dict[str, int], dtype: torch.dtype,
                  digest: Callable[[], dict[str, str]] | None) -> tuple[str | None, dict[str, TensorEntry]]:
    """What is wrong with the shard file `path` (None: nothing) and its header's entries.

    `d_in`: the hooks whose activations it must hold [rows, width]; `digest`: its `shard_digests`
    for those hooks (None: not checked). The entries are those checked: another hook's activations
    are not among them."""
    if not path.is_file():
        return "missing", {}
    size = path.stat().st_size
    if size != shard.bytes:
        return f"{size} bytes, the manifest says {shard.bytes}: the file is damaged", {}
    if digest is not None:
        problem = _digest_problem(shard, list(d_in), digest())
        if problem is not None:
            return problem, {}
    try:
        entries, _ = read_header(path)
    except ShardCorruptError as e:
        return str(e).removeprefix(f"{path.name}: "), {}
    need = {f"acts/{h}": (shard.rows, d) for h, d in d_in.items()} | {k: (shard.rows,) for k in ROW_TENSORS}
    for k, shape in need.items():
        if k not in entries or entries[k].shape != shape:
            return f"tensor {k} missing or not of shape {shape}", {}
    if "context_tokens" not in entries:
        return "tensor context_tokens missing", {}
    for h in d_in:
        if entries[f"acts/{h}"].dtype != dtype:
            return f"acts/{h} is {entries[f'acts/{h}'].dtype}, the manifest says {dtype}", {}
    return None, {k: entries[k] for k in (*need, "context_tokens")}  # what was checked, nothing else


class CachePairError(SaesteerError, ValueError):
    """A cache that does not hold the (input hook, target hook) pair a transcoder needs."""


class ShardSet:
    """The shards of one hook (or one input/target pair) of a complete cache, each checked before
    use (see the module doc).

    Args:
        path: cache directory.
        hook: which cached hook point (optional when the cache holds one; with `target_hook`,
            optional when the cache holds exactly the pair).
        target_hook: a transcoder's target hook, read beside `hook` row for row (None: an SAE).
        verify: "once" (default: each shard's SHA-256 checked once per ShardSet), "always" (every
            time a shard is opened), or "never".
        acts: False for a reader of the model inputs alone (`context_tokens`, the row tensors): no
            hook's activations are read, so none are checked.
    """

    def __init__(self, path: str | Path, hook: str | None = None, *, verify: Verify = "once",
                 target_hook: str | None = None, acts: bool = True) -> None:
        self.path = Path(path)
        self.manifest: Manifest = read_manifest(self.path)
        if not self.manifest.complete:
            raise ValueError(
                f"{self.path}: the cache is incomplete; re-run the same `saesteer cache` command to finish it"
            )
        hooks = self.manifest.hooks
        if target_hook is not None:
            hook = check_cached_pair(self.path, hooks, hook, target_hook)
        if hook is None:
            if len(hooks) != 1:
                raise ValueError(f"{self.path} holds several hook points ({', '.join(hooks)}); pick one (hook=; saesteer: --hook)")
            hook = hooks[0]
        if hook not in hooks:
            raise ValueError(f"{self.path} has no hook point {hook!r}; it holds {', '.join(hooks)}")
        if verify not in ("once", "always", "never"):
            raise ValueError(f"verify must be once, always or never; got {verify!r}")
        self.hook = hook
        self.target_hook = target_hook
        self.verify = verify
        self.acts = acts
        self.d_in = self.manifest.d_in[hook]
        self.d_out = self.manifest.d_in[target_hook] if target_hook is not None else None
        self.stored_dtype = DTYPES[self.manifest.dtype]
        self.shards: list[ShardInfo] = self.manifest.shards
        self._verified: set[int] = set()
        self._pending: dict[int, Any] = {}  # shard -> Future of its SHA-256 (hashed ahead)
        self._pool = None

    # -- identity ----------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Identity of this hook's cached rows: the settings that shape every activation, the hook
        and every shard's SHA-256 (a feature store records it and refuses another cache)."""
        s = self.manifest.settings
        ident = {k: s[k] for k in _CONTENT_SETTINGS}
        ident["hook"] = self.hook
        if self.target_hook is not None:  # (SAE fingerprints stay as they were)
            ident["target_hook"] = self.target_hook
        ident["shards"] = [sh.sha256 for sh in self.shards]
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()

    def shards_digest(self, indices: Sequence[int]) -> str:
        """SHA-256 over the SHA-256s of the shards `indices`, in order: which shards a reader's
        stream is made of (its saved position records it)."""
        return hashlib.sha256("".join(self.shards[i].sha256 for i in indices).encode()).hexdigest()

    # -- checking ----------------------------------------------------------------------------
    def entries(self, i: int) -> dict[str, TensorEntry]:
        """The header entries of shard i, after its checks (SHA-256 as `verify` says)."""
        s = self.shards[i]
        problem, entries = shard_problem(self.path / s.file, s, self.widths, self.stored_dtype,
                                         self._digest(i) if self._must_hash(i) else None)
        if problem is not None:
            # --verify hashes every part and the whole file, so it finds (and tells apart) each of these
            fix = (f"; none of its rows were used. Run `saesteer cache --verify {self.path}` to list all bad "
                   f"shards (it tells a corrupt file from a damaged manifest), then rebuild the cache"
                   if problem.startswith("SHA-256") else "; rebuild the cache")
            raise ShardCorruptError(f"shard {s.file} of {self.path}: {problem}{fix}")
        if self._must_hash(i):
            self._verified.add(i)
        return entries

    @property
    def widths(self) -> dict[str, int]:
        """The hooks read, with their widths: the input hook (and the target hook); none without `acts`."""
        if not self.acts:
            return {}
        out = {self.hook: self.d_in}
        if self.target_hook is not None:
            out[self.target_hook] = self.d_out
        return out

    def _must_hash(self, i: int) -> bool:
        return self.verify == "always" or (self.verify == "once" and i not in self._verified)

    def _digest(self, i: int) -> Callable[[], dict[str, str]]:
        def digest() -> dict[str, str]:
            fut = self._pending.pop(i, None)
            return fut.result() if fut is not None else self._hash(i)
        return digest

    def _hash(self, i: int) -> dict[str, str]:
        return shard_digests(self.path / self.shards[i].file, self.shards[i], list(self.widths))

    def hash_ahead(self, indices: Sequence[int]) -> None:
        """Hash these shards in a background thread (hashlib releases the GIL; the reads also warm
        the page cache); `entries` still checks each result before any row is used."""
        todo = [i for i in indices if i not in self._pending and self._must_hash(i)]
        if self.verify == "never" or not todo:
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-verify")
        for i in todo:
            self._pending[i] = self._pool.submit(self._hash, i)

    def close(self) -> None:
        """Stop the background hashing thread (also done when the ShardSet is garbage collected)."""
        if self._pool is not None:
            for f in self._pending.values():
                f.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- reading -------------------------------------------------------------------------------
    @contextmanager
    def open_shard(self, i: int, entries: dict[str, TensorEntry] | None = None
                   ) -> Iterator[tuple[BinaryIO, dict[str, TensorEntry]]]:
        """(file, header entries) of shard i, checked; read regions with `training.shards.read_into`.
        `entries`: what `entries(i)` just returned (the shard is then not checked again)."""
        entries = self.entries(i) if entries is None else entries
        with open(self.path / self.shards[i].file, "rb", buffering=0) as f:
            yield f, entries

    def read(self, i: int, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """Whole tensors of shard i (`acts` is this hook's activations, `targets` the target hook's),
        in fresh CPU tensors."""
        names = {"acts": f"acts/{self.hook}", "targets": f"acts/{self.target_hook}"}
        if "targets" in keys and self.target_hook is None:
            raise ValueError("targets asked of a ShardSet opened without target_hook")
        with self.open_shard(i) as (f, entries):
            unchecked = [k for k in keys if names.get(k, k) not in entries]
            if unchecked:
                checks = f"the activations of {', '.join(self.widths)}" if self.widths else "no activations"
                raise ValueError(f"{', '.join(unchecked)} asked of a ShardSet that checks {checks}: not checked, "
                                 f"so not read")
            return read_tensors(f, [entries[names.get(k, k)] for k in keys], list(keys))


def check_cached_pair(path: Path, hooks: Sequence[str], hook: str | None, target_hook: str) -> str:
    """The input hook of a transcoder pair the cache at `path` holds (`hook`, or the cache's other
    hook when it holds exactly two); a cache without the pair is refused naming both sides."""
    if hook is None:
        others = [h for h in hooks if h != target_hook]
        if len(hooks) == 2 and len(others) == 1:
            hook = others[0]
        else:
            raise CachePairError(f"{path} holds {', '.join(hooks)}; name the transcoder's input hook (DataConfig.hook) "
                                 f"beside its target {target_hook!r}", field="hook")
    if hook == target_hook:
        raise CachePairError(f"the transcoder's input hook and target hook are both {hook!r}; a target hook "
                             f"(DataConfig.target_hook) is another hook point, or leave it out to train an SAE",
                             field="target_hook")
    missing = [h for h in (hook, target_hook) if h not in hooks]
    if missing:
        raise CachePairError(
            f"{path} was built for hook(s) {', '.join(hooks)}, but this transcoder reads {hook!r} and predicts "
            f"{target_hook!r} ({', '.join(repr(h) for h in missing)} not cached); cache the pair in one pass with "
            f"`saesteer cache --hooks {hook},{target_hook}`", field="target_hook" if target_hook in missing else "hook")
    return hook


# ----------------------------------------------------------------------------------------------
# Sequential passes


class ShardData(NamedTuple):
    """One shard's rows in storage order (context order, then position), for sequential passes."""

    index: int
    first_context: int  # global index of the shard's first context
    acts: torch.Tensor  # [R, D] stored dtype
    token_ids: torch.Tensor  # [R] int32
    positions: torch.Tensor  # [R] int32
    seq_index: torch.Tensor  # [R] int64 (global context index of each row)
    context_tokens: torch.Tensor  # [C, L] int32: the full model input of the shard's contexts


def iter_shards(path: str | Path, hook: str | None = None, *, verify: bool = True) -> Iterator[ShardData]:
    """The cache's shards in order, one at a time (memory: one shard). Each shard's SHA-256 is
    checked before it is returned (`ShardCorruptError` names a bad one). For the feature stage
    and other sequential passes; training should use `CacheReader`."""
    cache = ShardSet(path, hook, verify="once" if verify else "never")
    for i, s in enumerate(cache.shards):
        t = cache.read(i, ("acts", *ROW_TENSORS, "context_tokens"))
        yield ShardData(i, s.first_context, t["acts"], t["token_ids"], t["positions"], t["seq_index"],
                        t["context_tokens"])


def all_rows(path: str | Path, hook: str | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Every row of a small cache in storage order: acts [R, D] (stored dtype) and meta [3, R]
    (token_ids, positions, seq_index). For tests and small analyses; not memory bounded."""
    acts, metas = [], []
    for sd in iter_shards(path, hook):
        acts.append(sd.acts)
        metas.append(np.stack([sd.token_ids.numpy(), sd.positions.numpy(), sd.seq_index.numpy()]).astype(np.int64))
    d_in = read_manifest(path).d_in
    return (torch.cat(acts) if acts else torch.empty(0, next(iter(d_in.values()))),
            np.concatenate(metas, axis=1) if metas else np.empty((3, 0), np.int64))


# ----------------------------------------------------------------------------------------------
# Verification


class VerifyReport(NamedTuple):
    ok: bool
    checked: int
    problems: list[str]  # one line per bad shard, naming it


def verify_cache(path: str | Path, *, progress: bool = False) -> VerifyReport:
    """Check every shard of a cache against the manifest (presence, size, header, and the SHA-256 of
    the whole file and of each part, in one pass over it). An unfinished cache is checked against
    its build log."""
    from tqdm.auto import tqdm

    out = Path(path)
    man = read_manifest(out)
    shards = man.shards if man.complete else read_progress(out)
    problems = [] if man.complete else [f"cache is incomplete ({len(shards)} shards finished); re-run the same "
                                        f"`saesteer cache` command to finish it"]
    dtype = DTYPES[man.dtype]
    for s in tqdm(shards, desc="verifying", unit="shard", disable=not progress):
        f = out / s.file
        problem, _ = shard_problem(f, s, man.d_in, dtype, lambda: shard_digests(f, s, list(man.d_in), whole_file=True))
        if problem is not None:
            problems.append(f"{s.file}: {problem}")
    return VerifyReport(not problems, len(shards), problems)
