"""`features.checks`: what `features build` checks of an SAE against a cache, once, before the model
loads, and what `build_feature_store(checked=...)` may skip: only what `check_inputs` itself found
for the same SAE, cache and allow_model_mismatch (never a copy or a hand-made record)."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import pytest
import torch

from helpers.fake_cache import make_fake_cache

HOOK = "blocks.0.hook_resid_post"


def our_sae(folder: Path, bos_policy: str) -> Path:
    """A TopK SAE as our training saves it: cfg.json's prepend_bos and saesteer.json's data.bos_policy."""
    import saes

    sae = saes.create_sae("topk", 4, 16, k=2, generator=torch.Generator().manual_seed(0),
                          metadata={"hook_name": HOOK, "prepend_bos": bos_policy == "prepend"})
    saes.save_sae(sae, folder, provenance={"tool": "saesteer", "data": {"bos_policy": bos_policy}})
    return folder


def test_features_build_holds_our_sae_to_the_bos_policy_it_records(tmp_path: Path, capsys) -> None:
    """An SAE trained here on contexts with BOS at document starts ('doc') over a cache packed with
    none: cfg.json's prepend_bos is False for both, only saesteer.json tells them apart. Refused,
    naming both sides and the cache flag; a cache packed as it records passes."""
    from saesteer.cli import main

    sae = our_sae(tmp_path / "sae", "doc")
    none = make_fake_cache(tmp_path / "none", shard_rows=[16, 16], bos_policy="none").path
    doc = make_fake_cache(tmp_path / "doc", shard_rows=[16, 16], bos_policy="doc").path
    args = ["features", "build", "--sae", str(sae), "--model", "none", "--no-progress", "--top-k", "2",
            "--n-quantile", "2"]
    capsys.readouterr()
    assert main([*args, "--cache", str(none), "--out", str(tmp_path / "none.db")]) == 2
    err = capsys.readouterr().err
    assert "trained on contexts packed with BOS policy 'doc' (its saesteer.json)" in err, err
    assert f"the cache {none} was packed with `saesteer cache --bos-policy` 'none'" in err, err
    assert "build a cache with `saesteer cache --bos-policy` 'doc'" in err and "Traceback" not in err, err
    assert not (tmp_path / "none.db").exists()
    from features import CacheSource
    from features.checks import check_inputs
    from saes.formats import resolve_sae

    check_inputs(resolve_sae(str(sae)), CacheSource(doc, hook=HOOK))  # the policy it records: passes


def test_a_copied_or_hand_made_record_of_checks_vouches_for_nothing(tmp_path: Path) -> None:
    """`checked=` skips the checks only for what `check_inputs` made: a copy of its record with
    another SAE (or model) in it is checked again, and the BOS mismatch is refused (before: the
    store was built silently)."""
    from features import CacheSource, build_feature_store
    from features.checks import check_inputs
    from saes.formats import resolve_sae

    cache = make_fake_cache(tmp_path / "none", shard_rows=[16, 16], bos_policy="none").path
    source = CacheSource(cache, hook=HOOK)
    fits, other = resolve_sae(str(our_sae(tmp_path / "a", "none"))), resolve_sae(str(our_sae(tmp_path / "b", "doc")))
    forged = dataclasses.replace(check_inputs(fits, source), sae=other)
    with pytest.raises(ValueError, match="BOS policy 'doc'"):
        build_feature_store(tmp_path / "f.db", other, source, progress=False, checked=forged)
    assert not (tmp_path / "f.db").exists()


def recorded_for(loaded, identity):
    """`loaded` with its saesteer.json naming `identity` as its model."""
    from saes.formats import LoadedSAE

    prov = {**loaded.provenance, "model_identity": identity.to_json()}
    return LoadedSAE(loaded.sae, prov, loaded.spec, loaded.format)


def model_named(identity):
    from saes.identity import attach_identity

    model = types.SimpleNamespace(cfg=None)
    attach_identity(model, identity)
    return model


def test_checks_made_under_allow_model_mismatch_do_not_cover_a_build_without_it(tmp_path: Path) -> None:
    """An SAE recorded for model A and a model B, checked with allow_model_mismatch=True, then built
    without it: refused naming both (before: the lenient checks were taken as made)."""
    from features import CacheSource, build_feature_store
    from features.checks import check_inputs
    from saes.formats import resolve_sae
    from saes.identity import ModelIdentity, ModelMismatchError

    source = CacheSource(make_fake_cache(tmp_path / "c", shard_rows=[16, 16]).path, hook=HOOK)
    sae = recorded_for(resolve_sae(str(our_sae(tmp_path / "a", "none"))), ModelIdentity("object", "model-a",
                                                                                         weights_sha256="a" * 64))
    model = model_named(ModelIdentity("object", "model-b", weights_sha256="b" * 64))
    lenient = check_inputs(sae, source, model, allow_model_mismatch=True)
    with pytest.raises(ModelMismatchError, match="model-a.*model-b|model-b.*model-a"):
        build_feature_store(tmp_path / "f.db", sae, source, model=model, progress=False, checked=lenient)
    assert not (tmp_path / "f.db").exists()


def test_a_model_loaded_after_the_checks_is_still_checked_against_the_record(tmp_path: Path) -> None:
    """The CLI checks before it loads the model; a model handed to the build afterwards that is not
    the recorded one is refused by the build itself."""
    from features import CacheSource, build_feature_store
    from features.checks import check_inputs
    from saes.formats import resolve_sae
    from saes.identity import ModelIdentity, ModelMismatchError

    source = CacheSource(make_fake_cache(tmp_path / "c", shard_rows=[16, 16]).path, hook=HOOK)
    sae = recorded_for(resolve_sae(str(our_sae(tmp_path / "a", "none"))), ModelIdentity("object", "model-a",
                                                                                         weights_sha256="a" * 64))
    checked = check_inputs(sae, source)
    model = model_named(ModelIdentity("object", "model-b", weights_sha256="b" * 64))
    with pytest.raises(ModelMismatchError, match="model-b"):
        build_feature_store(tmp_path / "f.db", sae, source, model=model, progress=False, checked=checked)
