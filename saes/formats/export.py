"""An SAE written in another library's layout, whole or not at all (`saesteer convert`):

    done = export_sae(resolve_sae("runs/x/saes/topk_k32_f4096").sae, "sparsify", "share/sparsify")
    done.path, done.what, done.load_with

Each target is the writer its module owns (`saes.io.save_sae`, `sparsify.save`, `dictionary_learning.save`);
what a target cannot hold is refused by that writer, naming the SAE's side and the target's. The folder is
built under a temporary name beside `out` and renamed into place, so a refusal, a full disk or a crash
leaves no half-written folder; `overwrite` replaces an earlier SAE folder at `out` (only a folder of one
SAE: one holding anything else, a trainer's checkpoints/ or a run's other layers among it, is refused, so
a mistyped --out never deletes someone's files). A sparsify run
folder takes one more hookpoint (its other hookpoints kept, as `SparseCoder.load_many` reads a run).
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saes.export_targets import NO_NEURONPEDIA, TARGETS
from saes.fileio import fsync_dir, make_temp_dir, name_the_final_file, put_folder_in_place, read_json
from saes.formats import dictionary_learning, sae_lens_folder, sparsify
from saes.io import PROVENANCE_FILENAME, SAEFormatError, save_sae, without_local_paths

_TMP_MARK = ".convert-"  # a folder being built: `.<out>.convert-XXXX` beside `out`
_ASIDE_MARK = ".old-"  # an earlier folder --overwrite replaces, until the new one is in place
# One SAE's files in the layouts convert writes (SAELens's training extras among them): what --overwrite replaces
_ONE_SAES_FILES = {"cfg.json", "sae_weights.safetensors", "saesteer.json", "sparsity.safetensors",
                   "activation_scaler.json", "activation_whitening.safetensors", "ae.pt", "config.json"}


@dataclass(frozen=True)
class Exported:
    path: Path  # the folder written
    what: str  # what it holds, in the target's words ("dictionary_learning BatchTopKSAE")
    load_with: str  # the target library's call that loads it


def export_sae(sae: Any, target: str, out: str | os.PathLike, *, provenance: dict[str, Any] | None = None,
               overwrite: bool = False, hookpoint: str | None = None) -> Exported:
    """Write `sae` for `target` (a TARGETS key) as folder `out`. `provenance` goes into saesteer.json
    (target "saesteer"); `hookpoint` is the HF module a sparsify SAE is stored under (default:
    `sparsify.default_hookpoint`). Errors: `SAEFormatError` for what the target cannot hold,
    `FileExistsError` for an `out` that is there (without `overwrite`, or not a folder of one SAE)."""
    if target == "neuronpedia":
        raise SAEFormatError(NO_NEURONPEDIA)
    if target not in TARGETS:
        raise SAEFormatError(f"unknown target {target!r}; one of {', '.join(TARGETS)}")
    out = Path(out)
    _recover_from_a_killed_run(out)
    for listed in _hookpoints_listed(out):  # a run's hookpoint a killed --overwrite had moved out of it
        _recover_from_a_killed_run(out / listed, aside_in=out.parent)
    into_run = target == "sparsify" and out.is_dir() and not out.is_symlink() and bool(sparsify.hookpoint_folders(out))
    if not into_run:  # a sparsify run takes another hookpoint (load_many reads them all)
        _check_out(out, overwrite)
    if target == "saelens" and sae.is_transcoder and sae.saved_architecture() == "topk":
        raise SAEFormatError("a TopK transcoder cannot be saved for SAELens: SAELens has no TopK transcoder class "
                             "(its transcoders are ReLU and JumpReLU); --to sparsify writes it for sparsify's "
                             "SparseCoder, --to saesteer for saesteer")
    if target in ("sparsify", "dictionary_learning") and not sae.cfg.metadata.get("hook_name"):
        raise SAEFormatError(f"the SAE's files record no hook point, and a {target} folder names the module it reads; "
                             f"give --hook (the hook point it was trained on, e.g. blocks.6.hook_resid_post)")
    if target == "sparsify" and hookpoint is None:
        hookpoint = sparsify.default_hookpoint(sae)
        if hookpoint is None:
            raise SAEFormatError(f"the SAE reads {sae.cfg.metadata.get('hook_name') or 'no recorded hook'}, which "
                                 f"saesteer names no sparsify hookpoint for; give --hookpoint, the HF module whose "
                                 f"output it reads (e.g. layers.6, h.6 on GPT-2)")
    if into_run:
        _recover_from_a_killed_run(out / hookpoint, aside_in=out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{out.name}{_TMP_MARK}", out.parent)  # beside: load_many reads every folder in a run
    try:
        if into_run:
            if (out / sparsify.RUN_CONFIG).is_file():  # its model is checked, its hookpoints kept
                shutil.copyfile(out / sparsify.RUN_CONFIG, tmp / sparsify.RUN_CONFIG)
            done = _write(sae, target, tmp, out, provenance, hookpoint)
            _add_hookpoint(tmp, out, hookpoint, overwrite)
        else:
            done = _write(sae, target, tmp, out, provenance, hookpoint)
            _put_in_place(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        name_the_final_file(e, tmp, out)
        raise
    shutil.rmtree(tmp, ignore_errors=True)  # what is left of a run's (its config, now in place)
    return done


def _write(sae: Any, target: str, tmp: Path, out: Path, provenance: dict[str, Any] | None,
           hookpoint: str | None) -> Exported:
    if target == "sparsify":
        folder = sparsify.save(sae, tmp, hookpoint)
        return Exported(out, f"sparsify TopK {'transcoder' if sae.is_transcoder else 'SAE'} at hookpoint {hookpoint!r}",
                        f"sparsify.SparseCoder.load_from_disk({str(out / folder.name)!r}) or "
                        f"SparseCoder.load_many({str(out)!r})")
    if target == "dictionary_learning":
        dictionary_learning.save(sae, tmp)
        dict_class = dictionary_learning.dict_class_for(sae)
        why = ""
        if sae.architecture in ("batchtopk", "matryoshka_batchtopk") and dict_class == "JumpReluAutoEncoder":
            own = "BatchTopKSAE" if sae.architecture == "batchtopk" else "MatryoshkaBatchTopKSAE"
            lost = f"; the Matryoshka prefixes {sae.levels} are not kept" if sae.architecture != "batchtopk" else ""
            why = (f", which computes the same latents (they have thresholds of their own, and {own} holds one "
                   f"threshold for all{lost})")
        elif sae.saved_architecture() == "standard" and dict_class == "JumpReluAutoEncoder":
            why = (" of threshold 0, which computes the same latents (the decoder rows are not unit-norm, and "
                   "AutoEncoder.from_pretrained would rescale them and the latents with them)")
        return Exported(out, f"dictionary_learning {dict_class}{why}",
                        f"dictionary_learning.utils.load_dictionary({str(out)!r}, device)")
    record = without_local_paths(provenance or {}) if target == "saesteer" else None
    save_sae(sae, tmp, provenance=record)
    if target == "saelens":
        (tmp / PROVENANCE_FILENAME).unlink()
    kind = ("skip transcoder" if sae.W_skip is not None else "transcoder") if sae.is_transcoder else ""
    form = (f"{sae.architecture} {kind or 'SAE'} in its {sae.saved_architecture()} inference form"
            if sae.saved_architecture() != sae.architecture else f"{sae.architecture} {kind}".rstrip())
    saesteer_loads = f"saesteer's --sae {shlex.quote(str(out))}"
    if sae.is_transcoder and sae.saved_architecture() == "topk":  # only --to saesteer gets here (see export_sae)
        return Exported(out, f"saesteer folder, {form} (SAELens has no TopK transcoder class)", saesteer_loads)
    return Exported(out, f"{'saesteer' if target == 'saesteer' else 'SAELens'} folder, {form}",
                    f"sae_lens.SAE.load_from_disk({str(out)!r}), or {saesteer_loads}")


def _recover_from_a_killed_run(out: Path, aside_in: Path | None = None) -> None:
    """Undo what a convert killed midway (SIGKILL, a power cut: no `except` ran) left beside `out`: its
    half-built folders are removed, and an earlier SAE it had moved aside to replace is put back where
    `out` is missing (the replacement never arrived) or removed where the replacement is in place."""
    aside_in = aside_in or out.parent
    if not out.parent.is_dir():
        return
    for p in out.parent.glob(f".{glob.escape(out.name)}{_TMP_MARK}*"):
        shutil.rmtree(p, ignore_errors=True)
    asides = sorted(aside_in.glob(f"{glob.escape(_aside_prefix(out, aside_in))}*"), key=lambda p: p.stat().st_mtime)
    if asides and not os.path.lexists(out):
        os.rename(asides.pop(), out)
    for p in asides:
        shutil.rmtree(p, ignore_errors=True)


def _hookpoints_listed(run: Path) -> list[str]:
    """The hookpoints a sparsify run's config.json names (folder names in the run); [] where `run` is none."""
    try:
        listed = read_json(run / sparsify.RUN_CONFIG, "sparsify run config").get("hookpoints")
    except (OSError, ValueError, AttributeError):
        return []
    return [h for h in listed if isinstance(h, str) and h == Path(h).name and h not in ("", ".", "..")
            ] if isinstance(listed, list) else []


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an `out` that is there, unless `overwrite` and it holds one SAE and nothing else (or nothing)."""
    if not os.path.lexists(out):
        return
    if not out.is_dir() or out.is_symlink():
        raise FileExistsError(f"--out {out} is there and is not a folder; give a new folder's name")
    if not overwrite:
        raise FileExistsError(f"--out {out} is there; pass --overwrite to replace it, or give a new folder's name")
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    hookpoints = sparsify.hookpoint_folders(out)
    is_sae = sae_lens_folder.is_folder(out) or dictionary_learning.is_folder(out) or len(hookpoints) == 1
    others = sorted(names - _ONE_SAES_FILES - set(hookpoints[:1])) if is_sae else sorted(names)
    if others:  # a trainer's checkpoints/, a run's other layers, someone's notes: not ours to delete
        raise FileExistsError(f"--out {out} holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}, which "
                              f"is no part of one SAE's files; --overwrite replaces only a folder holding one SAE: "
                              f"give a new folder's name")


def _add_hookpoint(tmp: Path, run: Path, hookpoint: str, overwrite: bool) -> None:
    """Move the hookpoint folder written in `tmp` into the sparsify run `run`, then its config.json naming
    every hookpoint; one already there is replaced only with `overwrite` (moved aside, then removed)."""
    if os.path.lexists(run / hookpoint) and not overwrite:
        raise FileExistsError(f"--out {run} already holds hookpoint {hookpoint}; pass --overwrite to replace it, or "
                              f"give another --hookpoint")
    _put_in_place(tmp / hookpoint, run / hookpoint, aside_in=run.parent)
    os.replace(tmp / sparsify.RUN_CONFIG, run / sparsify.RUN_CONFIG)
    fsync_dir(run)


def _put_in_place(built: Path, out: Path, aside_in: Path | None = None) -> None:
    """`built` renamed to `out`, an earlier `out` moved aside meanwhile (`_aside_prefix` + a free suffix,
    which `_recover_from_a_killed_run` finds)."""
    aside_in = aside_in or out.parent
    aside = make_temp_dir(_aside_prefix(out, aside_in), aside_in)
    os.rmdir(aside)
    put_folder_in_place(built, out, aside)


def _aside_prefix(out: Path, aside_in: Path) -> str:
    """`.<name>.old-`, the name an earlier `out` has while moved aside into `aside_in`; a hookpoint, moved out of
    its sparsify run, is named with its run (`.<run>.<hookpoint>.old-`): runs side by side hold the same
    `layers.N`, and one run's hookpoint must never be put back into another."""
    name = out.name if aside_in == out.parent else f"{out.parent.name}.{out.name}"
    return f".{name}{_ASIDE_MARK}"
