"""Attention SAEs of other libraries, and the one map from HF module names to hook points.

- sparsify (`trainer.py`: a forward hook on the hookpoint module, the first element where it returns a
  tuple) and dictionary_learning (`buffer.py`: `submodule.output`, its first element for a tuple) read an
  attention module's own output: o_proj's (GPT-2: c_proj's) output, before any post-attention norm (Gemma 2/3,
  OLMo 2) or residual_multiplier (Granite). TransformerLens's `blocks.N.hook_attn_out` is that tensor only on
  models whose blocks add it unchanged (Llama, GPT-2); elsewhere it is the Bridge's `blocks.N.attn.hook_out`.
- A sparsify SAE on `layers.N.self_attn` had no hook derived (`saes.formats.base._MODULE_HOOKS` had no attention
  row; `saes.hookpoints` kept a second map that had one), so the user gave `--hook`, and the natural
  `blocks.N.hook_attn_out` read Gemma 2's normed tensor without a word. Now one table derives it, asking the
  model which hook holds the module's output, and a different --hook is refused naming both.
- The hint of `check_hook` for a typed HF module name comes from the same table.
"""

from __future__ import annotations

import pytest
import torch

from helpers import foreign_saes as fs
from helpers.forwards import read_at_hook

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

TEXT = "Le caf\u00e9 ouvre \u00e0 sept heures.\ndef parse(args):\n    return args  # \u6771\u4eac\u306e\u5929\u6c17"
ATTN_OUT, MODULE_OUT = "blocks.1.hook_attn_out", "blocks.1.attn.hook_out"
# architecture -> (sparsify hookpoint of block 1's attention, the hook holding that module's output)
CASES = {
    "gemma2": ("layers.1.self_attn", MODULE_OUT),  # post_attention_layernorm before the residual add
    "olmo2": ("layers.1.self_attn", MODULE_OUT),  # post_attention_layernorm before the residual add
    "granite": ("layers.1.self_attn", MODULE_OUT),  # residual_multiplier before the residual add
    "llama3_1": ("layers.1.self_attn", ATTN_OUT),
    "gpt2": ("h.1.attn", ATTN_OUT),
}


@pytest.fixture(scope="module")
def models(real_corpus, tmp_path_factory):
    """`path(arch)`: a tiny checkpoint of `arch`, norm gains far from 1, built when first asked for."""
    from helpers.real_models import build_family_tokenizer, save_arch_model, save_real_model

    root, made, toks = tmp_path_factory.mktemp("attnmap"), {}, {}

    def path(arch: str):
        if arch not in made:
            if arch == "gpt2":  # no post-norm, its own module names (h.N.attn)
                made[arch] = save_real_model(root / arch, "gpt2", real_corpus, train_steps=0)
            else:
                family = "gemma" if arch.startswith("gemma") else "llama"
                if family not in toks:
                    toks[family] = build_family_tokenizer(family, real_corpus.train_docs)
                made[arch] = save_arch_model(root / arch, arch, toks[family], trained_norms=True)
        return made[arch]

    return path


def _hf_attention_output(model_dir, hookpoint: str, tokens: torch.Tensor) -> torch.Tensor:
    """What sparsify's and dictionary_learning's hooks record: the module's output, its first element."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    got = {}

    def keep(module, args, out):  # noqa: ARG001 - a forward hook's signature; returns None (changes nothing)
        got["x"] = (out[0] if isinstance(out, tuple) else out).detach()

    handle = hf.base_model.get_submodule(hookpoint).register_forward_hook(keep)
    with torch.no_grad():
        hf(tokens)
    handle.remove()
    return got["x"]


@pytest.mark.parametrize("arch", list(CASES))
def test_attention_saes_of_sparsify_and_dictionary_learning_read_the_module_s_own_output(models, arch, tmp_path):
    from transformers import AutoTokenizer

    from saes.formats import resolve_sae
    from saesteer.models import load_model

    model_dir = models(arch)
    hookpoint, want = CASES[arch]
    tokens = torch.tensor([AutoTokenizer.from_pretrained(model_dir)(TEXT)["input_ids"]])
    bridge = load_model(str(model_dir), device="cpu")
    d = bridge.cfg.d_model
    state, cfg = fs.random_sparsify(d, 2 * d, k=4)
    sparsify = fs.write_sparsify(tmp_path / "run" / hookpoint, state, cfg, run_config={"model": str(model_dir)})
    dl = fs.write_dictionary_learning(tmp_path / "trainer_0", "AutoEncoder",
                                      fs.random_dictionary_learning("AutoEncoder", d, 2 * d),
                                      submodule_name="attn_out_layer_1", lm_name=str(model_dir))
    theirs = _hf_attention_output(model_dir, hookpoint, tokens)
    for folder in (sparsify, dl):
        hook = resolve_sae(folder).sae.cfg.metadata["hook_name"]
        assert hook == want, folder
        torch.testing.assert_close(read_at_hook(bridge, hook, tokens), theirs, rtol=1e-4, atol=1e-5)
    if want == MODULE_OUT:  # hook_attn_out is another tensor there: the test can tell the two apart
        assert not torch.allclose(read_at_hook(bridge, ATTN_OUT, tokens), theirs, rtol=1e-3, atol=1e-3)


def test_a_hook_attn_out_given_to_gemma_2_s_attention_sae_is_refused_naming_both(models, tmp_path):
    """It was taken (no hook derived for `layers.N.self_attn`): every input post_attention_layernorm's output."""
    from saes.formats import resolve_sae
    from saes.io import SAEFormatError

    model_dir = models("gemma2")
    state, cfg = fs.random_sparsify(64, 128, k=4)
    folder = fs.write_sparsify(tmp_path / "run" / "layers.1.self_attn", state, cfg, run_config={"model": str(model_dir)})
    with pytest.raises(SAEFormatError, match=rf"records hook point {MODULE_OUT} \(sparsify hookpoint "
                                             rf"'layers\.1\.self_attn'\), but --hook says {ATTN_OUT}"):
        resolve_sae(folder, hook=ATTN_OUT)
    assert resolve_sae(folder, hook=MODULE_OUT).sae.cfg.metadata["hook_name"] == MODULE_OUT


@pytest.mark.parametrize("typed", ["model.layers.1.self_attn", "layers.1.self_attn", "model.layers.1.mlp"])
def test_check_hook_s_hint_for_an_hf_module_name_is_the_format_readers_hook(models, typed):
    """One table: the hint names the hook an SAE trained on that module is loaded at (the short sparsify form
    got no hint before)."""
    from saes.formats.base import module_output_hook, tl_hook_for_module
    from saes.hookpoints import UnknownHookError, check_hook
    from saesteer.models import load_model

    model_dir = models("gemma2")
    loaded_at = module_output_hook(tl_hook_for_module(typed), str(model_dir))
    assert loaded_at in (MODULE_OUT, "blocks.1.mlp.hook_out")
    with pytest.raises(UnknownHookError, match=rf"the output of the HF module {typed} is {loaded_at}\."):
        check_hook(load_model(str(model_dir), device="cpu"), typed)


def test_a_sparsify_transcoder_on_a_module_without_a_hook_names_what_is_derived(tmp_path):
    from saes.formats import resolve_sae
    from saes.io import SAEFormatError

    state, cfg = fs.random_sparsify(16, 32, k=4, transcode=True)
    folder = fs.write_sparsify(tmp_path / "run" / "layers.1.post_attention_layernorm", state, cfg)
    with pytest.raises(SAEFormatError) as e:
        resolve_sae(folder)
    msg = str(e.value)
    assert "an MLP 'layers.N.mlp' and attention 'layers.N.self_attn': the hook holding what the module outputs" in msg
    assert "hook_mlp_out" not in msg  # it is not that hook on Gemma 2/3, OLMo 2, Granite
