"""Train the toy world's tiny TransformerLens model: `python -m toyworld.train [--steps N ...]`.

Seeded and deterministic for a given machine and thread count. Rows of n_ctx tokens are packed
from the train split's documents in order (each row starts at a document's <bos>; see
toyworld.corpus.iter_packed). AdamW with linear warmup and cosine decay, fp32 (--precision bf16
autocasts the matmuls, which pays off only for wider models on AMX CPUs).
Writes model.safetensors, config.json, tokenizer.json and training.json into --out (default
toyworld/assets/), also at every evaluation, so an interrupted run leaves usable weights.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from toyworld.model import ASSETS_DIR, TRAINING_FILE, is_installed_assets

# Shape key: B batch rows, S sequence positions.


@dataclass
class TrainConfig:
    """How the toy model is trained."""

    out: str = field(default=str(ASSETS_DIR), metadata={"help": "directory for the weights, config and tokenizer"})
    seed: int = field(default=0, metadata={"help": "model init and training seed"})
    corpus_seed: int = field(default=0, metadata={"help": "corpus seed (same as toyworld.corpus --seed)"})
    steps: int = field(default=1500, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=16, metadata={"help": "rows of n_ctx tokens per step"})
    n_ctx: int = field(default=128, metadata={"help": "context length"})
    d_model: int = field(default=128, metadata={"help": "residual stream width"})
    n_layers: int = field(default=4, metadata={"help": "transformer blocks"})
    n_heads: int = field(default=4, metadata={"help": "attention heads per block"})
    d_mlp: int = field(default=512, metadata={"help": "MLP hidden width"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate"})
    min_lr_frac: float = field(default=0.1, metadata={"help": "final learning rate as a fraction of --lr"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warmup steps"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (matrices only)"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip (0 disables)"})
    precision: str = field(default="fp32", metadata={"help": "'fp32' or 'bf16' (autocast matmuls; faster for d_model >= 256 on AMX CPUs)"})
    eval_every: int = field(default=200, metadata={"help": "steps between held-out evaluations and checkpoints"})
    eval_rows: int = field(default=64, metadata={"help": "validation rows per evaluation"})
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default; 1 is faster on a busy machine)"})

    def __post_init__(self) -> None:
        for f in ("steps", "batch_size", "n_ctx", "d_model", "n_layers", "n_heads", "d_mlp", "eval_every",
                  "eval_rows"):
            if getattr(self, f) <= 0:
                raise ValueError(f"TrainConfig.{f} must be > 0, got {getattr(self, f)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"TrainConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"TrainConfig.precision must be 'bf16' or 'fp32', got {self.precision!r}")
        if not 0 <= self.min_lr_frac <= 1:
            raise ValueError(f"TrainConfig.min_lr_frac must be in [0, 1], got {self.min_lr_frac}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _batches(cfg: TrainConfig, tokenizer):
    """Endless batches [B, S] from the train split, in document order."""
    import torch

    from toyworld.corpus import encode_document, iter_packed
    from toyworld.grammar import iter_documents

    docs = (encode_document(d.text, tokenizer) for d in iter_documents(cfg.corpus_seed, "train"))
    rows = []
    for row in iter_packed(docs, cfg.n_ctx):
        rows.append(row)
        if len(rows) == cfg.batch_size:
            yield torch.tensor(rows, dtype=torch.long)
            rows = []


@dataclass
class TrainResult:
    steps: int
    tokens: int
    seconds: float
    train_loss: float  # mean over the last 50 steps
    validation_loss: float
    history: list


def evaluate_loss(model, rows_NS, batch_size: int = 16, precision: str = "fp32") -> float:
    """Mean next-token loss over packed rows (all positions after the first)."""
    import torch

    total, n = 0.0, 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for i in range(0, rows_NS.shape[0], batch_size):
            x_BS = rows_NS[i:i + batch_size].to(model.cfg.device)
            loss = model(x_BS, return_type="loss")
            total += float(loss) * x_BS.shape[0]
            n += x_BS.shape[0]
    return total / n


def train(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    import torch
    from tqdm.auto import tqdm

    from toyworld.corpus import packed_rows
    from toyworld.model import build_model, default_config, save_model
    from toyworld.tokenizer import atomic_write_json, build_tokenizer

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer()
    mcfg = default_config(len(tokenizer.get_vocab()), n_layers=cfg.n_layers, d_model=cfg.d_model,
                          n_heads=cfg.n_heads, d_mlp=cfg.d_mlp, n_ctx=cfg.n_ctx, seed=cfg.seed)
    model = build_model(mcfg, tokenizer=tokenizer, device="cpu")
    model.train()
    def decays(name: str, p) -> bool:  # weight matrices, not embeddings, biases or norms
        return p.ndim >= 2 and not name.startswith(("pos_embed", "embed"))

    decay = [p for n, p in model.named_parameters() if decays(n, p)]
    no_decay = [p for n, p in model.named_parameters() if not decays(n, p)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    val_NS, _ = packed_rows(cfg.corpus_seed, "validation", cfg.eval_rows, cfg.n_ctx, tokenizer)
    out = Path(cfg.out)
    history: list[dict] = []
    recent: list[float] = []
    tokens = 0
    t0 = time.time()
    batches = _batches(cfg, tokenizer)
    bar = tqdm(range(cfg.steps), desc="toyworld train", disable=not progress)

    def checkpoint(step: int, val: float) -> None:
        model.eval()
        save_model(model, out)
        atomic_write_json(out / TRAINING_FILE, {
            "config": asdict(cfg), "steps_done": step, "tokens": tokens, "seconds": round(time.time() - t0, 1),
            "train_loss_last50": sum(recent) / max(1, len(recent)), "validation_loss": val,
            "history": history, "torch_threads": torch.get_num_threads(),
        })
        model.train()

    val = float("nan")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        x_BS = next(batches)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            loss = model(x_BS, return_type="loss")
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += x_BS.numel()
        recent = (recent + [float(loss.detach())])[-50:]
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}", val=f"{val:.3f}")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            model.eval()
            val = evaluate_loss(model, val_NS, precision="fp32")
            history.append({"step": step + 1, "tokens": tokens, "seconds": round(time.time() - t0, 1),
                            "train_loss": sum(recent) / len(recent), "validation_loss": val})
            checkpoint(step + 1, val)
    seconds = time.time() - t0
    checkpoint(cfg.steps, val)
    return TrainResult(cfg.steps, tokens, seconds, sum(recent) / len(recent), val, history)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m toyworld.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TrainConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       help=f"{f.metadata['help']} (default: {f.default})")
    args = p.parse_args(argv)
    if is_installed_assets(args.out):
        p.error(f"--out {args.out} is the shipped toy model of an installed saesteer; pass --out DIR for your own")
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    try:
        res = train(cfg)
    except OSError as e:  # a full disk, an unwritable --out: one line, not a traceback
        p.exit(1, f"{p.prog}: error: {e}\n")
    print(f"trained {res.steps} steps, {res.tokens:,} tokens in {res.seconds / 60:.1f} min; "
          f"train loss {res.train_loss:.4f}, validation loss {res.validation_loss:.4f}; wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
