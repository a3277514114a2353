"""Build a feature store: one streaming pass of an SAE over a cache, then the store is written.

    from features import build_feature_store, CacheSource, BuildConfig
    result = build_feature_store("toy.db", sae, CacheSource("caches/toy"), BuildConfig(), model=model,
                                 tokenizer=model.tokenizer)

Phases and crash safety (the store is built in `<store>.building`, renamed to the store's path
when it is complete: a half store is never at the path, and a store already there, rebuilt with
overwrite=True, stays whole until the new one replaces it):
1. The store file is created with its identity (SAE and cache fingerprints, build settings) and
   `build_state = 'building'`.
2. The pass. Every `checkpoint_rows` rows the pass state (a few tensors per latent; see
   `features.accumulate`) is saved atomically to `<store>.building.state.safetensors`. A killed build,
   re-run with the same arguments, continues from the last checkpoint; since batches are fixed by
   the cache and all sampling is a hash of (seed, row, latent), the result is identical to an
   uninterrupted build. The end of the pass is checkpointed too, and so is a stop signal
   (`stop_signals`: at the next batch boundary, whatever `checkpoint_rows` is).
3. Relations (neighbours, logit effects, Matryoshka links) are computed from the weights and the
   pass state, then latents are written in blocks of `write_block`, one transaction each, with a
   `build_progress` row; a re-run skips written blocks. Finally `build_state = 'complete'`, the
   state file is deleted and the store renamed to its path.
Re-running against a store built from another SAE, cache or settings is refused (overwrite=True
builds the new one beside it; a stopped `<store>.building` of other inputs is discarded, one of these
inputs resumed).

One module over 450 lines on purpose: the phases above are one resumable sequence over one lock
and one state file, and the block rows at the end are what phase 3 writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from safetensors import safe_open

from features.accumulate import FeatureAccumulator
from features.analysis import (CoactSample, activation_correlations, coact_neighbours, decoder_neighbours,
                               logit_effects, matryoshka_links, residual_directions)
from features.checks import CheckedInputs, check_inputs, library_processing_fix
from features.config import BuildConfig
from features.finalize import FLAG_NAMES, PassResult, finalize
from features.fingerprint import sae_description, sae_fingerprint
from features.records import utc_now
from features.source import ActivationSource
from features.store import FeatureStore, StoreError, StoreMismatchError, writer_lock
from features.store.rows import CorrelationRow, FeatureRow, HistogramRow, LogitRow, NeighbourRow, SearchTextRow
from features.store.windows import ExampleBlock
from features.tokentext import LABEL_RULE, token_labels
from features.windowtexts import WindowTexts
from saes.fileio import atomic_save_safetensors, fsync_dir
from saes.formats.base import sae_of
from saes.interop import as_sae
from saes.threads import torch_threads

if TYPE_CHECKING:  # one definition of what `stop_signals` takes, shared with `train`
    from training.run import StopSignals

STATE_SUFFIX = ".state.safetensors"
BUILDING_SUFFIX = ".building"  # the store while it is built (`building_path`)
EventHook = Callable[[str, dict], None]


@dataclass
class BuildResult:
    path: Path
    d_sae: int
    n_rows: int
    pass_seconds: float  # time of the pass done in this call (0 when it was already done)
    pass_rows: int  # rows processed in this call
    total_seconds: float
    resumed: bool
    already_complete: bool
    state_bytes: int
    summary: dict[str, int]
    relabelled: bool = False  # an already complete store's token labels were rewritten (an older rule's)

    @property
    def tokens_per_s(self) -> float:
        return self.pass_rows / self.pass_seconds if self.pass_seconds > 0 else float("nan")


def refresh_vocab(store, tokenizer) -> bool:
    """Write the store's vocabulary (`token_labels`) when it has none or one of an older label rule
    (meta "vocab_labels"), and a tokenizer is at hand. Returns whether it wrote it."""
    if tokenizer is None:
        return False
    if store.has_vocab() and store.meta.get("vocab_labels") == LABEL_RULE:
        return False
    store.write_vocab(token_labels(tokenizer), LABEL_RULE)
    return True


def state_path(path: Path) -> Path:
    return path.with_name(path.name + STATE_SUFFIX)


def building_path(path: Path) -> Path:
    """Where the store for `path` is built (and a stopped build resumes) until it is complete."""
    return path.with_name(path.name + BUILDING_SUFFIX)


def _beside(path: Path) -> tuple[Path, ...]:
    """The files that belong to the store at `path`: SQLite's -wal and -shm, the build's pass state."""
    return Path(str(path) + "-wal"), Path(str(path) + "-shm"), state_path(path)


def _install(building: Path, path: Path) -> None:
    """Put the complete store `building` at `path` in one rename (the store there before, if any,
    is replaced whole; its -wal/-shm files go first: SQLite would read them as the new store's. A
    reader that has it open keeps reading it whole: on POSIX its open files outlive the names).
    Refused (Windows: a file another program has open cannot be removed or replaced), the built
    store waits in `building` and the same build puts it in place without building it again."""
    try:
        for p in _beside(path):
            p.unlink(missing_ok=True)
        os.replace(building, path)
    except OSError as e:
        raise StoreError(
            f"the new store is complete in {building} but could not replace {path} ({e.strerror or e}); close what "
            f"has {path.name} open (a `saesteer serve` of it, an editor, a sync tool), then run the same command: it "
            "puts the new store in place without building it again") from None
    fsync_dir(path.parent)


def _remove_store(path: Path) -> None:
    for p in (path, *_beside(path)):
        p.unlink(missing_ok=True)


def save_state(path: Path, acc: FeatureAccumulator, identity: dict, phase: str, next_context: int) -> None:
    """Write the pass state atomically (`saes.fileio.atomic_save_safetensors`: a full disk an OSError naming it)."""
    meta = {"identity": json.dumps(identity, sort_keys=True), "phase": phase, "next_context": str(next_context)}
    atomic_save_safetensors(path, {k: v.contiguous() for k, v in acc.state_dict().items()}, metadata=meta)


def load_state(path: Path, acc: FeatureAccumulator, identity: dict) -> tuple[str, int] | None:
    """Restore a saved pass state into `acc` if it belongs to this build; else None."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("identity") != json.dumps(identity, sort_keys=True):
                return None
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        acc.load_state_dict(tensors)
    except (OSError, ValueError, RuntimeError):  # unreadable / foreign file: start the pass over
        return None
    return meta["phase"], int(meta["next_context"])


def build_feature_store(
    path: str | Path,
    sae,
    source: ActivationSource,
    cfg: BuildConfig | None = None,
    *,
    model=None,
    tokenizer=None,
    sae_path: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_event: EventHook | None = None,
    allow_model_mismatch: bool = False,
    mismatch_override: str = "allow_model_mismatch=True",
    processing_fix: Callable[[bool], str] = library_processing_fix,
    checked: CheckedInputs | None = None,
    stop_signals: StopSignals | None = None,
) -> BuildResult:
    """Build (or resume, or finish) the feature store at `path` for `sae` over `source`.

    sae: an SAE, or a `saes.formats.LoadedSAE` (the SAE beside its provenance: the model it
    records is checked against the cache's and the model's, and recorded in the store), or a
    `sae_lens.SAE` object (converted: `saes.interop.as_sae`).
    model: a loaded TransformerLens model, for logit effects (optional).
    tokenizer: for token display strings and example text (optional; else `model.tokenizer`).
    sae_path: the SAE's folder, recorded (absolute) so that tools can load the SAE from the store.
    on_event(name, info): called after each 'batch', 'checkpoint', 'pass_done' and 'block'.
    allow_model_mismatch: accept an SAE or model recorded for another model than the cache's.
    mismatch_override, processing_fix: what the refusals say to allow a mismatch and to get a cache
    of the model processed as the SAE wants (`features.checks`; the CLI names its flags).
    checked: what `features.checks.check_inputs` returned for this SAE and source under the same
    allow_model_mismatch: those checks are not made again, only those of a model they did not see.
    stop_signals: as `train`'s (`training.run.StopSignals`; `saesteer.stopsignals.deferred` is one): the
    pass runs inside it; a stop signal noted there saves the pass state at the next batch boundary
    before the build stops (the same build resumes from it).
    The store records the model the activations came from (meta `model_identity`)."""
    t_start = time.perf_counter()
    cfg = cfg or BuildConfig()
    path = Path(path)
    sae = as_sae(sae)  # a sae_lens.SAE object: converted to ours
    loaded, sae = sae, sae_of(sae)
    if sae_path is None and loaded is not sae:
        sae_path = loaded.spec
    if checked is None or not checked.covers(loaded, source, allow_model_mismatch):
        checked = check_inputs(loaded, source, model, allow_model_mismatch, override=mismatch_override,
                               processing_fix=processing_fix)
    else:  # checked before the model was loaded (the CLI): the model itself is checked here
        checked.check_model(model, mismatch_override, processing_fix)
    recorded = checked.recorded
    if tokenizer is None and model is not None:
        tokenizer = getattr(model, "tokenizer", None)
    event = on_event or (lambda name, info: None)
    F = sae.cfg.d_sae
    identity = {
        "sae_fingerprint": sae_fingerprint(sae),
        "cache_fingerprint": source.fingerprint,
        "build_config": cfg.content_fields(),
        "with_logits": model is not None,
        "with_vocab": tokenizer is not None,
    }
    meta = {
        **identity,
        "d_sae": F,
        "model_identity": None if recorded is None else recorded.to_json(),
        "sae": sae_description(sae, sae_path),
        "cache": source.description,
        "context_length": source.context_length,
        "window_before": cfg.window_before,
        "window_after": cfg.window_after,
        "bos_id": source.bos_id,
    }
    with writer_lock(path):
        return _open_and_run(path, sae, source, cfg, identity, meta, model, tokenizer, overwrite, progress, event,
                             stop_signals, t_start)


def _open_and_run(path, sae, source, cfg, identity, meta, model, tokenizer, overwrite, progress, event, stop_signals,
                  t_start):
    F = sae.cfg.d_sae
    building = building_path(path)
    if path.exists() and not overwrite:
        store = FeatureStore.open(path, readonly=False)
        diffs = [k for k in identity if store.meta.get(k) != identity[k]]
        if diffs:
            store.close()
            raise StoreMismatchError(
                f"{path} exists and was built with a different {', '.join(diffs)}; refusing to mix them. Pass "
                f"overwrite=True (CLI: --overwrite) to rebuild it, or choose another output file"
            )
        if store.complete:
            summary = store.meta.get("summary", {})
            relabelled = refresh_vocab(store, tokenizer)
            store.close()
            state_path(path).unlink(missing_ok=True)  # left over if killed right after completing
            return BuildResult(path, F, int(store.meta.get("n_rows", 0)), 0.0, 0, time.perf_counter() - t_start,
                               False, True, 0, summary, relabelled)
        building = path  # a build an older saesteer left at the path itself: finished there
    else:
        if building.exists() and _of_another_build(building, identity):  # a stopped build of no use now
            _remove_store(building)
        if building.exists():  # a stopped build of this one
            store = FeatureStore.open(building, readonly=False)
        else:
            store = FeatureStore.create(building, meta)
    try:
        store.share_windows()  # a build begun by a saesteer of schema version 2, at the path or at .building
        if building != path and store.complete:  # stopped (or refused) after it was built, before it replaced the store
            result = _built(store, building, t_start)
        else:
            result = _run(store, building, sae, source, cfg, identity, model, tokenizer, progress, event, stop_signals,
                          t_start)
    finally:
        store.close()
    if building != path:
        _install(building, path)
    result.path = path
    return result


def _of_another_build(building: Path, identity: dict) -> bool:
    """Whether the stopped build in `building` is of another SAE, cache or settings (or was stopped
    while its file was created)."""
    try:
        with FeatureStore.open(building, readonly=False) as partial:
            return any(partial.meta.get(k) != identity[k] for k in identity)
    except StoreError:
        return True


def _built(store, building: Path, t_start: float) -> BuildResult:
    """The result of a build complete in `building` (nothing is built again; it is put in place next)."""
    state_path(building).unlink(missing_ok=True)  # left over if stopped right after completing
    meta = store.meta
    return BuildResult(building, int(meta["d_sae"]), int(meta.get("n_rows", 0)), 0.0, 0, time.perf_counter() - t_start,
                       True, False, int(meta.get("build_stats", {}).get("state_bytes", 0)), meta.get("summary", {}))


def _run(store, path, sae, source, cfg, identity, model, tokenizer, progress, event, stop_signals, t_start):
    F = sae.cfg.d_sae
    L = source.context_length
    spath = state_path(path)
    acc = FeatureAccumulator(F, cfg, L, bos_id=source.bos_id)
    loaded = load_state(spath, acc, identity)
    phase, next_context = loaded if loaded else ("pass", 0)
    resumed = loaded is not None or bool(store.written_blocks())  # else a stopped build starts over
    pass_rows = 0
    pass_seconds = 0.0
    if phase == "pass":
        from tqdm.auto import tqdm

        cpb = max(1, cfg.batch_rows // L)
        since = 0
        t0 = time.perf_counter()
        bar = tqdm(total=source.n_rows, initial=acc.n_rows, unit="tok", unit_scale=True, desc="feature pass",
                   disable=not progress, smoothing=0.05)
        stop_scope = stop_signals() if stop_signals is not None else contextlib.nullcontext(lambda: None)
        with torch.no_grad(), stop_scope as stop_requested:
            for batch in source.batches(next_context, cpb):
                x = batch.acts_BD.to(device=sae.device, dtype=sae.dtype)
                acts = sae.encode_sparse(x)
                if acts.values_N.device.type != "cpu":
                    acts = type(acts)(*(t.cpu() for t in acts[:3]), acts.d_sae)
                acc.update(acts, batch)
                B = batch.acts_BD.shape[0]
                pass_rows += B
                since += B
                next_context = batch.first_context + batch.n_contexts
                bar.update(B)
                event("batch", {"rows": acc.n_rows, "next_context": next_context})
                if cfg.checkpoint_rows and since >= cfg.checkpoint_rows:
                    save_state(spath, acc, identity, "pass", next_context)
                    since = 0
                    event("checkpoint", {"rows": acc.n_rows, "next_context": next_context})
                if stop_requested() is not None:
                    break
            if stop_requested() is not None:  # saved between batches; the scope's exit then stops the build
                bar.close()
                if since:  # else this batch's checkpoint (or the state resumed from) holds it all
                    save_state(spath, acc, identity, "pass", next_context)
        bar.close()
        if stop_requested() is not None:  # a scope that does not stop by itself
            raise KeyboardInterrupt(f"stopped by signal {stop_requested()}; the pass state is saved")
        pass_seconds = time.perf_counter() - t0
        if acc.n_rows != source.n_rows:
            raise RuntimeError(f"the pass saw {acc.n_rows} rows but the cache holds {source.n_rows}; the cache changed while reading")
        save_state(spath, acc, identity, "pass_done", next_context)
        event("pass_done", {"rows": acc.n_rows, "seconds": pass_seconds})
    res = finalize(acc)
    _write(store, sae, source, cfg, res, model, tokenizer, progress, event)
    store.set_meta(
        build_state="complete",
        built_at=utc_now(),
        build_stats={"pass_rows": pass_rows, "pass_seconds": round(pass_seconds, 3), "state_bytes": acc.nbytes()},
    )
    store.checkpoint_wal()
    try:
        spath.unlink()
    except FileNotFoundError:
        pass
    return BuildResult(path, F, res.n_rows, pass_seconds, pass_rows, time.perf_counter() - t_start, resumed, False,
                       acc.nbytes(), store.meta.get("summary", {}))


def _write(store: FeatureStore, sae, source, cfg: BuildConfig, res: PassResult, model, tokenizer, progress, event) -> None:
    from tqdm.auto import tqdm

    F = sae.cfg.d_sae
    W_dec = sae.W_dec.detach().float().cpu()
    dec_norm = W_dec.norm(dim=1)
    dec_nb = decoder_neighbours(W_dec, cfg.n_neighbours)
    sample = CoactSample(res.coact_lat_FQK, res.coact_n_F, res.n_fires_F)
    # One thread: sorts, indexing and scatters of many small pieces. Two threads took 3-5x the wall
    # time and CPU of one on a 2-core machine (load 3-7); more threads could split at most half of
    # this (1-D sorts run on one thread anyway), ~0.5 s per 8k latents (benchmarks/RESULTS.md).
    with torch_threads(1):
        co_nb = coact_neighbours(sample, cfg.n_neighbours)
        corr = activation_correlations(sample, res.coact_val_FQK, res.coact_self_FQ, res.sum_F, res.sumsq_F, res.n_rows,
                                       cfg.n_neighbours)
    logits = None
    if model is not None and getattr(model, "W_U", None) is not None:
        # what the decoder writes, where it writes it (a transcoder: its target hook; none recorded: no effects)
        md = sae.cfg.metadata or {}
        writes = md.get("hook_name_out") if sae.is_transcoder else md.get("hook_name")
        mapped = residual_directions(W_dec, model, writes) if writes or not sae.is_transcoder else None
        if mapped is not None:
            logits = logit_effects(mapped[0], model, cfg.n_logits)
            logits = logits._replace(method=mapped[1] + logits.method)
    widths = sae.levels or []
    links = None
    if len(widths) >= 2:
        links = matryoshka_links(widths, W_dec, sample, cfg.parent_min_coact, cfg.parent_min_cos,
                                 min_sample=min(cfg.flag_min_fires, cfg.n_quantile) or 1, freq_F=res.freq_F,
                                 min_lift=cfg.parent_min_lift)
    refresh_vocab(store, tokenizer)
    summary = {name: int(res.flags_F4[:, j].sum()) for j, name in enumerate(FLAG_NAMES)}
    summary["alive"] = F - summary["dead"]
    store.set_meta(
        n_rows=res.n_rows,
        logit_method=logits.method if logits is not None else None,
        # "correlations": table `correlations` holds each latent's Pearson correlations, their cross sums
        # estimated from the same sampled events as the co-activation neighbours
        coact={"method": "sample", "events_per_latent": cfg.n_quantile, "latents_per_event": cfg.coact_kmax,
               "correlations": "pearson"},
        summary=summary,
    )
    done = store.written_blocks()
    before, W = cfg.window_before, cfg.window
    blocks = list(enumerate(range(0, F, cfg.write_block)))
    window_texts = WindowTexts()  # a window shown for several latents (the negatives' pool) is decoded once
    for b, f0 in tqdm(blocks, desc="writing store", unit="block", disable=not progress):
        if b in done:
            continue
        f1 = min(F, f0 + cfg.write_block)
        with torch_threads(1):  # ~90% Python; its small tensor ops ran 3x slower in wall on two threads (RESULTS.md)
            rows = _block_rows(f0, f1, res, dec_norm, dec_nb, co_nb, corr, logits, links, source, tokenizer, before, W,
                               window_texts)
        store.write_feature_block(b, f0, f1, *rows)
        event("block", {"block": b, "first": f0, "end": f1})


_KIND_CODE = {"top": 0, "quantile": 1, "negative": 2}


def _searchable_text(window, centre: int, position: int, acts: bytes | None, bos_id: int | None) -> str:
    """An example's text for full-text search (its window's (token_ids, text, token_offsets), its
    centre, position and activation bytes): without the BOS marker that starts its context (as
    `records.without_start_bos` shows examples), so that searching "text" does not find every
    window that begins with "<|begin_of_text|>"."""
    token_ids, text, offsets = window
    tokens = np.frombuffer(token_ids, dtype="<i4")
    if bos_id is None or centre != position or len(tokens) < 2 or int(tokens[0]) != bos_id or (
            acts is not None and np.frombuffer(acts, dtype="<f4")[0] > 0):
        return text  # centre == pos: the window starts at the context's first token
    return text[int(np.frombuffer(offsets, dtype="<i4")[1]):]


def _block_rows(f0, f1, res: PassResult, dec_norm, dec_nb, co_nb, corr, logits, links, source, tokenizer, before, W,
                window_texts):
    """The rows of one write transaction, built from whole-block arrays (no per-example tensor ops)."""
    sl = slice(f0, f1)
    ids = list(range(f0, f1))
    feats = _feature_rows(f0, f1, res, dec_norm, links)
    widths = res.bin_width_F[sl].tolist()
    hists = [HistogramRow(f, widths[i], json.dumps(h)) for i, (f, h) in enumerate(zip(ids, res.hist_FH[sl].tolist()))]
    logit_rows: list[LogitRow] = []
    if logits is not None:
        for kind, tid, val in (("promoted", logits.top_ids_Fn, logits.top_vals_Fn),
                               ("suppressed", logits.bottom_ids_Fn, logits.bottom_vals_Fn)):
            for f, t_row, v_row in zip(ids, tid[sl].tolist(), val[sl].tolist()):
                logit_rows.extend(LogitRow(f, kind, r, t, v) for r, (t, v) in enumerate(zip(t_row, v_row)))
    nb_rows: list[NeighbourRow] = []
    for f, o_row, s_row in zip(ids, dec_nb.ids_Fn[sl].tolist(), dec_nb.score_Fn[sl].tolist()):
        nb_rows.extend(NeighbourRow(f, "decoder", r, o, sc, None) for r, (o, sc) in enumerate(zip(o_row, s_row)) if o >= 0)
    for f, o_row, s_row, c_row in zip(ids, co_nb.ids_Fn[sl].tolist(), co_nb.score_Fn[sl].tolist(), co_nb.count_Fn[sl].tolist()):
        nb_rows.extend(NeighbourRow(f, "coact", r, o, sc, c) for r, (o, sc, c) in enumerate(zip(o_row, s_row, c_row)) if o >= 0)
    corr_rows = [CorrelationRow(f, r, o, p, c) for f, o_row, p_row, c_row in
                 zip(ids, corr.ids_Fn[sl].tolist(), corr.pearson_Fn[sl].tolist(), corr.cossim_Fn[sl].tolist())
                 for r, (o, p, c) in enumerate(zip(o_row, p_row, c_row)) if o >= 0]
    examples = _example_rows(f0, f1, res, source, tokenizer, before, W, window_texts)
    top_text: dict[int, list[str]] = {}
    for f, kind, _, _, _, _, pos, centre, w, acts in zip(*examples.columns):
        window = examples.windows[w]
        if kind == "top" and window[1]:
            top_text.setdefault(f, []).append(_searchable_text(window, centre, pos, acts, source.bos_id))
    fts = [SearchTextRow(f, "", "\n".join(top_text.get(f, []))) for f in ids]
    return feats, hists, examples, logit_rows, nb_rows, fts, corr_rows


def _feature_rows(f0, f1, res: PassResult, dec_norm, links) -> list[FeatureRow]:
    """The block's feature rows: statistics, flags, decoder norm and (with `links`) hierarchy links."""
    sl = slice(f0, f1)
    flags_F4 = res.flags_F4[sl].tolist()
    flags = [" ".join(n for n, on in zip(FLAG_NAMES, row) if on) for row in flags_F4]
    n_fires = res.n_fires_F[sl].tolist()
    cols = [res.freq_F[sl].tolist(), res.mean_F[sl].tolist(), res.std_F[sl].tolist(), res.max_F[sl].tolist(),
            res.sum_F[sl].tolist(), res.typical_max_F[sl].tolist(), res.q_F3[sl, 0].tolist(), res.q_F3[sl, 1].tolist(),
            res.q_F3[sl, 2].tolist()]
    min_pos, max_pos, bos = res.min_pos_F[sl].tolist(), res.max_pos_F[sl].tolist(), res.bos_fires_F[sl].tolist()
    norms = dec_norm[sl].tolist()
    if links is not None:
        lev, par = links.level_F[sl].tolist(), links.parent_F[sl].tolist()
        pco, pcos, meth = links.parent_coact_F[sl].tolist(), links.parent_cos_F[sl].tolist(), links.method_F[f0:f1]
    feats = []
    for i, f in enumerate(range(f0, f1)):
        n = n_fires[i]
        link = (None, None, None, None, None)
        if links is not None:
            link = (lev[i], None, None, None, None) if par[i] < 0 else (lev[i], par[i], _nan(pco[i]), _nan(pcos[i]), meth[i])
        feats.append(FeatureRow(
            latent=f, n_fires=n, freq=cols[0][i], mean_act=_nan(cols[1][i]), std_act=_nan(cols[2][i]), max_act=cols[3][i],
            sum_act=cols[4][i], typical_max_act=_nan(cols[5][i]), q50=_nan(cols[6][i]), q90=_nan(cols[7][i]),
            q99=_nan(cols[8][i]), min_pos=min_pos[i] if n else None, max_pos=max_pos[i] if n else None,
            bos_fires=bos[i], decoder_norm=norms[i], flags=flags[i], level=link[0], parent_latent=link[1],
            parent_coact=link[2], parent_cos=link[3], parent_method=link[4]))
    return feats


def _block_examples(f0, f1, res: PassResult, W):
    """The block's stored examples as flat tensors, ordered by (kind, feature, rank): kind code
    (0 top, 1 quantile, 2 negative), feature, rank, activation, quantile, seq, position, window [E, W]."""
    sl = slice(f0, f1)
    parts = []
    for code, val, q, seq, pos, win in (
        (0, res.top_val_FK[sl], None, res.top_seq_FK[sl], res.top_pos_FK[sl], res.top_win_FKW[sl]),
        (1, res.qex_val_FQ[sl], res.qex_q_FQ[sl], res.qex_seq_FQ[sl], res.qex_pos_FQ[sl], res.qex_win_FQW[sl]),
        (2, None, None, res.neg_seq_FG[sl], res.neg_pos_FG[sl], None),
    ):
        ok = (val > float("-inf")) if val is not None else (seq >= 0)
        a, k = ok.nonzero(as_tuple=True)
        n = a.numel()
        parts.append((
            torch.full((n,), code), a + f0, k, val[a, k] if val is not None else torch.zeros(n),
            q[a, k] if q is not None else torch.full((n,), float("nan")), seq[a, k], pos[a, k],
            win[a, k] if win is not None else torch.zeros(n, W),
        ))
    return (torch.cat(c) for c in zip(*parts))


def _example_rows(f0, f1, res: PassResult, source, tokenizer, before, W, window_texts) -> ExampleBlock:
    """The block's examples: each window's tokens (trimmed to its context), activations and, with a
    tokenizer, text and offsets (from `window_texts`, a `WindowTexts`). A window is a function of
    its centre (context, position), and a block's ~70 examples per latent show far fewer distinct
    centres (the negatives come from one pool, a token tops several latents): each centre's window
    is read, trimmed and decoded once, the examples only name it."""
    kind_E, f_E, rank_E, val_E, q_E, seq_E, pos_E, win_EW = _block_examples(f0, f1, res, W)
    E = seq_E.numel()
    # the distinct centres, in the order the examples first name them (the store's window ids follow it)
    span = int(pos_E.max()) + 1 if E else 1
    centre_U, at_E = torch.unique(seq_E * span + pos_E, return_inverse=True)
    first_U = torch.full((centre_U.numel(),), E, dtype=torch.int64).scatter_reduce_(0, at_E, torch.arange(E), "amin")
    order_U = first_U.argsort()
    index_U = torch.empty_like(order_U)
    index_U[order_U] = torch.arange(order_U.numel())
    w_E = index_U[at_E]  # each example's window, an index into the block's windows
    first_U = first_U[order_U]
    seq_U, pos_U = seq_E[first_U], pos_E[first_U]
    toks_UW = source.window_tokens(seq_U, pos_U - before, W) if E else torch.empty(0, W, dtype=torch.int64)
    valid = toks_UW >= 0
    has = valid.any(1)
    lo_U = torch.where(has, valid.int().argmax(1), before)
    hi_U = torch.where(has, W - valid.flip(1).int().argmax(1), before + 1)  # windows are contiguous within a context
    toks_np = toks_UW.numpy().astype("<i4")
    window_ids = [toks_np[u, lo:hi].tobytes() for u, (lo, hi) in enumerate(zip(lo_U.tolist(), hi_U.tolist()))]
    texts: list[tuple] = [(None, None)] * len(window_ids)  # (text, offsets) per window: with a tokenizer only
    if tokenizer is not None and window_ids:
        texts = window_texts.get(tokenizer, window_ids)
    windows = [(ids, text, offsets) for ids, (text, offsets) in zip(window_ids, texts)]
    # each example's activations over its window's tokens; None when all zero bytes (every negative)
    lo_E, hi_E = lo_U[w_E], hi_U[w_E]
    cols = torch.arange(W)
    inside_EW = (cols >= lo_E[:, None]) & (cols < hi_E[:, None])
    win_np = win_EW.numpy().astype("<f4")
    zero_E = ((win_np.view("<u4") == 0) | ~inside_EW.numpy()).all(1).tolist()
    acts_bytes, row = win_np.tobytes(), 4 * W
    acts = [None if z else acts_bytes[e * row + 4 * lo:e * row + 4 * hi]
            for e, (z, lo, hi) in enumerate(zip(zero_E, lo_E.tolist(), hi_E.tolist()))]
    kinds = ("top", "quantile", "negative")
    return ExampleBlock(windows, (
        f_E.tolist(), [kinds[k] for k in kind_E.tolist()], rank_E.tolist(), val_E.tolist(),
        [_nan(q) for q in q_E.tolist()], seq_E.tolist(), pos_E.tolist(), (before - lo_E).tolist(),
        w_E.tolist(), acts))


def _nan(x):
    return None if x is None or x != x else x
