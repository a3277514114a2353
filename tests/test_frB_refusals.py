"""Refusals in one line that say how to fix them: a store whose Neuronpedia labels were imported under two
ids (a Neuronpedia latent given with its --sae, no id in SAELens's registry, cannot be placed: the refusal
names the store's ids and the fix, the latent's index, not "'sae' is not on Neuronpedia; pass --sae ID",
which would fetch another SAE); label --report naming a folder."""

from __future__ import annotations

import json

import pytest

from helpers.real_cli import saesteer
from test_early_refusals import loads, refused, ws  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.usefixtures("offline_env")]

MODEL = "tiny-test-model"


@pytest.fixture
def two_id_store(ws, tmp_path):  # noqa: F811
    import shutil

    store = tmp_path / "np.db"
    shutil.copy(ws[0].path, store)
    for latent, np_sae in [(3, "mymodel/0-res"), (4, "mymodel/0-res-b")]:
        rows = tmp_path / f"np{latent}.jsonl"
        model, layer = np_sae.split("/")
        rows.write_text(json.dumps({"modelId": model, "layer": layer, "index": latent, "description": "café menus",
                                    "explanationModelName": "gpt-4o", "id": f"e{latent}"}) + "\n")
        saesteer("label", "--store", store, "--import-neuronpedia", rows, "--neuronpedia-sae", np_sae).ok()
    return store


@pytest.mark.parametrize("command", ["steer", "sweep"])
def test_a_store_known_by_two_neuronpedia_ids_is_named_in_the_refusal(ws, loads, two_id_store, command):  # noqa: F811
    common = ["--sae", ws[1], "--store", two_id_store, "--model", MODEL]
    extra = ["--prompt", "the sea"] if command == "steer" else ["--topic", "ocean"]
    latent = "mymodel/0-res/3" + (":add=2" if command == "steer" else "")
    err = refused(saesteer(command, *common, "--latent", latent, *extra),
                  "'mymodel/0-res'", "'mymodel/0-res-b'", "give the latent as its index")
    assert "pass --sae" not in err, err
    assert loads == []


def test_label_refuses_a_report_that_is_a_folder_before_labelling(ws, tmp_path, monkeypatch):  # noqa: F811
    """--report naming a folder: refused before the run, as steer-eval's --out is (it failed writing the
    report after every latent was labelled and paid for)."""
    import shutil

    import autointerp.runner

    store = tmp_path / "s.db"
    shutil.copy(ws[0].path, store)
    monkeypatch.setattr(autointerp.runner, "label_latents", lambda *a, **kw: pytest.fail("labelled first"))
    (tmp_path / "reports").mkdir()
    r = saesteer("label", "--store", store, "--latents", "0-1", "--report", tmp_path / "reports",
                 "--embed-backend", "none", "--no-progress")
    refused(r, f"--report {tmp_path / 'reports'} is a folder; the run report is a JSON file: give its name "
               f"(e.g. {tmp_path / 'reports' / 'report.json'})")
