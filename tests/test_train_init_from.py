"""Fine-tuning (`TrainConfig.init_from`, `saesteer train --init-from`): a run starts from another
SAE's weights exactly, records where they came from, refuses a source that does not fit the run
(naming both sides), and resumes as any run does."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("sae_lens")

from saes import load_sae, read_provenance  # noqa: E402
from saes.step import compute_grads  # noqa: E402
from training.config import CheckpointConfig, EvalConfig, LogConfig, OptimConfig, RunConfig, SAESpec, TrainConfig  # noqa: E402
from training.init_from import InitFromError, initialize_from_source, load_source, weights_sha256  # noqa: E402
from training.schedule import lr_factor  # noqa: E402
from training.synthetic import SyntheticActivations  # noqa: E402
from training.run import train  # noqa: E402
from training.trainer import ConfigMismatchError, Trainer  # noqa: E402

D, F, K, B = 16, 64, 4, 256
HOOK = "blocks.0.hook_resid_post"


def sae_lens_topk_folder(path: Path, d_in: int = D, hook: str = HOOK, model_name: str | None = None, seed: int = 3,
                         prepend_bos: bool | None = None) -> Path:
    """A TopK SAE made and saved by SAELens itself (unit decoder rows, as SAELens saves them)."""
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    sl = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=F, k=K, rescale_acts_by_decoder_norm=False))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sl.W_enc.copy_(torch.randn(d_in, F, generator=g) / d_in**0.5)
        sl.b_enc.copy_(torch.randn(F, generator=g) * 0.1)
        W = torch.randn(F, d_in, generator=g)
        sl.W_dec.copy_(W / W.norm(dim=1, keepdim=True))
        sl.b_dec.copy_(torch.randn(d_in, generator=g) * 0.1)
    sl.cfg.metadata.hook_name = hook
    if model_name:
        sl.cfg.metadata.model_name = model_name
    if prepend_bos is not None:
        sl.cfg.metadata.prepend_bos = prepend_bos
    sl.save_model(path)
    return path


def run_config(init_from: str | None, total: int = 2 * B, **train_kw) -> RunConfig:
    return RunConfig(
        saes=[SAESpec("topk", d_sae=F, k=K)],
        train=TrainConfig(total_tokens=total, batch_size=B, holdout_tokens=B, step_method="fast", init_from=init_from,
                          num_threads=1, **train_kw),
        optim=OptimConfig(lr=1e-3),
        checkpoint=CheckpointConfig(every_tokens=B), eval=EvalConfig(every_tokens=0, ce_contexts=0),
        log=LogConfig(progress=False),
    )


def data(d_in: int = D, n: int | None = None) -> SyntheticActivations:
    return SyntheticActivations(d_in=d_in, batch_size=B, seed=11, n_batches=n)


def test_fine_tuning_a_sae_lens_sae_starts_from_its_weights_and_steps_like_the_reference(tmp_path: Path) -> None:
    src = sae_lens_topk_folder(tmp_path / "sl")
    loaded = load_source(str(src))
    cfg = run_config(str(src))
    trainer = Trainer(cfg, D)
    initialize_from_source(trainer, loaded, {"hook_name": HOOK})
    m = trainer.members[0]
    # step 0: the SAE the run starts from is the source, bit for bit (unit rows: the source's own scale, 1)
    assert trainer.scale == 1.0
    start = trainer.folded_sae(m)
    for name, t in loaded.sae.state_dict().items():
        assert torch.equal(start.state_dict()[name], t), name

    # one step of the trainer (fast path) equals the eager reference step from the source's weights
    x = next(iter(data()))
    ref = copy.deepcopy(loaded.sae)
    params = [ref.W_enc, ref.b_enc, ref.W_dec, ref.b_dec]
    compute_grads(ref, x, torch.zeros(F, dtype=torch.bool), aux_coef=cfg.train.aux_coef, k_aux=cfg.train.k_aux,
                  method="autograd")
    with torch.no_grad():  # the decoder gradient along each (unit) row removed, Adam, rows back to unit norm
        g = ref.W_dec.grad
        g -= (g * ref.W_dec).sum(1, keepdim=True) * ref.W_dec
    lr = 1e-3 * lr_factor(0, cfg.train.total_steps, cfg.optim)
    torch.optim.Adam(params, lr=lr, betas=(cfg.optim.adam_beta1, cfg.optim.adam_beta2), eps=cfg.optim.adam_eps).step()
    with torch.no_grad():
        ref.W_dec /= ref.W_dec.norm(dim=1, keepdim=True)
    trainer.train_batch(x)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(m.sae, name), getattr(ref, name), rtol=1e-5, atol=1e-6)
    assert not torch.equal(m.sae.W_enc, loaded.sae.W_enc)  # it did move


def test_fine_tuning_our_own_sae_continues_in_its_training_space(tmp_path: Path) -> None:
    first = train(RunConfig(saes=[SAESpec("batchtopk", d_sae=F, k=K)],
                            train=TrainConfig(total_tokens=2 * B, batch_size=B, holdout_tokens=B, step_method="fast"),
                            checkpoint=CheckpointConfig(every_tokens=0), eval=EvalConfig(every_tokens=0, ce_contexts=0),
                            log=LogConfig(progress=False)), data(), tmp_path / "first", provenance={"hook_name": HOOK})
    folder = first.sae_dirs["batchtopk_k4_f64"]
    loaded = load_source(str(folder))
    cfg = RunConfig(saes=[SAESpec("batchtopk", d_sae=F, k=K)],
                    train=TrainConfig(total_tokens=2 * B, batch_size=B, holdout_tokens=B, init_from=str(folder)))
    trainer = Trainer(cfg, D)
    initialize_from_source(trainer, loaded, {"hook_name": HOOK})
    assert trainer.scale == pytest.approx(first.metrics["activation_scale"], rel=1e-5)
    start = trainer.folded_sae(trainer.members[0])
    for name, t in loaded.sae.state_dict().items():  # the threshold too
        torch.testing.assert_close(start.state_dict()[name], t, rtol=1e-6, atol=1e-7)


def test_the_saved_sae_records_its_source_and_resume_ignores_or_refuses_init_from(tmp_path: Path) -> None:
    src = sae_lens_topk_folder(tmp_path / "sl")
    out = tmp_path / "run"
    res = train(run_config(str(src)), data(), out, provenance={"hook_name": HOOK})
    rec = read_provenance(res.sae_dirs["topk_k4_f64"])["init_from"]
    assert rec["spec"] == str(src.resolve()) and rec["format"] == "sae_lens" and rec["architecture"] == "topk"
    assert rec["weights_sha256"] == weights_sha256(load_source(str(src)).sae)
    assert rec["files"]["sae_weights.safetensors"]  # the source file's own checksum
    assert load_sae(res.sae_dirs["topk_k4_f64"]).cfg.k == K

    # resume (longer run): the weights come from the checkpoint; the source is not even read
    moved = tmp_path / "moved"
    shutil.move(str(src), moved)
    again = train(run_config(str(src), total=3 * B), data(), out, provenance={"hook_name": HOOK})
    assert again.resumed_from is not None and again.tokens == 3 * B
    assert read_provenance(again.sae_dirs["topk_k4_f64"])["init_from"]["weights_sha256"] == rec["weights_sha256"]
    # a different source for the same run is refused, naming the field
    with pytest.raises(ConfigMismatchError, match="train.init_from"):
        train(run_config(str(moved), total=4 * B), data(), out, provenance={"hook_name": HOOK})
    # and a run that did not start from a source cannot adopt one on resume
    plain = tmp_path / "plain"
    train(run_config(None), data(), plain, provenance={"hook_name": HOOK})
    with pytest.raises(ConfigMismatchError, match="train.init_from"):
        train(run_config(str(moved), total=3 * B), data(), plain, provenance={"hook_name": HOOK})


@pytest.mark.parametrize("case", ["d_in", "hook", "model", "d_sae"])
def test_a_source_that_does_not_fit_the_run_is_refused_naming_both_sides(tmp_path: Path, case: str) -> None:
    src = sae_lens_topk_folder(tmp_path / "sl", d_in=D + 8 if case == "d_in" else D,
                               hook="blocks.3.hook_resid_post" if case == "hook" else HOOK,
                               model_name="gpt2-small" if case == "model" else None)
    prov = {"hook_name": HOOK, "model": "pythia-70m", "model_name": "EleutherAI/pythia-70m"}
    cfg = run_config(str(src))
    if case == "d_sae":
        cfg.saes = [SAESpec("topk", d_sae=2 * F, k=K)]
    with pytest.raises(InitFromError) as err:
        train(cfg, data(), tmp_path / "run", provenance=prov)
    msg = str(err.value)
    expected = {"d_in": [f"d_in={D + 8}", f"width {D}"], "hook": ["blocks.3.hook_resid_post", HOOK, "--hook", "--init-from-allow-mismatch"],
                "model": ["gpt2-small", "pythia-70m", "--init-from-allow-mismatch"], "d_sae": [f"d_sae={F}", f"d_sae={2 * F}", "--d-sae"]}[case]
    for part in expected:
        assert part in msg, (part, msg)
    if case in ("hook", "model"):  # the override fine-tunes it anyway, and the record keeps the source's side
        cfg = run_config(str(src), init_from_allow_mismatch=True)
        res = train(cfg, data(), tmp_path / "forced", provenance=prov)
        assert read_provenance(res.sae_dirs["topk_k4_f64"])["init_from"]["hook_name"] == src_hook(case)


def test_an_init_source_for_a_run_without_init_from_or_of_another_source_is_refused(tmp_path: Path) -> None:
    """`train(..., init_source=...)` with a config that has no train.init_from trained from scratch
    without a word (the source was read and dropped); a source other than train.init_from is refused
    too, before any work."""
    from training.init_from import InitSource

    src = sae_lens_topk_folder(tmp_path / "sl")
    with pytest.raises(ValueError, match=r"init_source reads .* train.init_from is None; set train.init_from"):
        train(run_config(None), data(), tmp_path / "run", init_source=InitSource(str(src)))
    other = sae_lens_topk_folder(tmp_path / "other", seed=4)
    with pytest.raises(ValueError, match=r"init_source reads .*other.* train.init_from is .*sl"):
        train(run_config(str(src)), data(), tmp_path / "run2", init_source=InitSource(str(other)))
    for run in ("run", "run2"):  # nothing written but the lock
        assert [p.name for p in (tmp_path / run).iterdir()] in ([], ["train.lock"])


def src_hook(case: str) -> str:
    return "blocks.3.hook_resid_post" if case == "hook" else HOOK


def test_cli_init_from_defaults_the_sae_to_the_source_and_refuses_a_mismatch_cleanly(tmp_path: Path, capsys) -> None:
    from helpers.fake_cache import make_fake_cache

    from saesteer.cli import main

    cache = make_fake_cache(tmp_path / "cache", shard_rows=[1024, 1024], d_in=D).path
    good = sae_lens_topk_folder(tmp_path / "good")
    flags = ["--total-tokens", "512", "--batch-size", "256", "--holdout-tokens", "256", "--no-progress", "--num-threads", "1"]
    assert main(["train", "--cache", str(cache), "--out", str(tmp_path / "run"), "--init-from", str(good), *flags]) == 0
    rec = read_provenance(tmp_path / "run" / "saes" / f"topk_k{K}_f{F}")["init_from"]
    assert rec["spec"] == str(good.resolve())

    wrong = sae_lens_topk_folder(tmp_path / "wrong", hook="blocks.5.hook_resid_post")
    code = main(["train", "--cache", str(cache), "--out", str(tmp_path / "run2"), "--init-from", str(wrong), *flags])
    err = capsys.readouterr().err
    assert code == 2 and "blocks.5.hook_resid_post" in err and HOOK in err and "--init-from-allow-mismatch" in err
    assert "Traceback" not in err


def test_the_default_spec_of_a_matryoshka_source_keeps_its_levels() -> None:
    """--init-from with no SAE flags on a Matryoshka SAE (the demo's): the spec carries its nested
    widths (this raised AttributeError after the levels rename)."""
    from saes import create_sae
    from saes.formats.base import LoadedSAE
    from training.init_from import spec_from_source

    sae = create_sae("matryoshka_batchtopk", D, F, k=K, matryoshka_widths=[F // 4, F],
                     generator=torch.Generator().manual_seed(0))
    spec = spec_from_source(LoadedSAE(sae, {}, "mem", "saesteer"))
    assert spec.architecture == "matryoshka_batchtopk" and list(spec.matryoshka_widths) == [F // 4, F]
    assert (spec.d_sae, spec.k) == (F, K)


def test_an_uncentred_source_starts_the_run_as_its_own_function(tmp_path: Path) -> None:
    """A SAELens JumpReLU that reads its input uncentred (apply_b_dec_to_input false, as every Gemma
    Scope SAE): the run's SAEs centre (x - b_dec), so b_enc takes b_dec @ W_enc and the function at
    step 0 is the source's (before, b_dec was subtracted from the input too: outputs off by ~1)."""
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE as SLJumpReLU
    from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig

    from training.init_from import spec_from_source

    sl = SLJumpReLU(JumpReLUSAEConfig(d_in=D, d_sae=F, apply_b_dec_to_input=False))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sl.W_enc.copy_(torch.randn(D, F, generator=g) / D**0.5)
        sl.b_enc.copy_(torch.randn(F, generator=g) * 0.1)
        sl.W_dec.copy_(torch.nn.functional.normalize(torch.randn(F, D, generator=g), dim=1))
        sl.b_dec.copy_(torch.randn(D, generator=g))
        sl.threshold.copy_(torch.rand(F, generator=g) * 0.3)
    sl.cfg.metadata.hook_name = HOOK
    sl.save_model(tmp_path / "sl")
    loaded = load_source(str(tmp_path / "sl"))
    cfg = RunConfig(saes=[spec_from_source(loaded)], train=TrainConfig(total_tokens=2 * B, batch_size=B, holdout_tokens=B,
                                                                        init_from=str(tmp_path / "sl"), num_threads=1))
    trainer = Trainer(cfg, D)
    notes: list[str] = []
    record = initialize_from_source(trainer, loaded, {"hook_name": HOOK}, log=notes.append)
    assert record["input_centring_folded"] and any("apply_b_dec_to_input" in n for n in notes)
    x = next(iter(data()))
    with torch.no_grad():
        torch.testing.assert_close(trainer.folded_sae(trainer.members[0])(x).recon, sl(x), rtol=1e-5, atol=1e-5)


def test_cli_resume_without_sae_flags_does_not_read_the_source_again(tmp_path: Path) -> None:
    """The SAE flags default to the source's; on resume they come from the run's config.json, so
    the source may have moved (before, the CLI read it again for the default and failed)."""
    from helpers.fake_cache import make_fake_cache

    from saesteer.cli import main

    cache = make_fake_cache(tmp_path / "cache", shard_rows=[1024, 1024], d_in=D).path
    src = sae_lens_topk_folder(tmp_path / "sl")
    flags = ["--batch-size", "256", "--holdout-tokens", "256", "--no-progress", "--num-threads", "1"]
    cmd = ["train", "--cache", str(cache), "--out", str(tmp_path / "run"), "--init-from", str(src), *flags]
    assert main([*cmd, "--total-tokens", "512"]) == 0
    shutil.move(str(src), tmp_path / "moved")
    assert main([*cmd, "--total-tokens", "768"]) == 0
    assert read_provenance(tmp_path / "run" / "saes" / f"topk_k{K}_f{F}")["tokens_trained"] == 768


def test_cli_reads_the_source_once_per_run(tmp_path: Path, monkeypatch) -> None:
    """The hook point's default, the SAE flags' default and the run's start all take the one
    source read (before: three reads of the same SAE for a fresh run, one for each)."""
    import saes.formats

    from helpers.fake_cache import make_fake_cache
    from saesteer.cli import main

    reads: list[str] = []
    real = saes.formats.resolve_sae

    def counting(spec, **kw):
        reads.append(str(spec))
        return real(spec, **kw)

    monkeypatch.setattr(saes.formats, "resolve_sae", counting)
    cache = make_fake_cache(tmp_path / "cache", shard_rows=[1024, 1024], d_in=D).path
    src = sae_lens_topk_folder(tmp_path / "sl")
    cmd = ["train", "--cache", str(cache), "--out", str(tmp_path / "run"), "--init-from", str(src), "--batch-size",
           "256", "--holdout-tokens", "256", "--no-progress", "--num-threads", "1"]
    assert main([*cmd, "--total-tokens", "512"]) == 0  # no --hook, no SAE flags: both default to the source's
    assert reads == [str(src)]
    rec = read_provenance(tmp_path / "run" / "saes" / f"topk_k{K}_f{F}")["init_from"]
    assert rec["weights_sha256"] == weights_sha256(load_source(str(src)).sae)  # the one read started the run
    reads.clear()
    assert main([*cmd, "--total-tokens", "768"]) == 0  # a resume reads it for the hook point only
    assert reads == [str(src)]


CLI_FLAGS = ["--total-tokens", "512", "--batch-size", "256", "--holdout-tokens", "256", "--no-progress", "--num-threads", "1"]


def test_cli_refuses_a_source_trained_with_another_bos_than_the_cache(tmp_path: Path, capsys) -> None:
    """A SAELens SAE trained on contexts that start with BOS (cfg.json prepend_bos) fine-tuned on a
    cache packed without one: every position's activation differs, so the run is refused naming
    both sides, the fix and the override, before any step (before: it trained on silently)."""
    from helpers.fake_cache import make_fake_cache

    from saesteer.cli import main

    cache = make_fake_cache(tmp_path / "cache", shard_rows=[1024, 1024], d_in=D, bos_policy="none").path
    src = sae_lens_topk_folder(tmp_path / "sl", prepend_bos=True)
    cmd = ["train", "--cache", str(cache), "--out", str(tmp_path / "run"), "--init-from", str(src), *CLI_FLAGS]
    capsys.readouterr()
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert f"the --init-from SAE {src.resolve()} records prepend_bos=True" in err, err
    # the cache's policy named by the flag that set it (train's own --bos-policy packs text, not a cache)
    assert f"this run's cache {cache.resolve()} was packed with `saesteer cache --bos-policy` 'none'" in err, err
    assert "`saesteer cache --bos-policy` 'prepend'" in err and "--init-from-allow-mismatch true" in err, err
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "run" / "saes").exists() and not list((tmp_path / "run").glob("checkpoints/step_*"))
    assert main([*cmd, "--init-from-allow-mismatch", "true"]) == 0  # the override trains it anyway


def test_cli_fine_tuning_a_run_of_ours_checks_its_exact_bos_policy(tmp_path: Path, capsys) -> None:
    """A run of ours records its cache's bos_policy; fine-tuning it on a cache packed otherwise is
    refused even where cfg.json's prepend_bos cannot tell ('doc' and 'none' are both False). A run
    from before that was recorded is checked by prepend_bos, and a note says what could not be."""
    import json

    from helpers.fake_cache import make_fake_cache

    from saesteer.cli import main

    doc = make_fake_cache(tmp_path / "doc", shard_rows=[1024, 1024], d_in=D, bos_policy="doc").path
    none = make_fake_cache(tmp_path / "none", shard_rows=[1024, 1024], d_in=D, bos_policy="none", seed=1).path
    assert main(["train", "--cache", str(doc), "--out", str(tmp_path / "first"), "--architecture", "topk", "--d-sae",
                 str(F), "--k", str(K), "--sae-name", "sae", *CLI_FLAGS]) == 0
    src = tmp_path / "first" / "saes" / "sae"
    assert read_provenance(src)["data"]["bos_policy"] == "doc"
    cmd = ["train", "--cache", str(none), "--out", str(tmp_path / "second"), "--init-from", str(src), *CLI_FLAGS]
    capsys.readouterr()
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert "was trained on contexts packed with BOS policy 'doc' (its saesteer.json)" in err, err
    assert "was packed with `saesteer cache --bos-policy` 'none'" in err, err
    assert "build a cache with `saesteer cache --bos-policy` 'doc'" in err, err
    assert "--init-from-allow-mismatch true" in err and "Traceback" not in err

    prov = json.loads((src / "saesteer.json").read_text())
    del prov["data"]["bos_policy"]  # as a run from before this version wrote it (the cache's text record too)
    prov["data"].get("text", {}).pop("bos_policy", None)
    (src / "saesteer.json").write_text(json.dumps(prov))
    assert main(cmd) == 0
    out = capsys.readouterr().out
    assert "records prepend_bos=False only" in out and "bos_policy 'none'" in out, out


def test_cli_without_a_cache_refuses_text_packed_with_another_bos(tmp_path: Path, capsys) -> None:
    """Without a cache the run packs the text itself (--bos-policy): a source trained with BOS on
    text packed without one is refused the same way, naming the run's text and its flag."""
    from saesteer.cli import main

    hook = "blocks.1.hook_resid_post"
    src = sae_lens_topk_folder(tmp_path / "sl", d_in=128, hook=hook, prepend_bos=True)  # the toy model's width
    cmd = ["train", "--model", "toy", "--dataset", "toy", "--out", str(tmp_path / "run"), "--init-from", str(src),
           "--model-eval", "false", *CLI_FLAGS]
    capsys.readouterr()
    assert main([*cmd, "--bos-policy", "none"]) == 2
    err = capsys.readouterr().err
    assert "records prepend_bos=True" in err and "this run's text (toy) was packed with --bos-policy 'none'" in err, err
    assert "pack the text with --bos-policy 'prepend'" in err and "--init-from-allow-mismatch true" in err, err


def test_a_run_started_before_the_bos_check_resumes_unrefused(tmp_path: Path, monkeypatch, capsys) -> None:
    """A fine-tuning run started before `--init-from` checked BOS (a SAELens source with
    prepend_bos=True on a cache packed without BOS, accepted then), continued now with the same
    command: the checkpoint holds the weights, so the source is not checked again and the run goes
    on (its saved SAEs now record the cache's bos_policy)."""
    import training.init_from
    from helpers.fake_cache import make_fake_cache

    from saesteer.cli import main

    cache = make_fake_cache(tmp_path / "cache", shard_rows=[1024, 1024], d_in=D, bos_policy="none").path
    src = sae_lens_topk_folder(tmp_path / "sl", prepend_bos=True)
    out = tmp_path / "run"
    cmd = ["train", "--cache", str(cache), "--out", str(out), "--init-from", str(src), "--batch-size", "256",
           "--holdout-tokens", "256", "--checkpoint-every-tokens", "256", "--no-progress", "--num-threads", "1"]
    with monkeypatch.context() as m:
        m.setattr(training.init_from, "_check_bos", lambda *a: None)  # as the version before the check ran
        assert main([*cmd, "--total-tokens", "512"]) == 0
    capsys.readouterr()
    assert main([*cmd, "--total-tokens", "768"]) == 0, capsys.readouterr().err
    assert "resumed from step_" in capsys.readouterr().out
    assert read_provenance(out / "saes" / f"topk_k{K}_f{F}")["data"]["bos_policy"] == "none"
