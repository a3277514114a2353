"""Review of the foreign-SAE merge: which hook an HF module's output is, asked in one place
(`saes.formats.base.module_output_hook`), and one reading of registry SAE folders.

- A sparsify SAE of a Granite MLP (`layers.1.mlp`): Granite's blocks scale each sublayer's output by
  `residual_multiplier` before the residual add, and the Bridge's `hook_mlp_out` there is a hook of the
  block's own on that scaled tensor (no alias). It was read there, every input scaled, with a note saying
  the model's config was not on this machine; now `blocks.N.mlp.hook_out`, what sparsify's forward hook read.
- The model's config is read from the hub when HF is not offline, as loading the model would (it was read
  from the cache only: a first run read hook_mlp_out on Gemma 2 with a note), and from `--model` where the
  run's recorded model is not at hand.
- `check_hook`'s hint for an HF module name (`model.layers.1.mlp`) and delphi's module check name the
  module's output as the model's Bridge does (they said `blocks.N.hook_mlp_out` on Gemma 2/3, OLMo 2, Granite).
- `saes.load_sae` of a registry SAE's folder (`expected_average_only_in`, no activation_scaler.json) folds
  the registry's factor as `resolve_sae` does (it read the folder as the identity), and refuses a copy.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from helpers import foreign_saes as fs
from helpers.forwards import read_at_hook

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

TEXT = "Le caf\u00e9 ouvre \u00e0 sept heures.\ndef parse(args):\n    return args  # \u6771\u4eac\u306e\u5929\u6c17"
MLP_OUT, MODULE_OUT = "blocks.1.hook_mlp_out", "blocks.1.mlp.hook_out"


@pytest.fixture(scope="module")
def tok(real_corpus):
    from helpers.real_models import build_family_tokenizer

    return build_family_tokenizer("llama", real_corpus.train_docs)


@pytest.fixture(scope="module")
def granite(tok, tmp_path_factory):
    from helpers.real_models import save_arch_model

    return save_arch_model(tmp_path_factory.mktemp("granite") / "granite", "granite", tok)


@pytest.fixture(scope="module")
def gemma2(real_corpus, tmp_path_factory):
    from helpers.real_models import build_family_tokenizer, save_arch_model

    gemma_tok = build_family_tokenizer("gemma", real_corpus.train_docs)
    return save_arch_model(tmp_path_factory.mktemp("gemma-2") / "gemma-2", "gemma2", gemma_tok)


def _sparsify_mlp_sae(folder, model: str):
    state, cfg = fs.random_sparsify(64, 128, k=4)
    return fs.write_sparsify(folder / "layers.1.mlp", state, cfg, run_config={"model": model})


def test_a_sparsify_sae_of_granite_s_mlp_reads_the_module_s_output_not_the_scaled_one(granite, tok, tmp_path):
    """sparsify's forward hook on `layers.1.mlp` reads the HF module's output; the hook the SAE is given reads
    that on the Bridge (Granite's hook_mlp_out is it times residual_multiplier)."""
    from transformers import AutoModelForCausalLM

    from saes.formats import resolve_sae
    from saesteer.models import load_model

    hook = resolve_sae(_sparsify_mlp_sae(tmp_path / "run", str(granite))).sae.cfg.metadata["hook_name"]
    assert hook == MODULE_OUT
    tokens = torch.tensor([tok(TEXT)["input_ids"]])
    hf = AutoModelForCausalLM.from_pretrained(granite).eval()
    got = {}
    handle = hf.model.layers[1].mlp.register_forward_hook(lambda m, a, out: got.setdefault("x", out.detach()))
    with torch.no_grad():
        hf(tokens)
    handle.remove()
    bridge = load_model(str(granite), device="cpu")
    torch.testing.assert_close(read_at_hook(bridge, hook, tokens), got["x"], rtol=1e-4, atol=1e-5)
    scaled = read_at_hook(bridge, MLP_OUT, tokens)  # what it was read at
    torch.testing.assert_close(scaled, got["x"] * 0.25, rtol=1e-4, atol=1e-5)

    # what a user typing the HF module's name is told on this model
    from saes.hookpoints import UnknownHookError, check_hook

    with pytest.raises(UnknownHookError, match=r"the output of the HF module model\.layers\.1\.mlp is blocks\.1\.mlp"
                                               r"\.hook_out\."):
        check_hook(bridge, "model.layers.1.mlp")


def test_the_model_config_comes_from_the_hub_when_online_and_from_model_when_the_run_s_is_not_here(
        gemma2, tmp_path, monkeypatch):
    """A first run online (the model not yet cached: the command downloads it after the SAE loads) reads the
    config from the hub, as loading the model does; offline, the user's --model stands in for a recorded
    model that is not on this machine."""
    import transformers
    from huggingface_hub import constants

    from saes.formats import resolve_sae

    far = _sparsify_mlp_sae(tmp_path / "far", "example-org/gemma-2-uncached")
    # offline and nowhere: hook_mlp_out, with the note
    from saes.errors import SaesteerWarning

    with pytest.warns(SaesteerWarning, match=r"cannot tell from example-org/gemma-2-uncached's config.*blocks\.1\.mlp"
                                             r"\.hook_out"):
        assert resolve_sae(far).sae.cfg.metadata["hook_name"] == MLP_OUT
    # offline, --model a local copy of that model: its config decides
    assert resolve_sae(far, model=str(gemma2)).sae.cfg.metadata["hook_name"] == MODULE_OUT

    # online: the hub's config.json, fetched as from_pretrained fetches it (a stand-in hub: no network here)
    hub_config = transformers.AutoConfig.from_pretrained(gemma2)
    real = transformers.AutoConfig.from_pretrained

    def from_pretrained(name, *args, local_files_only=False, **kw):
        if name == "example-org/gemma-2-online":
            if local_files_only:
                raise OSError(f"{name} is not in the cache and local_files_only is set")
            return hub_config
        return real(name, *args, local_files_only=local_files_only, **kw)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    online = _sparsify_mlp_sae(tmp_path / "online", "example-org/gemma-2-online")
    assert resolve_sae(online).sae.cfg.metadata["hook_name"] == MODULE_OUT


def test_check_hook_s_hint_names_gemma_2_s_mlp_output_as_the_bridge_does(gemma2):
    from saes.hookpoints import UnknownHookError, check_hook
    from saesteer.models import load_model

    bridge = load_model(str(gemma2), device="cpu")
    with pytest.raises(UnknownHookError, match=r"model\.layers\.1\.mlp is blocks\.1\.mlp\.hook_out\.") as e:
        check_hook(bridge, "model.layers.1.mlp")
    assert MLP_OUT + "." not in str(e.value).split("Valid hook points")[0]
    with pytest.raises(UnknownHookError, match=r"model\.layers\.1 is blocks\.1\.hook_resid_post\."):
        check_hook(bridge, "model.layers.1")


def test_delphi_s_mlp_module_is_the_module_s_output_on_the_store_s_model(gemma2):
    """delphi names an SAE of Gemma 2's MLP `layers.1.mlp` (sparsify's hookpoint): it reads the module's output,
    blocks.1.mlp.hook_out; a store at hook_mlp_out (post_feedforward_layernorm's output) is another hook."""
    from autointerp.delphi_store import _pick_module, export_delphi_labels

    def store(hook):
        return SimpleNamespace(path="s.db", meta={
            "sae": {"hook_name": hook, "model_name": str(gemma2)},
            "model_identity": {"source": "local", "name": gemma2.name, "path": str(gemma2)}})

    assert _pick_module(["layers.1.mlp"], None, MODULE_OUT, store(MODULE_OUT)) == ("layers.1.mlp", None)
    with pytest.raises(ValueError, match=r"'layers\.1\.mlp' reads blocks\.1\.mlp\.hook_out, but the SAE of s\.db "
                                         r"reads blocks\.1\.hook_mlp_out"):
        _pick_module(["layers.1.mlp"], None, MLP_OUT, store(MLP_OUT))
    with pytest.raises(ValueError, match=r"no usual delphi module name"):
        export_delphi_labels(store(MLP_OUT), "out")
    # a model that does not norm the MLP's output (an older store: its SAE's model name only)
    llama_like = SimpleNamespace(path="l.db", meta={"sae": {"hook_name": MLP_OUT, "model_name": "toy"}})
    assert _pick_module(["layers.1.mlp"], None, MLP_OUT, llama_like) == ("layers.1.mlp", None)


JB_REPO, JB_FOLDER, JB_ID = fs.JB_REPO, fs.JB_FOLDER, fs.JB_ID


def test_load_sae_of_a_registry_folder_folds_the_registry_s_factor_as_resolve_sae_does(tmp_path, monkeypatch):
    """`saes.load_sae` (the notebook's loader, `features` commands') and `resolve_sae` read one folder one way:
    gemma-2b-res-jb's folder (expected_average_only_in, no activation_scaler.json) as SAELens's
    `SAE.from_pretrained` runs it; a copy outside the HF cache, whose factor is nowhere, is refused by both."""
    import shutil

    from huggingface_hub import constants
    from sae_lens import SAE as SaeLensSAE

    from saes import load_sae
    from saes.formats import resolve_sae
    from saes.io import SAEFormatError

    fs.save_unfolded_saelens_sae(tmp_path / "made")
    snap = fs.write_hf_snapshot(tmp_path / "hub", JB_REPO, {
        f"{JB_FOLDER}/{f}": tmp_path / "made" / f for f in ("cfg.json", "sae_weights.safetensors")})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    theirs = SaeLensSAE.from_pretrained(*JB_ID, device="cpu")
    x = torch.randn(32, 16) * 3
    with torch.no_grad():
        for ours in (load_sae(snap / JB_FOLDER), resolve_sae(snap / JB_FOLDER).sae):
            torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=1e-5, atol=1e-5)
    shutil.copytree(snap / JB_FOLDER, tmp_path / "copy")
    for load in (load_sae, resolve_sae):
        with pytest.raises(SAEFormatError, match="expected_average_only_in.*not in an HF-cache snapshot"):
            load(tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / "cfg.json").read_text())["normalize_activations"] == \
        "expected_average_only_in"


# a store built before the merge read a Gemma Scope 2 transcoder at SAELens's blocks.1.hook_mlp_in; its weights'
# fingerprint is the same, so only the hook tells the store from one of the SAE as it is read now
from test_foreign_chain import gemma3, gs2_hub  # noqa: E402,F401 - the fixtures: a tiny Gemma 3, its cache, the SAE


def test_a_store_built_at_the_old_transcoder_hook_is_refused_naming_both_hooks(gemma3, gs2_hub, tmp_path,
                                                                                monkeypatch):
    """`serve` and `steer` on such a store refuse it naming the store's hook and the SAE's, and say to rebuild
    (serve said '--hook says blocks.1.hook_mlp_in', a flag the user never gave)."""
    import sqlite3

    from helpers.real_cli import saesteer
    from helpers.web_app import record_server

    db = tmp_path / "old.db"
    saesteer("features", "build", "--sae", gs2_hub, "--cache", gemma3.cache, "--model", gemma3.model_dir,
             "--out", db, "--no-progress").ok()
    with sqlite3.connect(db) as con:
        (sae_meta,), = con.execute("SELECT value FROM meta WHERE key = 'sae'").fetchall()
        con.execute("UPDATE meta SET value = ? WHERE key = 'sae'",
                    (json.dumps({**json.loads(sae_meta), "hook_name": "blocks.1.hook_mlp_in"}),))
    calls = record_server(monkeypatch)
    r = saesteer("serve", "--store", db, "--model", gemma3.model_dir, "--port", 0)
    assert r.rc != 0 and not calls and "Traceback" not in r.err
    assert "blocks.1.hook_mlp_in" in r.err and "blocks.1.mlp.hook_in" in r.err and "--hook says" not in r.err, r.err
    r = saesteer("steer", "--sae", gs2_hub, "--store", db, "--model", gemma3.model_dir, "--latent", "3:add=4",
                 "--prompt", "def parse(", "--max-new-tokens", 2)
    assert r.rc != 0 and "blocks.1.hook_mlp_in" in r.err and "blocks.1.mlp.hook_in" in r.err, r.err
    assert "--hook says" not in r.err and "Traceback" not in r.err and "build a store at blocks.1.mlp.hook_in" in r.err
