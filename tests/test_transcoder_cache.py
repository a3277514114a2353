"""A transcoder's paired cache: one model pass stores the input and target hooks row for row; the
reader yields (input, target) pairs through its shuffle; a cache or a saved position for another
pair is refused naming both sides."""

from __future__ import annotations

import pytest
import torch

from helpers.threads import torch_threads
from helpers.tiny_model import make_model, make_tokenizer, write_corpus
from training.cache import build_cache
from training.cache_config import CacheConfig
from training.reader import CacheReader, ReaderStateError
from training.shardset import CachePairError, ShardSet
from training.text import TextConfig

H_IN = "blocks.0.ln2.hook_normalized"
H_OUT = "blocks.0.hook_mlp_out"


@pytest.fixture(scope="module")
def model():
    with torch_threads(1):
        yield make_model(make_tokenizer(), d_model=32, n_layers=2, n_ctx=32, seed=0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tccorpus")
    write_corpus(root, n_docs=30, seed=1)
    return root


@pytest.fixture(scope="module")
def cache(model, corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("tc")
    text = TextConfig(dataset=str(corpus), context_length=16)
    cfg = CacheConfig(out=str(root / "cache"), hooks=[H_IN, H_OUT], dtype="fp32", shard_contexts=4, batch_size=4)
    with torch_threads(1):
        build_cache(model, text, cfg, progress=False, log=None)
    return root / "cache"


def test_pairs_survive_the_shuffle(model, cache):
    """Row i of the target is the model's MLP applied to row i of the input, in every shuffled batch."""
    reader = CacheReader(cache, 37, hook=H_IN, target_hook=H_OUT, seed=5, buffer_rows=50)
    assert (reader.d_in, reader.d_out) == (32, 32)
    n = 0
    with torch.no_grad():
        for batch in reader:
            assert batch.targets is not None and batch.targets.shape == batch.acts.shape
            mlp = model.blocks[0].mlp(batch.acts[:, None, :])[:, 0]
            torch.testing.assert_close(mlp, batch.targets, rtol=1e-4, atol=1e-4)
            n += batch.acts.shape[0]
    assert n == reader.rows_per_epoch > 37


def test_input_hook_is_inferred_from_a_pair_cache(cache):
    assert ShardSet(cache, target_hook=H_OUT).hook == H_IN


def test_a_cache_for_another_pair_is_refused_naming_both(cache):
    with pytest.raises(CachePairError) as e:
        ShardSet(cache, H_IN, target_hook="blocks.1.hook_mlp_out")
    msg = str(e.value)
    assert H_IN in msg and "blocks.1.hook_mlp_out" in msg and H_OUT in msg and "--hooks" in msg
    with pytest.raises(CachePairError, match="both"):
        ShardSet(cache, H_OUT, target_hook=H_OUT)


def test_fingerprint_and_saved_position_name_the_pair(cache):
    pair, sae = ShardSet(cache, H_IN, target_hook=H_OUT), ShardSet(cache, H_IN)
    assert pair.fingerprint != sae.fingerprint
    reader = CacheReader(cache, 16, hook=H_IN, target_hook=H_OUT, seed=0)
    next(iter(reader))
    state = reader.state_dict()
    assert state["target_hook"] == H_OUT
    with pytest.raises(ReaderStateError, match="target_hook"):
        CacheReader(cache, 16, hook=H_IN, seed=0).load_state_dict(state)  # an SAE's reader
    again = CacheReader(cache, 16, hook=H_IN, target_hook=H_OUT, seed=0)
    again.load_state_dict(state)
    first = next(iter(again))
    ref = next(iter(reader))
    torch.testing.assert_close(first.targets, ref.targets)


def test_a_damaged_target_shard_is_refused(cache, tmp_path):
    """The checks cover the target hook too: a shard whose target tensor is missing is refused."""
    import json
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(cache, copy)
    man = json.loads((copy / "manifest.json").read_text())
    man["d_in"][H_OUT] = 31  # the manifest now disagrees with the target tensor's shape
    (copy / "manifest.json").write_text(json.dumps(man))
    ShardSet(copy, H_IN).entries(0)  # the input hook alone is fine
    from training.shards import ShardCorruptError

    with pytest.raises(ShardCorruptError, match=H_OUT):
        ShardSet(copy, H_IN, target_hook=H_OUT).entries(0)


def test_live_batches_without_a_cache_are_pairs_too(model, corpus):
    """`training.live.model_batches(target_hook=)` (training without a cache): both hooks of one forward pass."""
    from training.live import model_batches

    text = TextConfig(dataset=str(corpus), context_length=16)
    n = 0
    with torch.no_grad(), torch_threads(1):
        for batch in model_batches(model, text, H_IN, 37, target_hook=H_OUT, buffer_rows=60, seed=3):
            assert batch.targets.shape == batch.acts.shape
            mlp = model.blocks[0].mlp(batch.acts[:, None, :])[:, 0]
            torch.testing.assert_close(mlp, batch.targets, rtol=1e-4, atol=1e-4)
            n += batch.acts.shape[0]
    assert n > 37
