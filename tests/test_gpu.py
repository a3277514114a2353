"""The CUDA path: fast paths against their references on the device, determinism, bf16 learning
curves, the trainer's exact resume, and steering under the KV cache.

Marked `gpu`: on a machine with CUDA they run there (`benchmarks/gpu_check.sh`); elsewhere they are
skipped, except in the GPU script's dry mode (SAESTEER_GPU_DRY=1), which runs the same tests on
the CPU at tiny sizes (`tests/test_gpu_check_dry.py` runs that in the default suite).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch

from helpers.gpu import gpu_device, sizes

import saes  # noqa: E402
from saes.step import compute_grads  # noqa: E402
from saes.topk_select import batch_top_entries, row_topk  # noqa: E402

pytestmark = pytest.mark.gpu
ARCHS = ("topk", "batchtopk", "matryoshka_batchtopk")
PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


@pytest.fixture(scope="module")
def device():
    return gpu_device()


@contextmanager
def deterministic():
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)


def make_sae(arch: str, d_in: int, d_sae: int, k: int, device, seed: int = 0):
    kw = {"k": k}
    if arch == "matryoshka_batchtopk":
        kw["matryoshka_widths"] = [d_sae // 16, d_sae // 4, d_sae]
    sae = saes.create_sae(arch, d_in, d_sae, generator=torch.Generator().manual_seed(seed), **kw)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-trivial biases and decoder norms
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=g))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=g))
        sae.W_dec.mul_(torch.rand(d_sae, 1, generator=g) + 0.5)
    return sae.to(device)


def batch(B: int, D: int, device, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, D, generator=torch.Generator().manual_seed(seed)).to(device)


def dead_mask(d_sae: int, device) -> torch.Tensor:
    return (torch.rand(d_sae, generator=torch.Generator().manual_seed(3)) < 0.3).to(device)


def grads(sae) -> dict[str, torch.Tensor]:
    return {n: getattr(sae, n).grad.clone() for n in PARAMS}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


# ----------------------------------------------------------------------------- selection
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_topk_equals_torch_topk_on_the_device(device, dtype):
    s = sizes(device)
    x = batch(s.batch, s.d_sae, device, seed=1).to(dtype)
    vals, idx = row_topk(x, s.k)
    ref = x.topk(s.k, dim=1).values
    assert vals.device.type == device.type and vals.dtype == dtype
    assert torch.equal(vals.sort(dim=1, descending=True).values, ref)  # the same values, bit for bit
    assert torch.equal(x.gather(1, idx), vals)  # and the indices point at them


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_top_entries_equals_one_flat_topk_on_the_device(device, dtype):
    s = sizes(device)
    x = batch(s.batch, s.d_sae, device, seed=2).to(dtype)
    vals, rows, cols = batch_top_entries(x, s.k)
    flat = x.reshape(-1).topk(s.k * s.batch).values
    assert torch.equal(vals.sort(descending=True).values, flat[flat > 0])
    assert torch.equal(x[rows, cols], vals)
    keys = rows * s.d_sae + cols
    assert bool((keys[1:] > keys[:-1]).all())  # row-major order, no duplicates


# -------------------------------------------------------------------- the fast step
@pytest.mark.parametrize("arch", ARCHS)
def test_fast_step_equals_the_autograd_reference_on_the_device(device, arch):
    s = sizes(device)
    sae = make_sae(arch, s.d_in, s.d_sae, s.k, device)
    x, dead = batch(s.batch, s.d_in, device), dead_mask(s.d_sae, device)
    ref = compute_grads(sae, x, dead, method="autograd")
    ref_g = grads(sae)
    got = compute_grads(sae, x, dead, method="fast")
    got_g = grads(sae)
    assert got.pre_BF.device.type == device.type
    assert torch.equal(got.pre_BF, ref.pre_BF)  # the same encoder ops: bit for bit
    assert torch.equal(got.acts.to_dense(), ref.acts.to_dense())  # hence the same selection and values
    assert torch.equal(got.acts.offsets_B1, ref.acts.offsets_B1)
    for name in ("total", "mse", "aux"):
        a, b = float(getattr(got, name)), float(getattr(ref, name))
        assert abs(a - b) <= 1e-5 * max(abs(b), 1e-6), (name, a, b)
    assert float(ref.aux) > 0  # the AuxK term is exercised
    for n in PARAMS:
        assert rel_err(got_g[n], ref_g[n]) <= 1e-5, (n, rel_err(got_g[n], ref_g[n]))


@pytest.mark.parametrize("method", ["fast", "fast_bf16"])
@pytest.mark.parametrize("arch", ARCHS)
def test_fast_step_is_bitwise_reproducible_under_deterministic_algorithms(device, arch, method):
    s = sizes(device)
    sae = make_sae(arch, s.d_in, s.d_sae, s.k, device)
    x, dead = batch(s.batch, s.d_in, device), dead_mask(s.d_sae, device)
    twin = copy.deepcopy(sae)
    with deterministic():
        a = compute_grads(sae, x, dead, method=method)
        b = compute_grads(twin, x, dead, method=method)
    assert float(a.total) == float(b.total)
    assert torch.equal(a.acts.to_dense(), b.acts.to_dense())
    ga, gb = grads(sae), grads(twin)
    for n in PARAMS:
        assert torch.equal(ga[n], gb[n]), n


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_encoder_on_the_device_picks_nearly_the_same_latents(device, arch):
    s = sizes(device)
    sae = make_sae(arch, s.d_in, s.d_sae, s.k, device)
    x = batch(s.batch, s.d_in, device, seed=5)
    ref = compute_grads(sae, x, None, method="fast")
    ref_g = grads(sae)
    got = compute_grads(sae, x, None, method="fast_bf16")
    got_g = grads(sae)
    assert got.pre_BF.dtype == torch.bfloat16 and got.acts.values_N.dtype == torch.float32
    da, db = got.acts.to_dense() != 0, ref.acts.to_dense() != 0
    assert float((da & db).sum()) / max(1, int(db.sum())) >= 0.97
    assert float(got.mse) == pytest.approx(float(ref.mse), rel=2e-2)
    for n in PARAMS:
        cos = torch.nn.functional.cosine_similarity(got_g[n].flatten().float(), ref_g[n].flatten().float(), dim=0)
        assert cos >= 0.9, (n, float(cos))


# ------------------------------------------------------------------------- the trainer
def _run_config(arch: str, s, steps: int, method: str, device, every: int = 0):
    from training.config import CheckpointConfig, EvalConfig, LogConfig, RunConfig, SAESpec, TrainConfig

    spec = SAESpec(arch, d_sae=s.d_sae, k=s.k, matryoshka_widths=[s.d_sae // 4, s.d_sae] if "matryoshka" in arch else [])
    return RunConfig(
        saes=[spec],
        train=TrainConfig(total_tokens=steps * s.batch, batch_size=s.batch, holdout_tokens=s.batch, step_method=method,
                          dead_tokens=4 * s.batch, device=str(device)),
        checkpoint=CheckpointConfig(every_tokens=every), eval=EvalConfig(every_tokens=0, ce_contexts=0),
        log=LogConfig(progress=False),
    )


def _source(s):
    from training.synthetic import SyntheticActivations

    return SyntheticActivations(s.d_in, s.batch, n_features=4 * s.d_in, active=8, seed=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_trainer_on_the_device_resumes_exactly(device, arch, tmp_path):
    from training import train

    s = sizes(device)

    class Crash(Exception):
        pass

    def crash_at_step_3(trainer):  # after the step-3 checkpoint is written
        if trainer.step == 3:
            raise Crash

    cfg = _run_config(arch, s, 6, "fast", device, every=3 * s.batch)
    with deterministic():
        whole = train(cfg, _source(s), tmp_path / "whole")
        with pytest.raises(Crash):
            train(cfg, _source(s), tmp_path / "split", on_step=crash_at_step_3)
        resumed = train(cfg, _source(s), tmp_path / "split", resume="require")
    assert resumed.resumed_from is not None and resumed.tokens == whole.tokens
    name = cfg.saes[0].name
    a, b = whole.saes[name], resumed.saes[name]
    assert a.W_enc.device.type == device.type
    for n in PARAMS:
        assert torch.equal(getattr(a, n), getattr(b, n)), n


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_learning_curve_follows_fp32_on_the_device(device, arch, tmp_path):
    """The same run with the bf16 encoder and with the exact fp32 step: held-out explained variance
    at the end within 0.02 of each other."""
    from training import train

    s = sizes(device)
    ev = {}
    for method in ("fast", "fast_bf16"):
        res = train(_run_config(arch, s, s.curve_steps, method, device), _source(s), tmp_path / method)
        ev[method] = res.metrics["saes"][res.metrics["config"]["saes"][0]["name"]]["explained_variance"]
    assert ev["fast"] > 0.3, ev  # it learned something
    assert abs(ev["fast_bf16"] - ev["fast"]) <= 0.02, ev


# ------------------------------------------------------------------------------ steering
def test_steering_under_the_kv_cache_on_the_device(device):
    from helpers.steering_fixtures import PROMPTS, random_sae, tiny_model
    from steering import FeatureEdit, GenerationConfig, generate, hooks_attached, steer

    greedy = GenerationConfig(max_new_tokens=8, do_sample=False, stop_at_eos=False)
    model = copy.deepcopy(tiny_model()).to(device)
    last = model.cfg.n_layers - 1
    sae = random_sae(model, "jumprelu", hook=f"blocks.{last}.hook_resid_post")
    whale = model.tokenizer.convert_tokens_to_ids("whale")
    with torch.no_grad():
        u = model.W_U[:, whale].detach().cpu()
        sae.W_dec[11] = u / u.norm()
    sae = sae.to(device)
    base = generate(model, PROMPTS, greedy)
    with steer(model, sae, [FeatureEdit(11, "add", 40.0, positions="generated")]) as st:
        cached = st.generate(PROMPTS, greedy)
        uncached = st.generate(PROMPTS, greedy, use_past_kv_cache=False)
    assert cached.tokens.device.type == device.type
    assert torch.equal(cached.tokens, uncached.tokens)
    assert torch.equal(cached.new_tokens[:, 0], base.new_tokens[:, 0])  # predicted from the unsteered prompt
    assert (cached.new_tokens[:, 1:] == whale).all()
    assert hooks_attached(model) == []


def test_stored_fp16_rows_become_the_same_fp32_rows_on_the_device(device):
    """`saesteer train --device cuda` reads the cache as stored (fp16) and converts on the device."""
    from saesteer.commands._train_data import reader_dtype
    from training.config import RunConfig, SAESpec, TrainConfig
    from training.trainer import Trainer

    assert reader_dtype("cuda:0") == {"dtype": None} and reader_dtype("cpu") == {}
    s = sizes(device)
    tr = Trainer(RunConfig(saes=[SAESpec("topk", d_sae=s.d_sae, k=s.k)], train=TrainConfig(device=str(device))), s.d_in)
    tr.scale = 1.5
    rows = torch.randn(s.batch, s.d_in, generator=torch.Generator().manual_seed(9)).half()
    got = tr.prepare(rows)
    assert got.device.type == device.type and got.dtype == torch.float32
    assert torch.equal(got.cpu(), rows.float() * 1.5)


def test_the_topk_read_under_tf32_equals_its_reference_on_the_device(device):
    """With TF32 products allowed (as many users run float32 on a GPU), the exact TopK read's bound
    uses TF32's rounding (saes.precision) and still equals the SAE's own encode: bit for bit
    without a need mask, each row's own on/off with one."""
    from steering.topk_read import TopKReader

    s = sizes(device)
    sae = make_sae("topk", s.d_in, s.d_sae, s.k, device)
    x = batch(512, s.d_in, device, seed=4)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with torch.no_grad():
            fires = (sae.encode(x) != 0).sum(0)
            ids = torch.cat([fires.topk(3).indices, fires.argmin().view(1)])
            reader = TopKReader(sae, ids, n_candidates=s.d_sae // 8)
            reader.cands.learn_rows = 128
            for lo in range(0, 512, 8):
                assert torch.equal(reader(x[lo:lo + 8]), sae.encode(x[lo:lo + 8])[:, ids]), lo
            need = torch.rand(64, ids.numel(), generator=torch.Generator().manual_seed(2)).to(device) < 0.5
            got, want = reader(x[:64], need), reader.reference(x[:64], need)
            assert torch.equal(got[need] != 0, want[need] != 0)
            torch.testing.assert_close(got[need], want[need], rtol=1e-2, atol=1e-2)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
