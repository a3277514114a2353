"""`--model NAME@REVISION` of a hub model whose tokenizer at that revision starts every text with BOS
while the default branch's adds none (a repo that changed its tokenizer): the BOS check of
`--bos-policy none` read the tokenizer by name at the default branch, so it said nothing where the
model loaded at the revision does add BOS. Each command reads the revision's tokenizer: cache and
train without a cache (the model given by name@revision), eval (the model the SAE records, at its
commit)."""

from __future__ import annotations

import json

import pytest

from helpers.foreign_saes import write_hf_snapshot
from helpers.real_cli import saesteer
from helpers.tiny_hf import EOT, save_tiny_gpt2

pytestmark = pytest.mark.usefixtures("one_thread", "offline_env")
REPO = "someone/tiny-gpt2"
MAIN, BOS_BRANCH = "a" * 40, "b" * 40
WARNING = "starts every text with BOS"
HOOK = "blocks.0.hook_resid_post"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """REPO in an offline HF cache: main (MAIN) with a tokenizer that adds nothing, branch `bos`
    (BOS_BRANCH) with the same weights and vocabulary, its tokenizer starting every text with BOS."""
    from huggingface_hub import constants
    from tokenizers import processors
    from transformers import AutoTokenizer

    plain = save_tiny_gpt2(tmp_path / "plain")
    adds_bos = tmp_path / "adds-bos"
    tok = AutoTokenizer.from_pretrained(plain)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B", special_tokens=[(EOT, tok.bos_token_id)])
    tok.save_pretrained(adds_bos)
    cache = tmp_path / "hub"
    files = {p.name: p for p in plain.iterdir() if p.is_file()}
    write_hf_snapshot(cache, REPO, files, revision=MAIN)
    write_hf_snapshot(cache, REPO, {**files, **{p.name: p for p in adds_bos.iterdir() if p.is_file()}},
                      revision=BOS_BRANCH, ref="bos")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def text(tmp_path, real_corpus):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in real_corpus.train_docs[:20]), encoding="utf-8")
    return path


def _cache(model, text, out):
    return saesteer("cache", "--model", model, "--dataset", text, "--hooks", HOOK, "--context-length", 32,
                    "--max-tokens", 2048, "--bos-policy", "none", "--out", out, "--no-progress").ok()


def test_the_bos_check_reads_the_revisions_tokenizer(hub, text, tmp_path):
    from training.manifest import read_manifest

    r = _cache(f"{REPO}@bos", text, tmp_path / "at-bos")
    assert WARNING in r.text and "'<|endoftext|>'" in r.text  # the branch's tokenizer adds BOS
    assert read_manifest(tmp_path / "at-bos").recorded_model().revision == BOS_BRANCH
    r = _cache(REPO, text, tmp_path / "at-main")
    assert WARNING not in r.text  # main's adds none: nothing left out
    r = saesteer("train", "--model", f"{REPO}@bos", "--dataset", text, "--hook", HOOK, "--context-length", 32,
                 "--bos-policy", "none", "--architecture", "topk", "--d-sae", 64, "--k", 4, "--total-tokens", 1024,
                 "--batch-size", 128, "--holdout-tokens", 128, "--model-eval", "false", "--no-progress",
                 "--sae-name", "sae", "--out", tmp_path / "run").ok()
    assert WARNING in r.text
    # eval re-loads the SAE's recorded model (the branch's commit) and reads held-out text with its tokenizer
    r = saesteer("eval", "--sae", tmp_path / "run/saes/sae", "--dataset", text, "--split", "train",
                 "--allow-eval-overlap", "true", "--contexts", 4, "--ce-contexts", 4, "--absorption", "false",
                 "--probing", "false", "--no-progress", "--out", tmp_path / "ev")
    assert r.rc == 0, r.text[-2000:]
    assert WARNING in r.text


def test_a_pinned_model_reads_its_published_tokenizer_at_its_commit(hub):
    """What every load by name of a model's tokenizer reads (the BOS check, a pretokenized dataset's
    rows read as SAELens's tokenizer made them): the files of the model's commit."""
    from saesteer.models import load_model
    from training import packing, pretokenized

    for spec, adds in ((f"{REPO}@bos", True), (REPO, False)):
        tok = load_model(spec, device="cpu").tokenizer
        again = pretokenized._load_tokenizer(packing.tokenizer_name(tok), packing.tokenizer_revision(tok))
        assert (again("anna saw")["input_ids"][:1] == [again.bos_token_id]) is adds, spec
        assert packing._adds_bos_as_published(tok, tok.bos_token_id) is adds, spec


def test_a_sparsify_sae_given_the_model_at_a_revision_gets_that_tokenizer_s_bos(hub, tmp_path):
    """A sparsify run that records no model, given `--model NAME@REV`: whether its text started with BOS
    is read from that revision's tokenizer (the name with '@REV' was read as a repo name, found nowhere,
    and the BOS left to the model's default with a note)."""
    from helpers import foreign_saes as fs
    from saes.formats import resolve_sae
    from saes.formats.base import hf_tokenizer_adds_bos

    assert hf_tokenizer_adds_bos(f"{REPO}@bos") is True and hf_tokenizer_adds_bos(f"{REPO}@{BOS_BRANCH}") is True
    assert hf_tokenizer_adds_bos(REPO) is False
    state, cfg = fs.random_sparsify(32, 64, k=4)
    folder = fs.write_sparsify(tmp_path / "run" / "h.0", state, cfg)
    for spec, adds in ((f"{REPO}@bos", True), (REPO, False)):
        assert resolve_sae(folder, model=spec).sae.cfg.metadata["prepend_bos"] is adds, spec


def test_a_revision_not_on_this_machine_is_said_with_the_call_that_fetches_it(hub, tmp_path):
    import warnings

    from helpers import foreign_saes as fs
    from saes.formats import resolve_sae

    state, cfg = fs.random_sparsify(32, 64, k=4)
    folder = fs.write_sparsify(tmp_path / "run" / "h.0", state, cfg)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        resolve_sae(folder, model=f"{REPO}@v2")
    notes = [str(w.message) for w in said if "HF tokenizer is not on this machine" in str(w.message)]
    assert len(notes) == 1 and f"AutoTokenizer.from_pretrained('{REPO}', revision='v2')" in notes[0], notes
