"""The toy world's offline steering scorer: topic share and grammatical share of a continuation,
judged by the toy world's own lexicon and grammar (`toyworld.validate`). It lives in the face:
the face may import toyworld; the steering package itself does not. Used by `saesteer sweep
--topic`, `saesteer steer-eval` and the demo."""

from __future__ import annotations

from saes.errors import SaesteerError


class ToyScorerError(SaesteerError, ValueError):
    """An unknown toy-world topic or scoring context; the message lists the valid ones."""


def toy_topics() -> tuple[str, ...]:
    from toyworld.lexicon import TOPICS

    return tuple(TOPICS)


def toy_scorer(topic: str, context: str = "sentence"):
    """Offline scorer on the toy world: topic share of the continuation's content words, and the
    grammatical share of its complete sentences (an unfinished last sentence is dropped).

    context="sentence": each sentence is judged alone by the toy grammar; "document": with the
    document rules too (one narrative tense, names introduced before use, pronouns with a
    character of that gender), the prompt counting as the start of the document."""
    from toyworld.validate import TERMINALS, split_sentences, topic_counts, validate_document, validate_sentence

    from steering.evaluate import OfflineScorer

    topics = toy_topics()
    if topic not in topics:
        raise ToyScorerError(f"unknown toy-world topic {topic!r}; choose one of {', '.join(topics)}")
    if context not in ("sentence", "document"):
        raise ToyScorerError(f"context must be 'sentence' or 'document', got {context!r}")

    def share(text: str) -> float:
        c = topic_counts(text)
        total = sum(c.values())
        return c[topic] / total if total else 0.0

    def counts(text: str) -> tuple[int, int]:
        if context == "document":
            res = validate_document(text).sentences
        else:
            sents = split_sentences(text)
            if sents and sents[-1][-1] not in TERMINALS:
                sents = sents[:-1]
            res = [validate_sentence(w) for w in sents]
        return sum(r.grammatical for r in res), len(res)

    return OfflineScorer(share, counts, prompt_context=True)
