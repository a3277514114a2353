"""A `--bos-policy doc` SAE fed through the Python API as the CLI feeds it: prompts after BOS, whether
the caller holds the `LoadedSAE` (`resolve_sae`) or the bare SAE (`saes.load_sae`), while cfg.json
keeps SAELens's meaning (prepend_bos=false: its contexts are plain slices of the stream)."""

import json

import pytest
import torch

import saes
import steering
from helpers.steering_fixtures import random_sae, tiny_model, torch_threads  # noqa: F401
from saes.formats import resolve_sae


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture
def folders(model, tmp_path):
    sae = random_sae(model, "topk")
    sae.cfg.metadata["prepend_bos"] = False
    for policy in ("doc", "none"):  # as `saesteer train` records a cache's policy
        saes.save_sae(sae, tmp_path / policy, provenance={"tool": "saesteer", "data": {"bos_policy": policy}})
    return tmp_path


def _first_prompt_token(model, monkeypatch, sae):
    """The first token of the prompt `steering.compare` generates from (both passes)."""
    import steering.generation

    seen = []
    real = steering.generation._tokenize

    def spy(model, prompts, prepend_bos, *rest):
        tokens = real(model, prompts, prepend_bos, *rest)
        seen.append(int(tokens[0, 0]))
        return tokens

    monkeypatch.setattr(steering.generation, "_tokenize", spy)
    steering.compare(model, sae, ["3:add=4"], ["the sea"], max_new_tokens=1, do_sample=False)
    assert len(set(seen)) == 1, seen
    return seen[0]


@pytest.mark.parametrize("load", ["resolve_sae", "load_sae"])
def test_compare_feeds_a_doc_policy_saes_prompts_after_bos(model, folders, monkeypatch, load):
    """steering.compare with a 'doc'-policy SAE, loaded either way: the prompt starts with BOS (the
    API read only cfg.json's prepend_bos=false and fed it none; the CLI gave it one)."""
    bos = model.tokenizer.bos_token_id
    read = resolve_sae if load == "resolve_sae" else saes.load_sae
    assert _first_prompt_token(model, monkeypatch, read(str(folders / "doc"))) == bos
    assert _first_prompt_token(model, monkeypatch, read(str(folders / "none"))) != bos


def test_the_policy_rides_on_the_object_never_into_cfg_json(model, folders, tmp_path):
    """The policy a loaded SAE carries is not written back: re-saving it leaves cfg.json's
    prepend_bos false and adds nothing SAELens would read; its latents read a prompt after BOS
    (mean_latent_activation, as `steer --contrast` and the web app's firing scorer read it)."""
    from steering.activations import mean_latent_activation

    sae = saes.load_sae(folders / "doc")
    assert sae.trained_bos_policy == "doc"
    saes.save_sae(sae, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "cfg.json").read_text()) == json.loads((folders / "doc" / "cfg.json").read_text())
    with torch.no_grad():
        got = mean_latent_activation(model, sae, ["the sea"])[0]
        after_bos = mean_latent_activation(model, sae, ["the sea"], prepend_bos=True)[0]
        without = mean_latent_activation(model, sae, ["the sea"], prepend_bos=False)[0]
    assert torch.equal(got, after_bos) and not torch.equal(got, without)


def test_a_doc_policy_saes_prompt_written_with_its_bos_gets_no_second(model, folders, monkeypatch):
    """A chat template rendered to text writes BOS itself: a 'doc'-policy SAE's prompt that starts
    with it is read as written, one BOS (`saes.bos.prompt_tokens`), not BOS BOS."""
    import steering.generation

    bos = model.tokenizer.bos_token_id
    seen = []
    real = steering.generation._tokenize
    monkeypatch.setattr(steering.generation, "_tokenize",
                        lambda m, p, b, *rest: seen.append(real(m, p, b, *rest)[0].tolist()) or real(m, p, b, *rest))
    steering.compare(model, saes.load_sae(folders / "doc"), ["3:add=4"], [model.tokenizer.bos_token + "the sea"],
                     max_new_tokens=1, do_sample=False)
    assert seen and all(row[0] == bos and row[1] != bos for row in seen)


def test_a_doc_policy_sae_beside_one_trained_without_bos_is_a_disagreement(model, folders):
    """Two SAEs that want a prompt fed differently (a 'doc' one after BOS, a 'none' one without) get
    the model's default, as two SAEs whose cfg.json disagree do; the 'doc' one did not win alone."""
    from saes.bos import prepend_bos_for

    doc, none = saes.load_sae(folders / "doc"), saes.load_sae(folders / "none")
    for default in (True, False):
        stub = type("Model", (), {"cfg": type("Cfg", (), {"default_prepend_bos": default})()})()
        assert prepend_bos_for(stub, [doc, none]) is default
        assert prepend_bos_for(stub, [doc, doc]) is True and prepend_bos_for(stub, [none]) is False


def test_compare_methods_generates_every_method_with_the_saes_bos(model, folders, monkeypatch):
    """`steering.methods.compare_methods` (what `steer-eval` runs): the dev sweeps and the test
    generations of every method read the prompts with one BOS, the SAE's (cfg.json prepend_bos=false
    here, on a model that prepends one by default). The sweeps took the SAE's, the test generations
    the model's: a method was picked on one tokenization and scored on another."""
    import steering.generation
    from steering import CompareConfig, GenerationConfig
    from steering.evaluate import SampleScores
    from steering.methods import compare_methods

    assert model.cfg.default_prepend_bos is True
    seen = set()
    real = steering.generation._tokenize

    def spy(model, prompts, prepend_bos, *rest):
        seen.add(int(real(model, prompts, prepend_bos, *rest)[0, 0]) == model.tokenizer.bos_token_id)
        return real(model, prompts, prepend_bos, *rest)

    monkeypatch.setattr(steering.generation, "_tokenize", spy)
    card = compare_methods(model, saes.load_sae(folders / "none"), lambda ps, cs: [SampleScores(0.5) for _ in cs],
                           prompts=["the sea"], latents=[3], typical_max=lambda latent: 1.0, with_perplexity=False,
                           config=CompareConfig(candidates=1, sae_strengths=[2.0]),
                           gen_config=GenerationConfig(max_new_tokens=2, do_sample=False, stop_at_eos=False))
    assert [r.method for r in card.rows] == ["unsteered", "SAE feature"]
    assert seen == {False}  # no prompt of any pass started with BOS

