"""Gemma Scope's original files: `params.npz` (e.g. `layer_20/width_16k/average_l0_71/params.npz`
in google/gemma-scope-2b-pt-res).

The arrays, as released (`np.savez`): `W_enc [D, F]`, `W_dec [F, D]`, `b_enc [F]`, `b_dec [D]`,
`threshold [F]` (SAELens's `gemma_2_sae_huggingface_loader` also accepts `w_`-prefixed names and an
all-ones `scaling_factor`). The JumpReLU of the Gemma Scope tutorial: pre = x @ W_enc + b_enc (no
b_dec subtraction), acts = relu(pre) * (pre > threshold), recon = acts @ W_dec + b_dec: our
JumpReLU SAE with `apply_b_dec_to_input = False`.

The file records neither model nor hook point; its place in Google's repos does
(`gemma-scope-2b-pt-res/layer_20/...` is `blocks.20.hook_resid_post` of gemma-2-2b). A params.npz
found in such a repo's folder (a clone, the HF cache's `models--google--gemma-scope-*/snapshots/REV/`,
or a folder linked to one) gets its hook and model from SAELens's own Gemma Scope config
(`get_gemma_2_config_from_hf`, what `sae_lens:gemma-scope-...` reads), so a contradicting `--hook` is
refused naming both, and its registry release/id and Neuronpedia id are recorded; elsewhere pass
`--model` and `--hook`. Embedding SAEs (`embedding/width_4k/...`) were trained on Gemma's embeddings
before their scaling by sqrt(d_model), while `hook_embed` reads them after it (TransformerLens, the
HF model): their encoder is divided and decoder multiplied by sqrt(d_in), as SAELens's loader does;
one copied out of Google's layout is refused at hook_embed (SAELens rescales by the folder, which is
gone). Transcoders are refused (`refuse_transcoder`). Read with `numpy.load(allow_pickle=False)`:
object arrays are refused.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from saes.formats.base import (LoadedSAE, files_record, hf_cache_place, record_model_and_hook, require_tensors,
                               snapshot_place)
from saes.io import SAEFormatError, sae_from_sae_lens_dict

FORMAT = "gemma_scope"
WEIGHTS = "params.npz"
_NAMES = ["W_enc", "W_dec", "b_enc", "b_dec", "threshold"]


def is_folder(path: Path) -> bool:
    return path.is_dir() and (path / WEIGHTS).is_file()


def repo_and_folder(npz: Path) -> tuple[str, str] | None:
    """(repo_id, folder) of a params.npz inside a Gemma Scope repo's folder: an HF-cache snapshot
    (`models--google--gemma-scope-2b-pt-res/snapshots/REV/layer_20/...`) or a clone named after
    the repo (`gemma-scope-2b-pt-res/layer_20/...`); None elsewhere."""
    place = snapshot_place(npz.parent)
    if place and place[0].split("/")[-1].startswith("gemma-scope-"):
        return place
    parts = npz.parent.parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].startswith("gemma-scope-") and i + 1 < len(parts):
            return f"google/{parts[i]}", "/".join(parts[i + 1:])
    return None


def place_of(npz: Path) -> tuple[str, str] | None:
    """`repo_and_folder` of the params.npz as given, else of its folder's real path (a symlink to a
    snapshot's folder, e.g. ~/sae20 -> .../snapshots/REV/layer_20/width_16k/average_l0_71); the file's
    own symlink, into `blobs/`, is never followed: the blob has no name."""
    return repo_and_folder(npz) or repo_and_folder(Path(os.path.realpath(npz.parent)) / npz.name)


def sae_lens_config(repo_id: str, folder: str) -> dict[str, Any] | None:
    """SAELens's config of the Gemma Scope SAE at repo_id/folder (hook_name, model_name, ...), from
    its own converter's config getter (no download); None where that getter does not know it
    (Gemma Scope 2, transcoders, a folder of another layout)."""
    from sae_lens.loading.pretrained_sae_loaders import get_gemma_2_config_from_hf

    if repo_id.split("/")[-1].startswith("gemma-scope-2-") or not folder:
        return None
    try:
        return get_gemma_2_config_from_hf(repo_id, folder, device="cpu")
    except (ValueError, StopIteration):
        return None


def registry_entries(repo_id: str, folder: str) -> list[dict[str, str]]:
    """The SAELens registry releases that list repo_id/folder: release, sae_id and, where the
    registry has it, the Neuronpedia id (e.g. gemma-2-2b/20-gemmascope-res-16k)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    found = []
    for release, info in get_pretrained_saes_directory().items():
        if info.repo_id != repo_id:
            continue
        for sae_id, path in info.saes_map.items():
            if path == folder:
                entry = {"release": release, "sae_id": sae_id}
                if info.neuronpedia_id.get(sae_id):
                    entry["neuronpedia_id"] = info.neuronpedia_id[sae_id]
                found.append(entry)
    return found


def neuronpedia_id(entries: list[dict[str, str]]) -> str | None:
    """The Neuronpedia id of a folder's registry entries; the canonical release's where two name one
    SAE (gemma-2-2b/5-gemmascope-res-1m beside gemma-2-2b/5-gemmascope-res-1m__l0-114)."""
    ids = sorted((not e["release"].endswith("-canonical"), e["neuronpedia_id"]) for e in entries
                 if "neuronpedia_id" in e)
    return ids[0][1] if ids else None


def neuronpedia_id_of_path(path: Path) -> str | None:
    """The Neuronpedia id of a Gemma Scope SAE's params.npz (or its folder) by its place in Google's
    repos (see `place_of`); None elsewhere, and for a transcoder."""
    npz = Path(os.path.abspath(path))
    npz = npz if npz.is_file() else npz / WEIGHTS
    place = place_of(npz) if npz.is_file() else None
    return neuronpedia_id(registry_entries(*place)) if place and sae_lens_config(*place) else None


def is_gemma_2_transcoder(repo_id: str) -> bool:
    """A repo of Gemma Scope's (Gemma 2) transcoders, e.g. google/gemma-scope-2b-pt-transcoders."""
    name = repo_id.split("/")[-1]
    return name.startswith("gemma-scope-") and not name.startswith("gemma-scope-2-") and "transcoder" in name


def refuse_transcoder(source: str, repo_id: str, folder: str) -> None:
    """Gemma Scope's transcoders share the file layout but read the MLP's input and predict its output:
    read as an SAE on one hook, every reconstruction would be of the wrong activations. Gemma 2's
    are not read through SAELens's registry either: they were trained on the MLP's real input, the
    pre-MLP RMSNorm's output with its weight applied, and SAELens's converter reads
    `blocks.N.ln2.hook_normalized`, which TransformerLens and TransformerBridge take before that weight."""
    from sae_lens.loading.pretrained_sae_loaders import get_gemma_2_transcoder_config_from_hf

    what = f"{source}: a Gemma Scope transcoder of {repo_id}"
    if not is_gemma_2_transcoder(repo_id):  # Gemma Scope 2: SAELens's gemma_3 converter, not checked here
        raise SAEFormatError(f"{what}, not an SAE; load it through SAELens's registry, which reads it as a transcoder")
    layer = re.search(r"layer_(\d+)", folder)
    try:
        cfg = get_gemma_2_transcoder_config_from_hf(repo_id, folder, device="cpu")
        reads = f"SAELens's converter reads it at {cfg['hook_name']} (predicting {cfg['hook_name_out']}), taken"
    except (ValueError, KeyError):
        reads = "SAELens's converter reads it at ln2.hook_normalized, taken"
    raise SAEFormatError(
        f"{what}, refused as an SAE and through SAELens's registry alike: it was trained on the MLP's input, the "
        f"pre-MLP RMSNorm's output with its weight applied, and {reads} before that weight, so every latent would "
        f"read the wrong input. To use it, save its weights as a SAELens transcoder folder (docs/formats.md "
        f"(\"SAE folder\") in saesteer's source repository) reading blocks.{layer[1] if layer else 'N'}.mlp.hook_in, "
        f"the MLP's input")


GEMMA_SCOPE_2_WEIGHTS = "params.safetensors"


def gemma_scope_2_registry_spec(path: Path) -> str | None:
    """`sae_lens:RELEASE/SAE_ID` of a Gemma Scope 2 SAE folder (`params.safetensors` + `config.json`) in an
    HF-cache snapshot of Google's repo, which SAELens's registry lists: what it loads as (its gemma_3
    converter); None for any other path."""
    from saes.formats.sae_lens_registry import PREFIX

    folder = Path(os.path.abspath(path))
    if not (folder.is_dir() and (folder / GEMMA_SCOPE_2_WEIGHTS).is_file()):
        return None
    place = hf_cache_place(folder)
    entries = registry_entries(*place) if place and place[0].split("/")[-1].startswith("gemma-scope-2-") else []
    # the release that lists only this kind of SAE before an "-all" one listing every width and L0
    entries.sort(key=lambda e: (e["release"].endswith("-all"), e["release"]))
    return f"{PREFIX}{entries[0]['release']}/{entries[0]['sae_id']}" if entries else None


def read_npz(path: Path, source: str) -> dict[str, torch.Tensor]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {("W_" + k[2:] if k.startswith("w_") else k): np.array(data[k]) for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise SAEFormatError(f"{source}: {path.name} is not a readable .npz of numeric arrays ({e})") from None
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def load(
    path: Path, *, hook: str | None = None, model: str | None = None,
    device: torch.device | str | None = None, dtype: torch.dtype | None = None,
) -> LoadedSAE:
    path = Path(os.path.abspath(path))  # not resolve(): an HF-cache snapshot's symlink names the repo and folder
    npz = path if path.is_file() else path / WEIGHTS
    source = f"{npz} (Gemma Scope)"
    arrays = read_npz(npz, source)
    scale = arrays.pop("scaling_factor", None)
    if scale is not None and not torch.allclose(scale.float(), torch.ones_like(scale.float())):
        raise SAEFormatError(f"{source}: a scaling_factor other than 1 is not supported")
    require_tensors(arrays, _NAMES, source, "Gemma Scope JumpReLU SAE")
    D_, F_ = arrays["W_enc"].shape if arrays["W_enc"].ndim == 2 else (0, 0)
    if not D_:
        raise SAEFormatError(f"{source}: W_enc must be a matrix [d_in, d_sae], got shape {tuple(arrays['W_enc'].shape)}")
    place = place_of(npz)
    if place and "transcoder" in place[0]:
        refuse_transcoder(source, *place)
    recorded = sae_lens_config(*place) if place else None
    if hook == "hook_embed" and not recorded:  # outside Google's layout: unscaled, every latent would read x sqrt(d_in)
        raise SAEFormatError(
            f"{source}: a Gemma Scope SAE at hook_embed outside Google's layout. Its embedding SAEs were trained on "
            f"Gemma's embeddings before their sqrt(d_model) scaling, which hook_embed reads after it; SAELens rescales "
            f"them by the folder they come from. Keep it in its repo's layout (a clone or the HF cache: "
            f"gemma-scope-2b-pt-res/embedding/width_4k/average_l0_6/params.npz) or load it as "
            f"sae_lens:gemma-scope-2b-pt-res/embedding/width_4k/average_l0_6")
    if recorded and recorded["hook_name"] == "hook_embed":  # trained before the sqrt(d_model) scaling
        arrays["W_enc"] = arrays["W_enc"] / math.sqrt(D_)
        arrays["W_dec"] = arrays["W_dec"] * math.sqrt(D_)
    cfg: dict[str, Any] = {"architecture": "jumprelu", "d_in": D_, "d_sae": F_, "apply_b_dec_to_input": False,
                           "dtype": str(arrays["W_enc"].dtype).removeprefix("torch."), "metadata": {}}
    sae = sae_from_sae_lens_dict(cfg, {n: arrays[n].contiguous() for n in _NAMES}, device=device, dtype=dtype,
                                 source=source)
    from saes.formats.neuronpedia import SITE

    prov: dict[str, Any] = {"source": {"format": FORMAT, "path": str(npz), "files": files_record(npz.parent, [npz.name])}}
    if recorded:  # Gemma Scope trained with BOS on every context (SAELens's prepend_bos); steering follows it
        sae.cfg.metadata["prepend_bos"] = bool(recorded.get("prepend_bos", True))
        repo_id, folder = place
        prov["source"].update(repo_id=repo_id, folder=folder, registry=registry_entries(repo_id, folder))
        np_id = neuronpedia_id(prov["source"]["registry"])
        if np_id:  # the keys sae_lens_registry records
            prov["source"].update(neuronpedia_id=np_id, neuronpedia_url=f"{SITE}/{np_id}")
        if recorded["hook_name"] == "hook_embed":
            prov["source"]["rescaled"] = "W_enc / sqrt(d_in), W_dec * sqrt(d_in) (embedding SAE, as SAELens loads it)"
    record_model_and_hook(
        sae, prov, source=source, hook=hook, model=model, recorded_hook=recorded and recorded["hook_name"],
        recorded_model=recorded and recorded["model_name"],
        hook_basis=recorded and f"its place in {place[0]}: {place[1]}, by SAELens's Gemma Scope config")
    return LoadedSAE(sae, prov, str(npz), FORMAT)
