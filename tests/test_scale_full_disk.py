"""`features build` onto a full disk. The pass state (`<out>.building.state.safetensors`, tens of MB
at a few thousand latents) is written by safetensors' Rust writer, which reports a failed write as a
`SafetensorError`, not an `OSError`: a full disk mid-build (seen on a 12 MB tmpfs with a 1M-token
cache) ended in "unexpected SafetensorError ... this is a bug in saesteer" instead of the one-line
"the disk is full: free some space ... re-run" every other stage gives. A file size limit (`ulimit
-f`) makes the same write fail portably (EFBIG; a tmpfs needs root).
"""

from __future__ import annotations

import pytest

from helpers.full_disk import file_size_limit

pytestmark = [pytest.mark.usefixtures("offline_env", "one_thread")]


@pytest.fixture(scope="module")
def sae_and_cache(tmp_path_factory):
    """A tiny GPT-2's cache of code + prose + CJK text and a TopK SAE trained on it, by the CLI."""
    from helpers.real_cli import saesteer
    from helpers.real_models import corpus_documents
    from helpers.tiny_hf import save_tiny_gpt2

    work = tmp_path_factory.mktemp("full-disk")
    model = save_tiny_gpt2(work / "gpt2", n_layer=1)
    docs = [d for d in corpus_documents() if len(d) < 4000][:30] + ["天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。"]
    (work / "text.txt").write_text("\n".join(d.replace("\n", " ") for d in docs))
    saesteer("cache", "--model", model, "--dataset", work / "text.txt", "--txt-documents", "line",
             "--context-length", 32, "--bos-policy", "none", "--out", work / "cache", "--no-progress").ok()
    saesteer("train", "--cache", work / "cache", "--out", work / "run", "--architecture", "topk", "--d-sae", 256,
             "--k", 4, "--total-tokens", 4096, "--batch-size", 256, "--holdout-tokens", 512, "--eval-every-tokens", 0,
             "--checkpoint-every-tokens", 0, "--model-eval", "false", "--no-progress", "--sae-name", "sae").ok()
    return work


def test_a_full_disk_while_saving_the_pass_state_is_a_clear_error(sae_and_cache, tmp_path):
    from helpers.real_cli import saesteer

    with file_size_limit(512 * 1024):  # the store's first pages fit, the state does not
        r = saesteer("features", "build", "--sae", sae_and_cache / "run/saes/sae", "--cache", sae_and_cache / "cache",
                     "--out", tmp_path / "store.db", "--checkpoint-rows", 512, "--no-progress")
    assert r.rc != 0
    r.no_traceback()
    assert "unexpected" not in r.text and "bug in saesteer" not in r.text, r.text[-800:]
    assert "file size limit" in r.text, r.text[-800:]
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "store.db").exists()  # nothing partial kept
