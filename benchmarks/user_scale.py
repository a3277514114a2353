"""A researcher's 1M-token run on a CPU box, stage by stage, as the CLI runs it: a GPT-2-style
model (d_model 256, 4 layers, byte-level BPE of 2,048 trained on the corpus of
tests/helpers/real_models.py) and a local parquet dataset (4 files, text in column 'content':
code, prose, one-liners and CJK, 3,600 documents, ~5.4M tokens), then cache / train / features
build, each under /usr/bin/time -v (peak RSS, CPU) with its progress bar kept in a log.

    python benchmarks/user_scale.py setup --work /tmp/scaleu           # model + dataset (~2 min)
    flock /work/wt/bench.lock python benchmarks/user_scale.py run --work /tmp/scaleu [--tokens 1000000]

`--order short-first` writes the dataset sorted so that its first 512 rows are one-liners (what the
cache estimate samples). Figures: benchmarks/RESULTS.md, "A researcher's 1M-token run on CPU".
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def setup(work: Path, order: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from helpers.real_models import corpus_documents, save_real_model, write_corpus

    corpus = write_corpus(work / "corpus")
    save_real_model(work / "gpt2-model", "gpt2", corpus, train_steps=60, d_model=256, n_layers=4, vocab_size=2048)
    docs, rng = corpus_documents(), random.Random(0)
    cjk = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 3000))
    out = []
    for _ in range(12):  # whole documents (paragraphs shuffled), one-liners, CJK prose
        for d in docs:
            paras = d.split("\n\n")
            rng.shuffle(paras)
            out.append("\n\n".join(paras))
            out.append(rng.choice(d.splitlines() or [d])[:80] or "x")
        for _ in range(40):
            out.append("。".join("".join(rng.choice(cjk) for _ in range(rng.randint(5, 30)))
                                for _ in range(rng.randint(3, 60))))
    rng.shuffle(out)
    if order == "short-first":
        out.sort(key=lambda t: len(t) >= 200)
    data = work / "dataset" / "data"
    data.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        part = out[i * len(out) // 4:(i + 1) * len(out) // 4]
        pq.write_table(pa.table({"id": list(range(len(part))), "content": part}), data / f"train-{i:05d}-of-00004.parquet")
    print(f"{work}: {len(out):,} documents, {sum(map(len, out)):,} characters")


def run(work: Path, tokens: int) -> None:
    cli = [sys.executable, "-m", "saesteer"]
    stages = {
        "cache": ["cache", "--model", work / "gpt2-model", "--dataset", work / "dataset", "--text-column", "content",
                  "--hooks", "blocks.2.hook_resid_post", "--max-tokens", tokens, "--out", work / "cache"],
        "train": ["train", "--cache", work / "cache", "--out", work / "run", "--architecture", "topk", "--d-sae", 4096,
                  "--k", 32, "--total-tokens", tokens, "--sae-name", "sae"],
        "build": ["features", "build", "--sae", work / "run/saes/sae", "--cache", work / "cache",
                  "--out", work / "store.db"],
    }
    for name, argv in stages.items():
        with open(work / f"{name}.log", "w") as log:
            subprocess.run(["/usr/bin/time", "-v", *cli, *map(str, argv)], stdout=log, stderr=subprocess.STDOUT,
                           check=True, cwd=ROOT)
        text = (work / f"{name}.log").read_text()
        keep = [ln.strip() for ln in text.splitlines()
                if any(k in ln for k in ("Maximum resident", "Elapsed", "User time", "System time"))]
        print(name, "|", " | ".join(keep))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("setup", "run"))
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--order", choices=("shuffled", "short-first"), default="shuffled")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    setup(a.work, a.order) if a.what == "setup" else run(a.work, a.tokens)


if __name__ == "__main__":
    main()
