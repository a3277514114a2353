"""Model identity as data (`saes.identity`): records, comparison, refusal messages, older records,
resolving a record back into a model, the Python-API checks, and the web page's prompt pre-fill.
The CLI chain on real local models is in test_identity_cli.py."""

from __future__ import annotations

import re
import shutil
import types

import pytest

from saes.identity import (
    ModelIdentity,
    ModelIdentityError,
    ModelMismatchError,
    attach_identity,
    check_same_model,
    identity_of_sae,
    recorded_model_of,
    same_model,
)

H_A = "a" * 64
H_B = "b" * 64


def local(path="/m/a", digest=H_A, d_model=32, name="a"):
    return ModelIdentity("local", name, path=path, weights_sha256=digest, d_model=d_model, n_layers=2, d_vocab=300)


def test_record_round_trips_and_resolves_to_a_load_spec():
    a = local()
    rec = a.to_json()
    assert rec["id"] == f"local:a#sha256:{H_A[:16]}" and rec["path"] == "/m/a" and rec["weights_sha256"] == H_A
    assert ModelIdentity.from_json(rec) == a
    assert a.load_spec() == "/m/a" and a.saelens_model_name == "/m/a"
    hub = ModelIdentity("hub", "EleutherAI/pythia-70m", revision="abc1234def")
    assert hub.load_spec() == "EleutherAI/pythia-70m@abc1234def" and hub.saelens_model_name == "EleutherAI/pythia-70m"
    assert ModelIdentity("toy", "toyworld-tiny").load_spec() == "toy"
    assert ModelIdentity("toy", "toyworld-tiny", path="/t").load_spec() == "toy:/t"
    assert ModelIdentity("object", "x").load_spec() is None
    with pytest.raises(ModelIdentityError, match="source"):
        ModelIdentity.from_json({"source": "nope", "name": "x"})


def test_older_records_parse_from_their_id():
    old = ModelIdentity.from_id(f"local:tiny#sha256:{H_A[:16]}")
    assert (old.source, old.name, old.path, old.weights_sha256) == ("local", "tiny", None, H_A[:16])
    assert old.load_spec() is None  # older versions did not record the directory
    assert same_model(old, local(name="tiny")) and not same_model(old, local(digest=H_B))
    toy = ModelIdentity.from_id("toy:toyworld-tiny#sha256:65364862fd4c98ee")
    assert toy.load_spec() == "toy"
    hub = ModelIdentity.from_id("hub:gpt2@607a30d783dfa663caf39e06633721c8d4cfcd7e")
    assert hub.load_spec() == "gpt2@607a30d783dfa663caf39e06633721c8d4cfcd7e"
    for not_an_id in ("gpt2-small", "tiny-test-model", "", None, "hub:"):
        assert ModelIdentity.from_id(not_an_id) is None


def test_same_model_rules():
    assert same_model(local(), local(path="/elsewhere"))  # the same files copied elsewhere
    assert not same_model(local(), local(digest=H_B))
    assert not same_model(local(), local(d_model=64))
    assert not same_model(local(), ModelIdentity("toy", "toyworld-tiny", weights_sha256=H_B))
    assert not same_model(ModelIdentity("toy", "toyworld-tiny", weights_sha256=H_A),
                          ModelIdentity("toy", "toyworld-tiny", weights_sha256=H_B))
    g1 = ModelIdentity("hub", "gpt2", revision="607a30d783dfa663caf39e06633721c8d4cfcd7e")
    assert same_model(g1, ModelIdentity("hub", "gpt2", revision="607a30d"))  # a short commit
    assert same_model(g1, ModelIdentity("hub", "gpt2"))  # revision unknown on one side
    assert not same_model(g1, ModelIdentity("hub", "gpt2", revision="11c5a3d5811f50298f278a704980280950aedb10"))
    assert not same_model(g1, ModelIdentity("hub", "distilgpt2", revision=g1.revision))
    # a record from before hub commits were resolved holds the branch or tag asked for ('@step3000'):
    # re-loading it now records a commit, which that name cannot be compared with
    assert same_model(ModelIdentity("hub", "gpt2", revision="step3000"), g1)
    assert same_model(g1, ModelIdentity("hub", "gpt2", revision="main"))
    assert not same_model(ModelIdentity("hub", "gpt2", revision="main"), ModelIdentity("hub", "gpt2", revision="v2"))
    assert not same_model(g1, local())
    assert not same_model(local(digest="sampled-" + H_A), local(digest=H_A))


def test_a_mismatch_names_both_models_and_the_override():
    with pytest.raises(ModelMismatchError) as e:
        check_same_model(local(), local(path="/m/b", digest=H_B, name="b"), recorded_in="the cache c",
                         given_as="--model /m/b", override="--allow-model-mismatch")
    msg = str(e.value)
    assert f"local:a#sha256:{H_A[:16]} at /m/a" in msg and f"local:b#sha256:{H_B[:16]} at /m/b" in msg
    assert "the cache c" in msg and "--model /m/b" in msg and "--allow-model-mismatch" in msg
    with pytest.raises(ModelMismatchError, match=r"files in /m/a changed since the cache c was made .*--allow-model"):
        check_same_model(local(), local(digest=H_B), recorded_in="the cache c", given_as="x", override="--allow-model-mismatch")
    check_same_model(None, local(), recorded_in="x", given_as="y", override="z")  # nothing recorded: nothing to refuse
    check_same_model(local(), None, recorded_in="x", given_as="y", override="z")


def test_sae_identity_from_provenance_new_and_old():
    sae = types.SimpleNamespace(provenance={"model_identity": local().to_json(), "model": "ignored"})
    assert identity_of_sae(sae) == local()
    old = types.SimpleNamespace(provenance={"model": "hub:gpt2", "data": {"model_revision": "607a30d"}})
    assert identity_of_sae(old) == ModelIdentity("hub", "gpt2", revision="607a30d")
    assert identity_of_sae(types.SimpleNamespace(provenance={})) is None
    assert identity_of_sae(types.SimpleNamespace()) is None  # e.g. an SAE SAELens made
    assert identity_of_sae({"model_identity": local().to_json()}) == local()  # the provenance dict itself


def test_loaders_return_provenance_beside_the_sae_never_on_it(tmp_path):
    """The identity check reads the provenance that comes back beside the SAE (`LoadedSAE`); the
    SAE module itself carries none."""
    import torch

    import saes
    from saes.formats import resolve_sae

    sae = saes.create_sae("topk", 8, 16, k=2, generator=torch.Generator().manual_seed(0),
                          metadata={"hook_name": "blocks.0.hook_resid_post"})
    saes.save_sae(sae, tmp_path / "s", provenance={"model_identity": local().to_json()})
    loaded = resolve_sae(tmp_path / "s")
    assert identity_of_sae(loaded) == local()
    for bare in (loaded.sae, saes.load_sae(tmp_path / "s")):
        assert not hasattr(bare, "provenance")
        with pytest.raises(TypeError, match="pass the LoadedSAE"):  # never a silent "no record"
            identity_of_sae(bare)
        assert recorded_model_of(bare) is None  # Python APIs that take a bare SAE: nothing to check
    assert saes.read_provenance(tmp_path / "s") == {"model_identity": local().to_json()}


# ------------------------------------------------------------------------------------ resolving
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from helpers.tiny_hf import save_tiny_gpt2

    return save_tiny_gpt2(tmp_path_factory.mktemp("m") / "tiny-gpt2")


def test_load_model_attaches_an_absolute_re_loadable_identity(tiny_dir, monkeypatch, tmp_path):
    from saes.identity import identity_of_model
    from saesteer.models import load_model, load_recorded_model, local_weights_sha256

    monkeypatch.chdir(tiny_dir.parent)
    model = load_model("./tiny-gpt2", device="cpu")
    ident = identity_of_model(model)
    assert ident.source == "local" and ident.path == str(tiny_dir.resolve())
    assert ident.weights_sha256 == local_weights_sha256(tiny_dir) and ident.d_model == 32
    monkeypatch.chdir(tmp_path)  # elsewhere: the record alone finds the model again
    again = load_recorded_model(ident, None, recorded_in="the cache c", device="cpu")
    assert identity_of_model(again) == ident


def test_a_moved_or_changed_local_model_is_named(tiny_dir, tmp_path):
    from helpers.tiny_hf import save_tiny_gpt2
    from saesteer.models import load_model, load_recorded_model, model_identity

    ident = model_identity(load_model(str(tiny_dir), device="cpu"))
    gone = ModelIdentity.from_json({**ident.to_json(), "path": str(tmp_path / "moved-away")})
    with pytest.raises(ModelIdentityError, match=r"moved-away no longer exists .*pass --model DIR"):
        load_recorded_model(gone, None, recorded_in="the cache c", device="cpu")
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    recorded = ModelIdentity.from_json({**ident.to_json(), "path": str(copy)})
    assert model_identity(load_recorded_model(recorded, None, recorded_in="the cache c", device="cpu")).path == str(copy)
    save_tiny_gpt2(copy, seed=5)  # new weights in the same place
    with pytest.raises(ModelMismatchError, match=r"model files in .*copy changed since the cache c was made"):
        load_recorded_model(recorded, None, recorded_in="the cache c", device="cpu")
    old_local = ModelIdentity.from_id(ident.id)
    with pytest.raises(ModelIdentityError, match="without its directory .*pass --model"):
        load_recorded_model(old_local, None, recorded_in="the store s", device="cpu")
    with pytest.raises(ModelIdentityError, match="does not record which model"):
        load_recorded_model(None, None, recorded_in="the SAE x", device="cpu")


# ------------------------------------------------------------------------------------ Python API
def test_steering_and_features_refuse_an_sae_of_another_model():
    """An SAE whose saesteer.json names model A, given model B: steer / compare / sweep / contrast /
    features_on_text refuse it naming both, and allow_model_mismatch=True lets it through."""
    from helpers.steering_fixtures import random_sae, tiny_model

    from features.text import features_on_text
    from steering import SweepConfig, compare, contrast_features, steer, sweep
    from steering.evaluate import SampleScores

    from saes.formats import LoadedSAE

    model = tiny_model()
    record = {"model_identity": ModelIdentity("object", "model-a", weights_sha256=H_A).to_json()}
    sae = LoadedSAE(random_sae(model, "topk"), record, "test", "test")  # the SAE beside its provenance
    b = ModelIdentity("object", "model-b", weights_sha256=H_B)
    runs = {
        "steer": lambda allow: steer(model, sae, ["3:add=2"], allow_model_mismatch=allow).__enter__(),
        "compare": lambda allow: compare(model, sae, ["3:add=2"], ["the sea"], max_new_tokens=2,
                                         allow_model_mismatch=allow),
        "sweep": lambda allow: sweep(model, sae, 3, ["the sea"], lambda p, c: [SampleScores(0.0, 1.0) for _ in c],
                                     SweepConfig(strengths=[0.0, 1.0], unit="raw", perplexity=False), allow_model_mismatch=allow),
        "contrast": lambda allow: contrast_features(model, sae, ["the sea"], ["a tree"], allow_model_mismatch=allow),
        "features_on_text": lambda allow: features_on_text(model, sae, "the sea", allow_model_mismatch=allow),
    }
    from saes.identity import MODEL_ATTR

    try:
        attach_identity(model, b)
        for name, run in runs.items():
            with pytest.raises(ModelMismatchError) as e:
                run(False)
            msg = str(e.value)
            assert "model-a" in msg and "model-b" in msg and "allow_model_mismatch=True" in msg, (name, msg)
        for name, run in runs.items():
            if name != "steer":
                run(True)
        with steer(model, sae, ["3:add=2"], allow_model_mismatch=True):
            pass
        attach_identity(model, ModelIdentity("object", "model-a", weights_sha256=H_A))
        compare(model, sae, ["3:add=2"], ["the sea"], max_new_tokens=2)  # the right model passes
    finally:
        delattr(model, MODEL_ATTR)  # the model is shared with other tests
    compare(model, sae, ["3:add=2"], ["the sea"], max_new_tokens=2)  # a model without identity: not checked


def test_build_feature_store_refuses_an_sae_of_another_cache_model():
    from helpers.steering_fixtures import random_sae, tiny_model

    from features.checks import check_models

    from saes.formats import LoadedSAE

    sae = LoadedSAE(random_sae(tiny_model(), "topk"), {"model_identity": local().to_json()}, "test", "test")
    source = types.SimpleNamespace(path="caches/b", recorded_model=lambda: local(path="/m/b", digest=H_B, name="b"))
    with pytest.raises(ModelMismatchError, match=r"activation cache caches/b was made with model local:b.*SAE's model"):
        check_models(sae, source)
    assert check_models(sae, source, allow_mismatch=True).name == "b"  # the store records the cache's model
    same = types.SimpleNamespace(path="caches/a", recorded_model=lambda: local(path="/m/a2"))
    assert check_models(sae, same).path == "/m/a2"


# ------------------------------------------------------------------------------------ web page
def _prefill(html: str) -> str:
    return re.search(r'<textarea id="prompt"[^>]*>(.*?)</textarea>', html, re.S).group(1)


def test_steering_page_prefills_the_toy_prompt_only_for_the_toy_model():
    from helpers.web_app import client, make_app, shared_store

    from features import FeatureStore
    from saesteer.web import Limits, ModelQueue, ServeConfig, StoreEntry, create_app
    from saesteer.web.model_source import TOY_EXAMPLE_PROMPT, ModelEngine
    from saesteer.web.store_source import StoreCatalog

    ws = shared_store()
    html = client(make_app()).get("/s/tiny/steer").text  # a model that is not the toy model
    assert _prefill(html) == ""
    toy = types.SimpleNamespace(cfg=ws.model.cfg)
    attach_identity(toy, ModelIdentity("toy", "toyworld-tiny", weights_sha256=H_A))
    limits = Limits()
    cat = StoreCatalog(FeatureStore.open(ws.path), name="toy")
    entry = StoreEntry("toy", cat, ModelEngine(toy, ws.sae, cat, limits), ModelQueue("toy", limits.max_pending))
    app = create_app([entry], config=ServeConfig(port=8000), limits=limits)
    assert _prefill(client(app).get("/s/toy/steer").text) == TOY_EXAMPLE_PROMPT == "the sailor"


def test_model_names_are_one_model_by_official_name_or_the_hubs_moved_canonical_copy():
    """A SAELens cfg's 'gpt2-small' is the hub's 'gpt2', and 'openai-community/gpt2' is where the hub
    moved it; any other organisation's 'gpt2' is a fine-tune, another model (it was taken as gpt2
    when the organisation was simply dropped)."""
    from saes.identity import same_model_name

    assert same_model_name("gpt2-small", "gpt2")
    assert same_model_name("gpt2", "openai-community/gpt2") and same_model_name("openai-community/gpt2", "gpt2-small")
    assert same_model_name("pythia-70m-deduped", "EleutherAI/pythia-70m-deduped")
    assert not same_model_name("someorg/gpt2", "gpt2-small")
    assert not same_model_name("someorg/gpt2", "openai-community/gpt2")
    assert not same_model_name("gpt2-small", "EleutherAI/pythia-70m-deduped")


def test_the_web_engine_feeds_a_doc_policy_saes_prompts_after_bos(tmp_path):
    """`saesteer serve` with an SAE trained with `--bos-policy doc` (cfg.json prepend_bos=false):
    the firing page and the steered generations read prompts after BOS, as `steer` does; the
    engine only had the bare SAE, whose cfg.json says no BOS."""
    import copy

    import saes
    from helpers.web_app import shared_store
    from saesteer.web.launch import open_entries

    ws = shared_store()
    sae = copy.deepcopy(ws.sae)  # the shared store's SAE, recorded as trained without a BOS per context
    sae.cfg.metadata["prepend_bos"] = False
    found = {}
    for policy in ("doc", "none"):
        saes.save_sae(sae, tmp_path / policy, provenance={"tool": "saesteer", "data": {"bos_policy": policy}})
        entry, = open_entries([ws.path], model=ws.model, sae_dirs=[tmp_path / policy], allow_model_mismatch=True)
        req = types.SimpleNamespace(max_new_tokens=2, temperature=0.0, seed=0)
        found[policy] = (entry.engine.prepend_bos(), entry.engine._gen_config(req).prepend_bos,
                         entry.engine.fire("the sailor sees a whale", 3))
    assert found["doc"][:2] == (True, True) and found["none"][:2] == (False, False)
    doc, none = found["doc"][2], found["none"][2]
    assert [t.strip() for t in doc.tokens] == [t.strip() for t in none.tokens]  # the text's (BOS is not shown)
    assert doc.per_token != none.per_token  # read after BOS: other activations


def test_the_web_sweeps_scorer_reads_a_doc_policy_saes_continuations_after_bos(tmp_path, monkeypatch):
    """The sweep page's firing scorer reads each continuation, a text on its own, after BOS for a
    'doc' SAE, as the firing page reads a text (it took the bare SAE's cfg.json: no BOS)."""
    import copy

    import saes
    import steering.activations
    from helpers.web_app import shared_store
    from saesteer.web.launch import open_entries
    from saesteer.web.schemas import Edit, SweepRequest

    ws = shared_store()
    sae = copy.deepcopy(ws.sae)
    sae.cfg.metadata["prepend_bos"] = False
    saes.save_sae(sae, tmp_path / "doc", provenance={"tool": "saesteer", "data": {"bos_policy": "doc"}})
    entry, = open_entries([ws.path], model=ws.model, sae_dirs=[tmp_path / "doc"], allow_model_mismatch=True)
    seen = []
    real = steering.activations.mean_latent_activation

    def spy(*a, prepend_bos=None, **kw):
        seen.append(prepend_bos)
        return real(*a, prepend_bos=prepend_bos, **kw)

    monkeypatch.setattr(steering.activations, "mean_latent_activation", spy)
    entry.engine.sweep(SweepRequest(prompt="the sea", edit=Edit(latent=3, op="add", value=1.0), values=[0.0, 4.0],
                                    max_new_tokens=3, temperature=0.0, seed=0))
    assert seen and set(seen) == {True}
