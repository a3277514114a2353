"""What the cache feeds each model family at the start of its contexts, as a user caches their model:
BOS where the family's tokenizer starts every text with it, a warning where --bos-policy none leaves
out the BOS a tokenizer adds (Gemma's activations are far off without it), none for GPT-2 / NeoX /
Qwen2, whose tokenizers add nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.real_cli import saesteer
from helpers.real_models import build_family_tokenizer, save_arch_model

pytestmark = [pytest.mark.usefixtures("offline_env", "one_thread")]

WARNING = "starts every text with BOS"


@pytest.fixture(scope="module")
def data(tmp_path_factory, real_corpus):
    path = tmp_path_factory.mktemp("bosdata") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in real_corpus.train_docs[:20]), encoding="utf-8")
    return path


def _cache(model, data, out, policy):
    return saesteer("cache", "--model", str(model), "--dataset", str(data), "--hooks", "blocks.0.hook_resid_post",
                    "--context-length", "32", "--max-tokens", "64", "--bos-policy", policy, "--out", str(out),
                    "--no-progress")


def test_gemma_contexts_start_with_bos_and_leaving_it_out_is_said(real_corpus, data, tmp_path):
    from training.shardset import iter_shards

    tok = build_family_tokenizer("gemma", real_corpus.train_docs, 600)
    model = save_arch_model(tmp_path / "gemma2", "gemma2", tok)
    r = _cache(model, data, tmp_path / "prepend", "prepend").ok()
    assert WARNING not in r.text
    ctx = np.concatenate([sd.context_tokens.numpy() for sd in iter_shards(tmp_path / "prepend")])
    assert (ctx[:, 0] == tok.bos_token_id).all() and (ctx[:, 1:] != tok.bos_token_id).all()  # one BOS, never two
    r = _cache(model, data, tmp_path / "none", "none").ok()
    assert WARNING in r.text and "'<bos>'" in r.text
    ctx = np.concatenate([sd.context_tokens.numpy() for sd in iter_shards(tmp_path / "none")])
    assert (ctx != tok.bos_token_id).all()


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_no_warning_where_the_tokenizer_adds_no_bos(real_models, data, tmp_path, family):
    r = _cache(real_models.path(family, train_steps=0), data, tmp_path / "none", "none").ok()
    assert WARNING not in r.text


def test_the_published_tokenizer_is_loaded_once_per_process(real_corpus, tmp_path, monkeypatch):
    """Each `open_packer` asks whether the tokenizer as published adds BOS; it is loaded from disk once
    (about a second at Gemma's size), and another tokenizer's folder is loaded for itself."""
    import transformers

    from training import packing
    from training.text import TextConfig

    loads, load = [], transformers.AutoTokenizer.from_pretrained

    def counted(name, *a, **kw):
        loads.append(str(name))
        return load(name, *a, **kw)

    tok = build_family_tokenizer("gemma", real_corpus.train_docs, 600)
    for name in ("a", "b"):
        tok.save_pretrained(tmp_path / name)
    packing._published_starts_with.cache_clear()
    mine = [transformers.AutoTokenizer.from_pretrained(str(tmp_path / name)) for name in ("a", "a", "b")]
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", counted)
    cfg = TextConfig(dataset="x", context_length=32, bos_policy="none")
    for t in mine:
        with pytest.warns(UserWarning, match=WARNING):
            packing.warn_bos_left_out(cfg, t)
    assert loads == [str(tmp_path / "a"), str(tmp_path / "b")]
