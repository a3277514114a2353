"""The toy world's tiny TransformerLens model: its config, and loading the shipped weights.

Files in toyworld/assets/ (written by `python -m toyworld.train`):
    model.safetensors   the HookedTransformer parameters (fp32), TransformerLens names
    config.json         the HookedTransformerConfig fields it was built with
    tokenizer.json      the word-level tokenizer (see toyworld.tokenizer)
    training.json       how it was trained and what it reached (see also TRAINING.md)

Only safetensors and JSON are read; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

ASSETS_DIR = Path(__file__).parent / "assets"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINING_FILE = "training.json"
MODEL_NAME = "toyworld-tiny"


def is_installed_assets(directory: str | os.PathLike) -> bool:
    """Whether `directory` is the shipped model's folder of a pip-installed copy (no checkout
    around it): rewriting it would change the toy model under every store recorded with its hash."""
    in_checkout = (ASSETS_DIR.parent.parent / "pyproject.toml").is_file()
    return not in_checkout and Path(directory).resolve() == ASSETS_DIR.resolve()


# HookedTransformerConfig fields the toy model sets; everything else keeps TransformerLens defaults.
CONFIG_FIELDS = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab", "act_fn",
                 "normalization_type", "positional_embedding_type", "model_name", "seed",
                 "default_prepend_bos")


def default_config(d_vocab: int, n_layers: int = 4, d_model: int = 128, n_heads: int = 4, d_mlp: int = 512,
                   n_ctx: int = 128, seed: int = 0) -> dict:
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
    return {
        "n_layers": n_layers, "d_model": d_model, "n_heads": n_heads, "d_head": d_model // n_heads,
        "d_mlp": d_mlp, "n_ctx": n_ctx, "d_vocab": d_vocab, "act_fn": "gelu", "normalization_type": "LN",
        "positional_embedding_type": "standard", "model_name": MODEL_NAME, "seed": seed,
        "default_prepend_bos": True,
    }


def build_model(config: dict, tokenizer=None, device: str | None = None, dtype=None):
    """A HookedTransformer with `config` (dict of CONFIG_FIELDS) and the toy tokenizer, random init."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from toyworld.tokenizer import build_tokenizer

    unknown = set(config) - set(CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"toy model config has unknown fields {sorted(unknown)}; allowed: {CONFIG_FIELDS}")
    kw = dict(config)
    kw["device"] = device or "cpu"
    if dtype is not None:
        kw["dtype"] = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype))
    cfg = HookedTransformerConfig(**kw)
    import warnings

    with warnings.catch_warnings():
        # TransformerLens 3.x marks HookedTransformer deprecated in favour of TransformerBridge, which
        # wraps HF models only; a model defined by a config alone is a HookedTransformer.
        warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")
        model = HookedTransformer(cfg, tokenizer=tokenizer if tokenizer is not None else build_tokenizer(),
                                  move_to_device=True)
    return model


def parameter_state(model) -> dict:
    """The model's parameters (no buffers) as contiguous CPU fp32 tensors, ready for safetensors."""
    return {k: v.detach().to("cpu", dtype=v.dtype).contiguous().clone() for k, v in model.named_parameters()}


def save_model(model, directory: str | os.PathLike, extra_config: dict | None = None) -> None:
    """Write model.safetensors + config.json + tokenizer.json into `directory` (atomic per file)."""
    import tempfile

    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from toyworld.tokenizer import atomic_write_json, save_tokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {k: getattr(model.cfg, k) for k in CONFIG_FIELDS}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{WEIGHTS_FILE}.", suffix=".tmp")
    os.chmod(tmp, 0o644)  # by name: os.fchmod is POSIX-only before Python 3.13 (Windows)
    os.close(fd)
    try:
        try:
            save_file(parameter_state(model), tmp, metadata={"format": "pt", "model_name": cfg["model_name"]})
        except SafetensorError as e:  # its Rust writer's failed write (a full disk): the OSError any other gives
            raise OSError(f"could not write {directory / WEIGHTS_FILE}: {e}") from e
        os.chmod(tmp, 0o644)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, directory / WEIGHTS_FILE)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    atomic_write_json(directory / CONFIG_FILE, {**cfg, **(extra_config or {})})
    save_tokenizer(directory)


def load_model(device: str | None = None, dtype=None, directory: str | os.PathLike | None = None):
    """Load the shipped toy model (or one saved by `save_model` in `directory`) as a HookedTransformer.

    device: "cpu", "cuda", ... (default: cuda if available, else cpu). dtype: torch dtype or its name
    (default float32). The model is in eval mode with its tokenizer attached.
    """
    import torch
    from safetensors.torch import load_file

    from toyworld.tokenizer import load_tokenizer

    directory = Path(directory) if directory is not None else ASSETS_DIR
    weights = directory / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"no toy model weights at {weights}; train them with `python -m toyworld.train`")
    with open(directory / CONFIG_FILE, encoding="utf-8") as f:
        config = {k: v for k, v in json.load(f).items() if k in CONFIG_FIELDS}
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(config, tokenizer=load_tokenizer(directory), device=device, dtype=dtype)
    state = load_file(str(weights), device=str(device))
    params = dict(model.named_parameters())
    missing, unexpected = set(params) - set(state), set(state) - set(params)
    if missing or unexpected:
        raise ValueError(f"{weights} does not match the config in {directory / CONFIG_FILE}: "
                         f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}; retrain or re-copy the assets")
    with torch.no_grad():
        for k, p in params.items():
            if p.shape != state[k].shape:
                raise ValueError(f"{weights}: {k} has shape {tuple(state[k].shape)}, config says {tuple(p.shape)}")
            p.copy_(state[k].to(p.dtype))
    model.eval()
    return model


def weights_sha256(directory: str | os.PathLike | None = None) -> str:
    """SHA-256 of the shipped (or given) model.safetensors, for cache manifests."""
    path = (Path(directory) if directory is not None else ASSETS_DIR) / WEIGHTS_FILE
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
