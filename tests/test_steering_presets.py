"""Steering presets: provenance, refusal on another SAE or model, storage in the feature store,
and use anywhere an edit is accepted (Python `steer`, `saesteer steer --preset`, `saesteer preset`)."""

from __future__ import annotations

import json

import pytest
import torch

import saes
from helpers.steering_fixtures import random_sae, tiny_model, torch_threads
from saes.identity import ModelIdentity, ModelMismatchError, attach_identity
from steering import GenerationConfig, Preset, PresetMismatchError, make_preset, steer
from steering.spec import SteeringError

HOOK = "blocks.1.hook_resid_post"
GREEDY = GenerationConfig(max_new_tokens=6, do_sample=False, stop_at_eos=False)


@pytest.fixture(scope="module")
def model():
    m = tiny_model()
    from saesteer.models import model_identity

    model_identity(m)  # as load_model does: the model knows who it is
    return m


@pytest.fixture(scope="module")
def sae(model):
    return random_sae(model, "topk", hook=HOOK, seed=3)


def test_preset_records_provenance_and_round_trips(model, sae):
    tmax = {4: 2.0, 9: 0.5, 11: 3.0}
    p = make_preset("sea-ward", ["4:add=2x@generated", "9:clamp=1?11>0.5x"], sae=sae, model=model,
                    typical_max=tmax, stops=["11>1x"], description="d", scorecard={"x": 1})
    assert p.hook_name == HOOK and len(p.sae_fingerprint) == 64
    assert p.model["source"] == "object" and p.calibration["4"]["typical_max"] == 2.0
    assert Preset.from_json(json.loads(p.dumps())) == p
    edits = p.feature_edits()  # 'x' units resolved by the recorded calibration: raw from here on
    assert [e.describe() for e in edits] == ["4:add=4@generated", "9:clamp=1?11>1.5"]
    assert [t.describe() for t in p.stop_triggers()] == ["11>3"]
    with pytest.raises(SteeringError, match="typical max"):
        make_preset("x", ["5:add=2x"], sae=sae, model=model, typical_max=tmax)
    with pytest.raises(SteeringError, match="out of range"):
        make_preset("x", ["4:add=1"], sae=sae, stops=["9999>1"])
    with pytest.raises(SteeringError, match="name"):
        make_preset("bad name!", ["4:add=1"], sae=sae)
    with pytest.raises(SteeringError, match="unknown fields"):
        Preset.from_json(dict(p.to_json(), surprise=1))


def test_steer_with_a_preset_equals_its_edits(model, sae):
    p = make_preset("p", ["4:add=2x@generated", "7:clamp=3@prompt"], sae=sae, model=model, typical_max={4: 1.5})
    with torch_threads(1):
        with steer(model, sae, [p]) as s:
            a = s.generate(["the sea", "a tree"], GREEDY)
        with steer(model, sae, ["4:add=3@generated", "7:clamp=3@prompt"]) as s:
            b = s.generate(["the sea", "a tree"], GREEDY)
    assert torch.equal(a.tokens, b.tokens)


def test_preset_refused_on_another_sae_or_model(model, sae):
    p = make_preset("p", ["4:add=1"], sae=sae, model=model)
    other = random_sae(model, "topk", hook=HOOK, seed=4)  # same shape, other weights
    with pytest.raises(PresetMismatchError) as e:
        with steer(model, other, [p]):
            pass
    assert p.sae_fingerprint[:12] in str(e.value) and "save the preset again" in str(e.value)
    moved = random_sae(model, "topk", hook="blocks.0.hook_resid_post", seed=3)  # same weights, another hook
    with pytest.raises(PresetMismatchError, match="blocks.1.hook_resid_post"):
        p.check(model, moved)
    elsewhere = tiny_model(seed=1)
    attach_identity(elsewhere, ModelIdentity("hub", "gpt2", revision="607a30d7"))
    with pytest.raises(ModelMismatchError, match="gpt2.*allow_model_mismatch=True"):
        with steer(elsewhere, sae, [p]):
            pass
    with steer(elsewhere, sae, [p], allow_model_mismatch=True):  # the user's call
        pass


def test_store_keeps_presets_and_refuses_another_saes(tmp_path, model):
    from helpers.web_store import build_web_store

    from features import FeatureStore, StoreError, StoreMismatchError
    from steering.store import StoreLink

    ws = build_web_store(tmp_path, name="p")
    with FeatureStore.open(ws.path) as ro:
        assert ro.preset_names() == [] and ro.preset_record("x") is None  # a store from before presets
    with FeatureStore.open(ws.path, readonly=False) as store:
        link = StoreLink(store)
        f = next(i for i in range(ws.d_sae) if link.typical_max(i))
        p = make_preset("one", [f"{f}:add=2x"], sae=ws.sae, model=ws.model, typical_max=link.typical_max,
                        recommended=link.recommended)
        link.save_preset(p)
        assert link.presets() == ["one"] and link.preset("one") == p
        with pytest.raises(StoreError, match="already has"):
            link.save_preset(p)
        link.save_preset(p, overwrite=True)
        foreign = make_preset("two", ["1:add=1"], sae=random_sae(model, "jumprelu", hook="blocks.0.hook_resid_post",
                                                                 d_sae=ws.d_sae, d_in=32))
        with pytest.raises(StoreMismatchError, match="another SAE"):
            link.save_preset(foreign)
        with pytest.raises(SteeringError, match="no preset named 'nope'.*one"):
            link.preset("nope")
        assert store.delete_preset("one") and not store.delete_preset("one")


def test_preset_cli_save_list_export_import(tmp_path, capsys):
    from helpers.web_store import build_web_store

    from saesteer.cli import main

    a = build_web_store(tmp_path / "a", name="a")
    b = build_web_store(tmp_path / "b", name="b", seed=1)  # another SAE
    f = 5
    assert main(["preset", "save", "calm", "--store", str(a.path), "-l", f"{f}:add=1@generated", "--stop-when",
                 f"{f}>2", "--description", "test"]) == 0
    assert "saved preset calm" in capsys.readouterr().out
    assert main(["preset", "list", "--store", str(a.path)]) == 0
    assert f"{f}:add=1@generated" in capsys.readouterr().out
    out = tmp_path / "calm.json"
    assert main(["preset", "export", "calm", "--store", str(a.path), "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["stops"] == [f"{f}>2"] and rec["hook_name"] == "blocks.0.hook_resid_post"
    capsys.readouterr()
    assert main(["preset", "import", str(out), "--store", str(b.path)]) == 2  # made for a's SAE
    err = capsys.readouterr().err
    assert "another SAE" in err and rec["sae_fingerprint"][:12] in err
    assert main(["preset", "import", str(out), "--store", str(a.path), "--name", "calm2"]) == 0
    assert main(["preset", "show", "calm2", "--store", str(a.path)]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["name"] == "calm2"
    assert main(["preset", "delete", "calm2", "--store", str(a.path)]) == 0
    assert main(["preset", "delete", "calm2", "--store", str(a.path)]) == 2
    assert main(["preset", "save", "x", "--store", str(a.path), "-l", "999:add=1"]) == 2
    assert "out of range" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for argv, message in ((["import", str(tmp_path / "none.json")], "none.json: no such file"),
                          (["import", str(bad)], "bad.json is not valid JSON"),
                          (["save", "y", "-l", "5:add=1", "--scorecard", str(bad)], "--scorecard " + str(bad) + " is not valid JSON")):
        assert main(["preset", *argv, "--store", str(a.path)]) == 2
        assert message in capsys.readouterr().err


def test_steer_cli_with_a_preset_and_with_found_features(tmp_path, capsys):
    from helpers.web_store import build_web_store

    from saesteer.commands import steer as steer_cmd
    from saesteer.cli import build_parser, main

    ws = build_web_store(tmp_path, name="s")
    sae_dir = tmp_path / "sae"
    saes.save_sae(ws.sae, sae_dir)
    assert main(["preset", "save", "pp", "--store", str(ws.path), "-l", "3:clamp=9"]) == 0
    capsys.readouterr()
    base = ["steer", "--sae", str(sae_dir), "--store", str(ws.path), "-p", "the sea", "--max-new-tokens", "5",
            "--do-sample", "false", "--json"]
    with torch_threads(1):
        assert steer_cmd._run(build_parser().parse_args(base + ["--preset", "pp"]), model=ws.model) == 0
        by_preset = json.loads(capsys.readouterr().out)
        assert steer_cmd._run(build_parser().parse_args(base + ["-l", "3:clamp=9"]), model=ws.model) == 0
        by_edit = json.loads(capsys.readouterr().out)
        assert by_preset["results"] == by_edit["results"]
        ocean = next(i for i, t in ws.labels.items() if "ocean" in t)
        assert steer_cmd._run(build_parser().parse_args(base + ["--search", "ocean", "--generate"]), model=ws.model) == 0
        found = json.loads(capsys.readouterr().out)
        assert found["candidates"][0]["latent"] == ocean
        assert found["edits"] == f"{ocean}:add=3x"  # the store's recommended strength for it
        pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
        pos.write_text("the sea and the ship\nthe whale at the shore\n")
        neg.write_text("the tree in the forest\nbread and soup\n")
        assert steer_cmd._run(build_parser().parse_args(base + ["--contrast", str(pos), str(neg), "--generate",
                                                                 "--candidates", "2"]), model=ws.model) == 0
        con = json.loads(capsys.readouterr().out)
        assert len(con["edits"].split("; ")) == 2 and con["edits"].split(":")[0] == str(con["candidates"][0]["latent"])
