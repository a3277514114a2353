"""What every reader of another library's SAE files shares.

- `LoadedSAE`: the SAE, its provenance and the canonical spec it was loaded from; `sae_of`
  unwraps it where a domain API takes an SAE or a `LoadedSAE`.
- `record_model_and_hook`: where a format records the model and hook point, that record is used
  (a different `--hook` is refused, naming both); where it does not, the user's values are used;
  both sides are kept in the provenance.
- `tl_hook_for_module`, `tl_hook_for_module_input`: TransformerLens hook name of what an HF module
  outputs (sparsify's hookpoints, dictionary_learning's submodules, `check_hook`'s hint: the one such map) or of a decoder layer's or MLP's input (dictionary_learning io="in",
  sparsify transcoders); `module_output_hook`: an MLP's / attention's output as a given model's Bridge
  names it (Gemma 2/3 and OLMo 2 norm it before hook_mlp_out), from its config (`module_output_hook_given`:
  from a loaded Bridge's block aliases, as `saes.hookpoints` asks it).
- `hf_cache_place`: (repo, folder in it) of a folder in an HF-cache snapshot (Gemma Scope, registry folders).
- `saelens_hook_of`: the hook point a SAELens config's SAE reads (its hf_hook_name where hook_name is not it).
- `read_plain_state_dict`: a torch pickle through `torch.load(weights_only=True)` only, and only
  if it holds a plain {name: tensor} state dict (`read_weights_only_pickle`: the load alone).
- `hf_model_identity`: the model identity of an HF model name a file records.
- `record_hf_tokenizer_bos`: whether text starts with BOS for an SAE trained on HF tokenizer output.
- `read_safetensors`, `require_tensors`: small checked readers.
- `same_tensor_hooks`: a hook and the one holding the same tensor (block N's resid_pre, block N-1's resid_post).
- Writing for another library (`sparsify.save`, `dictionary_learning.save`): `encoder_bias_for` (our input
  centring folded into the bias of an encoder that centres otherwise), `SHARE_FOLDER_HINT` (what to share
  instead of a form the library cannot hold).

Only JSON, safetensors, numpy .npz (allow_pickle=False) and weights-only torch pickles of plain
state dicts are read; nothing in a file can run code here.
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import torch

from saes.base import SAE
from saes.errors import note
from saes.fileio import sha256_file
from saes.identity import ModelIdentity, split_revision
from saes.io import SAEFormatError
from saes.model_files import cache_folder_repo


class LoadedSAE(NamedTuple):
    """An SAE from any supported source.

    `spec` re-resolves to the same SAE (an absolute path, or a `sae_lens:` registry id), so a
    feature store can record it. `provenance` travels beside the SAE, never on it: pass the
    `LoadedSAE` itself where the recorded model is checked (`saes.identity.identity_of_sae`)."""

    sae: SAE
    provenance: dict[str, Any]
    spec: str
    format: str


def sae_of(sae: SAE | LoadedSAE) -> SAE:
    """The SAE itself, given bare or loaded beside its provenance (domain APIs take either)."""
    return sae.sae if isinstance(sae, LoadedSAE) else sae


def files_record(folder: Path, names: list[str]) -> dict[str, str]:
    """{file name: SHA-256} of the files an SAE was read from (what the provenance records)."""
    return {n: sha256_file(folder / n) for n in names if (folder / n).is_file()}


def read_safetensors(path: Path, source: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(path.read_bytes())
    except (SafetensorError, ValueError) as e:
        raise SAEFormatError(f"{source}: {path.name} is not a readable safetensors file ({e}); it is truncated or "
                             f"corrupt - re-download or re-save it") from None


def require_tensors(weights: dict[str, Any], names: list[str], source: str, what: str) -> None:
    missing = [n for n in names if n not in weights]
    if missing:
        raise SAEFormatError(f"{source}: a {what} needs tensors {', '.join(names)}; missing {', '.join(missing)} "
                             f"(the file has: {', '.join(sorted(weights)) or 'nothing'})")


# --------------------------------------------------------------------------------- pickles
def read_plain_state_dict(path: Path, source: str) -> dict[str, torch.Tensor]:
    """A torch-saved {name: tensor} dict, read with `torch.load(weights_only=True)`.

    weights_only's unpickler builds only tensors and plain containers and never calls anything
    a file names, so a malicious pickle fails here without running. A pickle that holds anything
    but a flat dict of tensors (a whole module, an optimizer checkpoint, ...) is refused."""
    obj = read_weights_only_pickle(path, source)
    if not isinstance(obj, dict) or not obj:
        raise SAEFormatError(f"{source}: {path.name} holds a {type(obj).__name__}, not a state dict "
                             f"({{name: tensor}}); save it with torch.save(module.state_dict(), path)")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise SAEFormatError(f"{source}: {path.name} is not a plain state dict: entries {', '.join(bad[:5])} are not "
                             f"tensors named by strings; save it with torch.save(module.state_dict(), path)")
    return obj


def read_weights_only_pickle(path: Path, source: str) -> Any:
    """What a torch pickle holds, read with `torch.load(weights_only=True)` only: tensors, numbers,
    strings and plain containers; anything else is refused without running (see above)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, AttributeError) as e:
        raise SAEFormatError(
            f"{source}: {path.name} is not a plain state dict of tensors, refused without running it "
            f"(torch.load(weights_only=True) said: {_unpickling_reason(e)[:200]}). Only files saved as "
            f"torch.save(module.state_dict(), ...) are read; convert other pickles in a Python session you trust"
        ) from None


def _unpickling_reason(e: BaseException) -> str:
    """The line of torch's error that says what the file held ("Trying to load unsupported GLOBAL
    posix.system ..."), not its preamble, which suggests retrying with weights_only=False."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    why = [ln.split(". ")[0].rstrip(".") + "." for ln in lines if "GLOBAL" in ln]
    return (why or lines or [type(e).__name__])[0]


# --------------------------------------------------------------------------- model and hook
_LAYER = r"(?:layers|h|blocks|layer)\.(\d+)"
# The one map from HF module paths (sparsify's hookpoints "layers.N.mlp", dictionary_learning's submodules,
# what users type into --hook: "model.layers.N.self_attn", "transformer.h.N.attn") to the TransformerLens hook of
# the module's output. An MLP's or attention's hook is then asked of the model (`module_output_hook`,
# `module_output_hook_given`): where a block norms or scales it before the residual add it is attn/mlp.hook_out.
_MODULE_HOOKS = [
    (re.compile(rf"^(?:.+\.)?{_LAYER}$"), "blocks.{}.hook_resid_post"),  # a decoder layer's output
    (re.compile(rf"^(?:.+\.)?{_LAYER}\.mlp$"), "blocks.{}.hook_mlp_out"),
    # Llama/Gemma/OLMo/Granite self_attn, GPT-2/GPT-J attn, GPT-NeoX attention, Falcon/Bloom self_attention: the
    # first of the tuple it returns (Bloom's attention and MLP add the residual themselves: the Bridge's attn/mlp
    # hook_out is that sum, which `module_output_hook` picks there as on a normed block).
    # Not BERT/RoBERTa's `encoder.layer.N.attention` (their ForCausalLM too): it adds the residual and norms the sum
    (re.compile(rf"^(?:.+\.)?(?!layer\.\d+\.attention$){_LAYER}\.(?:self_attn|attn|attention|self_attention)$"),
     "blocks.{}.hook_attn_out"),
    # the block's first norm (Llama, Gemma, NeoX, Falcon, Bloom name it so): its output, weight applied, is the
    # Bridge's ln1 hook_out (HookedTransformer's hook_normalized comes before the weight: no counterpart there)
    (re.compile(rf"^(?:.+\.)?{_LAYER}\.input_layernorm$"), "blocks.{}.ln1.hook_out"),
    (re.compile(r"^(?:.+\.)?(?:embed_tokens|wte|embed_in)$"), "hook_embed"),
]
_MODULE_INPUT_HOOKS = [
    (re.compile(rf"^(?:.+\.)?{_LAYER}$"), "blocks.{}.hook_resid_pre"),  # a decoder layer's input
    # the MLP's input (its norm's output, weight applied): the hook TransformerBridge, which loads every HF
    # checkpoint here (saesteer/models.py), puts on the HF module's input; HookedTransformer has none
    (re.compile(rf"^(?:.+\.)?{_LAYER}\.mlp$"), "blocks.{}.mlp.hook_in"),
]


def hf_cache_place(folder: Path) -> tuple[str, str] | None:
    """(repo_id, folder inside the repo) of a folder in an HF-cache snapshot
    (`models--ORG--NAME/snapshots/REV/FOLDER`), as given or through links to it; None elsewhere."""
    return snapshot_place(Path(os.path.abspath(folder))) or snapshot_place(Path(os.path.realpath(folder)))


def snapshot_place(path: Path) -> tuple[str, str] | None:
    """`hf_cache_place` of `path` as it is spelt (no link followed)."""
    parts = path.parts
    for i in range(len(parts) - 3, -1, -1):
        repo = cache_folder_repo(parts[i])
        if repo and parts[i + 1] == "snapshots":
            return repo, "/".join(parts[i + 3:])
    return None


# a vision or audio tower's layers (Gemma 3's and Llava's vision_tower, Qwen2-VL's visual.blocks.N.attn, Mllama's
# vision_model) are not the language model's blocks: no hook point of the language model holds what they output
_OTHER_TOWER = re.compile(r"(?:^|\.)(?:vision|visual|audio|image)\w*\.")


def tl_hook_for_module(module_path: str) -> str | None:
    """TransformerLens hook point that reads what an HF module outputs, e.g. 'layers.3' (a
    decoder layer, any HF architecture's list of layers) -> 'blocks.3.hook_resid_post',
    'h.5.mlp' -> 'blocks.5.hook_mlp_out', 'model.layers.2.self_attn' -> 'blocks.2.hook_attn_out' (an MLP's
    and attention's as TransformerLens names them: `module_output_hook` says which hook holds it on a given
    model); None when there is no exact counterpart (a vision or audio tower's module among them)."""
    if _OTHER_TOWER.search(module_path):
        return None
    for pattern, template in _MODULE_HOOKS:
        m = pattern.match(module_path)
        if m:
            return template.format(*m.groups())
    return None


def tl_hook_for_module_input(module_path: str) -> str | None:
    """TransformerLens hook point that reads what an HF module takes in: 'layers.3' ->
    'blocks.3.hook_resid_pre' (the residual stream before block 3), 'layers.3.mlp' ->
    'blocks.3.mlp.hook_in' (a TransformerBridge hook); None for any other module."""
    if _OTHER_TOWER.search(module_path):
        return None
    for pattern, template in _MODULE_INPUT_HOOKS:
        m = pattern.match(module_path)
        if m:
            return template.format(*m.groups())
    return None


# TransformerLens's names of what a block's MLP / attention adds to the residual stream, and the Bridge's hook of
# the HF module's own output
_MODULE_OUTPUT_HOOK = {"hook_mlp_out": "mlp.hook_out", "hook_attn_out": "attn.hook_out"}
_BLOCK_OUTPUT = re.compile(r"^blocks\.(\d+)\.(hook_mlp_out|hook_attn_out)$")


def module_output_hook(hook: str | None, *model_names: str | None) -> str | None:
    """`hook` derived from what an HF MLP or attention module outputs (`blocks.N.hook_mlp_out`,
    `blocks.N.hook_attn_out`), as the TransformerBridge of the model names that tensor: the first of
    `model_names` (the file's record, then the user's `--model`) whose config can be read.

    The module's own output is the Bridge's `blocks.N.mlp.hook_out` (`attn.hook_out`); `hook_mlp_out` is
    that tensor only where the block's adapter aliases it so. Where a block norms the module's output
    before the residual add (Gemma 2/3, OLMo 2: post_feedforward_layernorm) hook_mlp_out is the norm's
    output, and where it scales it (Granite: residual_multiplier) a hook of the block's own; sparsify and
    dictionary_learning read the module's output with a forward hook. Other names come back as given;
    so does `hook` when no config can be read (offline and not cached), with a note."""
    m = _BLOCK_OUTPUT.match(hook or "")
    names = [n for n in model_names if isinstance(n, str) and n and n != "toy"]
    if not m or not names:
        return hook
    module_hook = _MODULE_OUTPUT_HOOK[m[2]]
    aliases = next((a for a in (_bridge_block_aliases(n, _tokenizer_source(n)) for n in names) if a is not None),
                   None)
    if aliases is None:
        note(f"cannot tell from {names[0]}'s config (not on this machine and the hub not reachable, or of an "
             f"architecture TransformerBridge has no adapter for) whether {hook} is the module's own output; {hook} "
             f"is used. On a model whose blocks norm or scale it before the residual add (Gemma 2/3, OLMo 2, "
             f"Granite) the module's output is blocks.{m[1]}.{module_hook}: load the config once with network "
             f"(AutoConfig.from_pretrained({names[0]!r})) and the SAE reads the right one", stacklevel=3)
        return hook
    return module_output_hook_given(hook, aliases)


def module_output_hook_given(hook: str, block_aliases: dict[str, str] | None) -> str:
    """`hook` (`blocks.N.hook_mlp_out` / `hook_attn_out`, what an HF module outputs) on a Bridge whose blocks
    carry `block_aliases` (a loaded Bridge's `blocks[N].hook_aliases`): `hook` where it aliases the module's own
    output hook, else `blocks.N.mlp.hook_out` / `attn.hook_out`. No aliases (a HookedTransformer): `hook`."""
    m = _BLOCK_OUTPUT.match(hook)
    if not m or block_aliases is None:
        return hook
    module_hook = _MODULE_OUTPUT_HOOK[m[2]]
    return hook if block_aliases.get(m[2]) == module_hook else f"blocks.{m[1]}.{module_hook}"


def _normed_output_note(module_hook: str, given: str) -> str | None:
    """Why `given` (`blocks.N.hook_attn_out` / `hook_mlp_out`) is not the SAE's hook where `module_output_hook`
    derived the module's own output `blocks.N.attn.hook_out` / `mlp.hook_out` from the model's config (it does so
    only where the block norms or scales it): a user may have passed `given` before saesteer derived a hook. None
    for any other pair."""
    m = _BLOCK_OUTPUT.match(given)
    if not m or module_hook != f"blocks.{m[1]}.{_MODULE_OUTPUT_HOOK[m[2]]}":
        return None
    return (f"{module_hook} is right: the module's own output, which the SAE was trained on; this model norms or "
            f"scales it before the residual add (as Gemma 2/3, OLMo 2, Granite do) and {given} is the normed or "
            f"scaled one. Drop --hook")


@functools.lru_cache(maxsize=64)
def _bridge_block_aliases(model_name: str, source: tuple[Any, ...]) -> dict[str, str] | None:
    """TransformerBridge's block hook aliases (hook_mlp_out -> "mlp.hook_out", "ln2_post.hook_out", ...) on
    `model_name`'s architecture, from its HF config as the Bridge's boot reads it (fetched from the hub
    unless HF is offline, as loading the model would); None when the config cannot be had or TransformerLens
    has no adapter for it. `source` stamps the files (see `_tokenizer_source`)."""
    from saes.hf_offline import hf_offline

    try:
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory
        from transformer_lens.model_bridge.sources.transformers import (determine_architecture_from_hf_config,
                                                                        map_default_transformer_lens_config)
        from transformers import AutoConfig

        name, revision = _name_and_revision(model_name)
        hf_config = AutoConfig.from_pretrained(name, revision=revision, local_files_only=hf_offline())
        config = TransformerBridgeConfig.from_dict(dict(map_default_transformer_lens_config(hf_config).__dict__))
        config.architecture = determine_architecture_from_hf_config(hf_config)
        blocks = ArchitectureAdapterFactory.select_architecture_adapter(config).component_mapping["blocks"]
        return dict(getattr(blocks, "hook_aliases", None) or {})
    except Exception:  # noqa: BLE001 - a config that cannot be read here: the name as derived
        return None


class DecoderLayers(NamedTuple):
    """Where a model's decoder layers are among its base model's modules (the model's transformer without the
    LM head: what sparsify hooks, `model.base_model`)."""

    path: str  # the list of layers: "layers" (Llama, GPT-NeoX, ...), "h" (GPT-2, Falcon, Bloom), "decoder.layers"
    modules: frozenset[str]  # every module path of the base model


def hf_decoder_layers(model_name: str | None) -> DecoderLayers | None:
    """`model_name`'s decoder layers as sparsify's `get_layer_list` finds them (the one ModuleList of
    num_hidden_layers modules in the base model), from its HF config (a local folder, or the HF cache; nothing
    downloaded) with the model built on the meta device (no weights); None when no config is at hand."""
    if not model_name or model_name == "toy":
        return None
    return _hf_decoder_layers(model_name, _tokenizer_source(model_name))


@functools.lru_cache(maxsize=16)
def _hf_decoder_layers(model_name: str, source: tuple[Any, ...]) -> DecoderLayers | None:
    try:
        from transformers import AutoConfig, AutoModel

        name, revision = _name_and_revision(model_name)
        # trust_remote_code=False, not left unset: unset, transformers asks on the terminal whether to run a
        # config's own code, and a user answering y would run it for a module list
        config = AutoConfig.from_pretrained(name, revision=revision, local_files_only=True, trust_remote_code=False)
        with torch.device("meta"):
            base = AutoModel.from_config(config, trust_remote_code=False).base_model
        n = config.num_hidden_layers
    except Exception:  # noqa: BLE001 - no config here, or one transformers cannot build: not known
        return None
    lists = [path for path, module in base.named_modules()
             if isinstance(module, torch.nn.ModuleList) and len(module) == n]
    if len(lists) != 1:  # sparsify's get_layer_list refuses such a model too
        return None
    return DecoderLayers(lists[0], frozenset(path for path, _ in base.named_modules()))


# a SAELens config's `hf_hook_name` (the HF module its SAE was trained on, as Gemma Scope 2 records it) that
# names the MLP's real input: Gemma's pre-MLP norm's output, its weight applied (Gemma's post_attention_layernorm
# is the attention output's norm, not the MLP's input)
_HF_MLP_INPUT = re.compile(rf"^(?:.+\.)?{_LAYER}\.pre_feedforward_layernorm\.output$")


def saelens_hook_of(metadata: dict[str, Any]) -> tuple[str | None, str | None]:
    """(hook point, basis) a SAELens config's SAE reads: its `hook_name`, except where its `hf_hook_name`
    says the SAE was trained on the MLP's input (Gemma Scope 2's transcoders: `model.layers.N.
    pre_feedforward_layernorm.output`) while `hook_name` is `blocks.N.hook_mlp_in`, which the Bridge takes
    before that norm (the residual stream): then `blocks.N.mlp.hook_in`, the norm's output as the MLP
    reads it. `basis` says why, for messages; None when `hook_name` is used as it is."""
    hook, hf_hook = metadata.get("hook_name"), metadata.get("hf_hook_name")
    m = _HF_MLP_INPUT.match(hf_hook) if isinstance(hf_hook, str) else None
    if m and hook == f"blocks.{m[1]}.hook_mlp_in":
        return f"blocks.{m[1]}.mlp.hook_in", (f"its hf_hook_name {hf_hook}, the MLP's input after the norm; SAELens's "
                                             f"{hook} is the residual stream before it")
    return hook, None


def record_model_and_hook(
    sae: SAE,
    provenance: dict[str, Any],
    *,
    source: str,
    hook: str | None,
    model: str | None,
    recorded_hook: str | None,
    recorded_model: str | None,
    hook_basis: str | None = None,
    recorded_identity: ModelIdentity | None = None,
    from_module_output: bool = False,
) -> None:
    """Put the hook point and model into `sae.cfg.metadata` (what every command reads) and the
    provenance. The file's own record wins; a `hook` that contradicts it is refused.

    `hook_basis` says how `recorded_hook` was derived when the file names it in other terms
    (e.g. "sparsify hookpoint layers.3"). `recorded_identity` (`hf_model_identity` of the recorded
    name) becomes the provenance's `model_identity`, which every command checks the model against
    as it checks our own SAEs' (`saes.identity.identity_of_sae`). `from_module_output`: `recorded_hook` is what
    `module_output_hook` made of an HF module's output (sparsify, dictionary_learning), so a refused `--hook`
    of the block's normed output is told why."""
    if hook and recorded_hook and hook != recorded_hook:
        basis = f" ({hook_basis})" if hook_basis else ""
        raise SAEFormatError(f"{source} records hook point {recorded_hook}{basis}, but --hook says {hook}; "
                             + (from_module_output and _normed_output_note(recorded_hook, hook)
                                or f"drop --hook or pick the SAE trained on {hook}"))
    hook_name = recorded_hook or hook
    model_name = recorded_model or model
    md = sae.cfg.metadata
    if hook_name:
        md["hook_name"] = hook_name
    if model_name and not md.get("model_name"):
        md["model_name"] = model_name
    # Adapter for the model-identity record: `model` and `hook_name` are what saesteer.json holds
    # for SAEs trained here; a plain name (not a 'hub:'/'local:'/'toy:' id) identifies no weights.
    provenance.update(
        model=model_name, hook_name=hook_name,
        recorded={"model": recorded_model, "hook_name": recorded_hook, "hook_basis": hook_basis},
        given={"model": model, "hook_name": hook},
    )
    if recorded_identity is not None:
        provenance["model_identity"] = recorded_identity.to_json()


_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hf_model_identity(name: Any) -> ModelIdentity | None:
    """The model identity of a model name a library that reads HF checkpoints with their raw
    weights recorded (dictionary_learning's `lm_name`, sparsify's `model`): an HF hub repo
    'ORG/NAME' (any revision), or an absolute checkpoint directory; None for anything else (a bare
    name could be an alias of any model)."""
    if not isinstance(name, str) or not name:
        return None
    if os.path.isabs(name):
        return ModelIdentity("local", Path(name).name or name, path=name)
    return ModelIdentity("hub", name) if _HF_REPO.match(name) else None


# ---------------------------------------------------------------------------------- writing
SHARE_FOLDER_HINT = ("share it as a SAELens folder instead (`saesteer convert SAE --to saelens`; in Python "
                     "`saes.save_sae`), which SAELens and saesteer load")


def encoder_bias_for(state: dict[str, torch.Tensor], sae_centres: bool, writer_centres: bool) -> torch.Tensor:
    """b_enc for another library's encoder that subtracts b_dec from its input (`writer_centres`) or not, so
    that its pre-activations are ours: (x - s b_dec) W + b = (x - t b_dec) W + b', b' = b - (s - t) b_dec W.
    Folded in float64 and rounded to b_enc's dtype (equal up to float rounding; unchanged when s = t)."""
    b_enc = state["b_enc"]
    if sae_centres == writer_centres:
        return b_enc
    sign = 1.0 if sae_centres else -1.0
    return (b_enc.double() - sign * (state["b_dec"].double() @ state["W_enc"].double())).to(b_enc.dtype)


_RESID_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")


def same_tensor_hooks(hook: str) -> set[str]:
    """`hook` and the hook that carries the same activations: block N's input is block N-1's output
    (`blocks.N.hook_resid_pre` is `blocks.{N-1}.hook_resid_post`), the module whose output another
    library's hookpoint reads for an SAE on resid_pre (delphi's, sparsify's `layers.{N-1}`)."""
    m = _RESID_PRE.match(hook)
    return {hook, f"blocks.{int(m[1]) - 1}.hook_resid_post"} if m and int(m[1]) > 0 else {hook}


# what to do with a transcoder a reader cannot place (dictionary_learning io="in_and_out", a sparsify
# module whose output has no hook point)
TRANSCODER_HINT = ("saesteer reads other transcoders as SAELens transcoder folders (cfg.json with d_out and "
                   "metadata.hook_name_out; docs/formats.md (\"SAE folder\") in saesteer's source repository): save "
                   "its weights in that layout, or pass an SAE of one hook point")


def hf_tokenizer_adds_bos(model_name: str | None) -> bool | None:
    """Whether the HF tokenizer of `model_name` (a local checkpoint directory, or a hub model in the
    HF cache) starts a text with BOS by default; None when it is not at hand (nothing is downloaded).
    Asked once per tokenizer source in a process (loading a tokenizer takes a while, and a run folder
    holds one SAE per hookpoint): the source is the folder's files as they are now (`_tokenizer_source`)."""
    if not model_name or model_name == "toy":
        return None
    return _tokenizer_adds_bos(model_name, _tokenizer_source(model_name))


def _name_and_revision(model_name: str) -> tuple[str, str | None]:
    """(hub name or directory, revision) of a model as `--model` names it (`saes.identity.split_revision`;
    a directory, whose name may hold an @, is itself)."""
    if Path(model_name).expanduser().is_dir():
        return model_name, None
    return split_revision(model_name)


def _tokenizer_source(model_name: str) -> tuple[Any, ...]:
    """What `AutoTokenizer.from_pretrained(model_name, local_files_only=True)` reads, stamped: the local
    directory, else the HF cache's snapshot of the repo's revision (`NAME@REVISION`; default main; None
    before it is cached), with each file's name, size, mtime and inode. A folder's own mtime is not
    enough: `save_pretrained` rewrites files in place, which leaves it as it was. (A rewrite of the same
    size within one filesystem timestamp tick is not seen.)"""
    path = Path(model_name).expanduser()
    if path.is_dir():
        return ("dir", str(path.resolve()), _files_stamp(path))
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    name, revision = _name_and_revision(model_name)
    try:
        repo = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=name, repo_type="model")
    except ValueError:  # no hub name either: a folder of another machine ("/home/x/llama"), never cached here
        return ("missing", model_name, None)
    try:
        commit = (revision if revision and re.fullmatch(r"[0-9a-f]{40}", revision)
                  else (repo / "refs" / (revision or "main")).read_text(encoding="utf-8").strip())
        snapshot = repo / "snapshots" / commit
    except (OSError, ValueError):
        return ("hub", str(repo), None)
    return ("hub", str(snapshot), _files_stamp(snapshot) if snapshot.is_dir() else None)


def _files_stamp(folder: Path) -> tuple[tuple[str, int, int, int], ...]:
    """(name, size, mtime_ns, inode) of each file in `folder`, links followed (the HF cache's to blobs)."""
    stamp = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        try:
            st = entry.stat()
        except OSError:  # a dangling link
            continue
        if entry.is_file():
            stamp.append((entry.name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(stamp)


@functools.lru_cache(maxsize=64)
def _tokenizer_adds_bos(model_name: str, source: tuple[Any, ...]) -> bool | None:
    try:
        from transformers import AutoTokenizer

        name, revision = _name_and_revision(model_name)
        tok = AutoTokenizer.from_pretrained(name, revision=revision, local_files_only=True)
        ids = tok("a").input_ids
    except Exception:  # noqa: BLE001 - any tokenizer that cannot be read here: left to the model's default
        return None
    if not ids:  # no tokenizer files beside the config: transformers builds an empty tokenizer, which tells nothing
        return None
    return tok.bos_token_id is not None and ids[0] == tok.bos_token_id


def record_hf_tokenizer_bos(sae: SAE, provenance: dict[str, Any], model_name: str | None) -> None:
    """`metadata.prepend_bos` of an SAE trained on what the HF tokenizer makes of text by default
    (dictionary_learning's buffer, sparsify's chunks), which every stage follows (`saes.bos`).

    TransformerLens's default may differ: GPT-2's tokenizer adds no BOS, TransformerLens prepends
    one, and an SAE fed a BOS it never saw gets other activations at every position. Left unset
    (the model's default) when the tokenizer is not at hand, with a note: that default may be the
    wrong one (GPT-2 from the hub, not yet cached); the provenance says which."""
    adds = hf_tokenizer_adds_bos(model_name)
    provenance["source"]["prepend_bos"] = ("as the HF tokenizer of the model adds it" if adds is not None else
                                           "unknown (the model's tokenizer was not at hand): the model's default")
    if adds is not None:
        sae.cfg.metadata["prepend_bos"] = adds
    elif model_name and model_name != "toy":
        name, revision = _name_and_revision(model_name)
        load = f"{name!r}" + (f", revision={revision!r}" if revision else "")
        note(f"{provenance['source'].get('path', 'this SAE')}: {model_name}'s HF tokenizer is not on this machine "
             f"(nothing is downloaded), so whether this SAE's training text started with BOS is unknown; text gets "
             f"the model's default BOS, which TransformerLens may add where the tokenizer does not (GPT-2). Load the "
             f"tokenizer once with network (AutoTokenizer.from_pretrained({load})), or choose BOS explicitly",
             stacklevel=3)
