"""Fine-tuning: a fresh run starts its SAEs from an existing SAE (`TrainConfig.init_from`, `--init-from`).

The source is anything `saes.formats.resolve_sae` loads (a folder trained here, a SAELens
folder or registry id, sparsify, dictionary_learning, Gemma Scope), SAEs and transcoders alike
(ours of every trainable architecture, SAELens's `jumprelu_transcoder` / `jumprelu_skip_transcoder`).
Before any weight is copied:

- its d_in must be the data's, its architecture and d_sae those of every SAE of the run (k and
  Matryoshka widths may change: they are training choices);
- a transcoder source needs a transcoder run and the other way round (`--target-hook`), with the
  target's width d_out and the skip connection (`--skip`) the run's;
- its recorded hook point(s) and model must be the run's, and so must the BOS its training
  contexts started with (both sides named; `TrainConfig.init_from_allow_mismatch` /
  `--init-from-allow-mismatch` accepts another model, hook or BOS, e.g. to transfer an SAE; the
  widths must still match). The BOS: an SAE trained here records its data's `bos_policy`, compared
  exactly ("doc" is not "none"); another library's SAE (and one trained here before that was
  recorded, said in a note) records cfg.json's `prepend_bos` only (`saes.bos.check_cache_bos`).

The run continues in the source's own activation space for what it reconstructs: the output
scale is 1 / the mean norm of the source's decoder rows (an SAE trained here folded its scale into
the decoder; SAELens SAEs have unit rows: scale 1), so the saved SAE at step 0 has the source's
weights and its latents keep their magnitudes. An SAE's input scale is that same factor. A
transcoder's input has its own scale, which the weights do not reveal and which changes no latent
(pre-activations are (s x) (W_enc / s)); it is the one a fresh run on these data uses (E||s x|| =
sqrt(d_in) on the held-out rows, 1 without `normalize_activations`): for a transcoder trained here
on the same data that is its own. Decoder rows that are not all of one norm are brought to unit
norm with each latent's encoder column scaled to match (what the trainer keeps throughout;
noted, and recorded as `decoder_renormalized`). An SAE that reads its input uncentred
(`apply_b_dec_to_input` false, e.g. Gemma Scope) trains centred, as every SAE here: b_dec @ W_enc
is added to b_enc, which computes the same (recorded as `input_centring_folded`).

Every saved SAE records `init_from` (spec, format, architecture, shapes, hooks, SHA-256 of the
weights as loaded, the scales, the source's own file checksums and provenance). A resume ignores
`init_from` (the weights and scales come from the checkpoint); a resume with a different
`init_from` is refused by the config comparison (train.init_from is not a resumable field).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor

from saes.errors import SaesteerError
from saes.identity import same_model_name

ALLOW_FLAG = "--init-from-allow-mismatch"


class InitFromError(SaesteerError, ValueError):
    """A source SAE that does not fit the run (shape, architecture, hook point or model)."""


def load_source(spec: str) -> Any:
    """The `LoadedSAE` of an init_from spec, on the CPU in float32."""
    from saes.formats import resolve_sae

    return resolve_sae(spec, device="cpu", dtype=torch.float32)


class InitSource:
    """The source SAE of `spec` (a `TrainConfig.init_from`), read at most once: the CLI asks it for
    the hook point and the SAE flags' defaults before the run, the run's start for its weights
    (`training.resume.start_run`, which then `release`s it: the run does not keep a copy). A read
    that failed fails the same way when asked again, without reading again."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._loaded: Any = None
        self._error: BaseException | None = None

    def load(self) -> Any:
        """The `LoadedSAE` (read on the first call)."""
        if self._loaded is None and self._error is None:
            try:
                self._loaded = load_source(self.spec)
            except Exception as e:  # kept to raise again: asking twice never reads twice
                self._error = e
        if self._error is not None:
            raise self._error
        return self._loaded

    def release(self) -> None:
        """Let the loaded SAE go (a later `load` reads it again)."""
        self._loaded = None


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
    _require_trainable(sae, loaded.spec)
    widths = list(sae.levels) if sae.levels is not None else []  # Matryoshka: its nested widths
    k = {"k": int(sae.cfg.k)} if hasattr(sae.cfg, "k") else {}  # JumpReLU has none
    return SAESpec(sae.architecture, d_sae=sae.d_sae, matryoshka_widths=widths, skip=sae.W_skip is not None, **k)


def _describe(loaded: Any) -> str:
    """'a transcoder (IN -> OUT, d_out=O)' / 'a skip transcoder (...)' / 'an SAE' for messages."""
    sae = loaded.sae
    if not sae.is_transcoder:
        return "an SAE"
    hooks = f"{_recorded(loaded, 'hook_name') or '?'} -> {_recorded(loaded, 'hook_name_out') or '?'}, "
    return f"a {'skip ' if sae.W_skip is not None else ''}transcoder ({hooks}d_out={sae.d_out})"


def mode_mismatch(loaded: Any, run_target_hook: str | None, run_hook: str | None = None) -> str | None:
    """Why a source cannot start a run with (a transcoder run) or without a target hook; None if it can."""
    where, src = f"the --init-from SAE {loaded.spec}", loaded.sae
    if src.is_transcoder and run_target_hook is None:
        out = _recorded(loaded, "hook_name_out")
        return (f"train.init_from: {where} is {_describe(loaded)}, but this run trains SAEs"
                f"{' on ' + run_hook if run_hook else ''}; pass --target-hook {out or '(the hook point it predicts)'} "
                f"(from a cache holding both hooks) to fine-tune it")
    if not src.is_transcoder and run_target_hook is not None:
        return (f"train.init_from: {where} is an SAE (it reconstructs its own input), but this run trains transcoders "
                f"predicting {run_target_hook}; drop --target-hook to fine-tune it")
    return None


def _require_trainable(sae: Any, spec: str) -> None:
    from saes.registry import trainable_architectures

    if sae.architecture not in trainable_architectures():
        kind = "transcoder" if sae.is_transcoder else "SAE"
        raise InitFromError(f"train.init_from: {spec} is a {sae.architecture} {kind}; saesteer trains "
                            f"{', '.join(trainable_architectures())}, so it cannot be fine-tuned here", field="train.init_from")


def _recorded(loaded: Any, key: str) -> Any:
    """What the source records under `key`: its cfg metadata, else the provenance loaded beside it."""
    return (loaded.sae.cfg.metadata or {}).get(key) or (loaded.provenance or {}).get(key)


def check_source(loaded: Any, specs: list[Any], d_in: int | None, prov: dict[str, Any], allow_mismatch: bool,
                 d_out: int | None = None, log=print, transcoder: bool | None = None) -> None:
    """Refuse a source that does not fit the run, naming both sides and the fix. `d_out`: a
    transcoder run's target width (None: the run trains SAEs). Before the model is loaded (the
    CLI checks then, so that a misfit is refused in seconds, not after minutes of loading) some of
    the run is not known yet: `d_in` / `d_out` None skip the widths (`transcoder` then says whether
    the run trains transcoders), and what `prov` lacks (hook, model, BOS policy) is not compared."""
    from saes.identity import ModelIdentity, ModelMismatchError, check_same_model, identity_of_sae
    from saes.processing import applied_of_record, check_processing, config_of_record

    sae, where = loaded.sae, f"the --init-from SAE {loaded.spec}"
    _require_trainable(sae, loaded.spec)
    transcoder = d_out is not None if transcoder is None else transcoder
    run_target = (prov.get("hook_name_out") or "the run's target hook") if transcoder else None
    mismatch = mode_mismatch(loaded, run_target, prov.get("hook_name"))
    if mismatch:
        raise InitFromError(mismatch, field="train.init_from")
    if d_in is not None and sae.d_in != d_in:
        raise InitFromError(f"train.init_from: {where} reads activations of width d_in={sae.d_in}, this run's data has "
                            f"width {d_in}{_hook_note(prov)}; fine-tune it on activations of its own hook point and model",
                            field="train.init_from")
    if d_out is not None and sae.d_out != d_out:
        src_out = _recorded(loaded, "hook_name_out")
        raise InitFromError(f"train.init_from: {where} predicts activations of width d_out={sae.d_out}, this run's "
                            f"target{' ' + prov['hook_name_out'] if prov.get('hook_name_out') else ''} has width {d_out}; "
                            f"fine-tune it on activations of its own target hook{' ' + src_out if src_out else ''} "
                            f"(--target-hook) and model", field="train.init_from")
    for s in specs:
        if s.architecture != sae.architecture or s.d_sae != sae.d_sae:
            raise InitFromError(
                f"train.init_from: {where} is {sae.architecture} with d_sae={sae.d_sae}, but SAE {s.name!r} of the run "
                f"is {s.architecture} with d_sae={s.d_sae}; pass --architecture {sae.architecture} --d-sae {sae.d_sae} "
                f"(or leave the SAE flags out: they default to the source's)", field="saes")
        if transcoder and s.skip != (sae.W_skip is not None):
            sides = ("is a skip transcoder", "has no skip connection", "pass") if not s.skip else (
                "has no skip connection", "is a skip transcoder", "drop")
            raise InitFromError(f"train.init_from: {where} {sides[0]}, but SAE {s.name!r} of the run {sides[1]}; "
                                f"{sides[2]} --skip (or leave the SAE flags out: they default to the source's)",
                                field="saes")
    if allow_mismatch:
        return
    for key, flag, src_does, run_does in (("hook_name", "--hook", "was trained on", "reads"),
                                          ("hook_name_out", "--target-hook", "predicts", "predicts")):
        src_hook, run_hook = _recorded(loaded, key), prov.get(key)
        if src_hook and run_hook and src_hook != run_hook:
            raise InitFromError(f"train.init_from: {where} {src_does} hook point {src_hook}, this run {run_does} {run_hook}; "
                                f"pass {flag} {src_hook}, or {ALLOW_FLAG} true to fine-tune it on {run_hook} anyway",
                                field="train.init_from")
    run_ident = ModelIdentity.from_json(prov["model_identity"]) if prov.get("model_identity") else None
    src_ident = identity_of_sae(loaded)
    try:
        check_same_model(src_ident, run_ident, recorded_in=where, given_as="this run's model", override=f"{ALLOW_FLAG} true",
                         fix="fine-tune it on activations of the model it records")
        check_processing(loaded, run_ident, sae_name=loaded.spec, model_as="this run's model", override=f"{ALLOW_FLAG} true",
                         fix=lambda wanted: f"fine-tune it on a cache made {'with' if wanted else 'without'} `saesteer "
                                            "cache --process-weights`",
                         model_cfg=config_of_record(prov.get("model_processing")),
                         applied=applied_of_record(prov.get("model_processing")))
    except ModelMismatchError as e:
        raise InitFromError(f"train.init_from: {e}", field="train.init_from") from None
    if src_ident is None or run_ident is None:  # another library's SAE names its model in its own terms
        src_name, run_name = _recorded(loaded, "model_name") or _recorded(loaded, "model"), prov.get("model_name") or prov.get("model")
        if src_name and run_name and not same_model_name(src_name, run_name):
            raise InitFromError(f"train.init_from: {where} records model {src_name!r}, this run's activations come from "
                                f"{run_name!r}; fine-tune it on activations of {src_name!r}, or pass {ALLOW_FLAG} true",
                                field="train.init_from")
    _check_bos(loaded, prov, where, log)


def _check_bos(loaded: Any, prov: dict[str, Any], where: str, log) -> None:
    """Refuse a source trained on contexts that started otherwise with BOS than the run's data (the
    provenance's `bos_policy`: the cache's, or the text's without one)."""
    from saes.bos import check_cache_bos, recorded_prepend_bos, trained_bos_policy

    policy = prov.get("bos_policy")
    if policy is None:
        return
    if prov.get("cache"):
        data_as, policy_as, fix_as = (f"this run's cache {prov['cache']}", "`saesteer cache --bos-policy`",
                                      "build a cache with")
    else:
        data_as, policy_as, fix_as = f"this run's text ({prov.get('dataset')})", "--bos-policy", "pack the text with"
    try:
        check_cache_bos(loaded, policy, sae_as=where, data_as=data_as, policy_as=policy_as,
                        fix_as=fix_as, override=f"{ALLOW_FLAG} true")
    except ValueError as e:
        raise InitFromError(f"train.init_from: {e}", field="train.init_from") from None
    older = trained_bos_policy(loaded) is None and (loaded.provenance or {}).get("tool") == "saesteer"
    if older and recorded_prepend_bos([loaded.sae]) is False and policy != "prepend":
        log(f"note: {where} records prepend_bos=False only (trained before saesteer recorded its data's bos_policy), "
            f"which fits this run's bos_policy {policy!r}; whether its contexts had BOS at document starts ('doc') "
            f"or none ('none') is not recorded")


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
        **({"hook_name_out": _recorded(loaded, "hook_name_out"), "d_out": sae.d_out,
            "skip_connection": sae.W_skip is not None} if sae.is_transcoder else {}),
        "files": prov.get("files") or (prov.get("source") or {}).get("files"),
        "source_provenance": {k: prov.get(k) for k in ("tool", "saesteer_version", "git_commit", "model_identity",
                                                        "dataset", "tokens_trained", "source") if k in prov},
    }


@torch.no_grad()
def initialize_from_source(trainer: Any, loaded: Any, prov: dict[str, Any], log=print,
                           holdout_BD: Tensor | None = None) -> dict[str, Any]:
    """Copy the source's weights into every SAE of a fresh trainer (instead of `Trainer.initialize`)
    and set its activation scale(s); returns the record the saved SAEs carry. `holdout_BD`: the
    held-out input rows, which set a transcoder's input scale (see the module docstring)."""
    cfg = trainer.config.train
    check_source(loaded, [m.spec for m in trainer.members], trainer.d_in, prov, cfg.init_from_allow_mismatch,
                 d_out=trainer.d_out, log=log)
    src = loaded.sae
    norms_F = src.W_dec.norm(dim=1)
    mean_norm = float(norms_F.mean())
    if not (mean_norm > 0 and torch.isfinite(norms_F).all()):
        raise InitFromError(f"train.init_from: {loaded.spec} has zero or non-finite decoder rows", field="train.init_from")
    if trainer.is_transcoder:
        trainer.target_scale = 1.0 / mean_norm  # the source's own output space (see the module docstring)
        trainer.scale = _input_scale(holdout_BD, cfg.normalize_activations)
    else:
        trainer.scale = 1.0 / mean_norm
    record = source_record(loaded)
    spread = float((norms_F / mean_norm - 1).abs().max())
    record["activation_scale"] = trainer.scale
    if trainer.is_transcoder:
        record["target_activation_scale"] = trainer.target_scale
    record["decoder_renormalized"] = spread > 1e-5
    if record["decoder_renormalized"]:
        log(f"note: the decoder rows of {loaded.spec} have norms {float(norms_F.min()):.4g}..{float(norms_F.max()):.4g}; "
            f"they are brought to unit norm with each latent's encoder scaled to match (latent magnitudes change"
            f"{'; TopK then ranks pre-activation x decoder norm' if src.architecture == 'topk' else ''})")
    for m in trainer.members:
        sae = m.sae
        state = {k: v.to(sae.W_enc.device) for k, v in src.state_dict().items()}
        sae.load_state_dict(state)
        if _match_input_centring_(sae, src.cfg.apply_b_dec_to_input):
            record["input_centring_folded"] = True
        sae.fold_activation_scale_(1.0 / trainer.scale, 1.0 / trainer.output_scale)  # raw -> the trainer's scaled space
        if record["decoder_renormalized"]:
            if src.architecture == "topk":
                sae.fold_decoder_norm_(selection_uses_unit_decoder=True)
            else:
                sae.fold_decoder_norm_()
        for t in sae.state_dict().values():
            trainer.coll.broadcast_(t)
    if record.get("input_centring_folded"):
        log(f"note: {loaded.spec} reads its input uncentred (apply_b_dec_to_input false); the run trains it centred, "
            f"as every SAE here, with b_dec @ W_enc added to b_enc (the same function)")
    return record


def _input_scale(holdout_BD: Tensor | None, normalize: bool) -> float:
    """A transcoder run's input scale: a fresh run's (E||s x|| = sqrt(d_in) on the held-out rows)."""
    from training.initialize import estimate_activation_scale

    if not normalize:
        return 1.0
    if holdout_BD is None:
        raise ValueError("initialize_from_source needs the held-out input rows (holdout_BD) to set a transcoder's "
                         "input scale")
    return estimate_activation_scale(holdout_BD.to(torch.float32))


def _match_input_centring_(sae: Any, source_centres: bool) -> bool:
    """Give `sae` (holding the source's weights) the function the source computes with its own
    input centring: pre = (x - b_dec) W_enc + b_enc' equals x W_enc + b_enc for b_enc' = b_enc +
    b_dec W_enc. True when b_enc changed (only an SAE can differ: transcoders never centre)."""
    if bool(sae.cfg.apply_b_dec_to_input) == bool(source_centres):
        return False
    shift_F = sae.b_dec @ sae.W_enc
    sae.b_enc.add_(shift_F if sae.cfg.apply_b_dec_to_input else -shift_F)
    return True
