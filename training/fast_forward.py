"""A fused forward pass for the activation cache: the residual stream of a TransformerLens
`HookedTransformer` computed with plain fused torch ops, up to the last hook point needed.

    ff = FastForward(model, ["blocks.2.hook_resid_post"])   # raises NotSupported if it can't
    acts = ff(tokens_BL)                                      # {hook: [B, L, ...]}

TransformerLens's forward is written for readability and hooks: at d_model 128 most of its time
goes to building and applying the causal mask (`torch.where` over [B, H, L, L]), the separate
division by the attention scale, the softmax, NaN scrubbing, per-call weight rearranges and a
layer norm written as six elementwise ops. This path does the same arithmetic with
`F.layer_norm`, one `F.linear` on QKV weights stacked once at construction,
`F.scaled_dot_product_attention(is_causal=True, scale=1/attn_scale)` and `torch.addmm`; the
results equal TL's up to floating-point rounding (tests/test_cache_fast_forward.py checks every
supported hook point against `run_with_cache`).

Covered: standard (learned absolute) and rotary positional embeddings (the model's own sin/cos
tables, so NTK-by-parts / YaRN / scaled tables come along; GPT-NeoX and GPT-J pair layouts,
partial rotary_dim); LN, LNPre, RMS, RMSPre or no normalisation (folded or not); plain and gated
MLPs with any of TransformerLens's element-wise activations; grouped-query attention;
sequential or parallel attention+MLP blocks (GPT-J / NeoX / Pythia); attention-only models;
any attention scale (incl. `scale_attn_by_inverse_layer_idx`); fp32/fp16/bf16 weights.

HF checkpoints loaded as a TransformerLens `TransformerBridge` (how `saesteer.models` loads
them) are read from the wrapped HF modules for GPT2LMHeadModel and LLaMA-style
LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM (RMSNorm, q/k/v/o projections with or
without biases, GQA, HF's own rotary tables incl. rope scaling, gated MLP; a Mistral sliding window
only for contexts within the window), at blocks.{i}.hook_resid_pre / attn_out / resid_mid /
mlp_out / resid_post; raw or processed weights (`--process-weights`: the Bridge's processing
writes into the modules read here; GPT-2's Q/K/V come from the Bridge's split q / k / v copies,
which its attention runs, not from HF's fused c_attn, which processing leaves raw).

Anything else raises `NotSupported` with the reason and the caller uses TransformerLens's
forward: attention-score soft-capping, local/windowed or bidirectional attention, ALiBi /
relative / shortformer positions, QK-norm, QKV clipping, attention sinks, log-n or dynamic-NTK
scaling, mixture-of-experts, SoLU-LN, norms before and after sublayers, post-norm
architectures, split-QKV / attn-in inputs, `use_attn_result`, 4-bit weights, several devices,
left-padding tokenizers (TL would build an attention mask), subclasses that override forward,
and any hook point outside `SUPPORTED_HOOKS`. These checks are `training.fast_support`.

The weights are snapshotted (stacked) at construction: build a new `FastForward` after changing
the model's parameters.

Shape key: B batch, L positions, D d_model, H query heads, K key/value heads, E d_head,
F d_mlp, N = B*L.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from training.fast_support import (
    FUSED_ACTS,
    NotSupported,
    exact_type,
    hf_model,
    parse_hook,
    support_problem,
)


class _Norm(NamedTuple):
    kind: str  # "LN", "LNPre", "RMS", "RMSPre", "none"
    w: torch.Tensor | None
    b: torch.Tensor | None
    eps: float


class _Layer(NamedTuple):
    ln1: _Norm
    ln2: _Norm | None
    W_qkv: torch.Tensor  # [(H + 2K) * E, D]
    b_qkv: torch.Tensor  # [(H + 2K) * E]
    W_O: torch.Tensor  # [D, H * E]
    b_O: torch.Tensor  # [D]
    scale: float  # multiplies q.k (1 / TL's attn_scale)
    mlp: str  # "mlp", "gated", "none"
    W_in: torch.Tensor | None  # [D, F] (gated: [D, 2F] = [W_gate | W_in])
    b_in: torch.Tensor | None  # [F]
    W_out: torch.Tensor | None  # [F, D]
    b_out: torch.Tensor | None  # [D]
    act: Callable[[torch.Tensor], torch.Tensor] | None




def _unwrap(module):
    """The HF module a TransformerBridge component wraps (the bridge swaps them in place)."""
    while getattr(module, "_original_component", None) is not None:
        module = module._original_component
    return module


def _hf_linear(lin) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [out, in] for F.linear, bias) of an nn.Linear or a GPT-2 Conv1D."""
    lin = _unwrap(lin)
    if type(lin).__name__ == "Conv1D":  # weight [in, out]
        return lin.weight.detach().t().contiguous(), lin.bias.detach()
    return lin.weight.detach(), None if lin.bias is None else lin.bias.detach()


def _bridge_part(attn, name: str):
    """Submodule `name` of a TransformerBridge attention component (None on a plain HF module)."""
    part = attn._modules.get(name)
    return part if part is not None and hasattr(part, "_original_component") else None


def _gpt2_qkv(attn) -> tuple[torch.Tensor, torch.Tensor]:
    """GPT-2's stacked Q | K | V weight [3 * H * E, D] and bias, as the model computes them.

    TransformerBridge splits GPT-2's fused `c_attn` (a Conv1D) into q / k / v `nn.Linear`s at
    boot and its attention runs those. Weight processing (`--process-weights`: fold_ln folds
    ln_1's weights into them, fold_value_biases moves v's bias into the output bias) replaces the
    three and leaves `c_attn` raw, so `c_attn` is read only on a plain HF module."""
    parts = [_bridge_part(attn, n) for n in ("q", "k", "v")]
    if any(p is None for p in parts):
        return _hf_linear(attn.c_attn)
    ws, bs = zip(*(_hf_linear(p) for p in parts))
    b = torch.cat([b if b is not None else _zeros_like_out(w) for w, b in zip(ws, bs)])
    return torch.cat(ws).contiguous(), b


def _zeros_like_out(w: torch.Tensor) -> torch.Tensor:
    return torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)


def _norm(module, kind: str | None) -> _Norm:
    if kind is None:
        return _Norm("none", None, None, 0.0)
    eps = float(module.eps)
    w = module.w.detach() if kind in ("LN", "RMS") else None
    b = module.b.detach() if kind == "LN" else None
    return _Norm(kind, w, b, eps)


def _apply_norm(n: _Norm, x_ND: torch.Tensor) -> torch.Tensor:
    if n.kind == "none":
        return x_ND
    D = x_ND.shape[-1]
    low = x_ND.dtype not in (torch.float32, torch.float64)  # TL normalises in fp32, then casts back
    x = x_ND.float() if low else x_ND
    if n.kind.startswith("LN"):
        if not low and n.kind == "LN":
            return F.layer_norm(x, (D,), n.w, n.b, n.eps)
        y = F.layer_norm(x, (D,), None, None, n.eps)
    else:
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + n.eps)
    if low:
        y = y.to(x_ND.dtype)
    if n.w is not None:
        y = torch.addcmul(n.b, y, n.w) if n.b is not None else y * n.w
    return y


class FastForward:
    """The fused forward for `model` (a supported HookedTransformer) reading `hooks`.

    `__call__(tokens_BL)` -> {hook: activation [B, L, ...]} (the shapes TransformerLens gives
    at those hook points). Raises `NotSupported` at construction otherwise."""

    def __init__(self, model, hooks: Sequence[str]):
        problem = support_problem(model, hooks)
        if problem is not None:
            raise NotSupported(problem)
        self.model = model
        self.hooks = list(hooks)
        self.want: dict[int, set[str]] = {}
        for h in self.hooks:
            layer, name = parse_hook(h)  # type: ignore[misc]
            self.want.setdefault(layer, set()).add(name)
        self.n_layers = 1 + max([i for i in self.want if i >= 0], default=-1)
        self._rot_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.sliding_window: int | None = None
        hf = hf_model(model)
        if hf is not None:
            with torch.no_grad():
                self._init_hf(hf)
            return
        cfg = model.cfg
        self.hf = None
        self.parallel = bool(cfg.parallel_attn_mlp)
        self.attn_only = bool(cfg.attn_only)
        self.rotary = cfg.positional_embedding_type == "rotary"
        self.rotary_dim = int(cfg.rotary_dim or 0)
        self.adjacent = bool(getattr(cfg, "rotary_adjacent_pairs", False))
        self.H = int(cfg.n_heads)
        self.E = int(cfg.d_head)
        self.W_E = model.embed.W_E.detach()
        self.W_pos = model.pos_embed.W_pos.detach() if cfg.positional_embedding_type == "standard" else None
        with torch.no_grad():
            self.layers = [self._layer(model.blocks[i], cfg) for i in range(self.n_layers)]
        self.K = (self.layers[0].W_qkv.shape[0] // self.E - self.H) // 2 if self.layers else self.H

    def _init_hf(self, hf) -> None:
        c = hf.config
        self.hf = hf
        act = FUSED_ACTS[getattr(c, "activation_function", None) or getattr(c, "hidden_act", None)]
        self.parallel = self.attn_only = False
        self.adjacent = False
        if type(hf).__name__ == "GPT2LMHeadModel":
            t = hf.transformer
            self.rotary, self.rotary_dim = False, 0
            self.H = int(c.n_head)
            self.E = int(c.n_embd) // self.H
            self.K = self.H
            self.W_E, self.W_pos = _unwrap(t.wte).weight.detach(), _unwrap(t.wpe).weight.detach()
            self.layers = []
            for i in range(self.n_layers):
                blk = _unwrap(t.h[i])
                W_qkv, b_qkv = _gpt2_qkv(blk.attn)
                W_O, b_O = _hf_linear(_bridge_part(blk.attn, "o") or blk.attn.c_proj)
                scale = (self.E ** -0.5) if getattr(c, "scale_attn_weights", True) else 1.0
                if getattr(c, "scale_attn_by_inverse_layer_idx", False):
                    scale /= i + 1
                ln = lambda m: _Norm("LN", _unwrap(m).weight.detach(), _unwrap(m).bias.detach(), float(_unwrap(m).eps))  # noqa: E731
                W_fc, b_fc = _hf_linear(blk.mlp.c_fc)  # [F, D]
                W_pr, b_pr = _hf_linear(blk.mlp.c_proj)  # [D, F]
                self.layers.append(_Layer(
                    ln(blk.ln_1), ln(blk.ln_2), W_qkv, b_qkv, W_O, b_O, scale, "mlp",
                    W_fc.t().contiguous(), b_fc, W_pr.t().contiguous(), b_pr, act))
            return
        # LLaMA-style: RMSNorm, q/k/v/o projections, rotary (HF's own tables), gated SiLU MLP
        m = hf.model
        self.rotary = True
        self.H = int(c.num_attention_heads)
        self.K = int(getattr(c, "num_key_value_heads", None) or self.H)
        self.E = int(getattr(c, "head_dim", None) or c.hidden_size // self.H)
        self.rotary_dim = self.E
        self.W_E, self.W_pos = _unwrap(m.embed_tokens).weight.detach(), None
        if getattr(c, "use_sliding_window", True) and getattr(c, "sliding_window", None):
            self.sliding_window = int(c.sliding_window)
        self.layers = []
        for i in range(self.n_layers):
            blk = _unwrap(m.layers[i])
            at, mlp = _unwrap(blk.self_attn), _unwrap(blk.mlp)
            ws, bs = zip(*(_hf_linear(x) for x in (at.q_proj, at.k_proj, at.v_proj)))
            W_qkv = torch.cat(ws).contiguous()
            b_qkv = torch.cat([b if b is not None else _zeros_like_out(w) for w, b in zip(ws, bs)])
            W_O, b_O = _hf_linear(at.o_proj)
            rms = lambda n: _Norm("RMS", _unwrap(n).weight.detach(), None,  # noqa: E731
                                  float(getattr(_unwrap(n), "variance_epsilon", getattr(_unwrap(n), "eps", 1e-6))))
            Wg, bg = _hf_linear(mlp.gate_proj)
            Wu, bu = _hf_linear(mlp.up_proj)
            Wd, bd = _hf_linear(mlp.down_proj)
            if bg is not None or bu is not None:
                raise NotSupported(f"{type(hf).__name__} with MLP biases")
            self.layers.append(_Layer(
                rms(blk.input_layernorm), rms(blk.post_attention_layernorm), W_qkv, b_qkv, W_O,
                b_O if b_O is not None else _zeros_like_out(W_O), float(getattr(at, "scaling", self.E ** -0.5)),
                "gated", torch.cat([Wg.t(), Wu.t()], dim=1).contiguous(), torch.zeros(Wg.shape[0], dtype=Wg.dtype, device=Wg.device),
                Wd.t().contiguous(), bd if bd is not None else _zeros_like_out(Wd), act))

    def _layer(self, block, cfg) -> _Layer:
        attn = block.attn
        if exact_type(attn, "GroupedQueryAttention"):
            W_K, W_V, b_K, b_V = attn._W_K, attn._W_V, attn._b_K, attn._b_V
        else:
            W_K, W_V, b_K, b_V = attn.W_K, attn.W_V, attn.b_K, attn.b_V
        # [heads, D, E] -> [(heads E), D], stacked Q | K | V
        W_qkv = torch.cat([w.permute(0, 2, 1).reshape(-1, w.shape[1]) for w in (attn.W_Q, W_K, W_V)]).contiguous()
        b_qkv = torch.cat([attn.b_Q.reshape(-1), b_K.reshape(-1), b_V.reshape(-1)]).contiguous()
        W_O = attn.W_O.reshape(-1, attn.W_O.shape[-1]).t().contiguous()  # [H, E, D] -> [D, (H E)]
        scale = 1.0 / float(attn.attn_scale)
        ln1 = _norm(block.ln1, cfg.normalization_type)
        if cfg.attn_only:
            return _Layer(ln1, None, W_qkv, b_qkv, W_O, attn.b_O.detach(), scale, "none", None, None, None, None, None)
        mlp = block.mlp
        act = FUSED_ACTS.get(cfg.act_fn) or mlp.act_fn
        if exact_type(mlp, "GatedMLP"):
            kind, W_in = "gated", torch.cat([mlp.W_gate, mlp.W_in], dim=1).contiguous()
        else:
            kind, W_in = "mlp", mlp.W_in.detach().contiguous()
        return _Layer(ln1, _norm(block.ln2, cfg.normalization_type), W_qkv, b_qkv, W_O, attn.b_O.detach(), scale,
                      kind, W_in, mlp.b_in.detach(), mlp.W_out.detach().contiguous(), mlp.b_out.detach(), act)

    # ------------------------------------------------------------------------------------------

    def _rotate(self, x_BLhE: torch.Tensor, cos_LR: torch.Tensor, sin_LR: torch.Tensor) -> torch.Tensor:
        R = self.rotary_dim
        x_rot = x_BLhE[..., :R]
        if self.adjacent:
            pairs = x_rot.unflatten(-1, (R // 2, 2))
            flip = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
        else:
            flip = torch.cat([-x_rot[..., R // 2:], x_rot[..., :R // 2]], dim=-1)
        out = x_rot * cos_LR[:, None] + flip * sin_LR[:, None]
        if R == x_BLhE.shape[-1]:
            return out
        return torch.cat([out, x_BLhE[..., R:]], dim=-1)

    def _attention(self, lay: _Layer, x_BLD: torch.Tensor, rot, want: set[str], got: dict[str, torch.Tensor],
                   prefix: str) -> torch.Tensor:
        B, L, D = x_BLD.shape
        H, K, E = self.H, self.K, self.E
        qkv = F.linear(x_BLD, lay.W_qkv, lay.b_qkv).view(B, L, H + 2 * K, E)
        q_BLHE, k_BLKE, v_BLKE = qkv[:, :, :H], qkv[:, :, H:H + K], qkv[:, :, H + K:]
        for name, t in (("attn.hook_q", q_BLHE), ("attn.hook_k", k_BLKE), ("attn.hook_v", v_BLKE)):
            if name in want:
                got[prefix + name] = t.contiguous()
        if rot is not None:
            q_BLHE, k_BLKE = self._rotate(q_BLHE, *rot), self._rotate(k_BLKE, *rot)
        z_BHLE = F.scaled_dot_product_attention(
            q_BLHE.transpose(1, 2), k_BLKE.transpose(1, 2), v_BLKE.transpose(1, 2),
            is_causal=True, scale=lay.scale, enable_gqa=K != H,
        )
        z_BLF = z_BHLE.transpose(1, 2).reshape(B, L, H * E)
        if "attn.hook_z" in want:
            got[prefix + "attn.hook_z"] = z_BLF.view(B, L, H, E)
        return F.linear(z_BLF, lay.W_O, lay.b_O)

    def _mlp(self, lay: _Layer, x_ND: torch.Tensor, want: set[str], got: dict[str, torch.Tensor], prefix: str,
             shape) -> torch.Tensor:
        if lay.mlp == "gated":
            Fd = lay.W_in.shape[1] // 2
            both = torch.mm(x_ND, lay.W_in)
            pre, lin = both[:, :Fd], both[:, Fd:]
            post = torch.addcmul(lay.b_in, lay.act(pre), lin)
        else:
            pre = torch.addmm(lay.b_in, x_ND, lay.W_in)
            post = lay.act(pre)
        if "mlp.hook_pre" in want:
            got[prefix + "mlp.hook_pre"] = pre.reshape(*shape[:2], -1)
        if "mlp.hook_post" in want:
            got[prefix + "mlp.hook_post"] = post.view(*shape[:2], -1)
        return torch.addmm(lay.b_out, post, lay.W_out)

    def __call__(self, tokens_BL: torch.Tensor) -> dict[str, torch.Tensor]:
        B, L = tokens_BL.shape
        got: dict[str, torch.Tensor] = {}
        top = self.want.get(-1, set())
        with torch.inference_mode():
            tokens_BL = tokens_BL.to(self.W_E.device)
            resid = F.embedding(tokens_BL, self.W_E)
            if "hook_embed" in top:
                got["hook_embed"] = resid
            if self.W_pos is not None:
                pos_LD = self.W_pos[:L]
                if "hook_pos_embed" in top:
                    got["hook_pos_embed"] = pos_LD.expand(B, L, -1)
                resid = resid + pos_LD
            shape = (B, L, resid.shape[-1])
            for i, lay in enumerate(self.layers):
                want = self.want.get(i, set())
                prefix = f"blocks.{i}."
                last = i == self.n_layers - 1
                if "hook_resid_pre" in want:
                    got[prefix + "hook_resid_pre"] = resid
                if last and want <= {"hook_resid_pre"}:
                    break
                rot = self._rotary_tables(i, L) if self.rotary else None
                attn_out = self._attention(lay, _apply_norm(lay.ln1, resid), rot, want, got, prefix)
                if "hook_attn_out" in want:
                    got[prefix + "hook_attn_out"] = attn_out
                if self.attn_only:
                    resid = resid + attn_out
                elif self.parallel:
                    if last and not want & {"hook_mlp_out", "hook_resid_post", "mlp.hook_pre", "mlp.hook_post"}:
                        break
                    mlp_out = self._mlp(lay, _apply_norm(lay.ln2, resid).view(B * L, -1), want, got, prefix, shape)
                    mlp_out = mlp_out.view(shape)
                    resid = resid + attn_out + mlp_out
                else:
                    resid = resid + attn_out
                    if "hook_resid_mid" in want:
                        got[prefix + "hook_resid_mid"] = resid
                    if last and not want & {"hook_mlp_out", "hook_resid_post", "mlp.hook_pre", "mlp.hook_post"}:
                        break
                    mlp_out = self._mlp(lay, _apply_norm(lay.ln2, resid).view(B * L, -1), want, got, prefix, shape)
                    mlp_out = mlp_out.view(shape)
                    resid = resid + mlp_out
                if not self.attn_only and "hook_mlp_out" in want:
                    got[prefix + "hook_mlp_out"] = mlp_out
                if "hook_resid_post" in want:
                    got[prefix + "hook_resid_post"] = resid
        missing = [h for h in self.hooks if h not in got]
        if missing:  # e.g. hook_resid_mid of a parallel or attention-only block
            raise NotSupported(f"hook point(s) {', '.join(missing)} are not computed by this model's blocks")
        return {h: got[h] for h in self.hooks}

    def _rotary_tables(self, layer: int, L: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.hf is not None:  # HF's own rotary module (rope scaling, attention factor included)
            if self.sliding_window is not None and L > self.sliding_window:
                raise NotSupported(f"context of {L} tokens is longer than the sliding window ({self.sliding_window})")
            got = self._rot_cache.get(L)
            if got is None:
                x = self.W_E[:1].unsqueeze(0)
                cos, sin = _unwrap(self.hf.model.rotary_emb)(x, torch.arange(L, device=x.device)[None])
                got = self._rot_cache[L] = (cos[0].to(x.dtype), sin[0].to(x.dtype))
            return got
        attn = self.model.blocks[layer].attn  # TL's own tables (base, scaling, YaRN all included)
        cos, sin = attn.rotary_cos, attn.rotary_sin
        if cos.shape[0] < L:
            raise NotSupported(f"context of {L} tokens is longer than the model's rotary table ({cos.shape[0]})")
        return cos[:L], sin[:L]
