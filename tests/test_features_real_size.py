"""A user's SAE of real size through the CLI: SAELens's own files of a gpt2-small-res-jb-shaped
SAE (d_in 768, d_sae 24576, ReLU) on a GPT-2-shaped model (d_model 768, GPT-2's 50,257-row
embedding), its feature store built, shown, served and steered with. Figures: `python
benchmarks/bench_scale.py realsae` (benchmarks/RESULTS.md, "A real-size SAE through the CLI").

The big shape is slow (minutes); the fast tests of the same code paths run on small shapes
(tests/test_features_pass.py, tests/test_features_memory.py)."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from helpers.real_cli import captured_serve, saesteer

HOOK = "blocks.1.hook_resid_pre"
D_SAE = 24576
LATENT = 24000


@pytest.fixture(scope="module")
def real_size(tmp_path_factory, real_corpus):
    from safetensors.torch import load_file

    from helpers.foreign_saes import saelens_calibrated
    from helpers.real_models import save_real_model

    work = tmp_path_factory.mktemp("real-size")
    model = save_real_model(work / "gpt2-768", "gpt2", real_corpus, train_steps=0, vocab_size=2048, d_model=768,
                            n_layers=2, model_vocab=50257)
    saesteer("cache", "--model", model, "--dataset", real_corpus.jsonl_dir, "--hooks", HOOK, "--context-length", 128,
             "--max-tokens", 16384, "--out", work / "cache", "--no-progress").ok()
    acts = load_file(str(work / "cache" / "shard_000000.safetensors"))[f"acts/{HOOK}"][:4096].float()
    saelens_calibrated("standard", acts, D_SAE, l0=64, hook_name=HOOK).save_model(work / "sae")
    return work, model


@pytest.mark.slow
def test_a_gpt2_small_sized_saelens_sae_builds_shows_serves_and_steers(real_size):
    work, model = real_size
    store = work / "store.db"
    # the build in its own process, for its peak memory
    p = subprocess.run([sys.executable, "-m", "saesteer", "features", "build", "--sae", str(work / "sae"), "--cache",
                        str(work / "cache"), "--out", str(store), "--model", str(model), "--no-progress"],
                       capture_output=True, text=True, timeout=3600)
    assert p.returncode == 0, p.stderr[-2000:]
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    # the SAE (151 MB), its pass state (~0.6 GB at these settings), a batch's dense activations and
    # the model: about 2 GB; before the co-activation fix the first batch asked for 20+ GB
    assert peak_gb < 4, f"features build peaked at {peak_gb:.1f} GB"
    shown = saesteer("features", "show", store, LATENT).ok()
    assert f"feature {LATENT}" in shown.out and "top examples" in shown.out
    r, client = captured_serve(pytest.MonkeyPatch(), "--store", store)
    assert client is not None, r.err
    with client as c:
        sid = c.get("/api/stores").json()
        sid = (sid["stores"] if isinstance(sid, dict) else sid)[0]["id"]
        page = c.get(f"/api/stores/{sid}/features?sort=frequency&limit=50").json()
        assert len(page["items"]) == 50 and page["total"] == D_SAE  # one page of the 24,576
        assert c.get(f"/s/{sid}/f/{LATENT}").status_code == 200
        assert c.get(f"/s/{sid}/search?q=string").status_code == 200
        assert c.get(f"/s/{sid}/steer").status_code == 200
    steered = saesteer("steer", "--sae", work / "sae", "--store", store, "--prompt", "def parse(text):", "--latent",
                       f"{LATENT}:add=2x", "--max-new-tokens", 4, "--seed", 0, "--no-progress").ok()
    assert f"{LATENT}:add=2x" in steered.out
