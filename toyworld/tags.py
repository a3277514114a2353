"""Concept tags re-derived from words or token ids alone (caches keep token ids, not tags).

A token's tags are its lexical tags (`toyworld.lexicon`: part of speech, topic, colour, number,
plural, mood, name, pronoun, tense of inflected verbs...) plus context tags from the words around
it, by these rules (which reproduce the generator's tags exactly on corpus text):

- dialogue: the quote marks and everything between them. A quote mark closes a quotation when a
  speech verb follows it (`" ... " anna said`, `" ... " said anna`, `" ... " the chef asked`), so
  the rule works on windows cut anywhere; a closing quote seen first in a window that starts
  mid-text marks everything before it as dialogue.
- question: every token of a clause that starts with do/does/did, a form of be, or where/who/what/
  how, up to and including its "?" (for a quoted question, the quote marks are not included).
- imperative: every token of a quoted clause that starts with a bare verb (or NAME "," bare verb),
  up to and including its "!".
- tense:past / tense:present on a bare verb: the tense of a do/does/did earlier in its clause, else
  present, except in imperatives (no tense).

<bos>, <eos> and <pad> are boundaries and carry no tags. On corpus text that starts at a document
(or sentence) start the tags are exact. A window cut from packed text (`cut_start=True`) errs only
by omission: its first partial clause gets no question/imperative tag (and its bare verbs a tense
only from a visible do/does/did), and a quote mark so close to the window's end that the speech
verb deciding its role is cut off leaves the undecidable side untagged.

Shape key: B batch, S sequence, V vocabulary, C concepts.
"""

from __future__ import annotations

from typing import Sequence

from toyworld.lexicon import BOS, CONCEPTS, EOS, LEXICON, NAMES, PAD, VOCAB

QUESTION_STARTERS = frozenset(["do", "does", "did", "where", "who", "what", "how",
                               "am", "is", "are", "was", "were"])
BOUNDARIES = frozenset([BOS, EOS, PAD])
TERMINALS = frozenset([".", "!", "?"])


def _is_speech(w: str | None) -> bool:
    e = LEXICON.get(w) if w is not None else None
    return e is not None and e.cat == "verb" and e.feats.get("kind") == "say"


def _closing_quote(words: Sequence[str], i: int) -> bool | None:
    """Is the quote mark at i a closing one? Decided by what follows (a speech verb, maybe after a
    speaker); None when the sequence ends before that can be seen."""
    n = len(words)

    def at(k: int) -> str | None:
        return words[k] if k < n else None

    nxt = at(i + 1)
    if nxt is None or nxt in BOUNDARIES:
        return None
    if _is_speech(nxt):
        return True
    if nxt in NAMES or nxt in ("he", "she", "they"):
        after = at(i + 2)
        return None if after is None else _is_speech(after)
    if nxt == "the":
        role, verb = at(i + 2), at(i + 3)
        if role is None:
            return None
        e = LEXICON.get(role)
        if e is None or e.cat != "noun" or e.feats.get("kind") != "role":
            return False
        return None if verb is None else _is_speech(verb)
    return False


def _is_base_verb(w: str) -> bool:
    e = LEXICON.get(w)
    return e is not None and e.cat == "verb" and e.feats.get("form") == "base"


def context_tags(words: Sequence[str], cut_start: bool = False) -> list[set[str]]:
    """Only the context tags (dialogue, question, imperative, tense of bare verbs) of each word.

    cut_start: the sequence may begin in the middle of a clause (a window cut from packed text), so
    its first clause (up to the first boundary, quote or terminal) is not tagged as question or
    imperative, and its bare verbs get a tense only from a visible do/does/did."""
    n = len(words)
    out: list[set[str]] = [set() for _ in range(n)]
    # 1. dialogue spans
    in_quote = False
    parity_known = not cut_start  # do we know whether position seg_start is inside a quotation?
    seg_start = 0
    for i, w in enumerate(words):
        if w in BOUNDARIES:
            in_quote, parity_known, seg_start = False, True, i + 1
            continue
        if w == '"':
            closing = _closing_quote(words, i)
            backfill = closing is True and not in_quote and not parity_known
            if closing is None:  # cut off: "!" only ever ends an utterance; else trust the parity
                if i > 0 and words[i - 1] == "!":
                    closing, backfill = True, not in_quote and not parity_known
                elif parity_known:
                    closing = in_quote
                else:  # undecidable: leave neighbours untagged rather than guess
                    closing, backfill = True, False
            if backfill:  # the window started inside a quotation
                for k in range(seg_start, i):
                    out[k].add("dialogue")
            out[i].add("dialogue")
            in_quote, parity_known = not closing, True
            continue
        if in_quote:
            out[i].add("dialogue")
    # 2. clauses (delimited by boundaries, quote marks and terminals, terminal included):
    #    question / imperative / bare-verb tense
    i = 0
    real = not cut_start  # does the clause at i really start there?
    while i < n:
        w = words[i]
        if w in BOUNDARIES or w == '"':
            i += 1
            real = True
            continue
        j = i
        while j < n and words[j] not in TERMINALS and words[j] != '"' and words[j] not in BOUNDARIES:
            j += 1
        has_term = j < n and words[j] in TERMINALS
        span = range(i, j + 1 if has_term else j)
        imperative = False
        if real and i < j:
            first = words[i]
            if first in QUESTION_STARTERS:
                for k in span:
                    out[k].add("question")
            elif "dialogue" in out[i] and (
                _is_base_verb(first)
                or (first in NAMES and i + 2 < n and words[i + 1] == "," and _is_base_verb(words[i + 2]))
            ):
                imperative = True
                for k in span:
                    out[k].add("imperative")
        aux_tense = None
        for k in range(i, j):
            e = LEXICON.get(words[k])
            if e is None:
                continue
            if e.cat == "do":
                aux_tense = e.feats["tense"]
            elif e.cat == "verb" and e.feats.get("form") == "base" and not imperative:
                if aux_tense is not None:
                    out[k].add(f"tense:{aux_tense}")
                elif real:
                    out[k].add("tense:present")
        i = j + 1 if has_term else j
        real = True
    return out


def tag_words(words: Sequence[str], cut_start: bool = False) -> list[frozenset]:
    """Full tags (lexical + context) of each word. Unknown words and special tokens get no tags.
    cut_start: see `context_tags` (False: the words begin at a document or sentence start)."""
    ctx = context_tags(words, cut_start)
    out = []
    for w, c in zip(words, ctx):
        e = LEXICON.get(w)
        out.append(frozenset((e.tags if e is not None else frozenset()) | c))
    return out


# ----------------------------------------------------------------------------------------------
# token-id batches

def _vocab_list(vocab) -> list[str]:
    if vocab is None:
        return list(VOCAB)
    if hasattr(vocab, "get_vocab"):  # a tokenizer
        v = vocab.get_vocab()
        words = ["<unk>"] * (max(v.values()) + 1)
        for w, i in v.items():
            words[i] = w
        return words
    return list(vocab)


def lexical_table(concepts: Sequence[str] | None = None, vocab=None):
    """Bool tensor [V, C]: does token id v carry lexical concept c (context tags are all False)."""
    import torch

    concepts = list(CONCEPTS if concepts is None else concepts)
    col = {c: j for j, c in enumerate(concepts)}
    words = _vocab_list(vocab)
    table_VC = torch.zeros(len(words), len(concepts), dtype=torch.bool)
    for v, w in enumerate(words):
        e = LEXICON.get(w)
        if e is None:
            continue
        for t in e.tags:
            if t in col:
                table_VC[v, col[t]] = True
    return table_VC


def concept_masks(token_ids_BS, concepts: Sequence[str] | None = None, vocab=None,
                  cut_start: bool = True) -> dict:
    """Per-token concept masks for a batch of toy-world token sequences.

    token_ids_BS: LongTensor [B, S] (or [S]) of toy tokenizer ids, e.g. cached tokens (with or
        without <bos>).
    concepts: which concepts (default all of `toyworld.CONCEPTS`); unknown names raise.
    vocab: id -> word (a list, or a tokenizer; default the toy vocabulary).
    cut_start: rows that do not begin with <bos> may begin mid-clause (see `context_tags`); pass
        False when every row begins at a document or sentence start even without <bos>. A row that
        begins with <bos> is exact either way.
    Returns {concept: BoolTensor [B, S]} on the ids' device.
    """
    import torch

    concepts = list(CONCEPTS if concepts is None else concepts)
    unknown = [c for c in concepts if c not in CONCEPTS]
    if unknown:
        raise ValueError(f"unknown concepts {unknown[:5]}; see toyworld.CONCEPTS for the {len(CONCEPTS)} names")
    ids_BS = torch.as_tensor(token_ids_BS)
    squeeze = ids_BS.ndim == 1
    if squeeze:
        ids_BS = ids_BS[None]
    if ids_BS.ndim != 2:
        raise ValueError(f"token_ids_BS must be [batch, seq] or [seq], got shape {tuple(ids_BS.shape)}")
    words = _vocab_list(vocab)
    ids_cpu = ids_BS.detach().to("cpu", torch.long)
    if ids_cpu.numel() and (int(ids_cpu.min()) < 0 or int(ids_cpu.max()) >= len(words)):
        raise ValueError(f"token ids must lie in [0, {len(words)}); is this the toy tokenizer's output?")
    table_VC = lexical_table(concepts, words)
    masks_BSC = table_VC[ids_cpu].clone()
    col = {c: j for j, c in enumerate(concepts)}
    ctx_cols = {c: col[c] for c in ("dialogue", "question", "imperative", "tense:past", "tense:present") if c in col}
    if ctx_cols:
        for b, row in enumerate(ids_cpu.tolist()):
            for s, tags in enumerate(context_tags([words[t] for t in row], cut_start)):
                for t in tags:
                    j = ctx_cols.get(t)
                    if j is not None:
                        masks_BSC[b, s, j] = True
    masks_BSC = masks_BSC.to(ids_BS.device)
    out = {c: masks_BSC[..., j] for c, j in col.items()}
    if squeeze:
        out = {c: m[0] for c, m in out.items()}
    return out
