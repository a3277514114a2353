"""Toy-world tokenizer, corpus files and concept masks."""

import json
import random

import pytest
import torch

from toyworld import CONCEPTS, concept_masks, generate_document, iter_documents, tag_words
from toyworld.corpus import CorpusConfig, corpus_files, iter_packed, load_corpus, packed_rows, write_corpus
from toyworld.lexicon import VOCAB
from toyworld.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_tokenizer_round_trips_corpus_text(tok):
    for i in range(200):
        text = generate_document(i).text
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert len(ids) == len(text.split()) + 1  # one token per word, plus <bos>
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert tok.decode(ids, clean_up_tokenization_spaces=False) == "<bos> " + text


def test_tokenizer_special_tokens_and_layout(tok):
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == ("<pad>", "<bos>", "<eos>", "<unk>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.get_vocab() == {w: i for i, w in enumerate(VOCAB)}
    assert tok("zebra")["input_ids"] == [1, 3]
    assert tok.encode("") == [1]  # TransformerLens reads this as "the tokenizer prepends BOS"
    assert tok.decode([1, VOCAB.index("anna"), VOCAB.index("."), 2]) == "<bos> anna . <eos>"


def test_tokenizer_save_and_load(tmp_path, tok):
    path = save_tokenizer(tmp_path)
    assert path.name == "tokenizer.json"
    json.loads(path.read_text())  # plain JSON
    loaded = load_tokenizer(tmp_path)
    text = generate_document(5).text
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    with pytest.raises(FileNotFoundError, match="toyworld.train"):
        load_tokenizer(tmp_path / "missing")


def test_corpus_files_load_with_datasets_and_tags_align(tmp_path):
    cfg = CorpusConfig(out=str(tmp_path / "c"), seed=3, train_docs=40, validation_docs=10, test_docs=12)
    write_corpus(cfg, progress=False)
    ds = load_corpus(cfg.out)
    assert {k: len(v) for k, v in ds.items()} == {"train": 40, "validation": 10, "test": 12}
    expected = [d.text for d in iter_documents(3, "validation", 0, 10)]
    assert list(ds["validation"]["text"]) == expected
    rows = [json.loads(line) for line in (tmp_path / "c" / "tags" / "validation.jsonl").read_text().splitlines()]
    assert len(rows) == 10
    for row, text in zip(rows, expected):
        assert row["words"] == text.split()
        assert [frozenset(t.split("|")) for t in row["tags"]] == tag_words(row["words"])
    assert not (tmp_path / "c" / "tags" / "train.jsonl").exists()  # train tags only on request
    meta = json.loads((tmp_path / "c" / "corpus.json").read_text())
    assert meta["seed"] == 3 and meta["train_docs"] == 40
    # corpus_files on an existing directory returns the split's file without rewriting
    assert corpus_files("test", directory=cfg.out, seed=3) == [tmp_path / "c" / "test.jsonl"]
    with pytest.raises(ValueError, match="seed"):
        corpus_files("test", directory=cfg.out, seed=4)
    with pytest.raises(ValueError, match="unknown split"):
        corpus_files("dev", directory=cfg.out, seed=3)


def test_packing_starts_rows_at_documents(tok):
    rows, next_doc = packed_rows(0, "validation", 6, 32, tok)
    assert rows.shape == (6, 32)
    assert (rows[:, 0] == tok.bos_token_id).all()
    assert next_doc > 6
    assert list(iter_packed([[1, 5, 2], [1, 6, 6, 2]], 4)) == [[1, 5, 2, 1]]


def _ids(tok, text):
    return torch.tensor(tok(text)["input_ids"])


def test_concept_masks_hand_checked_example(tok):
    text = 'anna was a sailor . she saw two red boats . " where is the boat ? " she asked .'
    #        1    2   3 4      5 6   7   8   9   10    11 12 13   14 15  16   17 18 19  20   21
    ids_S = _ids(tok, text)
    m = concept_masks(ids_S[None])
    assert m["dialogue"].shape == (1, 22) and m["dialogue"].dtype == torch.bool

    def where(c):
        return torch.nonzero(m[c][0]).flatten().tolist()

    assert where("dialogue") == list(range(12, 19))
    assert where("question") == list(range(13, 18))
    assert where("quote") == [12, 18]
    assert where("colour") == [9] and where("colour:red") == [9]
    assert where("plural") == [8, 10] and where("number") == [8]
    assert where("topic:ocean") == [4, 10, 16]
    assert where("tense:past") == [2, 7, 20] and where("tense:present") == [14]
    assert where("pronoun:she") == [6, 19] and where("name:anna") == [1] and where("gender:she") == [1]
    assert where("pos:punct") == [5, 11, 12, 17, 18, 21]
    assert where("imperative") == [] and where("topic:forest") == []
    # 1-D input, a concept subset, and the device of the input
    one = concept_masks(ids_S, concepts=["question"])
    assert set(one) == {"question"} and one["question"].shape == (22,)
    with pytest.raises(ValueError, match="unknown concepts"):
        concept_masks(ids_S, concepts=["topic:jungle"])
    with pytest.raises(ValueError, match="token ids"):
        concept_masks(torch.tensor([[1, 100000]]))


def test_concept_masks_match_generator_tags_on_corpus_rows(tok):
    rows, _ = packed_rows(0, "test", 12, 128, tok)
    m = concept_masks(rows, concepts=CONCEPTS)
    for b in range(rows.shape[0]):
        words = [VOCAB[t] for t in rows[b].tolist()]
        truth = tag_words(words)
        for s, tags in enumerate(truth):
            got = {c for c in CONCEPTS if m[c][b, s]}
            assert got == set(tags), (b, s, words[s])
    # and tag_words on corpus words equals the generator's own tags
    d = generate_document(random.Random("masks"))
    assert tag_words(d.words) == d.tags


def test_concept_masks_on_cut_windows_err_only_by_omission(tok):
    rows, _ = packed_rows(0, "validation", 30, 128, tok)
    rng = random.Random(0)
    missed = 0
    for b in range(rows.shape[0]):
        truth = tag_words([VOCAB[t] for t in rows[b].tolist()])
        start, length = rng.randrange(1, 100), rng.randrange(4, 28)
        m = concept_masks(rows[b, start:start + length][None])
        for c in CONCEPTS:
            for k in range(length):
                want, got = c in truth[start + k], bool(m[c][0, k])
                assert not (got and not want), (c, b, start + k)
                missed += want and not got
    assert missed < 100  # only the first partial clause can lose tags
