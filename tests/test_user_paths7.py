"""A seventh round of user paths: SAEs made by other libraries as their own code saves them today,
used through the CLI on tiny real checkpoints (tests/helpers/real_models.py):

- SAELens (its runner itself under -m slow): a training checkpoint of an SAE trained with `normalize_activations=
  "expected_average_only_in"` (what SAELens's runner writes every `n_checkpoints`): its scaling
  factor is in `activation_scaler.json`, not yet folded into the weights (SAELens folds it only
  when training ends). It was read as the identity - a silent wrong result: every reconstruction
  off (here by up to 100% of an element) and the latents' values in other units; now folded as
  SAELens folds it, so the SAE equals SAELens's finished one and reconstructs what it did in training;
- dictionary_learning: the mid-training checkpoints `trainSAE(save_steps=...)` writes
  (`trainer_N/checkpoints/ae_STEP.pt`, the config one folder up) were taken for OpenAI state dicts
  and refused; they now load with their trainer's config.json (class, k, threshold, lm_name and
  submodule) and equal the library's own `encode`/`decode` of the same state dict; a submodule named
  by its HF module path maps to its hook by the side the buffer read (`io`), and a transcoder
  (`io: "in_and_out"`) is refused instead of being read as an SAE;
- BOS: sparsify and dictionary_learning SAEs on GPT-2 were fed a BOS (TransformerLens's default)
  that the HF tokenizer they trained on never adds; they now follow the tokenizer;
- sparsify: a run folder of several hookpoints written by `SparseCoder.save_to_disk` with the
  run's config.json, on a GPT-NeoX checkpoint: `layers.1` reads the residual output of block 1
  (the store's statistics are sparsify's own encoder on the HF module's output, taken with a
  forward hook, not from our cache), the run folder itself is refused naming its hookpoints, and
  another model than the run's is refused naming both.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from pathlib import Path

import pytest
import torch

from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

HOOK = "blocks.1.hook_resid_post"


@functools.lru_cache(maxsize=4)
def _hf_model(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def _hf_module_output(model_dir: Path, module_path: str, text: str) -> torch.Tensor:
    """What the HF module at `module_path` outputs on `text` ([tokens, d]), by a forward hook on the
    HF model itself (as sparsify and dictionary_learning read it), with the tokenizer's defaults."""
    hf, tok = _hf_model(model_dir)
    got = {}
    handle = hf.base_model.get_submodule(module_path).register_forward_hook(
        lambda m, i, o: got.setdefault("x", o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            hf(tok(text, return_tensors="pt").input_ids)
    finally:
        handle.remove()
    return got["x"].reshape(-1, got["x"].shape[-1])


def _store_stats(db: Path) -> tuple[list[int], torch.Tensor]:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT latent, n_fires, max_act FROM features ORDER BY latent").fetchall()
    return [n for _, n, _ in rows], torch.tensor([m for _, _, m in rows])


def _cached_rows(cache: Path, hook: str) -> torch.Tensor:
    from training.manifest import read_manifest
    from training.shards import load_tensors

    return torch.cat([load_tensors(cache / s.file)[f"acts/{hook}"] for s in read_manifest(cache).shards]).float()


# ---------------------------------------------------------------------------------------------
# 1. SAELens: a training checkpoint whose activation scaling factor is not folded in yet


def _saelens_run_with_checkpoint(model_dir, docs, out: Path) -> Path:
    """SAELens's runner (TopK, expected_average_only_in) on the local checkpoint with one checkpoint
    midway; the checkpoint folder it wrote (cfg.json, weights, activation_scaler.json, ...)."""
    import datasets
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    from helpers.real_models import hooked_sae_transformer

    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=64, d_sae=128, k=4, normalize_activations="expected_average_only_in"),
        model_name=str(model_dir), hook_name=HOOK, dataset_path="local", is_dataset_tokenized=False, streaming=False,
        context_size=32, training_tokens=4096, train_batch_size_tokens=256, store_batch_size_prompts=16,
        n_batches_in_buffer=8, device="cpu", lr=3e-3, logger=LoggingConfig(log_to_wandb=False),
        output_path=str(out / "final"), checkpoint_path=str(out / "ckpt"), n_checkpoints=1, save_final_checkpoint=False,
        verbose=False, n_batches_for_norm_estimate=4)
    torch.manual_seed(0)
    LanguageModelSAETrainingRunner(cfg, override_dataset=datasets.Dataset.from_dict({"text": list(docs)}),
                                   override_model=hooked_sae_transformer(model_dir)).run()
    (ckpt,) = [p.parent for p in (out / "ckpt").rglob("activation_scaler.json")]
    return ckpt


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "standard"])
def test_a_saelens_checkpoint_folder_as_its_trainer_saves_it_folds_the_scaling_factor(arch, tmp_path):
    """What `SAETrainer.save_checkpoint` writes (the training SAE's `save_model` and the
    `ActivationScaler`'s json), built with SAELens's own classes: our SAE on raw activations is
    SAELens's on the scaled ones, reconstructions back in raw units."""
    pytest.importorskip("sae_lens")
    import sae_lens
    from sae_lens import SAE
    from sae_lens.training.activation_scaler import ActivationScaler

    from saes.formats import resolve_sae

    cls, cfg_cls = {"topk": (sae_lens.TopKTrainingSAE, sae_lens.TopKTrainingSAEConfig),
                    "jumprelu": (sae_lens.JumpReLUTrainingSAE, sae_lens.JumpReLUTrainingSAEConfig),
                    "standard": (sae_lens.StandardTrainingSAE, sae_lens.StandardTrainingSAEConfig)}[arch]
    torch.manual_seed(0)
    sl = cls(cfg_cls(d_in=16, d_sae=32, normalize_activations="expected_average_only_in",
                     **({"k": 4} if arch == "topk" else {})))
    with torch.no_grad():
        for name, p in sl.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if name != "threshold" else 0.0))
    folder = tmp_path / "ckpt"
    sl.save_model(str(folder))
    factor = 0.125
    ActivationScaler(scaling_factor=factor).save(str(folder / "activation_scaler.json"))
    x = torch.randn(32, 16) * 8
    ref = SAE.load_from_disk(str(folder))
    with torch.no_grad():
        ref_acts = ref.encode(x * factor)
        ref_recon = ref.decode(ref_acts) / factor
        ours = resolve_sae(folder).sae
        torch.testing.assert_close(ours(x).recon, ref_recon, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.encode(x) > 0, ref_acts > 0)


@pytest.mark.parametrize("rescale", [False, True])
def test_a_saelens_batchtopk_checkpoint_folds_the_scaling_factor_into_its_threshold_as_saelens_does(rescale, tmp_path):
    """A BatchTopK checkpoint with `rescale_acts_by_decoder_norm` compares its `topk_threshold` with
    pre-activations times the decoder norms, which the fold divides by the factor: SAELens divides the
    threshold too (`BatchTopKTrainingSAE.fold_activation_norm_scaling_factor`). Our SAE equals the
    inference SAE SAELens saves after folding."""
    pytest.importorskip("sae_lens")
    import sae_lens
    from sae_lens import SAE
    from sae_lens.training.activation_scaler import ActivationScaler

    from saes.formats import resolve_sae

    torch.manual_seed(0)
    sl = sae_lens.BatchTopKTrainingSAE(sae_lens.BatchTopKTrainingSAEConfig(
        d_in=16, d_sae=32, k=4, normalize_activations="expected_average_only_in", rescale_acts_by_decoder_norm=rescale))
    with torch.no_grad():
        for p in sl.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        sl.topk_threshold.fill_(0.8)  # a trained threshold (the running estimate starts at 0)
    sl.save_model(str(tmp_path / "ckpt"))
    factor = 0.125
    ActivationScaler(scaling_factor=factor).save(str(tmp_path / "ckpt" / "activation_scaler.json"))
    with torch.no_grad():
        sl.fold_activation_norm_scaling_factor(factor)  # what SAELens does when training ends
    sl.save_inference_model(str(tmp_path / "final"))
    ref = SAE.load_from_disk(str(tmp_path / "final"))
    x = torch.randn(64, 16) * 8
    with torch.no_grad():
        ref_acts = ref.encode(x)
        ours = resolve_sae(tmp_path / "ckpt").sae
        assert 0 < int((ref_acts > 0).sum()) < ref_acts.numel()  # the threshold picks some latents, not all
        torch.testing.assert_close(ours.encode(x) > 0, ref_acts > 0)
        torch.testing.assert_close(ours(x).recon, ref.decode(ref_acts), rtol=1e-4, atol=1e-4)


def test_a_saelens_whitened_training_checkpoint_is_folded_as_saelens_folds_it(tmp_path):
    """A checkpoint of an SAE trained with `covariance_whitening` keeps its whitening beside the
    weights (`activation_scaler.json` + `activation_whitening.safetensors`); it was refused, and is
    now folded in (tests/test_saes_whitening.py): it equals what SAELens's own fold gives."""
    pytest.importorskip("sae_lens")
    import sae_lens
    from sae_lens import SAE
    from sae_lens.training.activation_scaler import ActivationScaler, ActivationWhitening

    from saes.formats import resolve_sae

    torch.manual_seed(0)
    sl = sae_lens.StandardTrainingSAE(sae_lens.StandardTrainingSAEConfig(
        d_in=8, d_sae=16, normalize_activations="covariance_whitening"))
    ckpt = tmp_path / "ckpt"
    sl.save_model(str(ckpt))
    matrix = torch.eye(8, dtype=torch.float64) * 2 + torch.randn(8, 8, dtype=torch.float64) * 0.1
    ActivationScaler(whitening=ActivationWhitening(mean=torch.randn(8, dtype=torch.float64), matrix=matrix,
                                                   inverse_matrix=torch.linalg.inv(matrix))).save(
        str(ckpt / "activation_scaler.json"))
    loaded = resolve_sae(ckpt)
    assert loaded.provenance["source"]["activation_whitening_folded"]

    sae = SAE.load_from_disk(str(ckpt))  # SAELens's own fold
    s = ActivationScaler()
    s.load(ckpt / "activation_scaler.json")
    sae.fold_activation_whitening(s.whitening.mean, s.whitening.matrix, s.whitening.inverse_matrix)
    x = torch.randn(4, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.sae(x).recon, sae.decode(sae.encode(x)), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_a_saelens_training_checkpoint_reads_activations_at_the_scale_it_was_trained_on(real_models, real_corpus, tmp_path):
    """The checkpoint's SAE saw every activation times `scaling_factor`; SAELens's own SAE on the
    scaled rows is the reference for what `features build` stores (firing counts and maxima in
    the scaled units' latents, reconstructions back in the model's units)."""
    pytest.importorskip("sae_lens")
    from sae_lens import SAE

    from saes.formats import resolve_sae

    model = real_models.path("gpt2")
    ckpt = _saelens_run_with_checkpoint(model, real_corpus.train_docs, tmp_path / "sl")
    cfg = json.loads((ckpt / "cfg.json").read_text())
    factor = json.loads((ckpt / "activation_scaler.json").read_text())["scaling_factor"]
    assert cfg["normalize_activations"] == "expected_average_only_in" and abs(factor - 1) > 0.5  # a real rescale

    saesteer("cache", "--model", model, "--dataset", real_corpus.jsonl_dir, "--split", "validation",
             "--context-length", 32, "--max-tokens", 1024, "--hooks", HOOK, "--out", tmp_path / "cache",
             "--no-progress").ok()
    saesteer("features", "build", "--sae", ckpt, "--cache", tmp_path / "cache", "--out", tmp_path / "f.db",
             "--no-progress").ok()
    rows = _cached_rows(tmp_path / "cache", HOOK)
    sl = SAE.load_from_disk(str(ckpt))  # SAELens itself reads a checkpoint as the identity: the raw weights
    with torch.no_grad():
        ref_recon = sl.decode(sl.encode(rows * factor)) / factor  # what the SAE computed in training
        sl.fold_activation_norm_scaling_factor(factor)  # what SAELens does when training ends
        ref_acts = sl.encode(rows)
        torch.testing.assert_close(sl.decode(ref_acts), ref_recon, rtol=1e-4, atol=1e-4)
    loaded = resolve_sae(ckpt)
    with torch.no_grad():
        torch.testing.assert_close(loaded.sae(rows).recon, ref_recon, rtol=1e-4, atol=1e-4)
    n_fires, max_act = _store_stats(tmp_path / "f.db")
    assert n_fires == (ref_acts > 0).sum(0).tolist()
    torch.testing.assert_close(max_act, ref_acts.max(0).values.clamp_min(0), rtol=1e-4, atol=1e-4)
    assert loaded.provenance["source"]["activation_scaling_factor_folded"] == pytest.approx(factor)
    assert "activation_scaler.json" in loaded.provenance["source"]["files"]


# ---------------------------------------------------------------------------------------------
# 2. dictionary_learning: trainSAE's final dictionaries and its midway checkpoints, on a real model

DL_CLASSES = {"BatchTopKTrainer": "BatchTopKSAE", "MatryoshkaBatchTopKTrainer": "MatryoshkaBatchTopKSAE",
              "JumpReluTrainer": "JumpReluAutoEncoder"}


def _module_rows(model_dir: Path, module_path: str, docs: list[str], n_tokens: int) -> torch.Tensor:
    """[n_tokens, d] outputs of one HF module over `docs` (what dictionary_learning's buffer reads)."""
    rows, total = [], 0
    for doc in docs:
        x = _hf_module_output(model_dir, module_path, doc[:400])
        rows.append(x)
        total += len(x)
        if total >= n_tokens:
            break
    return torch.cat(rows)[:n_tokens]


@pytest.fixture(scope="module")
def dl_run(real_models, real_corpus, tmp_path_factory):
    """dictionary_learning's trainSAE (normalize_activations=True, a checkpoint at step 10) of a
    BatchTopK, a Matryoshka BatchTopK and a JumpReLU dictionary on the GPT-NeoX checkpoint's
    `gpt_neox.layers[1]` output, named as its demo names them (resid_post_layer_1)."""
    pytest.importorskip("dictionary_learning")
    from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer
    from dictionary_learning.trainers.jumprelu import JumpReluTrainer
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer
    from dictionary_learning.training import trainSAE

    model = real_models.path("neox")
    acts = _module_rows(model, "layers.1", real_corpus.train_docs, 2048)
    common = dict(steps=20, activation_dim=acts.shape[1], dict_size=128, layer=1, lm_name=str(model), device="cpu",
                  submodule_name="resid_post_layer_1", warmup_steps=2)
    configs = [dict(trainer=BatchTopKTrainer, k=4, threshold_start_step=5, **common),
               dict(trainer=MatryoshkaBatchTopKTrainer, k=4, group_fractions=[0.25, 0.75], threshold_start_step=5,
                    **common),
               dict(trainer=JumpReluTrainer, sparsity_warmup_steps=2, **common)]
    out = tmp_path_factory.mktemp("dl-run")
    torch.manual_seed(0)
    batches = (acts[torch.randint(len(acts), (256,))] for _ in range(130))  # 100 for the norm factor, 20 to train
    trainSAE(batches, configs, steps=20, save_dir=str(out), save_steps=[10], normalize_activations=True, device="cpu")
    return model, out


def _dl_reference(weights: Path, trainer_cfg: dict):
    """The library's own dictionary from one state dict file, as `load_dictionary` builds it."""
    from dictionary_learning.dictionary import JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE

    cls = {"BatchTopKSAE": BatchTopKSAE, "MatryoshkaBatchTopKSAE": MatryoshkaBatchTopKSAE,
           "JumpReluAutoEncoder": JumpReluAutoEncoder}[trainer_cfg["dict_class"]]
    if cls is JumpReluAutoEncoder:
        return cls.from_pretrained(str(weights), device="cpu")
    return cls.from_pretrained(str(weights), k=trainer_cfg["k"], device="cpu")


@pytest.mark.parametrize("index", range(3))
def test_dictionary_learning_checkpoints_load_with_their_trainers_config_and_equal_the_library(dl_run, index, tmp_path):
    """A checkpoint file was refused as 'not an OpenAI sparse_autoencoder state dict'; it now loads
    with the config one folder up and encodes and decodes as the library does on the same rows
    (the rows the activations were trained at, the checkpoint's biases already in model units)."""
    from saes.formats import resolve_sae

    model, out = dl_run
    trainer = out / f"trainer_{index}"
    trainer_cfg = json.loads((trainer / "config.json").read_text())["trainer"]
    assert trainer_cfg["dict_class"] == DL_CLASSES[trainer_cfg["trainer_class"]]
    ckpt = trainer / "checkpoints" / "ae_10.pt"
    x = _hf_module_output(model, "layers.1", "def tokenize(text):\n    return text.split()")
    for weights, step in ((ckpt, 10), (trainer / "ae.pt", None)):
        loaded = resolve_sae(weights)
        theirs = _dl_reference(weights, trainer_cfg)
        with torch.no_grad():
            f = theirs.encode(x)
            torch.testing.assert_close(loaded.sae.encode(x), f, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(loaded.sae.decode(loaded.sae.encode(x)), theirs.decode(f), rtol=1e-4, atol=1e-5)
        assert loaded.sae.cfg.metadata["hook_name"] == HOOK and loaded.provenance["source"].get("checkpoint_step") == step
        assert loaded.provenance["model"] == str(model)
    assert (theirs.encode(x) > 0).any()  # not a dictionary that says nothing
    assert "checkpoints/ae_10.pt" in resolve_sae(ckpt).provenance["source"]["files"]

    # the CLI: the checkpoints folder names its files; the checkpoint steers the model its trainer names
    r = saesteer("steer", "--sae", trainer / "checkpoints", "--latent", "0:add=1", "--prompt", "x", "--max-new-tokens", 1)
    assert r.rc == 2 and "ae_10.pt" in r.err and "checkpoints" in r.err, r.text
    r.no_traceback()
    r = saesteer("steer", "--sae", ckpt, "--latent", "0:add=1", "--prompt", "def f(", "--max-new-tokens", 2, "--json")
    assert r.rc == 0, r.text
    assert json.loads(r.out)["results"][0]["prompt"] == "def f("


def test_a_dictionary_learning_checkpoint_for_another_model_is_refused_naming_both(dl_run, real_models):
    model, out = dl_run
    other = real_models.path("gpt2")
    r = saesteer("steer", "--sae", out / "trainer_0/checkpoints/ae_10.pt", "--model", other, "--latent", "0:add=1",
                 "--prompt", "x", "--max-new-tokens", 1)
    assert r.rc != 0 and str(model) in r.err and str(other) in r.err and "--allow-model-mismatch" in r.err, r.text
    r.no_traceback()


# ---------------------------------------------------------------------------------------------
# 3. sparsify: a run folder of several hookpoints on a GPT-NeoX checkpoint


@pytest.fixture(scope="module")
def sparsify_run(real_models, tmp_path_factory):
    """Two hookpoints saved by `SparseCoder.save_to_disk` under one run folder with the run's
    config.json (as sparsify's trainer lays them out; the model named by its local directory)."""
    sparsify = pytest.importorskip("sparsify")
    model = real_models.path("neox")
    run = tmp_path_factory.mktemp("sparsify") / "run"
    torch.manual_seed(0)
    coders = {}
    for hookpoint in ("layers.0", "layers.1"):
        coder = sparsify.SparseCoder(64, sparsify.SparseCoderConfig(num_latents=128, k=4, multi_topk=True))
        with torch.no_grad():
            for p in coder.parameters():
                p.add_(torch.randn_like(p) * 0.2)
        coder.save_to_disk(run / hookpoint)
        coders[hookpoint] = coder
    (run / "config.json").write_text(json.dumps({"model": str(model), "hookpoints": list(coders), "k": 4}))
    return model, run, coders


def test_a_sparsify_hookpoint_reads_the_residual_output_of_its_block(sparsify_run, real_corpus, tmp_path):
    """`features build` on `layers.1` stores sparsify's own top-k encoding of what the HF module
    `gpt_neox.layers[1]` outputs (taken with a forward hook on the HF model, not from our cache);
    `layers.0` would not match it."""
    from helpers import foreign_saes as fs

    model, run, coders = sparsify_run
    docs = [d[:200] for d in real_corpus.validation_docs[:6]]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    saesteer("cache", "--model", model, "--dataset", data, "--context-length", 128, "--bos-policy", "none",
             "--hooks", HOOK, "--out", tmp_path / "cache", "--no-progress").ok()
    saesteer("features", "build", "--sae", run / "layers.1", "--cache", tmp_path / "cache", "--out", tmp_path / "f.db",
             "--no-progress").ok()
    n_fires, max_act = _store_stats(tmp_path / "f.db")
    hf_rows = fs.hf_module_rows_of_cache(model, tmp_path / "cache", "layers.1").half().float()  # the cache: float16
    for hookpoint, should_match in (("layers.1", True), ("layers.0", False)):
        with torch.no_grad():
            enc = coders[hookpoint].encode(hf_rows)
        dense = torch.zeros(len(hf_rows), 128).scatter_(-1, enc.top_indices, enc.top_acts.clamp_min(0))
        same = n_fires == (dense > 0).sum(0).tolist() and torch.allclose(max_act, dense.max(0).values, rtol=1e-3, atol=1e-3)
        assert same == should_match, hookpoint


def test_a_cache_whose_contexts_start_with_bos_is_refused_for_an_sae_trained_without(sparsify_run, real_corpus,
                                                                                      tmp_path):
    """NeoX's tokenizer adds no BOS, so the sparsify SAE records prepend_bos=false; a cache built
    with the default bos-policy (prepend) holds other activations at every position: `features
    build` refuses it naming both sides (it silently built a store from them before)."""
    model, run, _ = sparsify_run
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": d[:200]}) + "\n" for d in real_corpus.validation_docs[:2]))
    saesteer("cache", "--model", model, "--dataset", data, "--context-length", 64, "--hooks", HOOK,
             "--out", tmp_path / "cache", "--no-progress").ok()
    r = saesteer("features", "build", "--sae", run / "layers.1", "--cache", tmp_path / "cache",
                 "--out", tmp_path / "f.db", "--no-progress")
    assert r.rc != 0 and "prepend_bos=False" in r.err, r.text
    assert "was packed with `saesteer cache --bos-policy` 'prepend'" in r.err, r.text
    assert "--bos-policy` 'none' or 'doc'" in r.err and not (tmp_path / "f.db").exists(), r.text
    r.no_traceback()


def test_a_sparsify_run_folder_and_another_model_are_refused_naming_both_sides(sparsify_run, real_models):
    model, run, _ = sparsify_run
    r = saesteer("steer", "--sae", run, "--latent", "0:add=1", "--prompt", "x", "--max-new-tokens", 1)
    assert r.rc == 2 and "layers.0" in r.err and "layers.1" in r.err, r.text
    r.no_traceback()
    other = real_models.path("llama")
    r = saesteer("steer", "--sae", run / "layers.1", "--model", other, "--latent", "0:add=1", "--prompt", "x",
                 "--max-new-tokens", 1)
    assert r.rc != 0 and str(model) in r.err and str(other) in r.err and "--allow-model-mismatch" in r.err, r.text
    r.no_traceback()
    r = saesteer("steer", "--sae", run / "layers.1", "--hook", "blocks.0.hook_resid_post", "--latent", "0:add=1",
                 "--prompt", "x", "--max-new-tokens", 1)
    assert r.rc == 2 and "blocks.1.hook_resid_post" in r.err and "blocks.0.hook_resid_post" in r.err, r.text
    r.no_traceback()


# ---------------------------------------------------------------------------------------------
# 4. BOS: an SAE trained on what the HF tokenizer makes of text gets the same start of text here


def test_a_dictionary_learning_sae_whose_tokenizer_is_not_at_hand_says_its_bos_is_unknown(real_models, tmp_path):
    """The BOS rule comes from the model's HF tokenizer; for a hub model not in the HF cache (nothing
    is downloaded) it is unknown, and the model's default may be wrong (GPT-2 under TransformerLens):
    the load says so instead of leaving it to the provenance alone. A tokenizer at hand: no note."""
    from helpers import foreign_saes as fs

    from saes.errors import SaesteerWarning
    from saes.formats import resolve_sae

    state = fs.random_dictionary_learning("AutoEncoderTopK", 8, 16)
    uncached = fs.write_dictionary_learning(tmp_path / "hub", "AutoEncoderTopK", state, lm_name="no-org/uncached-model")
    with pytest.warns(SaesteerWarning, match="uncached-model's HF tokenizer is not on this machine"):
        loaded = resolve_sae(uncached)
    assert "prepend_bos" not in loaded.sae.cfg.metadata
    assert loaded.provenance["source"]["prepend_bos"].startswith("unknown")

    local = fs.write_dictionary_learning(tmp_path / "local", "AutoEncoderTopK", state,
                                         lm_name=str(real_models.path("gpt2")))
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*HF tokenizer", category=SaesteerWarning)
        loaded = resolve_sae(local)
    assert loaded.sae.cfg.metadata["prepend_bos"] is False  # GPT-2's tokenizer adds no BOS


def test_a_sparsify_mlp_transcoder_given_the_norm_s_hook_is_refused_saying_what_it_reads(tmp_path):
    """sparsify's `transcode: true` predicts a module's output from its input (tests/test_user_paths9.py
    loads one of a decoder layer and one of an MLP); an MLP's input is derived (blocks.N.mlp.hook_in), and
    the LayerNorm hook a TransformerLens user would reach for (before the norm's weight) is refused, naming both."""
    from helpers import foreign_saes as fs

    state, cfg = fs.random_sparsify(8, 16, k=4, transcode=True)
    fs.write_sparsify(tmp_path / "layers.1.mlp", state, cfg)
    r = saesteer("steer", "--sae", tmp_path / "layers.1.mlp", "--hook", "blocks.1.ln2.hook_normalized", "--latent",
                 "0:add=1", "--prompt", "x", "--max-new-tokens", 1)
    assert r.rc == 2 and "records hook point blocks.1.mlp.hook_in" in r.err, r.text
    assert "blocks.1.ln2.hook_normalized" in r.err, r.err
    r.no_traceback()


def _table_latents(text: str) -> list[tuple[str, set[int]]]:
    """(token, latents) per row of `features top-on-text`'s table."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) == 5 and cells[1].isdigit():
            rows.append((cells[2], {int(part.split(" (")[0]) for part in cells[3].split(", ") if part}))
    return rows


def test_a_gpt2_sparsify_sae_reads_text_without_the_bos_transformerlens_would_prepend(real_models, tmp_path):
    """GPT-2's HF tokenizer adds no BOS (sparsify and dictionary_learning train on its output), while
    TransformerLens prepends one to GPT-2 text by default: `top-on-text` fed the SAE a BOS it never
    saw, and every position's activations differed from sparsify's. The SAE now records the HF
    tokenizer's rule (prepend_bos false for GPT-2 and GPT-NeoX, true for Llama), and each position's
    latents are sparsify's own on the HF module output."""
    sparsify = pytest.importorskip("sparsify")
    from saes.formats.base import hf_tokenizer_adds_bos

    model = real_models.path("gpt2")
    assert (hf_tokenizer_adds_bos(str(model)), hf_tokenizer_adds_bos(str(real_models.path("llama")))) == (False, True)
    torch.manual_seed(1)
    coder = sparsify.SparseCoder(64, sparsify.SparseCoderConfig(num_latents=128, k=4))
    with torch.no_grad():
        coder.encoder.weight.mul_(20)
    coder.save_to_disk(tmp_path / "run" / "h.1")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": str(model)}))
    text = "def main(argv):\n    return 0"
    r = saesteer("features", "top-on-text", "--sae", tmp_path / "run" / "h.1", "--top", 4, text).ok()
    with torch.no_grad():
        enc = coder.encode(_hf_module_output(model, "h.1", text))
    want = [set(i.tolist()) for i in enc.top_indices]
    rows = _table_latents(r.out)
    assert len(rows) == len(want) and "endoftext" not in rows[0][0], r.out
    assert [latents for _, latents in rows] == want
    # what the old default fed it: a BOS first, and then other latents than sparsify's at later positions
    old = _table_latents(saesteer("features", "top-on-text", "--sae", tmp_path / "run" / "h.1", "--top", 4,
                                  "--prepend-bos", "true", text).ok().out)
    assert "endoftext" in old[0][0] and [latents for _, latents in old[1:]] != want


# ---------------------------------------------------------------------------------------------
# 5. dictionary_learning: the submodule by its HF module path, and which side of it the buffer read


class _Buffer:
    """Batches of activations with the `config` dictionary_learning's ActivationBuffer has (trainSAE
    writes it into config.json's "buffer"); `io` says which side of the submodule it read."""

    def __init__(self, rows: torch.Tensor, io: str) -> None:
        self.rows, self.io, self.left = rows, io, 30

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self.left == 0:
            raise StopIteration
        self.left -= 1
        return self.rows[torch.randint(len(self.rows), (128,))]

    @property
    def config(self) -> dict:
        return {"d_submodule": self.rows.shape[1], "io": self.io, "n_ctxs": 8, "ctx_len": 64,
                "refresh_batch_size": 8, "out_batch_size": 128, "device": "cpu"}


def _hf_layer_input(model_dir: Path, layer: int, text: str) -> torch.Tensor:
    hf, tok = _hf_model(model_dir)
    got = {}

    def keep(module, args, kwargs) -> None:
        got["x"] = args[0] if args else kwargs["hidden_states"]

    handle = hf.gpt_neox.layers[layer].register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad():
            hf(tok(text, return_tensors="pt").input_ids)
    finally:
        handle.remove()
    return got["x"][0]


def test_a_module_input_maps_to_a_hook_only_for_a_decoder_layer_or_its_mlp():
    """io='in': a decoder layer's input is the residual stream before it, in every HF naming we map; an
    MLP's is TransformerBridge's hook of the HF module's input; attention's has no mapped hook point."""
    from saes.formats.base import tl_hook_for_module_input

    for path, block in [("gpt_neox.layers.2", 2), ("transformer.h.0", 0), ("model.layers.11", 11), ("layers.3", 3)]:
        assert tl_hook_for_module_input(path) == f"blocks.{block}.hook_resid_pre"
    assert tl_hook_for_module_input("model.layers.3.mlp") == "blocks.3.mlp.hook_in"
    for path in ("transformer.h.1.attn", "model.embed_tokens", "resid_post_layer_3"):
        assert tl_hook_for_module_input(path) is None


def test_dictionary_learning_submodule_paths_map_by_the_side_the_buffer_read(real_models, real_corpus, tmp_path):
    """submodule_name `gpt_neox.layers.1` (the module users pass to the buffer) read with io='in' is
    block 1's residual input, `blocks.1.hook_resid_pre` (it needed --hook before); `top-on-text`
    then gives the library's latents on the HF layer's input at every position. io='in_and_out' is a
    transcoder (it predicts the module's output from its input): it loaded as an SAE of one hook
    point (the `--hook` given, or the site a demo name says) - silently wrong - and is now refused
    naming the field."""
    pytest.importorskip("dictionary_learning")
    from dictionary_learning.trainers.top_k import TopKTrainer
    from dictionary_learning.training import trainSAE
    from dictionary_learning.utils import load_dictionary

    model = real_models.path("neox")
    docs = [d[:400] for d in real_corpus.train_docs[:12]]
    rows = torch.cat([_hf_layer_input(model, 1, d) for d in docs])
    for io in ("in", "in_and_out"):
        torch.manual_seed(0)
        trainSAE(_Buffer(rows, io), [dict(trainer=TopKTrainer, steps=30, activation_dim=64, dict_size=128, k=4,
                                          layer=1, lm_name=str(model), submodule_name="gpt_neox.layers.1",
                                          warmup_steps=2, threshold_start_step=5, device="cpu")],
                 steps=30, save_dir=str(tmp_path / io), device="cpu")
    r = saesteer("steer", "--sae", tmp_path / "in_and_out/trainer_0", "--latent", "0:add=1", "--prompt", "x",
                 "--max-new-tokens", 1)
    assert r.rc == 2 and "io='in_and_out'" in r.err and "transcoder" in r.err, r.text
    assert "save its weights in that layout" in r.err, r.err  # what to do, not only why
    r.no_traceback()

    text = "class Point:\n    x = 1"
    out = saesteer("features", "top-on-text", "--sae", tmp_path / "in/trainer_0", "--top", 4, text).ok().out
    assert "blocks.1.hook_resid_pre" in out, out
    theirs, _ = load_dictionary(str(tmp_path / "in/trainer_0"), "cpu")
    with torch.no_grad():
        f = theirs.encode(_hf_layer_input(model, 1, text))
    want = [set(torch.nonzero(row > 0).flatten().tolist()) for row in f]
    assert any(want) and [latents for _, latents in _table_latents(out)] == want
