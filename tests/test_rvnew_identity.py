"""A TransformerLens alias and the hub repo TransformerBridge loads for it are one model name
(`saes.identity.same_model`, so an old record of `hub:qwen3-0.6b` re-loads as Qwen/Qwen3-0.6B), but
one name is not one model: two commits of it, or another repo, are still refused naming both sides.
The alias table is the installed TransformerLens's own."""

from __future__ import annotations

import pytest

from saes.identity import ModelIdentity, ModelMismatchError, bridge_hub_name, check_same_model, same_model

FIRST, LATER = "1" * 40, "2" * 40


def _hub(name, revision=None):
    return ModelIdentity("hub", name, revision, None, None, 64, 2, 512)


def test_the_alias_table_is_the_installed_transformer_lenses():
    from transformer_lens.model_bridge.sources.transformers import MODEL_ALIASES

    assert "qwen3-0.6b" in MODEL_ALIASES["Qwen/Qwen3-0.6B"]
    assert bridge_hub_name("qwen3-0.6b") == "Qwen/Qwen3-0.6B" and bridge_hub_name("gpt2-small") == "gpt2"
    assert bridge_hub_name("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"  # a repo name is itself


def test_an_alias_and_its_repo_are_one_model_only_at_one_commit():
    assert same_model(_hub("qwen3-0.6b", FIRST), _hub("Qwen/Qwen3-0.6B", FIRST))
    assert same_model(_hub("qwen3-0.6b"), _hub("Qwen/Qwen3-0.6B", FIRST))  # an old record: no commit
    assert not same_model(_hub("qwen3-0.6b", FIRST), _hub("Qwen/Qwen3-0.6B", LATER))
    assert not same_model(_hub("Qwen/Qwen3-0.6B", LATER), _hub("qwen3-0.6b", FIRST))
    assert not same_model(_hub("qwen3-0.6b"), _hub("Qwen/Qwen3-1.7B", FIRST))  # another repo
    assert not same_model(_hub("qwen3-0.6b"), _hub("qwen3-1.7b"))  # two aliases of two repos


def test_a_commit_mismatch_under_an_alias_is_refused_naming_both_commits():
    with pytest.raises(ModelMismatchError) as refused:
        check_same_model(_hub("qwen3-0.6b", FIRST), _hub("Qwen/Qwen3-0.6B", LATER), recorded_in="the cache",
                         given_as="--model", override="--allow-model-mismatch")
    assert FIRST[:7] in str(refused.value) and LATER[:7] in str(refused.value), refused.value
