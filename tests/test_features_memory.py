"""Memory stays bounded: after a build over a small cache, a build over a 16x larger one does not
raise the peak memory by more than a small fraction of what holding its activations would take."""

import subprocess
import sys
from pathlib import Path

CHILD = Path(__file__).parent / "helpers" / "feature_memory_child.py"


def test_peak_memory_does_not_grow_with_the_cache(tmp_path):
    # contexts of 64 tokens: 4096 rows, then 65536 rows of width 128 (the pass reads 4096-row batches)
    p = subprocess.run([sys.executable, str(CHILD), str(tmp_path), "64", "1024"], capture_output=True, timeout=600)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    (rss_s, state_s, rows_s), (rss_l, state_l, rows_l) = [tuple(map(int, line.split())) for line in p.stdout.split(b"\n")[-3:-1]]
    assert rows_l == 16 * rows_s == 65536
    assert state_l == state_s
    # holding the large cache's activations alone (65536 x 128 fp32) would take 33.5 MB, and as
    # much again for its dense SAE activations
    acts_bytes = rows_l * 128 * 4
    growth = (rss_l - rss_s) * 1024
    assert growth < acts_bytes / 4, (growth / 2**20, rss_s / 1024, rss_l / 1024)


def test_a_row_firing_every_latent_does_not_multiply_the_memory_of_a_batch():
    """The co-activation sample keeps the strongest `coact_kmax` latents of each sampled token. A
    token that fires thousands of latents (a high-norm first token under a ReLU SAE of GPT-2 width)
    once made the pass allocate sampled events x that token's latent count: 20+ GB at d_sae 24576.
    Here 2048 latents fill their 32 reservoir slots on rows that fire all 2048: that was 65,536 x
    2048 entries (1 GiB per int64 tensor); it must stay near the batch's own 524,288 entries."""
    p = subprocess.run([sys.executable, str(CHILD), "dense", "2048"], capture_output=True, timeout=600)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    before, after = map(int, p.stdout.split())
    assert (after - before) * 1024 < 300e6, ((after - before) / 1024, "MB more for one batch")
