"""Evaluate the toy model: `python -m toyworld.evaluate [--samples N] [--write]`.

Reports
- held-out loss (nats/token) of the model on packed rows of the test split, beside unigram and
  bigram baselines estimated on train documents and scored on exactly the same target tokens;
- of documents sampled from <bos> at temperature 1 (one seed per batch, many batches), the fraction
  of sentences the validator accepts, with document context (tense, introduced names, pronoun
  genders) and alone, and the fraction of sentences that stay on the document's topic.

--write stores the figures in toyworld/assets/evaluation.json and regenerates
toyworld/assets/TRAINING.md from training.json and evaluation.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from toyworld.model import ASSETS_DIR, TRAINING_FILE, is_installed_assets

EVALUATION_FILE = "evaluation.json"

# Shape key: N rows, S sequence, V vocabulary.


@dataclass
class EvalConfig:
    """What `python -m toyworld.evaluate` measures."""

    model_dir: str = field(default=str(ASSETS_DIR), metadata={"help": "directory with the toy model files"})
    corpus_seed: int = field(default=0, metadata={"help": "corpus seed the model was trained on"})
    test_rows: int = field(default=256, metadata={"help": "packed test rows for the held-out loss"})
    baseline_rows: int = field(default=16_000, metadata={"help": "packed train rows for the n-gram baselines"})
    samples: int = field(default=400, metadata={"help": "documents to sample for the grammar figures"})
    sample_batch: int = field(default=50, metadata={"help": "documents sampled per batch (one seed each)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    seed: int = field(default=0, metadata={"help": "first sampling seed"})
    write: bool = field(default=False, metadata={"help": "write evaluation.json and TRAINING.md next to the model"})

    def __post_init__(self) -> None:
        for f in ("test_rows", "baseline_rows", "samples", "sample_batch"):
            if getattr(self, f) <= 0:
                raise ValueError(f"EvalConfig.{f} must be > 0, got {getattr(self, f)}")
        if self.temperature <= 0:
            raise ValueError(f"EvalConfig.temperature must be > 0, got {self.temperature}")


def ngram_baselines(train_rows_NS, test_rows_NS, vocab_size: int) -> dict:
    """Cross-entropy (nats/token) of add-one unigram and interpolated bigram models fitted on
    train_rows and scored on the next-token targets of test_rows (positions 1..S-1)."""
    import torch

    tr = train_rows_NS.long()
    uni_V = torch.bincount(tr[:, 1:].reshape(-1), minlength=vocab_size).double() + 1.0
    p_uni_V = uni_V / uni_V.sum()
    prev, nxt = tr[:, :-1].reshape(-1), tr[:, 1:].reshape(-1)
    big_VV = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
    big_VV.index_put_((prev, nxt), torch.ones_like(prev, dtype=torch.float64), accumulate=True)
    ctx_V = big_VV.sum(1, keepdim=True)
    # Witten-Bell style interpolation with the unigram: lambda = c / (c + distinct followers)
    types_V = (big_VV > 0).sum(1, keepdim=True).double()
    lam_V = ctx_V / (ctx_V + types_V).clamp_min(1.0)
    p_big_VV = lam_V * big_VV / ctx_V.clamp_min(1.0) + (1 - lam_V) * p_uni_V[None, :]
    te = test_rows_NS.long()
    t_prev, t_next = te[:, :-1].reshape(-1), te[:, 1:].reshape(-1)
    uni = float(-torch.log(p_uni_V[t_next]).mean())
    big = float(-torch.log(p_big_VV[t_prev, t_next]).mean())
    return {"unigram_loss": uni, "bigram_loss": big, "baseline_train_tokens": int(tr.numel())}


def sample_documents(model, n: int, batch: int, temperature: float, seed: int, max_new_tokens: int | None = None):
    """Sample `n` documents from <bos>; returns their texts (up to the first <eos>) and whether each
    ended with <eos> before the context ran out."""
    import torch

    tok = model.tokenizer
    max_new = max_new_tokens or (model.cfg.n_ctx - 1)
    texts, finished = [], []
    for b0 in range(0, n, batch):
        m = min(batch, n - b0)
        torch.manual_seed(seed + b0)
        inp_N1 = torch.full((m, 1), tok.bos_token_id, dtype=torch.long, device=model.cfg.device)
        with torch.no_grad():
            out_NS = model.generate(inp_N1, max_new_tokens=max_new, temperature=temperature, stop_at_eos=True,
                                    eos_token_id=tok.eos_token_id, use_past_kv_cache=True, verbose=False,
                                    return_type="tokens")
        for row in out_NS[:, 1:].tolist():
            done = tok.eos_token_id in row
            if done:
                row = row[: row.index(tok.eos_token_id)]
            texts.append(tok.decode(row, skip_special_tokens=True))
            finished.append(done)
    return texts, finished


def grammar_figures(texts: list[str]) -> dict:
    """Validator figures over sampled documents."""
    from toyworld.validate import validate_document, validate_sentence

    n_sent = ok_ctx = ok_alone = on_topic = judged = 0
    docs_all_ok = 0
    reasons: dict[str, int] = {}
    for text in texts:
        res = validate_document(text)
        n_sent += len(res.sentences)
        ok_ctx += sum(s.grammatical for s in res.sentences)
        ok_alone += sum(validate_sentence(s.words).grammatical for s in res.sentences)
        docs_all_ok += bool(res.sentences) and all(s.grammatical for s in res.sentences)
        for s in res.sentences:
            if not s.grammatical:
                key = s.reason.split(" at position")[0]
                key = key if len(key) < 60 else key[:57] + "..."
                reasons[key] = reasons.get(key, 0) + 1
            if s.topic is not None and res.topic is not None:
                judged += 1
                on_topic += all(
                    t in (None, res.topic) for t in (_topic(w) for w in s.words)
                )
    top = sorted(reasons.items(), key=lambda kv: -kv[1])[:8]
    return {
        "sampled_documents": len(texts),
        "sampled_sentences": n_sent,
        "grammatical_fraction": ok_ctx / max(1, n_sent),
        "grammatical_fraction_sentence_alone": ok_alone / max(1, n_sent),
        "documents_fully_grammatical": docs_all_ok / max(1, len(texts)),
        "on_topic_fraction": on_topic / max(1, judged),
        "top_rejection_reasons": top,
    }


def _topic(w: str):
    from toyworld.lexicon import word_topic

    return word_topic(w)


def evaluate(cfg: EvalConfig, model=None, progress: bool = True) -> dict:
    import torch

    from toyworld.corpus import packed_rows
    from toyworld.model import load_model, weights_sha256
    from toyworld.train import evaluate_loss

    t0 = time.time()
    if model is None:
        model = load_model(device="cpu", directory=cfg.model_dir)
    tok = model.tokenizer
    n_ctx = model.cfg.n_ctx
    test_NS, _ = packed_rows(cfg.corpus_seed, "test", cfg.test_rows, n_ctx, tok)
    # baselines from train documents, packed the same way
    train_NS, used = packed_rows(cfg.corpus_seed, "train", cfg.baseline_rows, n_ctx, tok)
    figures: dict = {"model_dir": str(cfg.model_dir), "weights_sha256": weights_sha256(cfg.model_dir)}
    figures["test_tokens"] = int(test_NS[:, 1:].numel())
    figures["model_test_loss"] = evaluate_loss(model, test_NS)
    figures.update(ngram_baselines(train_NS, test_NS, len(tok.get_vocab())))
    figures["baseline_train_documents"] = used
    texts, finished = sample_documents(model, cfg.samples, cfg.sample_batch, cfg.temperature, cfg.seed)
    figures["samples_ending_with_eos"] = sum(finished) / len(finished)
    figures.update(grammar_figures(texts))
    figures["example_samples"] = texts[:5]
    figures["config"] = asdict(cfg)
    figures["seconds"] = round(time.time() - t0, 1)
    figures["torch_threads"] = torch.get_num_threads()
    if math.isnan(figures["model_test_loss"]):
        raise RuntimeError("model test loss is NaN; the weights are broken")
    return figures


def training_markdown(training: dict, ev: dict) -> str:
    c = training.get("config", {})
    hist = training.get("history", [])
    lines = [
        "# The toy world's tiny model: how it was trained and what it reached",
        "",
        "Written by `python -m toyworld.evaluate --write` from `training.json` (written by",
        "`python -m toyworld.train`) and `evaluation.json`. Losses are mean next-token cross-entropy in",
        "nats per token on packed 128-token rows (each row starts at a document's `<bos>`).",
        "",
        "## Model and training",
        "",
        f"- HookedTransformer: {c.get('n_layers')} layers, d_model {c.get('d_model')}, {c.get('n_heads')} heads, "
        f"d_mlp {c.get('d_mlp')}, n_ctx {c.get('n_ctx')}, GELU, LayerNorm, learned positions",
        f"- AdamW lr {c.get('lr')} (warmup {c.get('warmup_steps')}, cosine to {c.get('min_lr_frac')}x), "
        f"weight decay {c.get('weight_decay')}, batch {c.get('batch_size')} rows, {c.get('precision')}, seed {c.get('seed')}",
        f"- steps: {training.get('steps_done')}; tokens: {training.get('tokens'):,}; wall time: "
        f"{training.get('seconds', 0) / 60:.1f} min on CPU ({training.get('torch_threads')} torch thread(s), "
        "on a shared 2-core machine)",
        f"- final train loss (mean of last 50 steps): {training.get('train_loss_last50', float('nan')):.4f}",
        f"- final validation loss: {training.get('validation_loss', float('nan')):.4f}",
        "",
        "| step | tokens | minutes | train loss | validation loss |",
        "|---:|---:|---:|---:|---:|",
    ]
    for h in hist:
        lines.append(f"| {h['step']} | {h['tokens']:,} | {h['seconds'] / 60:.1f} | {h['train_loss']:.4f} | "
                     f"{h['validation_loss']:.4f} |")
    lines += [
        "",
        "## Evaluation",
        "",
        f"Held-out (test split, {ev['test_tokens']:,} target tokens):",
        "",
        "| model | loss (nats/token) |",
        "|---|---:|",
        f"| unigram (add-one, fitted on {ev['baseline_train_tokens']:,} train tokens) | {ev['unigram_loss']:.4f} |",
        f"| bigram (Witten-Bell interpolated, same tokens) | {ev['bigram_loss']:.4f} |",
        f"| toy model | {ev['model_test_loss']:.4f} |",
        "",
        f"Sampling from `<bos>` at temperature {ev['config']['temperature']}, {ev['sampled_documents']} documents "
        f"({ev['sampled_sentences']} sentences), one seed per batch of {ev['config']['sample_batch']}:",
        "",
        f"- sentences the validator accepts, with document context: {ev['grammatical_fraction']:.1%}",
        f"- sentences the validator accepts, judged alone: {ev['grammatical_fraction_sentence_alone']:.1%}",
        f"- documents whose every sentence is accepted: {ev['documents_fully_grammatical']:.1%}",
        f"- sentences on the document's topic: {ev['on_topic_fraction']:.1%}",
        f"- samples that end with `<eos>`: {ev['samples_ending_with_eos']:.1%}",
        "",
        "Most frequent rejection reasons: " + "; ".join(f"{r} ({n})" for r, n in ev["top_rejection_reasons"]),
        "",
        "Example samples:",
        "",
    ]
    lines += [f"    {t}" for t in ev["example_samples"]]
    lines += ["", f"weights sha256: `{ev['weights_sha256']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m toyworld.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(EvalConfig):
        if f.type in ("bool", bool):
            p.add_argument(f"--{f.name.replace('_', '-')}", action="store_true", help=f.metadata["help"])
        else:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                           help=f"{f.metadata['help']} (default: {f.default})")
    args = p.parse_args(argv)
    if args.write and is_installed_assets(args.model_dir):
        p.error(f"--write would rewrite the shipped toy model's files in {args.model_dir} (an installed saesteer); "
                "give --model-dir DIR of your own model")
    cfg = EvalConfig(**{f.name: getattr(args, f.name) for f in fields(EvalConfig)})
    ev = evaluate(cfg)
    show = {k: v for k, v in ev.items() if k not in ("example_samples", "config")}
    print(json.dumps(show, indent=2))
    print("examples:")
    for t in ev["example_samples"]:
        print("  ", t)
    if cfg.write:
        from toyworld.tokenizer import _atomic_write_text, atomic_write_json

        d = Path(cfg.model_dir)
        atomic_write_json(d / EVALUATION_FILE, ev)
        training = json.loads((d / TRAINING_FILE).read_text(encoding="utf-8")) if (d / TRAINING_FILE).exists() else {}
        _atomic_write_text(d / "TRAINING.md", training_markdown(training, ev))
        print(f"wrote {d / EVALUATION_FILE} and {d / 'TRAINING.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
