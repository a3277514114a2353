"""Fine-tuning: a fresh run starts its SAEs from an existing SAE (`TrainConfig.init_from`, `--init-from`).

The source is anything `saes.formats.resolve_sae` loads (a folder trained here, a SAELens
folder or registry id, sparsify, dictionary_learning, Gemma Scope). Before any weight is copied:

- its d_in must be the data's, its architecture and d_sae those of every SAE of the run (k and
  Matryoshka widths may change: they are training choices);
- its recorded hook point and model must be the run's (both sides named;
  `TrainConfig.init_from_allow_mismatch` / `--init-from-allow-mismatch` accepts another
  model or hook, e.g. to transfer an SAE; d_in must still match).

The run continues in the source's own activation space: the activation scale is 1 / the mean
norm of the source's decoder rows (an SAE trained here folded its scale into the decoder;
SAELens SAEs have unit rows: scale 1), so the saved SAE at step 0 has the source's weights and
its latents keep their magnitudes. Decoder rows that are not all of one norm are brought to unit
norm with each latent's encoder column scaled to match (what the trainer keeps throughout;
noted, and recorded as `decoder_renormalized`).

Every saved SAE records `init_from` (spec, format, architecture, shapes, SHA-256 of the weights
as loaded, the source's own file checksums and provenance). A resume ignores `init_from` (the
weights come from the checkpoint); a resume with a different `init_from` is refused by the
config comparison (train.init_from is not a resumable field).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from saes.errors import SaesteerError

ALLOW_FLAG = "--init-from-allow-mismatch"


class InitFromError(SaesteerError, ValueError):
    """A source SAE that does not fit the run (shape, architecture, hook point or model)."""


def load_source(spec: str) -> Any:
    """The `LoadedSAE` of an init_from spec, on the CPU in float32."""
    from saes.formats import resolve_sae

    return resolve_sae(spec, device="cpu", dtype=torch.float32)


def weights_sha256(sae: Any) -> str:
    """SHA-256 over the SAE's parameters and buffers as loaded (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(sae.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def spec_from_source(loaded: Any) -> Any:
    """The SAESpec that fine-tunes `loaded` as it is (the CLI's default with --init-from and no SAE flags)."""
    from training.config import SAESpec

    sae = loaded.sae
    _require_trainable(sae.architecture, loaded.spec)
    widths = list(sae.levels) if sae.levels is not None else []  # Matryoshka: its nested widths
    k = {"k": int(sae.cfg.k)} if hasattr(sae.cfg, "k") else {}  # JumpReLU has none
    return SAESpec(sae.architecture, d_sae=sae.d_sae, matryoshka_widths=widths, **k)


def _require_trainable(arch: str, spec: str) -> None:
    from saes.registry import trainable_architectures

    if arch not in trainable_architectures():
        raise InitFromError(f"train.init_from: {spec} is a {arch} SAE; saesteer trains "
                            f"{', '.join(trainable_architectures())}, so it cannot be fine-tuned here", field="train.init_from")


def _recorded(loaded: Any, key: str) -> Any:
    """What the source records under `key`: its cfg metadata, else the provenance loaded beside it."""
    return (loaded.sae.cfg.metadata or {}).get(key) or (loaded.provenance or {}).get(key)


def _model_name(name: str | None) -> str | None:
    """TransformerLens's official name for a model alias (gpt2-small -> gpt2), else the name."""
    if not name:
        return None
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name

        return get_official_model_name(name)
    except Exception:  # a local path or an unknown name: compare as given
        return name


def check_source(loaded: Any, specs: list[Any], d_in: int, prov: dict[str, Any], allow_mismatch: bool) -> None:
    """Refuse a source that does not fit the run, naming both sides and the fix."""
    from saes.identity import ModelIdentity, ModelMismatchError, check_same_model, identity_of_sae

    sae, where = loaded.sae, f"the --init-from SAE {loaded.spec}"
    _require_trainable(sae.architecture, loaded.spec)
    if sae.d_in != d_in:
        raise InitFromError(f"train.init_from: {where} reads activations of width d_in={sae.d_in}, this run's data has "
                            f"width {d_in}{_hook_note(prov)}; fine-tune it on activations of its own hook point and model",
                            field="train.init_from")
    for s in specs:
        if s.architecture != sae.architecture or s.d_sae != sae.d_sae:
            raise InitFromError(
                f"train.init_from: {where} is {sae.architecture} with d_sae={sae.d_sae}, but SAE {s.name!r} of the run "
                f"is {s.architecture} with d_sae={s.d_sae}; pass --architecture {sae.architecture} --d-sae {sae.d_sae} "
                f"(or leave the SAE flags out: they default to the source's)", field="saes")
    if allow_mismatch:
        return
    src_hook, run_hook = _recorded(loaded, "hook_name"), prov.get("hook_name")
    if src_hook and run_hook and src_hook != run_hook:
        raise InitFromError(f"train.init_from: {where} was trained on hook point {src_hook}, this run reads {run_hook}; "
                            f"pass --hook {src_hook}, or {ALLOW_FLAG} true to fine-tune it on {run_hook} anyway",
                            field="train.init_from")
    run_ident = ModelIdentity.from_json(prov["model_identity"]) if prov.get("model_identity") else None
    src_ident = identity_of_sae(loaded)
    try:
        check_same_model(src_ident, run_ident, recorded_in=where, given_as="this run's model", override=f"{ALLOW_FLAG} true",
                         fix="fine-tune it on activations of the model it records")
    except ModelMismatchError as e:
        raise InitFromError(f"train.init_from: {e}", field="train.init_from") from None
    if src_ident is None or run_ident is None:  # another library's SAE names its model in its own terms
        src_name, run_name = _recorded(loaded, "model_name") or _recorded(loaded, "model"), prov.get("model_name") or prov.get("model")
        if src_name and run_name and _model_name(src_name) != _model_name(run_name):
            raise InitFromError(f"train.init_from: {where} records model {src_name!r}, this run's activations come from "
                                f"{run_name!r}; fine-tune it on activations of {src_name!r}, or pass {ALLOW_FLAG} true",
                                field="train.init_from")


def _hook_note(prov: dict[str, Any]) -> str:
    parts = [f"{k} {prov[k]}" for k in ("model", "hook_name") if prov.get(k)]
    return f" ({', '.join(parts)})" if parts else ""


def source_record(loaded: Any) -> dict[str, Any]:
    """What the fine-tuned SAE records about where it started (saesteer.json `init_from`)."""
    sae = loaded.sae
    prov = dict(loaded.provenance or {})
    return {
        "spec": loaded.spec, "format": loaded.format, "architecture": sae.architecture, "d_in": sae.d_in,
        "d_sae": sae.d_sae, "k": getattr(sae.cfg, "k", None), "weights_sha256": weights_sha256(sae),
        "hook_name": _recorded(loaded, "hook_name"), "model": _recorded(loaded, "model_name") or prov.get("model"),
        "files": prov.get("files") or (prov.get("source") or {}).get("files"),
        "source_provenance": {k: prov.get(k) for k in ("tool", "saesteer_version", "git_commit", "model_identity",
                                                        "dataset", "tokens_trained", "source") if k in prov},
    }


@torch.no_grad()
def initialize_from_source(trainer: Any, loaded: Any, prov: dict[str, Any], log=print) -> dict[str, Any]:
    """Copy the source's weights into every SAE of a fresh trainer (instead of `Trainer.initialize`);
    returns the record the saved SAEs carry."""
    cfg = trainer.config.train
    if trainer.is_transcoder or loaded.sae.is_transcoder:  # two activation scales: not planned for here yet
        what = "this run trains transcoders" if trainer.is_transcoder else f"{loaded.spec} is a transcoder"
        raise InitFromError(f"train.init_from: {what}; fine-tuning transcoders is not supported yet (train one "
                            f"from scratch with --target-hook)", field="train.init_from")
    check_source(loaded, [m.spec for m in trainer.members], trainer.d_in, prov, cfg.init_from_allow_mismatch)
    src = loaded.sae
    norms_F = src.W_dec.norm(dim=1)
    mean_norm = float(norms_F.mean())
    if not (mean_norm > 0 and torch.isfinite(norms_F).all()):
        raise InitFromError(f"train.init_from: {loaded.spec} has zero or non-finite decoder rows", field="train.init_from")
    trainer.scale = 1.0 / mean_norm  # the source's own training space (see the module docstring)
    record = source_record(loaded)
    spread = float((norms_F / mean_norm - 1).abs().max())
    record["activation_scale"] = trainer.scale
    record["decoder_renormalized"] = spread > 1e-5
    if record["decoder_renormalized"]:
        log(f"note: the decoder rows of {loaded.spec} have norms {float(norms_F.min()):.4g}..{float(norms_F.max()):.4g}; "
            f"they are brought to unit norm with each latent's encoder scaled to match (latent magnitudes change"
            f"{'; TopK then ranks pre-activation x decoder norm' if src.architecture == 'topk' else ''})")
    for m in trainer.members:
        sae = m.sae
        state = {k: v.to(sae.W_enc.device) for k, v in src.state_dict().items()}
        sae.load_state_dict(state)
        sae.fold_activation_scale_(1.0 / trainer.scale)  # unfold: raw space -> the trainer's scaled space
        if record["decoder_renormalized"]:
            if src.architecture == "topk":
                sae.fold_decoder_norm_(selection_uses_unit_decoder=True)
            else:
                sae.fold_decoder_norm_()
        for t in sae.state_dict().values():
            trainer.coll.broadcast_(t)
    return record
