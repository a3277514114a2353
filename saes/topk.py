"""TopK SAE: the k largest pre-activations of each row fire (after a ReLU), the rest are zero."""

from __future__ import annotations

from torch import Tensor

from saes.base import SAE
from saes.config import TopKConfig
from saes.sparse import SparseActs


class TopKSAE(SAE):
    architecture = "topk"
    config_class = TopKConfig
    cfg: TopKConfig

    def select(self, pre_BF: Tensor) -> SparseActs:
        vals_BK, idx_BK = pre_BF.topk(self.cfg.k, dim=-1, sorted=False)
        return SparseActs.from_topk(vals_BK.relu(), idx_BK, self.d_sae)

    def fold_decoder_norm_(self, selection_uses_unit_decoder: bool = False) -> None:
        """Unsafe for TopK in general: scaling activations by decoder norms changes which k win.

        Only correct when the SAE already selected on `pre * ||W_dec row||` (SAELens's
        `rescale_acts_by_decoder_norm`), which is what `selection_uses_unit_decoder` asserts."""
        if not selection_uses_unit_decoder:
            raise ValueError(
                "folding decoder norms would change which latents a TopK SAE selects; keep decoder rows "
                "unit-norm during training instead (normalize_decoder_)"
            )
        super().fold_decoder_norm_()
