"""The latents of one SAE that the batched engine reads and edits, kept as columns between batches.

Rows join and leave the engine's batch about every other step at 32 clients. The per-row edit
tables follow them row by row (`steering.rowedits.BatchEditor.rows_of` / `joined`); what they
read and write with is kept here: the SAE's `LatentReader` over a set of latents (for a TopK SAE
its gathered weights, reused buffers and adaptive bound state; the candidate set is the SAE's
own, `TopKCandidates.of`) and those latents' decoder rows. A latent keeps its column while rows
use it; a new latent is appended (one rebuild); columns no row uses stay (a row needing none of
them reads nothing there) until they outnumber the used ones, then they are dropped (one
rebuild) when the decode batch's tables are next built afresh, which a new latent forces, so
the columns stay bounded. A change of the SAE's weights, in place or replaced, rebuilds
everything, since the reader and the decoder rows hold copies. `builds` counts the rebuilds
(tests, tuning).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from steering.interventions import LatentReader

if TYPE_CHECKING:
    from saes.base import SAE


def params_version(sae: SAE) -> tuple:
    """Which tensors an SAE holds now (storage and in-place version counters of its parameters and
    buffers): copies made from them are stale once this changes."""
    return tuple((t.data_ptr(), t._version) for t in (*sae.parameters(), *sae.buffers()))


class LatentColumns:
    """Columns for the latents some row of one SAE uses (see the module docstring).

    `cover(latents)` before building a batch's tables; then `col[latent]` is a latent's column,
    `ids_U` the latent of each column (U columns), `W_dec_UD` their decoder rows and `reader`
    a `LatentReader` over them (built on first use)."""

    def __init__(self, sae: SAE, spare: int = 16) -> None:
        self.sae = sae
        self.spare = spare  # unused columns kept beyond as many as are used (a row may come back)
        self.latents: list[int] = []
        self.col: dict[int, int] = {}
        self.ids_U = torch.zeros(0, dtype=torch.int64, device=sae.W_dec.device)
        self.W_dec_UD: Tensor | None = None
        self._reader: LatentReader | None = None
        self._version: tuple | None = None
        self.builds = 0  # column sets built (each a new reader when one is read)
        self.reader_builds = 0  # readers built

    @property
    def U(self) -> int:
        return len(self.latents)

    def weights_current(self) -> bool:
        """Whether the SAE's weights are those the columns were copied from."""
        return params_version(self.sae) == self._version

    def cover(self, latents: Iterable[int], drop_unused: bool = True) -> None:
        """Give every latent of `latents` a column; columns of latents already there keep their
        place. `drop_unused`: `latents` are all that rows use now (a decode batch), so unused
        columns may be dropped; False for some rows only (the engine's prefill of joining rows,
        while the running rows keep theirs)."""
        used = dict.fromkeys(int(f) for f in latents)
        new = [f for f in used if f not in self.col]
        unused = self.U - (len(used) - len(new))
        version = params_version(self.sae)
        if drop_unused and unused > len(used) + self.spare:
            self._build([f for f in self.latents if f in used] + new, version)
        elif new or version != self._version:  # new weights: the same columns, fresh copies
            self._build(self.latents + new, version)

    def _build(self, latents: list[int], version: tuple) -> None:
        self.latents = latents
        self.col = {f: u for u, f in enumerate(latents)}
        self.ids_U = torch.tensor(latents, dtype=torch.int64, device=self.sae.W_dec.device)
        self.W_dec_UD = self.sae.W_dec.detach()[self.ids_U].contiguous() if latents else None
        self._reader = None
        self._version = version
        self.builds += 1

    @property
    def reader(self) -> LatentReader:
        """The reader of every column (built when first asked for after a rebuild)."""
        if self._reader is None:
            self._reader = LatentReader(self.sae, self.ids_U)
            self.reader_builds += 1
        return self._reader
