"""One definition of a dead latent (no firing over N tokens), and the figures that use it agree.

- the training window N scales with the run, so short runs find dead latents and AuxK engages;
- on a short run where latents die, the train summary, metrics.json, history.jsonl, the
  checkpoint's counters and the feature store give the same figure wherever they measure the same
  thing (docs/training.md, "Dead latents").
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from saesteer.cli import main
from training.config import RunConfig, SAESpec, TrainConfig

HOOK = "blocks.2.hook_resid_post"


def test_the_dead_window_scales_with_a_short_run() -> None:
    long_run = TrainConfig(total_tokens=1_000_000_000, batch_size=4096)
    assert long_run.dead_window_tokens == 10_000_000  # the cap (sparsify's 10M tokens)
    short = TrainConfig(total_tokens=400_000, batch_size=4096)
    assert short.dead_window_tokens == 40_000  # 10% of the run
    tiny = TrainConfig(total_tokens=8192, batch_size=4096)
    assert tiny.dead_window_tokens == 4096  # never shorter than one batch
    assert TrainConfig(total_tokens=400_000, batch_size=4096, dead_tokens=5000).dead_window_tokens == 5000
    assert TrainConfig(total_tokens=400_000, batch_size=256, dead_window_fraction=0.5).dead_window_tokens == 200_000
    with pytest.raises(ValueError, match="dead_window_fraction"):
        TrainConfig(dead_window_fraction=0.0)


def test_auxk_engages_in_a_short_run_with_the_default_window(tmp_path: Path) -> None:
    """A run of 40 batches (far shorter than the 10M-token cap) with latents that cannot fire:
    they count as dead after 10% of the run and AuxK trains them."""
    from training.config import CheckpointConfig, EvalConfig, LogConfig
    from training.logs import read_history
    from training.run import train

    D, F, B, steps = 16, 64, 256, 40
    never = torch.arange(48, 64)
    cfg = RunConfig(
        saes=[SAESpec("topk", d_sae=F, k=4)],
        train=TrainConfig(total_tokens=steps * B, batch_size=B, holdout_tokens=B, normalize_activations=False,
                          b_dec_init="zeros", step_method="autograd"),
        checkpoint=CheckpointConfig(every_tokens=0), eval=EvalConfig(every_tokens=0, ce_contexts=0),
        log=LogConfig(log_every=1, progress=False),
    )
    assert cfg.train.dead_tokens == 10_000_000  # the default cap, 250x this run

    def plant(trainer) -> None:  # after step 1: latents 48.. read only dims 8.., where the data is zero
        if trainer.step == 1:
            sae = trainer.members[0].sae
            with torch.no_grad():
                sae.W_enc[:8, never] = 0
                sae.b_enc[never] = -50.0

    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(steps + 1):
        x = torch.zeros(B, D)
        x[:, :8] = torch.randn(B, 8, generator=g)
        batches.append(x)
    res = train(cfg, batches, tmp_path / "run", on_step=plant)
    name = cfg.saes[0].name
    recs = [r for r in read_history(tmp_path / "run") if r.get("kind") == "train"]
    aux = [r[f"{name}/aux"] for r in recs]
    dead = [r[f"{name}/dead_fraction"] for r in recs]
    assert aux[0] == 0.0 and max(aux) > 0  # engaged once the window had passed
    assert max(dead) >= len(never) / F  # the curve is not flat at 0
    assert res.metrics["saes"][name]["dead_window_tokens"] == 1024


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("dead")
    assert main(["cache", "--model", "toy", "--dataset", "toy", "--max-tokens", "4096", "--shard-contexts", "8",
                 "--hooks", HOOK, "--out", str(d / "cache"), "--no-progress"]) == 0
    return d


def _printed_row(text: str, name: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(name + " "))
    return line.split()


def test_summary_metrics_history_checkpoint_and_store_agree(short_run: Path, capsys) -> None:
    d = short_run
    out = d / "run"
    capsys.readouterr()
    assert main(["train", "--cache", str(d / "cache"), "--out", str(out), "--total-tokens", "4096",
                 "--batch-size", "256", "--holdout-tokens", "512", "--d-sae", "512", "--k", "4",
                 "--architecture", "topk,batchtopk", "--progress", "false", "--num-threads", "1",
                 "--checkpoint-every-tokens", "0", "--eval-every-tokens", "0", "--model-eval", "false",
                 "--log-every", "1"]) == 0
    text = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    window = 410  # 10% of the 4,096 training tokens
    assert f"no firing in the last {window:,} training tokens" in text
    assert f"no firing on the {metrics['holdout_rows']:,} held-out tokens" in text

    from safetensors.torch import load_file

    from training.checkpoint import list_checkpoints
    from training.logs import read_history

    counters = load_file(str(list_checkpoints(out / "checkpoints")[-1] / "tensors.safetensors"))
    last_train = [r for r in read_history(out) if r.get("kind") == "train"][-1]
    final = [r for r in read_history(out) if r.get("final")][-1]
    some_died = False
    for name, m in metrics["saes"].items():
        assert m["dead_window_tokens"] == window
        # the training figure: recounted from the checkpoint's per-latent counters
        recount = float((counters[f"dead/{name}"] >= window).double().mean())
        assert m["dead_fraction"] == pytest.approx(recount, abs=1e-12)
        assert last_train[f"{name}/dead_fraction"] == m["dead_fraction"] == final[f"{name}/dead_fraction"]
        some_died |= m["dead_fraction"] > 0
        # the summary prints the same two figures metrics.json holds
        row = _printed_row(text, name)
        assert row[3] == f"{m['dead_fraction']:.2%}" and row[4] == f"{m['eval_dead_fraction']:.2%}"
    assert some_died  # a short run where latents die: the figure is not 0 by construction

    # the feature store's 'dead' flag is the same definition over the cache's tokens
    import saes
    from features import FeatureStore
    from features.source import CacheSource
    from training.evaluate import evaluate_activations
    from training.shards import load_tensors

    name = "topk_k4_f512"
    store = d / "f.db"
    capsys.readouterr()
    assert main(["features", "build", "--sae", str(out / "saes" / name), "--cache", str(d / "cache"), "--out",
                 str(store), "--model", "none", "--no-progress"]) == 0
    built = capsys.readouterr().out
    source = CacheSource(d / "cache")
    rows = torch.cat([load_tensors(source.path / sh.file, [f"acts/{HOOK}"])[f"acts/{HOOK}"].float()
                      for sh in source.shards])
    assert rows.shape[0] == source.n_rows
    never = evaluate_activations(saes.load_sae(out / "saes" / name), rows)["eval_dead_fraction"]
    with FeatureStore.open(store) as st:
        dead = st.meta["summary"]["dead"]
        assert st.meta["n_rows"] == source.n_rows
    assert dead == round(never * 512) and dead > 0
    assert re.search(rf"\bdead {dead}\b", built) and f"no firing on the {source.n_rows:,} tokens" in built

