"""TopK SAE: the k largest pre-activations of each row fire (after a ReLU), the rest are zero."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from saes.base import SAE
from saes.config import TopKConfig
from saes.sparse import SparseActs


class TopKSAE(SAE):
    architecture = "topk"
    config_class = TopKConfig
    cfg: TopKConfig
    trainable = True
    encoding_rule = "topk"
    training_rule = "topk"
    saelens_architecture = "topk"

    def select(self, pre_BF: Tensor) -> SparseActs:
        vals_BK, idx_BK = pre_BF.topk(self.cfg.k, dim=-1, sorted=False)
        return SparseActs.from_topk(vals_BK.relu(), idx_BK, self.d_sae)

    def saelens_fields(self) -> dict[str, Any]:
        return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}

    @classmethod
    def config_fields_from_saelens(cls, cfg: dict[str, Any], details: dict[str, Any], source: str) -> dict[str, Any]:
        return {"k": k_from_saelens(cfg, details, cls.architecture)}

    def fold_selection_decoder_norm_(self) -> None:
        self.fold_decoder_norm_(selection_uses_unit_decoder=True)

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


def k_from_saelens(cfg: dict[str, Any], details: dict[str, Any], architecture: str) -> int:
    """k from a SAELens cfg.json: its `k`, the training details' `k`, or (SAELens < 6)
    `activation_fn_kwargs.k`."""
    k = cfg.get("k", details.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k")))
    if k is None:
        raise ValueError(f"a {architecture} SAE needs k in its config")
    return int(round(float(k)))
