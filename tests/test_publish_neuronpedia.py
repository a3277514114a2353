"""A store's labels shared on Neuronpedia and read back: `features export --format neuronpedia` (the
upload layout) then `label --import-neuronpedia` of that folder into another copy of the store gives
every latent the same current label, marked as Neuronpedia's, with the explainer and the page address."""

from __future__ import annotations

import shutil


def test_labels_exported_for_neuronpedia_import_back_as_the_same_labels(tmp_path):
    from features import FeatureStore
    from helpers.real_cli import saesteer
    from helpers.web_app import shared_store

    ours, theirs = tmp_path / "ours.db", tmp_path / "theirs.db"
    shutil.copy(shared_store().path, ours)
    shutil.copy(shared_store().path, theirs)
    saesteer("features", "export", ours, tmp_path / "np", "--format", "neuronpedia", "--model-id", "tiny-test-model",
             "--source-set", "res-48", "--no-progress").ok()
    r = saesteer("label", "--store", theirs, "--import-neuronpedia", tmp_path / "np" / "tiny-test-model" / "0-res-48",
                 "--neuronpedia-sae", "tiny-test-model/0-res-48").ok()
    with FeatureStore.open(ours) as a, FeatureStore.open(theirs) as b:
        labels = a.labels(range(a.d_sae))
        assert len(labels) >= 5 and f"imported {len(labels)} Neuronpedia explanations" in r.text, r.text
        assert b.labels(range(b.d_sae)) == labels
        latent = next(iter(labels))
        got = b.label(latent).provenance
        assert got.judge_kind == "neuronpedia" and got.judge_model == f"saesteer:{a.label(latent).provenance.judge_model}"
        assert got.extra["url"] == f"https://www.neuronpedia.org/tiny-test-model/0-res-48/{latent}"


def test_a_delphi_export_of_a_residual_stream_sae_says_nothing_about_mlp_outputs(tmp_path, monkeypatch):
    """`label --export-delphi` names delphi's module for the store's hook (`layers.0` for blocks.0.hook_resid_post);
    it also asked about `layers.0.mlp`, whose output hook needs the model's config, and, that config not on the
    machine, printed a note about blocks.0.hook_mlp_out being used, to a user whose SAE reads no MLP."""
    from helpers.real_cli import OFFLINE_ENV, saesteer
    from helpers.web_app import shared_store

    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    store = tmp_path / "ours.db"
    shutil.copy(shared_store().path, store)
    r = saesteer("label", "--store", store, "--export-delphi", tmp_path / "run").ok()
    assert "wrote" in r.out and "module layers.0" in r.out, r.text
    assert "hook_mlp_out" not in r.text and "mlp.hook_out" not in r.text, r.text
