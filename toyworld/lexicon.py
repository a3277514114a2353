"""The toy world's closed vocabulary: every surface form, its category and its concept tags.

Every surface form maps to exactly one lexical entry (no word is both a noun and a verb), so the
lexical tags of a token follow from the token alone. Contextual tags (inside quoted dialogue,
inside a question, the tense of a bare verb after "did", imperative clauses) are added by
`toyworld.tags` from the surrounding tokens.

All text is lowercase. Punctuation marks are words of their own, separated by single spaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TOPICS: tuple[str, ...] = ("ocean", "forest", "city", "space", "kitchen", "school", "farm", "castle")
MOODS: tuple[str, ...] = ("happy", "sad", "angry", "scared", "calm", "tired")
COLOURS: tuple[str, ...] = ("red", "blue", "green", "yellow", "orange", "purple", "black")
SIZES: tuple[str, ...] = ("big", "small", "old", "new")
NUMBER_WORDS: tuple[str, ...] = ("one", "two", "three", "four", "five")
# name -> the pronoun set that refers to that character
NAMES: dict[str, str] = {
    "anna": "she", "mia": "she", "lucy": "she", "emma": "she",
    "tom": "he", "ben": "he", "leo": "he", "max": "he",
    "sam": "they", "alex": "they", "robin": "they",
}
VOWELS = frozenset("aeiou")

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)


def _pl(noun: str) -> tuple[str, str]:
    if noun.endswith(("s", "sh", "ch", "x")):
        return noun, noun + "es"
    if noun.endswith("y") and noun[-2] not in VOWELS:
        return noun, noun[:-1] + "ies"
    return noun, noun + "s"


def _v(base: str, s: str | None = None, past: str | None = None) -> tuple[str, str, str]:
    """Verb forms (base, 3rd person singular present, past)."""
    if s is None:
        if base.endswith(("s", "sh", "ch", "x")):
            s = base + "es"
        elif base.endswith("y") and base[-2] not in VOWELS:
            s = base[:-1] + "ies"
        else:
            s = base + "s"
    if past is None:
        if base.endswith("e"):
            past = base + "d"
        elif base.endswith("y") and base[-2] not in VOWELS:
            past = base[:-1] + "ied"
        else:
            past = base + "ed"
    return base, s, past


@dataclass(frozen=True)
class TopicWords:
    """Lemmas of one topic. Nouns are (singular, plural); verbs are (base, 3sg, past)."""

    animals: tuple[tuple[str, str], ...]  # animate, non-human agents
    roles: tuple[tuple[str, str], ...]  # people by occupation
    objects: tuple[tuple[str, str], ...]
    places: tuple[str, ...]  # singular only, used after prepositions and in "where" answers
    trans_verbs: tuple[tuple[str, str, str], ...]
    intrans_verbs: tuple[tuple[str, str, str], ...]
    adjectives: tuple[str, ...]


TOPIC_WORDS: dict[str, TopicWords] = {
    "ocean": TopicWords(
        animals=(_pl("crab"), _pl("gull"), _pl("whale")),
        roles=(_pl("sailor"), _pl("diver")),
        objects=(_pl("boat"), _pl("shell"), _pl("net"), _pl("anchor"), _pl("pearl")),
        places=("reef", "shore", "harbour"),
        trans_verbs=(_v("sail"), _v("catch", past="caught"), _v("row")),
        intrans_verbs=(_v("swim", past="swam"), _v("float")),
        adjectives=("salty", "deep", "wet"),
    ),
    "forest": TopicWords(
        animals=(_pl("fox"), _pl("owl"), _pl("bear")),
        roles=(_pl("hunter"), _pl("ranger")),
        objects=(_pl("acorn"), ("leaf", "leaves"), _pl("mushroom"), _pl("tree"), _pl("pinecone")),
        places=("forest", "clearing", "river"),
        trans_verbs=(_v("chop", past="chopped"), _v("gather"), _v("climb")),
        intrans_verbs=(_v("hide", past="hid"), _v("howl")),
        adjectives=("leafy", "mossy", "wild"),
    ),
    "city": TopicWords(
        animals=(_pl("pigeon"), _pl("rat"), _pl("poodle")),
        roles=(_pl("driver"), _pl("officer")),
        objects=(_pl("bus"), _pl("car"), _pl("lamp"), _pl("ticket"), _pl("umbrella")),
        places=("street", "station", "market"),
        trans_verbs=(_v("drive", past="drove"), _v("park"), _v("buy", past="bought")),
        intrans_verbs=(_v("hurry"), _v("honk")),
        adjectives=("busy", "noisy", "modern"),
    ),
    "space": TopicWords(
        animals=(_pl("alien"), _pl("robot"), _pl("martian")),
        roles=(_pl("astronaut"), _pl("pilot")),
        objects=(_pl("rocket"), _pl("star"), _pl("planet"), _pl("helmet"), _pl("asteroid")),
        places=("moon", "crater", "galaxy"),
        trans_verbs=(_v("launch"), _v("orbit"), _v("scan", past="scanned")),
        intrans_verbs=(_v("drift"), _v("glow")),
        adjectives=("cosmic", "distant", "lunar"),
    ),
    "kitchen": TopicWords(
        animals=(("mouse", "mice"), _pl("cat"), _pl("ant")),
        roles=(_pl("chef"), _pl("baker")),
        objects=(_pl("pot"), _pl("spoon"), _pl("apple"), _pl("cake"), ("knife", "knives")),
        places=("table", "oven", "stove"),
        trans_verbs=(_v("bake"), _v("stir", past="stirred"), _v("slice")),
        intrans_verbs=(_v("nibble"), _v("sniff")),
        adjectives=("hot", "sweet", "tasty"),
    ),
    "school": TopicWords(
        animals=(_pl("hamster"), ("child", "children"), _pl("parrot")),
        roles=(_pl("teacher"), _pl("student")),
        objects=(_pl("book"), _pl("pencil"), _pl("desk"), _pl("eraser"), _pl("ruler")),
        places=("classroom", "library", "playground"),
        trans_verbs=(_v("write", past="wrote"), _v("study"), _v("draw", past="drew")),
        intrans_verbs=(_v("learn"), _v("whisper")),
        adjectives=("clever", "quiet", "tidy"),
    ),
    "farm": TopicWords(
        animals=(_pl("cow"), _pl("pig"), _pl("hen")),
        roles=(_pl("farmer"), _pl("herder")),
        objects=(_pl("egg"), _pl("tractor"), _pl("carrot"), _pl("bucket"), _pl("haystack")),
        places=("barn", "field", "meadow"),
        trans_verbs=(_v("feed", past="fed"), _v("plant"), _v("milk")),
        intrans_verbs=(_v("graze"), _v("munch")),
        adjectives=("muddy", "sunny", "dusty"),
    ),
    "castle": TopicWords(
        animals=(_pl("dragon"), _pl("ghost"), _pl("griffin")),
        roles=(_pl("knight"), ("princess", "princesses")),
        objects=(_pl("sword"), _pl("crown"), _pl("shield"), _pl("flag"), _pl("emerald")),
        places=("castle", "tower", "dungeon"),
        trans_verbs=(_v("guard"), _v("wield"), _v("defend")),
        intrans_verbs=(_v("fight", past="fought"), _v("roar")),
        adjectives=("royal", "ancient", "grand"),
    ),
}

# verbs of any topic
GENERAL_TRANS_VERBS = (_v("see", past="saw"), _v("find", past="found"), _v("want"), _v("like"),
                       _v("take", past="took"))
LOOK_VERB = _v("look")  # only as "look at NP"
GENERAL_INTRANS_VERBS = (_v("walk"), _v("run", past="ran"), _v("wait"), _v("sleep", past="slept"))
MOOD_VERBS: dict[str, tuple[str, str, str]] = {
    "happy": _v("laugh"), "sad": _v("cry"), "angry": _v("frown"),
    "scared": _v("shiver"), "calm": _v("rest"), "tired": _v("yawn"),
}
FEEL_VERB = _v("feel", past="felt")
SAY_VERBS = {"say": _v("say", past="said"), "ask": _v("ask"), "shout": _v("shout")}
DO_FORMS = {"do": ("present", "plural"), "does": ("present", "sg3"), "did": ("past", "any")}
BE_FORMS = {  # form -> (tense, agreement)
    "am": ("present", "i"), "is": ("present", "sg3"), "are": ("present", "plural"),
    "was": ("past", "sg"), "were": ("past", "plural"),
}
PRONOUNS = {  # form -> (case, referent set)
    "he": ("subj", "he"), "him": ("obj", "he"), "his": ("poss", "he"),
    "she": ("subj", "she"), "her": ("obj_or_poss", "she"),
    "they": ("subj", "they"), "them": ("obj", "they"), "their": ("poss", "they"),
    "i": ("subj", "i"), "me": ("obj", "i"), "my": ("poss", "i"),
    "you": ("subj_or_obj", "you"), "your": ("poss", "you"),
    "we": ("subj", "we"), "us": ("obj", "we"), "our": ("poss", "we"),
}
DETERMINERS = {  # form -> number it requires
    "a": "sg", "an": "sg", "the": "any", "this": "sg", "that": "sg",
    "these": "pl", "those": "pl", "some": "pl", "many": "pl",
}
PREPOSITIONS = ("in", "on", "near", "under", "by", "behind")
ADVERBS = {"then": None, "suddenly": None, "later": None, "yesterday": "past", "today": "present",
           "now": "present"}
WH_WORDS = ("where", "who", "what", "how")
OTHER_WORDS = ("there", "and", "at", "colour")
PUNCT = (".", ",", "!", "?", '"')


@dataclass(frozen=True)
class Entry:
    """One surface form. `cat` is the grammatical category the parser uses; `feats` its features."""

    word: str
    cat: str
    feats: dict = field(default_factory=dict, hash=False, compare=False)
    tags: frozenset = frozenset()


def _build() -> dict[str, Entry]:
    lex: dict[str, Entry] = {}

    def add(word: str, cat: str, tags: set[str], **feats) -> None:
        if word in lex:
            raise RuntimeError(f"toyworld lexicon: {word!r} defined twice ({lex[word].cat} and {cat})")
        lex[word] = Entry(word, cat, dict(feats), frozenset(tags))

    def add_noun(sg: str, pl: str, kind: str, topic: str | None) -> None:
        base = {"pos:noun", kind} | ({f"topic:{topic}"} if topic else set())
        add(sg, "noun", base, number="sg", kind=kind, topic=topic, lemma=sg)
        add(pl, "noun", base | {"plural"}, number="pl", kind=kind, topic=topic, lemma=sg)

    def add_verb(forms: tuple[str, str, str], kind: str, topic: str | None, extra: set[str] = frozenset(),
                 **feats) -> None:
        base, s, past = forms
        tags = {"pos:verb"} | set(extra) | ({f"topic:{topic}"} if topic else set())
        add(base, "verb", tags, form="base", kind=kind, topic=topic, lemma=base, **feats)
        add(s, "verb", tags | {"tense:present"}, form="s", kind=kind, topic=topic, lemma=base, **feats)
        add(past, "verb", tags | {"tense:past"}, form="past", kind=kind, topic=topic, lemma=base, **feats)

    for topic, tw in TOPIC_WORDS.items():
        for sg, pl in tw.animals:
            add_noun(sg, pl, "animal", topic)
        for sg, pl in tw.roles:
            add_noun(sg, pl, "role", topic)
        for sg, pl in tw.objects:
            add_noun(sg, pl, "object", topic)
        for p in tw.places:
            add(p, "noun", {"pos:noun", "place", f"topic:{topic}"}, number="sg", kind="place", topic=topic,
                lemma=p)
        for forms in tw.trans_verbs:
            add_verb(forms, "vt", topic)
        for forms in tw.intrans_verbs:
            add_verb(forms, "vi", topic)
        for a in tw.adjectives:
            add(a, "adj", {"pos:adj", f"topic:{topic}"}, kind="topic", topic=topic)
    for forms in GENERAL_TRANS_VERBS:
        add_verb(forms, "vt", None)
    add_verb(LOOK_VERB, "look", None)
    for forms in GENERAL_INTRANS_VERBS:
        add_verb(forms, "vi", None)
    for mood, forms in MOOD_VERBS.items():
        add_verb(forms, "vi", None, {"mood", f"mood:{mood}"}, mood=mood)
    add_verb(FEEL_VERB, "feel", None)
    for kind, forms in SAY_VERBS.items():
        add_verb(forms, "say", None, {"speech"}, say=kind)
    for form, (tense, agr) in DO_FORMS.items():
        add(form, "do", {"pos:aux", f"tense:{tense}"}, tense=tense, agr=agr)
    for form, (tense, agr) in BE_FORMS.items():
        add(form, "be", {"pos:verb", "be", f"tense:{tense}"}, tense=tense, agr=agr)
    for mood in MOODS:
        add(mood, "adj", {"pos:adj", "mood", f"mood:{mood}"}, kind="mood", mood=mood)
    for c in COLOURS:
        add(c, "adj", {"pos:adj", "colour", f"colour:{c}"}, kind="colour", colour=c)
    for s in SIZES:
        add(s, "adj", {"pos:adj", "size"}, kind="size")
    for i, n in enumerate(NUMBER_WORDS, start=1):
        add(n, "num", {"pos:num", "number", f"number:{n}"} | ({"plural"} if i > 1 else set()), value=i,
            number="sg" if i == 1 else "pl")
    for name, ref in NAMES.items():
        add(name, "name", {"pos:name", "name", f"name:{name}", f"gender:{ref}"}, ref=ref)
    for form, (case, ref) in PRONOUNS.items():
        add(form, "pron", {"pos:pron", "pronoun", f"pronoun:{ref}"}, case=case, ref=ref)
    for form, number in DETERMINERS.items():
        add(form, "det", {"pos:det"} | ({"plural"} if number == "pl" else set()), number=number)
    for p in PREPOSITIONS:
        add(p, "prep", {"pos:prep"})
    for a, tense in ADVERBS.items():
        add(a, "adv", {"pos:adv"} | ({f"tense:{tense}"} if tense else set()), tense=tense)
    for w in WH_WORDS:
        add(w, "wh", {"pos:wh"})
    add("there", "there", {"pos:other"})
    add("and", "and", {"pos:conj"})
    add("at", "at", {"pos:prep"})
    add("colour", "colourword", {"pos:noun"})
    for p in PUNCT:
        add(p, "punct", {"pos:punct"} | ({"quote"} if p == '"' else set()))
    return lex


LEXICON: dict[str, Entry] = _build()
WORDS: tuple[str, ...] = tuple(LEXICON)
VOCAB: tuple[str, ...] = SPECIAL_TOKENS + WORDS

# tags that depend on context, added by toyworld.tags
CONTEXT_TAGS: tuple[str, ...] = ("dialogue", "question", "imperative", "tense:past", "tense:present")


def topic_words(topic: str) -> list[str]:
    """All surface forms that belong to `topic` (nouns in both numbers, verbs in all forms, adjectives)."""
    if topic not in TOPIC_WORDS:
        raise ValueError(f"unknown topic {topic!r}; choose one of {', '.join(TOPICS)}")
    return [w for w, e in LEXICON.items() if f"topic:{topic}" in e.tags]


def words_with(concept: str) -> list[str]:
    """Words whose lexical tags include `concept` (e.g. 'colour', 'topic:farm', 'mood:sad').
    Context concepts (dialogue, question, imperative; tenses of bare verbs) depend on the
    surrounding words, so this lists only the words that carry them by themselves."""
    if concept not in CONCEPTS:
        raise ValueError(f"unknown concept {concept!r}; see toyworld.CONCEPTS")
    return [w for w, e in LEXICON.items() if concept in e.tags]


def word_topic(word: str) -> str | None:
    """The topic a word belongs to, or None for words of no topic (function words, colours, names...)."""
    e = LEXICON.get(word)
    return None if e is None else e.feats.get("topic")


def _concepts() -> tuple[str, ...]:
    tags: set[str] = set(CONTEXT_TAGS)
    for e in LEXICON.values():
        tags |= e.tags
    return tuple(sorted(tags))


CONCEPTS: tuple[str, ...] = _concepts()


# What each lexical concept is called in plain words (sub-concepts of one word, e.g. colour:red,
# are their word). Auto-interp's offline labeller names word groups with these (`concept_lexicon`),
# and the label benchmark checks whether a label names the concept a latent matches.
CONCEPT_NAMES: dict[str, str] = {
    **{f"topic:{t}": t for t in TOPICS},
    "pos:adj": "adjective", "pos:adv": "adverb", "pos:aux": "auxiliary", "pos:conj": "conjunction",
    "pos:det": "determiner", "pos:name": "name", "pos:noun": "noun", "pos:num": "number",
    "pos:other": "existential there", "pos:prep": "preposition", "pos:pron": "pronoun",
    "pos:punct": "punctuation", "pos:verb": "verb", "pos:wh": "question word",
    "be": "be", "speech": "speech verb", "mood": "mood", "colour": "colour", "name": "name", "role": "role",
    "place": "place", "animal": "animal", "object": "object", "number": "number", "plural": "plural",
    "size": "size", "quote": "quote", "pronoun": "pronoun",
    "dialogue": "dialogue", "question": "question", "imperative": "imperative",
    "tense:past": "past tense", "tense:present": "present tense",
}


def concept_lexicon() -> dict[str, list[str]]:
    """The toy world's dictionary as named word groups: {"ocean": ["crab", "crabs", ...],
    "preposition": [...], ...} (lexical concepts only: context concepts such as dialogue have no
    words of their own)."""
    out: dict[str, list[str]] = {}
    for concept, name in CONCEPT_NAMES.items():
        words = [w for w, e in LEXICON.items() if concept in e.tags]
        if len(words) >= 2:
            out.setdefault(name, [])
            out[name] += [w for w in words if w not in out[name]]
    return out
