"""The shipped toy model, the training script (a few steps) and the evaluation helpers."""

import json

import pytest
import torch

import toyworld
from toyworld import generate_document, grammatical_fraction
from toyworld.corpus import packed_rows
from toyworld.evaluate import grammar_figures, ngram_baselines, sample_documents, training_markdown
from toyworld.model import ASSETS_DIR
from toyworld.train import TrainConfig, evaluate_loss, lr_at, train


@pytest.fixture(scope="module")
def model():
    return toyworld.load_model(device="cpu")


def test_shipped_files_are_small_and_safe():
    files = {p.name: p.stat().st_size for p in ASSETS_DIR.iterdir() if p.is_file()}
    for name in ("model.safetensors", "config.json", "tokenizer.json", "training.json"):
        assert name in files
    assert sum(files.values()) < 20 * 2**20
    assert not any(n.endswith((".pt", ".pth", ".bin", ".pkl")) for n in files)
    cfg = json.loads((ASSETS_DIR / "config.json").read_text())
    assert 128 <= cfg["d_model"] <= 256 and cfg["n_layers"] >= 3


def test_shipped_model_interface(model):
    from transformer_lens import HookedTransformer

    assert isinstance(model, HookedTransformer)
    assert not model.training
    assert model.cfg.n_ctx == 128 and model.W_U.shape == (model.cfg.d_model, len(toyworld.VOCAB))
    toks = model.to_tokens("anna saw two red boats .")
    assert toks[0, 0].item() == model.tokenizer.bos_token_id
    assert toks.shape == (1, 7)  # one <bos>, not two
    assert model.to_string(toks[0]) == "<bos> anna saw two red boats ."
    _, cache = model.run_with_cache(toks, names_filter="blocks.2.hook_resid_post")
    assert cache["blocks.2.hook_resid_post"].shape == (1, 7, model.cfg.d_model)
    resid = model(toks, stop_at_layer=3)
    assert torch.allclose(resid, cache["blocks.2.hook_resid_post"], atol=1e-5)
    out = model.generate("anna was a", max_new_tokens=5, verbose=False, use_past_kv_cache=True, do_sample=False)
    assert isinstance(out, str) and out.startswith("anna was a")


def test_shipped_model_beats_unigram_on_held_out_docs(model):
    tok = model.tokenizer
    test_NS, _ = packed_rows(0, "test", 4, 128, tok)
    train_NS, _ = packed_rows(0, "train", 300, 128, tok)
    base = ngram_baselines(train_NS, test_NS, len(tok.get_vocab()))
    loss = evaluate_loss(model, test_NS)
    assert loss < 0.6 * base["unigram_loss"], (loss, base)
    assert loss < base["bigram_loss"], (loss, base)


def test_shipped_model_samples_mostly_grammatical_text(model):
    texts, finished = sample_documents(model, n=8, batch=8, temperature=1.0, seed=123)
    assert sum(finished) >= 6
    frac = grammatical_fraction(" <eos> ".join(texts))
    assert frac >= 0.5, texts


def test_training_script_runs_saves_and_reloads(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "m"), steps=3, batch_size=2, n_ctx=32, d_model=32, n_layers=1, n_heads=2,
                      d_mlp=64, eval_every=2, eval_rows=2, warmup_steps=1)
    res = train(cfg, progress=False)
    assert res.tokens == 3 * 2 * 32 and len(res.history) == 2
    assert (tmp_path / "m" / "training.json").exists()
    m = toyworld.load_model(device="cpu", directory=tmp_path / "m")
    rows, _ = packed_rows(0, "validation", 2, 32, m.tokenizer)
    assert evaluate_loss(m, rows) == pytest.approx(res.validation_loss, rel=1e-5)
    res2 = train(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "m2")}), progress=False)
    assert res2.validation_loss == res.validation_loss  # seeded
    info = json.loads((tmp_path / "m" / "training.json").read_text())
    assert info["steps_done"] == 3 and info["tokens"] == res.tokens


def test_train_config_validation_and_schedule():
    with pytest.raises(ValueError, match="d_model"):
        TrainConfig(d_model=130, n_heads=4)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_frac=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)


def test_evaluation_helpers():
    texts = [generate_document(i).text for i in range(20)]
    g = grammar_figures(texts)
    assert g["grammatical_fraction"] == 1.0 and g["on_topic_fraction"] == 1.0
    g_bad = grammar_figures(["anna was a sailor . he sees two boat ."])
    assert g_bad["grammatical_fraction"] == 0.5 and g_bad["top_rejection_reasons"]
    rows = torch.tensor([[1, 5, 6, 5, 6, 2]] * 3)
    base = ngram_baselines(rows, rows, 8)
    assert base["bigram_loss"] < base["unigram_loss"]
    md = training_markdown({"config": {}, "history": [], "tokens": 0}, {
        "test_tokens": 1, "baseline_train_tokens": 1, "unigram_loss": 4.0, "bigram_loss": 3.0,
        "model_test_loss": 1.0, "config": {"temperature": 1.0, "sample_batch": 2}, "sampled_documents": 2,
        "sampled_sentences": 5, "grammatical_fraction": 0.9, "grammatical_fraction_sentence_alone": 0.95,
        "documents_fully_grammatical": 0.5, "on_topic_fraction": 1.0, "samples_ending_with_eos": 1.0,
        "top_rejection_reasons": [["x", 1]], "example_samples": ["a"], "weights_sha256": "0"})
    assert "| toy model | 1.0000 |" in md


def test_a_full_disk_while_training_is_one_line_naming_the_weights_file(tmp_path, capsys):
    """safetensors' writer reports a failed write as its own SafetensorError: `python -m toyworld.train`
    says it as the OSError any other write gives, in one line (a file size limit fails the write as a
    full disk does)."""
    from helpers.full_disk import file_size_limit
    from toyworld.train import main

    out = tmp_path / "m"
    argv = ["--out", str(out), "--steps", "1", "--batch-size", "2", "--n-ctx", "32", "--d-model", "32",
            "--n-layers", "1", "--n-heads", "2", "--d-mlp", "64", "--eval-rows", "2", "--warmup-steps", "1"]
    with file_size_limit(4096), pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()  # the progress bar's lines, then the error
    last = err.splitlines()[-1]
    assert e.value.code == 1 and "Traceback" not in err, err
    assert last.startswith(f"python -m toyworld.train: error: could not write {out / 'model.safetensors'}: "), err
    assert not (out / "model.safetensors").exists() and list(out.glob(".model.safetensors.*")) == []
