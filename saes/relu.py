"""Standard ReLU SAE: every positive pre-activation fires. Kept for loading pretrained SAEs."""

from __future__ import annotations

from torch import Tensor

from saes.base import SAE
from saes.config import ReLUConfig
from saes.sparse import SparseActs


class ReLUSAE(SAE):
    architecture = "standard"
    config_class = ReLUConfig
    encoding_rule = "relu"
    saelens_architecture = "standard"

    def select(self, pre_BF: Tensor) -> SparseActs:
        return SparseActs.from_dense(pre_BF.relu())
