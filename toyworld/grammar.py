"""Seeded generator of toy-world documents, each word with its ground-truth concept tags.

A document has one topic (setting), one narrative tense, one or two named characters, and 4-7
sentences: introductions ("anna was a happy sailor ."), actions with agreement ("the crabs swim
near the reef ."), moods, colours, "there is/are" sentences, questions ("did tom find the red
boat ?") and quoted dialogue (`" look at the two boats ! " anna shouted .`). Dialogue is in the
present tense and may use i/you/we; narration uses the document's tense.

The text form is lowercase words and punctuation marks separated by single spaces, so that a
word-level tokenizer round-trips it exactly.

The rules the generator follows are the ones `toyworld.validate` checks; `toyworld.tags` derives the
same tags from the words alone (the tests compare the three).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from toyworld.lexicon import (
    ADVERBS, COLOURS, FEEL_VERB, GENERAL_INTRANS_VERBS, GENERAL_TRANS_VERBS, LEXICON,
    LOOK_VERB, MOOD_VERBS, MOODS, NAMES, NUMBER_WORDS, PREPOSITIONS, SAY_VERBS, SIZES, TOPIC_WORDS,
    TOPICS, VOWELS,
)

TENSES = ("past", "present")
POSSESSIVE = {"he": "his", "she": "her", "they": "their", "i": "my", "you": "your", "we": "our"}
SUBJECT_PRONOUN = {"he": "he", "she": "she", "they": "they", "i": "i", "you": "you", "we": "we"}
OBJECT_PRONOUN = {"he": "him", "she": "her", "they": "them", "i": "me", "you": "you", "we": "us"}


@dataclass(frozen=True)
class Document:
    """One generated document. `words[i]` carries the concept tags `tags[i]`."""

    topic: str
    tense: str
    characters: tuple[str, ...]
    sentences: tuple[tuple[str, ...], ...]
    sentence_tags: tuple[tuple[frozenset, ...], ...]

    @property
    def words(self) -> list[str]:
        return [w for s in self.sentences for w in s]

    @property
    def tags(self) -> list[frozenset]:
        return [t for s in self.sentence_tags for t in s]

    @property
    def text(self) -> str:
        return " ".join(self.words)


# ----------------------------------------------------------------------------------------------
# small helpers

def agreement_of(ref: str) -> str:
    """Verb agreement class of a pronoun referent: 'sg3', 'plural' or 'i'."""
    if ref in ("he", "she"):
        return "sg3"
    if ref == "i":
        return "i"
    return "plural"  # they, you, we


def verb_form(forms: tuple[str, str, str], tense: str, agr: str) -> str:
    base, s, past = forms
    if tense == "past":
        return past
    return s if agr == "sg3" else base


def be_form(tense: str, agr: str) -> str:
    if tense == "past":
        return "were" if agr == "plural" else "was"
    return {"sg3": "is", "i": "am", "plural": "are"}[agr]


def do_form(tense: str, agr: str) -> str:
    if tense == "past":
        return "did"
    return "does" if agr == "sg3" else "do"


def article_for(next_word: str) -> str:
    return "an" if next_word[0] in VOWELS else "a"


class _Gen:
    """State of one document being generated."""

    def __init__(self, rng: random.Random, topic: str, tense: str, characters: tuple[str, ...]):
        self.rng = rng
        self.topic = topic
        self.tense = tense
        self.characters = characters
        self.tw = TOPIC_WORDS[topic]
        self.introduced: list[str] = []
        self.last_char: str | None = None

    # -- noun phrases ------------------------------------------------------------------------
    def noun(self, kinds: tuple[str, ...], number: str) -> str:
        r = self.rng
        kind = r.choice(kinds)
        if kind == "place":
            return r.choice(self.tw.places)
        pair = r.choice(getattr(self.tw, {"animal": "animals", "role": "roles", "object": "objects"}[kind]))
        return pair[0] if number == "sg" else pair[1]

    def adjectives(self, noun: str, allow_mood: bool) -> list[str]:
        r = self.rng
        out: list[str] = []
        if r.random() < 0.35:
            pool = ["size", "topic"] + (["mood"] if allow_mood else [])
            k = r.choice(pool)
            out.append(r.choice(SIZES) if k == "size" else r.choice(self.tw.adjectives) if k == "topic"
                       else r.choice(MOODS))
        if r.random() < 0.35:
            out.append(r.choice(COLOURS))
        return out

    def np(self, kinds: tuple[str, ...], number: str | None = None, poss: str | None = None,
           place: bool = False) -> tuple[list[str], str]:
        """A noun phrase: (words, number). `poss`: possessive determiner allowed (the subject's)."""
        r = self.rng
        if number is None:
            number = "pl" if (not place and r.random() < 0.4) else "sg"
        noun = self.noun(kinds, number)
        animate = LEXICON[noun].feats["kind"] in ("animal", "role")
        adjs = self.adjectives(noun, allow_mood=animate)
        rest = adjs + [noun]
        x = r.random()
        if poss is not None and x < 0.2:
            det = [poss]
        elif number == "sg":
            if place:
                det = [r.choice(["the", "the", "the", "this", "that", "a"])]
            elif x < 0.55:
                det = ["the"]
            elif x < 0.8:
                det = ["a"]
            elif x < 0.92:
                det = [r.choice(["this", "that"])]
            else:
                det = ["one"]
        else:
            if x < 0.45:
                det = [r.choice(NUMBER_WORDS[1:])]
            elif x < 0.7:
                det = ["the"]
            else:
                det = [r.choice(["these", "those", "some", "many"])]
        if det == ["a"]:
            det = [article_for(rest[0])]
        return det + rest, number

    def pp(self) -> list[str]:
        words, _ = self.np(("place",), number="sg", place=True)
        return [self.rng.choice(PREPOSITIONS)] + words

    # -- subjects ----------------------------------------------------------------------------
    def character_subject(self, allow_pair: bool = True) -> tuple[list[str], str, str]:
        """(words, agreement, referent) for a named character, a pronoun or a pair of names."""
        r = self.rng
        if allow_pair and len(self.introduced) >= 2 and r.random() < 0.15:
            a, b = r.sample(self.introduced, 2)
            return [a, "and", b], "plural", "they"
        if not self.introduced:
            raise AssertionError("character_subject before any introduction")
        name = self.last_char if (self.last_char and r.random() < 0.6) else r.choice(self.introduced)
        ref = NAMES[name]
        self.last_char = name
        if r.random() < 0.45:
            return [SUBJECT_PRONOUN[ref]], agreement_of(ref), ref
        return [name], "sg3", ref

    def subject(self, dialogue: bool = False) -> tuple[list[str], str, str | None]:
        r = self.rng
        x = r.random()
        if dialogue and x < 0.35:
            ref = r.choice(["i", "i", "you", "we"])
            return [ref], agreement_of(ref), ref
        if x < 0.7:
            return self.character_subject()
        words, number = self.np(("animal", "role"))
        return words, "sg3" if number == "sg" else "plural", None

    def obj(self, subj_ref: str | None, dialogue: bool) -> list[str]:
        r = self.rng
        if r.random() < 0.06 and self.introduced:
            ref = r.choice([NAMES[c] for c in self.introduced] + (["i", "you", "we"] if dialogue else []))
            return [OBJECT_PRONOUN[ref]]
        poss = POSSESSIVE[subj_ref] if subj_ref is not None else None
        words, _ = self.np(("object", "object", "object", "animal", "role"), poss=poss)
        return words

    # -- clauses (words only; tags are added by the caller) -------------------------------------
    def declarative(self, tense: str, dialogue: bool) -> list[str]:
        r = self.rng
        x = r.random()
        if x < 0.4:  # transitive
            subj, agr, ref = self.subject(dialogue)
            y = r.random()
            if y < 0.75:
                verb = [verb_form(r.choice(self.tw.trans_verbs), tense, agr)]
            elif y < 0.93:
                verb = [verb_form(r.choice(GENERAL_TRANS_VERBS), tense, agr)]
            else:
                verb = [verb_form(LOOK_VERB, tense, agr), "at"]
            words = subj + verb + self.obj(ref, dialogue)
            if r.random() < 0.35:
                words += self.pp()
            return words
        if x < 0.62:  # intransitive
            subj, agr, ref = self.subject(dialogue)
            y = r.random()
            forms = (r.choice(self.tw.intrans_verbs) if y < 0.6 else r.choice(GENERAL_INTRANS_VERBS) if y < 0.8
                     else MOOD_VERBS[r.choice(MOODS)])
            words = subj + [verb_form(forms, tense, agr)]
            if r.random() < 0.45:
                words += self.pp()
            return words
        if x < 0.74:  # mood
            subj, agr, ref = self.subject(dialogue)
            verb = be_form(tense, agr) if r.random() < 0.6 else verb_form(FEEL_VERB, tense, agr)
            return subj + [verb, r.choice(MOODS)]
        if x < 0.84:  # colour
            subj, number = self.np(("object", "object", "animal"))
            return subj + [be_form(tense, "sg3" if number == "sg" else "plural"), r.choice(COLOURS)]
        if x < 0.96:  # existential
            obj, number = self.np(("object", "animal", "animal", "role"))
            words = ["there", be_form(tense, "sg3" if number == "sg" else "plural")] + obj
            if r.random() < 0.6:
                words += self.pp()
            return words
        # intro-like predicate: "anna is a clever student ."
        return self.intro_clause(tense, self.rng.choice(self.introduced), repeat=True)

    def intro_clause(self, tense: str, name: str, repeat: bool = False) -> list[str]:
        r = self.rng
        role = r.choice(self.tw.roles)[0]
        adj = []
        if r.random() < 0.6:
            k = r.random()
            adj = [r.choice(MOODS) if k < 0.5 else r.choice(SIZES) if k < 0.7 else r.choice(self.tw.adjectives)]
        rest = adj + [role]
        self.last_char = name
        return [name, be_form(tense, "sg3"), article_for(rest[0])] + rest

    def question(self, tense: str, dialogue: bool) -> list[str]:
        r = self.rng
        x = r.random()
        if x < 0.3:  # yes/no with do
            subj, agr, ref = self.subject(dialogue)
            if r.random() < 0.7:
                forms = r.choice(self.tw.trans_verbs) if r.random() < 0.8 else r.choice(GENERAL_TRANS_VERBS)
                words = [do_form(tense, agr)] + subj + [forms[0]] + self.obj(ref, dialogue)
            else:
                forms = r.choice(self.tw.intrans_verbs) if r.random() < 0.7 else r.choice(GENERAL_INTRANS_VERBS)
                words = [do_form(tense, agr)] + subj + [forms[0]]
            if r.random() < 0.25:
                words += self.pp()
            return words
        if x < 0.48:  # where
            if r.random() < 0.5 and self.introduced:
                subj, agr, _ = self.character_subject()
            else:
                subj, number = self.np(("object", "animal", "role"))
                agr = "sg3" if number == "sg" else "plural"
            return ["where", be_form(tense, agr)] + subj
        if x < 0.62:  # how many
            noun = r.choice(self.tw.objects + self.tw.animals)[1]
            subj, agr, _ = self.subject(dialogue)
            forms = r.choice(self.tw.trans_verbs) if r.random() < 0.7 else r.choice(GENERAL_TRANS_VERBS)
            return ["how", "many", noun, do_form(tense, agr)] + subj + [forms[0]]
        if x < 0.75:  # what colour
            subj, number = self.np(("object", "animal"))
            return ["what", "colour", be_form(tense, "sg3" if number == "sg" else "plural")] + subj
        if x < 0.87:  # who
            forms = r.choice(self.tw.trans_verbs) if r.random() < 0.8 else r.choice(GENERAL_TRANS_VERBS)
            words = ["who", verb_form(forms, tense, "sg3")] + self.obj(None, dialogue)
            if r.random() < 0.3:
                words += self.pp()
            return words
        subj, agr, _ = self.subject(dialogue)  # mood yes/no
        return [be_form(tense, agr)] + subj + [r.choice(MOODS)]

    def imperative(self) -> list[str]:
        r = self.rng
        words: list[str] = []
        if r.random() < 0.3 and self.introduced:
            words = [r.choice(self.introduced), ","]
        x = r.random()
        if x < 0.5:
            forms = r.choice(self.tw.trans_verbs) if r.random() < 0.8 else r.choice(GENERAL_TRANS_VERBS)
            words += [forms[0]] + self.obj("you", True)
        elif x < 0.75:
            words += [LOOK_VERB[0], "at"] + self.np(("object", "animal", "role"))[0]
        else:
            forms = r.choice(self.tw.intrans_verbs) if r.random() < 0.7 else r.choice(GENERAL_INTRANS_VERBS)
            words += [forms[0]]
        if r.random() < 0.3:
            words += self.pp()
        return words


# ----------------------------------------------------------------------------------------------
# tagging of generated words: lexical tags plus the context the generator knows

def _tag(words: list[str], ctx: set[str]) -> list[frozenset]:
    return [LEXICON[w].tags | ctx for w in words]


def _clause_tags(words: list[str], ctx: set[str], tense: str | None) -> list[frozenset]:
    """Tags for a clause; bare verbs after an auxiliary take the clause tense."""
    out = []
    for w in words:
        e = LEXICON[w]
        t = e.tags | ctx
        if e.cat in ("verb", "feel") and e.feats.get("form") == "base" and tense is not None:
            t = t | {f"tense:{tense}"}
        out.append(frozenset(t))
    return out


def generate_document(rng: random.Random | int | str, topic: str | None = None, tense: str | None = None,
                      n_sentences: int | None = None) -> Document:
    """Generate one document. `rng`: a random.Random, or a seed (int or str) for a fresh one."""
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    if topic is None:
        topic = rng.choice(TOPICS)
    elif topic not in TOPIC_WORDS:
        raise ValueError(f"unknown topic {topic!r}; choose one of {', '.join(TOPICS)}")
    if tense is None:
        tense = rng.choice(TENSES)
    elif tense not in TENSES:
        raise ValueError(f"unknown tense {tense!r}; choose 'past' or 'present'")
    if n_sentences is None:
        n_sentences = rng.randint(4, 7)
    n_chars = 1 if rng.random() < 0.45 else 2
    characters = tuple(rng.sample(sorted(NAMES), n_chars))
    g = _Gen(rng, topic, tense, characters)

    sentences: list[tuple[str, ...]] = []
    sentence_tags: list[tuple[frozenset, ...]] = []

    def emit(words: list[str], tags: list[frozenset]) -> None:
        assert len(words) == len(tags)
        sentences.append(tuple(words))
        sentence_tags.append(tuple(tags))

    intro_at = {0: characters[0]}
    if n_chars == 2:
        intro_at[rng.randint(1, n_sentences - 1)] = characters[1]
    for i in range(n_sentences):
        if i in intro_at:
            name = intro_at[i]
            words = g.intro_clause(tense, name) + ["."]
            g.introduced.append(name)
            emit(words, _clause_tags(words, set(), tense))
            continue
        x = rng.random()
        if x < 0.55:
            words = g.declarative(tense, dialogue=False)
            adv = []
            if rng.random() < 0.15:
                adv = [rng.choice([a for a, t in ADVERBS.items() if t in (None, tense)])]
            words = adv + words + ["."]
            emit(words, _clause_tags(words, set(), tense))
        elif x < 0.72:
            words = g.question(tense, dialogue=False) + ["?"]
            emit(words, _clause_tags(words, {"question"}, tense))
        else:
            emit(*_dialogue(g))
    return Document(topic, tense, characters, tuple(sentences), tuple(sentence_tags))


def _dialogue(g: _Gen) -> tuple[list[str], list[frozenset]]:
    r = g.rng
    y = r.random()
    if y < 0.3:
        utt = g.imperative() + ["!"]
        utt_tags = _clause_tags(utt, {"dialogue", "imperative"}, None)
        say = "shout" if r.random() < 0.6 else "say"
    elif y < 0.65:
        end = "!" if r.random() < 0.3 else "."
        utt = g.declarative("present", dialogue=True) + [end]
        utt_tags = _clause_tags(utt, {"dialogue"}, "present")
        say = "say" if end == "." or r.random() < 0.4 else "shout"
    else:
        utt = g.question("present", dialogue=True) + ["?"]
        utt_tags = _clause_tags(utt, {"dialogue", "question"}, "present")
        say = "ask"
    q = LEXICON['"'].tags | {"dialogue"}
    words = ['"'] + utt + ['"']
    tags = [q] + utt_tags + [q]
    forms = SAY_VERBS[say]
    x = r.random()
    if x < 0.2:
        role = r.choice(g.tw.roles)
        number = "sg" if r.random() < 0.7 else "pl"
        speaker = ["the", role[0] if number == "sg" else role[1]]
        agr = "sg3" if number == "sg" else "plural"
    else:
        speaker, agr, _ = g.character_subject(allow_pair=False)
    verb = verb_form(forms, g.tense, agr)
    if speaker[0] in NAMES and r.random() < 0.35:
        attrib = [verb] + speaker + ["."]
    else:
        attrib = speaker + [verb, "."]
    return words + attrib, tags + _clause_tags(attrib, set(), g.tense)


def _doc_seed(seed: int, split: str, index: int) -> str:
    return f"toyworld/{seed}/{split}/{index}"


def iter_documents(seed: int, split: str, start: int = 0, stop: int | None = None):
    """Documents `start..stop` of a split. Document i depends only on (seed, split, i)."""
    i = start
    while stop is None or i < stop:
        yield generate_document(random.Random(_doc_seed(seed, split, i)))
        i += 1


__all__ = ["Document", "generate_document", "iter_documents", "TENSES"]
