"""The architectures researchers train SAEs on in late 2026, each as a tiny checkpoint of the hub
model's own config class with its family's tokenizer (tests/helpers/real_models.py), driven through
the whole CLI chain as a user drives it: `cache` (code, prose, accents, CJK from a local jsonl
dataset) -> `train` -> `features build` -> `label` (the loopback judge) -> `steer` -> `api` (the
`openai` client).

At each stage the check is against the HF model itself, not against our own earlier output:
- the cache holds HF's hidden states at the hook, with the tokenizer's own BOS;
- `steer`'s unsteered text is HF's own greedy continuation of the prompt;
- `api` with a latent ablated returns the log-probs of HF's model with that hook's output lowered
  by exactly the latent's decoder contribution (the SAE run on HF's own activation), so the edit
  lands at the right hook, changes that latent only, and nothing else differs.

All run under `-m slow` (one chain takes ~10 s on the shared CI cores; the default run covers these
architectures' hooks in tests/test_newarch_hooks.py and test_rvnew_moe_hooks.py): Mixtral (a
mixture-of-experts MLP, GQA, SentencePiece tokenizer with <s>), Llama-3.1 (llama3 RoPE scaling, tied
embeddings), Phi-3 (joint qkv / gate_up), Qwen3-MoE (no BOS token at all), OLMoE, GPT-J (parallel
attention), Gemma-3 (Gemma's tokenizer and <bos>), Granite (embedding/residual/logit multipliers),
StarCoder2, gpt-oss (experts, attention sinks), Gemma-4 (text).
"""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

# architecture -> the tokenizer family of its hub checkpoints
FAMILY = {"mixtral": "mistral", "llama3_1": "llama3", "phi3": "mistral", "qwen3_moe": "qwen2", "olmoe": "neox",
          "gptj": "gpt2", "gemma3": "gemma", "granite": "gpt2", "starcoder2": "gpt2", "gpt_oss": "gpt2",
          "gemma4": "gemma"}
HOOK = "blocks.0.hook_resid_post"  # HF's hidden_states[1] in every architecture
PROMPT = "def parse(self, line):\n    \"\"\"Split caf\u00e9 \u6771\u4eac\"\"\"\n    return"


def _arch_params():
    return [pytest.param(a, marks=pytest.mark.slow) for a in FAMILY]


@pytest.fixture(scope="module")
def judge():
    from helpers.judge_server import JudgeServer, fake_llm_answer

    with JudgeServer(fake_llm_answer) as srv:
        yield srv


@pytest.fixture(scope="module", params=_arch_params())
def chain(request, real_corpus, judge, tmp_path_factory):
    from helpers.real_models import build_family_tokenizer, save_arch_model

    arch = request.param
    work = tmp_path_factory.mktemp(f"newarch-{arch}")
    tok = build_family_tokenizer(FAMILY[arch], real_corpus.train_docs, vocab_size=512)
    model_dir = save_arch_model(work / f"{arch}-model", arch, tok)
    saesteer("cache", "--model", model_dir, "--dataset", real_corpus.jsonl_dir, "--split", "train",
             "--context-length", 48, "--max-tokens", 1536, "--hooks", f"{HOOK},blocks.0.attn.hook_z",
             "--out", work / "cache", "--no-progress").ok()
    saesteer("train", "--cache", work / "cache", "--hook", HOOK, "--out", work / "run", "--architecture", "topk",
             "--d-sae", 128, "--k", 4, "--total-tokens", 1536, "--batch-size", 256, "--holdout-tokens", 256,
             "--eval-ce-contexts", 2, "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0, "--no-progress",
             "--sae-name", "sae").ok()
    saesteer("features", "build", "--sae", work / "run/saes/sae", "--cache", work / "cache", "--out", work / "f.db",
             "--no-progress").ok()
    with sqlite3.connect(work / "f.db") as db:
        live = [r[0] for r in db.execute("SELECT latent FROM features WHERE n_fires > 0 ORDER BY n_fires DESC LIMIT 3")]
    saesteer("label", "--store", work / "f.db", "--latents", ",".join(map(str, live)), "--judge-model", "loopback",
             "--judge-base-url", judge.url, "--judge-backoff-base-s", "0.01", "--max-example-tokens", 48,
             "--no-progress").ok()
    return arch, model_dir, tok, work, live


def _prompt_ids(tok, work) -> list[int]:
    """The prompt as the SAE saw text: its cache's BOS (the tokenizer's own, or its EOS for a family
    without one, as Qwen's) before the text's tokens."""
    bos = json.loads((work / "cache/manifest.json").read_text())["tokenizer"]["bos_id"]
    return [bos] + tok(PROMPT, add_special_tokens=False)["input_ids"]


def _hf(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()


def test_the_cache_holds_the_hf_models_hidden_states_with_the_tokenizers_bos(chain):
    from training.manifest import read_manifest
    from training.shards import load_tensors

    arch, model_dir, tok, work, _ = chain
    man = read_manifest(work / "cache")
    raw = json.loads((work / "cache/manifest.json").read_text())
    assert raw["model_identity"]["path"] == str(model_dir.resolve())
    assert raw["tokenizer"]["bos_id"] == (tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id)
    shard = load_tensors(work / "cache" / man.shards[0].file)
    first = int(man.shards[0].first_context)
    contexts = shard["context_tokens"].long()
    bos = raw["tokenizer"]["bos_id"]
    assert (contexts[:, 0] == bos).all() and not (contexts[:, 1] == bos).any(), f"{arch}: not one BOS per context"
    tokens = contexts[:4]
    with torch.no_grad():
        want = _hf(model_dir)(tokens, output_hidden_states=True).hidden_states[1]
    rows = (shard["seq_index"] - first) < 4
    seq, pos = shard["seq_index"][rows] - first, shard["positions"][rows].long()
    w, got = want[seq, pos].float(), shard[f"acts/{HOOK}"][rows].float()
    rel = ((got - w).norm(dim=1) / w.norm(dim=1).clamp_min(1e-6)).max().item()
    assert rel < 2e-3, f"{arch}: cached {HOOK} differs from HF's hidden state by {rel:.2e}"
    width = shard["acts/blocks.0.attn.hook_z"].shape[-1]  # the heads flattened
    assert width == 4 * 16, f"{arch}: hook_z rows of width {width}, not 4 heads of 16"


def test_labels_and_steer_run_on_the_model_and_unsteered_text_is_hfs_own(chain):
    from saes.bytefallback import text_of

    arch, model_dir, tok, work, live = chain
    with sqlite3.connect(work / "f.db") as db:
        labelled = {r[0] for r in db.execute("SELECT latent FROM labels")}
    assert set(live) <= labelled, f"{arch}: labelled {labelled}, asked for {live}"
    r = saesteer("steer", "--sae", work / "run/saes/sae", "--store", work / "f.db", "--latent", f"{live[0]}:ablate",
                 "--prompt", PROMPT, "--max-new-tokens", 8, "--do-sample", "false", "--stop-at-eos", "false",
                 "--json").ok()
    res = json.loads(r.out)["results"][0]
    ids = _prompt_ids(tok, work)
    hf, greedy = _hf(model_dir), list(ids)
    with torch.no_grad():  # HF's forward on the whole sequence each step (generate() would take a BOS that is
        for _ in range(8):  # also the pad token, as Qwen's and Granite's here, for padding and mask it)
            greedy.append(int(hf(torch.tensor([greedy])).logits[0, -1].argmax()))
    want = text_of(tok, greedy[len(ids):])  # a cut <0xNN> run read as saesteer reads it (saes.bytefallback)
    assert res["unsteered"].endswith(want), (arch, res["unsteered"], want)


def _hf_logprobs(model_dir, ids, gen, edit=None) -> list[float]:
    """HF's log-probs of `gen` after `ids`; `edit(x) -> x` changes layer 0's output (hidden_states[1])."""
    hf = _hf(model_dir)
    layers = hf.transformer.h if hasattr(hf, "transformer") else hf.model.layers

    def change(module, args, output):
        x = edit(output[0] if isinstance(output, tuple) else output)
        return (x, *output[1:]) if isinstance(output, tuple) else x

    handle = layers[0].register_forward_hook(change) if edit else None
    try:
        with torch.no_grad():
            lp = torch.log_softmax(hf(torch.tensor([ids + gen])).logits.float(), -1)[0]
    finally:
        if handle:
            handle.remove()
    return [lp[len(ids) - 1 + j, t].item() for j, t in enumerate(gen)]


def test_api_ablation_is_exactly_the_latents_decoder_contribution(chain, monkeypatch):
    """The latent that fires most on the prompt (the SAE on HF's own activation) is ablated through
    the openai client: the log-probs served are HF's with layer 0's output lowered by that latent's
    activation times its decoder row, which differ from the plain model's; unsteered, HF's own."""
    from helpers.api_server import api_served
    from helpers.web_app import record_server
    from saes.io import load_sae

    pytest.importorskip("openai")
    arch, model_dir, tok, work, _ = chain
    ids = _prompt_ids(tok, work)
    sae = load_sae(work / "run/saes/sae").eval()
    with torch.no_grad():
        acts = sae.encode(_hf(model_dir)(torch.tensor([ids]), output_hidden_states=True).hidden_states[1])[0]
    latent = int(acts.sum(0).argmax())
    assert (acts[:, latent] > 0).sum() >= 2, f"{arch}: no latent fires on the prompt"

    calls = record_server(monkeypatch)
    saesteer("api", "--store", work / "f.db", "--port", 0).ok()
    (app, kw), = calls
    with api_served(app, kw["port"]) as (_, client):
        r = client.completions.create(model="f", prompt=PROMPT, max_tokens=12, temperature=1.0, seed=3, logprobs=1,
                                      extra_body={"steering": {"edits": [{"latent": latent, "op": "ablate"}]}})
        plain = client.completions.create(model="f", prompt=PROMPT, max_tokens=12, temperature=1.0, seed=3,
                                          logprobs=1)
    assert r.usage.prompt_tokens == len(ids), (arch, r.usage.prompt_tokens, len(ids))

    def ablate(x):
        with torch.no_grad():
            return x - sae.encode(x)[..., latent:latent + 1] * sae.W_dec[latent]

    gen = r.choices[0].model_extra["steering"]["token_ids"]
    served = r.choices[0].logprobs.token_logprobs
    ablated, unedited = _hf_logprobs(model_dir, ids, gen, ablate), _hf_logprobs(model_dir, ids, gen)
    assert max(abs(a - b) for a, b in zip(served, ablated)) < 1e-4, f"{arch}: not HF's with the latent ablated"
    assert max(abs(a - b) for a, b in zip(served, unedited)) > 1e-2, f"{arch}: the ablation changed nothing"
    pgen = plain.choices[0].model_extra["steering"]["token_ids"]
    plain_served = plain.choices[0].logprobs.token_logprobs
    pworst = max(abs(a - b) for a, b in zip(plain_served, _hf_logprobs(model_dir, ids, pgen)))
    assert pworst < 1e-4, f"{arch}: unsteered log-probs differ from HF's by {pworst:.2e}"


def test_api_chat_reads_the_templates_tokens_once(chain, monkeypatch):
    """A chat request through the openai client: the prompt is the family's chat template rendered by
    the tokenizer (one BOS: Llama-3's template writes one and its tokenizer adds another unless told
    not to), and the reply's log-probs are HF's on exactly those tokens."""
    from helpers.api_server import api_served
    from helpers.web_app import record_server

    pytest.importorskip("openai")
    arch, model_dir, tok, work, _ = chain
    if tok.chat_template is None:
        pytest.skip(f"the {FAMILY[arch]} family's tokenizer has no chat template here")
    messages = [{"role": "user", "content": "R\u00e9sume en une ligne: def f(x): return x  # \u6771\u4eac"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids.count(tok.bos_token_id) == 1 or tok.bos_token_id is None
    calls = record_server(monkeypatch)
    saesteer("api", "--store", work / "f.db", "--port", 0).ok()
    (app, kw), = calls
    with api_served(app, kw["port"]) as (_, client):
        r = client.chat.completions.create(model="f", messages=messages, max_tokens=8, temperature=1.0, seed=5,
                                           logprobs=True)
    gen = r.choices[0].model_extra["steering"]["token_ids"]
    served = [c.logprob for c in r.choices[0].logprobs.content]
    with torch.no_grad():
        lp = torch.log_softmax(_hf(model_dir)(torch.tensor([ids + gen])).logits.float(), -1)[0]
    want = [lp[len(ids) - 1 + j, t].item() for j, t in enumerate(gen)]
    assert r.usage.prompt_tokens == len(ids), (arch, r.usage.prompt_tokens, len(ids))
    assert max(abs(a - b) for a, b in zip(served, want)) < 1e-4
