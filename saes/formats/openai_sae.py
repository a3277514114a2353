"""OpenAI's sparse autoencoders (openai/sparse_autoencoder): one `*.pt` state dict per SAE.

As its code writes them (`sparse_autoencoder/model.py` at commit 4965b94, `Autoencoder.state_dict`,
saved with `torch.save(ae.state_dict(), f)`):
- `pre_bias [D]`, `latent_bias [F]`, `encoder.weight [F, D]` (a bias-free Linear), `decoder.weight
  [D, F]`; buffers `stats_last_nonzero [F]` (long), `latents_activation_frequency [F]`,
  `latents_mean_square [F]` (training statistics, unused by encode/decode);
- `activation`: the activation's class name, "ReLU" (absent in files of the first release) or
  "TopK", and `activation_state_dict` (TopK: `{"k": int, "postact_fn": "ReLU"}`).

`Autoencoder.encode`: latents = activation(encoder(x - pre_bias) + latent_bias); `decode`:
decoder(latents) + pre_bias. With activation "ReLU" that is our standard SAE (W_enc =
encoder.weight.T, b_enc = latent_bias, W_dec = decoder.weight.T, b_dec = pre_bias, b_dec
subtracted from the input): the v1/v4 GPT-2 releases (`paths.v1`, `paths.v4`).

`Autoencoder.from_state_dict` turns input normalisation on for every TopK file ("normalize =
activation_class_name == 'TopK'"; the v5 releases are "Layer normed inputs: true"): each input is
centred and divided by its own std (+1e-5) before encoding, and the reconstruction is scaled back
by that input's std and mean. Nothing is stored for it, and decoding depends on the input's
statistics, so our SAE classes cannot give the same outputs: TopK files are refused, as are
activations other than ReLU/TopK and tied decoders (which `from_state_dict` cannot load either).

The files record neither model nor hook point: pass `--model` and `--hook` (the releases read
GPT-2 small; paths.py names the locations: mlp_post_act -> blocks.L.mlp.hook_post, resid_delta_mlp
-> blocks.L.hook_mlp_out, ...). Read with `torch.load(weights_only=True)` only: a pickle that needs
anything but tensors, numbers, strings and plain containers is refused without running.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saes.formats.base import LoadedSAE, files_record, read_weights_only_pickle, record_model_and_hook, require_tensors
from saes.io import SAEFormatError, sae_from_sae_lens_dict

FORMAT = "openai"
WEIGHTS = ["pre_bias", "latent_bias", "encoder.weight", "decoder.weight"]
_STATS = ("stats_last_nonzero", "latents_activation_frequency", "latents_mean_square")  # training statistics
_ACTIVATION_KEYS = ("activation", "activation_state_dict")


def read_state(path: Path, source: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(other entries, activation class name, activation state) of an Autoencoder state dict file.
    A TopK activation also saves `activation.k` and `activation.postact_fn` (nn.Module.state_dict
    calls TopK.state_dict with that prefix), so entries are checked once the activation is known."""
    obj = read_weights_only_pickle(path, source)
    if not isinstance(obj, dict):
        raise SAEFormatError(f"{source}: {path.name} holds a {type(obj).__name__}, not a state dict; save it with "
                             f"torch.save(autoencoder.state_dict(), path)")
    if not {"pre_bias", "latent_bias"} & set(obj):
        raise SAEFormatError(
            f"{source}: {path.name} is not an OpenAI sparse_autoencoder state dict (that needs {', '.join(WEIGHTS)}; "
            f"it has {', '.join(map(str, sorted(obj, key=str)[:8])) or 'nothing'}). saesteer reads torch pickles only "
            f"as OpenAI Autoencoder state dicts or dictionary_learning's ae.pt; convert others to an SAE folder")
    activation = obj.get("activation", "ReLU")  # the first release saved no activation: nn.ReLU()
    act_state = obj.get("activation_state_dict") or {}
    if not isinstance(activation, str) or not isinstance(act_state, dict):
        raise SAEFormatError(f"{source}: 'activation' must be a class name and 'activation_state_dict' a dict, got "
                             f"{type(activation).__name__} and {type(act_state).__name__}")
    return {k: v for k, v in obj.items() if k not in _ACTIVATION_KEYS}, activation, dict(act_state)


def _check_tensors(tensors: dict[str, Any], source: str) -> tuple[int, int]:
    bad = [str(k) for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise SAEFormatError(f"{source}: entries {', '.join(bad[:5])} are not tensors; an Autoencoder state dict "
                             f"holds only tensors besides {' and '.join(_ACTIVATION_KEYS)}")
    if "decoder.linear.weight" in tensors and "decoder.weight" not in tensors:
        raise SAEFormatError(f"{source}: a tied decoder (decoder.linear.weight) is not supported; "
                             f"Autoencoder.from_state_dict cannot load it either")
    require_tensors(tensors, WEIGHTS, source, "OpenAI Autoencoder")
    unexpected = sorted(set(tensors) - set(WEIGHTS) - set(_STATS))
    if unexpected:  # from_state_dict loads strictly: it would refuse these too
        raise SAEFormatError(f"{source}: unexpected tensors {', '.join(unexpected[:5])} for an OpenAI Autoencoder "
                             f"(it has {', '.join(WEIGHTS + list(_STATS))})")
    enc_FD = tensors["encoder.weight"]
    if enc_FD.ndim != 2:
        raise SAEFormatError(f"{source}: encoder.weight must be a matrix [n_latents, n_inputs], got shape "
                             f"{tuple(enc_FD.shape)}")
    F_, D_ = enc_FD.shape
    want = {"decoder.weight": (D_, F_), "pre_bias": (D_,), "latent_bias": (F_,)}
    for name, shape in want.items():
        if tuple(tensors[name].shape) != shape:
            raise SAEFormatError(f"{source}: {name} has shape {tuple(tensors[name].shape)} but encoder.weight "
                                 f"{tuple(enc_FD.shape)} needs {shape}; the tensors do not belong together")
    return D_, F_


def load(
    path: Path, *, hook: str | None = None, model: str | None = None,
    device: torch.device | str | None = None, dtype: torch.dtype | None = None,
) -> LoadedSAE:
    path = path.resolve()
    source = f"{path} (OpenAI sparse_autoencoder)"
    tensors, activation, act_state = read_state(path, source)
    if activation == "TopK":
        raise SAEFormatError(
            f"{source}: a TopK(k={act_state.get('k', '?')}) Autoencoder, which Autoencoder.from_state_dict always "
            f"runs on layer-normed inputs (each input centred and scaled by its own std, the reconstruction scaled "
            f"back); saesteer's SAE classes have no per-input normalisation, so it is refused rather than loaded "
            f"with different outputs")
    if activation != "ReLU":
        raise SAEFormatError(f"{source}: activation {activation!r} is not supported (saesteer reads OpenAI "
                             f"Autoencoders with ReLU; TopK ones need input normalisation it does not have)")
    D_, F_ = _check_tensors(tensors, source)
    enc_FD = tensors["encoder.weight"]
    cfg: dict[str, Any] = {"architecture": "standard", "d_in": D_, "d_sae": F_, "apply_b_dec_to_input": True,
                           "dtype": str(enc_FD.dtype).removeprefix("torch."), "metadata": {}}
    state = {"W_enc": enc_FD.T.contiguous(), "b_enc": tensors["latent_bias"],
             "W_dec": tensors["decoder.weight"].T.contiguous(), "b_dec": tensors["pre_bias"]}
    sae = sae_from_sae_lens_dict(cfg, state, device=device, dtype=dtype, source=source)
    prov: dict[str, Any] = {"source": {"format": FORMAT, "path": str(path), "activation": activation,
                                       "files": files_record(path.parent, [path.name])}}
    record_model_and_hook(sae, prov, source=source, hook=hook, model=model, recorded_hook=None, recorded_model=None)
    return LoadedSAE(sae, prov, str(path), FORMAT)
