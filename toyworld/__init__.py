"""toyworld: a synthetic corpus whose every token carries ground-truth concept tags, a word-level
tokenizer, and a tiny TransformerLens model trained on it (weights shipped in toyworld/assets/).

Imports nothing else of ours; importing the package is light (torch and transformer_lens load only
when a function that needs them is called).

Public API:
    generate_document(rng_or_seed, topic=None, tense=None, n_sentences=None) -> Document
    iter_documents(seed, split, start=0, stop=None) -> Iterator[Document]
    validate_sentence(words) -> SentenceResult;  validate_document(text) -> DocumentResult
    grammatical_fraction(text, context=True) -> float
    topic_share(text) -> dict[topic, float];  topic_counts(text);  sentence_topic(words)
    tag_words(words, cut_start=False) -> list[frozenset[str]]
    concept_masks(token_ids_BS, concepts=None, vocab=None, cut_start=True) -> dict[str, BoolTensor]
    load_tokenizer(path=None) -> PreTrainedTokenizerFast;  build_tokenizer()
    load_model(device=None, dtype=None, directory=None) -> HookedTransformer
    write_corpus(CorpusConfig(...)); load_corpus(directory) -> datasets.DatasetDict
    corpus_files(split="train", directory=None, seed=0) -> list[Path]   (writes the default corpus once)
    TOPICS, MOODS, COLOURS, NAMES, CONCEPTS, VOCAB, topic_words(topic), word_topic(word),
    words_with(concept)
"""

from toyworld.corpus import CorpusConfig, corpus_files, default_corpus_dir, load_corpus, write_corpus
from toyworld.grammar import Document, generate_document, iter_documents
from toyworld.lexicon import (
    COLOURS, CONCEPTS, MOODS, NAMES, TOPICS, VOCAB, topic_words, word_topic, words_with,
)
from toyworld.model import load_model, weights_sha256
from toyworld.tags import concept_masks, tag_words
from toyworld.tokenizer import build_tokenizer, load_tokenizer
from toyworld.validate import (
    grammatical_fraction, sentence_topic, topic_counts, topic_share, validate_document, validate_sentence,
)

__all__ = [
    "COLOURS", "CONCEPTS", "CorpusConfig", "Document", "MOODS", "NAMES", "TOPICS", "VOCAB",
    "build_tokenizer", "concept_masks", "corpus_files", "default_corpus_dir", "generate_document",
    "grammatical_fraction", "iter_documents",
    "load_corpus", "load_model", "load_tokenizer", "sentence_topic", "tag_words", "topic_counts",
    "topic_share", "topic_words", "validate_document", "validate_sentence", "weights_sha256",
    "word_topic", "words_with", "write_corpus",
]
