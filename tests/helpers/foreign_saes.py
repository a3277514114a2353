"""SAE files of other libraries written exactly as their code writes them, and reference
encoders written from their source, so format tests run where those libraries are not installed.

Each writer cites the producing function; where the library is installed, tests also check that
the library itself loads these files and computes what the references compute.

    state, cfg = random_sparsify(d_in=16, d_sae=64, k=4)
    write_sparsify(tmp_path / "run" / "layers.1", state, cfg, run_config={"model": "org/m"})
    acts, recon = sparsify_reference(state, cfg, x)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

# ------------------------------------------------------------------------------------ sparsify
SPARSIFY_CONFIG_DEFAULTS = {  # sparsify/config.py, SparseCoderConfig field order and defaults
    "activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": 0, "k": 32,
    "multi_topk": False, "skip_connection": False, "transcode": False,
}


def random_sparsify(d_in: int, d_sae: int, k: int, seed: int = 0, transcode: bool = False,
                    skip: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A SparseCoder's tensors and config; `transcode` / `skip`: a transcoder (with W_skip [D, D])."""
    g = torch.Generator().manual_seed(seed)
    state = {
        "encoder.weight": torch.randn(d_sae, d_in, generator=g) * 0.4,
        "encoder.bias": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g) * 0.3,
        "b_dec": torch.randn(d_in, generator=g) * 0.2,
    }
    if skip:
        state["W_skip"] = torch.randn(d_in, d_in, generator=g) * 0.2
    return state, {**SPARSIFY_CONFIG_DEFAULTS, "num_latents": d_sae, "k": k, "transcode": transcode,
                   "skip_connection": skip}


def write_sparsify(folder: Path, state: dict[str, torch.Tensor], cfg: dict[str, Any],
                   run_config: dict[str, Any] | None = None) -> Path:
    """sparsify/sparse_coder.py, SparseCoder.save_to_disk: `save_model(self, "sae.safetensors")`
    (the module's state dict) and `json.dump({**self.cfg.to_dict(), "d_in": self.d_in})` to
    cfg.json. A run's `config.json` sits one level up (sparsify/trainer.py, Trainer._checkpoint)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "sae.safetensors"), metadata={"format": "pt"})
    d_in = state["encoder.weight"].shape[1]
    with open(folder / "cfg.json", "w") as f:
        json.dump({**cfg, "d_in": d_in}, f)
    if run_config is not None:
        (folder.parent / "config.json").write_text(json.dumps(run_config))
    return folder


def random_sparsify_on_bridge(model_dir: Path, hookpoint: str, run: Path, text: str):
    """(the model's TransformerBridge, `text`'s tokens [1, T], the hook saesteer resolves to) for a random
    sparsify SAE of `model_dir`'s HF module `hookpoint`, written as a sparsify run in `run`."""
    from transformers import AutoTokenizer

    from saes.formats import resolve_sae
    from saesteer.models import load_model

    tokens = torch.tensor([AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"]])
    bridge = load_model(str(model_dir), device="cpu")
    d = bridge.cfg.d_model
    state, cfg = random_sparsify(d, 2 * d, k=4)
    folder = write_sparsify(run / hookpoint, state, cfg, run_config={"model": str(model_dir)})
    return bridge, tokens, resolve_sae(folder).sae.cfg.metadata["hook_name"]


def sparsify_reference(state: dict[str, torch.Tensor], cfg: dict[str, Any], x_BD: torch.Tensor):
    """Dense activations and output as sparsify computes them: SparseCoder.encode (x - b_dec, not
    for a transcoder, then fused_encoder: relu(F.linear) and top-k), SparseCoder.decode
    (utils.eager_decode: embedding_bag of W_dec rows, + b_dec) and forward's `+ x @ W_skip.mT`."""
    x_in = x_BD if cfg.get("transcode") else x_BD - state["b_dec"]
    pre = F.relu(F.linear(x_in, state["encoder.weight"], state["encoder.bias"]))
    vals, idx = pre.topk(cfg["k"], dim=-1, sorted=False)
    recon = F.embedding_bag(idx, state["W_dec"], per_sample_weights=vals, mode="sum") + state["b_dec"]
    if "W_skip" in state:
        recon = recon + x_BD @ state["W_skip"].mT
    return torch.zeros_like(pre).scatter_(-1, idx, vals), recon


# --------------------------------------------------------------------------- dictionary_learning
def _trainer_config(dict_class: str, d_in: int, d_sae: int, **extra) -> dict[str, Any]:
    """The fields every `trainer.config` property of dictionary_learning writes that loaders read
    (trainers/top_k.py TopKTrainer.config, trainers/standard.py StandardTrainer.config, ...)."""
    trainer_class = {"AutoEncoder": "StandardTrainer", "AutoEncoderTopK": "TopKTrainer",
                     "BatchTopKSAE": "BatchTopKTrainer", "MatryoshkaBatchTopKSAE": "MatryoshkaBatchTopKTrainer",
                     "JumpReluAutoEncoder": "JumpReluTrainer", "GatedAutoEncoder": "GatedSAETrainer"}[dict_class]
    return {"trainer_class": trainer_class, "dict_class": dict_class, "activation_dim": d_in, "dict_size": d_sae,
            "lr": 1e-3, "steps": 100, "seed": 0, "device": "cpu", "layer": 1, "lm_name": "org/model",
            "wandb_name": trainer_class, "submodule_name": "resid_post_layer_1", **extra}


def random_dictionary_learning(dict_class: str, d_in: int, d_sae: int, k: int = 4, seed: int = 0,
                               group_sizes: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
    """A state dict with the keys and shapes of `dict_class`'s `state_dict()`."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.3):
        return torch.randn(*shape, generator=g) * s

    if dict_class == "AutoEncoder":  # dictionary.py AutoEncoder: bias, encoder (Linear), decoder (Linear, no bias)
        return {"bias": r(d_in, s=0.2), "encoder.weight": r(d_sae, d_in), "encoder.bias": r(d_sae, s=0.1),
                "decoder.weight": r(d_in, d_sae) * (torch.rand(1, d_sae, generator=g) + 0.5)}
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):  # buffers k, threshold; decoder Linear; b_dec
        return {"b_dec": r(d_in, s=0.2), "k": torch.tensor(k, dtype=torch.int), "threshold": torch.tensor(0.05),
                "decoder.weight": r(d_in, d_sae), "encoder.weight": r(d_sae, d_in), "encoder.bias": r(d_sae, s=0.1)}
    if dict_class == "MatryoshkaBatchTopKSAE":
        return {"W_enc": r(d_in, d_sae), "b_enc": r(d_sae, s=0.1), "W_dec": r(d_sae, d_in), "b_dec": r(d_in, s=0.2),
                "k": torch.tensor(k, dtype=torch.int), "threshold": torch.tensor(0.05),
                "group_sizes": torch.tensor(list(group_sizes))}
    if dict_class == "JumpReluAutoEncoder":
        return {"W_enc": r(d_in, d_sae), "b_enc": r(d_sae, s=0.1), "W_dec": r(d_sae, d_in), "b_dec": r(d_in, s=0.2),
                "threshold": torch.rand(d_sae, generator=g) * 0.3}
    if dict_class == "GatedAutoEncoder":  # decoder_bias, encoder (Linear, no bias), r_mag, gate_bias, mag_bias, decoder
        return {"decoder_bias": r(d_in, s=0.2), "encoder.weight": r(d_sae, d_in), "r_mag": r(d_sae),
                "gate_bias": r(d_sae), "mag_bias": r(d_sae), "decoder.weight": r(d_in, d_sae)}
    raise ValueError(dict_class)


def write_dictionary_learning(folder: Path, dict_class: str, state: dict[str, torch.Tensor],
                              config: bool = True, **trainer_extra) -> Path:
    """dictionary_learning/training.py, trainSAE: `json.dump({"trainer": trainer.config}, f,
    indent=4)` to config.json, and `t.save({k: v.cpu() for k, v in ae.state_dict().items()},
    "ae.pt")`."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in state.items()}, folder / "ae.pt")
    if config:
        d_in, d_sae = _dims(dict_class, state)
        with open(folder / "config.json", "w") as f:
            json.dump({"trainer": _trainer_config(dict_class, d_in, d_sae, **trainer_extra)}, f, indent=4)
    return folder


def _dims(dict_class: str, state: dict[str, torch.Tensor]) -> tuple[int, int]:
    if "encoder.weight" in state:
        d_sae, d_in = state["encoder.weight"].shape
    else:
        d_in, d_sae = state["W_enc"].shape
    return int(d_in), int(d_sae)


def dictionary_learning_reference(dict_class: str, state: dict[str, torch.Tensor], x_BD: torch.Tensor):
    """(features, reconstruction) as `dictionary_learning.utils.load_dictionary(...)` returns
    them: AutoEncoder.from_pretrained normalizes decoder columns first (dictionary.py);
    AutoEncoderTopK.encode picks the top k per row (trainers/top_k.py); BatchTopKSAE and
    MatryoshkaBatchTopKSAE encode with their threshold (use_threshold=True default);
    JumpReluAutoEncoder does not subtract b_dec (apply_b_dec_to_input = False)."""
    s = {k: v.clone() for k, v in state.items()}
    if dict_class == "AutoEncoder":
        norms = s["decoder.weight"].norm(dim=0)
        if not torch.allclose(norms, torch.ones_like(norms)):
            s["decoder.weight"] = s["decoder.weight"] / norms
            s["encoder.weight"] = s["encoder.weight"] * norms[:, None]
            s["encoder.bias"] = s["encoder.bias"] * norms
        f = F.relu(F.linear(x_BD - s["bias"], s["encoder.weight"], s["encoder.bias"]))
        return f, F.linear(f, s["decoder.weight"]) + s["bias"]
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        post = F.relu(F.linear(x_BD - s["b_dec"], s["encoder.weight"], s["encoder.bias"]))
        if dict_class == "AutoEncoderTopK":
            top = post.topk(int(s["k"]), dim=-1, sorted=False)
            f = torch.zeros_like(post).scatter_(-1, top.indices, top.values)
        else:
            f = post * (post > s["threshold"])
        return f, F.linear(f, s["decoder.weight"]) + s["b_dec"]
    if dict_class == "MatryoshkaBatchTopKSAE":
        post = F.relu((x_BD - s["b_dec"]) @ s["W_enc"] + s["b_enc"])
        f = post * (post > s["threshold"])
        return f, f @ s["W_dec"] + s["b_dec"]
    if dict_class == "JumpReluAutoEncoder":
        pre = x_BD @ s["W_enc"] + s["b_enc"]
        f = F.relu(pre * (pre > s["threshold"]))
        return f, f @ s["W_dec"] + s["b_dec"]
    if dict_class == "GatedAutoEncoder":  # GatedAutoEncoder.encode / decode (from_pretrained changes nothing)
        x_enc = F.linear(x_BD - s["decoder_bias"], s["encoder.weight"])
        f = (x_enc + s["gate_bias"] > 0) * F.relu(s["r_mag"].exp() * x_enc + s["mag_bias"])
        return f, F.linear(f, s["decoder.weight"]) + s["decoder_bias"]
    raise ValueError(dict_class)


# ---------------------------------------------------------------------------------- Gemma Scope
def random_gemma_scope(d_in: int, d_sae: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(d_in, d_sae, generator=g) * 0.3, "W_dec": torch.randn(d_sae, d_in, generator=g) * 0.3,
            "b_enc": torch.randn(d_sae, generator=g) * 0.1, "b_dec": torch.randn(d_in, generator=g) * 0.2,
            "threshold": torch.rand(d_sae, generator=g) * 0.4}


def write_gemma_scope(path: Path, params: dict[str, torch.Tensor]) -> Path:
    """Gemma Scope's released params.npz: `np.savez` of float32 arrays W_enc, W_dec, b_enc, b_dec,
    threshold (the files SAELens's gemma_2_sae_huggingface_loader reads with np.load)."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: v.numpy().astype(np.float32) for k, v in params.items()})
    return path


def gemma_scope_reference(params: dict[str, torch.Tensor], x_BD: torch.Tensor):
    """The Gemma Scope tutorial's JumpReLUSAE: pre = x @ W_enc + b_enc; acts = (pre > threshold) *
    relu(pre); recon = acts @ W_dec + b_dec."""
    pre = x_BD @ params["W_enc"] + params["b_enc"]
    acts = (pre > params["threshold"]) * F.relu(pre)
    return acts, acts @ params["W_dec"] + params["b_dec"]


# --------------------------------------------------------------------- OpenAI sparse_autoencoder
OPENAI_SOURCE = "openai/sparse_autoencoder sparse_autoencoder/model.py @ 4965b941e9eb590b00b253a2c406db1e1b193942"


def random_openai(d_in: int, d_sae: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The tensors of an `Autoencoder(n_latents=d_sae, n_inputs=d_in)`, randomised."""
    g = torch.Generator().manual_seed(seed)
    return {"pre_bias": torch.randn(d_in, generator=g) * 0.2, "latent_bias": torch.randn(d_sae, generator=g) * 0.1,
            "encoder.weight": torch.randn(d_sae, d_in, generator=g) * 0.3,
            "decoder.weight": torch.randn(d_in, d_sae, generator=g) * 0.3}


def write_openai(path: Path, tensors: dict[str, torch.Tensor], activation: str | None = "ReLU", k: int = 32) -> Path:
    """`torch.save(ae.state_dict(), path)` of OpenAI's Autoencoder (OPENAI_SOURCE): nn.Module's
    state dict (own parameters pre_bias, latent_bias; buffers stats_last_nonzero (long),
    latents_activation_frequency (ones), latents_mean_square; then the submodules: encoder.weight,
    the activation's own state_dict under 'activation.' (TopK.state_dict adds k and postact_fn),
    decoder.weight), plus what Autoencoder.state_dict adds: 'activation' (the class name) and
    'activation_state_dict'. `activation=None`: the first release's files, without either."""
    from collections import OrderedDict

    F_ = tensors["encoder.weight"].shape[0] if "encoder.weight" in tensors else tensors["latent_bias"].shape[0]
    sd: OrderedDict[str, Any] = OrderedDict()
    for name in ("pre_bias", "latent_bias"):
        if name in tensors:
            sd[name] = tensors[name]
    sd["stats_last_nonzero"] = torch.zeros(F_, dtype=torch.long)
    sd["latents_activation_frequency"] = torch.ones(F_, dtype=torch.float)
    sd["latents_mean_square"] = torch.zeros(F_, dtype=torch.float)
    if "encoder.weight" in tensors:
        sd["encoder.weight"] = tensors["encoder.weight"]
    act_state: OrderedDict[str, Any] = OrderedDict()
    if activation == "TopK":
        act_state.update(k=k, postact_fn="ReLU")
        sd["activation.k"], sd["activation.postact_fn"] = k, "ReLU"
    for name, t in tensors.items():
        if name not in sd:
            sd[name] = t
    if activation is not None:
        sd["activation"] = activation
        sd["activation_state_dict"] = act_state
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return path


def openai_reference(tensors: dict[str, torch.Tensor], x_BD: torch.Tensor):
    """Autoencoder.encode / decode with nn.ReLU and normalize=False (OPENAI_SOURCE):
    latents = relu(F.linear(x - pre_bias, encoder.weight, latent_bias)); recons =
    F.linear(latents, decoder.weight) + pre_bias."""
    latents = F.relu(F.linear(x_BD - tensors["pre_bias"], tensors["encoder.weight"], tensors["latent_bias"]))
    return latents, F.linear(latents, tensors["decoder.weight"]) + tensors["pre_bias"]


# ------------------------------------------------------------------------------- HF hub cache
def write_hf_snapshot(cache_dir: Path, repo_id: str, files: dict[str, Path], revision: str = "a" * 40,
                      ref: str = "main") -> Path:
    """A model repo in the layout huggingface_hub's cache keeps (what `hf_hub_download` leaves):
    `models--ORG--NAME/blobs/<sha256>`, `snapshots/<revision>/<path>` -> symlink to the blob,
    `refs/<ref>` (a branch, default main) holding the revision. `files` maps repo paths to local files to
    put there; a second call with another revision and ref adds a branch beside main."""
    import hashlib
    import os

    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(revision)
    snap = repo / "snapshots" / revision
    for rel, src in files.items():
        data = Path(src).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        target = snap / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        os.symlink(os.path.relpath(blob, target.parent), target)
    return snap


def offline_registry_cache(real_models, tmp_path: Path, monkeypatch) -> Path:
    """An offline HF cache (`tmp_path/hub`, made the hub's cache for the test) holding the tiny GPT-2
    as `gpt2`, the tiny NeoX as `EleutherAI/pythia-70m-deduped`, and a StandardSAE written by SAELens
    (also in `tmp_path/made`, d_sae 128) where the registry's release `gpt2-small-res-jb` keeps
    blocks.1.hook_resid_pre (its cfg.json names 'gpt2-small'; Neuronpedia's gpt2-small/1-res-jb)."""
    from huggingface_hub import constants
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    hub = tmp_path / "hub"
    for repo, family in (("gpt2", "gpt2"), ("EleutherAI/pythia-70m-deduped", "neox")):
        files = real_models.path(family)
        write_hf_snapshot(hub, repo, {p.name: p for p in files.iterdir() if p.suffix in (".json", ".safetensors")})
    sl = StandardSAE(StandardSAEConfig(d_in=64, d_sae=128))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in sl.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    sl.cfg.metadata.hook_name, sl.cfg.metadata.model_name = "blocks.1.hook_resid_pre", "gpt2-small"
    sl.save_model(tmp_path / "made")
    write_hf_snapshot(hub, "jbloom/GPT2-Small-SAEs-Reformatted", {
        f"blocks.1.hook_resid_pre/{f}": tmp_path / "made" / f for f in ("cfg.json", "sae_weights.safetensors")})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    return hub


def hf_module_rows_of_cache(model_dir: Path, cache: Path, module_path: str, side: str = "output") -> torch.Tensor:
    """What the HF module at `module_path` outputs (`side="output"`, as sparsify's and dictionary_learning's
    forward hooks read an SAE's hookpoint) or takes in (`"input"`: its first positional argument, as a
    sparsify transcoder reads it) at every row a cache holds: the HF model run on each cached context."""
    from transformers import AutoModelForCausalLM

    from training.manifest import read_manifest
    from training.shards import load_tensors

    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    module = hf.base_model.get_submodule(module_path)
    rows = []
    for shard in read_manifest(cache).shards:
        t = load_tensors(cache / shard.file)
        got = {}

        def keep(m, args, out):
            x = args[0] if side == "input" else out
            got.setdefault("x", x[0] if isinstance(x, tuple) else x)

        handle = module.register_forward_hook(keep)
        try:
            with torch.no_grad():
                hf(t["context_tokens"].long())
        finally:
            handle.remove()
        rows.append(got["x"][t["seq_index"].long(), t["positions"].long()])
    return torch.cat(rows)


# ------------------------------------------------------------------------------------ SAELens, real sizes
def saelens_calibrated(kind: str, acts_ND: torch.Tensor, d_sae: int, *, l0: float = 64.0, k: int = 32,
                       hook_name: str = "blocks.1.hook_resid_pre", model_name: str = "gpt2", seed: int = 0):
    """A SAELens SAE object (`kind` "standard": ReLU, as gpt2-small-res-jb's; "topk": as OpenAI's v5
    TopK SAEs) of real width whose latents fire like a trained SAE's on the activations `acts_ND`:
    random unit decoder directions, the encoder their transpose, b_dec the mean activation, and each
    latent's threshold (b_enc) put at the quantile that gives it a power-law firing rate (rates sum
    to `l0` expected active latents per token; the rarest fire on about one row of `acts_ND`).
    Save it with SAELens's own `save_model(folder)`."""
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    N, D = acts_ND.shape
    g = torch.Generator().manual_seed(seed)
    dirs_FD = torch.randn(d_sae, D, generator=g)
    dirs_FD /= dirs_FD.norm(dim=1, keepdim=True)
    b_dec_D = acts_ND.float().mean(0)
    rate_F = 1.0 / (torch.arange(d_sae, dtype=torch.float64) + 10.0) ** 0.9
    rate_F = (rate_F * l0 / rate_F.sum()).clamp(max=0.5)[torch.randperm(d_sae, generator=g)]
    # row index of the (1 - rate) quantile of each latent's projection, among N sample rows
    above_F = (rate_F * N).round().clamp(min=1, max=N - 1).long()
    b_enc_F, scale_F = torch.empty(d_sae), torch.empty(d_sae)
    centred_ND = acts_ND.float() - b_dec_D
    for f0 in range(0, d_sae, 2048):
        proj_NB = centred_ND @ dirs_FD[f0:f0 + 2048].T
        desc_BN = proj_NB.T.sort(dim=1, descending=True).values
        b_enc_F[f0:f0 + 2048] = -desc_BN.gather(1, above_F[f0:f0 + 2048, None])[:, 0]
        scale_F[f0:f0 + 2048] = proj_NB.std(0)
    # pre-activations in units of each latent's spread, so that a TopK's k slots go to latents at
    # their own tail rather than to the few with the widest projections
    scale_F = scale_F.clamp(min=1e-6)
    if kind == "standard":
        sae = StandardSAE(StandardSAEConfig(d_in=D, d_sae=d_sae))
    elif kind == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=D, d_sae=d_sae, k=k))
    else:
        raise ValueError(f"kind {kind!r}: 'standard' or 'topk'")
    with torch.no_grad():
        sae.W_dec.copy_(dirs_FD)
        sae.W_enc.copy_(dirs_FD.T / scale_F)
        sae.b_enc.copy_(b_enc_F / scale_F)
        sae.b_dec.copy_(b_dec_D)
    sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name = hook_name, model_name
    return sae


# ------------------------------------------------------------------------------ Gemma Scope 2
def random_gemma_scope_2(d_in: int, d_sae: int, seed: int = 0, affine: bool = False) -> dict[str, torch.Tensor]:
    """A Gemma Scope 2 params.safetensors's tensors (lower-case names, as SAELens's
    gemma_3_sae_huggingface_loader reads them); `affine`: a transcoder's affine_skip_connection [d_in, d_out]."""
    g = torch.Generator().manual_seed(seed)
    p = {"w_enc": torch.randn(d_in, d_sae, generator=g) * 0.3, "w_dec": torch.randn(d_sae, d_in, generator=g) * 0.3,
         "b_enc": torch.randn(d_sae, generator=g) * 0.1, "b_dec": torch.randn(d_in, generator=g) * 0.2,
         "threshold": torch.rand(d_sae, generator=g) * 0.3}
    if affine:
        p["affine_skip_connection"] = torch.randn(d_in, d_in, generator=g) * 0.1
    return p


def write_gemma_scope_2(hub: Path, repo_id: str, folder: str, params: dict[str, torch.Tensor], layer: int,
                        model_name: str = "gemma-v3-270m-pt", hf_hook_point_in: str | None = None) -> Path:
    """A Gemma Scope 2 SAE folder in an HF-cache snapshot of `repo_id`: `params.safetensors` and the
    `config.json` SAELens's get_gemma_3_config_from_hf reads (architecture, model_name, the HF hook points
    and, for a transcoder, affine_connection; the values its _infer_gemma_3_raw_cfg_dict gives where a
    folder has none; `hf_hook_point_in` for an SAE: its module, e.g. model.layers.1.self_attn.o_proj.input)."""
    from safetensors.torch import save_file

    src = hub.parent / "gemma-scope-2-src" / folder
    src.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in params.items()}, str(src / "params.safetensors"))
    cfg: dict[str, Any] = {"architecture": "jump_relu", "model_name": model_name}
    if "transcoder" in folder:
        cfg.update(hf_hook_point_in=f"model.layers.{layer}.pre_feedforward_layernorm.output",
                   hf_hook_point_out=f"model.layers.{layer}.post_feedforward_layernorm.output",
                   affine_connection="affine_skip_connection" in params)
    else:
        cfg["hf_hook_point_in"] = hf_hook_point_in or f"model.layers.{layer}.output"
    (src / "config.json").write_text(json.dumps(cfg))
    return write_hf_snapshot(hub, repo_id, {f"{folder}/{n}": src / n for n in ("params.safetensors", "config.json")})


# gemma-2b-res-jb's one SAE with a registry norm_scaling_factor, as its HF repo and folder name it
JB_REPO, JB_FOLDER = "jbloom/Gemma-2b-Residual-Stream-SAEs", "gemma_2b_blocks.12.hook_resid_post_16384"
JB_ID = ("gemma-2b-res-jb", "blocks.12.hook_resid_post")


def save_unfolded_saelens_sae(folder: Path) -> Path:
    """A SAELens StandardSAE saved by SAELens itself with `expected_average_only_in` still set (its factor
    not folded: it lives in the registry only), hooked and named as gemma-2b-res-jb's SAE."""
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    sl = StandardSAE(StandardSAEConfig(d_in=16, d_sae=48, normalize_activations="expected_average_only_in"))
    with torch.no_grad():
        for p in sl.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.3)
    sl.cfg.metadata.hook_name, sl.cfg.metadata.model_name = JB_ID[1], "gemma-2b"
    sl.save_model(folder)
    return folder


def saelens_random(folder: Path, *, model_name: str, hook_name: str, d_in: int = 64, d_sae: int = 96,
                   seed: int = 0) -> Path:
    """A SAELens StandardSAE of random weights saved by SAELens's own `save_model`, its cfg.json naming
    `model_name` (a hub name or alias, or the checkpoint directory SAELens loaded) and `hook_name`."""
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name = hook_name, model_name
    sae.save_model(folder)
    return folder


# ------------------------------------------------------------------------------ SAELens, reconstructing
def _principal_pairs(x_ND: torch.Tensor, n_pc: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], encoder directions [D, 2 n_pc]): each of the top `n_pc` principal directions of `x_ND`
    and its negation, so that ReLU latents give back the projection exactly (one of each pair fires)."""
    mean_D = x_ND.float().mean(0)
    _, _, v_DD = torch.linalg.svd(x_ND.float() - mean_D, full_matrices=False)
    pcs_DP = v_DD[:n_pc].T
    return mean_D, torch.cat([pcs_DP, -pcs_DP], dim=1)


def saelens_pca(acts_ND: torch.Tensor, n_pc: int, *, hook_name: str, model_name: str, dead: int = 4):
    """A SAELens StandardSAE whose reconstruction is the projection of x on its top `n_pc` principal
    directions (EV = the variance they explain), plus `dead` latents that never fire: reconstruction,
    L0 and dead latents that mean something, without training. Save it with its own `save_model`."""
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    mean_D, enc_DF = _principal_pairs(acts_ND, n_pc)
    d_in = acts_ND.shape[1]
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=2 * n_pc + dead))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:, : 2 * n_pc] = enc_DF
        sae.W_dec.zero_()
        sae.W_dec[: 2 * n_pc] = enc_DF.T
        sae.W_dec[2 * n_pc:] = torch.eye(d_in)[torch.arange(dead) % d_in]
        sae.b_enc.zero_()
        sae.b_enc[2 * n_pc:] = -1.0  # W_enc's columns are zero there: never fire
        sae.b_dec.copy_(mean_D)
    sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name = hook_name, model_name
    return sae


def saelens_pca_transcoder(x_ND: torch.Tensor, y_NO: torch.Tensor, n_pc: int, *, hook_name: str, hook_name_out: str,
                           model_name: str):
    """A SAELens Transcoder from `hook_name` to `hook_name_out`: the latents are x's top `n_pc` principal
    coordinates (as `saelens_pca`), the decoder the least-squares map from them to y (b_dec its intercept)."""
    from sae_lens.saes.transcoder import Transcoder, TranscoderConfig

    mean_D, enc_DF = _principal_pairs(x_ND, n_pc)
    coords_NP = (x_ND.float() - mean_D) @ enc_DF[:, :n_pc]
    design = torch.cat([coords_NP, torch.ones(len(coords_NP), 1)], dim=1)
    fit = torch.linalg.lstsq(design, y_NO.float()).solution  # [n_pc + 1, O]
    tc = Transcoder(TranscoderConfig(d_in=x_ND.shape[1], d_sae=2 * n_pc, d_out=y_NO.shape[1],
                                     apply_b_dec_to_input=False))
    with torch.no_grad():
        tc.W_enc.copy_(enc_DF)
        tc.b_enc.copy_(-(mean_D @ enc_DF))  # latents read x - mean
        tc.W_dec.copy_(torch.cat([fit[:n_pc], -fit[:n_pc]]))
        tc.b_dec.copy_(fit[n_pc])
    tc.cfg.metadata.hook_name, tc.cfg.metadata.model_name = hook_name, model_name
    tc.cfg.metadata.hook_name_out = hook_name_out
    return tc
