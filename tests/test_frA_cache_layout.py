"""The HF cache's `models--ORG--NAME/snapshots/REV` layout has one reader (`saes.model_files.cache_folder_repo`):
the model check (`hub_snapshot_repo`, a model's snapshot directory) and the SAE readers (`snapshot_place`,
a folder inside an SAE repo's snapshot) name the same repo for the same folder, a legacy un-namespaced
repo ('gpt2', cached as `models--gpt2`) among them."""

from pathlib import Path

import pytest

from saes.formats.base import snapshot_place
from saes.model_files import cache_folder_repo, hub_snapshot_repo


@pytest.mark.parametrize("folder, repo", [("models--google--gemma-scope-2b-pt-res", "google/gemma-scope-2b-pt-res"),
                                          ("models--gpt2", "gpt2"), ("datasets--org--name", None), ("models--", None)])
def test_a_cache_folder_names_its_repo_for_models_and_saes_alike(tmp_path, folder, repo):
    assert cache_folder_repo(folder) == repo
    snapshot = tmp_path / "hub" / folder / "snapshots" / "0123abcd"
    assert hub_snapshot_repo(snapshot) == repo
    assert snapshot_place(snapshot / "layer_3" / "width_16k") == ((repo, "layer_3/width_16k") if repo else None)


def test_a_folder_outside_a_snapshot_names_no_repo(tmp_path):
    assert hub_snapshot_repo(tmp_path / "models--org--name") is None  # the repo's folder, not a snapshot
    assert snapshot_place(Path("/data/models--org--name/refs/main")) is None
