"""Special tokens written out in a user's text ("<|endoftext|>" in a web page, "<s>" in HTML, "<|im_start|>"
in a blog post about chat templates, "<bos>" in code) are text: the cache, `train --from-model` and eval's
held-out text tokenize them as their characters, never as the special token they name, which would put a
fake document boundary (GPT-2: <|endoftext|> is its EOS and BOS) or a BOS in the middle of a document.
As HF's `split_special_tokens=True`, tiktoken's `encode_ordinary` and SentencePiece read text."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.real_cli import saesteer
from helpers.real_models import build_family_tokenizer
from training.packing import make_tokenize

pytestmark = [pytest.mark.usefixtures("offline_env", "one_thread")]

WRITTEN_OUT = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<bos>", "<eos>", "[CLS]",
               "<|begin_of_text|>", "<|end_of_text|>", "<start_of_turn>", "<|padding|>")
# documents a scraper or a code corpus holds: the special tokens appear as characters
DOCS = [
    'SEP = "<|endoftext|>"\n\ndef join(docs):\n    return SEP.join(docs)  # GPT-2 separates documents with it\n',
    "Chat templates write <|im_start|>user\\nhi<|im_end|>; Llama-2 prompts start with <s>[INST] and end in </s>.\n",
    "Gemma's template begins with <bos><start_of_turn>user, BERT's input with [CLS] (caf\u00e9, \u65e5\u672c\u8a9e).\n",
    "tok.decode([0]) == '<|endoftext|>' and '<|begin_of_text|>' == tok.bos_token  # <eos> <|padding|>\n",
]


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama", "llama3", "qwen2", "gemma", "mistral"])
def test_special_tokens_written_in_text_are_tokenized_as_text(real_corpus, family):
    tok = build_family_tokenizer(family, real_corpus.train_docs, 600)
    specials = set(tok.all_special_ids)
    tokenize = make_tokenize(tok)
    tok(DOCS[0], split_special_tokens=False)  # transformers sets the shared backend's flag at every call
    for ids, doc in zip(tokenize(DOCS), DOCS):
        assert specials.isdisjoint(ids), [tok.convert_ids_to_tokens(i) for i in ids if i in specials]
        assert tok.decode(ids) == doc  # nothing lost: the characters round-trip
    # the matched reading, which caches made before this rule record (their resume continues it)
    matched = make_tokenize(tok, literal_specials=False)(DOCS)
    assert any(not specials.isdisjoint(ids) for ids in matched)


def test_cache_of_scraped_text_has_no_fake_document_boundaries(real_models, tmp_path):
    """GPT-2's <|endoftext|> is its BOS and EOS: each written-out one matched as the token would be
    a document end and start inside a document. The cache holds exactly the documents' tokens read as
    text, one EOS after each, and records the rule."""
    model = real_models.path("gpt2")
    data = tmp_path / "scraped.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS * 4), encoding="utf-8")
    out = tmp_path / "cache"
    saesteer("cache", "--model", str(model), "--dataset", str(data), "--hooks", "blocks.0.hook_resid_post",
             "--context-length", "32", "--max-tokens", "320", "--out", str(out), "--no-progress").ok()

    from transformers import AutoTokenizer

    from training.manifest import read_manifest
    from training.shardset import iter_shards

    tok = AutoTokenizer.from_pretrained(model)
    eot = tok.eos_token_id
    stream = [i for d in DOCS * 4 for i in tok(d, add_special_tokens=False, split_special_tokens=True)["input_ids"] + [eot]]
    contexts = np.concatenate([sd.context_tokens.numpy() for sd in iter_shards(out)])
    assert (contexts[:, 0] == eot).all()  # BOS prepended to every context
    assert contexts[:, 1:].reshape(-1).tolist() == stream[:contexts[:, 1:].size]
    assert read_manifest(out).settings["literal_special_tokens"] is True


def test_a_cache_made_before_the_rule_resumes_matching_special_tokens(real_models, tmp_path):
    """A cache whose manifest records no rule was packed matching written-out special tokens: a resume
    (and its estimate) continues that way rather than mixing two readings of the same text."""
    from transformers import AutoTokenizer

    from training.manifest import read_manifest
    from training.plan import refuse_mismatch

    model = real_models.path("gpt2")
    data = tmp_path / "scraped.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS * 2), encoding="utf-8")
    out = tmp_path / "cache"
    saesteer("cache", "--model", str(model), "--dataset", str(data), "--hooks", "blocks.0.hook_resid_post",
             "--context-length", "32", "--max-tokens", "64", "--out", str(out), "--no-progress").ok()
    settings = dict(read_manifest(out).settings)
    man = json.loads((out / "manifest.json").read_text())
    del man["literal_special_tokens"]
    (out / "manifest.json").write_text(json.dumps(man))
    refuse_mismatch(out, read_manifest(out), settings)  # no difference to refuse
    assert settings["literal_special_tokens"] is False
    tok = AutoTokenizer.from_pretrained(model)
    assert tok.eos_token_id in make_tokenize(tok, settings["literal_special_tokens"])([DOCS[0]])[0]
