"""A hub model named by TransformerLens's old alias, as SAELens configs and tutorials name them
(`gpt2-small`, `gemma-2-2b`, `qwen3-0.6b`): TransformerBridge loads the official repo
(`Qwen/Qwen3-0.6B`), so that repo's commit is what the cache records, and later commands re-load
that commit even after the hub's main branch moves.

It was a silent wrong result: the commit was looked up under the alias (no such repo, so none),
the record said `hub:qwen3-0.6b` with no commit, and `steer` re-loaded whatever main held by then.
Here the hub is an offline HF cache (tests/helpers/foreign_saes.write_hf_snapshot) holding a tiny
Qwen3 with the Qwen tokenizer family (no BOS token).
"""

from __future__ import annotations

import json

import pytest

from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

REPO, ALIAS = "Qwen/Qwen3-0.6B", "qwen3-0.6b"
FIRST, LATER = "1" * 40, "2" * 40


def _snapshot(hub, model_dir, revision):
    from helpers.foreign_saes import write_hf_snapshot

    write_hf_snapshot(hub, REPO, {p.name: p for p in model_dir.iterdir() if p.suffix in (".json", ".safetensors")},
                      revision=revision)


@pytest.fixture
def hub(real_corpus, tmp_path, monkeypatch):
    """An offline HF cache holding the tiny Qwen3 as Qwen/Qwen3-0.6B at commit FIRST; its tokenizer."""
    from huggingface_hub import constants

    from helpers.real_models import build_family_tokenizer, save_arch_model

    tok = build_family_tokenizer("qwen2", real_corpus.train_docs, vocab_size=512)
    _snapshot(tmp_path / "hub", save_arch_model(tmp_path / "v1", "qwen3", tok), FIRST)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub", tok


def test_an_alias_records_the_official_repo_at_its_commit_and_steer_reloads_that_commit(
        hub, real_corpus, tmp_path):
    import torch

    from helpers.real_models import save_arch_model

    hub, tok = hub

    saesteer("cache", "--model", ALIAS, "--dataset", real_corpus.jsonl_dir, "--context-length", 32, "--max-tokens",
             512, "--hooks", "blocks.0.hook_resid_post", "--out", tmp_path / "cache", "--no-progress").ok()
    ident = json.loads((tmp_path / "cache/manifest.json").read_text())["model_identity"]
    assert (ident["name"], ident["revision"]) == (REPO, FIRST), ident
    saesteer("train", "--cache", tmp_path / "cache", "--out", tmp_path / "run", "--architecture", "topk", "--d-sae",
             64, "--k", 4, "--total-tokens", 512, "--batch-size", 128, "--holdout-tokens", 128, "--eval-every-tokens",
             0, "--checkpoint-every-tokens", 0, "--model-eval", "false", "--no-progress", "--sae-name", "sae").ok()

    def steer(*extra):
        r = saesteer("steer", "--sae", tmp_path / "run/saes/sae", "--latent", "3:add=4", "--prompt", "def f(x):",
                     "--max-new-tokens", 6, "--do-sample", "false", "--json", *extra).ok()
        return json.loads(r.out)["results"][0]

    before = steer()
    assert steer("--model", REPO) == before  # the official name is the recorded model
    # the hub's main moves on to other weights of the same shape
    torch.manual_seed(1)
    later = save_arch_model(tmp_path / "v2", "qwen3", tok)
    from safetensors.torch import load_file, save_file

    weights = {k: v + 0.5 * torch.randn_like(v) for k, v in load_file(later / "model.safetensors").items()}
    save_file(weights, later / "model.safetensors", metadata={"format": "pt"})
    _snapshot(hub, later, LATER)
    assert steer() == before  # the recorded commit, not main


def test_a_record_of_the_alias_by_an_older_saesteer_still_loads(hub):
    """A cache, SAE or store recorded `hub:qwen3-0.6b` with no commit before the fix: re-loading it
    (now recorded as Qwen/Qwen3-0.6B at a commit) is the same model, not a mismatch to refuse."""
    from saes.identity import ModelIdentity
    from saesteer.models import load_recorded_model, model_identity

    old = ModelIdentity("hub", ALIAS, None, None, None, 64, 2, 512)
    model = load_recorded_model(old, None, recorded_in="the old cache")
    assert (model_identity(model).name, model_identity(model).revision) == (REPO, FIRST)
    assert model_identity(load_recorded_model(old, REPO, recorded_in="the old cache")).name == REPO
