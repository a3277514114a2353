"""Training transcoders on a tiny TransformerLens model's paired cache (input: blocks.0.ln2.hook_normalized,
target: blocks.0.hook_mlp_out): every trainable architecture, skip and not, exact resume; the eval
splices the prediction in place of the MLP; bad hook pairs are refused in one line."""

from __future__ import annotations

import math

import pytest
import torch

import saes
from helpers.tiny_model import write_corpus
from saes.hookpoints import HookPairError, UnknownHookError, check_transcoder_hooks
from training import RunConfig, SAESpec, train
from training.cache import build_cache
from training.cache_config import CacheConfig
from training.config import CheckpointConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig
from training.evaluate import ModelEval, splice_metrics
from training.reader import CacheReader
from training.text import TextConfig
from helpers.forwards import count_forwards

pytestmark = [pytest.mark.usefixtures("one_thread")]

H_IN = "blocks.0.ln2.hook_normalized"
H_OUT = "blocks.0.hook_mlp_out"
B = 64


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def cache(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("tct")
    write_corpus(root / "corpus", n_docs=60, seed=2)
    text = TextConfig(dataset=str(root / "corpus"), context_length=16)
    cfg = CacheConfig(out=str(root / "cache"), hooks=[H_IN, H_OUT], dtype="fp32", shard_contexts=8, batch_size=8)
    build_cache(model, text, cfg, progress=False, log=None)
    return root / "cache"


def run_config(step_method="fast", every=8 * B):
    specs = [SAESpec("topk", d_sae=64, k=4), SAESpec("batchtopk", d_sae=64, k=4, skip=True),
             SAESpec("matryoshka", d_sae=64, k=4, matryoshka_widths=[16, 64], skip=True)]
    return RunConfig(saes=specs, train=TrainConfig(total_tokens=32 * B, batch_size=B, holdout_tokens=128,
                                                   step_method=step_method, seed=1),
                     optim=OptimConfig(lr=1e-2),
                     checkpoint=CheckpointConfig(every_tokens=every, keep_last=2),
                     eval=EvalConfig(every_tokens=0, ce_contexts=4, ce_batch_size=4),
                     log=LogConfig(progress=False))


def reader(cache):
    return CacheReader(cache, B, hook=H_IN, target_hook=H_OUT, seed=1, epochs=None, buffer_rows=400)


def model_eval(model, cache):
    from training.sources import contexts_from_cache

    return ModelEval(model, H_OUT, contexts_from_cache(cache, 4), input_hook=H_IN)


class Stop(Exception):
    pass


def test_train_resume_save_and_splice(model, cache, tmp_path):
    prov = {"hook_name": H_IN, "hook_name_out": H_OUT}
    seen = []
    straight = train(run_config(), reader(cache), tmp_path / "a", provenance=prov, model_eval=model_eval(model, cache),
                     on_step=seen.append)
    names = [s.name for s in run_config().saes]
    assert names[1].endswith("_skip")
    metrics = straight.metrics["saes"]
    for name in names:
        m = metrics[name]
        assert m["d_out"] == 32 and m["target_hook"] == H_OUT
        # EV of the MLP's output on the held-out rows; measured 0.29-0.51 after 16 steps, 0.55-0.76 after 48
        assert m["explained_variance"] > 0.3, (name, m["explained_variance"])
        assert 0.0 < m["ce_loss_recovered"] <= 1.05 and m["kl_div"] >= 0
    # the saved folders are transcoders reading raw activations
    sae = saes.load_sae(straight.sae_dirs[names[1]])
    assert sae.is_transcoder and sae.W_skip is not None and sae.cfg.metadata["hook_name_out"] == H_OUT
    it = iter(reader(cache))  # the held-out rows: the stream's first 128
    x, y = (torch.cat(t) for t in zip(*[(b.acts, b.targets) for b in (next(it), next(it))]))
    with torch.no_grad():
        fvu = float((sae(x).recon - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    assert 1 - fvu == pytest.approx(metrics[names[1]]["explained_variance"], abs=1e-4)
    trainer = seen[-1]  # raw in, raw out: saved(x) == trained(s_in x) / s_out, W_skip scaled by s_in / s_out
    assert abs(math.log(trainer.target_scale / trainer.scale)) > 0.1
    with torch.no_grad():
        want = trainer.members[1].sae(x * trainer.scale).recon / trainer.target_scale
        torch.testing.assert_close(sae(x).recon, want, rtol=1e-4, atol=1e-4)

    # killed after its step-8 checkpoint, then resumed: the same weights bit for bit
    def stop_at(trainer):
        if trainer.step == 20:
            raise Stop

    with pytest.raises(Stop):
        train(run_config(), reader(cache), tmp_path / "b", provenance=prov, on_step=stop_at)
    resumed = train(run_config(), reader(cache), tmp_path / "b", provenance=prov)
    assert resumed.resumed_from is not None and resumed.resumed_from.name.endswith("16")
    for name in names:
        a, b = straight.saes[name].state_dict(), resumed.saes[name].state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


def test_the_end_of_run_ce_evaluation_runs_the_clean_pass_once(model, cache, tmp_path, monkeypatch):
    """The final CE loss recovered of each SAE ran its own clean and zero-ablated passes (3 forward
    passes per SAE and batch). Now one clean pass and one zero-ablated pass for the run's SAEs, one
    spliced pass per SAE, and each figure equals `splice_metrics` of that saved SAE alone."""
    from training.evaluate import sae_reconstructor

    calls = count_forwards(monkeypatch, model)
    cfg = run_config(every=0)
    cfg.train.total_tokens = 4 * B
    ev = model_eval(model, cache)
    got = train(cfg, reader(cache), tmp_path / "ce", model_eval=ev)
    n_saes = len(cfg.saes)
    assert calls.count((4, 16)) == 1 + n_saes + 1, calls  # ce_contexts=4 in one batch: clean + spliced x3 + zero
    for name, sae in got.saes.items():
        alone = splice_metrics(model, sae_reconstructor(sae), H_OUT, ev.tokens[:4], batch_size=4, input_hook=H_IN)
        m = got.metrics["saes"][name]
        assert (m["ce_loss_clean"], m["ce_loss_spliced"], m["ce_loss_zero"], m["ce_loss_recovered"], m["kl_div"]) == (
            alone.ce_loss_clean, alone.ce_loss_spliced, alone.ce_loss_zero, alone.ce_loss_recovered, alone.kl_div)


def test_resume_without_the_target_is_refused(model, cache, tmp_path):
    """The saved reader position names the target hook: a reader of the input hook alone is another stream."""
    def stop_at(trainer):
        if trainer.step == 9:
            raise Stop

    with pytest.raises(Stop):
        train(run_config(), reader(cache), tmp_path / "c", on_step=stop_at)
    sae_reader = CacheReader(cache, B, hook=H_IN, seed=1, epochs=None, buffer_rows=400)
    with pytest.raises(ValueError, match="target_hook"):
        train(run_config(), sae_reader, tmp_path / "c")


def test_fast_step_run_equals_autograd_run(cache, tmp_path):
    """The whole run with the hand-written step and with the autograd reference: same weights (fp32 rounding)."""
    fast = train(run_config("fast", every=0), reader(cache), tmp_path / "f")
    ref = train(run_config("autograd", every=0), reader(cache), tmp_path / "r")
    for name, sae in fast.saes.items():
        for key, t in sae.state_dict().items():
            torch.testing.assert_close(t, ref.saes[name].state_dict()[key], rtol=2e-3, atol=2e-4, msg=f"{name}/{key}")


def test_splice_replaces_the_mlp_output_from_the_input_hook(model, cache):
    """With the MLP itself as the 'transcoder' the spliced model is the clean one (recovered 1, KL 0);
    a zero prediction is the MLP-ablated model (recovered 0). A splice that fed the target hook's own
    activation to the transcoder would give neither."""
    from training.sources import contexts_from_cache

    toks = contexts_from_cache(cache, 4)
    mlp = model.blocks[0].mlp
    exact = splice_metrics(model, mlp, H_OUT, toks, input_hook=H_IN)
    assert exact.ce_loss_recovered == pytest.approx(1.0, abs=1e-5) and exact.kl_div == pytest.approx(0.0, abs=1e-6)
    zero = splice_metrics(model, torch.zeros_like, H_OUT, toks, input_hook=H_IN)
    assert zero.ce_loss_recovered == pytest.approx(0.0, abs=1e-6)
    assert exact.ce_loss_zero == zero.ce_loss_zero != exact.ce_loss_clean
    with torch.no_grad():
        ablated = model.run_with_hooks(toks.long(), fwd_hooks=[(H_OUT, lambda a, hook: torch.zeros_like(a))])
    ce = torch.nn.functional.cross_entropy(ablated[:, :-1].reshape(-1, ablated.shape[-1]), toks.long()[:, 1:].reshape(-1))
    assert exact.ce_loss_zero == pytest.approx(float(ce), rel=1e-5)


def test_bad_hook_pairs_are_refused_in_one_line(model):
    assert check_transcoder_hooks(model, H_IN, H_OUT) == (32, 32)
    assert check_transcoder_hooks(model, "blocks.0.hook_resid_mid", "blocks.1.hook_mlp_out") == (32, 32)
    cases = [
        (("blocks.0.ln2.hook_normalised", H_OUT, {}), UnknownHookError, "Did you mean"),
        ((H_OUT, H_IN, {}), HookPairError, "runs before"),
        ((H_IN, H_IN, {}), HookPairError, "both"),
        ((H_IN, H_OUT, {"d_out": 48}), HookPairError, "d_out is 48"),
        ((H_IN, "blocks.0.mlp.hook_post", {}), None, None),  # 128 wide: fine without an expected width
    ]
    for (hin, hout, kw), err, text in cases:
        if err is None:
            assert check_transcoder_hooks(model, hin, hout, **kw) == (32, 128)
            continue
        with pytest.raises(err, match=text) as e:
            check_transcoder_hooks(model, hin, hout, **kw)
        assert "\n" not in str(e.value)


def test_an_sae_run_still_folds_its_own_scale(cache, tmp_path):
    """Beside transcoders, a plain SAE run (no target) saves an SAE that reads and reconstructs raw
    activations: saved(x) == trained(scale * x) / scale, the input scale folded into both sides."""
    cfg = run_config(every=0)
    cfg.saes = [SAESpec("topk", d_sae=64, k=4)]
    cfg.eval.ce_contexts = 0
    seen = []
    res = train(cfg, CacheReader(cache, B, hook=H_OUT, seed=1, epochs=None, buffer_rows=400), tmp_path / "s",
                on_step=seen.append)
    trainer, saved = seen[-1], res.saes["topk_k4_f64"]
    assert not saved.is_transcoder and abs(math.log(trainer.scale)) > 0.15  # 1.25 measured: a missing fold shows
    x = next(iter(CacheReader(cache, B, hook=H_OUT, seed=1)))[0]
    with torch.no_grad():
        want = trainer.members[0].sae(x * trainer.scale).recon / trainer.scale
        torch.testing.assert_close(saved(x).recon, want, rtol=1e-4, atol=1e-4)
