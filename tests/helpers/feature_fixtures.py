"""Small, deterministic inputs for the feature-store tests: in-memory caches, hand-built SAEs and
a word-level tokenizer stand-in. Everything is CPU and seeded.

    from helpers.feature_fixtures import random_source, make_sae, WordTokenizer
"""

from __future__ import annotations

import torch

WORDS = ["<pad>", "<bos>"] + [f"w{i}" for i in range(2, 64)]


class WordTokenizer:
    """What the build needs from a tokenizer: len() and batch_decode (words joined by spaces)."""

    def __init__(self, words: list[str] | None = None) -> None:
        self.words = list(words or WORDS)

    def __len__(self) -> int:
        return len(self.words)

    def batch_decode(self, seqs, **kw) -> list[str]:
        return [" ".join(self.words[i] for i in seq) for seq in seqs]


def random_source(seed: int = 0, n_contexts: int = 24, context_length: int = 16, d_in: int = 8,
                  vocab: int = 64, bos: bool = True, contexts_per_chunk: int = 10):
    """A TensorSource of random activations; with bos=True position 0 holds <bos> (id 1) and has
    no row (like a cache made with exclude_tokens='bos')."""
    from features import TensorSource

    g = torch.Generator().manual_seed(seed)
    ctx = torch.randint(2, vocab, (n_contexts, context_length), generator=g)
    keep = torch.ones(n_contexts, context_length, dtype=torch.bool)
    if bos:
        ctx[:, 0] = 1
        keep[:, 0] = False
    acts = torch.randn(int(keep.sum()), d_in, generator=g)
    return TensorSource(acts, ctx, keep, bos_id=1 if bos else None, contexts_per_chunk=contexts_per_chunk,
                        hook_name="blocks.0.hook_resid_post")


def make_sae(arch: str = "topk", d_in: int = 8, d_sae: int = 32, seed: int = 0, **kw):
    """A seeded SAE with non-trivial biases (threshold encoders get thresholds that make rows ragged)."""
    import saes

    g = torch.Generator().manual_seed(seed)
    if arch in ("topk", "batchtopk", "matryoshka_batchtopk"):
        kw.setdefault("k", 4)
    if arch == "matryoshka_batchtopk":
        kw.setdefault("matryoshka_widths", [d_sae // 4, d_sae])
    kw.setdefault("metadata", {"hook_name": "blocks.0.hook_resid_post"})
    sae = saes.create_sae(arch, d_in, d_sae, generator=g, **kw)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=g)
        if hasattr(sae, "threshold"):
            sae.threshold.uniform_(0.2, 1.2, generator=g)
    return sae.eval()


def identity_sae(d: int, arch: str = "standard"):
    """acts = relu(x): W_enc = W_dec = I, zero biases, no b_dec subtraction."""
    import saes

    kw = {"matryoshka_widths": [d // 2, d], "k": 1} if arch == "matryoshka_batchtopk" else {}
    sae = saes.create_sae(arch, d, d, apply_b_dec_to_input=False, metadata={"hook_name": "blocks.0.hook_resid_post"}, **kw)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        if hasattr(sae, "threshold"):
            sae.threshold.zero_()
    return sae.eval()


def small_config(**kw):
    from features import BuildConfig

    base = dict(top_k=3, n_quantile=4, n_negative=2, negative_pool=12, window_before=3, window_after=2, batch_rows=64,
                n_neighbours=3, write_block=8, checkpoint_rows=0, flag_min_fires=2, coact_kmax=8)
    base.update(kw)
    return BuildConfig(**base)


def single_thread():
    """Generator for a module fixture: tiny tensor ops run fastest on one thread (busy 2-core CI)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def version_2_store(src, dst, examples=None) -> None:
    """A copy of store `src` (schema version 3) as schema version 2 wrote it: every example's window
    in its own row of the table `examples`: the `ExampleRow`s the build wrote, in their order (as
    version 2's writer inserted them), or without them what the view `examples` reads."""
    import shutil
    import sqlite3

    shutil.copy(src, dst)
    with sqlite3.connect(dst) as db:
        db.execute("CREATE TABLE examples_v2 AS SELECT * FROM examples ORDER BY id")
        db.execute("DROP VIEW examples")
        db.execute("DROP TABLE example_refs")
        db.execute("DROP TABLE windows")
    with sqlite3.connect(dst) as db:  # version 2's own table: its constraints and column types
        db.execute("""CREATE TABLE examples (id INTEGER PRIMARY KEY, latent INTEGER NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('top', 'quantile', 'negative')), rank INTEGER NOT NULL,
            activation REAL NOT NULL, quantile REAL, seq_index INTEGER NOT NULL, position INTEGER NOT NULL,
            centre INTEGER NOT NULL, token_ids BLOB NOT NULL, acts BLOB NOT NULL, text TEXT, token_offsets BLOB,
            UNIQUE (latent, kind, rank))""")
        if examples is None:
            db.execute("INSERT INTO examples SELECT * FROM examples_v2 ORDER BY id")
        else:
            from features.store.rows import ExampleRow, insert_sql

            db.executemany(insert_sql("examples", ExampleRow), examples)
        db.execute("DROP TABLE examples_v2")
        db.execute("UPDATE schema_version SET version = 2")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db = sqlite3.connect(dst, isolation_level=None)
    db.execute("VACUUM")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # all of it in the file: a copy of the file is the store
    db.close()


def build_text_store(path, tok, texts, *, with_text: bool = True, dead=(), n_negative: int = 6, L: int = 32) -> None:
    """A feature store at `path` of a seeded 48-latent TopK SAE over `texts` tokenized by `tok` (a
    real tokenizer: `helpers.real_models`), in contexts of `L` tokens that start with BOS (no row,
    but shown in the windows that reach it), 8 latents a write block; with its example text and
    offsets when `with_text`. The latents `dead` never fire (no top or quantile examples)."""
    import saes
    from features import BuildConfig, TensorSource, build_feature_store

    ids = tok("\n".join(texts), add_special_tokens=False)["input_ids"]
    C = len(ids) // (L - 1)
    ctx_CL = torch.cat([torch.full((C, 1), tok.bos_token_id), torch.tensor(ids[: C * (L - 1)]).reshape(C, L - 1)], 1)
    keep_CL = torch.ones(C, L, dtype=torch.bool)
    keep_CL[:, 0] = False
    g = torch.Generator().manual_seed(0)
    acts_RD = torch.randn(int(keep_CL.sum()), 16, generator=g)
    sae = saes.create_sae("topk", 16, 48, k=6, generator=g, metadata={"hook_name": "blocks.0.hook_resid_post"})
    with torch.no_grad():
        sae.b_enc[list(dead)] = -1e4  # never in the top k
    cfg = BuildConfig(top_k=6, n_quantile=8, n_negative=n_negative, negative_pool=24, window_before=10, window_after=4,
                      n_neighbours=3, write_block=8, checkpoint_rows=0)
    build_feature_store(path, sae, TensorSource(acts_RD, ctx_CL, keep_CL, bos_id=tok.bos_token_id, name="text"), cfg,
                        tokenizer=tok if with_text else None, progress=False)
