"""saprmarks/dictionary_learning folders: `ae.pt` (a torch-saved state dict) + `config.json`.

As dictionary_learning writes them (`dictionary_learning/training.py`, `trainSAE`): `config.json`
is `{"trainer": trainer.config, "buffer": buffer.config}` (trainer: `dict_class`, `activation_dim`,
`dict_size`, `k`, `layer`, `lm_name`, `submodule_name`, ...); `ae.pt` is
`torch.save({k: v.cpu() for k, v in ae.state_dict().items()})`. With `save_steps`, trainSAE also
writes `checkpoints/ae_STEP.pt` (the same state dict midway; biases in the model's units, as the
final one), whose config.json is one folder up. A state dict is read with
`torch.load(weights_only=True)` and only as a plain {name: tensor} dict (`base.read_plain_state_dict`).

The classes, as `dictionary_learning.utils.load_dictionary` loads them:
- `AutoEncoder` (dictionary.py): relu(encoder(x - bias)), decoder(f) + bias; keys `encoder.weight
  [F, D]`, `encoder.bias`, `decoder.weight [D, F]`, `bias [D]`. `from_pretrained` (through
  `load_dictionary`) rescales decoder columns to unit norm and the encoder to match, unless they
  already are; we do the same, so activations equal theirs.
- `AutoEncoderTopK` (trainers/top_k.py): per-token top-k of relu(encoder(x - b_dec)); keys
  `encoder.*`, `decoder.weight`, `b_dec`, `k`, `threshold` (unused by its default encode).
- `BatchTopKSAE` (trainers/batch_top_k.py): at inference relu(pre) * (relu(pre) > threshold), one
  scalar threshold -> our BatchTopK with that threshold for every latent.
- `MatryoshkaBatchTopKSAE` (trainers/matryoshka_batch_top_k.py): `W_enc [D, F]`, `b_enc`, `W_dec
  [F, D]`, `b_dec`, `k`, `threshold`, `group_sizes` -> our Matryoshka with cumulative widths.
- `JumpReluAutoEncoder` (dictionary.py): relu(pre * (pre > threshold)), pre = x @ W_enc + b_enc
  (no b_dec subtraction: `apply_b_dec_to_input = False`).
- `GatedAutoEncoder` (dictionary.py): x_enc = encoder(x - decoder_bias), on where x_enc + gate_bias
  > 0, value relu(exp(r_mag) x_enc + mag_bias); decoder(f) + decoder_bias -> SAELens's gated
  tensors, our `saes.gated.GatedSAE` (values equal up to rounding: exp(r_mag) multiplies the
  encoder's columns there, x_enc here).
`AutoEncoderNew` has no counterpart here and is refused.

`save` writes the other way, for dictionary_learning users: TopK as `AutoEncoderTopK`, BatchTopK and
Matryoshka of one threshold as `BatchTopKSAE` / `MatryoshkaBatchTopKSAE`, ReLU as `AutoEncoder` (a unit-norm
decoder) and the other threshold SAEs as `JumpReluAutoEncoder`.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import torch

from saes.fileio import atomic_write_bytes, building_folder, read_json
from saes.formats.base import (
    SHARE_FOLDER_HINT,
    TRANSCODER_HINT,
    LoadedSAE,
    encoder_bias_for,
    files_record,
    hf_model_identity,
    module_output_hook,
    read_plain_state_dict,
    record_hf_tokenizer_bos,
    record_model_and_hook,
    require_tensors,
    same_tensor_hooks,
    tl_hook_for_module,
    tl_hook_for_module_input,
)
from saes.io import (SAVE_TMP_MARK, SAEFormatError, remove_save_leftovers, sae_from_sae_lens_dict, sae_lens_config,
                     sae_state_dict)

FORMAT = "dictionary_learning"
WEIGHTS = "ae.pt"
CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
_CHECKPOINT = re.compile(r"^ae_(\d+)\.pt$")  # trainSAE(save_steps=...): TRAINER/checkpoints/ae_STEP.pt
SUPPORTED = ("AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder",
             "GatedAutoEncoder")
# dictionary_learning's demo names a block's site "<site>_layer_<n>": our hook of each, read both ways
_SITES = {"hook_resid_post": "resid_post", "hook_mlp_out": "mlp_out", "hook_attn_out": "attn_out"}
_SUBMODULE_HOOKS = [(re.compile(rf"^{site}_layer_(\d+)$"), f"blocks.{{}}.{hook}") for hook, site in _SITES.items()]


def is_folder(path: Path) -> bool:
    return path.is_dir() and (path / WEIGHTS).is_file()


def is_weights_file(path: Path) -> bool:
    """`ae.pt`, or a checkpoint `checkpoints/ae_STEP.pt` trainSAE wrote midway."""
    return path.name == WEIGHTS or (path.parent.name == CHECKPOINTS and bool(_CHECKPOINT.match(path.name)))


def checkpoint_files(folder: Path) -> list[str]:
    """The trainSAE checkpoints in a `checkpoints` folder, by step (to name them when it is passed)."""
    if folder.name != CHECKPOINTS or not folder.is_dir():
        return []
    found = [p.name for p in folder.iterdir() if _CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda n: int(_CHECKPOINT.match(n).group(1)))


def _infer_class(state: dict[str, torch.Tensor], source: str) -> str:
    """The dict class a state dict belongs to, where its keys say it unambiguously."""
    keys = set(state)
    if keys & {"mag_bias", "gate_bias", "r_mag"}:
        return "GatedAutoEncoder"
    if "group_sizes" in keys:
        return "MatryoshkaBatchTopKSAE"
    if {"encoder.weight", "decoder.weight", "bias"} <= keys:
        return "AutoEncoder"
    if {"W_enc", "threshold"} <= keys and "k" not in keys:
        return "JumpReluAutoEncoder"
    if {"encoder.weight", "k"} <= keys:
        raise SAEFormatError(f"{source}: {WEIGHTS} is an AutoEncoderTopK or a BatchTopKSAE (same tensors, different "
                             f"encoders) and there is no {CONFIG} beside it to say which; put the {CONFIG} "
                             f"dictionary_learning wrote next to it")
    raise SAEFormatError(f"{source}: the tensors in {WEIGHTS} ({', '.join(sorted(keys))}) match no dictionary_learning "
                         f"class saesteer reads ({', '.join(SUPPORTED)})")


def _k(state: dict[str, torch.Tensor], trainer: dict[str, Any], source: str) -> int:
    # load_dictionary passes config k; from_pretrained refuses a different k in the state dict
    k_cfg, k_state = trainer.get("k"), state.get("k")
    if k_state is not None and k_state.numel() != 1:
        raise SAEFormatError(f"{source}: k in {WEIGHTS} must be a single number, got shape {tuple(k_state.shape)}")
    if k_cfg is not None and k_state is not None and int(k_cfg) != int(k_state.item()):
        raise SAEFormatError(f"{source}: {CONFIG} says k={k_cfg} but {WEIGHTS} holds k={int(k_state.item())}")
    k = k_cfg if k_cfg is not None else (k_state.item() if k_state is not None else None)
    if k is None:
        raise SAEFormatError(f"{source}: a top-k dictionary needs k (in {CONFIG}'s trainer or in {WEIGHTS})")
    return int(k)


def _scalar_threshold(state: dict[str, torch.Tensor], d_sae: int, source: str) -> torch.Tensor:
    thr = state["threshold"]
    if thr.numel() != 1:
        raise SAEFormatError(f"{source}: threshold in {WEIGHTS} must be one number, got shape {tuple(thr.shape)}")
    return thr.reshape(()).expand(d_sae).clone()


def _convert(dict_class: str, state: dict[str, torch.Tensor], trainer: dict[str, Any], source: str):
    """(SAELens-style cfg, state) of one dictionary class, plus whether to fold decoder norms."""
    if dict_class == "AutoEncoder":
        require_tensors(state, ["encoder.weight", "encoder.bias", "decoder.weight", "bias"], source, dict_class)
        F_, D_ = state["encoder.weight"].shape
        cfg = {"architecture": "standard", "d_in": D_, "d_sae": F_, "apply_b_dec_to_input": True}
        sd = {"W_enc": state["encoder.weight"].T, "b_enc": state["encoder.bias"], "W_dec": state["decoder.weight"].T,
              "b_dec": state["bias"]}
        return cfg, sd
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        names = ["encoder.weight", "encoder.bias", "decoder.weight", "b_dec"]
        require_tensors(state, names + (["threshold"] if dict_class == "BatchTopKSAE" else []), source, dict_class)
        F_, D_ = state["encoder.weight"].shape
        k = _k(state, trainer, source)
        sd = {"W_enc": state["encoder.weight"].T, "b_enc": state["encoder.bias"], "W_dec": state["decoder.weight"].T,
              "b_dec": state["b_dec"]}
        if dict_class == "AutoEncoderTopK":
            return {"architecture": "topk", "d_in": D_, "d_sae": F_, "k": k, "apply_b_dec_to_input": True}, sd
        sd["threshold"] = _scalar_threshold(state, F_, source)
        cfg = {"architecture": "jumprelu", "d_in": D_, "d_sae": F_, "apply_b_dec_to_input": True,
               "metadata": {"training_architecture": "batchtopk", "training_architecture_details": {"k": k}}}
        return cfg, sd
    if dict_class == "MatryoshkaBatchTopKSAE":
        require_tensors(state, ["W_enc", "b_enc", "W_dec", "b_dec", "threshold", "group_sizes"], source, dict_class)
        D_, F_ = state["W_enc"].shape
        sizes = [int(s) for s in state["group_sizes"].tolist()]
        if sum(sizes) != F_ or any(s <= 0 for s in sizes):
            raise SAEFormatError(f"{source}: group_sizes {sizes} must be positive and sum to dict_size {F_}")
        widths = [sum(sizes[: i + 1]) for i in range(len(sizes))]
        sd = {n: state[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
        sd["threshold"] = _scalar_threshold(state, F_, source)
        cfg = {"architecture": "jumprelu", "d_in": D_, "d_sae": F_, "apply_b_dec_to_input": True,
               "metadata": {"training_architecture": "matryoshka_batchtopk",
                            "training_architecture_details": {"k": _k(state, trainer, source),
                                                              "matryoshka_widths": widths}}}
        return cfg, sd
    if dict_class == "JumpReluAutoEncoder":
        require_tensors(state, ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"], source, dict_class)
        D_, F_ = state["W_enc"].shape
        cfg = {"architecture": "jumprelu", "d_in": D_, "d_sae": F_, "apply_b_dec_to_input": False}
        return cfg, {n: state[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
    if dict_class == "GatedAutoEncoder":
        names = ["encoder.weight", "decoder.weight", "decoder_bias", "gate_bias", "mag_bias", "r_mag"]
        require_tensors(state, names, source, dict_class)
        F_, D_ = state["encoder.weight"].shape
        cfg = {"architecture": "gated", "d_in": D_, "d_sae": F_, "apply_b_dec_to_input": True}
        return cfg, {"W_enc": state["encoder.weight"].T, "W_dec": state["decoder.weight"].T,
                     "b_dec": state["decoder_bias"], "b_gate": state["gate_bias"], "b_mag": state["mag_bias"],
                     "r_mag": state["r_mag"]}
    raise SAEFormatError(f"{source}: dict_class {dict_class!r} is not supported (saesteer reads {', '.join(SUPPORTED)})")


def _hook_from_submodule(name: Any, io: Any) -> str | None:
    """The hook point of what the buffer read: the demo's site names (`resid_post_layer_N`) or an HF
    module path (`gpt_neox.layers.N`, `model.layers.N.mlp`) of a module's output (`io: "out"`, the
    default), or the input of a decoder layer (`io: "in"`: the residual stream before block N)."""
    name = str(name or "")
    if io in (None, "out"):
        for pattern, template in _SUBMODULE_HOOKS:
            m = pattern.match(name)
            if m:
                return template.format(*m.groups())
        return tl_hook_for_module(name)
    return tl_hook_for_module_input(name) if io == "in" else None


def load(
    path: Path, *, hook: str | None = None, model: str | None = None,
    device: torch.device | str | None = None, dtype: torch.dtype | None = None,
) -> LoadedSAE:
    path = path.resolve()
    weights_path = path if path.is_file() else path / WEIGHTS
    checkpoint = _CHECKPOINT.match(weights_path.name) if weights_path.parent.name == CHECKPOINTS else None
    folder = weights_path.parent.parent if checkpoint else weights_path.parent  # where config.json is
    source = f"{weights_path} (dictionary_learning)"
    config: dict[str, Any] = {}
    if (folder / CONFIG).is_file():
        loaded = read_json(folder / CONFIG, "dictionary_learning config")
        if not isinstance(loaded, dict):
            raise SAEFormatError(f"{source}: {CONFIG} must hold a JSON object")
        config = loaded
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    buffer = config.get("buffer") if isinstance(config.get("buffer"), dict) else {}
    if buffer.get("io") == "in_and_out":
        raise SAEFormatError(f"{source}: {CONFIG}'s buffer has io='in_and_out': a transcoder trained to predict "
                             f"{trainer.get('submodule_name')!r}'s output from its input, not an SAE of one hook point; "
                             f"{TRANSCODER_HINT}")
    state = read_plain_state_dict(weights_path, source)
    dict_class = trainer.get("dict_class") or _infer_class(state, source)
    sl_cfg, sd = _convert(str(dict_class), state, trainer, source)
    sl_cfg["dtype"] = str(sd["W_enc"].dtype).removeprefix("torch.")
    sl_cfg.setdefault("metadata", {})
    for key, want in (("activation_dim", sl_cfg["d_in"]), ("dict_size", sl_cfg["d_sae"])):
        if trainer.get(key) is not None and int(trainer[key]) != int(want):
            raise SAEFormatError(f"{source}: {CONFIG} says {key}={trainer[key]} but the weights have {want}")
    sd = {n: t.contiguous() for n, t in sd.items()}
    sae = sae_from_sae_lens_dict(sl_cfg, sd, device=device, dtype=dtype, source=source)
    folded = False
    if dict_class == "AutoEncoder":  # as AutoEncoder.from_pretrained(normalize_decoder=True) does
        norms_F = sae.W_dec.detach().norm(dim=1)
        if not torch.allclose(norms_F, torch.ones_like(norms_F)):
            sae.fold_decoder_norm_()
            folded = True
    if buffer.get("ctx_len"):
        sae.cfg.metadata["context_size"] = int(buffer["ctx_len"])
    prov: dict[str, Any] = {"source": {
        "format": FORMAT, "path": str(weights_path), "dict_class": dict_class, "decoder_norm_folded": folded,
        "files": files_record(folder, [str(weights_path.relative_to(folder)), CONFIG]), "trainer": trainer,
        "buffer": buffer,
    }}
    if checkpoint:
        prov["source"]["checkpoint_step"] = int(checkpoint.group(1))
    submodule = trainer.get("submodule_name")
    derived = module_output_hook(_hook_from_submodule(submodule, buffer.get("io")), trainer.get("lm_name"), model)
    record_model_and_hook(sae, prov, source=source, hook=hook, model=model, recorded_hook=derived,
                          recorded_model=trainer.get("lm_name"), recorded_identity=hf_model_identity(trainer.get("lm_name")),
                          hook_basis=(f"dictionary_learning submodule {submodule!r}, io={buffer.get('io', 'out')!r}"
                                      if derived else None),
                          from_module_output=True)
    record_hf_tokenizer_bos(sae, prov, sae.cfg.metadata.get("model_name"))
    return LoadedSAE(sae, prov, str(weights_path if path.is_file() else folder), FORMAT)


# ---------------------------------------------------------------------------------- saving


def save(sae: Any, folder: str | Path) -> Path:
    """Write an SAE as dictionary_learning's `trainSAE` writes one: `folder/ae.pt` (a plain {name: tensor}
    state dict) + `config.json` (`trainer`: dict_class, sizes, k, lm_name, layer, submodule_name as its
    demo names the site; `buffer`: io "out"), which `dictionary_learning.utils.load_dictionary` loads.
    TopK is its `AutoEncoderTopK`; BatchTopK and Matryoshka its `BatchTopKSAE` and `MatryoshkaBatchTopKSAE`
    where every latent has the same inference threshold (those classes hold one number; the per-latent
    thresholds saesteer learns go to `JumpReluAutoEncoder`, which computes them exactly); a ReLU SAE its
    `AutoEncoder` where the decoder rows are unit-norm (`AutoEncoder.from_pretrained` rescales any other
    decoder, and the latents with it); the other threshold SAEs (JumpReLU, gated) and a ReLU SAE of another
    decoder its `JumpReluAutoEncoder` (threshold 0 computes relu). `dict_class_for` says which. Where the
    class centres the input otherwise than the SAE (JumpReluAutoEncoder never subtracts b_dec; the others
    always do), the centring is folded into the encoder bias (`base.encoder_bias_for`: equal up to float
    rounding, so it reads back with another fingerprint). The hook must be a block's resid_post / mlp_out /
    attn_out (what its buffer reads), or resid_pre of a block after the first (the previous block's output,
    read back as its resid_post); transcoders are refused.

    The pair is written together: a new folder is built beside under a temporary name and renamed into
    place; in an existing one (a trainer folder holding more, e.g. checkpoints/) the old config.json is
    removed before ae.pt is replaced, so a crash between the two leaves no config that names another
    class (load_dictionary then refuses the folder) rather than one that loads the new weights wrongly."""
    cfg = sae_lens_config(sae)
    meta = cfg["metadata"]
    arch = meta.get("training_architecture") or cfg["architecture"]
    hook = str(meta.get("hook_name") or "")
    # block N's resid_pre is what block N-1 outputs, its buffer's resid_post_layer_{N-1}
    sites = (re.match(rf"^blocks\.(\d+)\.({'|'.join(_SITES)})$", h) for h in same_tensor_hooks(hook))
    site = next((m for m in sites if m), None)
    if sae.is_transcoder or not site:
        what = "a transcoder" if sae.is_transcoder else f"an SAE at {hook or 'no recorded hook'}"
        raise SAEFormatError(f"{what} cannot be saved for dictionary_learning: its buffer reads one module's output, "
                             f"which saesteer names for blocks.N.hook_resid_post (also blocks.{{N+1}}.hook_resid_pre), "
                             f"hook_mlp_out and hook_attn_out; {SHARE_FOLDER_HINT}")
    state = sae_state_dict(sae)
    centres = sae.cfg.apply_b_dec_to_input
    trainer: dict[str, Any] = {"activation_dim": sae.d_in, "dict_size": sae.d_sae, "lm_name": meta.get("model_name"),
                               "layer": int(site.group(1)), "submodule_name": f"{_SITES[site.group(2)]}_layer_{site.group(1)}"}
    encoder = {"encoder.weight": state["W_enc"].T, "encoder.bias": encoder_bias_for(state, centres, True),
               "decoder.weight": state["W_dec"].T}
    dict_class = dict_class_for(sae)
    if dict_class == "AutoEncoderTopK":
        trainer.update(dict_class=dict_class, trainer_class="TopKTrainer", k=int(cfg["k"]))
        ae = {**encoder, "b_dec": state["b_dec"], "k": torch.tensor(int(cfg["k"]), dtype=torch.int),
              "threshold": torch.tensor(-1.0)}
    elif dict_class in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE"):  # one threshold, as their encode compares
        k = int(sae.cfg.k)
        one = {"k": torch.tensor(k, dtype=torch.int), "threshold": _one_threshold(state).float()}
        if dict_class == "BatchTopKSAE":
            trainer.update(dict_class=dict_class, trainer_class="BatchTopKTrainer", k=k)
            ae = {**encoder, "b_dec": state["b_dec"], **one}
        else:
            widths = [int(w) for w in sae.cfg.matryoshka_widths]
            sizes = [b - a for a, b in zip([0, *widths], widths)]
            trainer.update(dict_class=dict_class, trainer_class="MatryoshkaBatchTopKTrainer", k=k,
                           group_fractions=[s / sae.d_sae for s in sizes])
            ae = {"W_enc": state["W_enc"], "b_enc": encoder_bias_for(state, centres, True), "W_dec": state["W_dec"],
                  "b_dec": state["b_dec"], **one, "group_sizes": torch.tensor(sizes)}
    elif dict_class == "AutoEncoder":
        trainer.update(dict_class=dict_class, trainer_class="StandardTrainer")
        ae = {**encoder, "bias": state["b_dec"]}
    elif dict_class == "JumpReluAutoEncoder":
        trainer.update(dict_class=dict_class, trainer_class="JumpReluTrainer")
        threshold = state.get("threshold", torch.zeros(sae.d_sae, dtype=state["b_enc"].dtype))
        ae = {"W_enc": state["W_enc"], "b_enc": encoder_bias_for(state, centres, False), "W_dec": state["W_dec"],
              "b_dec": state["b_dec"], "threshold": threshold.clamp_min(0)}  # ours fires above max(threshold, 0)
    else:
        raise SAEFormatError(f"a {arch} SAE cannot be saved for dictionary_learning: it has no class computing it "
                             f"(saesteer writes TopK as AutoEncoderTopK, BatchTopK and Matryoshka as BatchTopKSAE and "
                             f"MatryoshkaBatchTopKSAE, ReLU as AutoEncoder and threshold SAEs as JumpReluAutoEncoder); "
                             f"{SHARE_FOLDER_HINT}")
    blob = io.BytesIO()  # torch.save's zip writer reports a failed write (a full disk) as a RuntimeError
    torch.save({k: v.contiguous() for k, v in ae.items()}, blob)  # naming no file: the bytes are written by us
    buffer = {"io": "out", **({"ctx_len": meta["context_size"]} if meta.get("context_size") else {})}
    config = (json.dumps({"trainer": trainer, "buffer": buffer}, indent=4) + "\n").encode()
    return _write_pair(Path(folder), blob.getvalue(), config)


def dict_class_for(sae: Any) -> str | None:
    """The dictionary_learning class `save` writes `sae` as (None: none computes it)."""
    arch, saved = sae.architecture, sae.saved_architecture()
    if saved == "topk":
        return "AutoEncoderTopK"
    if arch in ("batchtopk", "matryoshka_batchtopk") and _one_threshold(sae_state_dict(sae)) is not None:
        return "BatchTopKSAE" if arch == "batchtopk" else "MatryoshkaBatchTopKSAE"
    if saved == "standard" and _unit_rows(sae.W_dec.detach()):
        return "AutoEncoder"
    if saved in ("jumprelu", "standard"):
        return "JumpReluAutoEncoder"
    return None


def _one_threshold(state: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The one threshold every latent fires above (ours fire above max(threshold, 0), theirs above the
    threshold after a relu: the same), or None where the latents have their own."""
    thr_F = state["threshold"].detach().clamp_min(0)
    return thr_F[0].clone() if bool((thr_F == thr_F[0]).all()) else None


def _write_pair(folder: Path, weights: bytes, config: bytes) -> Path:
    """ae.pt and config.json into `folder` as one (see `save`)."""
    remove_save_leftovers(folder)  # what a killed save left beside it (a new folder is built as `save_sae` builds one)
    if folder.exists():
        if not folder.is_dir():
            raise FileExistsError(f"{folder} exists and is not a folder")
        (folder / CONFIG).unlink(missing_ok=True)  # never the old config beside the new weights
        atomic_write_bytes(folder / WEIGHTS, weights)
        atomic_write_bytes(folder / CONFIG, config)
        return folder
    with building_folder(folder, SAVE_TMP_MARK) as tmp:
        atomic_write_bytes(tmp / WEIGHTS, weights)
        atomic_write_bytes(tmp / CONFIG, config)
    return folder


def _unit_rows(W_dec_FD: torch.Tensor) -> bool:
    """Whether `AutoEncoder.from_pretrained` leaves this decoder as it is (its check, on float32 weights)."""
    norms_F = W_dec_FD.float().norm(dim=1)
    return bool(torch.allclose(norms_F, torch.ones_like(norms_F)))
