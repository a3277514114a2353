"""Which latent best matches a ground-truth concept: per (latent, concept) detection F1 over tokens.

A latent "detects" concept c on a token when it fires there (activation > 0); F1 compares that
with the token's ground-truth tag. Streaming and memory bounded: one pass keeps only the counts
tp [F, C], fires [F], positives [C].

    scores = concept_f1_over_source(sae, source, concept_fn, names)     # e.g. the toy world's tags
    scores.best("topic:ocean")            # ConceptMatch(latent, f1, precision, recall)
    scores.fraction_at_least(0.8)         # fraction of concepts whose best latent reaches F1 0.8

Shape key: B rows, F d_sae, C concepts, N active entries, L context length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor

from features.records import ConceptMatch
from features.source import ActivationSource


@dataclass
class ConceptScores:
    names: list[str]
    tp_FC: Tensor  # tokens where latent f fires and concept c holds
    fires_F: Tensor  # tokens where latent f fires
    pos_C: Tensor  # tokens where concept c holds
    n_rows: int

    def _index(self, concept: str) -> int:
        try:
            return self.names.index(concept)
        except ValueError:
            raise KeyError(f"unknown concept {concept!r}; known: {', '.join(self.names[:20])}...") from None

    def precision_FC(self) -> Tensor:
        return self.tp_FC.double() / self.fires_F[:, None].double().clamp(min=1)

    def recall_FC(self) -> Tensor:
        return self.tp_FC.double() / self.pos_C[None, :].double().clamp(min=1)

    def f1_FC(self) -> Tensor:
        """2 tp / (fires + positives) for every latent and concept."""
        return 2 * self.tp_FC.double() / (self.fires_F[:, None] + self.pos_C[None, :]).double().clamp(min=1)

    def top(self, concept: str, n: int = 5) -> list[ConceptMatch]:
        """The n latents with the highest F1 for `concept`, best first (ties: lower id)."""
        c = self._index(concept)
        f1 = self.f1_FC()[:, c]
        order = torch.argsort(-f1, stable=True)[:n]
        p, r = self.precision_FC()[:, c], self.recall_FC()[:, c]
        return [ConceptMatch(concept, int(f), float(f1[f]), float(p[f]), float(r[f]), rank) for rank, f in enumerate(order.tolist())]

    def best(self, concept: str) -> ConceptMatch:
        return self.top(concept, 1)[0]

    def best_per_concept(self, min_positives: int = 1) -> list[ConceptMatch]:
        """The best latent of every concept seen at least `min_positives` times."""
        return [self.best(n) for c, n in enumerate(self.names) if int(self.pos_C[c]) >= min_positives]

    def fraction_at_least(self, threshold: float = 0.8, min_positives: int = 1) -> float:
        best = self.best_per_concept(min_positives)
        return sum(m.f1 >= threshold for m in best) / max(len(best), 1)


class ConceptCounter:
    """Accumulates the counts batch by batch."""

    def __init__(self, d_sae: int, names: Sequence[str]) -> None:
        self.names = list(names)
        C = len(self.names)
        self.tp_FC = torch.zeros(d_sae, C, dtype=torch.int64)
        self.fires_F = torch.zeros(d_sae, dtype=torch.int64)
        self.pos_C = torch.zeros(C, dtype=torch.int64)
        self.n_rows = 0

    @torch.no_grad()
    def update(self, acts, concepts_BC: Tensor) -> None:
        """acts: SparseActs of B rows; concepts_BC: bool [B, C]."""
        keep = acts.values_N > 0
        rows_N = acts.row_ids()[keep]
        f_N = acts.indices_N[keep]
        m_BC = concepts_BC.to(torch.int64)
        self.tp_FC.index_add_(0, f_N, m_BC.index_select(0, rows_N))
        self.fires_F += torch.bincount(f_N, minlength=self.fires_F.numel())
        self.pos_C += m_BC.sum(0)
        self.n_rows += m_BC.shape[0]

    def result(self) -> ConceptScores:
        return ConceptScores(self.names, self.tp_FC.clone(), self.fires_F.clone(), self.pos_C.clone(), self.n_rows)


@torch.no_grad()
def concept_f1(sae, batches: Iterable[tuple[Tensor, Tensor]], names: Sequence[str]) -> ConceptScores:
    """F1 of every latent for every concept over (activations [B, D], concept mask [B, C]) batches."""
    counter = ConceptCounter(sae.cfg.d_sae, names)
    for x_BD, m_BC in batches:
        acts = sae.encode_sparse(x_BD.to(device=sae.device, dtype=sae.dtype))
        acts = type(acts)(*(t.cpu() for t in acts[:3]), acts.d_sae)
        counter.update(acts, m_BC.cpu().bool())
    return counter.result()


ConceptFn = Callable[[Tensor], dict]  # token ids [C, L] -> {concept: bool [C, L]}


@torch.no_grad()
def concept_f1_over_source(
    sae,
    source: ActivationSource,
    concept_fn: ConceptFn,
    names: Sequence[str],
    *,
    batch_rows: int = 4096,
    max_rows: int | None = None,
) -> ConceptScores:
    """concept_f1 over a cache in order: each batch's contexts are re-read as token ids, tagged by
    `concept_fn` (e.g. `lambda ids: toyworld.concept_masks(ids, names)`), and each cached row
    takes the tags of its (context, position)."""
    names = list(names)
    L = source.context_length
    counter = ConceptCounter(sae.cfg.d_sae, names)
    for batch in source.batches(0, max(1, batch_rows // L)):
        seq_C = torch.arange(batch.first_context, batch.first_context + batch.n_contexts)
        ctx_CL = source.window_tokens(seq_C, torch.zeros_like(seq_C), L)
        masks = concept_fn(ctx_CL)
        m_CLK = torch.stack([masks[n].bool() for n in names], -1)
        m_BK = m_CLK[batch.seq_index_B - batch.first_context, batch.positions_B]
        acts = sae.encode_sparse(batch.acts_BD.to(device=sae.device, dtype=sae.dtype))
        acts = type(acts)(*(t.cpu() for t in acts[:3]), acts.d_sae)
        counter.update(acts, m_BK)
        if max_rows is not None and counter.n_rows >= max_rows:
            break
    return counter.result()
