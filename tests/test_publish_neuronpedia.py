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
