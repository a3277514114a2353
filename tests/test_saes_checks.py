"""SAE folders: the weights' SHA-256 in saesteer.json is verified on load, cfg.json is checked
field by field, NaN weights are refused, and a killed save leaves no temporary folder behind."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

import saes
from saes.checks import file_checksums
from saes.errors import SaesteerWarning
from saes.io import CFG_FILENAME, PROVENANCE_FILENAME, WEIGHTS_FILENAME, SAEFormatError


def make_sae(k=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    sae = saes.create_sae("topk", 8, 16, k=k, generator=g)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.5, generator=g)
    return sae


@pytest.fixture
def saved(tmp_path) -> Path:
    folder = tmp_path / "sae"
    saes.save_sae(make_sae(), folder, provenance={"hook_name": "blocks.0.hook_resid_post"})
    return folder


def test_saved_folder_records_the_weights_checksum_and_loads_verified(saved):
    record = json.loads((saved / PROVENANCE_FILENAME).read_text())
    blob = (saved / WEIGHTS_FILENAME).read_bytes()
    assert record["files"] == file_checksums({WEIGHTS_FILENAME: blob})
    with warnings.catch_warnings():
        warnings.simplefilter("error", SaesteerWarning)  # verified: no note
        saes.load_sae(saved)
    assert saes.read_provenance(saved) == {"hook_name": "blocks.0.hook_resid_post"}  # checksums are not provenance


def test_every_flipped_bit_in_the_weights_is_refused_naming_the_file(saved):
    w = saved / WEIGHTS_FILENAME
    good = w.read_bytes()
    rng = random.Random(0)
    positions = [0, 9, len(good) // 2, len(good) - 1] + rng.sample(range(len(good)), 6)
    refused = 0
    for pos in positions:
        bad = bytearray(good)
        bad[pos] ^= 1 << rng.randrange(8)
        w.write_bytes(bytes(bad))
        with pytest.raises(SAEFormatError, match=r"sae_weights\.safetensors does not match the SHA-256") as e:
            saes.load_sae(saved)
        assert str(saved / WEIGHTS_FILENAME) in str(e.value) and "re-download or re-save" in str(e.value)
        refused += 1
    assert refused == 10
    w.write_bytes(good)
    saes.load_sae(saved)


def test_a_truncated_weights_file_is_named_as_truncated(saved):
    w = saved / WEIGHTS_FILENAME
    w.write_bytes(w.read_bytes()[:-40])
    with pytest.raises(SAEFormatError, match="bytes but saesteer.json records .*truncated or corrupt"):
        saes.load_sae(saved)


def test_a_sae_lens_folder_without_checksums_loads_with_a_note(saved):
    (saved / PROVENANCE_FILENAME).unlink()  # what SAELens writes: cfg.json + weights only
    with pytest.warns(SaesteerWarning, match="records no checksum of its weights.*unverified"):
        sae = saes.load_sae(saved)
    assert sae.cfg.k == 2
    # without the record a truncated file is still caught, by the safetensors parser
    w = saved / WEIGHTS_FILENAME
    w.write_bytes(w.read_bytes()[:-40])
    with pytest.warns(SaesteerWarning), pytest.raises(SAEFormatError, match="truncated or corrupt"):
        saes.load_sae(saved)


def _edit_cfg(folder: Path, **changes) -> None:
    cfg = json.loads((folder / CFG_FILENAME).read_text())
    for k, v in changes.items():
        if v is _DROP:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (folder / CFG_FILENAME).write_text(json.dumps(cfg))  # json writes NaN for float("nan")


_DROP = object()


@pytest.mark.parametrize("changes, field", [
    ({"metadata": "oops"}, "metadata"),
    ({"k": float("nan")}, "k"),
    ({"k": "sixteen"}, "k"),
    ({"k": 2.5}, "k"),
    ({"k": 17}, "k"),
    ({"d_in": "abc"}, "d_in"),
    ({"d_sae": -16}, "d_sae"),
    ({"d_in": _DROP}, "d_in"),
    ({"apply_b_dec_to_input": "false"}, "apply_b_dec_to_input"),
    ({"dtype": "float8"}, "dtype"),
    ({"metadata": {"hook_name": 3}}, "metadata.hook_name"),
    ({"metadata": {"training_architecture_details": {"k": "four"}}}, "metadata.training_architecture_details.k"),
    ({"matryoshka_widths": ["a"]}, "matryoshka_widths"),
    ({"architecture": "gated_plus"}, "gated_plus"),
])
def test_bad_cfg_fields_are_refused_naming_the_file_and_the_field(saved, changes, field):
    _edit_cfg(saved, **changes)
    with pytest.raises(SAEFormatError) as e:
        saes.load_sae(saved)
    text = str(e.value)
    assert str(saved / CFG_FILENAME) in text or str(saved) in text
    assert field in text, text


def test_non_utf8_cfg_is_refused_naming_the_file(saved):
    (saved / CFG_FILENAME).write_bytes(b'{"d_in": 8, "x": "\xff\xfe"}')
    with pytest.raises(SAEFormatError, match=r"cfg\.json is not UTF-8 text"):
        saes.load_sae(saved)


def test_nan_weights_are_refused_on_load_even_with_a_matching_checksum(saved):
    state = saes.io.sae_state_dict(make_sae())
    state["W_enc"][3, 4] = float("nan")
    blob = st_save(state, metadata={"format": "pt"})
    (saved / WEIGHTS_FILENAME).write_bytes(blob)
    record = json.loads((saved / PROVENANCE_FILENAME).read_text())
    record["files"] = file_checksums({WEIGHTS_FILENAME: blob})
    (saved / PROVENANCE_FILENAME).write_text(json.dumps(record))
    with pytest.raises(SAEFormatError, match="NaN or infinite values in W_enc"):
        saes.load_sae(saved)


def test_resaving_in_place_rewrites_the_checksum(saved):
    saes.save_sae(make_sae(k=3, seed=2), saved)  # no provenance given: the old one is kept
    back = saes.load_sae(saved)
    assert back.cfg.k == 3 and saes.read_provenance(saved) == {"hook_name": "blocks.0.hook_resid_post"}


_KILLED_SAVE = """
import os, signal, sys, torch
import saes, saes.io
real = saes.io.atomic_write_json
def die(path, obj):
    if str(path).endswith("cfg.json"):
        os.kill(os.getpid(), signal.SIGKILL)   # killed in the middle of the save
    real(path, obj)
saes.io.atomic_write_json = die
saes.save_sae(saes.create_sae("topk", 8, 16, k=2), sys.argv[1])
"""


def test_a_killed_save_leaves_no_temporary_folder_once_saved_again(tmp_path):
    target = tmp_path / "saes" / "topk"
    r = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(target)], capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr
    leftovers = [p.name for p in target.parent.iterdir()]
    assert not target.exists() and len(leftovers) == 1 and leftovers[0].startswith(".topk.tmp-")
    saes.save_sae(make_sae(), target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["topk"]
    assert saes.load_sae(target).cfg.k == 2
