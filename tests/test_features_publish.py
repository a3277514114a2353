"""Neuronpedia's import format and SAEDashboard's batch JSON (features.publish), checked against
the field lists we wrote from their public sources (see the module docstring), over a copy of the
small real store of helpers.web_store (labels, scores, a script-payload label)."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest

from features.publish import (NeuronpediaInfo, check_neuronpedia_export, check_saedashboard_batch,
                              export_neuronpedia, export_saedashboard)
from features.publishfields import FIELDS, PublishError, check_rows
from helpers.web_app import shared_store
from helpers.web_store import XSS_LABEL


@pytest.fixture
def store(tmp_path):
    from features import FeatureStore
    from saesteer.featuremap import build_map

    ws = shared_store()
    path = tmp_path / "tiny.db"
    shutil.copy(ws.path, path)
    with FeatureStore.open(path, readonly=False) as st:
        build_map(st, source="decoder", method="pca", sae=ws.sae)
    st = FeatureStore.open(path)
    yield ws, st
    st.close()


def _rows(path):
    return [json.loads(x) for x in gzip.decompress(path.read_bytes()).decode().splitlines() if x.strip()]


def test_neuronpedia_export_layout_and_rows(store, tmp_path):
    ws, st = store
    out = tmp_path / "exports"
    root = export_neuronpedia(st, out, NeuronpediaInfo(model_id="tiny-test-model", source_set="saesteer-test",
                                                       batch_size=16)).root
    assert root == out / "tiny-test-model" / "0-saesteer-test"  # layer 0 from blocks.0.hook_resid_post
    counts = check_neuronpedia_export(root)
    alive = [r.latent for r in st.list_features(sort="latent", filter={"alive_only": True}, limit=st.d_sae)]
    assert counts["features"] == len(alive) and counts["explanations"] == len(ws.labels)
    assert counts["explanation_scores"] == 2 * len(ws.labels)  # detection and fuzzing of each label
    assert len(list((root / "features").glob("batch-*.jsonl.gz"))) == -(-len(alive) // 16)
    feats = {r["index"]: r for f in sorted((root / "features").glob("*.gz")) for r in _rows(f)}
    f0 = feats[str(alive[0])]
    rec = st.feature(alive[0])
    assert f0["pos_str"] == [t.token for t in rec.logits.promoted] and f0["frac_nonzero"] == pytest.approx(rec.stats.freq)
    assert f0["umap_x"] is not None  # the stored map goes along
    expl = [r for f in (root / "explanations").glob("*.gz") for r in _rows(f)]
    assert {e["description"] for e in expl} == set(ws.labels.values())
    assert any(e["description"] == XSS_LABEL for e in expl)  # data, kept as it is (JSON-escaped)
    acts = [r for f in (root / "activations").glob("*.gz") for r in _rows(f)]
    assert all(a["values"][a["maxValueTokenIndex"]] == a["maxValue"] for a in acts)
    # a second export writes the same ids (deterministic)
    again = export_neuronpedia(st, tmp_path / "again", NeuronpediaInfo(model_id="tiny-test-model",
                                                                       source_set="saesteer-test", batch_size=16)).root
    assert [r["id"] for r in _rows(again / "activations" / "batch-0.jsonl.gz")] == \
           [r["id"] for r in _rows(root / "activations" / "batch-0.jsonl.gz")]


def test_schema_check_refuses_missing_and_mistyped_fields(store, tmp_path):
    _, st = store
    root = export_neuronpedia(st, tmp_path / "x", NeuronpediaInfo(model_id="m", source_set="s")).root
    f = root / "explanations" / "batch-0.jsonl.gz"
    rows = _rows(f)
    rows[0]["description"] = 42
    f.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    with pytest.raises(PublishError, match="'description' must be string"):
        check_neuronpedia_export(root)
    good = {k: ([] if t.startswith("list") else None) for k, t in FIELDS["explanation_scores"].items()}
    with pytest.raises(PublishError, match="missing fields"):
        check_rows("explanation_scores", [{"id": "a"}])
    with pytest.raises(PublishError, match="must be"):
        check_rows("explanation_scores", [good])
    with pytest.raises(ValueError, match="model_id"):
        NeuronpediaInfo(model_id="bad id/..", source_set="s")


def test_saedashboard_batch(store, tmp_path):
    _, st = store
    path = export_saedashboard(st, tmp_path / "dash" / "batch-0.json", model_id="tiny-test-model", source_set="test")
    batch = json.loads(path.read_text())
    assert batch["layer"] == 0 and check_saedashboard_batch(batch) == len(batch["features"]) > 0
    feat = batch["features"][0]
    assert feat["activations"] and len(feat["activations"][0]["tokens"]) == len(feat["activations"][0]["values"])
    feat["activations"][0]["values"] = "oops"
    with pytest.raises(PublishError, match="values"):
        check_saedashboard_batch(batch)


def test_export_command(store, tmp_path, capsys):
    from saesteer.cli import main

    ws, st = store
    assert main(["features", "export", str(st.path), str(tmp_path / "np"), "--format", "neuronpedia",
                 "--source-set", "res-48"]) == 0
    out = capsys.readouterr().out
    assert "(checked)" in out and f"{len(ws.labels)} explanations" in out
    assert (tmp_path / "np" / "tiny-test-model" / "0-res-48" / "source.jsonl").is_file()
    assert main(["features", "export", str(st.path), str(tmp_path / "d.json"), "--format", "saedashboard",
                 "--limit", "5"]) == 0
    assert len(json.loads((tmp_path / "d.json").read_text())["features"]) == 5


def test_the_cli_names_the_model_for_neuronpedia_from_the_store_record(store, tmp_path):
    """Without --model-id the export uses the last part of the model name the store records (its
    record id, 'hub:org/name@commit' or 'local:dir#sha256:...', is no Neuronpedia id); a refused
    value names the flag, not the dataclass field."""
    from features import FeatureStore
    from helpers.real_cli import saesteer
    from saes.identity import ModelIdentity

    ws, st = store
    hub = ModelIdentity("hub", "SomeOrg/tiny-model", revision="a" * 40, d_model=32)
    with FeatureStore.open(st.path, readonly=False) as rw:  # as a build from a hub model's cache records it
        rw.set_meta(model_identity=hub.to_json())
    want = "tiny-model"
    r = saesteer("features", "export", st.path, tmp_path / "np", "--format", "neuronpedia", "--limit", 2).ok()
    assert (tmp_path / "np" / want).is_dir(), r.text
    r = saesteer("features", "export", st.path, tmp_path / "bad", "--format", "neuronpedia", "--model-id", "a b")
    assert r.rc == 2 and "--model-id must be letters" in r.err and "NeuronpediaInfo" not in r.err
    saesteer("features", "export", st.path, tmp_path / "d.json", "--format", "saedashboard", "--limit", 2).ok()
    assert json.loads((tmp_path / "d.json").read_text())["model_id"] == want


@pytest.mark.parametrize("name", ["EleutherAI/pythia-70m", "my model (v2)", "--x--", "..", "ünïcode-名前", "gpt2@main",
                                  "_private", "a.b_c-d"])
def test_one_id_rule_for_the_default_name_and_the_check(name):
    """The CLI's default --model-id (the store's model name cleaned up) and the check of a given one
    are the one rule of features.publish: a cleaned name always passes the check, whatever it was."""
    from features.publish import check_neuronpedia_id, neuronpedia_id

    cleaned = neuronpedia_id(name.rstrip("/").split("/")[-1])
    if cleaned is None:
        with pytest.raises(ValueError, match="letters, digits"):
            check_neuronpedia_id("model_id", name)
    else:
        NeuronpediaInfo(model_id=cleaned, source_set=cleaned)  # passes
        assert neuronpedia_id(cleaned) == cleaned  # already clean: unchanged


def test_saedashboard_ids_follow_the_same_rule(store, tmp_path):
    """SAEDashboard's model_id / sae_set become Neuronpedia ids too: the same rule refuses a bad one
    (the export once wrote any string), and the CLI names the flag."""
    from helpers.real_cli import saesteer

    _, st = store
    with pytest.raises(ValueError, match="model_id must be letters"):
        export_saedashboard(st, tmp_path / "d.json", model_id="a b", source_set="test")
    r = saesteer("features", "export", st.path, tmp_path / "d.json", "--format", "saedashboard", "--model-id", "a/b")
    assert r.rc == 2 and "--model-id must be letters" in r.err and not (tmp_path / "d.json").exists()


def _dense_correlations(acts_RF, n):
    """SAEDashboard's definition, from every token's activations [R, F]: per latent, the n others with
    the largest Pearson correlation (descending; here only positive ones), and the cosine similarity
    of the same two activation vectors."""
    a = acts_RF.double()
    c = a - a.mean(0)
    pearson = (c.T @ c) / (c.norm(dim=0)[:, None] * c.norm(dim=0)[None, :]).clamp(min=1e-300)
    cos = (a.T @ a) / (a.norm(dim=0)[:, None] * a.norm(dim=0)[None, :]).clamp(min=1e-300)
    pearson.fill_diagonal_(-2)
    out = {}
    for f in range(a.shape[1]):
        order = sorted((g for g in range(a.shape[1]) if pearson[f, g] > 0), key=lambda g: (-float(pearson[f, g]), g))[:n]
        out[f] = (order, [float(pearson[f, g]) for g in order], [float(cos[f, g]) for g in order])
    return out


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A store built over a small random source, with every token's activations [R, F] beside it and
    both exports of it: (cfg, acts_RF, SAEDashboard batch, {latent: Neuronpedia features row},
    Neuronpedia activation rows). Every latent fires at most n_quantile times, at most k <= coact_kmax
    latents per token: the store's sampled statistics are exact."""
    import torch

    from features import FeatureStore, build_feature_store
    from helpers.feature_fixtures import WordTokenizer, make_sae, random_source, small_config

    tmp = tmp_path_factory.mktemp("dense")
    src = random_source(seed=3, n_contexts=12, context_length=8, d_in=8)
    sae = make_sae("topk", d_in=8, d_sae=24, seed=3, k=3)
    cfg = small_config(n_quantile=128, coact_kmax=8, n_neighbours=4)
    build_feature_store(tmp / "s.db", sae, src, cfg, tokenizer=WordTokenizer(), progress=False)
    with torch.no_grad():
        acts = torch.cat([sae.encode(b.acts_BD) for b in src.batches(0, 100)]).clamp(min=0)
    assert int((acts > 0).sum(0).max()) <= cfg.n_quantile  # the exact case
    with FeatureStore.open(tmp / "s.db") as st:
        batch = json.loads(export_saedashboard(st, tmp / "d.json", model_id="m", source_set="s").read_text())
        root = export_neuronpedia(st, tmp / "np", NeuronpediaInfo(model_id="m", source_set="s")).root
    np_feats = {int(r["index"]): r for f in (root / "features").glob("*.gz") for r in _rows(f)}
    np_acts = [r for f in (root / "activations").glob("*.gz") for r in _rows(f)]
    return cfg, acts, batch, np_feats, np_acts


def test_correlated_features_are_the_pearson_correlation_of_activations(dense):
    """correlated_features_indices / _pearson / _l1 mean what SAEDashboard's feature tables mean (its
    RollingCorrCoef.topk_pearson, written by its Neuronpedia converter): the latents whose activations
    over every token correlate most with this one's, in descending Pearson order, and the cosine
    similarity of the same activation vectors under `_l1`. Recomputed from the dense activations of
    all tokens. The export once wrote co-activation Jaccard indices as `_pearson` and left `_l1` empty."""
    cfg, acts, batch, np_feats, _ = dense
    want = _dense_correlations(acts, cfg.n_neighbours)
    checked = 0
    for feat in batch["features"]:
        f = feat["feature_index"]
        ids, pearson, cos = want[f]
        for row in (feat, np_feats[f]):
            assert row["correlated_features_indices"] == ids, f
            assert row["correlated_features_pearson"] == pytest.approx(pearson, abs=1e-5), f
            assert row["correlated_features_l1"] == pytest.approx(cos, abs=1e-5), f
            assert row["correlated_features_pearson"] == sorted(row["correlated_features_pearson"], reverse=True)
        checked += len(ids)
    assert checked > len(batch["features"])  # most latents have correlated ones


def test_sampled_correlations_equal_the_eager_reference(tmp_path, monkeypatch):
    """Where the store's statistics are sampled: latents firing more often than n_quantile (each
    keeps a uniform sample of its events, scaled by n_fires / sampled), more latents active per token
    (k=6) than coact_kmax=3 keeps, and latents in several blocks (the block size made small). The
    correlations the build writes equal `activation_correlations_dense`, which sums the same sampled
    events one by one in an [F, F] table."""
    import torch

    import features.analysis
    import features.build
    from features import FeatureStore, build_feature_store
    from features.analysis import activation_correlations_dense
    from helpers.feature_fixtures import WordTokenizer, make_sae, random_source, small_config

    seen = {}
    real = features.build.activation_correlations

    def spy(*args):
        seen["args"], seen["got"] = args, real(*args)
        return seen["got"]

    monkeypatch.setattr(features.build, "activation_correlations", spy)
    Q, kmax, n = 4, 3, 5
    monkeypatch.setattr(features.analysis, "_BLOCK_ELEMS", 16 * Q * kmax * 5)  # blocks of 5 latents
    src = random_source(seed=5, n_contexts=16, context_length=8, d_in=8)
    sae = make_sae("topk", d_in=8, d_sae=23, seed=5, k=6)
    build_feature_store(tmp_path / "s.db", sae, src, small_config(n_quantile=Q, coact_kmax=kmax, n_neighbours=n),
                        tokenizer=WordTokenizer(), progress=False)
    sample, val_FQK, self_FQ, *_ = seen["args"]
    assert bool((sample.n_fires_F > 2 * Q).any())  # sampled, not exact
    assert bool((sample.lat_FQK[sample.n_sample_F > 0][:, 0] >= 0).all())  # every kmax slot taken (k > kmax)
    got, want = seen["got"], activation_correlations_dense(*seen["args"])
    assert torch.equal(got.ids_Fn, want.ids_Fn)
    assert torch.allclose(got.pearson_Fn, want.pearson_Fn, atol=1e-6)
    assert torch.allclose(got.cossim_Fn, want.cossim_Fn, atol=1e-6)
    assert int((got.ids_Fn >= 0).sum()) > 2 * sae.cfg.d_sae  # most latents have correlated ones
    with FeatureStore.open(tmp_path / "s.db") as st:  # and the store holds what was computed
        for f in (0, 7, 22):
            row = st.feature(f).correlated
            assert [c.latent for c in row] == [g for g in got.ids_Fn[f].tolist() if g >= 0]


def test_activation_bins_are_intervals_and_the_share_of_tokens_in_them(dense):
    """An example's bin fields mean what SAEDashboard's quantile groups mean ("INTERVAL lo - hi,
    CONTAINS x%"): bin_min / bin_max bound the activation interval the example's token lies in, and
    bin_contains is the fraction of all tokens whose activation lies in that interval; top examples
    are SAEDashboard's top group (-1, the max activation, -1). The exports once wrote the example's
    own activation as both bounds and its quantile (a CDF position) as bin_contains."""
    _, acts, batch, _, np_acts = dense
    n_rows = acts.shape[0]
    seen = 0
    rows = [(f["feature_index"], a["bin_min"], a["bin_max"], a["bin_contains"], a["values"][a["qualifying_token_index"]])
            for f in batch["features"] for a in f["activations"]]
    rows += [(int(a["index"]), a["binMin"], a["binMax"], a["binContains"], a["values"][a["qualifyingTokenIndex"]])
             for a in np_acts]
    assert len(rows) == 2 * sum(len(f["activations"]) for f in batch["features"])  # both exports: every example
    for f, lo, hi, contains, value in rows:
        if lo == -1:  # SAEDashboard's top group
            assert contains == -1 and hi == pytest.approx(float(acts[:, f].max()))
            continue
        assert lo <= value < hi, (f, lo, value, hi)
        share = float(((acts[:, f] >= lo) & (acts[:, f] < hi) & (acts[:, f] > 0)).sum()) / n_rows
        assert contains == pytest.approx(share, abs=1e-9), f
        seen += 1
    assert seen > len(batch["features"])


def test_both_exports_write_the_same_bins_and_no_bin_is_not_the_top_group(store, tmp_path):
    """One rule for both exports: a top example is SAEDashboard's top group (-1, max, -1) in the
    Neuronpedia rows too (they once had nulls there while SAEDashboard had -1, max, -1, which
    Neuronpedia's converter copies), and a quantile example of a latent without a histogram has no
    bin (null), not the top group's marker (it was labelled a top example)."""
    import sqlite3

    from features import FeatureStore

    _, st = store
    bare = tmp_path / "bare.db"
    shutil.copy(st.path, bare)
    with FeatureStore.open(bare) as ro:
        latent = next(f for f in range(ro.d_sae) if ro.feature(f).quantile_examples)
    with sqlite3.connect(bare) as db:
        db.execute("DELETE FROM histograms WHERE latent = ?", (latent,))
    with FeatureStore.open(bare) as ro:
        batch = json.loads(export_saedashboard(ro, tmp_path / "d.json", model_id="m", source_set="s").read_text())
        root = export_neuronpedia(ro, tmp_path / "np", NeuronpediaInfo(model_id="m", source_set="s")).root
        rec = ro.feature(latent)
    np_bins = {}
    for a in (r for f in (root / "activations").glob("*.gz") for r in _rows(f)):
        np_bins.setdefault(int(a["index"]), []).append((a["binMin"], a["binMax"], a["binContains"]))
    for f in batch["features"]:
        dash = [(a["bin_min"], a["bin_max"], a["bin_contains"]) for a in f["activations"]]
        assert sorted(dash, key=repr) == sorted(np_bins.get(f["feature_index"], []), key=repr), f["feature_index"]
    dash = [(a["bin_min"], a["bin_max"], a["bin_contains"])
            for f in batch["features"] if f["feature_index"] == latent for a in f["activations"]]
    top = (-1.0, pytest.approx(rec.stats.max_act), -1.0)
    assert dash.count(top) == len([e for e in rec.top_examples if max(e.acts) > 0])
    assert dash.count((None, None, None)) == len([e for e in rec.quantile_examples if max(e.acts) > 0]) > 0


def test_a_store_built_before_correlations_exports_them_empty(store, tmp_path):
    """A store from before the `correlations` table (opened read-only, so nothing adds it) reads and
    exports with the correlated-features fields empty, as Neuronpedia's defaults have them."""
    import sqlite3

    _, st = store
    old = tmp_path / "old.db"
    shutil.copy(st.path, old)
    with sqlite3.connect(old) as db:
        db.execute("DROP TABLE correlations")
    from features import FeatureStore

    with FeatureStore.open(old) as ro:
        batch = json.loads(export_saedashboard(ro, tmp_path / "d.json", model_id="m", source_set="s").read_text())
        assert all(not ro.feature(f["feature_index"]).correlated for f in batch["features"])
    assert {(len(f["correlated_features_indices"]), len(f["correlated_features_pearson"]),
             len(f["correlated_features_l1"])) for f in batch["features"]} == {(0, 0, 0)}
    with FeatureStore.open(st.path) as new:  # the same store as built now has them
        assert any(new.feature(f["feature_index"]).correlated for f in batch["features"])


def test_umap_fields_take_the_umap_layout_when_the_store_has_one(store, tmp_path):
    """umap_x / umap_y hold the decoder map's UMAP layout when there is one; the export once took
    the first decoder layout by name, decoder-pca, even beside a decoder-umap."""
    from features import FeatureStore

    _, st = store
    with FeatureStore.open(st.path, readonly=False) as rw:  # a UMAP layout beside the fixture's PCA one
        pca = {i: (x, y) for i, x, y in rw.feature_map("decoder-pca")}
        rw.write_feature_map("decoder-umap", [(i, -x - 0.5, y + 0.25) for i, (x, y) in pca.items()], {"method": "umap"})
    with FeatureStore.open(st.path) as ro:
        root = export_neuronpedia(ro, tmp_path / "np", NeuronpediaInfo(model_id="m", source_set="s")).root
    feats = [r for f in (root / "features").glob("*.gz") for r in _rows(f)]
    assert feats and all((r["umap_x"], r["umap_y"]) == pytest.approx((-pca[int(r["index"])][0] - 0.5,
                                                                       pca[int(r["index"])][1] + 0.25)) for r in feats)


def test_a_smaller_export_of_a_source_removes_the_batches_it_no_longer_writes(store, tmp_path):
    """An export of 3 latents into the folder of an earlier export of all of them left its
    batch-1.jsonl.gz, batch-2... there, which an upload of the folder imports as current
    (check_neuronpedia_export counted them too); the files an export wrote go (saes.export_folder),
    a file the user put there stays, and so does another source exported into the same folder."""
    ws, st = store
    out = tmp_path / "np"
    alive = [r.latent for r in st.list_features(sort="latent", filter={"alive_only": True}, limit=st.d_sae)]
    assert len(alive) > 2 * 8
    other = export_neuronpedia(st, out, NeuronpediaInfo(model_id="m", source_set="other", batch_size=8)).root
    first = export_neuronpedia(st, out, NeuronpediaInfo(model_id="m", source_set="s", batch_size=8))
    assert first.removed == [] and len(list((first.root / "features").glob("batch-*"))) == -(-len(alive) // 8)
    (first.root / "README.md").write_text("uploaded on Monday — notes\n", encoding="utf-8")
    again = export_neuronpedia(st, out, NeuronpediaInfo(model_id="m", source_set="s", batch_size=8), latents=alive[:3])
    for table in ("features", "activations", "explanations", "explanation_scores"):
        assert [p.name for p in (again.root / table).iterdir()] == ["batch-0.jsonl.gz"]
    assert len(again.removed) == 4 * (-(-len(alive) // 8) - 1)
    assert (again.root / "README.md").is_file() and check_neuronpedia_export(again.root)["features"] == 3
    assert check_neuronpedia_export(other)["features"] == len(alive)
