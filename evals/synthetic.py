"""Ground-truth feature recovery on SAELens's synthetic data generator (`sae_lens.synthetic`).

A synthetic world is a `SyntheticModel` (feature dictionary, Zipfian firing probabilities,
hierarchy with mutually exclusive children, low-rank correlations, per-feature magnitudes)
together with a fixed training stream and a fixed evaluation set, so that every SAE trained
on it sees the same rows and is scored on the same rows:

    world = SyntheticWorld(RECIPES["synthsaebench-4k"])
    result = train_ours(world, [SAESpec("topk", d_sae=1024, k=12)], samples=200_000, out_dir=tmp)
    scores = evaluate(to_sae_lens(result.saes["topk_k12_f1024"]), world)   # SAELens's own evaluation

Scores come from `sae_lens.synthetic.eval_sae_on_synthetic_data`: F1 / precision / recall of
each latent as a detector of its best-matching true feature (by decoder cosine), MCC (Hungarian
matching of decoder rows to true feature vectors), explained variance, L0, dead latents.

Shape key: N rows, D hidden_dim (the SAE's d_in), G ground-truth features.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor


@dataclass(frozen=True)
class WorldRecipe:
    """A synthetic world and the SAE shape trained on it (SynthSAEBench's parameters, scalable)."""

    name: str
    num_features: int  # G
    hidden_dim: int  # D
    d_sae: int
    k: int
    roots: int
    branching: int
    depth: int
    orthogonalize_steps: int = 100  # SynthSAEBench: 100 steps at lr 3e-4
    correlation_rank: int = 25
    seed: int = 42
    note: str = ""

    def model_config(self) -> Any:
        from sae_lens.synthetic import (
            FoldedNormalMagnitudeConfig,
            HierarchyConfig,
            LinearMagnitudeConfig,
            LowRankCorrelationConfig,
            OrthogonalizationConfig,
            SyntheticModelConfig,
            ZipfianFiringProbabilityConfig,
        )

        return SyntheticModelConfig(
            num_features=self.num_features, hidden_dim=self.hidden_dim,
            firing_probability=ZipfianFiringProbabilityConfig(max_prob=0.4, min_prob=5e-4, exponent=0.5),
            hierarchy=HierarchyConfig(total_root_nodes=self.roots, branching_factor=self.branching, max_depth=self.depth,
                                      mutually_exclusive_portion=1.0, mutually_exclusive_min_depth=0,
                                      compensate_probabilities=True, scale_children_by_parent=True),
            mean_firing_magnitudes=LinearMagnitudeConfig(start=5.0, end=4.0),
            std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=0.5, std=0.5),
            correlation=LowRankCorrelationConfig(correlation_scale=0.1, rank=self.correlation_rank),
            orthogonalization=(OrthogonalizationConfig(num_steps=self.orthogonalize_steps, lr=3e-4)
                               if self.orthogonalize_steps else None),
            bias=0.5, seed=self.seed,
        )

    def hierarchical_features(self) -> int:
        per_tree = sum(self.branching**d for d in range(self.depth + 1))
        return min(self.num_features, self.roots * per_tree)


# SynthSAEBench-16k is 16,384 features in 768 dimensions, SAE width 4096 and k 25 (about the true
# L0 of the 4096 most frequent features), 128 trees of depth 3 and branching 4. Scaled by 1/4 in
# features and width (hidden 192 keeps features/hidden near 21): 32 trees of depth 3.
RECIPES: dict[str, WorldRecipe] = {
    "synthsaebench-4k": WorldRecipe("synthsaebench-4k", 4096, 192, d_sae=1024, k=12, roots=32, branching=4, depth=3,
                                    note="SynthSAEBench-16k scaled by 1/4"),
    "deep-4k": WorldRecipe("deep-4k", 4096, 192, d_sae=1024, k=12, roots=8, branching=3, depth=5,
                           note="deeper hierarchy: 8 trees of depth 5, branching 3"),
    # the CI floor (tests/test_synthetic_quality.py): small enough for seconds on a busy CPU
    "ci-1k": WorldRecipe("ci-1k", 512, 96, d_sae=256, k=8, roots=16, branching=3, depth=2, orthogonalize_steps=0,
                         correlation_rank=8, note="CI quality floor"),
}


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """SAELens's orthogonalisation draws a tqdm bar on stderr (with disable= set explicitly, so
    TQDM_DISABLE does not reach it); benchmarks and tests want none."""
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        yield


class ReplayedFeatures:
    """Stands in for SAELens's `ActivationGenerator` in `eval_sae_on_synthetic_data`: replays a
    fixed set of feature activations (stored sparse) in chunks of `chunk` rows, so every SAE is
    evaluated on the same rows."""

    def __init__(self, chunks: list[Tensor], chunk: int) -> None:
        self.chunks, self.chunk, self._next = chunks, chunk, 0

    @property
    def rows(self) -> int:
        return self.chunk * len(self.chunks)

    def rewind(self) -> None:
        self._next = 0

    def sample(self, batch_size: int) -> Tensor:
        if batch_size != self.chunk or self._next >= len(self.chunks):
            raise ValueError(f"replay holds {len(self.chunks)} chunks of {self.chunk} rows; asked for {batch_size} rows "
                             f"at chunk {self._next}")
        acts = self.chunks[self._next].to_dense()
        self._next += 1
        return acts


class SyntheticWorld:
    """A recipe's synthetic model, its training rows (one fixed stream, grown on demand) and
    its evaluation set. Rows are drawn under fixed seeds, independent of the global RNG.

    `cache_dir`: keep the model (its orthogonalisation is minutes of CPU at SynthSAEBench
    sizes) and the training rows there, for the next run with the same recipe."""

    def __init__(self, recipe: WorldRecipe, eval_rows: int = 32_768, eval_chunk: int = 4096,
                 cache_dir: str | os.PathLike | None = None) -> None:
        from sae_lens.synthetic import SyntheticModel

        self.recipe = recipe
        self.cache = Path(cache_dir) / _recipe_key(recipe) if cache_dir else None
        self._train_ND = torch.empty(0, recipe.hidden_dim)
        if self.cache is not None and (self.cache / "model").is_dir():
            self.model = SyntheticModel.load_from_disk(self.cache / "model")
            if (self.cache / "train.safetensors").is_file():
                from safetensors.torch import load_file

                self._train_ND = load_file(self.cache / "train.safetensors")["rows"]
        else:
            with _quiet_progress():
                self.model = SyntheticModel(recipe.model_config())
            if self.cache is not None:
                self.model.save(self.cache / "model")
        self.model.eval()
        self.holdout_ND = self._draw_hidden(16_384, seed=recipe.seed * 1000 + 1)
        self.eval_features = self._draw_eval(eval_rows, eval_chunk, seed=recipe.seed * 1000 + 2)

    @torch.no_grad()
    def _draw_hidden(self, n: int, seed: int, chunk: int = 8192) -> Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            parts = [self.model.sample(min(chunk, n - i)) for i in range(0, n, chunk)]
        return torch.cat(parts).float()

    @torch.no_grad()
    def _draw_eval(self, n: int, chunk: int, seed: int) -> ReplayedFeatures:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            chunks = [self.model.activation_generator.sample(chunk).to_sparse() for _ in range(-(-n // chunk))]
        return ReplayedFeatures(chunks, chunk)

    def train_rows(self, n: int) -> Tensor:
        """The first `n` rows of the training stream [n, D] (drawn once, extended when asked for more)."""
        have = self._train_ND.shape[0]
        if n > have:
            more = self._draw_hidden(n - have, seed=self.recipe.seed * 1000 + 3 + have)
            self._train_ND = torch.cat([self._train_ND, more])
            if self.cache is not None:
                from safetensors.torch import save

                from saes.fileio import atomic_write_bytes

                atomic_write_bytes(self.cache / "train.safetensors", save({"rows": self._train_ND.contiguous()}))
        return self._train_ND[:n]

    def true_l0(self, top: int | None = None) -> float:
        """Mean number of active true features per evaluation row (of the `top` most frequent)."""
        total = 0
        for c in self.eval_features.chunks:
            idx = c.coalesce().indices()[1]
            total += int((idx < top).sum()) if top is not None else idx.numel()
        return total / self.eval_features.rows


def _recipe_key(recipe: WorldRecipe) -> str:
    import hashlib
    import json
    from dataclasses import asdict

    import sae_lens

    text = json.dumps({**asdict(recipe), "sae_lens": sae_lens.__version__}, sort_keys=True)
    return f"{recipe.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def batches(rows_ND: Tensor, batch_size: int) -> Iterator[Tensor]:
    for i in range(0, rows_ND.shape[0] - batch_size + 1, batch_size):
        yield rows_ND[i : i + batch_size]


def train_ours(world: SyntheticWorld, specs: list[Any], samples: int, out_dir: str | os.PathLike, *,
               batch_size: int = 1024, seed: int = 0, step_method: str = "auto", num_threads: int = 0,
               optim: dict[str, Any] | None = None, train: dict[str, Any] | None = None) -> Any:
    """Train our SAEs through `training.train` (the CLI's path: held-out scale and b_dec, the
    trainer's step, the saved folded SAE) on `samples` rows of the world's stream, in memory."""
    from training.config import CheckpointConfig, EvalConfig, LogConfig, OptimConfig, RunConfig, TrainConfig
    from training.run import train as run_training

    holdout = world.holdout_ND
    cfg = RunConfig(
        saes=list(specs),
        train=TrainConfig(total_tokens=samples, batch_size=batch_size, seed=seed, step_method=step_method,
                          holdout_tokens=holdout.shape[0], num_threads=num_threads, **(train or {})),
        optim=OptimConfig(**(optim or {})),
        checkpoint=CheckpointConfig(every_tokens=0, keep_last=1),
        eval=EvalConfig(every_tokens=0, ce_contexts=0),
        log=LogConfig(progress=False, log_every=10_000),
    )

    def stream() -> Iterator[Tensor]:
        yield from batches(holdout, batch_size)
        yield from batches(world.train_rows(-(-samples // batch_size) * batch_size), batch_size)

    return run_training(cfg, stream(), Path(out_dir), provenance={"dataset": f"sae_lens.synthetic:{world.recipe.name}"},
                        resume="never")


@torch.no_grad()
def evaluate(sl_sae: Any, world: SyntheticWorld) -> dict[str, float]:
    """SAELens's `eval_sae_on_synthetic_data` of a `sae_lens` SAE on the world's evaluation set."""
    from sae_lens.synthetic import eval_sae_on_synthetic_data

    ev = world.eval_features
    ev.rewind()
    r = eval_sae_on_synthetic_data(sae=sl_sae, feature_dict=world.model.feature_dict, activations_generator=ev,
                                   num_samples=ev.rows, batch_size=ev.chunk)
    d_sae = int(sl_sae.W_dec.shape[0])
    return {"f1": r.classification.f1_score, "precision": r.classification.precision,
            "recall": r.classification.recall, "mcc": r.mcc, "ev": r.explained_variance, "l0": r.sae_l0,
            "dead": r.dead_latents / d_sae, "uniqueness": r.uniqueness, "shrinkage": r.shrinkage, "true_l0": r.true_l0}


def evaluate_ours(sae: Any, world: SyntheticWorld) -> dict[str, float]:
    """`evaluate` of one of our SAEs, converted to SAELens (its saved form: BatchTopK and
    Matryoshka as JumpReLU with their per-latent thresholds)."""
    from saes.interop import to_sae_lens

    return evaluate(to_sae_lens(sae), world)


def scaled(recipe: WorldRecipe, **changes: Any) -> WorldRecipe:
    return replace(recipe, **changes)
