"""Validator for toy-world text: is a sentence grammatical under the toy grammar, and what topic.

The grammar (the one `toyworld.grammar` generates from):

    sentence    := [ADV] DECL "." | QUESTION "?" | '"' UTTERANCE '"' ATTRIBUTION "."
    DECL        := SUBJ VT OBJ [PP] | SUBJ look at OBJ [PP] | SUBJ VI [PP] | SUBJ (be|feel) MOOD
                 | NP be COLOUR | there be NP [PP] | NAME be a|an [ADJ] ROLE
    QUESTION    := do SUBJ VT-base OBJ [PP] | do SUBJ VI-base [PP] | where be SUBJ
                 | how many NOUNS do SUBJ VT-base | what colour be NP | who VT OBJ [PP] | be SUBJ MOOD
    UTTERANCE   := IMPERATIVE "!" | DECL ("." | "!") | QUESTION "?"        (present tense; i/you/we allowed)
    IMPERATIVE  := [NAME ","] (VT-base OBJ | look at NP | VI-base) [PP]
    ATTRIBUTION := SPEAKER SAY | SAY NAME      (ask after "?", shout or say after "!", say after ".")
    NP          := DET [ADJ] [COLOUR] NOUN      (agreement: a/an/this/that/one + singular;
                                                 these/those/some/many/two..five + plural; a vs an)
    PP          := PREP (the|this|that|a|an) [ADJ] [COLOUR] PLACE

with agreement everywhere: the verb (or do/be form) agrees with its subject in person and number
in the present tense; a possessive in the object agrees with the subject ("anna found her boat");
time adverbs agree with the tense ("yesterday" + past). With document context
(`validate_document`, `grammatical_fraction`), narration keeps one tense, names are introduced
("anna was a sailor .") before use, and he/she/they pronouns need a character of that gender.
Topics do not make a sentence ungrammatical: mixing topics is measured by `topic_share`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from toyworld.grammar import POSSESSIVE, agreement_of
from toyworld.lexicon import LEXICON, NAMES, TOPICS, VOWELS

TERMINALS = (".", "!", "?")


class _Fail(Exception):
    pass


@dataclass(frozen=True)
class SentenceResult:
    """Verdict on one sentence. `kind`: 'statement', 'question', 'dialogue', 'intro' (or '' if rejected).
    `tense`: the narrative tense ('past'/'present', None if it has no finite narrative verb)."""

    words: tuple[str, ...]
    grammatical: bool
    reason: str = ""
    kind: str = ""
    tense: str | None = None
    topic: str | None = None
    introduces: str | None = None  # name introduced by "NAME was a ROLE ."
    pronoun_refs: tuple[str, ...] = ()  # he/she/they referents of 3rd-person pronouns used
    names: tuple[str, ...] = ()


@dataclass
class _Subj:
    agr: str  # sg3 | plural | i
    ref: str | None  # pronoun referent for possessive agreement, None for animals/roles NPs
    animate: bool
    kind: str  # name | pair | pron | np


@dataclass
class _Ctx:
    dialogue: bool = False
    tense: str | None = None  # tense of the clause being parsed
    pronoun_refs: list = field(default_factory=list)
    names: list = field(default_factory=list)


class _Parser:
    def __init__(self, words: list[str]):
        self.w = words
        self.i = 0

    # -- token access ------------------------------------------------------------------------------
    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.w[j] if j < len(self.w) else None

    def entry(self, k: int = 0):
        w = self.peek(k)
        return LEXICON.get(w) if w is not None else None

    def take(self) -> str:
        if self.i >= len(self.w):
            raise _Fail("sentence ends too early")
        w = self.w[self.i]
        self.i += 1
        return w

    def expect(self, *words: str) -> str:
        w = self.take()
        if w not in words:
            raise _Fail(f"expected {' or '.join(repr(x) for x in words)} at position {self.i - 1}, got {w!r}")
        return w

    def cat(self, k: int = 0) -> str | None:
        e = self.entry(k)
        return e.cat if e else None

    # -- agreement helpers ---------------------------------------------------------------------------
    @staticmethod
    def finite_ok(e, tense: str, agr: str) -> bool:
        form = e.feats["form"]
        if tense == "past":
            return form == "past"
        return form == ("s" if agr == "sg3" else "base")

    def finite_verb(self, cats: tuple[str, ...], ctx: _Ctx, agr: str, what: str):
        e = self.entry()
        if e is None or e.cat not in cats:
            raise _Fail(f"expected {what} at position {self.i}, got {self.peek()!r}")
        tense = "past" if e.feats["form"] == "past" else "present"
        self.set_tense(ctx, tense)
        if not self.finite_ok(e, tense, agr):
            raise _Fail(f"{e.word!r} does not agree with its subject ({agr})")
        self.take()
        return e

    def be(self, ctx: _Ctx, agr: str | None = None):
        """A be form; returns its entry. With `agr`, it must agree."""
        e = self.entry()
        if e is None or e.cat != "be":
            raise _Fail(f"expected a form of 'be' at position {self.i}, got {self.peek()!r}")
        self.set_tense(ctx, e.feats["tense"])
        if agr is not None and not self.be_agrees(e.word, agr):
            raise _Fail(f"{e.word!r} does not agree with its subject ({agr})")
        self.take()
        return e

    @staticmethod
    def be_agrees(form: str, agr: str) -> bool:
        return form == {"past": {"sg3": "was", "i": "was", "plural": "were"},
                        "present": {"sg3": "is", "i": "am", "plural": "are"}}[LEXICON[form].feats["tense"]][agr]

    @staticmethod
    def set_tense(ctx: _Ctx, tense: str) -> None:
        if ctx.tense is None:
            ctx.tense = tense
        elif ctx.tense != tense:
            raise _Fail(f"mixes tenses ({ctx.tense} and {tense})")
        if ctx.dialogue and tense != "present":
            raise _Fail("dialogue is in the present tense")

    # -- phrases ---------------------------------------------------------------------------------------
    def noun_phrase(self, kinds: tuple[str, ...], ctx: _Ctx, poss_ok: str | None = None,
                    place: bool = False) -> str:
        """DET [ADJ] [COLOUR] NOUN; returns the number 'sg'/'pl'."""
        det = self.take()
        e = LEXICON.get(det)
        if e is None:
            raise _Fail(f"unknown word {det!r}")
        if place:
            if det not in ("the", "this", "that", "a", "an"):
                raise _Fail(f"{det!r} cannot start a place phrase")
            need = "sg"
        elif e.cat == "det":
            need = e.feats["number"]
        elif e.cat == "num":
            need = e.feats["number"]
        elif e.cat == "pron" and e.feats["case"] in ("poss", "obj_or_poss"):
            if poss_ok is None:
                raise _Fail(f"possessive {det!r} is not allowed here")
            if det != poss_ok:
                raise _Fail(f"possessive {det!r} does not agree with the subject (needs {poss_ok!r})")
            self.note_pronoun(ctx, e)
            need = "any"
        else:
            raise _Fail(f"expected a determiner at position {self.i - 1}, got {det!r}")
        first = self.peek()
        if det in ("a", "an") and first is not None:
            want = "an" if first[0] in VOWELS else "a"
            if det != want:
                raise _Fail(f"{det!r} before {first!r} (needs {want!r})")
        adj = self.entry()
        if adj is not None and adj.cat == "adj" and adj.feats["kind"] != "colour":
            self.take()
            mood_adj = adj.feats["kind"] == "mood"
        else:
            mood_adj = False
        c = self.entry()
        if c is not None and c.cat == "adj" and c.feats["kind"] == "colour":
            self.take()
        n = self.entry()
        if n is None or n.cat != "noun":
            raise _Fail(f"expected a noun at position {self.i}, got {self.peek()!r}")
        if n.feats["kind"] not in kinds:
            raise _Fail(f"{n.word!r} ({n.feats['kind']}) cannot stand here")
        if mood_adj and n.feats["kind"] not in ("animal", "role"):
            raise _Fail(f"a mood adjective cannot describe {n.word!r}")
        if place and mood_adj:
            raise _Fail("a mood adjective cannot describe a place")
        if need != "any" and n.feats["number"] != need:
            raise _Fail(f"{det!r} does not agree in number with {n.word!r}")
        self.take()
        return n.feats["number"]

    def pp(self, ctx: _Ctx) -> None:
        self.expect(*[w for w, e in LEXICON.items() if e.cat == "prep" and w != "at"])
        self.noun_phrase(("place",), ctx, place=True)

    def maybe_pp(self, ctx: _Ctx) -> None:
        if self.cat() == "prep" and self.peek() != "at":
            self.pp(ctx)

    def note_pronoun(self, ctx: _Ctx, e) -> None:
        ref = e.feats["ref"]
        if ref in ("i", "you", "we"):
            if not ctx.dialogue:
                raise _Fail(f"{e.word!r} is only used inside dialogue")
        else:
            ctx.pronoun_refs.append(ref)

    def name(self, ctx: _Ctx) -> str:
        w = self.take()
        if w not in NAMES:
            raise _Fail(f"expected a name, got {w!r}")
        ctx.names.append(w)
        return w

    def subject(self, ctx: _Ctx, animate: bool = True, persons: bool = True) -> _Subj:
        """A subject: NAME [and NAME] | pronoun | NP (animal/role)."""
        e = self.entry()
        if e is None:
            raise _Fail("missing subject")
        if e.cat == "name":
            self.name(ctx)
            if self.peek() == "and":
                self.take()
                self.name(ctx)
                return _Subj("plural", "they", True, "pair")
            return _Subj("sg3", e.feats["ref"], True, "name")
        if e.cat == "pron" and e.feats["case"] in ("subj", "subj_or_obj"):
            if not persons and e.feats["ref"] in ("i", "you", "we"):
                raise _Fail(f"{e.word!r} cannot stand here")
            self.note_pronoun(ctx, e)
            self.take()
            return _Subj(agreement_of(e.feats["ref"]), e.feats["ref"], True, "pron")
        kinds = ("animal", "role") if animate else ("object", "animal", "role")
        number = self.noun_phrase(kinds, ctx)
        return _Subj("sg3" if number == "sg" else "plural", None, True, "np")

    def obj(self, ctx: _Ctx, subj: _Subj | None) -> None:
        e = self.entry()
        if e is not None and e.cat == "pron" and e.feats["case"] in ("obj", "obj_or_poss", "subj_or_obj"):
            nxt = self.entry(1)
            is_poss = e.feats["case"] == "obj_or_poss" and nxt is not None and nxt.cat in ("adj", "noun")
            if not is_poss:
                self.note_pronoun(ctx, e)
                self.take()
                return
        poss = POSSESSIVE.get(subj.ref) if subj is not None and subj.ref is not None else None
        self.noun_phrase(("object", "animal", "role"), ctx, poss_ok=poss)

    # -- clauses ---------------------------------------------------------------------------------------
    def declarative(self, ctx: _Ctx) -> str:
        """Returns 'intro' for NAME be a ROLE, else 'statement'."""
        e = self.entry()
        if e is None:
            raise _Fail("empty sentence")
        if e.cat == "there":
            self.take()
            be = self.be(ctx)
            number = self.noun_phrase(("object", "animal", "role"), ctx)
            if not self.be_agrees(be.word, "sg3" if number == "sg" else "plural"):
                raise _Fail(f"'there {be.word}' does not agree with a {'singular' if number == 'sg' else 'plural'} noun")
            self.maybe_pp(ctx)
            return "statement"
        # NP be COLOUR, with an object noun subject (animals may also take this form)
        if e.cat in ("det", "num") or (e.cat == "pron" and e.feats["case"] in ("poss",)):
            save = self.i
            try:
                number = self.noun_phrase(("object", "animal"), _Ctx(ctx.dialogue, ctx.tense))
                if self.cat() == "be":
                    c = self.entry(1)
                    if c is not None and c.cat == "adj" and c.feats["kind"] == "colour":
                        self.i = save
                        number = self.noun_phrase(("object", "animal"), ctx)
                        self.be(ctx, "sg3" if number == "sg" else "plural")
                        self.take()
                        return "statement"
            except _Fail:
                pass
            self.i = save
        subj = self.subject(ctx)
        v = self.entry()
        if v is None:
            raise _Fail("missing verb")
        if v.cat == "be":
            nxt = self.entry(1)
            if nxt is not None and nxt.word in ("a", "an"):  # NAME is a ROLE
                if subj.kind != "name":
                    raise _Fail("only a single name is introduced as 'NAME is a ROLE'")
                self.be(ctx, subj.agr)
                art = self.take()
                a = self.entry()
                first = self.peek()
                if first is None:
                    raise _Fail("sentence ends too early")
                if art != ("an" if first[0] in VOWELS else "a"):
                    raise _Fail(f"{art!r} before {first!r}")
                if a is not None and a.cat == "adj" and a.feats["kind"] in ("mood", "size", "topic"):
                    self.take()
                r = self.entry()
                if r is None or r.cat != "noun" or r.feats["kind"] != "role" or r.feats["number"] != "sg":
                    raise _Fail(f"expected a singular role noun (sailor, farmer...), got {self.peek()!r}")
                self.take()
                return "intro"
            self.be(ctx, subj.agr)
            m = self.entry()
            if m is None or m.cat != "adj" or m.feats["kind"] != "mood":
                raise _Fail(f"expected a mood adjective after {v.word!r}, got {self.peek()!r}")
            self.take()
            return "statement"
        if v.cat == "verb" and v.feats["kind"] == "feel":
            self.finite_verb(("verb",), ctx, subj.agr, "a verb")
            m = self.entry()
            if m is None or m.cat != "adj" or m.feats["kind"] != "mood":
                raise _Fail(f"expected a mood adjective after {v.word!r}, got {self.peek()!r}")
            self.take()
            return "statement"
        if v.cat == "verb" and v.feats["kind"] == "look":
            self.finite_verb(("verb",), ctx, subj.agr, "a verb")
            self.expect("at")
            self.obj(ctx, subj)
            self.maybe_pp(ctx)
            return "statement"
        if v.cat == "verb" and v.feats["kind"] == "vt":
            self.finite_verb(("verb",), ctx, subj.agr, "a verb")
            self.obj(ctx, subj)
            self.maybe_pp(ctx)
            return "statement"
        if v.cat == "verb" and v.feats["kind"] == "vi":
            self.finite_verb(("verb",), ctx, subj.agr, "a verb")
            self.maybe_pp(ctx)
            return "statement"
        raise _Fail(f"expected a verb at position {self.i}, got {v.word!r}")

    def base_verb(self, kinds: tuple[str, ...]):
        e = self.entry()
        if e is None or e.cat != "verb" or e.feats["kind"] not in kinds or e.feats["form"] != "base":
            raise _Fail(f"expected a bare verb at position {self.i}, got {self.peek()!r}")
        self.take()
        return e

    def do(self, ctx: _Ctx):
        e = self.entry()
        if e is None or e.cat != "do":
            raise _Fail(f"expected do/does/did, got {self.peek()!r}")
        self.set_tense(ctx, e.feats["tense"])
        self.take()
        return e

    @staticmethod
    def do_agrees(form: str, agr: str) -> bool:
        return form == "did" or form == ("does" if agr == "sg3" else "do")

    def question(self, ctx: _Ctx) -> None:
        e = self.entry()
        if e is None:
            raise _Fail("empty question")
        if e.cat == "do":
            d = self.do(ctx)
            subj = self.subject(ctx)
            if not self.do_agrees(d.word, subj.agr):
                raise _Fail(f"{d.word!r} does not agree with its subject ({subj.agr})")
            v = self.base_verb(("vt", "vi"))
            if v.feats["kind"] == "vt":
                self.obj(ctx, subj)
            self.maybe_pp(ctx)
            return
        if e.word == "where":
            self.take()
            be = self.be(ctx)
            f = self.entry()
            if f is not None and f.cat in ("name", "pron"):
                subj = self.subject(ctx, persons=False)
            else:
                number = self.noun_phrase(("object", "animal", "role"), ctx)
                subj = _Subj("sg3" if number == "sg" else "plural", None, False, "np")
            if not self.be_agrees(be.word, subj.agr):
                raise _Fail(f"{be.word!r} does not agree with its subject")
            return
        if e.word == "how":
            self.take()
            self.expect("many")
            n = self.entry()
            if n is None or n.cat != "noun" or n.feats["number"] != "pl" or n.feats["kind"] not in ("object", "animal"):
                raise _Fail(f"expected a plural noun after 'how many', got {self.peek()!r}")
            self.take()
            d = self.do(ctx)
            subj = self.subject(ctx)
            if not self.do_agrees(d.word, subj.agr):
                raise _Fail(f"{d.word!r} does not agree with its subject")
            self.base_verb(("vt",))
            return
        if e.word == "what":
            self.take()
            self.expect("colour")
            be = self.be(ctx)
            number = self.noun_phrase(("object", "animal"), ctx)
            if not self.be_agrees(be.word, "sg3" if number == "sg" else "plural"):
                raise _Fail(f"{be.word!r} does not agree with its subject")
            return
        if e.word == "who":
            self.take()
            self.finite_verb(("verb",), ctx, "sg3", "a verb")
            if LEXICON[self.w[self.i - 1]].feats["kind"] != "vt":
                raise _Fail("'who' takes a transitive verb here")
            self.obj(ctx, None)
            self.maybe_pp(ctx)
            return
        if e.cat == "be":
            be = self.be(ctx)
            subj = self.subject(ctx)
            if not self.be_agrees(be.word, subj.agr):
                raise _Fail(f"{be.word!r} does not agree with its subject")
            m = self.entry()
            if m is None or m.cat != "adj" or m.feats["kind"] != "mood":
                raise _Fail(f"expected a mood adjective, got {self.peek()!r}")
            self.take()
            return
        raise _Fail(f"a question cannot start with {e.word!r}")

    def imperative(self, ctx: _Ctx) -> None:
        if self.cat() == "name" and self.peek(1) == ",":
            self.name(ctx)
            self.take()
        e = self.entry()
        if e is not None and e.cat == "verb" and e.feats["kind"] == "look":
            if e.feats["form"] != "base":
                raise _Fail(f"expected 'look', got {e.word!r}")
            self.take()
            self.expect("at")
            self.noun_phrase(("object", "animal", "role"), ctx)
        else:
            v = self.base_verb(("vt", "vi"))
            if v.feats["kind"] == "vt":
                self.obj(ctx, _Subj("plural", "you", True, "pron"))
        self.maybe_pp(ctx)

    def end(self, *terms: str) -> str:
        return self.expect(*terms)

    def done(self) -> None:
        if self.i != len(self.w):
            raise _Fail(f"unexpected {self.w[self.i]!r} at position {self.i}")


QUESTION_STARTERS = frozenset(["do", "does", "did", "where", "how", "what", "who", "am", "is", "are", "was", "were"])


def _is_question_start(word: str | None) -> bool:
    return word in QUESTION_STARTERS


def _sentence_topic(words) -> str | None:
    counts: dict[str, int] = {}
    for w in words:
        e = LEXICON.get(w)
        t = e.feats.get("topic") if e else None
        if t:
            counts[t] = counts.get(t, 0) + 1
    if not counts:
        return None
    return max(sorted(counts), key=lambda t: counts[t])


def validate_sentence(words: list[str] | str) -> SentenceResult:
    """Check one sentence (list of words or a spaced string) against the grammar, without document
    context. A sentence of dialogue includes its quotes and attribution."""
    if isinstance(words, str):
        words = words.split()
    words = list(words)
    topic = _sentence_topic(words)
    unknown = [w for w in words if w not in LEXICON]
    if unknown:
        return SentenceResult(tuple(words), False, f"unknown word {unknown[0]!r}", topic=topic)
    p = _Parser(words)
    ctx = _Ctx()
    introduces = None
    try:
        if p.peek() == '"':
            p.take()
            uctx = _Ctx(dialogue=True)
            kind = "dialogue"
            first = p.entry()
            if first is not None and _is_question_start(first.word):
                p.question(uctx)
                term = p.end("?")
            elif first is not None and (
                (first.cat == "verb" and first.feats["form"] == "base" and first.feats["kind"] in ("vt", "vi", "look"))
                or (first.cat == "name" and p.peek(1) == ",")
            ):
                p.imperative(uctx)
                term = p.end("!")
            else:
                p.declarative(uctx)
                term = p.end(".", "!")
            p.expect('"')
            ctx.names.extend(uctx.names)
            ctx.pronoun_refs.extend(uctx.pronoun_refs)
            # attribution
            allowed = {"?": ("ask",), "!": ("shout", "say"), ".": ("say",)}[term]
            e = p.entry()
            if e is not None and e.cat == "verb" and e.feats.get("say"):  # inverted: said anna
                if e.feats["say"] not in allowed:
                    raise _Fail(f"{e.word!r} does not fit an utterance ending in {term!r}")
                p.finite_verb(("verb",), ctx, "sg3", "a speech verb")
                p.name(ctx)
            else:
                if e is not None and e.word == "the":
                    p.take()
                    r = p.entry()
                    if r is None or r.cat != "noun" or r.feats["kind"] != "role":
                        raise _Fail(f"expected a role noun after 'the', got {p.peek()!r}")
                    p.take()
                    agr = "sg3" if r.feats["number"] == "sg" else "plural"
                elif e is not None and e.cat == "name":
                    p.name(ctx)
                    agr = "sg3"
                elif e is not None and e.cat == "pron" and e.word in ("he", "she", "they"):
                    p.note_pronoun(ctx, e)
                    p.take()
                    agr = agreement_of(e.word)
                else:
                    raise _Fail(f"expected a speaker after the quote, got {p.peek()!r}")
                v = p.entry()
                if v is None or v.cat != "verb" or not v.feats.get("say"):
                    raise _Fail(f"expected said/asked/shouted, got {p.peek()!r}")
                if v.feats["say"] not in allowed:
                    raise _Fail(f"{v.word!r} does not fit an utterance ending in {term!r}")
                p.finite_verb(("verb",), ctx, agr, "a speech verb")
            p.end(".")
        elif _is_question_start(p.peek()):
            kind = "question"
            p.question(ctx)
            p.end("?")
        else:
            adv = p.entry()
            if adv is not None and adv.cat == "adv":
                p.take()
                if adv.feats["tense"] is not None:
                    ctx.tense = adv.feats["tense"]
            kind = p.declarative(ctx)
            if kind == "intro":
                introduces = words[1 if (adv is not None and adv.cat == "adv") else 0]
            p.end(".")
        p.done()
    except _Fail as exc:
        return SentenceResult(tuple(words), False, str(exc), topic=topic)
    return SentenceResult(tuple(words), True, "", kind, ctx.tense, topic, introduces,
                          tuple(ctx.pronoun_refs), tuple(ctx.names))


def split_sentences(words: list[str] | str) -> list[list[str]]:
    """Split a document's words into sentences (dialogue with its attribution is one sentence).

    Special tokens (<bos>, <eos>, <pad>) are dropped; an unfinished last sentence is kept."""
    if isinstance(words, str):
        words = words.split()
    out: list[list[str]] = []
    cur: list[str] = []
    in_quote = False
    for w in words:
        if w.startswith("<") and w.endswith(">"):
            continue
        cur.append(w)
        if w == '"':
            in_quote = not in_quote
            continue
        if w in TERMINALS and not in_quote:
            # a closing quote's attribution ends with "."; a plain sentence ends here
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


@dataclass(frozen=True)
class DocumentResult:
    sentences: tuple[SentenceResult, ...]
    topic: str | None  # the document's topic: the topic of its first sentence with topic words
    tense: str | None

    @property
    def grammatical_fraction(self) -> float:
        return sum(s.grammatical for s in self.sentences) / max(1, len(self.sentences))

    @property
    def on_topic_fraction(self) -> float:
        """Of sentences with topic words, the fraction whose topic words all belong to the document topic."""
        judged = [s for s in self.sentences if s.topic is not None]
        if not judged:
            return 1.0
        return sum(_all_topic(s.words, self.topic) for s in judged) / len(judged)


def _all_topic(words, topic) -> bool:
    for w in words:
        e = LEXICON.get(w)
        t = e.feats.get("topic") if e else None
        if t is not None and t != topic:
            return False
    return True


def validate_document(text_or_words, unfinished: str = "drop") -> DocumentResult:
    """Validate each sentence of one document with document context: narration keeps the tense of
    its first finite narrative verb; a name must be introduced ("anna was a sailor .") before it is
    used; he/she (him/her/his) need an introduced character of that gender, they/them a 'they'
    character (their may also refer to a pair subject in its own sentence).

    unfinished: what to do with a trailing sentence without its final punctuation ('drop' or 'keep',
    where it counts as ungrammatical)."""
    if unfinished not in ("drop", "keep"):
        raise ValueError(f"unfinished must be 'drop' or 'keep', got {unfinished!r}")
    sents = split_sentences(text_or_words)
    if sents and unfinished == "drop" and sents[-1][-1] not in TERMINALS:
        sents = sents[:-1]
    introduced: dict[str, str] = {}
    doc_tense: str | None = None
    doc_topic: str | None = None
    results = []
    for words in sents:
        r = validate_sentence(words)
        if doc_topic is None and r.topic is not None:
            doc_topic = r.topic
        if r.grammatical:
            reason = ""
            if r.introduces is not None and r.introduces not in introduced:
                introduced[r.introduces] = NAMES[r.introduces]
            for n in r.names:
                if n not in introduced:
                    reason = f"{n!r} is used before being introduced"
                    break
            if not reason:
                genders = set(introduced.values())
                pair_subject = "and" in words
                for ref in r.pronoun_refs:
                    if ref not in genders and not (ref == "they" and pair_subject):
                        reason = f"pronoun for {ref!r} but no such character has been introduced"
                        break
            if not reason and r.tense is not None:  # for dialogue, r.tense is the attribution's
                if doc_tense is None:
                    doc_tense = r.tense
                elif r.tense != doc_tense:
                    reason = f"narration switches from {doc_tense} to {r.tense} tense"
            if reason:
                r = SentenceResult(r.words, False, reason, r.kind, r.tense, r.topic, r.introduces,
                                   r.pronoun_refs, r.names)
        results.append(r)
    return DocumentResult(tuple(results), doc_topic, doc_tense)


# ----------------------------------------------------------------------------------------------
# figures used by steering and evaluation

def _docs_of(text: str) -> list[list[str]]:
    """Split text into documents at <bos>/<eos> markers (a text without them is one document)."""
    docs: list[list[str]] = [[]]
    for w in text.split():
        if w in ("<bos>", "<eos>"):
            if docs[-1]:
                docs.append([])
            continue
        if w == "<pad>":
            continue
        docs[-1].append(w)
    return [d for d in docs if d]


def grammatical_fraction(text: str, context: bool = True) -> float:
    """Fraction of the complete sentences in `text` that the grammar accepts (0.0 if none).

    context=True applies the document rules (tense, introduced names, pronoun genders) within each
    document (documents are separated by <bos>/<eos>); context=False judges sentences alone."""
    n = ok = 0
    for doc in _docs_of(text):
        if context:
            res = validate_document(doc).sentences
        else:
            sents = split_sentences(doc)
            if sents and sents[-1][-1] not in TERMINALS:
                sents = sents[:-1]
            res = [validate_sentence(s) for s in sents]
        n += len(res)
        ok += sum(r.grammatical for r in res)
    return ok / n if n else 0.0


def topic_counts(text: str) -> dict[str, int]:
    """How many words of `text` belong to each topic (all topics present as keys)."""
    counts = {t: 0 for t in TOPICS}
    for w in text.split():
        e = LEXICON.get(w)
        t = e.feats.get("topic") if e else None
        if t:
            counts[t] += 1
    return counts


def topic_share(text: str) -> dict[str, float]:
    """Share of topic-bearing content words (topic nouns, verbs, adjectives) that belong to each topic.

    Words of no topic (names, colours, function words, general verbs like 'see') are not counted.
    Values sum to 1, or are all 0.0 when the text has no topic words."""
    counts = topic_counts(text)
    total = sum(counts.values())
    return {t: (c / total if total else 0.0) for t, c in counts.items()}


def sentence_topic(words: list[str] | str) -> str | None:
    """The topic with most words in the sentence (ties: alphabetical), None without topic words."""
    return _sentence_topic(words.split() if isinstance(words, str) else words)
