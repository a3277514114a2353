"""`make_tokenize`'s reading of special tokens written out stays its own: its first-batch check (and
its fallback) called `tokenizer(..., split_special_tokens=True)`, which transformers applies by setting
the flag on the tokenizer's shared Rust backend and leaving it set, so a prompt tokenized meanwhile in
another thread (a server's /v1 request while the web app reads latents on a text, the main thread while
the cache's prefetcher tokenizes) read its chat markers as text."""

from __future__ import annotations

import pytest

from helpers.real_models import build_family_tokenizer
from training.packing import make_tokenize

pytestmark = [pytest.mark.usefixtures("one_thread")]

DOCS = ["a page quoting <|im_start|>user and <|endoftext|> (caf\u00e9, \u65e5\u672c\u8a9e)", "def f():\n    return 1\n"]


@pytest.mark.parametrize("literal", [True, False])
def test_make_tokenize_leaves_the_shared_backend_as_it_was(real_corpus, literal):
    tok = build_family_tokenizer("qwen2", real_corpus.train_docs, 600)
    shared = tok.backend_tokenizer
    before = shared.encode_special_tokens
    tok.backend_tokenizer.encode_special_tokens = not literal  # as a call with the other reading left it
    got = make_tokenize(tok, literal)(DOCS)
    assert tok.backend_tokenizer is shared and shared.encode_special_tokens is (not literal)
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert (im_start in got[0]) is (not literal)
    shared.encode_special_tokens = before
