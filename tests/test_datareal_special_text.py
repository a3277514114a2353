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
    docs = DOCS + list(real_models.corpus.train_docs[:12])  # a few documents of a corpus mention them
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    out = tmp_path / "cache"
    saesteer("cache", "--model", str(model), "--dataset", str(data), "--hooks", "blocks.0.hook_resid_post",
             "--context-length", "32", "--max-tokens", "320", "--out", str(out), "--no-progress").ok()

    from transformers import AutoTokenizer

    from training.manifest import read_manifest
    from training.shardset import iter_shards

    tok = AutoTokenizer.from_pretrained(model)
    eot = tok.eos_token_id
    stream = [i for d in docs for i in tok(d, add_special_tokens=False, split_special_tokens=True)["input_ids"] + [eot]]
    contexts = np.concatenate([sd.context_tokens.numpy() for sd in iter_shards(out)])
    assert (contexts[:, 0] == eot).all()  # BOS prepended to every context
    assert contexts[:, 1:].reshape(-1).tolist() == stream[:contexts[:, 1:].size]
    assert read_manifest(out).settings["literal_special_tokens"] is True


def test_a_cache_made_before_the_rule_resumes_matching_special_tokens(real_models, tmp_path):
    """A cache whose manifest records no rule was packed matching written-out special tokens: its
    resume under --special-tokens auto continues that way rather than mixing two readings of one
    text; a reading given that is not the cache's is refused, naming it."""
    from training.cache_config import CacheConfig
    from training.manifest import read_manifest
    from training.plan import plan_cache
    from training.text import TextConfig
    from saesteer.models import load_model

    model = real_models.path("gpt2")
    data = tmp_path / "scraped.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS + list(real_models.corpus.train_docs[:12])),
                    encoding="utf-8")
    out = tmp_path / "cache"
    argv = ("cache", "--model", str(model), "--dataset", str(data), "--hooks", "blocks.0.hook_resid_post",
            "--context-length", "32", "--max-tokens", "64", "--out", str(out), "--no-progress")
    saesteer(*argv).ok()
    man = json.loads((out / "manifest.json").read_text())
    assert man.pop("literal_special_tokens") is True
    (out / "manifest.json").write_text(json.dumps(man))  # as a cache made before the rule
    saesteer(*argv).ok()  # the same command: nothing refused
    text = TextConfig(dataset=str(data), context_length=32)
    plan = plan_cache(load_model(str(model)), text, CacheConfig(out=str(out), hooks=["blocks.0.hook_resid_post"]),
                      None, None, None)
    assert plan.settings["literal_special_tokens"] is False  # what the build's packer is opened with
    r = saesteer(*argv, "--special-tokens", "text").no_traceback()
    assert r.rc != 0 and "literal_special_tokens: cache has False, this run asks for True" in r.text
    assert "literal_special_tokens" not in json.loads((out / "manifest.json").read_text())


def _chatml(i: int) -> str:
    return (f"<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is {i} squared?<|im_end|>\n"
            f"<|im_start|>assistant\n{i * i}.<|im_end|>\n")


def test_auto_matches_special_tokens_in_text_rendered_by_a_chat_template(real_corpus):
    """A dataset whose rows a chat template rendered ("<|im_start|>user ..." in every one) was written
    for the tokenizer to match its markers; a web or code corpus mentions them in a few documents."""
    from training.packing import literal_specials_for
    from training.text import TextConfig

    tok = build_family_tokenizer("qwen2", real_corpus.train_docs, 600)
    chats = [_chatml(i) for i in range(12)] + DOCS[:2]
    web = list(real_corpus.train_docs[:12]) + DOCS  # 4 of 16 hold one
    auto, text, match = (TextConfig(dataset="x", special_tokens=s) for s in ("auto", "text", "match"))
    assert literal_specials_for(auto, tok, chats) is False
    assert literal_specials_for(auto, tok, web) is True
    assert literal_specials_for(text, tok, chats) is True and literal_specials_for(match, tok, web) is False
    ids = make_tokenize(tok, literal_specials=False)([_chatml(3)])[0]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3


def test_cache_of_chat_rendered_text_matches_its_markers_and_the_flag_decides(real_models, tmp_path):
    model = real_models.path("qwen2")
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"text": _chatml(i)}) + "\n" for i in range(40)), encoding="utf-8")
    from training.manifest import read_manifest
    from training.shardset import iter_shards

    common = ("--model", str(model), "--dataset", str(data), "--hooks", "blocks.0.hook_resid_post",
              "--bos-policy", "none", "--context-length", "32", "--max-tokens", "128", "--no-progress")
    r = saesteer("cache", *common, "--out", str(tmp_path / "auto")).ok()
    assert "matched (read as the special tokens they name" in r.text
    assert read_manifest(tmp_path / "auto").settings["literal_special_tokens"] is False
    from transformers import AutoTokenizer

    im_start = AutoTokenizer.from_pretrained(model).convert_tokens_to_ids("<|im_start|>")
    ctx = np.concatenate([sd.context_tokens.numpy() for sd in iter_shards(tmp_path / "auto")])
    assert (ctx == im_start).sum() >= 4
    saesteer("cache", *common, "--special-tokens", "text", "--out", str(tmp_path / "text")).ok()
    assert read_manifest(tmp_path / "text").settings["literal_special_tokens"] is True
    r = saesteer("cache", *common, "--special-tokens", "text", "--out", str(tmp_path / "auto")).no_traceback()
    assert r.rc != 0 and "literal_special_tokens" in r.text  # a resume with the other reading is refused


def test_training_from_the_model_reads_written_out_special_tokens_as_text(real_corpus):
    """`train --from-model` and eval's held-out text pack through `open_packer`, as the cache does."""
    from training.packing import open_packer
    from training.text import TextConfig

    tok = build_family_tokenizer("gpt2", real_corpus.train_docs, 600)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "scraped.jsonl"
        docs = DOCS + list(real_corpus.train_docs[:12])
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
        ctx = open_packer(TextConfig(dataset=str(data), context_length=32), tok).take(100)[0]
    stream = [i for t in docs for i in tok(t, add_special_tokens=False, split_special_tokens=True)["input_ids"]
              + [tok.eos_token_id]]
    assert ctx[:, 1:].reshape(-1).tolist() == stream[:ctx[:, 1:].size]
