"""Output scores for the latents of a feature store: steer with each, and score whether the text
moved toward its label (`autointerp.output_score`); the score goes into the store beside the label's
input scores (method "output"), and semantic search ranks with it.

    results = score_outputs(model, sae, store, [12, 40], OutputScoreConfig(), judge=None)

Per latent: `samples` generations from `prompt` with the latent added at `positions` (default BOS
and the first four generated tokens, where the toy model fixes its topic), at the store's recommended
strength when there is one, else `strength` x its typical max; against the same seeds unsteered
(generated once for all latents). Here in `saesteer`: it needs the model, the SAE and the store
together, which only the face loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = ["OutputScoreConfig", "score_outputs"]


@dataclass
class OutputScoreConfig:
    """Output scores: how to steer and how many generations to compare."""

    samples: int = field(default=8, metadata={"help": "generation pairs (steered / unsteered, same seed) per latent"})
    new_tokens: int = field(default=32, metadata={"help": "tokens generated per sample"})
    strength: float = field(default=2.0, metadata={"help": "added strength in multiples of the latent's typical max "
                                                           "(when the store has no recommended strength for it)"})
    positions: str = field(default="0,1,2,3,4", metadata={"help": "token positions steered: 'all', or indices (0 = BOS)"})
    prompt: str = field(default="", metadata={"help": "prompt of every sample (default: none, BOS only)"})
    seed: int = field(default=0, metadata={"help": "sampling seed (the same for steered and unsteered)"})
    max_consecutive_failures: int = field(
        default=25, metadata={"help": "stop after this many latents in a row failed (a dead or misconfigured judge); 0 = never"}
    )

    def __post_init__(self) -> None:
        if self.max_consecutive_failures < 0:
            raise ValueError("OutputScoreConfig.max_consecutive_failures must be >= 0 (0 = never stop)")
        if self.samples < 1:
            raise ValueError("OutputScoreConfig.samples must be >= 1")
        if self.new_tokens < 1:
            raise ValueError("OutputScoreConfig.new_tokens must be >= 1")
        if not self.strength > 0:
            raise ValueError("OutputScoreConfig.strength must be > 0 (multiples of the typical max)")

    def edit_positions(self):
        if self.positions.strip() == "all":
            return "all"
        try:
            return tuple(int(p) for p in self.positions.split(",") if p.strip())
        except ValueError:
            raise ValueError(f"OutputScoreConfig.positions: {self.positions!r} is not 'all' or indices like 0,1,2") from None


def score_outputs(model: Any, sae: Any, store: Any, latents: Sequence[int], cfg: OutputScoreConfig, *,
                  judge: Any = None, write: bool = True, progress: bool = False) -> dict[int, Any]:
    """latent -> `autointerp.output_score.OutputScore`, written into `store` (writable) when `write`.
    Unlabelled latents are skipped: there is nothing to score against. A latent the judge gives no
    answer for (`JudgeError`) gets a score with `failed` set and the next is asked, as `label` goes
    on past a failing latent, until `cfg.max_consecutive_failures` failed in a row (the latents after
    them are left out of the result); a refused key (`CredentialsRejected`) stops the run."""

    # here, not at the top: the CLI reads OutputScoreConfig to build --help
    from autointerp.judge import CredentialsRejected, JudgeError
    from autointerp.output_score import (OUTPUT_METHOD, OUTPUT_PROMPT_VERSION, OutputScore, output_score_judge,
                                         output_score_offline)
    from autointerp.featurestore import JUDGE_KIND
    from autointerp.syncrun import run_coroutine_sync
    from features import LabelProvenance, ScoreInput
    from steering import FeatureEdit, GenerationConfig, StoreLink
    from steering.generation import generate, with_sae_bos
    from steering.session import steer

    link = StoreLink(store)
    gen = GenerationConfig(max_new_tokens=cfg.new_tokens, seed=cfg.seed, stop_at_eos=False,
                           prepend_bos=None if cfg.prompt else True)  # no prompt: BOS is all there is to read
    gen = with_sae_bos(gen, [sae])  # the steered and the unsteered pass read the same tokens, as the SAE did
    prompts = [cfg.prompt] * cfg.samples
    unsteered = generate(model, prompts, gen).texts
    out: dict[int, Any] = {}
    streak = 0  # latents failed in a row
    from tqdm.auto import tqdm

    for i in tqdm(list(latents), desc="output scores", unit="latent", disable=not progress):
        lab = store.label(i)
        if lab is None:
            continue
        rec = store.feature(i)
        rec_strength = rec.recommended_strength if rec.strength_source else None
        strength = float(rec_strength) if rec_strength else cfg.strength
        edit = FeatureEdit(int(i), "add", strength, unit="max_act", positions=cfg.edit_positions())
        with steer(model, sae, [edit], typical_max=link.typical_max) as s:
            steered = s.generate(prompts, gen).texts
        detail = ((lab.provenance.extra or {}).get("autointerp") or {}).get("detail") if lab.provenance else None
        if judge is None:
            res = output_score_offline(lab.text, detail, unsteered, steered)
        else:
            try:
                res = run_coroutine_sync(lambda: output_score_judge(judge, lab.text, unsteered, steered, latent=int(i),
                                                                       seed=cfg.seed))
            except CredentialsRejected:
                raise
            except JudgeError as e:
                res = OutputScore(None, 0, 0, 0, failed=e.reason)
        out[int(i)] = res
        streak = streak + 1 if res.failed else 0
        if cfg.max_consecutive_failures and streak >= cfg.max_consecutive_failures:
            break
        if write and res.value is not None:
            prov = LabelProvenance(
                judge_model=judge.model if judge is not None else "offline/label-words",
                judge_kind=JUDGE_KIND[judge.kind] if judge is not None else "offline",
                prompt_version=OUTPUT_PROMPT_VERSION,
                params={"samples": cfg.samples, "new_tokens": cfg.new_tokens, "strength_x_typical_max": strength,
                        "positions": cfg.positions, "prompt": cfg.prompt, "seed": cfg.seed,
                        **(judge.settings_of(res.usage) if judge is not None else {})},
                extra={"output_score": res.details(), "label": lab.text},
            )
            store.write_scores(int(i), [ScoreInput(OUTPUT_METHOD, float(res.value), res.n_pairs, res.details())],
                               provenance=prov, label_id=lab.id)
    return out
