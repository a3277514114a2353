"""EleutherAI sparsify folders: one per hookpoint, `cfg.json` + `sae.safetensors`.

As sparsify writes them (`sparsify/sparse_coder.py`, `SparseCoder.save_to_disk`):
- `cfg.json`: `SparseCoderConfig.to_dict()` plus `d_in`: `activation` ("topk" | "groupmax"),
  `expansion_factor`, `normalize_decoder`, `num_latents` (0: d_in * expansion_factor), `k`,
  `multi_topk`, `skip_connection`, `transcode`.
- `sae.safetensors` (`safetensors.torch.save_model`): `encoder.weight [F, D]`, `encoder.bias [F]`,
  `W_dec [F, D]`, `b_dec [D]` (+ `W_skip [D, D]` with a skip connection).
- A training run writes the hookpoint folders under one directory with the run's `config.json`
  (`TrainConfig` / `RunConfig`: `model`, `dataset`, `hookpoints`, ...; `Trainer._checkpoint`).

Encoding (`SparseCoder.encode` + `fused_encoder`): top-k of relu((x - b_dec) @ encoder.weight.T +
encoder.bias), per token; decoding: sum of the chosen rows of W_dec scaled by their activations,
plus b_dec. That is our TopK SAE with W_enc = encoder.weight.T (the relu before or after the
top-k selects the same non-zero values).

Transcoders (`transcode: true`, sparsify/trainer.py: the hookpoint module's input predicts its
output) are our TopK transcoders: `SparseCoder.encode` does not subtract b_dec for them, so
apply_b_dec_to_input is false, d_out = d_in, and with `skip_connection` the forward adds
x @ W_skip.T (`W_skip [D, D]`) - our skip transcoder's term. The target hook is the module's
output's hook; the input hook is derived for a decoder layer ("layers.N": blocks.N.hook_resid_pre)
and an MLP ("layers.N.mlp": blocks.N.mlp.hook_in, TransformerBridge's hook of the HF module's
input: its norm's output, weight applied, which no HookedTransformer hook carries), else the user
gives `--hook`. An MLP's output is `blocks.N.hook_mlp_out`, or `blocks.N.mlp.hook_out` on a model that
norms or scales it before the residual add (Gemma 2/3, OLMo 2, Granite; `base.module_output_hook`, from the
run's model config); attention's likewise `hook_attn_out` or `attn.hook_out`.

Not representable, so refused: `activation: "groupmax"`, skip connections of SAEs (not
transcoders), signed top-k. The hookpoint is an HF module path ("layers.3"); its TransformerLens
hook is derived where exact (`base.tl_hook_for_module`), else the user gives `--hook`.

`save` writes the other way, for sparsify users: a TopK SAE or TopK transcoder as the hookpoint folder
above, at the hookpoint whose hook(s) are the SAE's.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from saes.errors import SaesteerWarning, note
from saes.fileio import atomic_save_safetensors, atomic_write_json, read_json
from saes.formats.base import (
    SHARE_FOLDER_HINT,
    TRANSCODER_HINT,
    LoadedSAE,
    encoder_bias_for,
    files_record,
    hf_decoder_layers,
    hf_model_identity,
    module_output_hook,
    read_safetensors,
    record_hf_tokenizer_bos,
    record_model_and_hook,
    require_tensors,
    same_tensor_hooks,
    tl_hook_for_module,
    tl_hook_for_module_input,
)
from saes.io import SAEFormatError, sae_from_sae_lens_dict, sae_lens_config, sae_state_dict

FORMAT = "sparsify"
CFG = "cfg.json"
WEIGHTS = "sae.safetensors"
RUN_CONFIG = "config.json"
_SEED_DIR = "seed"


def is_folder(path: Path) -> bool:
    return path.is_dir() and (path / CFG).is_file() and (path / WEIGHTS).is_file()


def hookpoint_folders(run_dir: Path) -> list[str]:
    """Hookpoint folders under a sparsify run directory (to name them when a run is passed)."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if is_folder(p))


def _hookpoint_and_run(folder: Path) -> tuple[str, Path]:
    """(hookpoint name, run directory) of a hookpoint folder; sparsify names extra seeds
    `HOOKPOINT/seedN`."""
    if folder.name.startswith(_SEED_DIR) and folder.name[len(_SEED_DIR):].isdigit():
        return folder.parent.name, folder.parent.parent
    return folder.name, folder.parent


def _transcoder_target(hookpoint: str, source: str) -> str:
    """The hook point a sparsify transcoder at `hookpoint` predicts: what the module outputs."""
    target = tl_hook_for_module(hookpoint)
    if target is None:
        raise SAEFormatError(f"{source}: a transcoder (transcode: true) predicts hookpoint {hookpoint!r}'s output, "
                             f"which has no exact TransformerLens hook point (saesteer derives one for a decoder layer "
                             f"'layers.N', an MLP 'layers.N.mlp' and attention 'layers.N.self_attn': the hook holding "
                             f"what the module outputs on the run's model); {TRANSCODER_HINT}")
    return target


def load(
    path: Path, *, hook: str | None = None, model: str | None = None,
    device: torch.device | str | None = None, dtype: torch.dtype | None = None,
) -> LoadedSAE:
    folder = path.resolve()
    source = f"{folder} (sparsify)"
    cfg = read_json(folder / CFG, "sparsify config")
    if not isinstance(cfg, dict) or "d_in" not in cfg:
        raise SAEFormatError(f"{source}: {CFG} must be a JSON object with d_in (as SparseCoder.save_to_disk writes)")
    d_in = int(cfg["d_in"])
    d_sae = int(cfg.get("num_latents") or 0) or d_in * int(cfg.get("expansion_factor", 32))
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise SAEFormatError(f"{source}: activation {activation!r} is not supported (only 'topk'); saesteer has no "
                             f"group-max SAE")
    transcoder = bool(cfg.get("transcode"))
    hookpoint, run_dir = _hookpoint_and_run(folder)
    weights = read_safetensors(folder / WEIGHTS, source)
    skip = bool(cfg.get("skip_connection")) or "W_skip" in weights
    if skip and not transcoder:  # an SAE whose output adds W_skip x: our SAEs have no skip term
        raise SAEFormatError(f"{source}: skip connections (W_skip) of an SAE (not a transcoder) are not supported")
    if cfg.get("signed"):
        raise SAEFormatError(f"{source}: signed top-k (signed: true) is not supported")
    require_tensors(weights, ["encoder.weight", "encoder.bias", "W_dec", "b_dec"] + (["W_skip"] if skip else []),
                    source, "sparsify transcoder" if transcoder else "sparsify SAE")
    enc_FD = weights["encoder.weight"]
    if enc_FD.ndim != 2 or tuple(enc_FD.shape) != (d_sae, d_in):
        raise SAEFormatError(f"{source}: encoder.weight has shape {tuple(enc_FD.shape)} but {CFG} (d_in={d_in}, "
                             f"num_latents={d_sae}) needs ({d_sae}, {d_in}); the config and weights do not belong together")
    sl_cfg: dict[str, Any] = {
        "architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": int(cfg.get("k", 32)),
        "apply_b_dec_to_input": True, "dtype": str(enc_FD.dtype).removeprefix("torch."), "metadata": {},
    }
    state = {"W_enc": enc_FD.T.contiguous(), "b_enc": weights["encoder.bias"], "W_dec": weights["W_dec"],
             "b_dec": weights["b_dec"]}
    target = None
    if transcoder:  # SparseCoder.encode skips the b_dec centring; forward adds x @ W_skip.T
        target = _transcoder_target(hookpoint, source)
        sl_cfg.update(architecture="topk_skip_transcoder" if skip else "topk_transcoder", d_out=d_in,
                      apply_b_dec_to_input=False)
        if skip:
            state["W_skip"] = weights["W_skip"]
    sae = sae_from_sae_lens_dict(sl_cfg, state, device=device, dtype=dtype, source=source)

    run_cfg: dict[str, Any] = {}
    if (run_dir / RUN_CONFIG).is_file():
        loaded = read_json(run_dir / RUN_CONFIG, "sparsify run config")
        run_cfg = loaded if isinstance(loaded, dict) else {}
    run_model = run_cfg.get("model") if isinstance(run_cfg.get("model"), str) else None
    # a transcoder reads the module's input, an SAE its output (sparsify/trainer.py's forward hook)
    derived = (tl_hook_for_module_input(hookpoint) if transcoder
               else module_output_hook(tl_hook_for_module(hookpoint), run_model, model))
    if transcoder and not derived and not hook:
        raise SAEFormatError(
            f"{source}: a transcoder (transcode: true) predicts hookpoint {hookpoint!r}'s output ({target}) from its "
            f"input, which has no hook point saesteer derives (it does for 'layers.N' -> blocks.N.hook_resid_pre and "
            f"'layers.N.mlp' -> blocks.N.mlp.hook_in); pass --hook naming the hook point that carries exactly "
            f"that input")
    prov: dict[str, Any] = {"source": {
        "format": FORMAT, "path": str(folder), "hookpoint": hookpoint, "files": files_record(folder, [CFG, WEIGHTS]),
        "sparsify_config": cfg, "run": {k: run_cfg.get(k) for k in ("model", "dataset", "ctx_len", "hookpoints")
                                        if k in run_cfg},
    }}
    basis = f"{'the input of ' if transcoder else ''}sparsify hookpoint {hookpoint!r}"
    record_model_and_hook(sae, prov, source=source, hook=hook, model=model, recorded_hook=derived,
                          recorded_model=run_model, recorded_identity=hf_model_identity(run_model),
                          hook_basis=basis if derived else None, from_module_output=not transcoder)
    if target is not None:
        sae.cfg.metadata["hook_name_out"] = module_output_hook(target, run_model, model)
    record_hf_tokenizer_bos(sae, prov, sae.cfg.metadata.get("model_name"))
    if not derived:
        prov["source"]["note"] = (f"hookpoint {hookpoint!r} has no exact TransformerLens counterpart for the "
                                  f"{'input' if transcoder else 'output'} read; hook from --hook")
    return LoadedSAE(sae, prov, str(folder), FORMAT)


# ---------------------------------------------------------------------------------- saving
def save(sae: Any, run_dir: str | Path, hookpoint: str) -> Path:
    """Write a TopK SAE or transcoder as sparsify writes one: `run_dir/hookpoint/` with `cfg.json` +
    `sae.safetensors` (what `SparseCoder.load_from_disk` and `SparseCoder.load_many(run_dir)` read) and the
    run's `config.json` naming the model and the hookpoints. `hookpoint` is the HF module the SAE reads:
    its output for an SAE (`h.1` / `layers.1` for blocks.1.hook_resid_post, `h.1.mlp` for
    blocks.1.hook_mlp_out), its input for a transcoder, which predicts its output (`h.1`: blocks.1.hook_resid_pre
    -> blocks.1.hook_resid_post). It must be the SAE's recorded hook(s), as sparsify and our reader derive
    them, so the SAE comes back at its hook (an SAE at blocks.N.hook_resid_pre is read at `h.{N-1}`'s output, the
    same tensor, and comes back at blocks.{N-1}.hook_resid_post). An SAE that does not centre its input has the centring sparsify
    applies folded into the bias (`base.encoder_bias_for`). Refused, naming why: what sparsify's top-k encoder
    cannot compute (threshold SAEs: BatchTopK and Matryoshka in their inference form, JumpReLU, gated; ReLU)
    and a transcoder whose output is not its input's size. Returns the hookpoint folder."""
    cfg = sae_lens_config(sae)
    meta = cfg["metadata"]
    arch = meta.get("training_architecture") or sae.architecture
    if sae.saved_architecture() != "topk":
        raise SAEFormatError(f"a {arch} {'transcoder' if sae.is_transcoder else 'SAE'} cannot be saved for sparsify: "
                             f"its SparseCoder encodes with a per-token top-k, which only a TopK SAE computes; "
                             f"{SHARE_FOLDER_HINT}")
    if sae.is_transcoder and sae.d_out != sae.d_in:
        raise SAEFormatError(f"a transcoder of d_in {sae.d_in} and d_out {sae.d_out} cannot be saved for sparsify: its "
                             f"transcoders predict a module's output of the input's size; {SHARE_FOLDER_HINT}")
    _check_hookpoint(sae, hookpoint, meta)
    run_cfg = Path(run_dir) / RUN_CONFIG
    hookpoints = [hookpoint]
    if run_cfg.is_file():  # another hookpoint of the same run: kept, the model must be the same
        earlier = read_json(run_cfg, "sparsify run config")
        if isinstance(earlier, dict) and earlier.get("model") not in (None, meta.get("model_name")):
            raise SAEFormatError(f"{run_cfg} is a run on model {earlier.get('model')!r}, but this SAE's model is "
                                 f"{meta.get('model_name')!r}; save it into another folder")
        hookpoints = sorted({*(earlier.get("hookpoints") or []), hookpoint}) if isinstance(earlier, dict) else hookpoints
    state = sae_state_dict(sae)
    # SparseCoder.encode subtracts b_dec from an SAE's input, never from a transcoder's (whose b_dec is the output's)
    b_enc = encoder_bias_for(state, sae.cfg.apply_b_dec_to_input, not sae.is_transcoder)
    tensors = {"encoder.weight": state["W_enc"].T.contiguous(), "encoder.bias": b_enc, "W_dec": state["W_dec"],
               "b_dec": state["b_dec"], **({"W_skip": state["W_skip"]} if "W_skip" in state else {})}
    folder = Path(run_dir) / hookpoint
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(folder / WEIGHTS, tensors)
    atomic_write_json(folder / CFG, {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True,
                                     "num_latents": sae.d_sae, "k": int(cfg["k"]), "multi_topk": False,
                                     "skip_connection": "W_skip" in state, "transcode": sae.is_transcoder,
                                     "d_in": sae.d_in})
    atomic_write_json(run_cfg, {"model": meta.get("model_name"), "hookpoints": hookpoints})
    return folder


def _check_hookpoint(sae: Any, hookpoint: str, meta: dict[str, Any]) -> None:
    """Refuse a hookpoint whose hook(s), as sparsify's trainer and our reader derive them, are not the SAE's."""
    model = meta.get("model_name")
    output = module_output_hook(tl_hook_for_module(hookpoint), model)
    if sae.is_transcoder:  # its trainer hooks the module's input and output
        pairs = [("is read as", tl_hook_for_module_input(hookpoint), "reads", meta.get("hook_name")),
                 ("predicts", output, "predicts", meta.get("hook_name_out"))]
        example = "'h.N' or 'layers.N' for blocks.N.hook_resid_pre -> blocks.N.hook_resid_post"
    else:
        pairs = [("is read as", output, "reads", meta.get("hook_name"))]
        example = ("'h.N' or 'layers.N' for blocks.N.hook_resid_post and blocks.{N+1}.hook_resid_pre (the same "
                   "tensor), 'h.N.mlp' for blocks.N.hook_mlp_out")
    kind = "transcoder" if sae.is_transcoder else "SAE"
    for derived_verb, derived, verb, hook in pairs:
        if not hook or derived not in same_tensor_hooks(hook):
            raise SAEFormatError(f"hookpoint {hookpoint!r} {derived_verb} {derived or 'no TransformerLens hook'}, but "
                                 f"the {kind} {verb} {hook or 'no recorded hook'}; give the HF module whose "
                                 f"{'input and output are' if sae.is_transcoder else 'output is'} the {kind}'s "
                                 f"(e.g. {example})")


# sparsify's hookpoints are module paths in the model's base model: its decoder layers' list ("layers" on most
# models) and each block's attention module, by model family where the model's config is not at hand
_FAMILY_LAYERS = [
    (re.compile(r"(?:^|/)(?:distil)?gpt2(?:$|-)", re.IGNORECASE), "h", "attn"),
    (re.compile(r"(?:^|/)gpt-(?:j|neo)-", re.IGNORECASE), "h", "attn"),  # GPT-J, GPT-Neo (not NeoX)
    (re.compile(r"(?:^|/)(?:falcon|bloom)", re.IGNORECASE), "h", "self_attention"),
    (re.compile(r"(?:^|/)(?:pythia|gpt-neox)", re.IGNORECASE), "layers", "attention"),
    (re.compile(r"(?:^|/)opt-\d", re.IGNORECASE), "decoder.layers", "self_attn"),
]
_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")


def default_hookpoint(sae: Any) -> str | None:
    """The hookpoint `save` puts an SAE at when none is given: sparsify's own name for a decoder layer of
    the SAE's model (`layers.N`, `h.N` on GPT-2, Falcon, Bloom: `hf_decoder_layers`, else by model family;
    `layers.N`, with a note, when neither knows the model), its MLP (`.mlp`) or attention, or the previous
    layer (whose output a resid_pre reads): the first whose hook(s) are the SAE's; None when none is."""
    meta = sae.cfg.metadata
    m = re.match(r"^blocks\.(\d+)\.", str(meta.get("hook_name") or ""))
    if m is None:
        return None
    n = int(m.group(1))
    model = meta.get("model_name")
    found = hf_decoder_layers(model)
    family = next((f for f in _FAMILY_LAYERS if isinstance(model, str) and f[0].search(model)), None)
    if found is not None:
        layers = found.path
        attention = next((a for a in _ATTENTION_NAMES if f"{layers}.{n}.{a}" in found.modules), "self_attn")
    else:
        layers, attention = family[1:] if family else ("layers", "self_attn")
    candidates = [f"{layers}.{n}", f"{layers}.{n}.mlp", f"{layers}.{n}.{attention}"] + ([f"{layers}.{n - 1}"] if n else [])
    if found is not None:  # only the model's own modules
        candidates = [c for c in candidates if c in found.modules]
    for hookpoint in candidates:
        try:
            with warnings.catch_warnings():  # a guess's notes (a model config not at hand for layers.N.mlp) are
                warnings.simplefilter("ignore", SaesteerWarning)  # noise; `save` checks the chosen one aloud
                _check_hookpoint(sae, hookpoint, meta)
        except SAEFormatError:
            continue
        if found is None and family is None and model != "toy":
            unknown = f"{model}'s config is not on this machine" if model else "the SAE records no model"
            note(f"hookpoint {hookpoint!r} is sparsify's name on most models, but {unknown}, so its module names "
                 f"are not known; if sparsify's model names them otherwise ({hookpoint.replace('layers.', 'h.', 1)} on GPT-2, Falcon, Bloom), give "
                 f"--hookpoint with that name")
        return hookpoint
    return None
