"""Pieces of the trainer: schedule, state flattening, collectives-ready threshold update,
decoder-gradient projection, config comparison, checkpoint files, initialisation."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
import torch

from saes import create_sae
from training.checkpoint import (
    capture_rng,
    flatten_state,
    list_checkpoints,
    prune_checkpoints,
    restore_rng,
    unflatten_state,
    write_checkpoint,
)
from training.collectives import Collectives
from training.config import OptimConfig, RunConfig, SAESpec, TrainConfig, config_differences
from training.initialize import estimate_activation_scale, geometric_median
from training.schedule import lr_factor
from training.trainer import Trainer
from training.update import remove_parallel_decoder_grad_


def test_schedule_warmup_constant_decay() -> None:
    cfg = OptimConfig(warmup_frac=0.1, decay="linear", decay_start_frac=0.5, final_lr_frac=0.0)
    f = [lr_factor(s, 100, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[10:50] == [1.0] * 40
    assert f[50] < 1.0 and f[-1] == pytest.approx(0.0) and all(a >= b for a, b in zip(f[10:], f[11:]))
    cos = OptimConfig(warmup_frac=0.0, decay="cosine", decay_start_frac=0.0, final_lr_frac=0.1)
    assert lr_factor(99, 100, cos) == pytest.approx(0.1) and lr_factor(49, 100, cos) == pytest.approx(0.55)
    assert lr_factor(5, 100, OptimConfig(warmup_frac=0.0, decay="constant")) == 1.0


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="SAESpec.k"):
        SAESpec("topk", d_sae=8, k=16)
    with pytest.raises(ValueError, match="architecture"):
        SAESpec("relu")
    with pytest.raises(ValueError, match="decay_start_frac"):
        OptimConfig(warmup_frac=0.5, decay_start_frac=0.2)
    with pytest.raises(ValueError, match="duplicate names"):
        RunConfig(saes=[SAESpec(), SAESpec()])
    with pytest.raises(ValueError, match="unknown key"):
        RunConfig.from_dict({"train": {"totl_tokens": 5}})
    assert SAESpec("matryoshka").architecture == "matryoshka_batchtopk"


def test_config_differences_whitelist() -> None:
    a = RunConfig(saes=[SAESpec("topk", k=8)]).to_dict()
    b = RunConfig(saes=[SAESpec("topk", k=8, name="topk_k8_f4096"), SAESpec("batchtopk")],
                  train=TrainConfig(total_tokens=5, num_threads=3)).to_dict()
    b["log"]["wandb"] = True
    b["optim"]["lr"] = 0.1
    diffs = config_differences(a, b)
    assert any(d.startswith("saes.len") for d in diffs) and any(d.startswith("saes.1.") for d in diffs)
    assert any(d.startswith("optim.lr:") for d in diffs)
    assert not any("total_tokens" in d or "num_threads" in d or "log." in d for d in diffs)
    assert RunConfig.from_dict(a) == RunConfig(saes=[SAESpec("topk", k=8)])


def test_flatten_state_round_trip_with_optimizer() -> None:
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.Adam([p], lr=1e-3, betas=(0.8, 0.99))
    p.grad = torch.randn(4, 3)
    opt.step()
    tensors: dict[str, torch.Tensor] = {}
    obj = {"opt": opt.state_dict(), "np": np.arange(5, dtype=np.uint32), "t": (1, 2.5, None), "s": "x"}
    flat = flatten_state(obj, "o", tensors)
    import json

    back = unflatten_state(json.loads(json.dumps(flat)), tensors)
    assert back["t"] == (1, 2.5, None) and back["s"] == "x"
    assert back["np"].dtype == np.uint32 and back["np"].tolist() == [0, 1, 2, 3, 4]
    assert back["opt"]["param_groups"][0]["betas"] == (0.8, 0.99)
    opt2 = torch.optim.Adam([torch.nn.Parameter(p.detach().clone())], lr=1e-3)
    opt2.load_state_dict(back["opt"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_rng_capture_restore() -> None:
    tensors: dict[str, torch.Tensor] = {}
    state = capture_rng(tensors)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng(state, tensors)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


class _TwoRankLooking(Collectives):
    """Takes the reduced code path; the 'other rank' contributes nothing."""

    world_size = 2


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka_batchtopk"])
def test_threshold_update_reduced_over_ranks_equals_the_local_one(arch: str) -> None:
    g = torch.Generator().manual_seed(0)
    a = create_sae(arch, 8, 32, k=3, generator=g)
    b = create_sae(arch, 8, 32, k=3, generator=torch.Generator().manual_seed(0))
    for step in range(4):
        x = torch.randn(64, 8, generator=g)
        with torch.no_grad():
            pre = a.pre_activations(x)
        acts = a.training_select(pre)
        a.update_inference_form_(pre, acts, lr=0.05)
        b.update_inference_form_(pre, acts, lr=0.05, reduce=_TwoRankLooking())
        assert torch.equal(a.threshold, b.threshold), step


def test_parallel_decoder_gradient_removed_and_rows_unit_after_step() -> None:
    sae = create_sae("topk", 6, 10, k=2)
    sae.W_dec.grad = torch.randn(10, 6)
    remove_parallel_decoder_grad_(sae)
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(10), atol=1e-6)
    cfg = RunConfig(saes=[SAESpec("topk", d_sae=10, k=2)], train=TrainConfig(batch_size=32, step_method="autograd"))
    tr = Trainer(cfg, 6)
    tr.train_batch(torch.randn(32, 6) * 5)
    assert torch.allclose(tr.members[0].sae.W_dec.norm(dim=1), torch.ones(10), atol=1e-6)
    assert tr.step == 1 and tr.tokens == 32


def test_activation_scale_and_geometric_median() -> None:
    x = torch.randn(2000, 16) * 7 + 3
    s = estimate_activation_scale(x)
    assert (x * s).norm(dim=1).mean().item() == pytest.approx(4.0, rel=1e-5)
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])
    gm = geometric_median(pts)
    dist = lambda y: (pts - y).norm(dim=1).sum()  # noqa: E731
    assert dist(gm) <= dist(pts.mean(0)) and dist(gm) <= dist(gm + torch.tensor([0.01, 0.0])) + 1e-4
    with pytest.raises(ValueError, match="mean norm"):
        estimate_activation_scale(torch.zeros(4, 3))


def test_checkpoint_pruning_and_listing(tmp_path) -> None:
    for step in (3, 10, 7):
        write_checkpoint(tmp_path, step, {"k": step}, {"t": torch.ones(2) * step})
    (tmp_path / "step_0000000011").mkdir()  # no state.json: not a checkpoint
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000000003", "step_0000000007", "step_0000000010"]
    prune_checkpoints(tmp_path, 2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000000007", "step_0000000010"]
    assert not any(p.name.startswith((".tmp", ".del")) for p in tmp_path.iterdir())


def test_two_runs_cannot_share_an_output_folder(tmp_path) -> None:
    from training.synthetic import SyntheticActivations
    from training.run import lock_run_dir, train

    with lock_run_dir(tmp_path):
        with pytest.raises(FileExistsError, match="another training run"):
            train(RunConfig(saes=[SAESpec("topk", d_sae=16, k=2)]), SyntheticActivations(4, 8), tmp_path)


@pytest.mark.parametrize("method", ["autograd", "fast", "fast_bf16", "fast_native", "fast_native_bf16"])
def test_every_step_method_trains(method: str) -> None:
    from saes.step import STEP_METHODS

    if method not in STEP_METHODS:
        pytest.skip(f"step method {method} not registered")
    if "native" in method:
        from saes import native

        if not native.available():
            pytest.skip("no C++ compiler for the native kernels")
    specs = [SAESpec("topk", d_sae=64, k=4), SAESpec("batchtopk", d_sae=64, k=4),
             SAESpec("matryoshka", d_sae=64, k=4, matryoshka_widths=[16, 64])]
    tr = Trainer(RunConfig(saes=specs, train=TrainConfig(batch_size=128, step_method=method, dead_tokens=128)), 16)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(128, 16, generator=g)
    tr.initialize(x0)
    for _ in range(4):
        _, stats = tr.train_batch(torch.randn(128, 16, generator=g))
    assert not any(st.skipped for st in stats.values())
    for m in tr.members:
        assert all(bool(torch.isfinite(t).all()) for t in m.sae.state_dict().values())
        assert int(m.since_fired_F.max()) <= 4 * 128
    assert bool((tr.members[1].sae.threshold > 0).all())


def test_a_field_newer_than_the_checkpoint_counts_as_its_default() -> None:
    """A run saved before train.init_from existed resumes (and the demo reuses it); a newer field
    set to a non-default value, or a whole new SAE, still differs."""
    saved = RunConfig(saes=[SAESpec("topk", k=8)]).to_dict()
    del saved["train"]["init_from"], saved["saes"][0]["lr"]
    assert config_differences(saved, RunConfig(saes=[SAESpec("topk", k=8)]).to_dict()) == []
    changed = RunConfig(saes=[SAESpec("topk", k=8, lr=1e-3)], train=TrainConfig(init_from="/x/sae")).to_dict()
    diffs = config_differences(saved, changed)
    assert any(d.startswith("train.init_from: checkpoint '<absent>'") for d in diffs)
    assert any(d.startswith("saes.0.lr:") for d in diffs)
    two = RunConfig(saes=[SAESpec("topk", k=8), SAESpec("batchtopk")]).to_dict()
    assert any(d.startswith("saes.1.") for d in config_differences(saved, two))


def test_an_architecture_without_k_neither_records_nor_compares_k() -> None:
    """JumpReLU has no k: a spec that gives one is refused naming SAESpec.k (a config file's k was
    dropped without a word), its record names none, and a checkpoint or config.json saved when
    JumpReLU specs still recorded the default k=32 (or a TopK spec the empty Matryoshka widths) still
    reads and resumes; a k change of an SAE that has k is still refused."""
    from saes.validators import ConfigError

    with pytest.raises(ConfigError, match=r"SAESpec.k is 8 but architecture 'jumprelu' has no k") as refused:
        SAESpec("jumprelu", d_sae=64, k=8)
    assert refused.value.field == "k"
    spec = SAESpec("jumprelu", d_sae=64)
    assert spec.k is None and spec.name == "jumprelu_f64"
    run = RunConfig(saes=[spec, SAESpec("topk", d_sae=64)])
    recorded = run.to_dict()["saes"]
    assert "k" not in recorded[0] and "matryoshka_widths" not in recorded[0] and "matryoshka_widths" not in recorded[1]
    assert recorded[1]["k"] == 32
    old = run.to_dict()
    old["saes"][0].update(k=32, matryoshka_widths=[])  # as this version's predecessors wrote it
    old["saes"][1]["matryoshka_widths"] = []
    assert config_differences(old, run.to_dict()) == []
    assert config_differences(old, RunConfig(saes=[SAESpec("jumprelu", d_sae=64), SAESpec("topk", d_sae=64)]).to_dict()) == []
    assert RunConfig.from_dict(old).saes[0].k is None
    changed_k = RunConfig(saes=[spec, SAESpec("topk", d_sae=64, k=16, name="topk_k32_f64")]).to_dict()
    assert config_differences(old, changed_k) == ["saes.1.k: checkpoint 32, now 16"]


def test_the_threshold_lr_is_compared_only_for_a_run_with_learned_thresholds() -> None:
    """train.jumprelu_threshold_lr steps only the parameters an SAE class declares
    (`own_lr_parameters`): a TopK run resumes with another value, a run with a JumpReLU does not."""
    def run(archs, lr):
        return RunConfig(saes=[SAESpec(a, d_sae=64) for a in archs], train=TrainConfig(jumprelu_threshold_lr=lr)).to_dict()

    assert config_differences(run(["topk", "batchtopk"], 0.01), run(["topk", "batchtopk"], 0.05)) == []
    assert config_differences(run(["topk", "jumprelu"], 0.01), run(["topk", "jumprelu"], 0.05)) == [
        "train.jumprelu_threshold_lr: checkpoint 0.01, now 0.05"]


def test_run_wide_settings_are_compared_for_the_sae_classes_that_read_them(monkeypatch) -> None:
    """Each class says which of ARCHITECTURE_SETTINGS its training reads (`train_settings`); a run
    compares the union over its SAEs. A subclass that redefines what reads them (here: AuxK brought
    back into a JumpReLU) without saying counts as reading all of them, as does an unknown
    architecture."""
    import saes.registry
    from saes.base import SAE
    from saes.jumprelu import JumpReLUSAE

    changed = {"aux_coef": 0.5, "k_aux": 7, "threshold_lr": 0.9, "jumprelu_threshold_lr": 0.05}

    def diffs(archs):
        def run(**train):
            return RunConfig(saes=[SAESpec(a, d_sae=64) for a in archs], train=TrainConfig(**train)).to_dict()
        return sorted(d.split(":")[0] for d in config_differences(run(), run(**changed)))

    assert diffs(["jumprelu"]) == ["train.jumprelu_threshold_lr"]
    assert diffs(["topk"]) == ["train.aux_coef", "train.k_aux"]
    assert diffs(["matryoshka_batchtopk"]) == diffs(["batchtopk"]) == ["train.aux_coef", "train.k_aux", "train.threshold_lr"]
    assert diffs(["topk", "jumprelu"]) == ["train.aux_coef", "train.jumprelu_threshold_lr", "train.k_aux"]

    class AuxJumpSAE(JumpReLUSAE):
        architecture = "test_aux_jump"

        def auxiliary_loss(self, pre_BF, residual_BD, dead_mask_F, k_aux, method="embedding_bag"):
            return SAE.auxiliary_loss(self, pre_BF, residual_BD, dead_mask_F, k_aux, method)

    assert AuxJumpSAE.train_settings is None and JumpReLUSAE.train_settings == frozenset()
    monkeypatch.setitem(saes.registry.ARCHITECTURES, "test_aux_jump", AuxJumpSAE)
    saved = RunConfig(saes=[SAESpec("jumprelu", d_sae=64)]).to_dict()
    saved["saes"][0]["architecture"] = "test_aux_jump"
    now = json.loads(json.dumps(saved))
    now["train"].update(changed)
    assert len(config_differences(saved, now)) == 4
    saved["saes"][0]["architecture"] = now["saes"][0]["architecture"] = "not_registered"
    assert len(config_differences(saved, now)) == 4


def test_parameters_with_their_own_step_size_are_the_ones_the_sae_class_declares() -> None:
    """The optimiser's threshold group is what the class declares (`own_lr_parameters`), not an
    attribute named `threshold`: a threshold-like parameter of another name gets the threshold LR
    when declared; a name that is not a parameter is refused naming it."""
    from torch import nn

    from saes.jumprelu import JumpReLUSAE
    from training.trainer import param_groups

    class CutoffSAE(JumpReLUSAE):  # JumpReLU's thresholds under another name
        architecture = "test_cutoff"
        own_lr_parameters = ("cutoff",)

        def _make_threshold(self, initial_F: torch.Tensor) -> None:
            self.cutoff = nn.Parameter(initial_F.fill_(self.cfg.jumprelu_init_threshold))

    cfg = RunConfig(train=TrainConfig(jumprelu_threshold_lr=0.03))
    sae = CutoffSAE(CutoffSAE.config_class(d_in=8, d_sae=16))
    groups = param_groups(sae, 1e-4, cfg)
    assert [g["lr"] for g in groups] == [1e-4, 0.03]
    assert groups[1]["params"] == [sae.cutoff] and not any(p is sae.cutoff for p in groups[0]["params"])
    assert len(groups[0]["params"]) == len(list(sae.parameters())) - 1
    jump = create_sae("jumprelu", 8, 16)  # JumpReLU as before: the same groups, in the same order
    groups = param_groups(jump, 1e-4, cfg)
    assert groups[1]["params"] == [jump.threshold] and groups[0]["params"] == [p for n, p in jump.named_parameters()
                                                                                if n != "threshold"]
    assert len(param_groups(create_sae("topk", 8, 16, k=2), 1e-4, cfg)) == 1

    class Misnamed(CutoffSAE):
        own_lr_parameters = ("threshold",)

    with pytest.raises(TypeError, match="Misnamed.own_lr_parameters names threshold"):
        param_groups(Misnamed(Misnamed.config_class(d_in=8, d_sae=16)), 1e-4, cfg)


def test_restore_refuses_a_checkpoint_of_another_target_width_by_its_saved_d_out() -> None:
    """The saved run config's d_out decides, not the tensors' shapes: an SAE's checkpoint (no
    target) has the shapes of a transcoder whose target is as wide as its input, and loaded
    into one silently before."""
    from training.trainer import ConfigMismatchError

    cfg = RunConfig(saes=[SAESpec("topk", d_sae=32, k=2)], train=TrainConfig(batch_size=8))

    def payload(d_out):
        state, tensors = Trainer(cfg, 16, d_out=d_out).checkpoint_payload({"kind": "replay", "batches": 0})
        return {**state, "step": 0}, tensors  # as write_checkpoint saves it

    for saved, now in ((None, 16), (16, None), (16, 24)):
        state, tensors = payload(saved)
        words = {None: "no target (an SAE)", 16: "a target of width d_out=16", 24: "a target of width d_out=24"}
        want = f"target_hook: the checkpoint's run has {words[saved]}, this run has {words[now]}"
        with pytest.raises(ConfigMismatchError, match=re.escape(want)) as e:
            Trainer(cfg, 16, d_out=now).restore(state, tensors)
        assert e.value.field == "target_hook"
    state, tensors = payload(16)
    assert Trainer(cfg, 16, d_out=16).restore(state, tensors) == {"kind": "replay", "batches": 0}


def test_wandb_gets_the_same_numbers_of_a_record_through_record_and_final(tmp_path) -> None:
    """`RunLogger.record` and `.final` flattened records for wandb each their own way: `record` sent a
    bool (the final record's "final": true, a metric's flag) as a metric, `final` left bools out.
    One flattening (`wandb_point`): numbers only, bools never, the step as wandb's step."""
    from training.logs import RunLogger

    class FakeRun:
        def __init__(self) -> None:
            self.logged: list[tuple[dict, int | None]] = []
            self.summary: dict = {}

        def log(self, values, step=None):
            self.logged.append((values, step))

    logger = RunLogger(tmp_path, total_tokens=100, start_tokens=0, progress=False)
    logger._wandb = run = FakeRun()
    final = {"kind": "eval", "step": 7, "tokens": 70, "final": True, "a/fvu": 0.25, "a/l0": 3, "a/saturated": False,
             "a/note": "text"}
    logger.record(final)
    logger.final(final)
    logger.record({"kind": "train", "step": 8, "tokens": 80, "a/loss": 1.5, "a/flag": True})
    logger.record({"kind": "skip", "step": 9, "tokens": 90, "sae": "a", "loss": float("inf")})
    want = {"tokens": 70, "eval/a/fvu": 0.25, "eval/a/l0": 3}
    assert run.logged[0] == run.logged[1] == (want, 7)
    assert run.summary == want
    assert run.logged[2] == ({"tokens": 80, "a/loss": 1.5}, 8)
    assert run.logged[3] == ({"tokens": 90, "skip/loss": float("inf")}, 9)
    logger._wandb = None  # nothing to finish: the fake run is not wandb's
    logger.close()
    assert (tmp_path / "history.jsonl").read_text().count("\n") == 3  # the history file gets every record
