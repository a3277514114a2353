"""A store built on a bfloat16 SAE folder, given the same SAE in float32 (SAELens's `from_pretrained` and our
`sae_lens:` spec load float32 whatever the folder holds: docs/formats.md "Sharing an SAE"), is refused naming
the two dtypes and how to load it, not with two unrelated fingerprints; the SAE loaded in the store's dtype is
taken, and another SAE is still refused by fingerprint.
"""

from __future__ import annotations

import pytest
import torch

import saes
from features import BuildConfig, FeatureStore, build_feature_store
from features.store import StoreMismatchError
from helpers.feature_fixtures import make_sae, random_source

pytestmark = [pytest.mark.usefixtures("one_thread")]


@pytest.fixture
def bf16_store(tmp_path):
    folder = saes.save_sae(make_sae("matryoshka_batchtopk", d_in=8, d_sae=32).to(torch.bfloat16), tmp_path / "sae")
    path = tmp_path / "s.db"
    cfg = BuildConfig(top_k=4, n_quantile=4, n_negative=2, negative_pool=8, window_before=4, window_after=2,
                      n_neighbours=2, write_block=8, checkpoint_rows=0)
    build_feature_store(path, saes.load_sae(folder), random_source(d_in=8), cfg, progress=False, sae_path=str(folder))
    return path, folder


def test_the_same_sae_in_float32_is_refused_naming_both_dtypes(bf16_store):
    path, folder = bf16_store
    as_float32 = saes.load_sae(folder, dtype=torch.float32)  # what from_pretrained gives of the uploaded folder
    with FeatureStore.open(path) as store:
        with pytest.raises(StoreMismatchError, match=r"built from this SAE's weights in bfloat16, but the SAE given "
                                                     r"holds them in float32 \(SAELens's from_pretrained.*load it as "
                                                     r"bfloat16 \(`resolve_sae\(spec, dtype=torch\.bfloat16\)`") as e:
            store.check_sae(as_float32)
        assert str(folder) in str(e.value)  # the folder it was built on, to use instead
        store.check_sae(as_float32.to(torch.bfloat16))  # loaded as the message says: taken
        with pytest.raises(StoreMismatchError, match=r"built from another SAE \(fingerprint"):
            store.check_sae(make_sae("matryoshka_batchtopk", d_in=8, d_sae=32, seed=1))


def test_stores_for_several_saes_name_the_dtype_of_the_same_sae_in_another_precision(bf16_store):
    """`open_stores` (--store once per --sae): a store no SAE pairs with, of one SAE's weights held in
    another dtype, gives check_sae's dtype hint, not two fingerprints."""
    from saesteer.commands._steering import CLIError, open_stores

    path, folder = bf16_store
    saes_given = {"other": make_sae("matryoshka_batchtopk", d_in=8, d_sae=32, seed=1),
                  "mine": saes.load_sae(folder, dtype=torch.float32)}
    with pytest.raises(CLIError, match=r"SAE 'mine' has its weights in another dtype: .* built from this SAE's "
                                       r"weights in bfloat16, but the SAE given holds them in float32") as e:
        open_stores([str(path), str(path)], saes_given)
    assert "fingerprint" not in str(e.value)
    del saes_given["mine"]  # another SAE only: the fingerprints, as before
    with pytest.raises(CLIError, match=r"has weights fingerprint .*; the SAEs given: 'other' "):
        open_stores([str(path), str(path)], saes_given)
