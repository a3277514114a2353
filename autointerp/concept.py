"""Offline concept explainer: a short phrase saying what a latent is about, with a confidence.

No LLM. It reads three kinds of evidence:

- the activating tokens (the marked positions of the top and quantile examples),
- the context: the words around the activations (a window of `context_window` tokens each side),
- what the latent writes: the tokens its decoder direction promotes (logit effects), and the
  tokens its neighbours (decoder cosine, co-firing) promote,

each compared with the background (contexts where the latent does not fire): a token counts when
it is over-represented, weighted by its contribution to the KL divergence from the background.

Two kinds of latents come out:

- lexical: a set of words explains most activations (prepositions, names, "was / is"). The phrase
  lists them: `by / in / on / near`; with a lexicon that names the set, `preposition: by, in, on`.
- contextual: it fires on many different tokens inside one kind of text (a story set at sea, a
  quotation, a question). Its theme is the words that the context and the written tokens agree
  on: `diver / sailor context: gulls, shells, nets`; with a lexicon, `ocean context: gulls, shells, nets`.

A lexicon maps category names to their words (`{"ocean": ["gull", "shell", ...], ...}`); the
category that covers the phrase's words best, smallest first, names it. Without one, words name
the concept. The toy world ships its dictionary as a lexicon (`toyworld.concept_lexicon()`).

Confidence in [0, 1]: for a lexical label, the share of activating positions whose token is in its
word set; for a contextual one, the share of activating examples whose context holds a theme word,
times how far the written tokens agree with the context (half credit when they do not).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .examples import Example, LatentEvidence, active_positions
from .offline import norm_token, readable_token

__all__ = ["CONCEPT_MODEL", "CONCEPT_PROMPT_VERSION", "ConceptExplainer", "ConceptExplanation", "explain_concept", "Lexicon",
           "load_lexicon",
           "SCAFFOLD_WORDS"]

CONCEPT_MODEL = "offline/concepts"
CONCEPT_PROMPT_VERSION = "concept-v1"
# words the phrase adds around the evidence words (readers of a label's words skip them)
SCAFFOLD_WORDS = frozenset({"context"})
_SPECIAL = re.compile(r"^<[^<>\s]*>$|^\[[A-Z_]+\]$|^<\|.*\|>$")


def _is_word(t: str) -> bool:
    """A normalised token worth naming: not empty, not a special token (<bos>, [CLS], <|endoftext|>),
    not a piece of a character cut in two (U+FFFD: byte-level BPE's bytes of a CJK letter or emoji)."""
    return bool(t) and not _SPECIAL.match(t) and readable_token(t)


class Lexicon:
    """Named word categories: `Lexicon({"ocean": ["gull", ...], "preposition": ["in", ...]})`."""

    def __init__(self, categories: Mapping[str, Sequence[str]]) -> None:
        self.categories = {str(name): frozenset(norm_token(w) for w in words if norm_token(w))
                           for name, words in categories.items()}
        self.categories = {k: v for k, v in self.categories.items() if len(v) >= 2}  # one word names itself

    def name(self, weights: Mapping[str, float], min_share: float = 0.6) -> tuple[str | None, float]:
        """The category holding the largest weighted share of `weights` (word -> weight); among
        shares within 0.05 of the best, the smallest category (the most specific name). (None, 0)
        when no category holds `min_share`."""
        total = sum(w for w in weights.values() if w > 0)
        if total <= 0:
            return None, 0.0
        shares = {name: sum(w for t, w in weights.items() if t in words and w > 0) / total
                  for name, words in self.categories.items()}
        best = max(shares.values(), default=0.0)
        if best < min_share:
            return None, 0.0
        near = [n for n, s in shares.items() if s >= best - 0.05]
        pick = min(near, key=lambda n: (len(self.categories[n]), -shares[n], n))
        return pick, round(shares[pick], 6)


@dataclass(frozen=True)
class ConceptExplanation:
    label: str
    kind: str  # "lexical" | "contextual" | "conjunctive" (its words inside a theme) | "none"
    name: str | None  # the lexicon's category name, when one named it
    head: tuple[str, ...]  # the words that name the concept (lexical: its words; contextual: context words)
    exemplars: tuple[str, ...]  # lexical: more of its words; contextual: the tokens it writes that fit the theme
    confidence: float
    token_set: tuple[str, ...]  # what the offline scorers test for: every word of the concept
    evidence: dict = field(default_factory=dict)  # weights per source, for the provenance

    def detail(self) -> dict:
        d = {"kind": self.kind, "name": self.name, "head": list(self.head), "exemplars": list(self.exemplars),
             "confidence": self.confidence, "token_set": list(self.token_set), "evidence": self.evidence}
        if "theme_set" in self.evidence:  # conjunctive: its words count only inside this theme
            d["theme_set"] = self.evidence["theme_set"]
        return d


def _kl_weights(fg: Counter, n_fg: int, bg: Counter, n_bg: int, vocab: int, min_lift: float,
                alpha: float = 0.5) -> dict[str, float]:
    """token -> p_fg * log(p_fg / p_bg) for tokens at least `min_lift` times likelier than in the background."""
    out = {}
    for t, c in fg.items():
        p = c / n_fg
        q = (bg.get(t, 0) + alpha) / (n_bg + alpha * vocab)
        if p / q >= min_lift:
            out[t] = p * math.log(p / q)
    return out


def _norm(w: Mapping[str, float]) -> dict[str, float]:
    top = max(w.values(), default=0.0)
    return {t: v / top for t, v in w.items()} if top > 0 else {}


def _top(w: Mapping[str, float], n: int, exclude: set[str] | frozenset = frozenset()) -> list[str]:
    return [t for t in sorted(w, key=lambda t: (-w[t], t)) if t not in exclude][:n]


def explain_concept(
    examples: Sequence[Example],
    background: Sequence[Example],
    evidence: LatentEvidence | None = None,
    *,
    lexicon: Lexicon | None = None,
    mark_threshold: float = 0.3,
    context_window: int = 6,
    lexical_coverage: float = 0.6,
    min_lift: float = 3.0,
    n_head: int = 2,
    n_exemplars: int = 3,
    n_promoted: int = 20,
    max_label_chars: int = 80,
    max_token_set: int = 30,
) -> ConceptExplanation:
    """The concept phrase of one latent (see the module docstring). `examples`: its activating
    examples; `background`: contexts where it does not fire; `evidence`: logit effects and neighbours.

    When a few words cover most activations, three readings compete: lexical (its words),
    contextual (its theme) and both at once (its words inside its theme, `words in THEME context`).
    Each is scored by how well it simulates the examples and the background (the correlation of its
    per-token prediction with the true activations); a reading with a theme needs the tokens the
    latent writes to back it (2 of its 3 exemplars). Ties go to the simpler reading."""
    evidence = evidence or LatentEvidence()
    st = _Stats.gather(examples, background, mark_threshold, context_window)
    if st.n_act == 0:
        return ConceptExplanation("(no activating tokens)", "none", None, (), (), 0.0, ())
    w_act = _kl_weights(st.act, st.n_act, st.bg, st.n_bg, st.vocab, min_lift)
    token_set = _top(w_act, max_token_set)
    coverage = sum(st.act[t] for t in token_set) / st.n_act

    def sep(e: ConceptExplanation) -> ConceptExplanation:
        e.evidence["separation"] = _separation(e.detail(), examples, background, context_window)
        return e

    lexical = None
    if token_set and coverage >= lexical_coverage:
        lexical = sep(_lexical(w_act, st, token_set, coverage, lexicon, n_head, n_exemplars, max_label_chars))
        if lexical.evidence["separation"] >= 0.9:
            return lexical  # its words alone tell where it fires
    contextual = sep(_contextual(w_act, st, evidence, lexicon, min_lift, n_head, n_exemplars, n_promoted,
                                 max_label_chars, max_token_set))
    if lexical is None:
        return contextual
    if contextual.evidence["agreement"] < 2 / 3:
        return lexical
    readings = [contextual]
    both = _conjunctive(lexical, contextual, max_label_chars)
    if both is not None:
        readings.insert(0, sep(both))
    best = lexical  # in order of simplicity: a later reading must beat the best so far clearly
    for e in readings:
        if e.evidence["separation"] > best.evidence["separation"] + 0.05:
            best = e
    return best


def _conjunctive(lexical: ConceptExplanation, contextual: ConceptExplanation,
                 max_label_chars: int) -> ConceptExplanation | None:
    """The lexical words, only inside the contextual theme: "the / tasty / hot in kitchen context:
    spoons, cakes"; None when the theme holds fewer than 3 words besides the lexical ones."""
    words = (lexical.head + lexical.exemplars)[:3]
    shown = set(lexical.head + lexical.exemplars)
    theme = [t for t in contextual.token_set if t not in shown]
    if len(theme) < 3:
        return None
    front = contextual.name or " / ".join(theme[:2])
    exemplars = tuple(t for t in contextual.exemplars if t not in shown) or tuple(theme[2:5])
    label = f"{' / '.join(words)} in {front} context: {', '.join(exemplars)}"
    ev = {k: v for k, v in contextual.evidence.items() if k != "separation"}
    return ConceptExplanation(_cut(label, max_label_chars), "conjunctive", contextual.name, tuple(words), exemplars,
                              round(min(lexical.confidence, contextual.confidence), 6), lexical.token_set,
                              {**ev, "theme_set": theme})


@dataclass
class _Stats:
    """Token counts at activations, around them, and in the background."""

    act: Counter
    ctx: Counter
    ctx_docs: Counter  # in how many examples a word is in the context
    bg: Counter
    bg_docs: Counter  # in how many background windows a word is
    after: Counter  # words right after an activation (what a word-class latent predicts, not a theme)
    contexts: list  # per activating example: the words of its context and activations
    n_act: int
    n_ctx: int

    @property
    def n_bg(self) -> int:
        return sum(self.bg.values())

    @property
    def vocab(self) -> int:
        return len(set(self.bg) | set(self.act) | set(self.ctx)) or 1

    @classmethod
    def gather(cls, examples: Sequence[Example], background: Sequence[Example], mark_threshold: float,
               context_window: int) -> "_Stats":
        st = cls(Counter(), Counter(), Counter(), Counter(), Counter(), Counter(), [], 0, 0)
        for ex in examples:
            marked = set(active_positions(ex, mark_threshold))
            if not marked:
                continue
            near: set[int] = set()
            for p in marked:
                near.update(range(max(0, p - context_window), min(len(ex.tokens), p + context_window + 1)))
            seen: set[str] = set()
            for p in marked:
                if p + 1 < len(ex.tokens) and p + 1 not in marked:
                    st.after[norm_token(ex.tokens[p + 1])] += 1
            for i, tok in enumerate(ex.tokens):
                t = norm_token(tok)
                if not _is_word(t):
                    continue
                if i in marked:
                    st.act[t] += 1
                    st.n_act += 1
                elif i in near:
                    st.ctx[t] += 1
                    st.n_ctx += 1
                    seen.add(t)
                if ex.acts[i] <= 0:
                    st.bg[t] += 1
            st.ctx_docs.update(seen)
            st.contexts.append(seen | {norm_token(ex.tokens[i]) for i in marked})
        for ex in background:
            words = [t for t in map(norm_token, ex.tokens) if _is_word(t)]
            st.bg.update(words)
            st.bg_docs.update(set(words))
        st.n_bg_docs = len(background)
        return st

    def common(self, share: float = 0.3) -> set[str]:
        """Words in more than `share` of the background windows: too common to mark a theme."""
        n = getattr(self, "n_bg_docs", 0)
        return {t for t, c in self.bg_docs.items() if n and c > share * n}


def _separation(detail: dict, examples: Sequence[Example], background: Sequence[Example], context_window: int) -> float:
    """How well a reading simulates the explanation examples and the background: the correlation of
    its per-token prediction (`autointerp.simulation.predict_tokens`) with the true activations. A
    lexical reading is judged on the words its label shows."""
    from .simulation import pearson, predict_tokens

    if detail["kind"] == "lexical":
        detail = {**detail, "token_set": detail["head"] + detail["exemplars"]}
    elif detail["kind"] == "contextual":
        detail = {**detail, "token_set": detail["token_set"][:10]}
    pred, true = [], []
    for ex in list(examples) + list(background):
        pred += predict_tokens("", detail, ex, context_window)
        true += ex.acts
    return round(pearson(pred, true), 6)


def _lexical(w_act: dict[str, float], st: _Stats, token_set: list[str], coverage: float, lexicon: Lexicon | None,
             n_head: int, n_exemplars: int, max_label_chars: int) -> ConceptExplanation:
    # the words shown: the best, then others with at least a fifth of its weight seen more than once
    best = max(w_act.values())
    words = [t for t in _top(w_act, n_head + n_exemplars)
             if w_act[t] >= 0.2 * best and (st.act[t] >= 2 or st.n_act < 4)] or _top(w_act, 1)
    name, share = (None, 0.0)
    if lexicon is not None and len(words) >= 2:  # one word names itself
        name, share = lexicon.name({t: float(st.act[t]) for t in words})
    label = f"{name}: {', '.join(words)}" if name else " / ".join(words)
    ev = {"activating": {t: round(w_act[t], 4) for t in words}, "coverage": round(coverage, 6), "lexicon_share": share}
    return ConceptExplanation(_cut(label, max_label_chars), "lexical", name, tuple(words[:n_head]),
                              tuple(words[n_head:]), round(coverage, 6), tuple(token_set), ev)


def _contextual(w_act: dict[str, float], st: _Stats, evidence: LatentEvidence, lexicon: Lexicon | None,
                min_lift: float, n_head: int, n_exemplars: int, n_promoted: int, max_label_chars: int,
                max_token_set: int) -> ConceptExplanation:
    """What the context, the activating tokens and the written tokens agree on."""
    need = 2 if len(st.contexts) >= 4 else 1
    w_ctx = {t: w for t, w in _kl_weights(st.ctx, max(st.n_ctx, 1), st.bg, st.n_bg, st.vocab, min_lift).items()
             if st.ctx_docs[t] >= need}
    common = st.common()
    s_ctx = _norm({t: w for t, w in w_ctx.items() if t not in common})
    s_act = _norm({t: w for t, w in w_act.items() if t not in common})
    # what it writes counts toward a theme unless it is what typically follows its words ("max" -> "is")
    n_after = sum(st.after.values())
    follows = {t for t, c in st.after.items() if c >= 0.2 * n_after}
    s_out = _norm({t: v for t, v in ((norm_token(t), v) for t, v in evidence.promoted[:n_promoted])
                   if _is_word(t) and v > 0 and t not in common and t not in follows})
    nbr: Counter[str] = Counter()
    for _, sim, toks in evidence.neighbours:
        for t in toks:
            t = norm_token(t)
            if _is_word(t):
                nbr[t] += sim
    s_nbr = _norm(dict(nbr))
    sources = {"context": s_ctx, "activating": s_act, "promoted": s_out, "neighbours": s_nbr}
    score: Counter[str] = Counter()
    agree: Counter[str] = Counter()  # in how many sources a word stands out
    for name, s in sources.items():
        for t, v in s.items():
            score[t] += v * (0.5 if name == "neighbours" else 1.0)
            agree[t] += 1
    # the head: words seen around the activations, best supported first
    head_w = {t: score[t] * (1 + 0.5 * (agree[t] - 1)) for t in set(s_ctx) | set(s_act)}
    head = _top(head_w, n_head)
    # exemplars: written tokens that fit the theme (another source backs them), else more context words
    backed = {t: s_out[t] + 0.5 * (score[t] - s_out[t]) for t in s_out if agree[t] >= 2}
    exemplars = _top(backed, n_exemplars, set(head))
    agreement = len(exemplars) / n_exemplars if s_out else 0.0
    if len(exemplars) < n_exemplars:
        exemplars += _top(head_w, n_exemplars - len(exemplars), set(head) | set(exemplars))
    seen_in_data = set(st.ctx) | set(st.act)
    theme = {t: score[t] for t in score if t in seen_in_data or t in backed}
    theme_set = _top(theme, max_token_set)
    if not head:  # nothing stands out from the background: the commonest activating token names it
        head = [st.act.most_common(1)[0][0]]
        theme_set = head
    name, share = (None, 0.0)
    if lexicon is not None:
        name, share = lexicon.name({t: theme[t] for t in _top(theme, 10)})
    hit = sum(1 for c in st.contexts if c & set(theme_set[:10])) / max(len(st.contexts), 1)
    confidence = round(hit * (0.5 + 0.5 * agreement), 6)
    front = name if name else " / ".join(head)
    label = f"{front} context: {', '.join(exemplars)}" if exemplars else f"{front} context"
    ev = {k: {t: round(v, 4) for t, v in sorted(s.items(), key=lambda kv: -kv[1])[:8]} for k, s in sources.items()}
    return ConceptExplanation(_cut(label, max_label_chars), "contextual", name, tuple(head), tuple(exemplars),
                              confidence, tuple(theme_set), {**ev, "agreement": round(agreement, 6), "lexicon_share": share})


def _cut(label: str, n: int) -> str:
    return label if len(label) <= n else label[: n - 1].rstrip() + "\u2026"


class ConceptExplainer:
    """The offline concept explainer as the runner uses it (no LLM, no cost)."""

    model = CONCEPT_MODEL
    source = "offline"
    prompt_version = CONCEPT_PROMPT_VERSION

    def __init__(self, *, lexicon: Lexicon | None = None, mark_threshold: float = 0.3) -> None:
        self.lexicon = lexicon
        self.mark_threshold = mark_threshold

    async def explain(self, latent: int, split) -> "Explanation":
        from .interp import Explanation

        e = explain_concept(split.explain, split.background, split.evidence, lexicon=self.lexicon,
                            mark_threshold=self.mark_threshold)
        return Explanation(e.label, e.detail())


def load_lexicon(spec: str | None, *, toy_store: bool = False) -> Lexicon | None:
    """`spec`: None or "none" (no lexicon), "toy" (the toy world's dictionary), "auto" (the toy
    world's for a store of the toy model, else none), or a JSON file {category: [words]}."""
    from pathlib import Path

    if spec is None or spec == "none" or (spec == "auto" and not toy_store):
        return None
    if spec in ("toy", "auto"):
        from toyworld.lexicon import concept_lexicon

        return Lexicon(concept_lexicon())
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"LabelConfig.lexicon: no file {path}; give a JSON file {{category: [words]}}, 'toy', 'auto' or 'none'")
    try:
        from saes.fileio import read_json

        data = read_json(path, "lexicon file")
    except (OSError, ValueError) as e:
        raise ValueError(f"LabelConfig.lexicon: cannot read {path} as JSON ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) and all(isinstance(w, str) for w in v) for v in data.values()):
        raise ValueError(f"LabelConfig.lexicon: {path} must hold one JSON object {{category: [word, ...]}}")
    return Lexicon(data)
