"""An SAE folder shared beyond this machine: `saesteer.json` records where it was trained here (the cache
folder, local dataset files, a local model's folder: absolute paths, a user name among them), and
`huggingface_hub.upload_folder` uploads it as it is. `saes.without_local_paths` cuts them to their last part
for the copy that is shared (docs/formats.md "Sharing an SAE"); hub ids, relative names, metrics and the
weights' checksum stay, and the copy is the same SAE.
"""

from __future__ import annotations

import json

import pytest

import saes
from saes.fingerprint import sae_fingerprint
from helpers.feature_fixtures import make_sae

pytestmark = [pytest.mark.usefixtures("one_thread")]


def test_the_shared_copy_records_no_local_path_and_is_the_same_sae(tmp_path):
    home = tmp_path / "home" / "alice"
    record = {"tool": "saesteer", "model": "gpt2", "dataset": "corpus/jsonl", "metrics": {"fvu": 0.12},
              "model_identity": {"kind": "local", "name": "gpt2-model", "path": str(home / "gpt2-model")},
              "data": {"cache": str(home / "cache-gpt2"), "dataset_files": [str(home / "corpus" / "train.jsonl")],
                       "ce_eval_data": {"files": ["~/corpus/validation.jsonl"], "dataset": "corpus/jsonl"}}}
    sae = make_sae("topk")
    folder = saes.save_sae(sae, tmp_path / "run" / "sae", provenance=record)

    shared = saes.save_sae(saes.load_sae(folder), tmp_path / "to_share",
                           provenance=saes.without_local_paths(saes.read_provenance(folder)))
    text = (shared / "saesteer.json").read_text()
    assert "alice" not in text and "~" not in text and str(tmp_path) not in text
    kept = json.loads(text)
    assert kept["data"]["cache"] == "cache-gpt2" and kept["data"]["dataset_files"] == ["train.jsonl"]
    assert kept["model"] == "gpt2" and kept["dataset"] == "corpus/jsonl" and kept["metrics"] == {"fvu": 0.12}
    assert kept["files"]["sae_weights.safetensors"]["sha256"]  # the checksum travels: the loader verifies it
    assert sae_fingerprint(saes.load_sae(shared)) == sae_fingerprint(sae)
