"""SAEBench-style feature absorption on the first-letter task.

Following SAEBench's absorption eval (sae_bench/evals/absorption: `k_sparse_probing.py`,
`feature_absorption_calculator.py`, `main.py`), on single-token words of the model's vocabulary:

1. The model's activation at each word's position (after BOS and an optional prefix; a causal
   model never sees what a prompt adds after the word, so SAEBench's "{word} has the first
   letter:" reads the same activation). Words are split 80/20 into train and test.
2. Per letter, a logistic-regression probe on the activations (one letter against the rest).
3. The letter's main latents: k-sparse probes on the SAE's latents (latents ranked by mean
   activation difference, k = 1, 2, ...); k grows while its test F1 beats the best smaller k by
   `f1_jump` (feature splitting), as `add_feature_splits_to_metrics_df` does.
4. On the probe's true positives of the test split, with the probe direction p (unit) and each
   latent's cosine c_f between p and its decoder row: the probe projection x.p, each latent's
   projection a_f * c_f, and
   - absorption_fraction: share of the probe projection carried by at most 3 other latents with
     c_f >= 0.1 (when they carry >= 40% of it and the main latents fall short of it),
   - full absorption: the main latents are silent and the top-projecting latent has c_f >= 0.025
     and carries >= 40% of the probe projection.
   Per letter: mean_absorption_fraction and full_absorption_rate over its true positives;
   overall: their means over letters (SAEBench's mean_absorption_fraction_score and
   mean_full_absorption_score), and the mean number of main latents.

Differences from SAEBench: the main latents are ranked by mean difference rather than an L1
probe's weights, and the probes are this package's L-BFGS logistic regression.

Shape key: W words, D d_in, F d_sae.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from evals.latents import LatentTable, columns, item_vector, latent_table, ranking
from evals.linear import f1_score, fit_logistic, one_thread
from saes.base import SAE

EPS = 1e-8
FULL_COS = 0.025  # full_absorption_probe_cos_sim_threshold
FRACTION_COS = 0.1  # absorption_fraction_probe_cos_sim_threshold
PROJECTION_SHARE = 0.4  # probe_projection_proportion_threshold
MAX_ABSORBERS = 3  # absorption_fraction_max_absorbing_latents
TOP_FEATURES = 10  # topk_feats


def vocabulary_words(tokenizer, min_chars: int = 2) -> list[tuple[int, str]]:
    """(token id, word) of every single token that decodes to an ASCII alphabetic word (a
    leading space allowed), special tokens excluded."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = []
    for tid in range(len(tokenizer)):
        if tid in special:
            continue
        word = tokenizer.decode([tid]).strip()
        if len(word) >= min_chars and word.isascii() and word.isalpha():
            out.append((tid, word))
    return out


def word_activations(model, hook: str, tokenizer, token_ids: list[int], prefix: str = "",
                     batch_size: int = 64, progress: bool = False) -> Tensor:
    """[W, D] activations at each word's position in BOS + prefix + word. `progress`: a bar (stderr)
    over the words (a large vocabulary's are tens of thousands of forward rows)."""
    from tqdm.auto import tqdm

    from training.runner import ActivationRunner

    head: list[int] = []
    if getattr(tokenizer, "bos_token_id", None) is not None:
        head.append(int(tokenizer.bos_token_id))
    if prefix:
        head += list(tokenizer.encode(prefix, add_special_tokens=False))
    inputs = torch.tensor([head + [t] for t in token_ids], dtype=torch.long)
    runner = ActivationRunner(model, [hook], forward="transformer_lens")
    parts = []
    with tqdm(total=len(inputs), desc="first-letter words", unit="word", disable=not progress) as bar:
        for chunk in inputs.split(batch_size):
            parts.append(runner.run(chunk)[hook][:, -1].to("cpu", torch.float32))
            bar.update(len(chunk))
    return torch.cat(parts)


class FirstLetterWords:
    """The first-letter task's words (`vocabulary_words`) and the model's activations on them at each
    hook, each computed once on first use and shared by every SAE that reads that hook (every SAE of a
    `saesteer eval` report, whatever text it was evaluated on). `progress`: a bar (stderr) over the
    words of each hook's forward pass."""

    def __init__(self, model, tokenizer, prefix: str = "", progress: bool = False) -> None:
        self.model, self.tokenizer, self.prefix, self.progress = model, tokenizer, prefix, progress
        self._words: list[tuple[int, str]] | None = None
        self._acts: dict[str, Tensor] = {}

    @property
    def words(self) -> list[tuple[int, str]]:
        if self._words is None:
            self._words = vocabulary_words(self.tokenizer)
        return self._words

    def activations(self, hook: str, say=lambda _: None) -> Tensor:
        """[W, D] the model's activations at `hook` on each word (`word_activations`)."""
        if hook not in self._acts:
            say(f"first-letter task: {len(self.words)} single-token words at {hook}")
            self._acts[hook] = word_activations(self.model, hook, self.tokenizer, [t for t, _ in self.words],
                                                self.prefix, progress=self.progress)
        return self._acts[hook]


def _split(n: int, seed: int) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = int(round(0.8 * n))
    return perm[:n_train], perm[n_train:]


def _main_latents(table: LatentTable, y: Tensor, train: Tensor, test: Tensor, max_k: int,
                  f1_jump: float) -> tuple[list[int], list[float]]:
    order = ranking(table, train[y[train]], train[~y[train]])[:max_k].tolist()
    a_train, a_test = columns(table, order, train), columns(table, order, test)
    best, main, f1s = -100.0, order[:1], []
    for k in range(1, len(order) + 1):
        try:
            probe = fit_logistic(a_train[:, :k], y[train])
        except ValueError:
            break
        f1 = f1_score(probe.predict(a_test[:, :k]), y[test])
        f1s.append(f1)
        if f1 > best + f1_jump:
            best, main = f1, order[:k]
        else:
            break
    return main, f1s


def _word_absorption(acts_F: Tensor, cos_F: Tensor, probe_proj: float, main: list[int]) -> tuple[float, bool]:
    """(absorption_fraction, is_full_absorption) of one word (SAEBench's formulas)."""
    proj_F = acts_F * cos_F
    main_proj = float(proj_F[main].sum())
    mask = torch.ones_like(proj_F, dtype=torch.bool)
    mask[main] = False
    mask &= (cos_F >= FRACTION_COS) & (proj_F > 0)
    candidates = proj_F[mask]
    absorbers = float(candidates.topk(min(MAX_ABSORBERS, candidates.numel())).values.sum()) if candidates.numel() else 0.0
    share = absorbers / probe_proj if probe_proj != 0 else 0.0
    if main_proj >= probe_proj or share < PROJECTION_SHARE:
        fraction = 0.0
    elif main_proj <= 0.0:
        fraction = 1.0
    else:
        absorbed = min(absorbers, probe_proj - main_proj)
        fraction = min(max(absorbed / (absorbed + main_proj), 0.0), 1.0)
    top = proj_F.topk(min(TOP_FEATURES, proj_F.numel())).indices
    full = (all(abs(float(acts_F[f])) < EPS for f in main) and float(cos_F[top[0]]) >= FULL_COS
            and probe_proj >= 0 and float(proj_F[top[0]]) / max(probe_proj, EPS) >= PROJECTION_SHARE)
    return fraction, bool(full)


@torch.no_grad()
def first_letter_absorption(sae: SAE, acts_WD: Tensor, words: list[str], *, max_k: int = 10,
                            f1_jump: float = 0.03, min_words: int = 4, seed: int = 0,
                            progress: bool = False) -> dict[str, Any]:
    """Absorption figures of `sae` from word activations `acts_WD` (see the module docstring).
    `progress`: a bar (stderr) over the letters (each fits up to max_k + 1 probes)."""
    with one_thread():  # many small problems
        return _absorption(sae, acts_WD, words, max_k, f1_jump, min_words, seed, progress)


def _absorption(sae: SAE, acts_WD: Tensor, words: list[str], max_k: int, f1_jump: float, min_words: int,
                seed: int, progress: bool = False) -> dict[str, Any]:
    from tqdm.auto import tqdm

    letters_W = [w[0].lower() for w in words]
    train, test = _split(len(words), seed)
    table = latent_table(sae, acts_WD)
    dec_FD = sae.W_dec.detach().float().cpu()
    per_letter: dict[str, dict[str, Any]] = {}
    for letter in tqdm(sorted(set(letters_W)), desc="absorption", unit="letter", disable=not progress):
        y = torch.tensor([lw == letter for lw in letters_W])
        if int(y[train].sum()) < min_words or int(y[test].sum()) < 1 or int((~y[train]).sum()) < 1:
            continue
        probe = fit_logistic(acts_WD[train], y[train])
        direction_D = (probe.w_P / probe.w_P.norm()).float()
        cos_F = torch.nn.functional.cosine_similarity(direction_D[None], dec_FD, dim=-1)
        main, f1s = _main_latents(table, y, train, test, max_k, f1_jump)
        true_pos = test[y[test] & probe.predict(acts_WD[test]).cpu()]
        fractions, fulls = [], []
        for w in true_pos.tolist():
            fraction, full = _word_absorption(item_vector(table, w), cos_F, float(acts_WD[w] @ direction_D), main)
            fractions.append(fraction)
            fulls.append(full)
        n_tp = len(fractions)
        per_letter[letter] = {
            "words_train": int(y[train].sum()), "words_test": int(y[test].sum()), "probe_true_positives": n_tp,
            "probe_test_f1": f1_score(probe.predict(acts_WD[test]), y[test]), "main_latents": main,
            "k_sparse_f1": f1s, "mean_absorption_fraction": sum(fractions) / n_tp if n_tp else None,
            "full_absorption_rate": sum(fulls) / n_tp if n_tp else None, "full_absorptions": int(sum(fulls)),
        }
    scored = [v for v in per_letter.values() if v["probe_true_positives"]]

    def mean(key: str) -> float | None:
        vals = [float(v[key]) for v in scored]
        return sum(vals) / len(vals) if vals else None

    return {
        "mean_absorption_fraction_score": mean("mean_absorption_fraction"),
        "mean_full_absorption_score": mean("full_absorption_rate"),
        "mean_num_split_features": (sum(len(v["main_latents"]) for v in scored) / len(scored)) if scored else None,
        "letters": len(scored), "words": len(words), "per_letter": per_letter,
    }
