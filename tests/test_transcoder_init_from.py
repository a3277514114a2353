"""Fine-tuning transcoders (`--init-from` a transcoder, `--target-hook` run): SAELens's own JumpReLU
(skip) transcoders and ours start the run computing exactly the source's function, with weights
mapped through the run's two scales (input: the data's; target: the source's decoder norm); the
saved SAEs record the source; a stopped run resumes bit-identically; every mismatch (transcoder or
not, hooks, d_out, skip) is refused naming both sides and the flag."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from torch import Tensor

pytest.importorskip("sae_lens")
from sae_lens.saes.jumprelu_sae import JumpReLUSAE as SLJumpReLU  # noqa: E402
from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig  # noqa: E402
from sae_lens.saes.transcoder import (  # noqa: E402
    JumpReLUSkipTranscoder,
    JumpReLUSkipTranscoderConfig,
    JumpReLUTranscoder,
    JumpReLUTranscoderConfig,
    SkipTranscoder,
    SkipTranscoderConfig,
    Transcoder,
    TranscoderConfig,
)

from saes import load_sae, read_provenance  # noqa: E402
from training.config import CheckpointConfig, EvalConfig, LogConfig, OptimConfig, RunConfig, SAESpec, TrainConfig  # noqa: E402
from training.init_from import InitFromError, initialize_from_source, load_source, spec_from_source  # noqa: E402
from training.initialize import estimate_activation_scale  # noqa: E402
from training.run import train  # noqa: E402
from training.trainer import Trainer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*records no checksum")
D, O, F, B = 16, 12, 48, 128
H_IN, H_OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
PROV = {"hook_name": H_IN, "hook_name_out": H_OUT}
TOL = {"rtol": 1e-5, "atol": 1e-5}


class Pair(NamedTuple):
    acts: Tensor
    targets: Tensor


class Pairs:
    """Paired batches: inputs of mean norm ~4 sqrt(D), targets a noisy linear map of them at ~1/2 that
    scale, so the run's input and target scales differ from each other and from 1."""

    def __init__(self, n: int | None = None, seed: int = 5) -> None:
        self.n, self.seed = n, seed

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        M = torch.randn(D, O, generator=g) / D**0.5
        i = 0
        while self.n is None or i < self.n:
            x = torch.randn(B, D, generator=g) * 4.0
            yield Pair(x, (x @ M + 0.1 * torch.randn(B, O, generator=g)) * 0.5)
            i += 1


def sae_lens_transcoder(path: Path, *, skip: bool = True, unit_rows: bool = True, relu: bool = False,
                        hook: str = H_IN, hook_out: str = H_OUT, seed: int = 0):
    """A JumpReLU (skip) transcoder made and saved by SAELens itself; `relu`: its plain (skip) transcoder."""
    if relu:
        kind, cfg_kind = (SkipTranscoder, SkipTranscoderConfig) if skip else (Transcoder, TranscoderConfig)
    else:
        kind, cfg_kind = ((JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig) if skip
                          else (JumpReLUTranscoder, JumpReLUTranscoderConfig))
    sl = kind(cfg_kind(d_in=D, d_sae=F, d_out=O, apply_b_dec_to_input=False))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sl.W_enc.copy_(torch.randn(D, F, generator=g) / D**0.5 / 4)
        sl.b_enc.copy_(torch.randn(F, generator=g) * 0.1)
        W = torch.nn.functional.normalize(torch.randn(F, O, generator=g), dim=1)
        sl.W_dec.copy_(W if unit_rows else W * (0.5 + 2 * torch.rand(F, 1, generator=g)))
        sl.b_dec.copy_(torch.randn(O, generator=g) * 0.3)
        if skip:
            sl.W_skip.copy_(torch.randn(O, D, generator=g) * 0.05)
        if not relu:
            sl.threshold.copy_(torch.rand(F, generator=g) * 0.3)
    sl.cfg.metadata.hook_name = hook
    sl.cfg.metadata.hook_name_out = hook_out
    sl.save_model(path)
    return sl.eval()


def run_config(spec: SAESpec, init_from: str | None, total: int = 6 * B, every: int = 2 * B, **train_kw) -> RunConfig:
    return RunConfig(saes=[spec],
                     train=TrainConfig(total_tokens=total, batch_size=B, holdout_tokens=B, init_from=init_from,
                                       num_threads=1, **train_kw),
                     optim=OptimConfig(lr=1e-3), checkpoint=CheckpointConfig(every_tokens=every),
                     eval=EvalConfig(every_tokens=0, ce_contexts=0), log=LogConfig(progress=False))


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("unit_rows", [True, False])
def test_a_sae_lens_transcoder_starts_the_run_as_its_own_function(tmp_path: Path, skip: bool, unit_rows: bool) -> None:
    sl = sae_lens_transcoder(tmp_path / "sl", skip=skip, unit_rows=unit_rows)
    loaded = load_source(str(tmp_path / "sl"))
    spec = spec_from_source(loaded)  # the SAE flags' default: the source as it is, its skip connection included
    assert (spec.architecture, spec.d_sae, spec.skip) == ("jumprelu", F, skip)
    hold, batch = list(Pairs(n=2))
    trainer = Trainer(run_config(spec, str(tmp_path / "sl")), D, d_out=O)
    notes: list[str] = []
    record = initialize_from_source(trainer, loaded, PROV, log=notes.append, holdout_BD=hold.acts)

    # the scales: the input's from the data (as a fresh run), the target's the source's own (1 / mean decoder norm)
    s_x, s_y = trainer.scale, trainer.target_scale
    norms_F = sl.W_dec.detach().norm(dim=1)
    assert s_x == pytest.approx(estimate_activation_scale(hold.acts), rel=1e-12) and abs(s_x - 1) > 0.5
    assert s_y == pytest.approx(1 / float(norms_F.mean()), rel=1e-6)
    assert record["activation_scale"] == s_x and record["target_activation_scale"] == s_y
    assert record["decoder_renormalized"] == (not unit_rows) and bool(notes) == (not unit_rows)
    assert (record["hook_name"], record["hook_name_out"], record["d_out"], record["skip_connection"]) == (H_IN, H_OUT, O, skip)

    # step 0: the run computes the source's function on raw activations, in both forms
    m = trainer.members[0]
    with torch.no_grad():
        want = sl(batch.acts)
        torch.testing.assert_close(trainer.folded_sae(m)(batch.acts).recon, want, **TOL)
        torch.testing.assert_close(m.sae(batch.acts * s_x).recon / s_y, want, **TOL)  # what the trainer trains
        # the weights are the source's mapped through the scales (and rows brought to unit norm: n_F)
        n_F = norms_F / norms_F.mean()
        torch.testing.assert_close(m.sae.W_enc, sl.W_enc / s_x * n_F, **TOL)
        torch.testing.assert_close(m.sae.b_enc, sl.b_enc * n_F, **TOL)
        torch.testing.assert_close(m.sae.threshold, sl.threshold * n_F, **TOL)
        torch.testing.assert_close(m.sae.W_dec, sl.W_dec * s_y / n_F[:, None], **TOL)
        torch.testing.assert_close(m.sae.b_dec, sl.b_dec * s_y, **TOL)
        if skip:
            torch.testing.assert_close(m.sae.W_skip, sl.W_skip * s_y / s_x, **TOL)
        else:
            assert m.sae.W_skip is None
    # one step continues from these weights: the step's loss is the source's on the scaled batch
    _, stats = trainer.train_batch(batch)
    with torch.no_grad():
        src_mse = ((sl(batch.acts) - batch.targets) * s_y).pow(2).sum(1).mean()
    assert float(stats[m.name].mse) == pytest.approx(float(src_mse), rel=1e-4)
    assert not torch.equal(m.sae.threshold, sl.threshold * n_F)  # and it moved


def test_our_transcoder_continues_in_its_own_training_space(tmp_path: Path) -> None:
    spec = SAESpec("topk", d_sae=F, k=4, skip=True)
    first = train(run_config(spec, None, every=0), Pairs(), tmp_path / "first", provenance=PROV)
    folder = first.sae_dirs[spec.name]
    loaded = load_source(str(folder))
    assert spec_from_source(loaded).skip
    trainer = Trainer(run_config(spec, str(folder)), D, d_out=O)
    initialize_from_source(trainer, loaded, PROV, holdout_BD=next(iter(Pairs())).acts)  # the same held-out rows
    assert trainer.scale == pytest.approx(first.metrics["activation_scale"], rel=1e-9)
    assert trainer.target_scale == pytest.approx(first.metrics["target_activation_scale"], rel=1e-5)
    start = trainer.folded_sae(trainer.members[0])
    for name, t in loaded.sae.state_dict().items():
        torch.testing.assert_close(start.state_dict()[name], t, rtol=1e-5, atol=1e-6, msg=name)


class Stop(Exception):
    pass


def test_a_fine_tuned_transcoder_records_its_source_and_resumes_bit_identically(tmp_path: Path) -> None:
    sae_lens_transcoder(tmp_path / "sl")
    src = str(tmp_path / "sl")
    spec = spec_from_source(load_source(src))
    straight = train(run_config(spec, src), Pairs(), tmp_path / "a", provenance=PROV)
    name = spec.name
    assert name == "jumprelu_f48_skip"
    rec = read_provenance(straight.sae_dirs[name])["init_from"]
    assert rec["spec"] == str((tmp_path / "sl").resolve()) and rec["format"] == "sae_lens"
    assert (rec["hook_name_out"], rec["d_out"], rec["skip_connection"]) == (H_OUT, O, True)
    assert rec["target_activation_scale"] == straight.metrics["target_activation_scale"]
    saved = load_sae(straight.sae_dirs[name])
    assert saved.is_transcoder and saved.W_skip is not None and saved.cfg.metadata["hook_name_out"] == H_OUT

    def stop_at(trainer) -> None:
        if trainer.step == 3:  # after the step-2 checkpoint
            raise Stop

    with pytest.raises(Stop):
        train(run_config(spec, src), Pairs(), tmp_path / "b", provenance=PROV, on_step=stop_at)
    shutil.move(src, tmp_path / "moved")  # the resume reads the checkpoint, not the source
    resumed = train(run_config(spec, src), Pairs(), tmp_path / "b", provenance=PROV)
    assert resumed.resumed_from is not None and resumed.resumed_from.name.endswith("2")
    assert resumed.metrics["activation_scale"] == straight.metrics["activation_scale"]
    assert resumed.metrics["target_activation_scale"] == straight.metrics["target_activation_scale"]
    a, b = straight.saes[name].state_dict(), resumed.saes[name].state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert read_provenance(resumed.sae_dirs[name])["init_from"] == rec


MISMATCHES = {  # case: (what the source is, the run, the parts the message must hold)
    "sae_run": ["is a skip transcoder", H_IN, H_OUT, "--target-hook"],
    "sae_source": ["is an SAE", H_OUT, "drop --target-hook"],
    "target_hook": ["blocks.0.hook_attn_out", H_OUT, "--target-hook", "--init-from-allow-mismatch"],
    "input_hook": ["blocks.0.hook_resid_mid", H_IN, "--hook", "--init-from-allow-mismatch"],
    "d_out": [f"d_out={O}", f"width {O + 4}", "--target-hook"],
    "no_skip_run": ["is a skip transcoder", "has no skip connection", "pass --skip"],
    "skip_run": ["has no skip connection", "is a skip transcoder", "drop --skip"],
    "relu": ["standard transcoder", "cannot be fine-tuned"],
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_a_transcoder_source_that_does_not_fit_is_refused_naming_both_sides(tmp_path: Path, case: str) -> None:
    path = tmp_path / "src"
    if case == "sae_source":
        sl = SLJumpReLU(JumpReLUSAEConfig(d_in=D, d_sae=F))
        sl.cfg.metadata.hook_name = H_IN
        sl.save_model(path)
    else:
        sae_lens_transcoder(path, skip=case != "skip_run", relu=case == "relu",
                            hook_out="blocks.0.hook_attn_out" if case == "target_hook" else H_OUT,
                            hook="blocks.0.hook_resid_mid" if case == "input_hook" else H_IN)
    loaded = load_source(str(path))
    arch = loaded.sae.architecture
    spec = SAESpec(arch if arch != "standard" else "jumprelu", d_sae=F,
                   skip=case not in ("sae_run", "sae_source", "no_skip_run"))
    d_out = {"sae_run": None, "d_out": O + 4}.get(case, O)
    prov = {"hook_name": H_IN} if case == "sae_run" else dict(PROV)
    trainer = Trainer(run_config(spec, str(path)), D, d_out=d_out)
    with pytest.raises(InitFromError) as err:
        initialize_from_source(trainer, loaded, prov, holdout_BD=next(iter(Pairs())).acts)
    for part in MISMATCHES[case]:
        assert part in str(err.value), (part, str(err.value))
    if case in ("target_hook", "input_hook"):  # the override fine-tunes it anyway
        forced = Trainer(run_config(spec, str(path), init_from_allow_mismatch=True), D, d_out=O)
        rec = initialize_from_source(forced, loaded, prov, holdout_BD=next(iter(Pairs())).acts)
        assert rec["hook_name_out"] == ("blocks.0.hook_attn_out" if case == "target_hook" else H_OUT)


# ------------------------------------------------------------------------------ the CLI
FLAGS = ["--total-tokens", "512", "--batch-size", "128", "--holdout-tokens", "128", "--no-progress", "--num-threads", "1",
         "--lr", "1e-3"]


@pytest.fixture()
def pair_cache(tmp_path: Path) -> Path:
    from helpers.fake_cache import make_fake_cache

    return make_fake_cache(tmp_path / "cache", shard_rows=[512, 512], d_in=D, hooks=(H_IN, H_OUT, "blocks.1.hook_mlp_out"),
                           widths={H_OUT: O, "blocks.1.hook_mlp_out": O}).path


def test_cli_fine_tunes_a_sae_lens_transcoder_folder_and_resumes_after_kill_9(tmp_path: Path, pair_cache: Path,
                                                                              capsys) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from saesteer.cli import main

    sl = sae_lens_transcoder(tmp_path / "sl")
    args = ["--cache", str(pair_cache), "--hook", H_IN, "--target-hook", H_OUT, "--init-from", str(tmp_path / "sl"),
            *FLAGS, "--checkpoint-every-tokens", "256"]
    assert main(["train", "--out", str(tmp_path / "run"), *args]) == 0
    folder = tmp_path / "run" / "saes" / "jumprelu_f48_skip"  # the SAE flags defaulted to the source's, skip included
    rec = read_provenance(folder)["init_from"]
    assert rec["spec"] == str((tmp_path / "sl").resolve()) and rec["hook_name_out"] == H_OUT
    tuned = load_sae(folder)
    assert tuned.is_transcoder and tuned.W_skip is not None and tuned.cfg.metadata["hook_name_out"] == H_OUT
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # 4 small steps from the source: close to it, not equal
        got, want = tuned(x).recon, sl(x)
    assert 0 < float((got - want).norm() / want.norm()) < 0.2

    # the same command killed (SIGKILL) after step 3 (its step-2 checkpoint written), then run again
    out = tmp_path / "killed"
    child = Path(__file__).parent / "helpers" / "dist_child.py"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(child), "--hang-at", "3", "--", "train", "--out", str(out), *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "hanging.0").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the run never reached step 3"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert not (out / "saes").exists()
    capsys.readouterr()
    assert main(["train", "--out", str(out), *args]) == 0
    printed = capsys.readouterr()
    assert "resumed from" in printed.out + printed.err and "step_0000000002" in printed.out + printed.err
    for name, t in load_sae(folder).state_dict().items():
        assert torch.equal(load_sae(out / "saes" / "jumprelu_f48_skip").state_dict()[name], t), name


@pytest.mark.parametrize("flags,parts", [
    ([], ["is a skip transcoder", f"--target-hook {H_OUT}"]),
    (["--target-hook", "blocks.1.hook_mlp_out"], ["blocks.1.hook_mlp_out", H_OUT, "--init-from-allow-mismatch"]),
    (["--target-hook", H_OUT, "--architecture", "jumprelu", "--d-sae", str(F)], ["pass --skip"]),
])
def test_cli_refuses_a_transcoder_mismatch_in_one_line(tmp_path: Path, pair_cache: Path, capsys, flags, parts) -> None:
    from saesteer.cli import main

    sae_lens_transcoder(tmp_path / "sl")
    code = main(["train", "--cache", str(pair_cache), "--out", str(tmp_path / "run"), "--hook", H_IN, *flags,
                 "--init-from", str(tmp_path / "sl"), *FLAGS])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) <= 2, err
    for part in parts:
        assert part in err, (part, err)
