"""An SAE from SAELens's registry names its model only in SAELens's terms (`model_name`: 'gpt2-small', Gemma
Scope 2's 'google/gemma-3-270m') and records no model identity. `steer` compared that name with a hub
--model, but `features build` (against the cache's model), the Python API (`check_sae_model`, which
`steering.steer` / `sweep` / `compare_methods` call) and the server (a store's SAE against its model)
took any model of the same width without a word. Now each refuses a hub model of another name, naming
both and the override."""

from __future__ import annotations

import pytest

from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

SAE = "sae_lens:gpt2-small-res-jb/blocks.1.hook_resid_pre"  # its cfg.json names 'gpt2-small'
OTHER = "EleutherAI/pythia-70m-deduped"  # the tiny NeoX: the same width as the tiny GPT-2


@pytest.fixture
def registry_cache(real_models, tmp_path, monkeypatch):
    from helpers.foreign_saes import offline_registry_cache

    return offline_registry_cache(real_models, tmp_path, monkeypatch)


def test_features_build_refuses_a_registry_sae_on_a_cache_of_another_hub_model(registry_cache, real_corpus,
                                                                                tmp_path):
    # processed as the SAE's model_from_pretrained_kwargs ask: only the model's name differs
    saesteer("cache", "--model", OTHER, "--process-weights", "--dataset", real_corpus.jsonl_dir, "--context-length",
             32, "--max-tokens", 512, "--hooks", "blocks.1.hook_resid_pre", "--no-progress",
             "--out", tmp_path / "cache").ok()
    build = ("features", "build", "--sae", SAE, "--cache", tmp_path / "cache", "--no-progress")
    r = saesteer(*build, "--out", tmp_path / "f.db")
    assert r.rc != 0 and "Traceback" not in r.err, r.err
    assert "'gpt2-small'" in r.err and OTHER in r.err and "--allow-model-mismatch" in r.err, r.err
    assert len(r.err.strip().splitlines()) <= 2, r.err
    saesteer(*build, "--allow-model-mismatch", "--out", tmp_path / "f.db").ok()

    # the store so built (it records the cache's model) is refused by the server with that model
    from saes.identity import ModelMismatchError
    from saesteer.models import load_model
    from saesteer.web.launch import open_entries

    model = load_model(OTHER, device="cpu", process_weights=True)
    with pytest.raises(ModelMismatchError, match=r"'gpt2-small'.*EleutherAI/pythia-70m-deduped.*allow-model-mismatch"):
        open_entries([tmp_path / "f.db"], model=model)
    assert open_entries([tmp_path / "f.db"], model=model, allow_model_mismatch=True)[0].engine is not None


def test_the_python_api_refuses_a_registry_sae_with_another_hub_model(registry_cache):
    from saes.formats import resolve_sae
    from saes.identity import ModelMismatchError, check_sae_model
    from saesteer.models import load_model
    from steering import steer

    loaded = resolve_sae(SAE)
    other = load_model(OTHER, device="cpu", process_weights=True)
    for sae in (loaded, loaded.sae):  # the LoadedSAE, and the bare SAE whose config names the model too
        with pytest.raises(ModelMismatchError, match=r"'gpt2-small'.*EleutherAI/pythia-70m-deduped.*"
                                                     r"allow_model_mismatch=True"):
            check_sae_model(other, sae)
    with pytest.raises(ModelMismatchError, match="'gpt2-small'"), steer(other, loaded, ["3:add=4"]):
        pass
    check_sae_model(other, loaded, allow_mismatch=True)
    check_sae_model(load_model("gpt2", device="cpu", process_weights=True), loaded)  # its own model passes
