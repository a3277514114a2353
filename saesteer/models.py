"""Model resolution: turn a model spec into a loaded TransformerLens model.

    load_model("toy")                       the shipped toy-world model (toyworld/assets/)
    load_model("toy:/path/to/dir")          a toy model saved by `python -m toyworld.train --out DIR`
    load_model("gpt2")                      a HuggingFace hub model (needs network or the HF cache)
    load_model("EleutherAI/pythia-70m@step3000")   hub model at a revision (branch, tag or commit)
    load_model("/path/to/checkpoint")       a local HF checkpoint directory (config.json + weights
                                            + tokenizer files), e.g. written by save_pretrained

Which TransformerLens class, and why
------------------------------------
- HF checkpoints (hub name or local directory) load through **TransformerBridge**
  (`TransformerBridge.boot_transformers`), one function for both: the only difference is the
  string handed to it (a hub id, or the directory's absolute path). TransformerLens 3.x
  recommends the Bridge (HookedTransformer is marked deprecated for removal in 4.0), and it is the
  only TransformerLens loader that takes a local directory or any hub name: it goes through HF's
  Auto classes, whereas `HookedTransformer.from_pretrained` accepts only names on TransformerLens's
  official list. The Bridge keeps HF's raw weights (logits equal HF's; we do not call
  `enable_compatibility_mode`, which would fold LayerNorm and centre weights and so change the
  residual stream an SAE is trained on). It provides everything downstream needs: to_tokens,
  to_string, run_with_hooks, hooks(), run_with_cache, forward(stop_at_layer=...), generate with a
  KV cache, hook_dict (with HookedTransformer-style aliases such as blocks.L.hook_resid_post),
  cfg.d_model, cfg.n_ctx, W_U, tokenizer.
- The toy model is a **HookedTransformer**: it is defined by a TransformerLens config and trained
  as one, and the Bridge only wraps HF models.

Raw weights by default; `process_weights=True` (`--process-weights`) the SAELens way
-------------------------------------------------------------------------------------------------
Every model loads with its checkpoint's weights unchanged, so SAEs are trained on the model's own
activations. SAELens users who load `HookedSAETransformer.from_pretrained(name)` get
TransformerLens's default weight processing (`saes.identity.PROCESSING`: fold_ln,
center_writing_weights, center_unembed, fold_value_biases), which centres the residual stream and
moves value biases out of hook_z: an SAE trained on raw activations reads other inputs there.
`load_model(spec, process_weights=True)` applies that same processing, less what `from_pretrained`
leaves out for the model (fold_ln on post-norm models such as OLMo-2: `saes.processing.skipped_flags`)
(HookedTransformer: `load_and_process_state_dict(state_dict(), **flags)`; TransformerBridge:
`enable_compatibility_mode(**flags)`), so SAEs match SAELens users who load models that way; the
flags applied are recorded on the model and in a cache's manifest (`model_processing`). The identity records it (`weights`, id suffix
'+processed'); `load_recorded_model` re-applies what a cache / SAE / store records, and a model
loaded the other way is refused. Each SAE's cfg.json says how to load the model
(`metadata.model_from_pretrained_kwargs`, for `HookedSAETransformer.from_pretrained_no_processing`).

Two Bridge behaviours downstream code should know (checked by tests/test_toyworld_models.py):
- a hook fires under its canonical name: a hook added at "blocks.0.hook_resid_post" sees
  `hook.name == "blocks.0.hook_out"`; compare against the name you asked for, not hook.name.
- `hooks()` / `run_with_hooks` silently ignore an unknown hook name; call `check_hook_names` first.
- `forward(stop_at_layer=L)` returns the residual stream after block L-1 for L < n_layers, as
  HookedTransformer does, but L == n_layers runs the whole model and returns logits (a
  HookedTransformer returns the final residual stream, before ln_final).

Identity (`saes.identity.ModelIdentity`): `load_model` attaches to every model it loads who the
model is (source, name, hub commit, absolute directory, SHA-256 of the weight files, widths);
`model_identity(model)` / `model_id(model)` read it. Caches, SAEs and feature stores record it;
`load_recorded_model` is how a command turns "the model this was made with" into a loaded model
(an explicit --model is checked against the record; a mismatch names both and OVERRIDE_FLAG).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from saes.identity import (
    ModelIdentity,
    ModelIdentityError,
    attach_identity,
    bridge_hub_name,
    check_same_model,
    identity_of_model,
    same_model,
    split_revision,
)
from saes.model_files import local_weights_sha256  # noqa: F401  (re-exported: callers import it from here)

TOY_SPECS = ("toy", "toyworld")
_INFO_ATTR = "_saesteer_model_info"
OVERRIDE_FLAG = "--allow-model-mismatch"  # the CLI flag that accepts a model other than the recorded one


@dataclass
class ModelInfo:
    """Where a loaded model came from. source: 'toy' | 'hub' | 'local'."""

    spec: str
    source: str
    name: str
    revision: str | None = None
    path: str | None = None
    engine: str = ""  # 'HookedTransformer' | 'TransformerBridge'


def _torch_dtype(dtype):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    name = aliases.get(str(dtype).lower().removeprefix("torch."), str(dtype).lower().removeprefix("torch."))
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16 (or a torch.dtype)")
    return value


def _default_device(device: str | None) -> str:
    if device is not None:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _looks_like_path(spec: str) -> bool:
    """A folder, not a hub name (org/name): hub names hold no backslash and no drive letter, so a
    Windows path (C:\\models\\x, .\\x) missing here is said to be missing, not looked up on the hub."""
    return (spec.startswith(("/", "./", "../", "~", ".\\", "..\\")) or os.sep + os.sep in spec or spec in (".", "..")
            or "\\" in spec or re.match(r"^[A-Za-z]:[\\/]", spec) is not None)


def resolve_spec(spec: str) -> ModelInfo:
    """Decide where `spec` points, without loading anything."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"model spec must be a non-empty string ('toy', an HF hub name or a directory), got {spec!r}")
    spec = spec.strip()
    if spec in TOY_SPECS:
        return ModelInfo(spec, "toy", "toyworld-tiny")
    if spec.startswith(("toy:", "toyworld:")):
        d = Path(spec.split(":", 1)[1]).expanduser().resolve()
        if not (d / "model.safetensors").is_file():
            raise FileNotFoundError(f"{spec!r}: no model.safetensors in {d}; write one with "
                                    f"`python -m toyworld.train --out {d}`")
        return ModelInfo(spec, "toy", "toyworld-tiny", path=str(d))
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(
                f"{spec!r} is a directory without config.json; a local HF checkpoint needs config.json, the "
                "weights (*.safetensors) and the tokenizer files, as written by save_pretrained()")
        return ModelInfo(spec, "local", p.resolve().name, path=str(p.resolve()))
    if _looks_like_path(spec) or p.exists():
        raise FileNotFoundError(f"model directory {spec!r} does not exist (or is not a directory)")
    name, revision = split_revision(spec)
    # a TransformerLens alias: the repo the Bridge loads, so that its commit is resolved and recorded
    return ModelInfo(spec, "hub", bridge_hub_name(name), revision=revision)


def load_model(spec: str, device: str | None = None, dtype=None, *, process_weights: bool = False):
    """Load a model by spec ('toy', 'toy:DIR', an HF hub name[@revision], or a local HF checkpoint
    directory). device: default cuda if available, else cpu. dtype: torch dtype or name
    ('float32', 'bfloat16', ...; default float32). process_weights: apply TransformerLens's default
    weight processing (see the module's docstring; default: the raw weights). Returns a
    HookedTransformer (toy) or a TransformerBridge (HF checkpoints), in eval mode."""
    info = resolve_spec(spec)
    device = _default_device(device)
    torch_dtype = _torch_dtype(dtype)
    if info.source == "toy":
        import toyworld

        model = toyworld.load_model(device=device, dtype=torch_dtype, directory=info.path)
        info.engine = "HookedTransformer"
    else:
        if info.source == "hub":  # load and record one commit, so the record pins the weights
            info.revision = hub_commit(info.name, info.revision) or info.revision
        # hub name and local directory take the same path; only the string differs
        model = _boot_hf(info.path if info.source == "local" else info.name, info.revision, device, torch_dtype,
                         spec)
        refuse_unsupported(model, spec)
        if info.source == "hub":  # its tokenizer read again by name reads this revision's files
            from training.packing import pin_tokenizer_revision

            pin_tokenizer_revision(getattr(model, "tokenizer", None), info.revision)
        info.engine = "TransformerBridge"
    if process_weights:
        _process_weights(model, spec)
    model.eval()
    setattr(model, _INFO_ATTR, info)
    attach_identity(model, _identity(model, info, "processed" if process_weights else "raw"))
    return model


def hub_commit(name: str, revision: str | None) -> str | None:
    """The commit that `revision` (default: the main branch) of hub model `name` points to, as
    huggingface_hub resolves it: from the hub, or offline from the local HF cache's refs. None when
    neither knows (the load then fails with HF's own message). transformers 5 no longer reports the
    commit it loaded (`config._commit_hash`), so it is resolved here, before loading, and the load
    is pinned to it."""
    import re

    full_commit = re.compile(r"[0-9a-f]{40}")
    if revision and full_commit.fullmatch(revision):  # already pinned: nothing to ask the hub
        return revision
    try:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(name, "config.json", revision=revision))
    except Exception:  # not cached offline, unknown repo, no network: the load reports it
        return None
    parts = path.parts
    if "snapshots" not in parts[:-1]:
        return None
    commit = parts[parts.index("snapshots") + 1]
    return commit if full_commit.fullmatch(commit) else None


def _process_weights(model, spec: str) -> None:
    """TransformerLens's default load-time weight processing, in place: `saes.identity.PROCESSING`
    less what `HookedTransformer.from_pretrained` leaves out for this model (`saes.processing.
    transformerlens_processing`: e.g. fold_ln on a post-norm model, whose norms sit after the
    sublayers, where folding would change its outputs); the Bridge's adapter then leaves out what
    it cannot do. Records the flags applied on the model (`saes.processing.APPLIED_ATTR`)."""
    import warnings

    from saes.processing import APPLIED_ATTR, transformerlens_processing

    flags = transformerlens_processing(model.cfg)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)  # TL's notes about what it folds
        if hasattr(model, "load_and_process_state_dict"):  # HookedTransformer (process_weights_ takes no fold_value_biases)
            model.load_and_process_state_dict(model.state_dict(), **flags)
        else:
            try:
                model.enable_compatibility_mode(disable_warnings=True, **flags)
            except RuntimeError as e:  # an architecture whose processed weights TransformerLens does not trust
                raise ValueError(f"model {spec!r}: TransformerLens cannot process its weights ({e}); load it without "
                                 f"--process-weights") from None
    adapter = getattr(model, "adapter", None)
    setattr(model, APPLIED_ATTR, {flag: on and (adapter is None or _adapter_applies(adapter, flag))
                                  for flag, on in flags.items()})


def _adapter_applies(adapter, flag: str) -> bool:
    """Whether TransformerBridge's `adapter` applies `flag` when asked: ProcessWeights skips the
    flags it declares unsupported, but Phi-3's adapter, which declares fold_ln so, folds its joint
    projections itself when fold_ln is asked for (preprocess_weights reads `_fold_ln_requested`):
    the flag must still be passed, and counts as applied."""
    if getattr(adapter, f"supports_{flag}", True):
        return True
    code = getattr(type(adapter).preprocess_weights, "__code__", None)
    return flag == "fold_ln" and code is not None and "_fold_ln_requested" in code.co_consts + code.co_names


def process_loaded_weights(model) -> None:
    """Apply `load_model(..., process_weights=True)`'s processing to a model `load_model` loaded raw,
    in place, and record it in its identity: for a caller that needs the model's config to decide
    (an SAE's `model_from_pretrained_kwargs` counted by `saes.processing.processing_wanted`)."""
    from dataclasses import replace

    ident = model_identity(model)
    if ident.processed:
        return
    _process_weights(model, model_info(model).spec)
    attach_identity(model, replace(ident, weights="processed"))


def refuse_unsupported(model, spec: str) -> None:
    """Refuse (ValueError) a checkpoint TransformerLens boots but cannot run: a post-LN OPT
    (do_layer_norm_before=false, as facebook/opt-350m). TransformerLens 3.9's OPT adapter maps its
    blocks as pre-LN with a final layer norm; on a post-LN OPT its forward fails (no final layer
    norm to map, or tensors of the wrong rank), so every command would fail later, less clearly."""
    config = getattr(getattr(model, "original_model", None), "config", None)
    if getattr(config, "model_type", None) == "opt" and getattr(config, "do_layer_norm_before", True) is False:
        raise ValueError(
            f"model {spec!r} is a post-LN OPT (do_layer_norm_before=false, as facebook/opt-350m), which "
            "TransformerLens's OPT adapter cannot run (it maps OPT as pre-LN, with a final layer norm); use a pre-LN "
            "OPT (facebook/opt-125m, opt-1.3b or larger)")


def refuse_unbootable(name_or_path: str, revision: str | None, spec: str) -> None:
    """Refuse (ValueError), before booting it, a checkpoint TransformerLens cannot load: Falcon's new
    decoder architecture (Falcon-40B, -180B, Falcon2-11B: grouped key/value heads, two norms per block).
    TransformerLens 3.9's Falcon adapter takes its multi_query flag for one key/value head and fails
    splitting the fused query_key_value (a bare RuntimeError, said as a saesteer bug)."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name_or_path, revision=revision)
    except Exception:  # noqa: BLE001 - not readable here: the boot says why
        return
    if getattr(config, "model_type", None) == "falcon" and getattr(config, "new_decoder_architecture", False):
        raise ValueError(f"model {spec!r} is a Falcon of the new decoder architecture (new_decoder_architecture: "
                         f"true, as Falcon-40B, -180B and Falcon2-11B), which TransformerLens's Falcon adapter cannot "
                         f"load; Falcon-7B's and Falcon-RW's layouts load")


def _boot_hf(name_or_path: str, revision: str | None, device: str, dtype, spec: str):
    import warnings

    import torch
    from transformer_lens.model_bridge import TransformerBridge

    refuse_unbootable(name_or_path, revision, spec)
    kwargs = {"device": device, "dtype": dtype or torch.float32}
    if revision:
        kwargs["revision"] = revision
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            return TransformerBridge.boot_transformers(name_or_path, **kwargs)
    except OSError as exc:  # HF's "couldn't connect" / "not a valid model identifier" / offline cache misses
        from saes.hf_offline import hf_offline

        hint = (" offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) and the model is not in the local HF "
                "cache;" if hf_offline("huggingface_hub") else "")
        # the library's first line only: its message goes on for lines of advice (the CLI prints one line)
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        raise OSError(
            f"could not load model {spec!r} through TransformerLens/HuggingFace:{hint} {why}. Use 'toy' for the "
            "built-in model, a local checkpoint directory, or a hub name reachable from this machine."
        ) from exc


# ----------------------------------------------------------------------------------------------
# identity

def model_info(model) -> ModelInfo:
    """The ModelInfo `load_model` attached; for models built elsewhere, one inferred from the config."""
    info = getattr(model, _INFO_ATTR, None)
    if info is not None:
        return info
    name = str(getattr(model.cfg, "model_name", type(model).__name__))
    info = ModelInfo(spec=name, source="object", name=name, engine=type(model).__name__)
    setattr(model, _INFO_ATTR, info)
    return info


def _hash_parameters(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        t = p.detach().to("cpu").contiguous()
        h.update(f"{name}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def _weights_digest(info: ModelInfo, model=None) -> str | None:
    """toy: SHA-256 of its model.safetensors; local directory: SHA-256 of its weight files; hub: None
    (the commit HF resolved stands for the weights); a model not loaded by `load_model`: SHA-256 of
    its parameters and buffers."""
    if info.source == "toy":
        import toyworld

        return toyworld.weights_sha256(info.path)
    if info.source == "local":
        return local_weights_sha256(info.path)
    if info.source == "object":
        return _hash_parameters(model)
    return None


def _identity(model, info: ModelInfo, weights: str = "raw") -> ModelIdentity:
    """Who `model`, loaded from `info`, is (its weights digest: `_weights_digest`)."""
    cfg = model.cfg
    return ModelIdentity(info.source, info.name, info.revision, info.path, _weights_digest(info, model),
                         int(cfg.d_model), int(cfg.n_layers), int(cfg.d_vocab), weights=weights)


def model_identity(model) -> ModelIdentity:
    """Who a loaded model is: the identity `load_model` attached (for a model built elsewhere, one
    computed from its parameters, kept on the model)."""
    ident = identity_of_model(model)
    if ident is None:
        ident = _identity(model, model_info(model))
        attach_identity(model, ident)
    return ident


def model_id(model) -> str:
    """A short stable identifier, e.g. 'toy:toyworld-tiny#sha256:51cd7d194fbc95cd',
    'hub:gpt2@607a30d783dfa663caf39e06633721c8d4cfcd7e', 'local:my-ckpt#sha256:...'."""
    return model_identity(model).id


def pick_record(candidates) -> tuple[ModelIdentity | None, str]:
    """From (identity or None, where it is recorded) pairs, e.g. a store's and its SAE's: the first
    record that can be re-loaded (records from older versions may lack a local model's directory),
    else the first known one, else (None, the places named together)."""
    known = [(ident, where) for ident, where in candidates if ident is not None]
    for ident, where in known:
        if ident.load_spec() is not None and same_model(ident, known[0][0]):
            return ident, where
    return known[0] if known else (None, " and ".join(where for _, where in candidates))


def start_model_spec(spec: str | None, dataset: str) -> str:
    """The model that starts a chain (cache, or train without a cache): `spec` (--model) when given;
    the toy model only for the toy corpus. Another dataset without --model is refused: the toy
    model would read the user's text through its word-level vocabulary without a word of warning."""
    if spec:
        return spec
    if dataset in TOY_SPECS:
        return "toy"
    raise ModelIdentityError(
        f"--dataset {dataset} is not the toy corpus: pass --model (an HF hub name or a local model directory) "
        f"for the model that reads it; the toy model is the default only for --dataset toy (--model toy runs it "
        f"on this text anyway)")


def load_recorded_model(
    recorded: ModelIdentity | None,
    spec: str | None,
    *,
    recorded_in: str,
    device: str | None = None,
    dtype=None,
    allow_mismatch: bool = False,
):
    """The model a command runs on: `spec` (--model) when given, refused (ModelMismatchError) if it
    is not the `recorded` model unless `allow_mismatch`; else the recorded model itself, re-loaded
    from its record (hub name at its commit, the absolute directory checked against its hash, or
    the toy model when the record says toy). Raises ModelIdentityError when there is no model to
    load (nothing recorded, or a record that cannot be re-loaded), saying to pass --model. The
    weights are processed when the record says so (`ModelIdentity.weights`), else raw (a caller
    that learns from the model's config that it wants them processed: `process_loaded_weights`)."""
    process = recorded is not None and recorded.processed
    if spec:
        model = load_model(spec, device=device, dtype=dtype, process_weights=process)
        if not allow_mismatch:
            check_same_model(recorded, model_identity(model), recorded_in=recorded_in, given_as=f"--model {spec}",
                             override=OVERRIDE_FLAG, fix="leave out --model to use the recorded one")
        return model
    target = _recorded_spec(recorded, recorded_in)
    model = load_model(target, device=device, dtype=dtype, process_weights=process)
    if not allow_mismatch:  # the directory may hold other files now
        check_same_model(recorded, model_identity(model), recorded_in=recorded_in, given_as=f"the model at {target}",
                         override=OVERRIDE_FLAG, fix="pass --model with the model it was made with")
    return model


def _recorded_spec(recorded: ModelIdentity | None, recorded_in: str) -> str:
    """The `load_model` spec that loads the recorded model again; ModelIdentityError (saying to pass
    --model) when there is none or its directory is gone."""
    if recorded is None:
        raise ModelIdentityError(f"{recorded_in} does not record which model it was made with; pass --model "
                                 f"('toy', an HF hub name, or a local model directory)")
    target = recorded.load_spec()
    if target is None:
        why = ("was recorded without its directory (by an older saesteer)" if recorded.source == "local"
               else "was built in code, not loaded by name")
        raise ModelIdentityError(f"{recorded_in} was made with model {recorded.describe()}, which {why}; pass "
                                 f"--model with that model (its directory or hub name)")
    if recorded.source in ("local", "toy") and recorded.path and not Path(recorded.path).is_dir():
        raise ModelIdentityError(f"{recorded_in} was made with model {recorded.describe()}, but {recorded.path} no "
                                 f"longer exists (moved or deleted?); pass --model DIR where the model is now")
    return target


def load_recorded_tokenizer(recorded: ModelIdentity | None, *, recorded_in: str):
    """The tokenizer `load_recorded_model(recorded, None, ...).tokenizer` would give, without loading
    the weights: the toy tokenizer, or HF's AutoTokenizer (from the directory, or the hub at the
    recorded commit; HF_HUB_OFFLINE is honoured) set up as TransformerBridge sets up its own. The
    identity is checked as load_recorded_model checks it: a toy or local directory by the SHA-256
    of its weight files (refused if they changed), a hub model by its recorded commit."""
    target = _recorded_spec(recorded, recorded_in)
    info = resolve_spec(target)
    if info.source == "toy":
        from toyworld.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(info.path)
    else:
        from transformer_lens.model_bridge.sources.transformers import setup_tokenizer
        from transformers import AutoTokenizer

        source = info.path if info.source == "local" else info.name
        tokenizer = setup_tokenizer(AutoTokenizer.from_pretrained(source, revision=info.revision))
        if info.source == "hub":
            from training.packing import pin_tokenizer_revision

            pin_tokenizer_revision(tokenizer, info.revision)
    found = ModelIdentity(info.source, info.name, info.revision, info.path, _weights_digest(info),
                          weights=recorded.weights)
    check_same_model(recorded, found, recorded_in=recorded_in, given_as=f"the model at {target}",
                     override=OVERRIDE_FLAG, fix="pass --model with the model it was made with")
    return tokenizer


def check_hook_names(model, names) -> None:
    """Raise `saes.hookpoints.UnknownHookError` (a ValueError) for a hook in `names` the model does
    not have (TransformerBridge's hooks() would ignore it silently)."""
    from saes.hookpoints import check_hooks

    check_hooks(model, names, who=model_info(model).name)
