"""JumpReLU training: the hand-written step against the eager reference over several trainer
steps (warm-up included), the reference against SAELens's JumpReLUTrainingSAE, thresholds that
learn on a planted dictionary, the SAELens-format save, exact resume, steering and the feature pass."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

import saes
from saes.step import compute_grads
from training.config import CheckpointConfig, EvalConfig, LogConfig, OptimConfig, RunConfig, SAESpec, TrainConfig
from training.trainer import ConfigMismatchError

PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
# (sparsity loss, pre-activation loss coef, straight-through estimate to the pre-activations too)
MODES = [("step", 0.0, False), ("tanh", 0.0, False), ("step", 0.2, True), ("tanh", 0.3, True), ("tanh", 0.0, True)]


def _jumprelu(mode: str, pre_act: float, to_input: bool = False, d_in: int = 16, d_sae: int = 64,
              **kw) -> saes.JumpReLUSAE:
    sae = saes.create_sae("jumprelu", d_in, d_sae, jumprelu_sparsity_loss_mode=mode, pre_act_loss_coefficient=pre_act,
                          jumprelu_ste_to_input=to_input, jumprelu_bandwidth=0.3,
                          generator=torch.Generator().manual_seed(1), **kw)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        sae.threshold.uniform_(0.0, 1.0, generator=g)
        sae.b_enc.normal_(0, 0.3, generator=g)
        sae.W_dec.mul_(torch.rand(d_sae, 1, generator=g) + 0.5)  # decoder norms != 1: their gradient terms count
    return sae


# ---------------------------------------------------------------------------------- one step
def test_sparsity_coefficient_warms_up_linearly_as_sae_lens() -> None:
    cfg = saes.JumpReLUConfig(d_in=4, d_sae=8, l0_coefficient=2.0, l0_warm_up_steps=4)
    assert [cfg.sparsity_coefficient(s) for s in range(6)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    assert saes.JumpReLUConfig(d_in=4, d_sae=8, l0_coefficient=2.0).sparsity_coefficient(0) == 2.0


@pytest.mark.parametrize("mode,pre_act,to_input", MODES)
def test_eager_reference_equals_sae_lens_training_sae(mode: str, pre_act: float, to_input: bool) -> None:
    """Our objective (loss and every gradient, the threshold's included) is SAELens's
    JumpReLUTrainingSAE.training_forward_pass on the same weights, coefficient and dead mask."""
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    ours = _jumprelu(mode, pre_act, to_input, l0_coefficient=0.7, l0_warm_up_steps=4)
    sl = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
        d_in=16, d_sae=64, jumprelu_bandwidth=0.3, jumprelu_sparsity_loss_mode=mode, l0_coefficient=0.7,
        pre_act_loss_coefficient=pre_act or None, jumprelu_tanh_scale=4.0, jumprelu_ste_to_input=to_input))
    with torch.no_grad():
        for n in PARAMS:
            getattr(sl, n).copy_(getattr(ours, n))
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(3))
    dead = torch.rand(64, generator=torch.Generator().manual_seed(4)) < 0.3
    step = 2  # warm-up: coefficient 0.7 * 2 / 4
    out = sl.training_forward_pass(TrainStepInput(sae_in=x, coefficients={"l0": 0.7 * step / 4}, dead_neuron_mask=dead,
                                                  n_training_steps=step, is_logging_step=False))
    out.loss.backward()
    res = compute_grads(ours, x, dead, method="autograd", step=step)
    assert res.total.item() == pytest.approx(out.loss.item(), rel=1e-5)
    assert res.mse.item() == pytest.approx(out.losses["mse_loss"].item(), rel=1e-5)
    for n in PARAMS:
        mine, theirs = getattr(ours, n).grad, getattr(sl, n).grad
        if n == "W_dec":  # SAELens also differentiates the decoder norms: a gradient along each row,
            unit_FD = torch.nn.functional.normalize(ours.W_dec.detach(), dim=1)  # which our trainer removes
            mine, theirs = (g - (g * unit_FD).sum(1, keepdim=True) * unit_FD for g in (mine, theirs))
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6, msg=n)
    assert ours.threshold.grad.abs().sum() > 0


def _trainer_pair(mode: str, pre_act: float, to_input: bool, steps: int):
    from training.trainer import Trainer

    def config(method: str) -> RunConfig:
        options = {"jumprelu_sparsity_loss_mode": mode, "pre_act_loss_coefficient": pre_act, "l0_coefficient": 0.5,
                   "l0_warm_up_steps": 3, "jumprelu_init_threshold": 1.5, "jumprelu_bandwidth": 0.4,
                   "jumprelu_ste_to_input": to_input}
        return RunConfig(saes=[SAESpec("jumprelu", d_sae=48, options=options)],
                         train=TrainConfig(total_tokens=steps * 64, batch_size=64, step_method=method, seed=5,
                                           dead_window_fraction=0.01),  # window = 1 batch: latents go dead
                         optim=OptimConfig(lr=3e-3, warmup_frac=0.0))

    return Trainer(config("autograd"), 16), Trainer(config("fast"), 16)


@pytest.mark.parametrize("mode,pre_act,to_input", MODES)
def test_fast_step_equals_the_reference_over_trainer_steps(mode: str, pre_act: float, to_input: bool) -> None:
    """Six trainer steps (the penalty's warm-up runs over the first three; latents die, so the
    pre-activation loss engages): losses, every gradient and the weights stay equal."""
    from training.synthetic import SyntheticActivations

    steps = 6
    ref, fast = _trainer_pair(mode, pre_act, to_input, steps)
    assert ref.step_method == "autograd" and fast.step_method == "fast"
    src = SyntheticActivations(16, 64, n_features=40, active=3, seed=7)
    holdout = src.batch(99)
    ref.initialize(holdout)
    fast.initialize(holdout)
    auxes, dead_seen = [], 0
    for i in range(steps):
        x = src.batch(i)
        _, a = ref.train_batch(x)
        _, b = fast.train_batch(x)
        (name,) = a
        sa, sb = a[name], b[name]
        assert sa.loss.item() == pytest.approx(sb.loss.item(), rel=1e-5), i
        assert sa.aux.item() == pytest.approx(sb.aux.item(), rel=1e-5, abs=1e-7), i
        ma, mb = ref.members[0], fast.members[0]
        for n in PARAMS:
            pa, pb = getattr(ma.sae, n), getattr(mb.sae, n)
            torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-6, msg=f"step {i} grad {n}")
            torch.testing.assert_close(pb, pa, rtol=1e-4, atol=1e-6, msg=f"step {i} {n}")
        auxes.append(sa.aux.item())
        dead_seen += int(ma.dead_mask(ref.dead_window).sum())
    if pre_act == 0:
        assert auxes[0] == 0.0 and all(v > 0 for v in auxes[1:])  # coefficient 0 at step 0, then warming up
    else:
        assert dead_seen > 0  # the pre-activation loss had dead latents to work on
    assert not torch.equal(ref.members[0].sae.threshold, torch.full((48,), 1.5))  # thresholds moved


def test_fast_step_equals_the_reference_without_b_dec_subtraction() -> None:
    """Gemma Scope's JumpReLUs read x itself (apply_b_dec_to_input false): b_dec's gradient then
    comes from the decoder alone."""
    sae = _jumprelu("tanh", 0.1, True, apply_b_dec_to_input=False)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.5, generator=torch.Generator().manual_seed(5))
    x = torch.randn(48, 16, generator=torch.Generator().manual_seed(6))
    dead = torch.rand(64, generator=torch.Generator().manual_seed(7)) < 0.3
    grads = {}
    for method in ("autograd", "fast"):
        compute_grads(sae, x, dead, method=method, step=1)
        grads[method] = {n: getattr(sae, n).grad.clone() for n in PARAMS}
    for n in PARAMS:
        torch.testing.assert_close(grads["fast"][n], grads["autograd"][n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("skip", [False, True])
def test_jumprelu_transcoder_fast_step_equals_the_reference(skip: bool) -> None:
    """A JumpReLU (skip) transcoder (`d_out`, transcoders being a mode of every architecture):
    scored against the target less the skip term; W_skip's gradient included."""
    sae = _jumprelu("tanh", 0.2, True, apply_b_dec_to_input=False, d_out=10, skip_connection=skip)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        if skip:
            sae.W_skip.normal_(0, 0.2, generator=g)
    x, y = torch.randn(48, 16, generator=g), torch.randn(48, 10, generator=g)
    dead = torch.rand(64, generator=g) < 0.3
    names = PARAMS + (("W_skip",) if skip else ())
    grads, totals = {}, {}
    for method in ("autograd", "fast"):
        totals[method] = compute_grads(sae, x, dead, method=method, step=2, target_BO=y).total
        grads[method] = {n: getattr(sae, n).grad.clone() for n in names}
    assert totals["fast"].item() == pytest.approx(totals["autograd"].item(), rel=1e-5)
    for n in names:
        torch.testing.assert_close(grads["fast"][n], grads["autograd"][n], rtol=1e-4, atol=1e-6, msg=n)


def test_fast_step_without_a_trainer_warm_up_term_by_step() -> None:
    """compute_grads passes `step` to both methods: the loss differs between steps 0 and 3 of the
    warm-up by exactly the penalty's share."""
    sae = _jumprelu("step", 0.0, l0_coefficient=1.0, l0_warm_up_steps=4)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    for method in ("autograd", "fast"):
        r0 = compute_grads(sae, x, method=method, step=0)
        r3 = compute_grads(sae, x, method=method, step=3)
        l0 = float((sae.encode(x) > 0).sum(1).float().mean())
        assert r0.aux.item() == 0.0
        assert r3.aux.item() == pytest.approx(0.75 * l0, rel=1e-6)


def test_thresholds_stay_non_negative_after_a_step() -> None:
    sae = _jumprelu("step", 0.0)
    with torch.no_grad():
        sae.threshold[:5] = -0.2
    sae.update_inference_form_(torch.zeros(1, 64), saes.SparseActs.from_dense(torch.zeros(1, 64)))
    assert float(sae.threshold.detach().min()) >= 0.0


# ------------------------------------------------------------------------- planted dictionary
G, D_IN, ACTIVE, BATCH, STEPS, INIT = 32, 64, 3, 128, 300, 0.01


def _planted_rows(n: int, seed: int, features_GD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with 3 of the G planted unit directions, magnitudes in [1, 3], plus noise 0.05 per dim."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(G, generator=g)[:ACTIVE] for _ in range(n)])
    codes_NG = torch.zeros(n, G).scatter_(1, idx, 1 + 2 * torch.rand(n, ACTIVE, generator=g))
    return codes_NG, codes_NG @ features_GD + 0.05 * torch.randn(n, D_IN, generator=g)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A JumpReLU trained by `training.train` on the planted rows (thresholds start at 0.01)."""
    from training.run import train

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(G, D_IN, generator=g)
    feats /= feats.norm(dim=1, keepdim=True)
    _, x = _planted_rows(BATCH * (STEPS + 8), 1, feats)
    cfg = RunConfig(saes=[SAESpec("jumprelu", d_sae=G, options={"jumprelu_init_threshold": INIT})],
                    train=TrainConfig(total_tokens=STEPS * BATCH, batch_size=BATCH, holdout_tokens=1024, num_threads=1),
                    optim=OptimConfig(lr=3e-3), checkpoint=CheckpointConfig(every_tokens=0, keep_last=1),
                    eval=EvalConfig(every_tokens=0, ce_contexts=0), log=LogConfig(progress=False))
    out = tmp_path_factory.mktemp("jumprelu") / "run"
    res = train(cfg, list(x.split(BATCH)), out, resume="never")
    codes, x_eval = _planted_rows(4000, 2, feats)
    return res.saes[cfg.saes[0].name], feats, codes, x_eval, out / "saes" / cfg.saes[0].name


def _detector_f1(sae, codes_NG, x_ND, match_G) -> torch.Tensor:
    with torch.no_grad():
        acts = sae.encode(x_ND)
    pred, true = acts[:, match_G] > 0, codes_NG > 0
    tp, fp, fn = (pred & true).sum(0), (pred & ~true).sum(0), (~pred & true).sum(0)
    return 2 * tp / (2 * tp + fp + fn).clamp_min(1)


def test_thresholds_learn_to_separate_noise_from_the_planted_features(planted) -> None:
    """Measured (seed 0): every feature recovered at cosine >= 0.99; thresholds 0.29..0.51 from
    0.01; mean F1 of each feature's latent as its detector 0.990 (min 0.963), and 0.577 with the
    same weights but the initial thresholds (cross-talk and noise fire then: L0 7.6 vs 3.1)."""
    sae, feats, codes, x_eval, _ = planted
    cos_FG = torch.nn.functional.normalize(sae.W_dec.detach(), dim=1) @ feats.T
    best_G, match_G = cos_FG.max(0)
    assert float((best_G > 0.9).float().mean()) >= 0.95, best_G
    thr = sae.threshold.detach()
    assert float(thr.min()) > 10 * INIT, thr  # every threshold moved far from its init
    learned = _detector_f1(sae, codes, x_eval, match_G)
    at_init = copy.deepcopy(sae)
    with torch.no_grad():
        at_init.threshold.fill_(INIT)
    initial = _detector_f1(at_init, codes, x_eval, match_G)
    assert float(learned.mean()) >= 0.95 and float(learned.min()) >= 0.85, learned
    assert float(initial.mean()) <= 0.75, initial  # the weights alone do not separate them: the thresholds do
    l0 = float((sae.encode(x_eval) > 0).sum(1).float().mean())
    assert abs(l0 - ACTIVE) <= 0.5, l0


# --------------------------------------------------------------------------- folders and SAELens
def test_saved_trained_jumprelu_loads_in_sae_lens_and_ours_identically(planted) -> None:
    from sae_lens import SAE as SLSAE

    sae, _, _, x_eval, folder = planted
    cfg = __import__("json").loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu"
    sl = SLSAE.load_from_disk(str(folder))
    assert type(sl).__name__ == "JumpReLUSAE"
    x = x_eval[:500]
    with torch.no_grad():
        ours_acts = sae.encode(x)
        sl_acts = sl.encode(x)
        assert torch.equal(ours_acts != 0, sl_acts != 0)
        torch.testing.assert_close(sl_acts, ours_acts, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sl.decode(sl_acts), sae.decode(ours_acts), rtol=1e-5, atol=1e-5)
    back = saes.load_sae(folder)
    assert type(back) is saes.JumpReLUSAE and isinstance(back.threshold, torch.nn.Parameter)
    for n in PARAMS:
        assert torch.equal(getattr(back, n), getattr(sae, n)), n


def test_trained_jumprelu_reads_exactly_in_steering_and_the_feature_pass(planted) -> None:
    from steering.interventions import LatentEditor, current_activations, op_coefficients, reference_edit

    sae, _, _, x_eval, _ = planted
    x = x_eval[:200]
    assert sae.encoding_rule == "threshold"
    dense = sae.encode(x).detach()
    ids = (dense != 0).sum(0).argsort(descending=True)[:4].tolist()
    got = current_activations(sae, x, ids)
    assert torch.equal(got != 0, dense[:, ids] != 0)
    torch.testing.assert_close(got, dense[:, ids], rtol=1e-5, atol=1e-6)
    ops = [(ids[0], "clamp", 2.5), (ids[1], "scale", 3.0), (ids[2], "ablate", 0.0)]
    coefs = [op_coefficients(op, v) for _, op, v in ops]
    editor = LatentEditor(sae, [f for f, _, _ in ops], [c[0] for c in coefs], [c[1] for c in coefs])
    torch.testing.assert_close(editor.apply(x), reference_edit(sae, x, ops), rtol=1e-5, atol=1e-5)


def test_trained_jumprelu_builds_a_feature_store(planted, tmp_path: Path) -> None:
    from features import BuildConfig, FeatureStore, TensorSource, build_feature_store

    sae, _, _, x_eval, _ = planted
    x = x_eval[:400]
    ctx = torch.randint(2, 30, (40, 10), generator=torch.Generator().manual_seed(0))
    cfg = BuildConfig(top_k=3, n_quantile=4, n_negative=1, negative_pool=6, window_before=1, window_after=1,
                      hist_bins=4, batch_rows=64, n_neighbours=2, checkpoint_rows=0)
    build_feature_store(tmp_path / "f.db", sae, TensorSource(x, ctx, hook_name="blocks.0.hook_resid_post"), cfg,
                        progress=False)
    store = FeatureStore.open(tmp_path / "f.db")
    fires_F = (sae.encode(x) > 0).sum(0)
    for latent in range(0, G, 5):
        f = store.feature(latent)
        assert f.stats.n_fires == int(fires_F[latent]) > 0
        assert f.stats.max_act == pytest.approx(float(sae.encode(x)[:, latent].max()), rel=1e-5)


def test_thresholds_step_at_their_own_learning_rate() -> None:
    """The thresholds are an optimiser param group of their own at TrainConfig.jumprelu_threshold_lr
    (the schedule's factor applied), the weights at the SAE's LR: Adam's first step moves every
    parameter with a gradient by its group's LR (m / sqrt(v) = sign(g)), so one step shows both."""
    from training.synthetic import SyntheticActivations
    from training.trainer import Trainer

    sae_lr, threshold_lr = 1e-4, 0.02
    cfg = RunConfig(saes=[SAESpec("jumprelu", d_sae=64)],
                    train=TrainConfig(total_tokens=4 * 128, batch_size=128, seed=0, jumprelu_threshold_lr=threshold_lr),
                    optim=OptimConfig(lr=sae_lr, warmup_frac=0.5))  # warm-up over 2 steps: factor 0.5 at step 0
    trainer = Trainer(cfg, 16)
    src = SyntheticActivations(16, 128, n_features=64, active=4, seed=2)
    trainer.initialize(src.batch(99))
    m = trainer.members[0]
    assert [g["params"] for g in m.optimizer.param_groups][1] == [m.sae.threshold]
    t0, w0 = m.sae.threshold.detach().clone(), m.sae.W_enc.detach().clone()
    trainer.train_batch(src.batch(0))
    assert [g["lr"] for g in m.optimizer.param_groups] == [sae_lr * 0.5, threshold_lr * 0.5]
    moved_t = (m.sae.threshold.detach() - t0).abs()
    assert int((moved_t > 0).sum()) >= 8  # thresholds with a gradient (the others stay)
    torch.testing.assert_close(moved_t[moved_t > 0], torch.full_like(moved_t[moved_t > 0], threshold_lr * 0.5),
                               rtol=1e-3, atol=0)
    assert float((m.sae.W_enc.detach() - w0).abs().max()) <= sae_lr * 0.5 * 1.001


# ------------------------------------------------------------------------------------ resume
def test_resume_mid_warm_up_is_exact(tmp_path: Path) -> None:
    """A run stopped after its step-3 checkpoint (the penalty still warming up) and resumed ends
    with the same weights, bit for bit, as the run that was never stopped."""
    from training.run import train
    from training.synthetic import SyntheticActivations

    class Crash(Exception):
        pass

    def crash_at_step_3(trainer) -> None:
        if trainer.step == 3:
            raise Crash

    cfg = RunConfig(
        saes=[SAESpec("jumprelu", d_sae=64, options={"l0_warm_up_steps": 6, "pre_act_loss_coefficient": 0.01,
                                                      "jumprelu_sparsity_loss_mode": "tanh"})],
        train=TrainConfig(total_tokens=8 * 128, batch_size=128, holdout_tokens=128, dead_window_fraction=0.01,
                          num_threads=1, step_method="fast", jumprelu_threshold_lr=0.02),
        checkpoint=CheckpointConfig(every_tokens=3 * 128), eval=EvalConfig(every_tokens=0, ce_contexts=0),
        log=LogConfig(progress=False))

    def source():
        return SyntheticActivations(32, 128, n_features=96, active=4, seed=3)

    whole = train(cfg, source(), tmp_path / "whole")
    with pytest.raises(Crash):
        train(cfg, source(), tmp_path / "split", on_step=crash_at_step_3)
    changed = copy.deepcopy(cfg)  # the thresholds' step size is recorded and compared like the others
    changed.train.jumprelu_threshold_lr = 0.03
    with pytest.raises(ConfigMismatchError, match=r"train\.jumprelu_threshold_lr: checkpoint 0\.02, now 0\.03"):
        train(changed, source(), tmp_path / "split", resume="require")
    resumed = train(cfg, source(), tmp_path / "split", resume="require")
    assert resumed.resumed_from is not None and resumed.tokens == whole.tokens
    name = cfg.saes[0].name
    assert name == "jumprelu_f64"
    for n in PARAMS:
        assert torch.equal(getattr(whole.saes[name], n), getattr(resumed.saes[name], n)), n
    assert math.isfinite(float(whole.metrics["saes"][name]["explained_variance"]))


def test_a_checkpoint_whose_thresholds_shared_the_weights_step_size_is_refused(tmp_path: Path, monkeypatch) -> None:
    """A JumpReLU checkpoint from before the thresholds had a param group of their own (one group:
    thresholds at the SAE's LR) cannot resume exactly: refused naming the setting, not torch's
    "different number of parameter groups"."""
    import training.trainer
    from training.run import train
    from training.synthetic import SyntheticActivations

    cfg = RunConfig(saes=[SAESpec("jumprelu", d_sae=32)],
                    train=TrainConfig(total_tokens=4 * 64, batch_size=64, holdout_tokens=64, num_threads=1),
                    checkpoint=CheckpointConfig(every_tokens=2 * 64), eval=EvalConfig(every_tokens=0, ce_contexts=0),
                    log=LogConfig(progress=False))

    def crash_at_step_2(trainer) -> None:
        if trainer.step == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # the old layout: every parameter in one group
        patch.setattr(training.trainer, "param_groups", lambda sae, lr, cfg: [{"params": list(sae.parameters()), "lr": lr}])
        with pytest.raises(KeyboardInterrupt):
            train(cfg, SyntheticActivations(16, 64, seed=1), tmp_path / "old", on_step=crash_at_step_2)
    with pytest.raises(ConfigMismatchError, match="jumprelu_threshold_lr.*1 optimiser param group.*start a new run"):
        train(cfg, SyntheticActivations(16, 64, seed=1), tmp_path / "old", resume="require")


# ------------------------------------------------------------------------------ fine-tuning
def test_fine_tuning_a_sae_lens_jumprelu_starts_from_its_weights_and_trains_its_thresholds(tmp_path: Path) -> None:
    """A JumpReLU is trainable now, so `--init-from` a SAELens (or Gemma Scope) JumpReLU fine-tunes
    it: the SAE flags default to the source's (no k), the run starts from its weights and
    thresholds bit for bit, and the first step moves the thresholds."""
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE as SLJumpReLU
    from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig

    from training.init_from import initialize_from_source, load_source, spec_from_source
    from training.synthetic import SyntheticActivations
    from training.trainer import Trainer

    sl = SLJumpReLU(JumpReLUSAEConfig(d_in=16, d_sae=32))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sl.W_enc.copy_(torch.randn(16, 32, generator=g) / 4)
        sl.b_enc.copy_(torch.randn(32, generator=g) * 0.1)
        sl.W_dec.copy_(torch.nn.functional.normalize(torch.randn(32, 16, generator=g), dim=1))
        sl.threshold.copy_(torch.rand(32, generator=g) * 0.4 + 0.1)
    sl.cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    sl.save_model(tmp_path / "sl")
    loaded = load_source(str(tmp_path / "sl"))
    spec = spec_from_source(loaded)
    assert (spec.architecture, spec.d_sae, spec.name) == ("jumprelu", 32, "jumprelu_f32")
    cfg = RunConfig(saes=[spec], train=TrainConfig(total_tokens=256, batch_size=128, holdout_tokens=128,
                                                   init_from=str(tmp_path / "sl"), num_threads=1),
                    optim=OptimConfig(lr=1e-3))
    trainer = Trainer(cfg, 16)
    initialize_from_source(trainer, loaded, {"hook_name": "blocks.0.hook_resid_post"})
    start = trainer.folded_sae(trainer.members[0])
    for name, t in loaded.sae.state_dict().items():
        assert torch.equal(start.state_dict()[name], t), name
    before = trainer.members[0].sae.threshold.detach().clone()
    trainer.train_batch(SyntheticActivations(16, 128, seed=1).batch(0))
    assert not torch.equal(trainer.members[0].sae.threshold.detach(), before)


def test_default_jumprelu_keeps_its_latents_alive() -> None:
    """The initial threshold scales with the encoder's least-squares init scale c (0.22 here): left
    at 1.0 while the pre-activations shrank by c, 52% of latents never fired at init and 25% were
    dead after 100 steps (the toy world: 96% / 92%). Measured with the fix (seed 0): every latent
    fires at init, dead fraction 0.4% and every latent fires on held-out rows after 100 steps."""
    from training.synthetic import SyntheticActivations
    from training.trainer import Trainer

    torch.manual_seed(0)
    D, F, B, steps = 32, 256, 128, 100
    cfg = RunConfig(saes=[SAESpec("jumprelu", d_sae=F)],  # every JumpReLU setting at its default
                    train=TrainConfig(total_tokens=steps * B, batch_size=B, seed=0), optim=OptimConfig(lr=2e-3))
    trainer = Trainer(cfg, D)
    src = SyntheticActivations(D, B, n_features=4 * D, active=8, seed=1)
    trainer.initialize(torch.cat([src.batch(10_000 + i) for i in range(8)]))
    m = trainer.members[0]
    x_eval = torch.cat([src.batch(20_000 + i) for i in range(16)]) * trainer.scale

    def firing_share() -> float:
        with torch.no_grad():
            return float((m.sae.encode(x_eval) > 0).any(0).float().mean())

    assert firing_share() >= 0.95
    for i in range(steps):
        trainer.train_batch(src.batch(i))
    assert trainer.dead_fraction(m) <= 0.05
    assert firing_share() >= 0.9


def test_init_firing_rate_sets_each_latents_threshold_from_the_held_out_rows() -> None:
    """jumprelu_init_firing_rate r: at init every latent fires on about r of the held-out rows
    (its own quantile), whatever the scale of its pre-activations."""
    from training.synthetic import SyntheticActivations
    from training.trainer import Trainer

    torch.manual_seed(0)
    cfg = RunConfig(saes=[SAESpec("jumprelu", d_sae=64, options={"jumprelu_init_firing_rate": 0.05})],
                    train=TrainConfig(total_tokens=1024, batch_size=128, seed=0), optim=OptimConfig(lr=2e-3))
    trainer = Trainer(cfg, 16)
    holdout = SyntheticActivations(16, 1024, n_features=64, active=4, seed=2).batch(0)
    trainer.initialize(holdout)
    sae = trainer.members[0].sae
    with torch.no_grad():
        rate_F = (sae.encode(holdout * trainer.scale) > 0).float().mean(0)
    torch.testing.assert_close(rate_F, torch.full_like(rate_F, 0.05), atol=2 / 1024, rtol=0)
    with pytest.raises(ValueError, match="jumprelu_init_firing_rate"):
        saes.JumpReLUConfig(d_in=16, d_sae=64, jumprelu_init_firing_rate=1.0)
