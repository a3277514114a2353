"""Adding an architecture is one class plus one registry line (docs/architecture.md, "How to add an
architecture"). Here the class lives in this file and `register` is the registry line: a ReLU
whose latents fire only above a fixed shift. Nothing else in the code base knows about it, yet it
trains (the trainer picks the autograd step), saves and loads as its own class, and steers
exactly (the generic read path of `steering.interventions`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor

import saes
from helpers.steering_fixtures import hook_activations, tiny_model
from saes.base import SAE
from saes.config import SAEConfig
from saes.registry import ARCHITECTURES, register
from saes.sparse import SparseActs
from steering import FeatureEdit, steer
from steering.interventions import reference_edit
from training.config import RunConfig, SAESpec, TrainConfig
from training.trainer import Trainer

HOOK = "blocks.1.hook_resid_post"


@dataclass
class ShiftedReLUConfig(SAEConfig):
    """ReLU SAE whose latents fire only where the pre-activation exceeds `shift`."""

    shift: float = field(default=0.05, metadata={"help": "pre-activation a latent must exceed to fire"})


class ShiftedReLUSAE(SAE):
    architecture = "test_shifted_relu"
    config_class = ShiftedReLUConfig
    cfg: ShiftedReLUConfig
    trainable = True

    def select(self, pre_BF: Tensor) -> SparseActs:
        return SparseActs.from_dense((pre_BF - self.cfg.shift).relu())

    def saelens_fields(self) -> dict[str, Any]:
        return {"shift": self.cfg.shift}

    @classmethod
    def config_fields_from_saelens(cls, cfg: dict[str, Any], details: dict[str, Any], source: str) -> dict[str, Any]:
        return {"shift": float(cfg.get("shift", 0.0))}

    def fold_decoder_norm_(self) -> None:
        raise ValueError("the shift is in pre-activation units: keep decoder rows unit-norm instead")


@pytest.fixture
def registered():
    """The registry line, undone afterwards so that other tests see the registry as shipped."""
    register(ShiftedReLUSAE)
    yield ShiftedReLUSAE
    del ARCHITECTURES[ShiftedReLUSAE.architecture]


def test_the_class_describes_itself_through_the_base_contract(registered):
    assert ShiftedReLUSAE.encoding_rule == "generic" and ShiftedReLUSAE.training_rule == "generic"
    assert ShiftedReLUSAE.saved_architecture() == "test_shifted_relu"
    assert "test_shifted_relu" in saes.trainable_architectures()
    with pytest.raises(ValueError, match="already registered"):
        register(type("Other", (ShiftedReLUSAE,), {}))  # one name, one class


def test_a_new_architecture_trains_saves_loads_and_steers(registered, tmp_path):
    torch.manual_seed(0)
    d_in = 16
    cfg = RunConfig(saes=[SAESpec("test_shifted_relu", d_sae=32)],  # it has no k
                    train=TrainConfig(batch_size=64, step_method="auto"))
    tr = Trainer(cfg, d_in)
    assert tr.step_method == "autograd"  # no hand-written step for its training rule
    sae = tr.members[0].sae
    assert type(sae) is ShiftedReLUSAE
    before = sae.W_enc.detach().clone()
    _, stats = tr.train_batch(torch.randn(64, d_in) * 3)
    assert not stats[tr.members[0].name].skipped and tr.step == 1
    assert not torch.equal(sae.W_enc, before)  # the optimiser moved the encoder
    with pytest.raises(ValueError, match="rule 'generic': use method='autograd'"):
        saes.compute_grads(sae, torch.randn(8, d_in), method="fast")

    trained = tr.folded_sae(tr.members[0])
    trained.cfg.shift = 0.25
    saes.save_sae(trained, tmp_path / "sae")
    back = saes.load_sae(tmp_path / "sae")
    assert type(back) is ShiftedReLUSAE and back.cfg == trained.cfg and back.cfg.shift == 0.25
    x = torch.randn(20, d_in)
    assert torch.equal(back(x).recon, trained(x).recon)
    assert torch.equal(back.encode(x), (trained.pre_activations(x) - 0.25).relu())

    model = tiny_model()
    sae = saes.create_sae("test_shifted_relu", model.cfg.d_model, 48, shift=0.02, metadata={"hook_name": HOOK},
                          generator=torch.Generator().manual_seed(1))
    feature = 5
    with torch.no_grad():
        sae.b_enc[feature] = 2.0  # fires everywhere, so that clamping it changes something
    tokens = model.to_tokens(["the sea and the ship", "a tree"], padding_side="left")
    base = hook_activations(model, tokens, HOOK)
    with steer(model, sae, [FeatureEdit(feature, "clamp", 0.5)]):
        steered = hook_activations(model, tokens, HOOK)
    expected = reference_edit(sae, base, [(feature, "clamp", 0.5)])
    real = tokens != model.tokenizer.pad_token_id  # steering leaves the left padding alone
    assert not torch.allclose(steered[real], base[real])
    torch.testing.assert_close(steered[real], expected[real], rtol=1e-5, atol=1e-5)
    assert torch.equal(steered[~real], base[~real])


class AbsTopKSAE(saes.TopKSAE):
    """A TopK variant picking the k largest |pre| (signed values): TopK's specialised paths (the
    fast step, steering's TopK reader, SAELens's "topk") would be wrong for it."""

    architecture = "test_abs_topk"

    def select(self, pre_BF: Tensor) -> SparseActs:
        _, idx_BK = pre_BF.abs().topk(self.cfg.k, dim=-1)
        return SparseActs.from_topk(pre_BF.gather(-1, idx_BK), idx_BK, self.d_sae)


def test_a_subclass_that_selects_differently_falls_back_to_the_generic_paths():
    from steering.interventions import current_activations

    assert saes.TopKSAE.encoding_rule == "topk" and saes.TopKSAE.training_rule == "topk"
    assert AbsTopKSAE.encoding_rule == "generic" and AbsTopKSAE.training_rule == "generic"
    assert AbsTopKSAE.saved_architecture() == "test_abs_topk"  # not saved as SAELens "topk"
    sae = AbsTopKSAE(saes.TopKConfig(d_in=8, d_sae=32, k=3), generator=torch.Generator().manual_seed(0))
    x = torch.randn(10, 8)
    ids = list(range(32))
    torch.testing.assert_close(current_activations(sae, x, ids), sae.encode(x))  # negative values too
    assert (sae.encode(x) < 0).any()
    with pytest.raises(ValueError, match="rule 'generic'"):
        saes.compute_grads(sae, x, method="fast")
    from saes.io import sae_lens_config

    assert sae_lens_config(sae)["architecture"] == "test_abs_topk" and "k" in sae_lens_config(sae)
