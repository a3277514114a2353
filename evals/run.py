"""Evaluate several SAEs side by side on the same held-out data.

    inputs = EvalInputs(model, heldout, ce_tokens=heldout.tokens[:32], keep_ids=heldout.excluded_ids,
                        tokenizer=model.tokenizer, probing=...)
    results = evaluate_saes({"a": loaded_a, "b": loaded_b}, inputs, EvalConfig())

Each SAE is evaluated at its own hook point (`sae.cfg.metadata["hook_name"]`); `heldout` holds every
hook's activations at the same positions, so the SAEs see the same tokens.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import torch
from torch import Tensor

from evals.absorption import FirstLetterWords, first_letter_absorption
from evals.config import EvalConfig
from evals.activations import HeldOutActivations
from evals.probing import ProbingData, Task, sparse_probing
from evals.reconstruction import activation_metrics, model_metrics_many
from saes.hookpoints import transcoder_target
from saes.identity import check_sae_model
from saes.interop import as_loaded_sae


class ProbingInputs(NamedTuple):
    """What sparse probing runs on, per hook: token activations grouped into items, and tasks."""

    data: Mapping[str, ProbingData]  # hook -> data
    tasks: list[Task]
    source: str  # e.g. "toyworld.concept_masks" or the labelled file


class EvalInputs(NamedTuple):
    model: Any
    heldout: HeldOutActivations
    ce_tokens: Tensor | None  # [N, L] contexts for CE/KL (None or empty: skip)
    keep_ids: tuple[int, ...]  # tokens whose positions keep their clean activation when spliced
    tokenizer: Any = None
    rows: Mapping[str, Tensor] | None = None  # SAE name -> activation rows replacing heldout's (e.g. a cache holdout)
    target_rows: Mapping[str, Tensor] | None = None  # transcoder name -> its target rows, paired with `rows`
    rows_source: Mapping[str, str] | None = None  # SAE name -> where its rows came from
    probing: ProbingInputs | None = None
    absorption_words: FirstLetterWords | None = None  # shared by several calls (None: this call reads its own)
    # an SAE recorded for another model, or for other weight processing, is refused (saes.identity.check_sae_model)
    # unless this is True; `saesteer eval` checks when it loads the model, with --allow-model-mismatch
    allow_model_mismatch: bool = False


def _describe(loaded) -> dict[str, Any]:
    sae = loaded.sae
    cfg = sae.cfg
    return {"spec": loaded.spec, "format": loaded.format, "architecture": sae.architecture, "d_in": sae.d_in,
            "d_sae": sae.d_sae, "k": getattr(cfg, "k", None),
            "matryoshka_widths": list(getattr(cfg, "matryoshka_widths", []) or []) or None,
            "hook_name": cfg.metadata.get("hook_name"), "model_name": cfg.metadata.get("model_name"),
            **({"hook_name_out": cfg.metadata.get("hook_name_out"), "d_out": sae.d_out,
                "skip_connection": sae.W_skip is not None} if sae.is_transcoder else {}),
            "source": (loaded.provenance or {}).get("source")}


# absorption compares the decoder rows with a probe direction in the space of the activations the
# latents read: a transcoder's decoder writes its target hook, another space
TRANSCODER_ABSORPTION = ("not defined for a transcoder: absorption compares the decoder rows with a probe direction "
                         "of the activations its latents read, and a transcoder's decoder writes its target hook")


def evaluate_saes(saes: Mapping[str, Any], inputs: EvalInputs, cfg: EvalConfig,
                  say: Callable[[str], None] = lambda _: None, progress: bool = False) -> dict[str, dict[str, Any]]:
    """{name: {description..., "metrics": {...}, "absorption": {...}, "probing": {...}}}; `ce_skipped`:
    why CE loss recovered and KL were left out (`training.evaluate.splice_problem`). `say` is told
    each step; `progress` draws bars (stderr) over the CE contexts, the absorption letters and the
    probing tasks (the words' forward pass: `FirstLetterWords`'s own `progress`). `saes`: name ->
    `saes.formats.LoadedSAE`, or an SAE in memory (ours, or a `sae_lens.SAE` object: converted)."""
    saes = {name: as_loaded_sae(v) for name, v in saes.items()}
    if inputs.model is not None:
        for name, loaded in saes.items():
            check_sae_model(inputs.model, loaded, sae_name=name, allow_mismatch=inputs.allow_model_mismatch)
    words = inputs.absorption_words
    if words is None and cfg.absorption and inputs.tokenizer is not None:
        words = FirstLetterWords(inputs.model, inputs.tokenizer, cfg.absorption_prefix, progress)
    if words is not None and (words.model is not inputs.model or words.prefix != cfg.absorption_prefix):
        raise ValueError(f"the shared absorption words were read on another model or with the prefix {words.prefix!r}, "
                         f"not absorption_prefix {cfg.absorption_prefix!r}: build them with this model and config")
    for loaded in saes.values():
        loaded.sae.eval()
    spliced, ce_skipped = _model_metrics(saes, inputs, cfg, say, progress)
    out: dict[str, dict[str, Any]] = {}
    for name, loaded in saes.items():
        sae = loaded.sae
        hook = sae.cfg.metadata["hook_name"]
        rows = inputs.rows.get(name) if inputs.rows else None
        x = rows if rows is not None else inputs.heldout.acts[hook]
        y = None
        if sae.is_transcoder:  # scored against its target hook's rows at the same tokens
            target = transcoder_target(sae)
            y = inputs.target_rows[name] if rows is not None and inputs.target_rows else inputs.heldout.acts[target]
            say(f"{name}: transcoder {hook} -> {target}")
        say(f"{name}: activation metrics on {x.shape[0]:,} held-out tokens at {hook}")
        metrics = {**activation_metrics(sae, x, cfg.dense_threshold, y), **spliced.get(name, {})}
        entry: dict[str, Any] = {**_describe(loaded), "metrics": metrics,
                                 "rows_source": (inputs.rows_source or {}).get(name, "held-out text"),
                                 **({"ce_skipped": ce_skipped[name]} if name in ce_skipped else {})}
        if cfg.absorption and words is not None and sae.is_transcoder:
            entry["absorption"] = {"skipped": TRANSCODER_ABSORPTION}
        elif cfg.absorption and words is not None:
            entry["absorption"] = first_letter_absorption(
                sae, words.activations(hook, say), [w for _, w in words.words], max_k=cfg.absorption_max_k,
                f1_jump=cfg.absorption_f1_jump, min_words=cfg.absorption_min_words, seed=cfg.seed, progress=progress)
        # probed at `hook`, where the latents are computed from (a transcoder's input, not its target)
        if cfg.probing and inputs.probing is not None and hook in inputs.probing.data:
            say(f"{name}: sparse probing on {len(inputs.probing.tasks)} tasks ({inputs.probing.source})")
            entry["probing"] = {"source": inputs.probing.source,
                                **sparse_probing(sae, inputs.probing.data[hook], inputs.probing.tasks, cfg.probing_ks,
                                                 progress)}
        out[name] = entry
    return out


def _model_metrics(saes: Mapping[str, Any], inputs: EvalInputs, cfg: EvalConfig,
                   say: Callable[[str], None], progress: bool = False
                   ) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """({name: CE loss recovered and KL}, {name: why they were left out}): every SAE spliced in over
    the CE contexts, the clean pass of each batch run once for all (`model_metrics_many`); none where a
    splice is not an edit of the hook its name says (`saesteer train`'s rule, `splice_problem`)."""
    from training.evaluate import splice_problem

    if inputs.ce_tokens is None or not len(inputs.ce_tokens) or cfg.ce_contexts <= 0:
        return {}, {}
    skipped = {}
    for name, loaded in saes.items():
        sae = loaded.sae
        problem = splice_problem(inputs.model, transcoder_target(sae) if sae.is_transcoder else sae.cfg.metadata["hook_name"])
        if problem is not None:
            skipped[name] = problem
    spliced = {name: (x.sae, x.sae.cfg.metadata["hook_name"]) for name, x in saes.items() if name not in skipped}
    if not spliced:
        return {}, skipped
    say(f"{', '.join(spliced)}: CE loss recovered and KL over {len(inputs.ce_tokens)} contexts")
    return (model_metrics_many(inputs.model, spliced, inputs.ce_tokens, inputs.keep_ids, cfg.ce_batch_size, progress),
            skipped)


def token_probing_data(heldout: HeldOutActivations, hooks: list[str]) -> dict[str, ProbingData]:
    """Every held-out token is an item."""
    n = int(heldout.row_context.numel())
    return {h: ProbingData(heldout.acts[h], None, n) for h in hooks}


def token_labels(heldout: HeldOutActivations, masks_NL: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Per-row labels [R] of the held-out rows from per-context masks [N, L]."""
    return {name: m.bool().cpu()[heldout.row_context, heldout.row_position] for name, m in masks_NL.items()}


def text_probing_data(model, hooks: list[str], texts_tokens: list[Tensor],
                      excluded_ids: tuple[int, ...]) -> dict[str, ProbingData]:
    """Each text is an item: its tokens' activations, grouped (padding and excluded tokens dropped)."""
    from training.runner import ActivationRunner

    runner = ActivationRunner(model, hooks, forward="transformer_lens")
    excl = torch.tensor(excluded_ids, dtype=torch.long)
    parts: dict[str, list[Tensor]] = {h: [] for h in hooks}
    items: list[Tensor] = []
    for i, toks in enumerate(texts_tokens):
        got = runner.run(toks[None].long())
        keep = ~torch.isin(toks.long(), excl) if excl.numel() else torch.ones(len(toks), dtype=torch.bool)
        if not keep.any():
            keep[:] = True
        for h in hooks:
            parts[h].append(got[h][0].to("cpu", torch.float32)[keep])
        items.append(torch.full((int(keep.sum()),), i, dtype=torch.long))
    item_R = torch.cat(items)
    return {h: ProbingData(torch.cat(parts[h]), item_R, len(texts_tokens)) for h in hooks}
