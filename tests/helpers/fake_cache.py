"""Write a small activation cache without a model: valid manifest, safetensors shards, checksums.

Useful for reader/trainer tests that need a cache of a given shape fast. Row i of the whole
cache (in storage order) has activations `acts[i]`, seq_index i // context_length and position
i % context_length, so (seq_index, position) identifies a row.

    from helpers.fake_cache import make_fake_cache
    cache = make_fake_cache(tmp_path / "c", shard_rows=[5, 3, 7], d_in=4)
    cache.acts  # [15, 4] float32, storage order

`widths` gives some hooks another width than d_in (a transcoder's pair: input and target hook);
`bos_policy` is what the manifest records (the rows are random either way). `part_checksums=False`
writes the manifest of a cache made before per-part checksums (whole-file SHA-256 only).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from training.manifest import FORMAT_NAME, FORMAT_VERSION, Manifest, ShardInfo, shard_file_name, write_manifest
from training.shards import DTYPES, write_safetensors_atomic


class FakeCache(NamedTuple):
    path: Path
    acts: dict[str, torch.Tensor]  # hook -> [R, D] as stored (converted back to float32)
    token_ids: torch.Tensor  # [R] int64
    positions: torch.Tensor  # [R] int64
    seq_index: torch.Tensor  # [R] int64
    manifest: Manifest


def make_fake_cache(
    path: str | Path,
    shard_rows: Sequence[int],
    *,
    d_in: int = 4,
    hooks: Sequence[str] = ("blocks.0.hook_resid_post",),
    dtype: str = "fp32",
    context_length: int = 4,
    seed: int = 0,
    widths: dict[str, int] | None = None,
    bos_policy: str = "none",
    part_checksums: bool = True,
    dataset: str = "fake",
) -> FakeCache:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    R = sum(shard_rows)
    width = {h: (widths or {}).get(h, d_in) for h in hooks}
    acts = {h: torch.randn(R, width[h], generator=g).to(DTYPES[dtype]) for h in hooks}
    token_ids = torch.randint(0, 100, (R,), generator=g, dtype=torch.int32)
    rows = torch.arange(R)
    positions = (rows % context_length).to(torch.int32)
    seq_index = rows // context_length
    shards = []
    r = 0
    for i, n in enumerate(shard_rows):
        tensors = {f"acts/{h}": acts[h][r:r + n].contiguous() for h in hooks}
        tensors.update(token_ids=token_ids[r:r + n].contiguous(), positions=positions[r:r + n].contiguous(),
                       seq_index=seq_index[r:r + n].contiguous(),
                       context_tokens=torch.zeros(0, context_length, dtype=torch.int32))
        f = shard_file_name(i)
        w = write_safetensors_atomic(path / f, tensors)
        shards.append(ShardInfo(i, f, 0, 0, n, w.nbytes, w.sha256, (0, 0), (0, 0),
                                w.parts if part_checksums else None))
        r += n
    settings = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "model": {"id": "fake", "revision": None, "fingerprint": "0", "n_ctx": context_length, "d_model": d_in},
        "hooks": list(hooks), "d_in": width, "dtype": dtype,
        "context_length": context_length, "bos_policy": bos_policy, "separator": "none", "exclude_tokens": "none",
        "excluded_token_ids": [], "tokenizer": {"name": "fake", "sha256": "0"}, "dataset": {"name": dataset},
        "max_tokens": None, "shard_contexts": 1,
    }
    man = Manifest(settings, complete=True, shards=shards)
    write_manifest(path, man)
    return FakeCache(path, {h: a.float() for h, a in acts.items()}, token_ids.long(), positions.long(), seq_index.long(), man)
