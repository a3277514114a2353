"""The researcher's path end to end, by the CLI: cache a real tiny GPT-2's activations (code, prose,
accents, CJK), train every architecture in one pass (inputs scaled while training: the scale must
be folded into what is shared), then SAELens's `SAE.load_from_disk` of each SAE folder gives our
latents and reconstruction on the cache's raw rows, with the hook, the model and the raw-weights
loading kwargs SAELens users need; the folder SAELens saves again is recognised by the feature store
built on ours, and a retrained SAE is refused naming both."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("sae_lens")
# slow: the module caches and trains four SAEs by the CLI (about 10 s before the first test)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("offline_env", "one_thread")]

ARCHS = {"topk": "topk_k4_f128", "batchtopk": "batchtopk_k4_f128", "matryoshka": "matryoshka_batchtopk_k4_f128",
         "jumprelu": "jumprelu_f128"}


@pytest.fixture(scope="module")
def trained(real_models, real_corpus, tmp_path_factory):
    from helpers.real_cli import saesteer

    work = tmp_path_factory.mktemp("publish-trained")
    model = real_models.path("gpt2")
    saesteer("cache", "--model", model, "--dataset", real_corpus.jsonl_dir / "train.jsonl", "--hooks", "blocks.1.hook_resid_post",
             "--context-length", 32, "--max-tokens", 6000, "--out", work / "cache", "--no-progress").ok()
    saesteer("train", "--cache", work / "cache", "--out", work / "run", "--architecture", ",".join(ARCHS),
             "--d-sae", 128, "--k", 4, "--total-tokens", 4096, "--batch-size", 256, "--holdout-tokens", 512,
             "--normalize-activations", "true", "--jumprelu-init-threshold", 0.05, "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0,
             "--model-eval", "false", "--no-progress").ok()
    return model, work


def cache_rows(cache) -> torch.Tensor:
    import json

    from training.shards import load_tensors

    man = json.loads((cache / "manifest.json").read_text())
    return load_tensors(cache / man["shards"][0]["file"])["acts/blocks.1.hook_resid_post"][:512].float()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_a_trained_sae_loads_in_saelens_with_its_scale_folded(trained, arch):
    from sae_lens import SAE as SaeLensSAE

    import saes
    from saes.io import read_provenance

    model, work = trained
    folder = work / "run" / "saes" / ARCHS[arch]
    prov = read_provenance(folder)
    assert prov["activation_scale_folded"] and abs(prov["activation_scale"] - 1) > 0.05  # a scale that matters
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SAELens warns to load the model without processing: that is the point
        sl = SaeLensSAE.load_from_disk(str(folder))
    assert sl.cfg.normalize_activations == "none"
    assert sl.cfg.metadata.hook_name == "blocks.1.hook_resid_post" and sl.cfg.metadata.model_name == str(model)
    assert sl.cfg.metadata.model_from_pretrained_kwargs == {
        "fold_ln": False, "center_writing_weights": False, "center_unembed": False, "fold_value_biases": False}
    sae = saes.load_sae(folder)
    x = cache_rows(work / "cache")  # raw activations, as SAELens users hook them
    latents = sae.encode(x)
    assert (latents > 0).sum(-1).float().mean() > 1
    torch.testing.assert_close(sl.encode(x), latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sl(x), sae(x).recon, rtol=1e-5, atol=1e-5)


def test_a_store_recognises_the_sae_saelens_saved_again_and_refuses_another(trained, tmp_path):
    from sae_lens import SAE as SaeLensSAE

    import saes
    from features import FeatureStore
    from features.store import StoreMismatchError
    from helpers.real_cli import saesteer

    _, work = trained
    folder = work / "run" / "saes" / ARCHS["matryoshka"]
    saesteer("features", "build", "--sae", folder, "--cache", work / "cache", "--out", tmp_path / "s.db",
             "--no-progress").ok()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SaeLensSAE.load_from_disk(str(folder)).save_model(str(tmp_path / "resaved"))
        resaved = saes.load_sae(tmp_path / "resaved")
    with FeatureStore.open(tmp_path / "s.db") as store:
        store.check_sae(resaved)  # the same SAE: its Matryoshka form and weights came back
        other = saes.load_sae(work / "run" / "saes" / ARCHS["batchtopk"])
        with pytest.raises(StoreMismatchError, match=r"built from another SAE \(fingerprint \w+, matryoshka_batchtopk "
                                                     r".*the SAE given has fingerprint"):
            store.check_sae(other)
