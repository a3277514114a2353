"""GPT-2, GPT-NeoX and Qwen2 checkpoints (and the Llama of tests/test_real_chain.py) as a user's
own models: each loads through TransformerBridge like `transformers` runs it, and a thin chain
(cache from a folder of .txt files -> train -> features build -> steer) gives activations equal to
the model's, token text equal to the tokenizer's, and an SAE that SAELens's HookedSAETransformer
runs with outputs equal to ours.

NeoX (Pythia) and Qwen2 do not prepend BOS by default (TransformerLens's default_prepend_bos is
False for them) while `saesteer cache` prepends one by default; the SAE records which it saw, and
every later stage must feed it the same.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from helpers.real_cli import captured_serve, saesteer
from helpers.threads import torch_threads

ALL = ("gpt2", "neox", "llama", "qwen2")
THIN = ("gpt2", "neox", "qwen2")
STEPS = {"llama": 200}  # the Llama is the one tests/test_real_chain.py trains longer
TEXT = "class Parser(object):\n\tdef parse(self, line):\n\t\treturn line.split('\\t')  # see the licence"
FORWARD = {"gpt2": "fast", "neox": "transformer_lens", "qwen2": "fast"}  # NeoX: no fused forward yet


@pytest.fixture(scope="module", autouse=True)
def _env():
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "COLUMNS": "240"}.items():
            mp.setenv(k, v)
        with torch_threads(1):
            yield


def model_path(real_models, family):
    return real_models.path(family, train_steps=STEPS.get(family, 60))


@pytest.mark.parametrize("family", ALL)
def test_the_bridge_runs_the_checkpoint_as_transformers_does(real_models, family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from saesteer.models import check_hook_names, load_model

    path = model_path(real_models, family)
    model = load_model(str(path), device="cpu")
    assert type(model).__name__ == "TransformerBridge"
    tok = AutoTokenizer.from_pretrained(str(path))
    ids = torch.tensor([tok(TEXT)["input_ids"]])
    hf = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager").eval()
    with torch.no_grad():
        want = hf(ids).logits
        got = model(ids)
    assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()
    n = model.cfg.n_layers
    hooks = [f"blocks.{n // 2}.hook_resid_post", "blocks.0.hook_mlp_out", "blocks.0.attn.hook_z", "blocks.0.attn.hook_k"]
    check_hook_names(model, hooks)
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=hooks)
    cfg = hf.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    d_head = model.cfg.d_model // n_heads
    assert cache["blocks.0.attn.hook_z"].shape[-2:] == (n_heads, d_head)
    assert cache["blocks.0.attn.hook_k"].shape[-2:] == (n_kv, d_head)  # GQA: fewer key/value heads


# ----------------------------------------------------------------------------------------------
# the thin chain


@pytest.mark.parametrize("family", ALL)
def test_transcoder_hook_pairs_are_checked_on_the_bridge(real_models, family):
    """The Bridge fires alias hooks (blocks.0.hook_mlp_out) under their canonical names: the pair
    check must still find both, in order, with their widths."""
    from saes.hookpoints import HookPairError, check_transcoder_hooks
    from saesteer.models import load_model

    model = load_model(str(model_path(real_models, family)), device="cpu")
    d = model.cfg.d_model
    assert check_transcoder_hooks(model, "blocks.0.hook_resid_pre", "blocks.0.hook_mlp_out") == (d, d)
    with pytest.raises(HookPairError, match="runs before the input hook"):
        check_transcoder_hooks(model, "blocks.0.hook_mlp_out", "blocks.0.hook_resid_pre")



def test_an_unknown_hook_lists_the_hook_points_people_use(real_models):
    """On a TransformerBridge the error lists the HookedTransformer-style names (and counts the input /
    output hooks the Bridge adds to every submodule), not ~100 names in one line."""
    from saes.hookpoints import UnknownHookError, check_hook, hook_names
    from saesteer.models import load_model

    model = load_model(str(model_path(real_models, "qwen2")), device="cpu")
    with pytest.raises(UnknownHookError) as e:
        check_hook(model, "blocks.5.hook_resid_post")
    msg = str(e.value)
    assert "Did you mean blocks.1.hook_resid_post" in msg and "blocks.{0..1}.hook_resid_post" in msg
    assert ".attn.q.hook_in" not in msg and "input/output hooks of its modules" in msg
    wrappers = [n for n in hook_names(model) if n.endswith((".hook_in", ".hook_out"))]
    assert f"and {len(wrappers)} input/output hooks" in msg and len(msg) < 1600
    check_hook(model, "blocks.0.attn.q.hook_out")  # still valid, only not listed


@pytest.fixture(scope="module", params=THIN)
def thin(request, real_models, real_corpus, tmp_path_factory):
    family = request.param
    path = model_path(real_models, family)
    work = tmp_path_factory.mktemp(f"thin-{family}")
    saesteer("cache", "--model", path, "--dataset", real_corpus.txt_dir, "--context-length", 64, "--max-tokens", 4096,
             "--out", work / "cache", "--no-progress").ok()
    saesteer("train", "--cache", work / "cache", "--out", work / "run", "--architecture", "topk", "--d-sae", 256,
             "--k", 8, "--total-tokens", 8192, "--batch-size", 512, "--holdout-tokens", 1024, "--eval-every-tokens", 0,
             "--checkpoint-every-tokens", 0, "--model-eval", "false", "--progress", "false", "--sae-name", "sae").ok()
    saesteer("features", "build", "--sae", work / "run/saes/sae", "--cache", work / "cache", "--out", work / "f.db",
             "--model", path, "--device", "cpu", "--no-progress").ok()
    return family, path, work


def test_thin_chain_caches_the_model_activations(thin):
    from helpers.real_interop import cache_vs_model
    from saesteer.models import load_model

    family, path, work = thin
    man = json.loads((work / "cache" / "manifest.json").read_text())
    assert man["forward"] == FORWARD[family]
    assert [f[0] for f in man["dataset"]["files"]][:2] == ["doc0000.txt", "doc0001.txt"]
    hook = man["hooks"][0]
    errors = cache_vs_model(work / "cache", load_model(str(path), device="cpu"), [hook])
    assert errors[hook] < 2e-3, errors


def test_a_txt_folder_is_cached_as_whole_files(thin, real_corpus):
    """Each .txt file of the folder is one document: the cached text keeps its newlines and an EOS
    comes only after a whole file (read one line per document, 260 EOS came in 4,032 tokens of one
    file of code). The manifest records the reading (`--txt-documents file`)."""
    from transformers import AutoTokenizer

    from training.shards import load_tensors

    family, path, work = thin
    tok = AutoTokenizer.from_pretrained(str(path))
    man = json.loads((work / "cache" / "manifest.json").read_text())
    assert man["dataset"]["txt_documents"] == "file"
    contexts = load_tensors(work / "cache" / man["shards"][0]["file"], ["context_tokens"])["context_tokens"]
    body = contexts[:, 1:].flatten().tolist()  # BOS left out (the model's BOS may be its EOS token)
    first = real_corpus.train_docs[0]  # doc0000.txt, argparse.py: longer than the whole cache
    assert len(tok(first, add_special_tokens=False, verbose=False)["input_ids"]) > len(body)
    assert body.count(tok.eos_token_id) == 0, f"{body.count(tok.eos_token_id)} EOS tokens in {len(body)} tokens"
    text = tok.decode(contexts[0, 1:].tolist())
    assert "\n" in text and text in first


def test_thin_chain_store_text_is_the_tokenizer_decoding(thin):
    from transformers import AutoTokenizer

    from features import FeatureStore

    family, path, work = thin
    tok = AutoTokenizer.from_pretrained(str(path))
    store = FeatureStore.open(work / "f.db")
    top = [r.latent for r in store.list_features(sort="freq", limit=5)]
    exs = [ex for f in top for ex in store.examples(f)]
    logits = store.feature(top[0]).logits
    n_vocab = len(store.vocab())
    store.close()
    assert exs and all(ex.text == tok.decode(ex.token_ids, skip_special_tokens=False,
                                             clean_up_tokenization_spaces=False) for ex in exs)
    assert n_vocab == len(tok) and logits is not None and logits.promoted


def test_thin_chain_steers(thin):
    family, path, work = thin
    with sqlite3.connect(work / "f.db") as db:  # of the frequent latents, the one that fires strongest
        f = db.execute("SELECT latent FROM (SELECT latent, typical_max_act FROM features ORDER BY freq DESC LIMIT 10) "
                       "ORDER BY typical_max_act DESC LIMIT 1").fetchone()[0]
    # greedy, and strong: these briefly trained models barely read their residual stream
    r = saesteer("steer", "--model", path, "--sae", work / "run/saes/sae", "--store", work / "f.db", "--latent",
                 f"{f}:add=40x", "--prompt", "def main(", "--max-new-tokens", 5, "--do-sample", "false",
                 "--json").ok()
    out = json.loads(r.out)["results"][0]
    assert out["steered"] != out["unsteered"]


def test_generated_code_keeps_its_whitespace(thin):
    """A continuation is what the new tokens add to the prompt's text: prompt + continuation is the
    tokenizer's decoding of all the tokens (its line breaks and indentation kept, no space put
    between "def main(" and what follows)."""
    from transformers import AutoTokenizer

    from saesteer.models import load_model
    from steering import GenerationConfig, generate

    family, path, work = thin
    tok = AutoTokenizer.from_pretrained(str(path))
    gen = generate(load_model(str(path), device="cpu"), ["def main(", "class Parser(object):\n", "import"],
                   GenerationConfig(max_new_tokens=12, do_sample=False, stop_at_eos=False, prepend_bos=True))
    for b, full in enumerate(gen.full_texts):
        assert full == tok.decode(gen.tokens[b].tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_saelens_runs_the_thin_chain_sae_with_our_outputs(thin):
    import saes
    from helpers.real_interop import assert_same_outputs, saelens_side_by_side
    from saesteer.models import load_model

    family, path, work = thin
    sae_dir = work / "run/saes/sae"
    sae = saes.load_sae(sae_dir)
    hook = sae.cfg.metadata["hook_name"]
    model = load_model(str(path), device="cpu")
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(TEXT, prepend_bos=True), names_filter=[hook])
    latent = int(sae.encode(cache[hook][0]).amax(0).argmax())
    ours, theirs = saelens_side_by_side(path, sae_dir, TEXT, latent=latent, value=8.0)
    assert_same_outputs(ours, theirs)


# ----------------------------------------------------------------------------------------------
# BOS: the SAE saw contexts that start with BOS (`saesteer cache` prepends one by default, and
# cfg.json records prepend_bos); NeoX and Qwen2 do not prepend one by default


def sae_latents(model, sae, text, prepend_bos):
    hook = sae.cfg.metadata["hook_name"]
    tokens = model.to_tokens(text, prepend_bos=prepend_bos)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[hook])
    return sae.encode(cache[hook][0])[int(prepend_bos):]  # the text's tokens, BOS left out


def test_the_web_app_fires_latents_on_the_context_the_sae_was_trained_with(thin, monkeypatch):
    import saes
    from saesteer.models import load_model

    family, path, work = thin
    sae = saes.load_sae(work / "run/saes/sae")
    assert sae.cfg.metadata["prepend_bos"] is True
    r, client = captured_serve(monkeypatch, "--store", work / "f.db", "--model", path, "--sae", work / "run/saes/sae",
                               "--device", "cpu")
    assert client is not None, r.text
    sid = client.get("/api/stores").json()[0]["id"]
    fired = client.post(f"/api/stores/{sid}/fire", json={"text": TEXT, "top_k": 50}).json()
    want = sae_latents(load_model(str(path), device="cpu"), sae, TEXT, prepend_bos=True)
    assert len(fired["tokens"]) == want.shape[0]
    shown = {feat["latent"]: torch.tensor(feat["acts"]) for feat in fired["features"]}  # the 50 strongest
    firing = (want > 0).any(0).nonzero().flatten().tolist()
    assert shown and set(shown) <= set(firing) and len(shown) == min(50, len(firing))
    for i, acts in shown.items():
        assert (acts - want[:, i]).abs().max().item() <= 1e-4 * want.abs().max().item(), f"latent {i}"


def test_steer_defaults_to_the_bos_the_sae_was_trained_with(thin):
    family, path, work = thin
    with sqlite3.connect(work / "f.db") as db:
        f = db.execute("SELECT latent FROM features ORDER BY freq DESC LIMIT 1").fetchone()[0]
    args = ("steer", "--model", path, "--sae", work / "run/saes/sae", "--latent", f"{f}:add=40",
            "--prompt", "def main(", "--max-new-tokens", 5, "--do-sample", "false", "--json")
    default = json.loads(saesteer(*args).ok().out)["results"]
    with_bos = json.loads(saesteer(*args, "--prepend-bos", "true").ok().out)["results"]
    assert default == with_bos


def test_top_on_text_defaults_to_the_bos_the_sae_was_trained_with(thin):
    family, path, work = thin
    args = ("features", "top-on-text", work / "f.db", "def main(", "--model", path, "--device", "cpu", "--top", 3)
    default = saesteer(*args).ok().out
    assert default == saesteer(*args, "--prepend-bos", "true").ok().out
    assert default != saesteer(*args, "--prepend-bos", "false").ok().out


def test_sweep_defaults_to_the_bos_the_sae_was_trained_with(thin):
    import saes
    from saesteer.models import load_model
    from steering import FeatureEdit, GenerationConfig, SweepConfig, steer, sweep
    from steering.evaluate import SampleScores

    family, path, work = thin
    model = load_model(str(path), device="cpu")
    sae = saes.load_sae(work / "run/saes/sae")
    with sqlite3.connect(work / "f.db") as db:
        f = db.execute("SELECT latent FROM features ORDER BY freq DESC LIMIT 1").fetchone()[0]
    def scorer(prompts, texts):
        return [SampleScores(0.5, 0.5) for _ in texts]

    res = sweep(model, sae, f, ["def main("], scorer, SweepConfig(strengths=[40.0], op="add", unit="raw"),
                gen_config=GenerationConfig(max_new_tokens=5, do_sample=False))
    with steer(model, sae, FeatureEdit(f, "add", 40.0)) as s:
        want = s.generate(["def main("], GenerationConfig(max_new_tokens=5, do_sample=False, prepend_bos=True)).texts
    assert res.points[0].examples == want


# SAELens loads models with weight processing unless told otherwise (HookedTransformer.from_pretrained
# folds LayerNorm, centres writing weights and the unembedding); SAEs are trained on the raw
# residual stream, so the SAE folder must say how to load the model (SAELens's metadata field
# model_from_pretrained_kwargs), and loading it that way must give our outputs
SAELENS_DEFAULT_PROCESSING = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True,
                              "fold_value_biases": True}


def test_saelens_loading_the_model_as_the_sae_folder_says_gives_our_outputs(thin):
    import saes
    from helpers.real_interop import assert_same_outputs, saelens_side_by_side
    from saesteer.models import load_model

    family, path, work = thin
    sae_dir = work / "run/saes/sae"
    recorded = json.loads((sae_dir / "cfg.json").read_text())["metadata"].get("model_from_pretrained_kwargs") or {}
    processing = {k: recorded.get(k, v) for k, v in SAELENS_DEFAULT_PROCESSING.items()}
    sae = saes.load_sae(sae_dir)
    hook = sae.cfg.metadata["hook_name"]
    model = load_model(str(path), device="cpu")
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(TEXT, prepend_bos=True), names_filter=[hook])
    latent = int(sae.encode(cache[hook][0]).amax(0).argmax())
    ours, theirs = saelens_side_by_side(path, sae_dir, TEXT, latent=latent, value=8.0, processing=processing)
    assert_same_outputs(ours, theirs)


def test_latent_statistics_over_prompts_use_the_bos_the_sae_was_trained_with(thin):
    """`steer --contrast` and the web sweep's firing score read latents over prompts."""
    import saes
    from saesteer.models import load_model
    from steering.activations import mean_latent_activation

    family, path, work = thin
    model, sae = load_model(str(path), device="cpu"), saes.load_sae(work / "run/saes/sae")
    default = mean_latent_activation(model, sae, [TEXT, "def main():"])
    with_bos = mean_latent_activation(model, sae, [TEXT, "def main():"], prepend_bos=True)
    assert torch.equal(default[0], with_bos[0]) and default[2] == with_bos[2]
