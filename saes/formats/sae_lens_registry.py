"""SAELens's pretrained registry: `sae_lens:RELEASE/SAE_ID` (e.g.
`sae_lens:gpt2-small-res-jb/blocks.8.hook_resid_pre`, `sae_lens:gemma-scope-2b-pt-res-canonical/
layer_20/width_16k/canonical`), or an HF repo SAELens can read: `sae_lens:ORG/REPO/FOLDER`.

Resolved by sae_lens's own loaders (`SAE.from_pretrained`: the release's repo and folder from its
`pretrained_saes.yaml`, the release's converter, files through `huggingface_hub.hf_hub_download`),
so a registry SAE loads here exactly as it does in SAELens, then becomes one of our classes. Files
come from the HF cache (`HF_HUB_CACHE` / `HF_HOME`); with `HF_HUB_OFFLINE=1`, or no network, a
cached SAE loads without the hub. sae_lens and huggingface_hub are imported inside the functions.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from saes.formats.base import LoadedSAE, hf_cache_place, record_model_and_hook, saelens_hook_of
from saes.io import SCALER_FILENAME, SAEFormatError

PREFIX = "sae_lens:"
FORMAT = "sae_lens_registry"


def split_ref(ref: str) -> tuple[str, str]:
    """(release, sae_id) of 'RELEASE/SAE_ID'. SAE ids may hold slashes; a release may be an
    'ORG/REPO' HF repo when it is not a registry name."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    parts = [p for p in ref.split("/")]
    if len(parts) < 2 or not all(parts):
        raise SAEFormatError(f"{PREFIX}{ref}: expected {PREFIX}RELEASE/SAE_ID (e.g. "
                             f"{PREFIX}gpt2-small-res-jb/blocks.8.hook_resid_pre) or {PREFIX}ORG/REPO/FOLDER")
    directory = get_pretrained_saes_directory()
    if parts[0] in directory:
        return parts[0], "/".join(parts[1:])
    if len(parts) >= 3:
        return "/".join(parts[:2]), "/".join(parts[2:])
    raise SAEFormatError(f"{PREFIX}{ref}: {parts[0]!r} is not a release of SAELens's registry (sae_lens "
                         f"{_version()}); see https://decoderesearch.github.io/SAELens/latest/pretrained_saes/ or give "
                         f"{PREFIX}ORG/REPO/FOLDER for an HF repo in SAELens's layout")


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("sae-lens")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - sae-lens is a dependency
        return "?"


def _repo_and_folder(release: str, sae_id: str) -> tuple[str, str]:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory, get_repo_id_and_folder_name

    if release in get_pretrained_saes_directory():
        return get_repo_id_and_folder_name(release, sae_id)
    return release, sae_id


def _overrides(release: str, sae_id: str) -> dict[str, Any]:
    """The registry's per-SAE config overrides (e.g. model_from_pretrained_kwargs), which SAELens
    applies to the config dict but a 6.x config class keeps only inside `metadata`."""
    from sae_lens.loading.pretrained_saes_directory import get_config_overrides, get_pretrained_saes_directory

    return dict(get_config_overrides(release, sae_id) or {}) if release in get_pretrained_saes_directory() else {}


def _reason(e: Exception) -> str:
    """The line of a loading error that says what is wrong: torch's state-dict error starts with a
    header naming nothing ("Error(s) in loading state_dict for JumpReLUSAE:"); its size-mismatch line
    names the files' shape and the one the release's config gives."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("size mismatch")), lines[0] if lines else type(e).__name__)


def norm_scaling_factor_of(repo_id: str, folder: str) -> tuple[str, float] | None:
    """(registry id, factor) where SAELens's registry lists repo_id/folder with a `norm_scaling_factor`
    (an `expected_average_only_in` SAE whose folder does not hold the factor, e.g. gemma-2b-res-jb):
    what `SAE.from_pretrained` folds into the weights."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    for release, info in get_pretrained_saes_directory().items():
        if info.repo_id != repo_id:
            continue
        for sae_id, path in info.saes_map.items():
            factor = (info.norm_scaling_factor or {}).get(sae_id)
            if path.strip("/") == folder.strip("/") and factor:
                return f"{PREFIX}{release}/{sae_id}", float(factor)
    return None


def registry_scaling_factor(folder: Path) -> dict[str, Any]:
    """{"registry_id", "factor"}: the `norm_scaling_factor` SAELens's registry lists for an
    `expected_average_only_in` SAE folder without activation_scaler.json (a registry SAE's folder in an
    HF-cache snapshot), what `SAE.from_pretrained` folds in; refused where the factor is nowhere."""
    place = hf_cache_place(folder)
    found = norm_scaling_factor_of(*place) if place else None
    if found is None:
        refuse_unscaled(str(folder), f"no {SCALER_FILENAME} beside it" + (
            f", and SAELens's registry lists no factor for {place[0]}/{place[1]}" if place else
            ", and it is not in an HF-cache snapshot of a repo SAELens's registry lists"))
    spec, factor = found
    return {"registry_id": spec, "factor": factor}


def refuse_unscaled(source: str, how: str) -> None:
    """An `expected_average_only_in` SAE without its scaling factor: its weights read activations multiplied
    by a factor that is not at hand; read raw, every latent sees inputs at the wrong scale."""
    raise SAEFormatError(
        f"{source}: normalize_activations=expected_average_only_in, and the factor its inputs were scaled by in "
        f"training is not here ({how}); read raw, every latent would see activations at the wrong scale. Load it "
        f"by its SAELens registry id if it has one (the registry holds the factor), or fold the factor in with "
        f"SAELens (sae.fold_activation_norm_scaling_factor(factor); sae.save_model(folder))")


def cached_revision(repo_id: str) -> str | None:
    """The commit the HF cache's `main` ref of `repo_id` points to (what offline loads read)."""
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
    try:
        return ref.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


@contextlib.contextmanager
def cached_tensor_shapes():
    """SAELens's gemma_3 converter (Gemma Scope 2) asks the hub for a params.safetensors's tensor shapes
    with HTTP range requests (`get_safetensors_tensor_shapes`), cached file or not: offline, a Gemma Scope 2
    SAE in the HF cache would not load. While SAELens loads, the shapes of a cached file are read from
    its own header; a file not in the cache is asked for as SAELens asks."""
    from huggingface_hub import try_to_load_from_cache
    from safetensors import safe_open
    from sae_lens.loading import pretrained_sae_loaders as loaders

    asked = loaders.get_safetensors_tensor_shapes

    def shapes(repo_id: str, filename: str) -> dict[str, list[int]]:
        cached = try_to_load_from_cache(repo_id, filename)
        if not isinstance(cached, str):
            return asked(repo_id, filename)
        with safe_open(cached, "pt") as f:
            return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118 - no iter

    loaders.get_safetensors_tensor_shapes = shapes
    try:
        yield
    finally:
        loaders.get_safetensors_tensor_shapes = asked


def load(
    ref: str, *, hook: str | None = None, model: str | None = None,
    device: torch.device | str | None = None, dtype: torch.dtype | None = None,
) -> LoadedSAE:
    from huggingface_hub import constants
    from huggingface_hub.errors import EntryNotFoundError
    from sae_lens import SAE as SaeLensSAE

    from saes.interop import from_sae_lens

    release, sae_id = split_ref(ref)
    spec = f"{PREFIX}{release}/{sae_id}"
    try:
        repo_id, folder = _repo_and_folder(release, sae_id)
    except ValueError as e:  # an id the release does not have
        raise SAEFormatError(f"{spec}: {str(e).splitlines()[0]}") from None
    from saes.formats import gemma_scope

    if gemma_scope.is_gemma_2_transcoder(repo_id):  # its converter reads a point before the MLP's input
        gemma_scope.refuse_transcoder(spec, repo_id, folder)
    try:
        with cached_tensor_shapes():
            sl = SaeLensSAE.from_pretrained(release, sae_id, device="cpu")
    except (OSError, EntryNotFoundError) as e:  # LocalEntryNotFoundError, OfflineModeIsEnabled, HTTP errors
        from saes.hf_offline import hf_offline

        why = (" and offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)" if hf_offline()
               else " and the hub was not reached")
        raise SAEFormatError(
            f"{spec}: could not read {repo_id}/{folder} ({type(e).__name__}); it is not in the HF cache at "
            f"{constants.HF_HUB_CACHE}{why}. "
            f"Download it once where the hub is reachable (python -c \"from sae_lens import SAE; "
            f"SAE.from_pretrained('{release}', '{sae_id}')\") or point HF_HUB_CACHE at a cache that holds it"
        ) from None
    except (ValueError, RuntimeError, KeyError) as e:  # bad config, weights that do not fit it
        raise SAEFormatError(f"{spec}: sae_lens could not load it: {_reason(e)}") from None
    if sl.cfg.normalize_activations == "expected_average_only_in":  # SAELens warned and left it unfolded
        refuse_unscaled(spec, "the registry has no norm_scaling_factor for it")
    try:
        sae = from_sae_lens(sl, dtype=dtype, source=spec)
    except ValueError as e:  # an architecture our classes do not have (abstopk, temporal, ...)
        raise SAEFormatError(f"{str(e)} (loaded by sae_lens as {type(sl).__name__})") from None
    if device is not None:
        sae = sae.to(device)
    md = sae.cfg.metadata
    prov: dict[str, Any] = {
        "source": {"format": FORMAT, "spec": spec, "release": release, "sae_id": sae_id, "repo_id": repo_id,
                   "folder": folder, "revision": cached_revision(repo_id), "sae_lens_version": _version(),
                   "sae_lens_class": type(sl).__name__},
    }
    from saes.formats.neuronpedia import SITE, neuronpedia_id_of

    np_id = neuronpedia_id_of(release, sae_id)
    if np_id:  # where its latents are browsed (and what `saesteer label --import-neuronpedia` checks rows against)
        prov["source"]["neuronpedia_id"] = np_id
        prov["source"]["neuronpedia_url"] = f"{SITE}/{np_id}"
    kwargs = _overrides(release, sae_id).get("model_from_pretrained_kwargs") or md.get("model_from_pretrained_kwargs")
    if kwargs:  # e.g. center_writing_weights: the SAE reads activations of a processed model
        prov["model_from_pretrained_kwargs"] = kwargs
    recorded_hook, basis = saelens_hook_of(md)
    record_model_and_hook(sae, prov, source=spec, hook=hook, model=model, recorded_hook=recorded_hook,
                          recorded_model=md.get("model_name"), hook_basis=basis)
    _follow_the_trainers_bos(sae, prov, release, spec)
    return LoadedSAE(sae, prov, spec, FORMAT)


# SAELens converters that write a constant `prepend_bos: True` for SAEs another library trained on what the
# model's HF tokenizer makes of text (dictionary_learning's ActivationBuffer: SAE Bench's Pythia and Gemma
# sweeps, andyrdt's Qwen2.5): that tokenizer says whether they saw BOS (Pythia's and Qwen2's add none)
_TRAINED_BY = {"dictionary_learning_1": "dictionary_learning"}


def _follow_the_trainers_bos(sae, prov: dict[str, Any], release: str, spec: str) -> None:
    """`metadata.prepend_bos` as the library that trained the SAE fed it (`_TRAINED_BY`), where SAELens's
    converter records otherwise, said in a note naming both: the same SAE read from its own files
    (`saes.formats.dictionary_learning`) gets the tokenizer's, and every stage follows the record (`saes.bos`).
    Kept as SAELens records it where the tokenizer is not on this machine (nothing is downloaded), said in a
    note. SAEs of every other converter keep SAELens's record."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from saes.errors import note
    from saes.formats.base import hf_tokenizer_adds_bos
    from saes.identity import bridge_hub_name

    info = get_pretrained_saes_directory().get(release)
    converter = getattr(info, "conversion_func", None)
    trainer = _TRAINED_BY.get(converter)
    recorded = sae.cfg.metadata.get("prepend_bos")
    if trainer is None or recorded is None:
        return
    model = bridge_hub_name(info.model)
    adds = hf_tokenizer_adds_bos(model)
    if adds is None:  # SAELens's constant, unchecked: said, as it may be wrong (Pythia's, Qwen2's add no BOS)
        note(f"{spec}: SAELens records prepend_bos={bool(recorded)} (a constant of its {converter} converter); "
             f"{trainer}, which trained this SAE, fed it text as {model}'s HF tokenizer makes it, which is not on this "
             f"machine to tell whether it starts with BOS: prepend_bos={bool(recorded)} is kept (download the "
             f"model's tokenizer and load the SAE again, or choose with --prepend-bos / GenerationConfig.prepend_bos)",
             stacklevel=3)
        return
    if adds == bool(recorded):
        return
    sae.cfg.metadata["prepend_bos"] = adds
    prov["source"]["prepend_bos"] = {"sae_lens": bool(recorded), "used": adds,
                                     "why": f"{trainer} fed {model}'s HF tokenizer output"}
    note(f"{spec}: SAELens records prepend_bos={bool(recorded)} (a constant of its {converter} converter), but "
         f"{trainer}, which trained this SAE, fed it text as {model}'s HF tokenizer makes it, which "
         f"{'starts' if adds else 'does not start'} with BOS: prepend_bos={adds} is used, as for the same SAE read "
         f"from its {trainer} files (--prepend-bos / GenerationConfig.prepend_bos choose otherwise)", stacklevel=3)

