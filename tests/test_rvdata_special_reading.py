"""How special tokens written out in the documents are read ("<|endoftext|>" as its characters, or as
the token) is decided once, on the training text, and followed by everything that reads that SAE's text
again: train --from-model records it in saesteer.json (data.text.special_tokens), a cache in its
manifest; eval packs the held-out split so, not as `--special-tokens auto` would decide on that split.
The auto decision says what it found and how to choose the other reading."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("offline_env", "one_thread")]

HOOK = "blocks.0.hook_resid_post"


def _rendered(i: int, para: str) -> str:
    """A row as a pipeline joined documents for the tokenizer: GPT-2's <|endoftext|> between them."""
    return f"{para}<|endoftext|>Question {i}: what follows?<|endoftext|>"


def _split_data(real_corpus, root: Path) -> Path:
    """train: every row rendered with <|endoftext|> written out (auto: matched); validation: prose,
    one row in six mentioning it (auto on that split alone: text)."""
    root.mkdir(parents=True, exist_ok=True)
    paras = [p.strip() for d in real_corpus.train_docs + real_corpus.validation_docs for p in d.split("\n\n")
             if len(p.strip()) > 40]
    train = [_rendered(i, p) for i, p in enumerate(paras[:120])]
    val = [p + (" The separator is <|endoftext|>." if i % 6 == 0 else "") for i, p in enumerate(paras[120:240])]
    for split, rows in (("train", train), ("validation", val)):
        (root / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows), encoding="utf-8")
    return root


def test_eval_reads_held_out_text_as_training_decided_not_as_auto_decides_on_it(real_models, real_corpus, tmp_path):
    """Trained --from-model on rows rendered with <|endoftext|> (auto: matched), an SAE was evaluated on
    the validation split read as text: auto decided again on that split, where few rows hold one, and
    eval's CE figures were of other tokens than train's own CE evaluation of the same split."""
    gpt2 = real_models.path("gpt2")
    data = _split_data(real_corpus, tmp_path / "data")
    r = saesteer("train", "--model", gpt2, "--dataset", data, "--split", "train", "--hook", HOOK, "--context-length", 32,
                 "--architecture", "topk", "--d-sae", 64, "--k", 4, "--total-tokens", 2048, "--batch-size", 256,
                 "--eval-ce-contexts", 8, "--progress", "false", "--out", tmp_path / "run").ok()
    assert "special tokens written out in 120 of the first 120 documents: matched" in r.text
    assert "--special-tokens text" in r.text  # how to choose the other reading
    sae = tmp_path / "run" / "saes" / "topk_k4_f64"
    recorded = json.loads((sae / "saesteer.json").read_text())["data"]["text"]
    assert recorded["special_tokens"] == "match"
    r = saesteer("eval", "--sae", sae, "--contexts", 8, "--ce-contexts", 8, "--absorption", "false", "--probing", "false",
                 "--no-progress", "--out", tmp_path / "ev").ok()
    assert re.search(r"contexts packed as the SAE was trained: .*--special-tokens match", r.text)  # said, as the others
    doc = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert doc["data"]["special_tokens"] == "match"
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())["saes"]["topk_k4_f64"]
    for key in ("ce_loss_clean", "ce_loss_spliced"):  # the same held-out tokens as train's CE evaluation
        assert doc["saes"]["sae"]["metrics"][key] == pytest.approx(trained[key], rel=1e-5), key


def test_a_cache_records_its_reading_for_the_saes_trained_on_it(real_models, real_corpus, tmp_path):
    """Trained on a cache, the SAE records the cache's reading in data.text (what eval follows once the
    cache is deleted); an SAE whose record has none (older versions) keeps auto."""
    from training.manifest import read_manifest
    from training.sources import cache_provenance, training_text_of

    data = _split_data(real_corpus, tmp_path / "data")
    saesteer("cache", "--model", real_models.path("gpt2"), "--dataset", data, "--split", "train", "--hooks", HOOK,
             "--context-length", 32, "--max-tokens", 256, "--out", tmp_path / "cache", "--no-progress").ok()
    man = read_manifest(tmp_path / "cache")
    assert man.settings["literal_special_tokens"] is False
    prov = cache_provenance(man, tmp_path / "cache", HOOK)
    assert prov["text"]["special_tokens"] == "match"
    gone = {k: v for k, v in prov.items() if k != "cache"}  # the cache deleted: data.text is what is left
    assert training_text_of(gone)[0].special_tokens == "match"
    older = {**gone, "text": {k: v for k, v in prov["text"].items() if k != "special_tokens"}}
    assert training_text_of(older)[0].special_tokens == "auto"
    # train --cache with the flag: auto (a config file's text section says it) reads the cache as it decided
    from saesteer.commands._train_data import check_cached_text
    from training.text import TextConfig

    given = {"special_tokens": "--special-tokens"}
    for ok in ("auto", "match"):
        check_cached_text(tmp_path / "cache", man, TextConfig(dataset=str(data), special_tokens=ok), given)
    with pytest.raises(ValueError, match=r"--special-tokens text \(the cache's: match\)"):
        check_cached_text(tmp_path / "cache", man, TextConfig(dataset=str(data), special_tokens="text"), given)


def test_auto_says_what_it_found_when_a_minority_of_documents_hold_special_tokens(real_corpus):
    """A corpus where a few rows are rendered chat reads them as text: said, with the flag that matches
    them, rather than silently; nothing said where no document holds one or the flag decided."""
    from helpers.real_models import build_family_tokenizer
    from training.packing import decide_special_tokens
    from training.text import TextConfig

    tok = build_family_tokenizer("qwen2", real_corpus.train_docs, 600)
    chat = "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nhi<|im_end|>\n"
    prose = list(real_corpus.train_docs[:10])
    auto = TextConfig(dataset="x")
    got = decide_special_tokens(auto, tok, prose + [chat] * 4)
    assert got.literal and got.note().startswith("special tokens written out in 4 of the first 14 documents: read as text")
    assert "--special-tokens match" in got.note()
    half = decide_special_tokens(auto, tok, prose[:4] + [chat] * 4)
    assert not half.literal and "--special-tokens text" in half.note()
    assert decide_special_tokens(auto, tok, prose).note() is None
    assert decide_special_tokens(TextConfig(dataset="x", special_tokens="text"), tok, [chat] * 4).note() is None


def test_top_on_text_reads_a_written_out_special_token_as_the_sae_training_data_did(real_models, real_corpus, tmp_path):
    """An SAE trained on prose (a few documents mention <|endoftext|>: read as text) was shown, for
    `features top-on-text "... <|endoftext|> ..."`, the latents of GPT-2's document-boundary token in
    mid-text: a position its training never had, read as a latent firing on those characters. Now the
    text is read as its training data were, and the output says how and which flag reads it otherwise."""
    from features.text import features_on_text
    from saes.formats import resolve_sae
    from saesteer.models import load_model

    gpt2 = real_models.path("gpt2")
    data = tmp_path / "prose.jsonl"
    docs = [p.strip() for d in real_corpus.train_docs for p in d.split("\n\n") if len(p.strip()) > 40][:80]
    docs[3] += ' In code: SEP = "<|endoftext|>".'
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
    saesteer("train", "--model", gpt2, "--dataset", data, "--hook", HOOK, "--context-length", 32, "--architecture",
             "topk", "--d-sae", 64, "--k", 4, "--total-tokens", 1024, "--batch-size", 256, "--eval-ce-contexts", 0,
             "--progress", "false", "--out", tmp_path / "run").ok()
    sae = tmp_path / "run" / "saes" / "topk_k4_f64"
    text = "The file ends with <|endoftext|> and then nothing."
    model = load_model(str(gpt2))
    eot = model.tokenizer.eos_token_id
    res = features_on_text(model, resolve_sae(str(sae)), text)
    ids = [t.token_id for t in res.tokens]
    assert res.special_tokens == "text" and ids[0] == eot and eot not in ids[1:]  # BOS, then the text's characters
    assert "".join(t.token for t in res.tokens[1:]) == text
    bare = features_on_text(model, resolve_sae(str(sae)).sae, text)  # the SAE alone, as the web app holds it
    assert [t.token_id for t in bare.tokens] == ids
    matched = features_on_text(model, resolve_sae(str(sae)), text, special_tokens="match")
    assert [t.token_id for t in matched.tokens].count(eot) == 2
    r = saesteer("features", "top-on-text", text, "--sae", sae).ok()
    assert "note: <|endoftext|> written in the text: read as text (their characters), as the SAE's training data " \
           "read them; --special-tokens match reads them the other way" in " ".join(r.out.split())
