"""A fifth round of user paths, on tiny real checkpoints built here:

- a model given as a relative local directory (`--model ./my-gpt2`, written by save_pretrained)
  through cache -> train -> features build -> steer from another working directory; another local
  GPT-2 of the same shape, and the same directory re-saved with other weights, are refused naming both;
- text as users keep it: a CSV export (quoted multi-line code with CRLF, empty cells, "NA", accents,
  CJK, Cyrillic, Arabic, one very long document; .csv was refused), a column that is not text (ids,
  a chat's list of messages: cached as nothing at all, rc 0), and a JSONL file with a cut-off last
  line (the parse error did not name the file);
- architectures beyond the four of tests/helpers/real_models.py: Gemma-2 (logit soft-capping,
  sliding-window attention, grouped-query attention) cached, trained and served through `saesteer
  api` (its log-probs over the openai client are the HF model's own, prompts longer than the window
  included); Phi (parallel attention and MLP), OLMo-2 (norms after the sublayers), Gemma-3, Qwen3 and
  StableLM under --slow;
- an SAE trained by the installed SAELens's own runner on the user's local model, then used by
  `features build`, `eval` and `steer` (without a store, steer's refusal now names the local model
  directory the folder records as the --model to give);
- the openai client on a Qwen2 chat model: a prompt longer than the model's context is refused with
  its real length (the completions prompt was cut to the context first, so the error gave the wrong
  length and advised 'ask for at most 0 tokens'); a stop string across a token boundary cuts the
  streamed text where it cuts the whole reply, and the usage chunk counts what was generated.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch

from helpers.chat_templates import QWEN2_TEMPLATE
from helpers.real_cli import cache_train_store, flags_named, known_flags, saesteer
from helpers.real_models import save_arch_model

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

HOOK = "blocks.1.hook_resid_post"


# ---------------------------------------------------------------------------------------------
# 1. a local directory by a relative path; another model of the same architecture


def test_a_relative_model_directory_is_recorded_absolutely_and_a_same_shape_model_is_refused(
        real_models, real_corpus, tmp_path, monkeypatch):
    """`--model ./my-gpt2`: the cache, the SAE and the store record the directory's absolute path and
    weights hash, so `steer` run from another folder re-loads it; a GPT-2 of the same config in
    another directory is refused naming both paths, and so is the directory re-saved with other
    weights (both hashes named). A guard: this path works."""
    from features import FeatureStore
    from helpers.real_models import save_real_model
    from saesteer.models import local_weights_sha256

    proj = tmp_path / "proj"
    shutil.copytree(real_models.path("gpt2"), proj / "my-gpt2")
    save_real_model(proj / "other-gpt2", "gpt2", real_corpus, train_steps=0, seed=1)  # same config, other weights
    monkeypatch.chdir(proj)
    saesteer("cache", "--model", "./my-gpt2", "--dataset", real_corpus.jsonl_dir, "--context-length", 32,
             "--max-tokens", 2048, "--hooks", HOOK, "--out", "cache", "--no-progress").ok()
    saesteer("train", "--cache", "cache", "--out", "run", "--architecture", "topk", "--d-sae", 64, "--k", 4,
             "--total-tokens", 1024, "--batch-size", 256, "--holdout-tokens", 256, "--eval-every-tokens", 0,
             "--checkpoint-every-tokens", 0, "--model-eval", "false", "--no-progress", "--sae-name", "sae").ok()
    saesteer("features", "build", "--sae", "run/saes/sae", "--cache", "cache", "--out", "f.db", "--no-progress").ok()

    want = {"source": "local", "path": str(proj / "my-gpt2"), "weights_sha256": local_weights_sha256(proj / "my-gpt2")}
    cache_ident = json.loads((proj / "cache/manifest.json").read_text())["model_identity"]
    sae_ident = json.loads((proj / "run/saes/sae/saesteer.json").read_text())["model_identity"]
    store = FeatureStore.open(proj / "f.db", readonly=True)
    try:
        store_ident = store.recorded_model().to_json()
    finally:
        store.close()
    assert {k: cache_ident[k] for k in want} == want and sae_ident == cache_ident == store_ident

    monkeypatch.chdir(tmp_path)  # later commands from elsewhere re-load the recorded directory
    r = saesteer("steer", "--sae", "proj/run/saes/sae", "--store", "proj/f.db", "--latent", "3:add=4",
                 "--prompt", "def f(", "--max-new-tokens", 3, "--do-sample", "false", "--json").ok()
    assert json.loads(r.out)["results"][0]["prompt"] == "def f("

    monkeypatch.chdir(proj)
    for argv in [("steer", "--sae", "run/saes/sae", "--store", "f.db", "--latent", "3:add=4", "--prompt", "x",
                  "--max-new-tokens", 2, "--model", "./other-gpt2"),
                 ("features", "build", "--sae", "run/saes/sae", "--cache", "cache", "--out", "g.db",
                  "--model", "other-gpt2", "--no-progress")]:
        r = saesteer(*argv)
        assert r.rc == 2 and str(proj / "my-gpt2") in r.err and str(proj / "other-gpt2") in r.err, r.err
        assert flags_named(r.err) <= known_flags(*argv[:2] if argv[0] == "features" else argv[:1])
        r.no_traceback()
    # the directory re-saved with other weights (a fine-tune written over it): both hashes named
    shutil.rmtree(proj / "my-gpt2")
    shutil.copytree(proj / "other-gpt2", proj / "my-gpt2")
    r = saesteer("steer", "--sae", "run/saes/sae", "--store", "f.db", "--latent", "3:add=4", "--prompt", "x",
                 "--max-new-tokens", 2)
    assert r.rc == 2 and "changed since" in r.err and want["weights_sha256"][:16] in r.err
    assert local_weights_sha256(proj / "my-gpt2")[:16] in r.err and "--allow-model-mismatch" in r.err


# ---------------------------------------------------------------------------------------------
# 2. text as users have it: CSV, and columns that are not text


def _user_documents(real_corpus) -> list:
    return [
        "def f(x):\r\n\t\"\"\"Say \"hi\", then\r\n\r\n    return.\"\"\"\r\n\treturn x, 'a,b'\r\n",  # CRLF, quotes, commas
        None,  # an empty cell
        "NA",  # text that pandas would read as a missing value
        "Gr\u00fc\u00dfe aus M\u00fcnchen \u2014 \u00bd \u20ac. "  # German, Japanese, Russian, Arabic
        "\u6771\u4eac\u306e\u5929\u6c17\u306f\u6674\u308c\u3067\u3059\u3002 "
        "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! "
        "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
        "",
        " ".join(real_corpus.train_docs[:6]),  # one very long document (tens of thousands of characters)
        *real_corpus.train_docs[6:12],
    ]


def test_a_csv_export_is_cached_document_for_document(real_models, real_corpus, tmp_path):
    """A CSV file (here written by `datasets`' to_csv, as pandas writes it): every document is read as
    it was written, an empty cell as an empty document and "NA" as the text "NA", and the cache holds
    their tokens in order. (.csv was refused: 'unsupported data file type'.)"""
    import datasets

    from training.manifest import read_manifest
    from training.shards import load_tensors
    from training.sources import text_config_from_manifest
    from training.text import DocumentSource

    docs = _user_documents(real_corpus)
    datasets.Dataset.from_dict({"id": list(range(len(docs))), "body": docs}).to_csv(str(tmp_path / "notes.csv"), index=False)
    model = real_models.path("gpt2")
    saesteer("cache", "--model", model, "--dataset", tmp_path / "notes.csv", "--text-column", "body",
             "--context-length", 32, "--bos-policy", "none", "--max-tokens", 1024, "--hooks", HOOK,
             "--out", tmp_path / "cache", "--no-progress").ok()
    man = read_manifest(tmp_path / "cache")
    assert man.settings["dataset"]["files"] == [["notes.csv", (tmp_path / "notes.csv").stat().st_size]]
    read = [d for chunk in DocumentSource(text_config_from_manifest(man)).chunks() for d in chunk]
    assert read == ["" if d is None else d for d in docs]

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    # each non-empty document's tokens, then EOS (training.packing)
    stream = [t for d in read if d for t in tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    shard = load_tensors(tmp_path / "cache" / man.shards[0].file)
    contexts = shard["context_tokens"].long().tolist()
    assert [t for ctx in contexts for t in ctx] == stream[:32 * len(contexts)]


@pytest.mark.parametrize("kind", ["ids", "messages", "one number"])
def test_a_column_that_is_not_text_is_refused(real_models, tmp_path, kind):
    """--text-column naming a column of numbers, or a chat dataset's list of messages: every document
    was read as "" and the cache finished with 0 tokens (rc 0); one number among text documents was
    an empty document without a word. Now: refused, naming the document, the column, what it holds
    and the flag (a chat dataset for a model without a chat template: tests/test_datareal_chat_dataset.py)."""
    import datasets

    bad = 0
    if kind == "ids":
        path, column = tmp_path / "d.jsonl", "n"
        path.write_text("".join(json.dumps({"text": f"doc {i}", "n": i}) + "\n" for i in range(20)))
    elif kind == "one number":
        path, column, bad = tmp_path / "d.jsonl", "text", 300
        path.write_text("".join(json.dumps({"text": f"doc {i} of a few words"}) + "\n" for i in range(bad))
                        + json.dumps({"text": 2024}) + "\n")
    else:
        path, column = tmp_path / "chat.parquet", "messages"
        rows = [[{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "answer"}] for i in range(20)]
        datasets.Dataset.from_dict({"messages": rows}).to_parquet(str(path))
    r = saesteer("cache", "--model", real_models.path("gpt2"), "--dataset", path, "--text-column", column,
                 "--context-length", 32, "--max-tokens", 512, "--hooks", HOOK, "--out", tmp_path / "cache",
                 "--no-progress")
    assert r.rc == 2, f"rc {r.rc}: {r.text[-1500:]}"
    if kind == "messages":  # a chat dataset is read through a chat model's template: GPT-2 has none
        assert f"column 'messages' of {str(path)!r} holds chat conversations" in r.err and "has no chat template" in r.err
    else:
        assert f"document {bad} of dataset {str(path)!r}: column {column!r} is int, not text" in r.err
    assert "--text-column" in r.err and flags_named(r.err) <= known_flags("cache")
    r.no_traceback()


def test_a_cut_off_jsonl_file_is_refused_naming_it(real_models, tmp_path):
    """A JSONL file whose last line was cut (an interrupted download): pyarrow's parse error, raised
    when the streamed file is first read, reached the user without the file's name."""
    path = tmp_path / "notes.jsonl"
    path.write_text(json.dumps({"text": "a whole line"}) + '\n{"text": "a line cut sho')
    r = saesteer("cache", "--model", real_models.path("gpt2"), "--dataset", path, "--context-length", 32,
                 "--max-tokens", 512, "--hooks", HOOK, "--out", tmp_path / "cache", "--no-progress")
    assert r.rc == 2 and f"could not read dataset {str(path)!r} (split 'train')" in r.err, r.err
    r.no_traceback()


# ---------------------------------------------------------------------------------------------
# 3. other architectures


@pytest.fixture(scope="module")
def llama_style_tokenizer(real_corpus):
    from helpers.real_models import build_family_tokenizer

    return build_family_tokenizer("llama", real_corpus.train_docs)


def _hf_block_outputs(hf, tokens_BS) -> dict[str, torch.Tensor]:
    """HF's own values at the hook points cached below: each decoder layer's output (the residual
    stream after it) and what its MLP adds to the residual (after a post-MLP norm where it has one)."""
    out: dict[str, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(hf.model.layers):
        handles.append(layer.register_forward_hook(
            lambda m, a, o, i=i: out.__setitem__(f"blocks.{i}.hook_resid_post", o[0] if isinstance(o, tuple) else o)))
        mlp_add = getattr(layer, "post_feedforward_layernorm", None) or layer.mlp
        handles.append(mlp_add.register_forward_hook(lambda m, a, o, i=i: out.__setitem__(f"blocks.{i}.hook_mlp_out", o)))
    try:
        with torch.no_grad():
            hf(tokens_BS)
    finally:
        for h in handles:
            h.remove()
    return out


def _check_cache_is_the_hf_model(cache, model_dir, hooks) -> None:
    from transformers import AutoModelForCausalLM

    from training.manifest import read_manifest
    from training.shards import load_tensors

    man = read_manifest(cache)
    shard = load_tensors(Path(cache) / man.shards[0].file)
    first = int(man.shards[0].first_context)
    tokens = shard["context_tokens"][:4].long()
    rows = (shard["seq_index"] - first) < 4
    seq, pos = shard["seq_index"][rows] - first, shard["positions"][rows].long()
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    want = _hf_block_outputs(hf, tokens)
    for hook in hooks:
        w = want[hook][seq, pos].float()
        got = shard[f"acts/{hook}"][rows].float()
        rel = ((got - w).norm(dim=1) / w.norm(dim=1).clamp_min(1e-6)).max().item()
        assert rel < 2e-3, f"{hook}: cached rows differ from HF's by {rel:.2e} (relative)"


def _served_logprobs_are_the_hf_models(client, model_dir, tok) -> None:
    """Two prompts of different lengths (one longer than a 16-token sliding window) in one request,
    two sampled choices each: every returned token's log-prob is the HF model's log-softmax at that
    place of the full sequence (no KV cache, no padding)."""
    from transformers import AutoModelForCausalLM

    prompts = ["def parse(self, args=None):\n    \"\"\"Parse the arguments, caf\u00e9 \u6771\u4eac.\"\"\"\n    return",
               "import os\n"]
    r = client.completions.create(model="resid", prompt=prompts, max_tokens=24, temperature=1.0, seed=3, n=2, logprobs=1)
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    assert len(tok(prompts[0])["input_ids"]) > 16
    worst = 0.0
    for choice in r.choices:
        prompt_ids = tok(prompts[choice.index // 2])["input_ids"]
        gen = choice.model_extra["steering"]["token_ids"]
        assert len(set(gen)) > 4, f"degenerate sample {gen}"
        with torch.no_grad():
            lp = torch.log_softmax(hf(torch.tensor([prompt_ids + gen])).logits.float(), -1)[0]
        want = [lp[len(prompt_ids) - 1 + j, t].item() for j, t in enumerate(gen)]
        worst = max(worst, max(abs(a - b) for a, b in zip(choice.logprobs.token_logprobs, want)))
    assert worst < 1e-4, f"served log-probs differ from HF's by {worst:.2e}"


def _arch_chain(arch, real_corpus, tok, work) -> None:
    model_dir = save_arch_model(work / f"{arch}-model", arch, tok)
    hooks = [HOOK, "blocks.0.hook_mlp_out"]
    saesteer("cache", "--model", model_dir, "--dataset", real_corpus.jsonl_dir, "--context-length", 48,
             "--max-tokens", 2048, "--hooks", ",".join(hooks), "--out", work / "cache", "--no-progress").ok()
    _check_cache_is_the_hf_model(work / "cache", model_dir, hooks)
    for hook, name in ((HOOK, "resid"), ("blocks.0.hook_mlp_out", "mlp")):
        saesteer("train", "--cache", work / "cache", "--hook", hook, "--out", work / name, "--architecture", "topk",
                 "--d-sae", 128, "--k", 4, "--total-tokens", 2048, "--batch-size", 256, "--holdout-tokens", 256,
                 "--eval-ce-contexts", 2, "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0, "--no-progress",
                 "--sae-name", name).ok()
        metrics = json.loads((work / name / "metrics.json").read_text())["saes"][name]
        assert metrics["ce_loss_clean"] > 0 and metrics["explained_variance"] > 0.1, metrics
        saesteer("features", "build", "--sae", work / name / "saes" / name, "--cache", work / "cache",
                 "--out", work / f"{name}.db", "--no-progress").ok()
        with sqlite3.connect(work / f"{name}.db") as db:
            live = db.execute("SELECT latent FROM features WHERE n_fires > 0 ORDER BY n_fires DESC").fetchone()[0]
        # an edit at this hook changes the sampled text (same seed both ways)
        prompt = "def parse(self, args=None):"
        r = saesteer("steer", "--sae", work / name / "saes" / name, "--store", work / f"{name}.db", "--latent",
                     f"{live}:add=8x", "--prompt", prompt, "--max-new-tokens", 12, "--seed", 0, "--json").ok()
        res = json.loads(r.out)["results"][0]
        assert res["steered"] != res["unsteered"], f"{arch} {hook}: steering changed nothing: {res}"
    return model_dir


@pytest.fixture(scope="module")
def gemma2(real_corpus, llama_style_tokenizer, tmp_path_factory):
    work = tmp_path_factory.mktemp("gemma2")
    return work, _arch_chain("gemma2", real_corpus, llama_style_tokenizer, work)


def test_gemma2_caches_trains_steers_and_serves_the_hf_models_values(gemma2, llama_style_tokenizer, monkeypatch):
    """Gemma-2 (soft-capped attention and logits, a 16-token sliding window, 4 query heads on 2
    key/value heads, norms around each sublayer): the cache holds HF's values at hook_resid_post and
    hook_mlp_out (after the post-MLP norm), SAEs trained at both steer generation, and `saesteer api`
    returns the HF model's log-probs for batched prompts longer than the window."""
    from helpers.api_server import api_served
    from helpers.web_app import record_server

    pytest.importorskip("openai")
    work, model_dir = gemma2
    calls = record_server(monkeypatch)
    saesteer("api", "--store", work / "resid.db", "--port", 0).ok()
    (app, kw), = calls
    with api_served(app, kw["port"]) as (_, client):
        _served_logprobs_are_the_hf_models(client, model_dir, llama_style_tokenizer)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["phi", "olmo2", "gemma3", "qwen3", "stablelm"])
def test_more_architectures_cache_the_hf_models_values_train_and_steer(arch, real_corpus, llama_style_tokenizer, tmp_path):
    _arch_chain(arch, real_corpus, llama_style_tokenizer, tmp_path)


# ---------------------------------------------------------------------------------------------
# 4. an SAE trained by SAELens's own runner on the user's local model


def _saelens_trained_sae(model_dir, docs, out: Path) -> Path:
    """SAELens's LanguageModelSAETrainingRunner on the local checkpoint (loaded as SAELens users load
    a model it does not know by name: HookedSAETransformer with the checkpoint's raw weights), a few
    thousand tokens of `docs`; the folder it saves (cfg.json + sae_weights.safetensors + sparsity)."""
    import datasets
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    from helpers.real_models import hooked_sae_transformer

    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=64, d_sae=128, k=4), model_name=str(model_dir), hook_name=HOOK,
        dataset_path="local", is_dataset_tokenized=False, streaming=False, context_size=32, training_tokens=8192,
        train_batch_size_tokens=256, store_batch_size_prompts=16, n_batches_in_buffer=8, device="cpu", lr=3e-3,
        logger=LoggingConfig(log_to_wandb=False), output_path=str(out), checkpoint_path=str(out.parent / "sl-ckpt"),
        verbose=False, n_batches_for_norm_estimate=4)
    torch.manual_seed(0)
    LanguageModelSAETrainingRunner(cfg, override_dataset=datasets.Dataset.from_dict({"text": list(docs)}),
                                   override_model=hooked_sae_transformer(model_dir)).run()
    return out


def test_an_sae_trained_by_saelens_builds_a_store_of_its_own_encodings_and_steers(real_models, real_corpus, tmp_path):
    """The store's per-latent statistics are SAELens's own encoder on the cached rows (same firing
    counts, same maxima); `steer` needs no --model with the store (it records the model the SAELens
    folder does not), and without it the refusal names the folder's local model directory as the
    --model to give (it said 'pass that as --model if it is the HF hub name'); `eval` measures the
    SAE's L0 as its k."""
    pytest.importorskip("sae_lens")
    from sae_lens import SAE

    from training.manifest import read_manifest
    from training.shards import load_tensors

    model = real_models.path("gpt2")
    sl_dir = _saelens_trained_sae(model, real_corpus.train_docs, tmp_path / "sl-sae")
    assert json.loads((sl_dir / "cfg.json").read_text())["metadata"]["model_name"] == str(model)
    saesteer("cache", "--model", model, "--dataset", real_corpus.jsonl_dir, "--split", "validation",
             "--context-length", 32, "--max-tokens", 2048, "--hooks", HOOK, "--out", tmp_path / "cache",
             "--no-progress").ok()
    saesteer("features", "build", "--sae", sl_dir, "--cache", tmp_path / "cache", "--out", tmp_path / "f.db",
             "--no-progress").ok()

    sl = SAE.load_from_disk(str(sl_dir))
    man = read_manifest(tmp_path / "cache")
    rows = torch.cat([load_tensors(tmp_path / "cache" / s.file)[f"acts/{HOOK}"] for s in man.shards]).float()
    with torch.no_grad():
        acts = sl.encode(rows)
    with sqlite3.connect(tmp_path / "f.db") as db:
        stored = db.execute("SELECT latent, n_fires, max_act FROM features ORDER BY latent").fetchall()
    assert [n for _, n, _ in stored] == (acts > 0).sum(0).tolist()
    torch.testing.assert_close(torch.tensor([m for _, _, m in stored]), acts.max(0).values.clamp_min(0), rtol=1e-4, atol=1e-5)

    # steer: the SAELens folder names its model by a path, in SAELens's terms (never loaded unasked: the
    # refusal says what to pass); with the store, the model the store records is used
    live = max(stored, key=lambda r: r[1])[0]
    r = saesteer("steer", "--sae", sl_dir, "--latent", f"{live}:add=4", "--prompt", "def f(", "--max-new-tokens", 2)
    assert r.rc == 2 and f"--model {model} if it is the one" in r.err and "if it is the HF hub name" not in r.err, r.err
    r = saesteer("steer", "--sae", sl_dir, "--store", tmp_path / "f.db", "--latent", f"{live}:add=2x",
                 "--prompt", "def f(", "--max-new-tokens", 4, "--json").ok()
    assert json.loads(r.out)["results"][0]["prompt"] == "def f("
    # eval on held-out text it was not trained on (the folder records no training text: eval says so)
    saesteer("eval", "--sae", f"sl={sl_dir}", "--model", model, "--dataset", real_corpus.jsonl_dir, "--split", "test",
             "--contexts", 8, "--ce-contexts", 2, "--absorption", "false", "--probing", "false", "--quiet",
             "--out", tmp_path / "eval").ok()
    assert json.loads((tmp_path / "eval/eval.json").read_text())["saes"]["sl"]["metrics"]["l0"] == pytest.approx(4.0)


# ---------------------------------------------------------------------------------------------
# 5. the openai client on a Qwen2 chat model: prompts longer than the context, stops across tokens


@pytest.fixture(scope="module")
def chat_api(real_models, real_corpus, tmp_path_factory):
    """`saesteer api` over a store of the Qwen2 checkpoint (its chat template in tokenizer_config.json),
    served on a loopback port: (openai client, model directory)."""
    pytest.importorskip("openai")
    from helpers.api_server import api_served
    from helpers.web_app import record_server

    work = tmp_path_factory.mktemp("user5-chat")
    model = work / "qwen2-chat"
    shutil.copytree(real_models.path("qwen2"), model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg["chat_template"] = QWEN2_TEMPLATE
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.MonkeyPatch.context() as mp:
        cache_train_store(model, real_corpus.jsonl_dir, work, "chat.db", "--hooks", HOOK, "--max-tokens", 2048)
        calls = record_server(mp)
        saesteer("api", "--store", work / "chat.db", "--port", 0).ok()
    (app, kw), = calls
    with api_served(app, kw["port"]) as (_, client):
        yield client, model


def test_a_prompt_longer_than_the_context_is_refused_with_its_real_length(chat_api):
    """The model's context is 128 tokens. A completions prompt of more was cut to 128 tokens before its
    length was checked ('the prompt is 128 tokens'), and both endpoints advised 'ask for at most 0
    tokens' (max_tokens must be >= 1): the prompt is at fault, and the error says how long it is."""
    import openai
    from transformers import AutoTokenizer

    client, model = chat_api
    tok = AutoTokenizer.from_pretrained(str(model))
    text = "def parse(self, args=None):\n    return self._parse(args)  # caf\u00e9 \u6771\u4eac\n" * 8
    n = len(tok(text)["input_ids"])
    assert 128 < n and len(text) <= 2000
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="chat", prompt=text, max_tokens=4)
    assert f"the prompt is {n} tokens" in str(e.value) and "at most 127 tokens" in str(e.value)
    assert e.value.body["param"] == "prompt" and e.value.body["code"] == "context_length_exceeded"
    msgs = [{"role": "user", "content": text}]
    n_chat = len(tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="chat", messages=msgs, max_tokens=4)
    assert f"the prompt is {n_chat} tokens" in str(e.value) and "at most 0" not in str(e.value)
    # a prompt that fits, with too many new tokens: the room left is what to ask for
    short = tok.decode(tok(text)["input_ids"][:100])
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="chat", prompt=short, max_tokens=40)
    assert "ask for at most 28 tokens" in str(e.value) and e.value.body["param"] == "max_tokens"


def test_a_stop_across_a_token_boundary_cuts_the_stream_where_it_cuts_the_reply(chat_api):
    """A stop string made of the end of one generated token and the start of the next: the streamed
    text (n=2, include_usage) is the whole reply's, cut before the stop's first occurrence, and the
    usage chunk counts the tokens each choice generated."""
    from transformers import AutoTokenizer

    client, model = chat_api
    tok = AutoTokenizer.from_pretrained(str(model))
    kw = dict(model="chat", messages=[{"role": "system", "content": "You write Python."},
                                      {"role": "user", "content": "def f(x):"},
                                      {"role": "assistant", "content": "    return x"},
                                      {"role": "user", "content": "and g?"}], max_tokens=16, temperature=1.0)
    full = client.chat.completions.create(seed=11, n=2, **kw)
    ids = full.choices[0].model_extra["steering"]["token_ids"]
    text = full.choices[0].message.content
    ends = [len(tok.decode(ids[:i + 1])) for i in range(len(ids))]
    stop = next((text[e - 2:e + 2] for e in ends[1:-1] if 2 <= e <= len(text) - 2
                 and "\ufffd" not in text[e - 2:e + 2] and text.find(text[e - 2:e + 2]) == e - 2), None)
    assert stop is not None, f"no stop string across a token boundary in {text!r}"
    want = [c.message.content[:c.message.content.find(stop)] if stop in c.message.content else c.message.content
            for c in full.choices]
    whole = client.chat.completions.create(seed=11, n=2, stop=[stop], **kw)
    assert [c.message.content for c in whole.choices] == want and whole.choices[0].finish_reason == "stop"
    streamed, usage = {0: "", 1: ""}, []
    for chunk in client.chat.completions.create(seed=11, n=2, stop=[stop], stream=True,
                                                stream_options={"include_usage": True}, **kw):
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
        usage.append(chunk.usage)
    assert [streamed[0], streamed[1]] == want
    assert usage[:-1] == [None] * (len(usage) - 1) and usage[-1] == whole.usage
    assert whole.usage.completion_tokens == sum(len(c.model_extra["steering"]["token_ids"]) for c in whole.choices)
