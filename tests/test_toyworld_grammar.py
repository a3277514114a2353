"""Toy-world grammar: determinism, tags, the validator and the topic/grammar figures."""

import random

import pytest

from toyworld import (
    CONCEPTS, TOPICS, generate_document, grammatical_fraction, iter_documents, tag_words, topic_share,
    topic_words, validate_document, validate_sentence, words_with,
)
from toyworld.lexicon import LEXICON, NAMES, VOCAB
from toyworld.validate import split_sentences

N_DOCS = 600


@pytest.fixture(scope="module")
def docs():
    return [generate_document(random.Random(f"test-{i}")) for i in range(N_DOCS)]


def test_generator_is_deterministic_per_seed():
    a = [d.text for d in iter_documents(7, "train", 0, 20)]
    b = [d.text for d in iter_documents(7, "train", 0, 20)]
    assert a == b
    assert [d.text for d in iter_documents(7, "train", 5, 10)] == a[5:10]  # random access by index
    assert a != [d.text for d in iter_documents(8, "train", 0, 20)]
    assert a != [d.text for d in iter_documents(7, "validation", 0, 20)]
    assert generate_document(3).text == generate_document(3).text


def test_documents_cover_the_grammar(docs):
    assert len(TOPICS) >= 8
    assert {d.topic for d in docs} == set(TOPICS)
    assert {d.tense for d in docs} == {"past", "present"}
    words = {w for d in docs for w in d.words}
    for needed in ['"', "?", "!", "two", "were", "did", "does", "she", "he", "they", "an", "these"]:
        assert needed in words
    seen = {t for d in docs for tags in d.tags for t in tags}
    for c in ["dialogue", "question", "imperative", "plural", "colour", "number", "tense:past",
              "tense:present", "name", "pronoun:she", "mood:happy", "topic:ocean", "speech"]:
        assert c in seen, c
    assert seen <= set(CONCEPTS)
    assert set(words) <= set(VOCAB)


def test_text_is_lowercase_and_single_spaced(docs):
    for d in docs[:100]:
        assert d.text == d.text.lower()
        assert "  " not in d.text and d.text == d.text.strip()
        assert d.text.split() == d.words


def test_tags_align_with_words_and_rederive_exactly(docs):
    for d in docs:
        assert len(d.tags) == len(d.words)
        assert tag_words(d.words) == d.tags
    d = docs[0]
    for w, t in zip(d.words, d.tags):
        assert LEXICON[w].tags <= t  # lexical tags always present


def test_validator_accepts_every_generated_sentence(docs):
    for d in docs:
        res = validate_document(d.text)
        assert [s.words for s in res.sentences] == list(d.sentences)
        bad = [(" ".join(s.words), s.reason) for s in res.sentences if not s.grammatical]
        assert not bad, bad
        assert res.topic == d.topic
        assert res.tense == d.tense
        assert res.on_topic_fraction == 1.0


@pytest.mark.parametrize("sentence", [
    "anna saw two red boats near the reef .",
    "the crabs swim .",
    "there is an old anchor on the shore .",
    "did tom find his green shell ?",
    "how many shells does anna catch ?",
    "what colour were the boats ?",
    '" look at two whales ! " mia shouted .',
    '" where are the whales ? " asked tom .',
    '" anna , sail your boat ! " the sailors say .',
    "yesterday anna was a happy sailor .",
])
def test_validator_accepts_hand_written_sentences(sentence):
    r = validate_sentence(sentence)
    assert r.grammatical, r.reason


@pytest.mark.parametrize("sentence,why", [
    ("anna see two red boats .", "agreement"),
    ("the crabs swims .", "agreement"),
    ("anna saw two red boat .", "plural"),
    ("anna saw a red boats .", "plural"),
    ("anna saw these boat .", "plural"),
    ("there is two boats .", "there-agreement"),
    ("there were a boat .", "there-agreement"),
    ("anna saw a old boat .", "a/an"),
    ("anna saw an boat .", "a/an"),
    ("tom found her green shell .", "possessive"),
    ("anna found his boat .", "possessive"),
    ("did tom finds the shell ?", "bare verb"),
    ("does they swim ?", "do agreement"),
    ("anna saw the red big boat .", "adjective order"),
    ("yesterday anna sees a boat .", "tense adverb"),
    ('" look at the whale ! " mia asked .', "speech verb"),
    ('" where is the whale ? " mia said .', "speech verb"),
    ('" i sailed a boat . " mia said .', "dialogue tense"),
    ("anna saw two red boats near the reef", "no final punctuation"),
    ("i saw a boat .", "first person outside dialogue"),
    ('" look at the whale ! mia shouted .', "unclosed quote"),
    ("anna boat the saw .", "word order"),
])
def test_validator_rejects_corrupted_sentences(sentence, why):
    assert not validate_sentence(sentence).grammatical, why


def _swap_agreement(words):
    """Swap a present-tense verb between its -s and bare forms (always breaks agreement)."""
    for i, w in enumerate(words):
        e = LEXICON[w]
        if e.cat == "verb" and e.feats["form"] in ("s", "base"):
            lemma = e.feats["lemma"]
            forms = {LEXICON[x].feats["form"]: x for x, f in LEXICON.items()
                     if f.cat == "verb" and f.feats.get("lemma") == lemma}
            other = forms["base"] if e.feats["form"] == "s" else forms["s"]
            return words[:i] + [other] + words[i + 1:]
    return None


def _swap_number(words):
    """Make a noun after a number word disagree with it."""
    for i, w in enumerate(words[:-1]):
        if LEXICON[w].cat == "num":
            for j in range(i + 1, len(words)):
                e = LEXICON[words[j]]
                if e.cat == "noun":
                    lemma = e.feats["lemma"]
                    other = [x for x, f in LEXICON.items() if f.cat == "noun" and f.feats.get("lemma") == lemma
                             and x != words[j]]
                    return words[:j] + other + words[j + 1:] if other else None
    return None


def test_systematic_corruptions_are_rejected(docs):
    n_agree = n_number = 0
    for d in docs:
        for s in d.sentences:
            s = list(s)
            c = _swap_agreement(s)
            if c is not None:
                n_agree += 1
                assert not validate_sentence(c).grammatical, " ".join(c)
            c = _swap_number(s)
            if c is not None:
                n_number += 1
                assert not validate_sentence(c).grammatical, " ".join(c)
    assert n_agree > 100 and n_number > 100


def test_document_context_rules():
    ok = "anna was a sailor . she saw a boat . tom was a diver . he swam ."
    assert validate_document(ok).grammatical_fraction == 1.0
    wrong_pronoun = validate_document("anna was a sailor . he saw a boat .")
    assert [s.grammatical for s in wrong_pronoun.sentences] == [True, False]
    assert "no such character" in wrong_pronoun.sentences[1].reason
    not_introduced = validate_document("anna was a sailor . tom saw a boat .")
    assert not not_introduced.sentences[1].grammatical
    tense_switch = validate_document("anna was a sailor . she sees a boat .")
    assert not tense_switch.sentences[1].grammatical
    # the same sentences alone are grammatical
    assert validate_sentence("he saw a boat .").grammatical
    assert grammatical_fraction("anna was a sailor . he saw a boat .") == 0.5
    assert grammatical_fraction("anna was a sailor . he saw a boat .", context=False) == 1.0


def test_grammatical_fraction_splits_documents_and_drops_unfinished_sentence():
    text = "<bos> anna was a sailor . she saw a boat . <eos> <bos> tom was a chef . he baked a cake . he"
    assert grammatical_fraction(text) == 1.0
    assert grammatical_fraction("") == 0.0
    assert split_sentences('" look at the whale ! " mia shouted . she swam .') == [
        ['"', "look", "at", "the", "whale", "!", '"', "mia", "shouted", "."], ["she", "swam", "."]]


def test_topic_share_and_topic_words():
    share = topic_share("anna saw two red boats near the reef . the fox climbed a tree .")
    assert share["ocean"] == pytest.approx(2 / 5) and share["forest"] == pytest.approx(3 / 5)
    assert sum(share.values()) == pytest.approx(1.0)
    assert set(share) == set(TOPICS)
    assert all(v == 0.0 for v in topic_share("anna saw a red one .").values())
    for t in TOPICS:
        words = topic_words(t)
        assert len(words) >= 30
        assert all(f"topic:{t}" in LEXICON[w].tags for w in words)
    with pytest.raises(ValueError, match="unknown topic"):
        topic_words("jungle")
    assert sorted(words_with("colour")) == sorted(["red", "blue", "green", "yellow", "orange", "purple", "black"])
    assert words_with("dialogue") == []  # a context concept
    with pytest.raises(ValueError, match="unknown concept"):
        words_with("jungle")


def test_names_have_pronoun_genders():
    assert {NAMES[n] for n in NAMES} == {"he", "she", "they"}
