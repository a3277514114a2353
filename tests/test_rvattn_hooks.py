"""Review of the one HF module -> hook map (`saes.formats.base._MODULE_HOOKS`, attention included).

- The attention row (`layers.N.self_attn|attn|attention`) maps only the attention module itself: its
  projections, norms named after it (attn_norm, post_attention_layernorm), cross-attention, Falcon/Bloom's
  self_attention (Bloom's adds the residual), BERT/RoBERTa's layer.N.attention (normed with the residual) and
  Qwen3.5's delta-net linear_attn get no hook.
- A vision or audio tower's layers (Gemma 3's vision_tower, Qwen2-VL's visual.blocks.N.attn) are not the language
  model's blocks: they got the language model's hook of the same index, and a sparsify SAE there loaded silently.
- On architectures whose attention module is built otherwise (GPT-NeoX's and GPT-J's parallel blocks, Phi's,
  Qwen3.5's hybrid, Mixtral's and FlexOlmo's experts) the derived hook holds what sparsify's forward hook reads.
- `check_hook`'s hint for TransformerLens's own module name (`blocks.1`) no longer calls it an HF module.
- A user who gave `--hook blocks.N.hook_attn_out` to a Gemma 2 attention SAE before saesteer derived its hook is
  told which hook is right and why.
"""

from __future__ import annotations

import pytest
import torch

from helpers import foreign_saes as fs
from helpers.forwards import read_at_hook
from helpers.real_cli import saesteer
from test_attnmap_hooks import TEXT, _hf_attention_output, models  # noqa: F401 - models: the fixture

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]


@pytest.mark.parametrize("module, hook", [
    ("language_model.layers.1.self_attn", "blocks.1.hook_attn_out"),  # a multimodal model's text layers
    ("h.1.attn.c_attn", None), ("h.1.attn.c_proj", None), ("layers.1.self_attn.q_proj", None),
    ("layers.1.self_attn.o_proj", None), ("gpt_neox.layers.1.attention.dense", None),
    ("layers.1.attn_norm", None), ("layers.1.post_attention_layernorm", None),
    ("layers.1.input_layernorm", "blocks.1.ln1.hook_out"),  # the block's first norm (tests/test_falcon_bloom_hooks.py)
    ("language_model.model.layers.1.cross_attn", None), ("h.1.crossattention", None),
    # Falcon, Bloom: on Bloom, whose module adds the residual, module_output_hook makes it attn.hook_out
    ("transformer.h.1.self_attention", "blocks.1.hook_attn_out"),
    ("layers.1.linear_attn", None), ("transformer.h.1.attn.attention", None),  # Qwen3.5 delta-net, GPT-Neo's inner
    ("layers.1.self_attn.rotary_emb", None), ("layers.1.attn", "blocks.1.hook_attn_out"),
    # BERT/RoBERTa (RobertaForCausalLM too): the module's output is LayerNorm(attention + residual)
    ("roberta.encoder.layer.1.attention", None), ("encoder.layer.1.attention", None),
    ("gpt_neox.layers.1.attention", "blocks.1.hook_attn_out"),
    # vision and audio towers: their layer N is not the language model's block N
    ("vision_tower.vision_model.encoder.layers.1.self_attn", None), ("visual.blocks.1.attn", None),
    ("model.visual.blocks.1.mlp", None), ("vision_model.transformer.layers.1", None),
    ("audio_tower.layers.1.self_attn", None), ("model.vision_tower.encoder.layers.1.mlp", None),
])
def test_only_the_attention_module_itself_maps_to_an_attention_hook(module, hook) -> None:
    from saes.formats.base import tl_hook_for_module

    assert tl_hook_for_module(module) == hook


@pytest.mark.parametrize("module", ["vision_tower.encoder.layers.1.mlp", "visual.blocks.1"])
def test_a_vision_tower_s_module_input_has_no_hook(module) -> None:
    from saes.formats.base import tl_hook_for_module_input

    assert tl_hook_for_module_input(module) is None


def test_a_sparsify_sae_on_a_vision_tower_s_attention_asks_for_the_hook(tmp_path) -> None:
    """It loaded at the language model's blocks.1.hook_attn_out without a word."""
    from saes.formats import resolve_sae

    state, cfg = fs.random_sparsify(16, 32, k=4)
    folder = fs.write_sparsify(tmp_path / "run" / "vision_tower.vision_model.encoder.layers.1.self_attn", state, cfg)
    loaded = resolve_sae(folder)
    assert not loaded.sae.cfg.metadata.get("hook_name")
    assert "hook from --hook" in loaded.provenance["source"]["note"]


# architectures whose attention module is built otherwise than Llama's: (arch, sparsify hookpoint of block 1's)
OTHER_ATTENTION = {
    "neox": "layers.1.attention",  # GPT-NeoX: parallel residual, attention.dense
    "gptj": "h.1.attn",  # GPT-J: parallel attention and MLP off one LayerNorm, out_proj
    "phi": "layers.1.self_attn",  # Phi: parallel, self_attn.dense
    "qwen3_5": "layers.2.self_attn",  # the hybrid's one attention layer among delta-net layers
    "mixtral": "layers.1.self_attn",  # experts for every MLP
    "flex_olmo": "layers.1.self_attn",  # OLMo 2's post-norm blocks around experts
}


@pytest.fixture(scope="module")
def other_models(real_corpus, tmp_path_factory):
    from helpers.real_models import build_family_tokenizer, save_arch_model, save_real_model

    root, made, tok = tmp_path_factory.mktemp("rvattn"), {}, []

    def path(arch: str):
        if arch not in made:
            if arch == "neox":
                made[arch] = save_real_model(root / arch, "neox", real_corpus, train_steps=0)
            else:
                tok or tok.append(build_family_tokenizer("llama", real_corpus.train_docs))
                made[arch] = save_arch_model(root / arch, arch, tok[0], trained_norms=True)
        return made[arch]

    return path


@pytest.mark.parametrize("arch", list(OTHER_ATTENTION))
def test_sparsify_s_attention_sae_reads_what_its_forward_hook_read_on_other_blocks(other_models, arch, tmp_path):
    model_dir, hookpoint = other_models(arch), OTHER_ATTENTION[arch]
    bridge, tokens, hook = fs.random_sparsify_on_bridge(model_dir, hookpoint, tmp_path / "run", TEXT)
    assert hook.startswith(f"blocks.{hookpoint.split('.')[1]}.")
    torch.testing.assert_close(read_at_hook(bridge, hook, tokens), _hf_attention_output(model_dir, hookpoint, tokens),
                               rtol=1e-4, atol=1e-5)


def test_check_hook_calls_transformer_lens_s_own_module_name_a_module_not_an_hf_one(other_models):
    from saes.hookpoints import UnknownHookError, check_hook
    from saesteer.models import load_model

    bridge = load_model(str(other_models("mixtral")), device="cpu")
    with pytest.raises(UnknownHookError) as e:
        check_hook(bridge, "blocks.1")
    assert "blocks.1 is a module, not a hook point: its output is blocks.1.hook_resid_post." in str(e.value)
    assert "HF module" not in str(e.value)
    with pytest.raises(UnknownHookError, match=r"the output of the HF module model\.layers\.1\.self_attn is "
                                               r"blocks\.1\.hook_attn_out\."):
        check_hook(bridge, "model.layers.1.self_attn")


def test_an_old_hook_attn_out_on_gemma_2_s_attention_sae_is_told_which_hook_is_right(models, tmp_path):
    """Before today `--hook blocks.1.hook_attn_out` was how such an SAE loaded; the refusal said to pick another
    SAE, as if this one were trained elsewhere."""
    model_dir = models("gemma2")
    state, cfg = fs.random_sparsify(64, 128, k=4)
    folder = fs.write_sparsify(tmp_path / "run" / "layers.1.self_attn", state, cfg, run_config={"model": str(model_dir)})
    r = saesteer("features", "top-on-text", "--sae", folder, "--hook", "blocks.1.hook_attn_out", "--top", 2, TEXT)
    assert r.rc != 0
    err = " ".join(r.err.split())
    assert ("blocks.1.attn.hook_out is right: the module's own output, which the SAE was trained on" in err), err
    assert "blocks.1.hook_attn_out is the normed or scaled one. Drop --hook" in err
    assert "pick the SAE trained on" not in err
    assert "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) <= 2, r.err


def test_dictionary_learning_s_mlp_sae_with_the_old_hook_mlp_out_is_told_the_same(models, tmp_path):
    from saes.formats import resolve_sae
    from saes.io import SAEFormatError

    model_dir = models("gemma2")
    folder = fs.write_dictionary_learning(tmp_path / "trainer_0", "AutoEncoder",
                                          fs.random_dictionary_learning("AutoEncoder", 64, 128),
                                          submodule_name="mlp_out_layer_1", lm_name=str(model_dir))
    with pytest.raises(SAEFormatError, match=r"blocks\.1\.mlp\.hook_out is right: the module's own output.* and "
                                             r"blocks\.1\.hook_mlp_out is the normed or scaled one\. Drop --hook$"):
        resolve_sae(folder, hook="blocks.1.hook_mlp_out")


def test_a_saelens_sae_recorded_at_a_module_s_output_keeps_the_plain_refusal(tmp_path):
    """No model config was asked there: nothing says this model norms the module's output."""
    from saes.formats.base import record_model_and_hook
    from saes.io import SAEFormatError

    with pytest.raises(SAEFormatError, match=r"drop --hook or pick the SAE trained on blocks\.1\.hook_mlp_out$"):
        record_model_and_hook(None, {}, source="x", hook="blocks.1.hook_mlp_out", model=None,
                              recorded_hook="blocks.1.mlp.hook_out", recorded_model=None)
