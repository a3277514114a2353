"""The encoder's initial scale: the least-squares fit of the first top-k reconstruction."""

import torch

from saes import create_sae
from training.config import RunConfig, SAESpec, TrainConfig
from training.initialize import least_squares_encoder_scale
from training.trainer import Trainer


@torch.no_grad()
def _recon_error(sae, x_BD, b_dec_D, k, c):
    y = x_BD - b_dec_D
    pre = c * (y @ sae.W_enc)
    v, i = pre.topk(k, dim=1)
    r = torch.einsum("bk,bkd->bd", v.relu(), sae.W_dec[i])
    return float((y - r).pow(2).sum())


def test_least_squares_scale_minimises_the_initial_error():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=g) * 3 + 1
    sae = create_sae("topk", 16, 64, k=4, generator=torch.Generator().manual_seed(1))
    b = x.mean(0)
    c = least_squares_encoder_scale(sae.W_enc, sae.b_enc, sae.W_dec, b, x, 4)
    assert 0 < c
    best = _recon_error(sae, x, b, 4, c)
    for other in (1.0, 0.9 * c, 1.1 * c):
        assert best < _recon_error(sae, x, b, 4, other)


def test_trainer_scales_the_encoder_unless_a_scale_is_given():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(256, 16, generator=g)
    spec = [SAESpec("topk", d_sae=64, k=4)]
    fixed = Trainer(RunConfig(saes=spec, train=TrainConfig(encoder_init_scale=1.0, step_method="autograd")), 16)
    auto = Trainer(RunConfig(saes=spec, train=TrainConfig(step_method="autograd")), 16)
    fixed.initialize(x)
    auto.initialize(x)
    a, f = auto.members[0].sae, fixed.members[0].sae
    assert torch.allclose(f.W_enc, f.W_dec.T)  # scale 1: the plain transpose
    ratio = a.W_enc / a.W_dec.T
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio)) and not torch.allclose(ratio, torch.ones_like(ratio))
