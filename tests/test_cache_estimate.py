"""The cache estimate (the dry run, and the figure a build checks the disk against) against what the
build then writes, for `doc` + `eos` packing with a byte-level BPE tokenizer whose BOS is its EOS
(GPT-2's `<|endoftext|>`): the current rule writes one token between documents (`eos_is_next_bos`),
a cache an older saesteer started wrote two, and resuming it continues with two. The estimate used
the current rule's arithmetic for both, so for the older cache it counted one token per document
too few: fewer contexts and bytes than the resumed build wrote.
"""

from __future__ import annotations

import json
import shutil

import pytest

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def bos_is_eos_model(tmp_path_factory):
    """A random one-layer GPT-2 whose byte-level BPE tokenizer's BOS is its EOS (`<|endoftext|>`):
    what the packing rule turns on, and nothing here needs trained weights."""
    from helpers.tiny_hf import save_tiny_gpt2

    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), n_layer=1)


@pytest.fixture(scope="module")
def short_documents(tmp_path_factory):
    """400 short documents (all read by the estimate's sample: its figures are exact, not scaled),
    so that one token per document is a visible share of the stream."""
    d = tmp_path_factory.mktemp("short-docs")
    words = "the cat sat on a mat while the dog ran past an old red barn near the river".split()
    with open(d / "train.jsonl", "w") as f:
        for i in range(400):
            f.write(json.dumps({"text": " ".join(words[j % len(words)] for j in range(i % 7, i % 7 + 3 + i % 5))}) + "\n")
    return d


def _old_cache(new_cache, out):
    """The first manifest of a cache an older saesteer started (no `eos_is_next_bos`: an EOS after
    every document) and no shard yet: what `new_cache`'s settings would be then."""
    from training.manifest import MANIFEST_NAME

    man = json.loads((new_cache / MANIFEST_NAME).read_text())
    del man["eos_is_next_bos"]
    man.update(complete=False, shards=[], totals={k: 0 for k in man["totals"]})
    out.mkdir()
    (out / MANIFEST_NAME).write_text(json.dumps(man))
    return out


def test_the_doc_eos_estimate_is_what_the_build_writes_new_and_resumed(bos_is_eos_model, short_documents, tmp_path):
    from saesteer.models import load_model
    from training.cache import build_cache
    from training.cache_config import CacheConfig
    from training.estimate import estimate_cache
    from training.text import TextConfig

    model = load_model(str(bos_is_eos_model), device="cpu")
    assert model.tokenizer.bos_token_id == model.tokenizer.eos_token_id
    text = TextConfig(dataset=str(short_documents), split="train", context_length=32, bos_policy="doc", separator="eos")

    def estimate_then_build(out):
        cfg = CacheConfig(out=str(out), hooks=[HOOK], dtype="fp32")
        est = estimate_cache(model, text, cfg)
        built = build_cache(model, text, cfg, progress=False).manifest
        return est, built

    est_new, new = estimate_then_build(tmp_path / "new")
    est_old, old = estimate_then_build(_old_cache(tmp_path / "new", tmp_path / "old"))
    assert new.settings["eos_is_next_bos"] is True and old.settings["eos_is_next_bos"] is False
    assert old.total_contexts > new.total_contexts  # 400 more tokens: an EOS per document
    for est, built in ((est_new, new), (est_old, old)):
        tot = built.totals()
        assert est.contexts == tot["contexts"]
        assert est.rows_per_context == pytest.approx(tot["rows"] / tot["contexts"], rel=0.02)
        assert est.bytes_needed == pytest.approx(tot["bytes"], rel=0.01)
    shutil.rmtree(tmp_path / "new")
