"""Tiny, deterministic fixtures for tests and benchmarks: a word-level tokenizer, a randomly
initialised HookedTransformer and small local text corpora (jsonl / json / txt / parquet).

Everything here is offline and seeded. `transformer_lens` takes seconds to import, so it is
imported inside `make_model` only; the tokenizer and corpus helpers stay light.

Typical use::

    from helpers.tiny_model import make_tokenizer, make_model, write_corpus  # tests/ is on sys.path under pytest
    tok = make_tokenizer()
    model = make_model(tok, n_layers=2, d_model=64, n_ctx=64, seed=0)
    files = write_corpus(tmp_path / "corpus", n_docs=50, fmt="jsonl")
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Literal

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

# A small fixed vocabulary: function words plus a few topical groups, so generated text has
# some structure (sentences mix a subject, a verb and an object from one topic).
_TOPICS = {
    "ocean": "sea wave ship sailor fish salt tide harbor storm whale coral shore",
    "forest": "tree leaf branch moss deer owl fern root wolf path trail bark",
    "city": "street car tower train bridge market shop crowd light noise road bus",
    "kitchen": "bread soup knife pot salt oven butter onion spoon cup plate tea",
}
_FUNCTION = "the a an of to in on and with by at from is was are were it this that".split()
_VERBS = "sees finds holds moves carries watches follows crosses leaves meets".split()
_PUNCT = [".", ",", "!", "?"]


def word_list() -> list[str]:
    """All non-special words of the tiny vocabulary (stable order)."""
    words: list[str] = []
    for topic, ws in _TOPICS.items():
        words.append(topic)
        words.extend(ws.split())
    words.extend(_FUNCTION + _VERBS + _PUNCT)
    seen: set[str] = set()
    return [w for w in words if not (w in seen or seen.add(w))]


def make_tokenizer(extra_words: list[str] | None = None):
    """A word-level `PreTrainedTokenizerFast` with <pad>=0, <bos>=1, <eos>=2, <unk>=3.

    Splits on whitespace and punctuation; unknown words map to <unk>. It adds no special
    tokens by itself (callers decide the BOS policy)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in word_list() + list(extra_words or []):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        add_bos_token=True,  # stops TransformerLens from trying to re-load it from the hub
    )
    fast.name_or_path = "tiny-word-level"
    fast.init_kwargs["name_or_path"] = "tiny-word-level"  # TransformerLens reads it
    return fast


CHAT_ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
# A chat template in the style of real ones: BOS, then per message a role marker, the content and
# an end-of-turn marker; the generation prompt opens the assistant's turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_chat_tokenizer():
    """`make_tokenizer()` plus role markers as special tokens and a chat template (the word-level
    tokenizer has none; real chat models' tokenizers carry theirs)."""
    tok = make_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": list(CHAT_ROLE_TOKENS)})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_model(
    tokenizer=None,
    *,
    d_model: int = 64,
    n_layers: int = 2,
    n_ctx: int = 64,
    n_heads: int = 4,
    d_mlp: int | None = None,
    seed: int = 0,
    dtype=None,
    model_name: str = "tiny-test-model",
):
    """A randomly initialised HookedTransformer (seeded: same seed, same weights), in eval mode.

    The global RNG state is left as it was (the weights come from a forked RNG)."""
    import warnings

    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tokenizer = tokenizer if tokenizer is not None else make_tokenizer()
    cfg = HookedTransformerConfig(
        d_model=d_model,
        n_layers=n_layers,
        n_ctx=n_ctx,
        n_heads=n_heads,
        d_head=d_model // n_heads,
        d_mlp=d_mlp if d_mlp is not None else 4 * d_model,
        d_vocab=len(tokenizer),
        act_fn="gelu_new",
        normalization_type="LN",
        model_name=model_name,
        device="cpu",
        dtype=dtype if dtype is not None else torch.float32,
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated")
        torch.manual_seed(seed)
        model = HookedTransformer(cfg, tokenizer=tokenizer)
    model.eval()
    return model


def make_documents(n_docs: int, *, seed: int = 0, min_words: int = 3, max_words: int = 60) -> list[str]:
    """`n_docs` deterministic pseudo-sentences over the tiny vocabulary (lengths vary)."""
    rng = random.Random(seed)
    topics = list(_TOPICS)
    docs = []
    for _ in range(n_docs):
        n = rng.randint(min_words, max_words)
        topic_words = _TOPICS[rng.choice(topics)].split()
        words = []
        while len(words) < n:
            words += [rng.choice(_FUNCTION), rng.choice(topic_words), rng.choice(_VERBS),
                      rng.choice(_FUNCTION), rng.choice(topic_words), rng.choice(_PUNCT)]
        docs.append(" ".join(words[:n]))
    return docs


def write_corpus(
    directory: str | Path,
    *,
    n_docs: int = 100,
    seed: int = 0,
    fmt: Literal["jsonl", "json", "txt", "parquet"] = "jsonl",
    n_files: int = 1,
    column: str = "text",
    extra_columns: dict[str, object] | None = None,
) -> list[Path]:
    """Write `n_docs` documents into `n_files` files of format `fmt` under `directory`.

    jsonl/json/parquet rows have a `column` field (plus `extra_columns`, same value each row);
    txt files hold one document per line (read them with TextConfig(txt_documents="line")). Returns the
    file paths (sorted)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    docs = make_documents(n_docs, seed=seed)
    per = -(-len(docs) // n_files)
    paths = []
    for i in range(n_files):
        part = docs[i * per:(i + 1) * per]
        rows = [{column: d, **(extra_columns or {})} for d in part]
        path = directory / f"part-{i:03d}.{fmt}"
        if fmt == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif fmt == "json":
            path.write_text(json.dumps(rows))
        elif fmt == "txt":
            path.write_text("".join(d + "\n" for d in part))
        elif fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), path)
        else:
            raise ValueError(f"fmt must be jsonl, json, txt or parquet; got {fmt!r}")
        paths.append(path)
    return sorted(paths)
