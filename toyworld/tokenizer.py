"""The toy world's word-level tokenizer (HF `tokenizers` WordLevel), loadable as a
`transformers.PreTrainedTokenizerFast`.

One token per word or punctuation mark, split on whitespace. Ids: 0 <pad>, 1 <bos>, 2 <eos>,
3 <unk>, then the lexicon's words in `toyworld.lexicon.VOCAB` order. Encoding prepends <bos>
(the post-processor does it, and the tokenizer says so with add_bos_token=True, so TransformerLens
sees `tokenizer_prepends_bos` and does not add a second one). Decoding joins words with single
spaces, so for corpus text `decode(encode(text), skip_special_tokens=True) == text`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from toyworld.lexicon import BOS, EOS, PAD, UNK, VOCAB

TOKENIZER_FILE = "tokenizer.json"


def build_tokenizer_object():
    """The raw `tokenizers.Tokenizer` for the toy vocabulary."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    vocab = {w: i for i, w in enumerate(VOCAB)}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    # WordPiece's decoder with an impossible prefix joins tokens with single spaces and does not
    # glue punctuation on when cleanup=False.
    tok.decoder = decoders.WordPiece(prefix="\x00\x00", cleanup=False)
    tok.add_special_tokens([PAD, BOS, EOS, UNK])
    return tok


def wrap(tok_obj):
    """Wrap a `tokenizers.Tokenizer` as a transformers fast tokenizer with our special tokens."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok_obj,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
        padding_side="right",
        name_or_path="toyworld",  # TransformerLens reads init_kwargs["name_or_path"]
    )


def build_tokenizer():
    """A fresh `PreTrainedTokenizerFast` for the toy vocabulary."""
    return wrap(build_tokenizer_object())


def save_tokenizer(directory: str | os.PathLike) -> Path:
    """Write tokenizer.json into `directory` atomically; returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / TOKENIZER_FILE
    text = build_tokenizer_object().to_str(pretty=True)
    _atomic_write_text(path, text)
    return path


def load_tokenizer(path: str | os.PathLike | None = None):
    """Load a toy tokenizer.json (default: the shipped one) as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer

    if path is None:
        path = Path(__file__).parent / "assets" / TOKENIZER_FILE
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"no toy tokenizer at {path}; run `python -m toyworld.train` (writes toyworld/assets/) "
            "or use toyworld.tokenizer.build_tokenizer()"
        )
    return wrap(Tokenizer.from_file(str(path)))


def vocab_words(tokenizer=None) -> list[str]:
    """id -> word list for a toy tokenizer (default: the toy vocabulary itself)."""
    if tokenizer is None:
        return list(VOCAB)
    vocab = tokenizer.get_vocab()
    out = [UNK] * (max(vocab.values()) + 1)
    for w, i in vocab.items():
        out[i] = w
    return out


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # by name: os.fchmod is POSIX-only before Python 3.13 (Windows)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    _atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=True) + "\n")
