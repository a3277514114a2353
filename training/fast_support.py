"""What the fused forward (`training.fast_forward.FastForward`) covers: the hook points it
produces, the TransformerLens configs and modules it computes as TransformerLens does, and the
HF architectures it reads inside a `TransformerBridge`. `support_problem` says why a model is
not covered (the reason `NotSupported` carries; the caller then uses TransformerLens's forward).
"""

from __future__ import annotations

import re
import sys
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

# Hook points the fast path produces, per block (blocks.{i}.<name>) and global.
BLOCK_HOOKS = (
    "hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post",
    "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "mlp.hook_pre", "mlp.hook_post",
)
GLOBAL_HOOKS = ("hook_embed", "hook_pos_embed")
SUPPORTED_HOOKS = GLOBAL_HOOKS + tuple(f"blocks.{{i}}.{h}" for h in BLOCK_HOOKS)

# TransformerLens activation names -> a fused torch equivalent (same function, other rounding).
FUSED_ACTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "relu": F.relu,
}
# element-wise TL activations used as they are (their own callables)
PLAIN_ACTS = ("xielu", "relu2")


class NotSupported(Exception):
    """The model or a hook point is outside what `FastForward` covers; use TransformerLens's forward."""


def parse_hook(name: str) -> tuple[int, str] | None:
    """(layer, block hook) for a supported block hook, (-1, name) for a global one, else None."""
    if name in GLOBAL_HOOKS:
        return -1, name
    m = re.match(r"^blocks\.(\d+)\.(.+)$", name)
    if m and m.group(2) in BLOCK_HOOKS:
        return int(m.group(1)), m.group(2)
    return None


def exact_type(obj, *names: str) -> bool:
    return type(obj).__name__ in names and type(obj).__module__.startswith("transformer_lens.")


def hf_model(model):
    """The HF model inside a TransformerLens `TransformerBridge`, else None."""
    if type(model).__name__ != "TransformerBridge" or not type(model).__module__.startswith("transformer_lens."):
        return None
    return getattr(model, "original_model", None)


def support_problem(model, hooks: Sequence[str]) -> str | None:
    """Why `FastForward(model, hooks)` would not cover this model / these hooks (None: it would)."""
    if "transformer_lens" not in sys.modules:
        return "not a TransformerLens model"
    from transformer_lens import HookedTransformer

    hf = hf_model(model)
    if hf is not None:
        return _hf_support_problem(model, hf, hooks)
    if not isinstance(model, HookedTransformer):
        return f"{type(model).__name__} is neither a HookedTransformer nor a TransformerBridge"
    if type(model).forward is not HookedTransformer.forward:
        return f"{type(model).__name__} overrides HookedTransformer.forward"
    return _hook_problem(model.cfg, hooks) or _config_problem(model.cfg, hooks) or _module_problem(model)


def _hook_problem(cfg, hooks: Sequence[str]) -> str | None:
    """A hook point the fast forward does not produce for a model of config `cfg`."""
    for h in hooks:
        p = parse_hook(h)
        if p is None:
            return f"hook point {h} (the fast forward covers {', '.join(SUPPORTED_HOOKS)})"
        if h == "hook_pos_embed" and cfg.positional_embedding_type != "standard":
            return "hook_pos_embed without standard positional embeddings"
        if p[0] >= cfg.n_layers:
            return f"hook point {h} (the model has {cfg.n_layers} blocks)"
        if p[1] == "hook_resid_mid" and (cfg.attn_only or cfg.parallel_attn_mlp):
            return f"hook point {h} (not computed by attention-only or parallel blocks)"
        if (p[1] == "hook_mlp_out" or p[1].startswith("mlp.")) and cfg.attn_only:
            return f"hook point {h} (an attention-only model has no MLP)"
    return None


def _config_problem(cfg, hooks: Sequence[str]) -> str | None:
    """A setting of the TransformerLens config that the fast forward does not compute."""
    flags = {
        "attn_scores_soft_cap > 0": (cfg.attn_scores_soft_cap or -1) > 0,
        "use_local_attn": cfg.use_local_attn,
        "use_qk_norm": cfg.use_qk_norm,
        "clip_qkv": cfg.clip_qkv is not None,
        "use_attention_sinks": getattr(cfg, "use_attention_sinks", False),
        "use_logn_attn": getattr(cfg, "use_logn_attn", False),
        "use_dynamic_ntk_rope": getattr(cfg, "use_dynamic_ntk_rope", False),
        "num_experts (mixture of experts)": bool(cfg.num_experts),
        "use_normalization_before_and_after": cfg.use_normalization_before_and_after,
        "use_split_qkv_input": cfg.use_split_qkv_input,
        "use_attn_in": cfg.use_attn_in,
        "use_attn_result": cfg.use_attn_result,
        "load_in_4bit": cfg.load_in_4bit,
        "post_embedding_ln": cfg.post_embedding_ln,
        "n_devices > 1": cfg.n_devices > 1,
        "a layer-norm activation (solu_ln)": cfg.is_layer_norm_activation(),
        # TL then repeats the key/value heads at hook_k / hook_v; the fast forward gives them grouped
        "ungroup_grouped_query_attention with attn.hook_k / attn.hook_v": (
            getattr(cfg, "ungroup_grouped_query_attention", False)
            and any(h.endswith(("attn.hook_k", "attn.hook_v")) for h in hooks)),
    }
    bad = [k for k, v in flags.items() if v]
    if bad:
        return "config " + ", ".join(bad)
    if cfg.attention_dir != "causal":
        return f"attention_dir {cfg.attention_dir!r}"
    if cfg.positional_embedding_type not in ("standard", "rotary"):
        return f"positional_embedding_type {cfg.positional_embedding_type!r}"
    if cfg.normalization_type not in ("LN", "LNPre", "RMS", "RMSPre", None):
        return f"normalization_type {cfg.normalization_type!r}"
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    if cfg.original_architecture in POST_NORM_ARCHITECTURES or str(cfg.original_architecture or "").startswith("Olmo"):
        return f"architecture {cfg.original_architecture}"
    if not cfg.attn_only and cfg.act_fn not in FUSED_ACTS and cfg.act_fn not in PLAIN_ACTS:
        return f"activation {cfg.act_fn!r}"
    if cfg.positional_embedding_type == "rotary" and cfg.rotary_dim is None:
        return "rotary embeddings without rotary_dim"
    return None


def _module_problem(model) -> str | None:
    """A module of the model that is not TransformerLens's own (its forward may differ), or a
    left-padding tokenizer."""
    cfg = model.cfg
    tok = getattr(model, "tokenizer", None)
    if tok is not None and getattr(tok, "padding_side", "right") == "left":
        return "a left-padding tokenizer (TransformerLens masks pad tokens)"
    if not exact_type(model.embed, "Embed"):
        return f"embedding {type(model.embed).__name__}"
    for i, block in enumerate(model.blocks):
        if not exact_type(block, "TransformerBlock"):
            return f"block {i} is a {type(block).__name__}"
        if not exact_type(block.attn, "Attention", "GroupedQueryAttention") or block.attn.attn_type != "global":
            return f"block {i} attention {type(block.attn).__name__}"
        if not cfg.attn_only and not exact_type(block.mlp, "MLP", "GatedMLP"):
            return f"block {i} MLP {type(block.mlp).__name__}"
    return None


# HF architectures (inside a TransformerBridge) the fused forward reads directly
HF_ARCHITECTURES = ("GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
HF_BLOCK_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")


def _hf_support_problem(model, hf, hooks: Sequence[str]) -> str | None:
    arch = type(hf).__name__
    if arch not in HF_ARCHITECTURES:
        return f"HF architecture {arch} (the fast forward reads {', '.join(HF_ARCHITECTURES)})"
    for h in hooks:
        p = parse_hook(h)
        if p is None or p[0] < 0 or p[1] not in HF_BLOCK_HOOKS:
            return f"hook point {h} on a TransformerBridge (the fast forward covers blocks.{{i}}.{{{','.join(HF_BLOCK_HOOKS)}}})"
    c = hf.config
    act = getattr(c, "activation_function", None) or getattr(c, "hidden_act", None)
    if act not in FUSED_ACTS:
        return f"activation {act!r}"
    if arch == "GPT2LMHeadModel":
        if getattr(c, "add_cross_attention", False):
            return "GPT-2 with cross-attention"
    else:
        if getattr(c, "num_experts", None) or getattr(c, "use_qk_norm", False):
            return f"{arch} with experts or QK-norm"
        if getattr(getattr(hf, "model", None), "rotary_emb", None) is None:
            return f"{arch} without a shared rotary embedding module"
    impl = getattr(c, "_attn_implementation", None)
    if impl not in (None, "eager", "sdpa", "flash_attention_2", "flash_attention_3"):
        return f"attention implementation {impl!r}"
    tok = getattr(model, "tokenizer", None)
    if tok is not None and getattr(tok, "padding_side", "right") == "left":
        return "a left-padding tokenizer"
    return None
