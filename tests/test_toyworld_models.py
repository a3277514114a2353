"""Model resolution in the face: 'toy', a local HF checkpoint (offline) and hub names take the
documented paths; identity helpers for cache manifests."""

import pytest
import torch

from helpers.tiny_hf import hf_logits, save_tiny_gpt2
from saesteer import models
from saesteer.models import check_hook_names, load_model, model_identity, model_id, resolve_spec


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_gpt2(tmp_path_factory.mktemp("ckpt") / "tiny-gpt2")


def _offline(mp):
    """HF offline mode, also for libraries that read the environment only at import time."""
    import huggingface_hub.constants

    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    mp = pytest.MonkeyPatch()
    _offline(mp)
    try:
        yield load_model(str(tiny_dir), device="cpu")
    finally:
        mp.undo()


def test_local_checkpoint_loads_offline_and_matches_hf(tiny, tiny_dir):
    from transformer_lens.model_bridge import TransformerBridge

    assert isinstance(tiny, TransformerBridge)
    toks = tiny.to_tokens("anna saw two red boats .")
    assert toks[0, 0].item() == tiny.tokenizer.bos_token_id
    seen = {}

    def grab(x, hook):
        seen["resid"] = x.detach().clone()
        return x

    logits = tiny.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_resid_post", grab)])
    assert seen["resid"].shape == (1, toks.shape[1], 32)
    assert logits.shape == (1, toks.shape[1], tiny.cfg.d_vocab)
    assert torch.allclose(logits, hf_logits(tiny_dir, toks), atol=1e-4)
    # the rest of the interface downstream code relies on
    _, cache = tiny.run_with_cache(toks, names_filter=["blocks.0.hook_resid_post"])
    assert torch.allclose(tiny(toks, stop_at_layer=1), cache["blocks.0.hook_resid_post"], atol=1e-5)
    # unlike HookedTransformer, stop_at_layer=n_layers runs the whole model (documented in saesteer.models)
    assert tiny(toks, stop_at_layer=2).shape[-1] == tiny.cfg.d_vocab
    with tiny.hooks(fwd_hooks=[("blocks.0.hook_resid_post", grab)]):
        tiny(toks)
    assert tiny.cfg.d_model == 32 and tiny.cfg.n_ctx == 64 and tiny.W_U.shape == (32, tiny.cfg.d_vocab)
    assert "blocks.0.hook_resid_post" in tiny.hook_dict
    out = tiny.generate(toks, max_new_tokens=4, use_past_kv_cache=True, verbose=False)
    assert out.shape == (1, toks.shape[1] + 4)
    assert isinstance(tiny.to_string(out[0]), str)


def test_bridge_hook_name_alias_and_silent_unknown_hooks(tiny):
    """Documented in saesteer.models: hooks fire under canonical names; unknown names are ignored by
    the Bridge, so check_hook_names exists."""
    names = []
    toks = tiny.to_tokens("the crab")
    tiny.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: names.append(hook.name))])
    assert names == ["blocks.0.hook_out"]
    check_hook_names(tiny, ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"])
    with pytest.raises(ValueError, match="blocks.0.hook_resid_post"):
        check_hook_names(tiny, "blocks.0.hook_resid_psot")


def test_hub_name_and_local_dir_share_one_loader(monkeypatch, tiny_dir):
    calls = []

    def fake_boot(name_or_path, revision, device, dtype, spec):
        calls.append((name_or_path, revision))
        raise OSError("no network in tests")

    monkeypatch.setattr(models, "_boot_hf", fake_boot)
    for spec in ("gpt2", "EleutherAI/pythia-70m@step3000", str(tiny_dir)):
        with pytest.raises(OSError):
            load_model(spec, device="cpu")
    assert calls == [("gpt2", None), ("EleutherAI/pythia-70m", "step3000"), (str(tiny_dir.resolve()), None)]


def test_hub_name_offline_gives_a_clear_error(monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(OSError, match="HF_HUB_OFFLINE"):
        load_model("saesteer-test/definitely-not-cached", device="cpu")


def test_a_hub_load_failure_is_one_line(monkeypatch):
    """HF's offline miss goes on for lines ("Check your internet connection or see ..."): the error
    the CLI prints keeps its first line, and says once what to do."""
    from transformer_lens.model_bridge import TransformerBridge

    def boot(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\n"
                      "Check your internet connection or see how to run the library in offline mode.")

    monkeypatch.setattr(TransformerBridge, "boot_transformers", boot)
    with pytest.raises(OSError) as err:
        models._boot_hf("saesteer-test/not-here", None, "cpu", None, "saesteer-test/not-here")
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and "couldn't connect" in msg and "Check your internet" not in msg
    assert ".." not in msg and "Use 'toy'" in msg


def test_resolve_spec_errors(tmp_path):
    assert resolve_spec("toy").source == "toy"
    assert resolve_spec("gpt2").source == "hub"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_spec(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_spec(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        resolve_spec(f"toy:{tmp_path / 'empty'}")
    with pytest.raises(ValueError, match="non-empty"):
        resolve_spec("  ")
    with pytest.raises(ValueError, match="dtype"):
        load_model("toy", dtype="float8")


def test_toy_spec_and_identity(tiny):
    from transformer_lens import HookedTransformer

    import toyworld

    toy = load_model("toy", device="cpu", dtype="float32")
    assert isinstance(toy, HookedTransformer) and toy.tokenizer.bos_token == "<bos>"
    fp = model_identity(toy)
    assert fp.source == "toy" and fp.weights_sha256 == toyworld.weights_sha256()
    assert model_id(toy).startswith("toy:toyworld-tiny#sha256:")
    assert model_id(toy) == model_id(load_model("toy", device="cpu"))
    with pytest.raises(ValueError, match="unknown hook"):
        check_hook_names(toy, ["blocks.9.hook_resid_post"])
    local = model_identity(tiny)
    assert local.source == "local" and local.name == "tiny-gpt2" and len(local.weights_sha256) == 64
    assert (local.d_model, local.n_layers) == (32, 2)
    # a model built elsewhere is identified by its parameters
    other = toyworld.load_model(device="cpu")
    assert model_identity(other).source == "object"
    assert model_id(other) == model_id(toyworld.load_model(device="cpu"))


def test_a_hub_model_records_the_commit_it_loaded_offline(tmp_path, monkeypatch, tiny_dir):
    """A hub name read from the local HF cache (HF_HUB_OFFLINE) records the commit refs/main points
    to, and name@commit loads and records that commit: the record pins the weights, so a later
    command given the other commit is refused."""
    from huggingface_hub import constants

    from helpers.foreign_saes import write_hf_snapshot
    from saes.identity import ModelMismatchError, check_same_model

    files = {p.name: p for p in tiny_dir.iterdir() if p.is_file()}
    old, new = "1" * 40, "2" * 40
    write_hf_snapshot(tmp_path / "hub", "someone/tiny-gpt2", files, revision=old)
    write_hf_snapshot(tmp_path / "hub", "someone/tiny-gpt2", files, revision=new)  # refs/main -> new
    _offline(monkeypatch)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    latest = model_identity(load_model("someone/tiny-gpt2", device="cpu"))
    pinned = model_identity(load_model(f"someone/tiny-gpt2@{old}", device="cpu"))
    assert (latest.source, latest.name, latest.revision) == ("hub", "someone/tiny-gpt2", new)
    assert pinned.revision == old
    assert latest.load_spec() == f"someone/tiny-gpt2@{new}"
    with pytest.raises(ModelMismatchError, match=old):
        check_same_model(pinned, latest, recorded_in="the cache", given_as="--model someone/tiny-gpt2",
                         override="--allow-model-mismatch", fix="")


def test_a_full_commit_is_its_own_hub_revision_without_asking_the_hub(monkeypatch):
    """`NAME@<40-hex commit>` is pinned already: hub_commit returns it without a hub request (online,
    hf_hub_download would ask the hub for config.json)."""
    import huggingface_hub

    from saesteer.models import hub_commit

    def no_hub(*a, **kw):
        raise AssertionError("asked the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    assert hub_commit("org/model", "a" * 40) == "a" * 40
    assert hub_commit("org/model", "main") is None  # a branch is resolved (here: cannot be)
