"""JSON API of the web app over a real (tiny) feature store: every endpoint, good and bad input.

Bad input must get a 4xx with a readable message, never a 500.
"""

from __future__ import annotations

import json

import pytest

from helpers.web_app import client, make_app, shared_store
from saesteer.web import Limits


@pytest.fixture(scope="module")
def ws():
    return shared_store()


@pytest.fixture(scope="module")
def c(ws):
    with client(make_app(second_store=True)) as cl:
        yield cl


def _detail(r) -> str:
    body = r.json()
    assert isinstance(body.get("detail"), str) and body["detail"], body
    return body["detail"]


# -- reads ------------------------------------------------------------------------------------------


def test_status_and_stores(c, ws):
    r = c.get("/api/status")
    assert r.status_code == 200
    body = r.json()
    assert [s["id"] for s in body["stores"]] == ["tiny", "nomodel"]
    assert body["limits"]["max_new_tokens"] == Limits().max_new_tokens
    stores = c.get("/api/stores").json()
    tiny = stores[0]
    assert tiny["d_sae"] == ws.d_sae and tiny["hook"] == "blocks.0.hook_resid_post"
    assert tiny["levels"] == [0, 1] and tiny["has_labels"] and tiny["can_steer"]
    assert stores[1]["can_steer"] is False
    assert c.get("/api/stores/tiny").json() == tiny


def test_feature_list_paginates_over_all_features(c, ws):
    seen, offset = [], 0
    while offset is not None:
        r = c.get("/api/stores/tiny/features", params={"offset": offset, "limit": 20})
        assert r.status_code == 200
        page = r.json()
        assert page["total"] == ws.d_sae and page["limit"] == 20 and page["offset"] == offset
        seen += [f["latent"] for f in page["items"]]
        offset = page["next_offset"]
    assert seen == list(range(ws.d_sae))


def test_feature_list_sorts_and_filters(c, ws):
    rows = c.get("/api/stores/tiny/features", params={"sort": "frequency", "limit": 100}).json()["items"]
    freqs = [r["frequency"] for r in rows]
    assert freqs == sorted(freqs, reverse=True)  # statistics sort descending by default
    rows = c.get("/api/stores/tiny/features", params={"sort": "frequency", "desc": "false", "limit": 100}).json()["items"]
    assert [r["frequency"] for r in rows] == sorted(freqs)

    dead = c.get("/api/stores/tiny/features", params={"health": "dead"}).json()
    assert dead["total"] == 2 and all(r["health"] == "dead" for r in dead["items"])
    ok = c.get("/api/stores/tiny/features", params={"health": "ok", "limit": 100}).json()
    assert ok["total"] > 0 and all(r["health"] == "ok" and not r["flags"] for r in ok["items"])

    lab = c.get("/api/stores/tiny/features", params={"label": "OCEAN"}).json()
    assert [r["latent"] for r in lab["items"]] == [i for i, t in ws.labels.items() if "ocean" in t]
    labelled = c.get("/api/stores/tiny/features", params={"labelled": "true", "limit": 100}).json()
    assert sorted(r["latent"] for r in labelled["items"]) == sorted(ws.labels)
    assert all(r["score"] is not None for r in labelled["items"])

    scored = c.get("/api/stores/tiny/features", params={"min_score": 0.75, "sort": "score", "limit": 100}).json()
    scores = [r["score"] for r in scored["items"]]
    assert scores and min(scores) >= 0.75 and scores == sorted(scores, reverse=True)

    lvl = c.get("/api/stores/tiny/features", params={"level": 0, "limit": 100}).json()
    assert lvl["total"] == ws.d_sae // 4 and all(r["level"] == 0 for r in lvl["items"])

    band = c.get("/api/stores/tiny/features", params={"min_freq": 0.01, "max_freq": 0.1, "limit": 100}).json()
    assert band["total"] > 0 and all(0.01 <= r["frequency"] <= 0.1 for r in band["items"])
    # empty values (as HTML forms send them) mean "no filter"
    assert c.get("/api/stores/tiny/features", params={"min_freq": "", "health": "", "level": ""}).json()["total"] == ws.d_sae


def test_feature_detail(c, ws):
    i = next(iter(ws.labels))
    r = c.get(f"/api/stores/tiny/features/{i}")
    assert r.status_code == 200
    f = r.json()
    assert f["summary"]["latent"] == i and f["summary"]["label"] == ws.labels[i]
    listed = c.get("/api/stores/tiny/features", params={"offset": i, "limit": 1}).json()["items"][0]
    assert listed["latent"] == i and f["summary"] == listed  # the page's header is the list's row
    assert f["summary"]["score"] == next(s["value"] for s in f["scores"] if s["method"] == "detection")
    assert f["label"]["text"] == ws.labels[i] and f["label"]["judge_model"] == "test-judge"
    assert {s["method"] for s in f["scores"]} == {"detection", "fuzzing"}
    h = f["histogram"]
    assert len(h["edges"]) == len(h["counts"]) + 1 and sum(h["counts"]) == f["stats"]["n_fires"]
    ex = f["top_examples"][0]
    assert len(ex["tokens"]) == len(ex["acts"]) == len(ex["shade"])
    assert max(ex["shade"]) >= 1 and all(0 <= s <= 10 for s in ex["shade"])
    assert f["logit_effects"]["positive"] and f["logit_effects"]["negative"]
    assert f["decoder_neighbours"] and all(0 <= n["latent"] < ws.d_sae for n in f["decoder_neighbours"])
    acts = [a for e in f["top_examples"] for a in e["acts"]]
    assert max(acts) == pytest.approx(f["summary"]["max_act"], rel=1e-5)


def test_matryoshka_parent_and_children(c, ws):
    rows = c.get("/api/stores/tiny/features", params={"limit": 100}).json()["items"]
    child = next(r for r in rows if r["parent"] is not None)
    f = c.get(f"/api/stores/tiny/features/{child['latent']}").json()
    assert f["parent"]["latent"] == child["parent"]
    parent = c.get(f"/api/stores/tiny/features/{child['parent']}").json()
    assert child["latent"] in [k["latent"] for k in parent["children"]]


def test_search(c, ws):
    r = c.get("/api/stores/tiny/search", params={"q": "ocean"})
    assert r.status_code == 200
    page = r.json()
    ocean = [i for i, t in ws.labels.items() if "ocean" in t]
    assert [h["latent"] for h in page["items"]][:1] == ocean
    top = page["items"][0]
    assert {"text": "ocean", "match": True} in top["snippet_parts"]
    assert "".join(p["text"] for p in top["snippet_parts"]) == top["snippet"]
    # pages of one hit each
    multi = c.get("/api/stores/tiny/search", params={"q": "words", "limit": 1}).json()
    assert multi["total"] >= 2 and len(multi["items"]) == 1 and multi["next_offset"] == 1
    second = c.get("/api/stores/tiny/search", params={"q": "words", "limit": 1, "offset": 1}).json()
    assert second["items"][0]["latent"] != multi["items"][0]["latent"]
    assert c.get("/api/stores/tiny/search", params={"q": "zebra"}).json() == {
        "items": [], "total": 0, "offset": 0, "limit": 20, "next_offset": None, "total_exact": True}
    # FTS syntax in the query is just text
    assert c.get("/api/stores/tiny/search", params={"q": 'ocean" OR * NEAR('}).status_code == 200


def test_openapi_describes_every_api_route(c):
    spec = c.get("/openapi.json").json()
    paths = set(spec["paths"])
    for p in ("/api/status", "/api/stores", "/api/stores/{sid}", "/api/stores/{sid}/features",
              "/api/stores/{sid}/features/{latent}", "/api/stores/{sid}/search", "/api/stores/{sid}/fire",
              "/api/stores/{sid}/steer", "/api/stores/{sid}/sweep"):
        assert p in paths, p
    assert not any(p.startswith("/s/") or p.startswith("/static") for p in paths)  # pages stay out
    steer = spec["components"]["schemas"]["SteerRequest"]
    assert steer["properties"]["edits"]["maxItems"] >= 1
    assert c.get("/docs").status_code == 404  # Swagger UI would need a CDN


# -- model work -------------------------------------------------------------------------------------


def test_steer_returns_default_and_steered(c, ws):
    body = {"prompt": "the sailor", "max_new_tokens": 8, "edits": [{"latent": 3, "op": "add", "value": 6, "unit": "max_act"}]}
    r = c.post("/api/stores/tiny/steer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["prompt"] == "the sailor" and out["default"] and out["steered"]
    assert out["default"] != out["steered"]
    again = c.post("/api/stores/tiny/steer", json=body).json()
    assert again == out  # greedy and seeded: deterministic
    ablate = c.post("/api/stores/tiny/steer", json={**body, "edits": [{"latent": 5, "op": "ablate", "unit": "raw"}]})
    assert ablate.status_code == 200


def test_steer_without_model_is_409(c):
    r = c.post("/api/stores/nomodel/steer", json={"prompt": "a", "edits": [{"latent": 1, "op": "add", "value": 1}]})
    assert r.status_code == 409 and "--model" in _detail(r)


BAD_STEER = [
    ({"edits": []}, "edits"),
    ({"edits": [{"latent": 1, "op": "add", "value": 1}] * 9}, "edits"),
    ({"edits": [{"latent": 48, "op": "add", "value": 1}]}, "latent"),
    ({"edits": [{"latent": -1, "op": "add", "value": 1}]}, "latent"),
    ({"edits": [{"latent": 1, "op": "boost", "value": 1}]}, "op"),
    ({"edits": [{"latent": 1, "op": "add", "value": 21, "unit": "max_act"}]}, "limit"),
    ({"edits": [{"latent": 1, "op": "add", "value": 1001, "unit": "raw"}]}, "limit"),
    ({"edits": [{"latent": 1, "op": "scale", "value": 2, "unit": "max_act"}]}, "raw"),
    ({"edits": [{"latent": 1, "op": "add", "value": "x"}]}, "value"),
    ({"edits": [{"latent": 1, "op": "add", "value": 1, "colour": "red"}]}, "colour"),
    ({"max_new_tokens": 65}, "max_new_tokens"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x" * 2001}, "prompt"),
    ({"temperature": -1}, "temperature"),
    ({"seed": -3}, "seed"),
]


@pytest.mark.parametrize("change,word", BAD_STEER)
def test_steer_rejects_bad_input(c, change, word):
    body = {"prompt": "the sailor", "max_new_tokens": 4, "edits": [{"latent": 1, "op": "add", "value": 1}]}
    body.update(change)
    r = c.post("/api/stores/tiny/steer", json=body)
    assert r.status_code == 422, r.text
    assert word in _detail(r)


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_steer_rejects_non_finite_strengths(c, raw):
    text = '{"prompt": "a", "edits": [{"latent": 1, "op": "clamp", "value": %s}]}' % raw
    r = c.post("/api/stores/tiny/steer", content=text, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "finite" in _detail(r)


def test_prompt_beyond_model_context_is_422(c):
    long_prompt = " ".join(["the sea"] * 40)  # 80 tokens > n_ctx 64
    r = c.post("/api/stores/tiny/steer", json={"prompt": long_prompt, "max_new_tokens": 8,
                                              "edits": [{"latent": 1, "op": "add", "value": 1}]})
    assert r.status_code == 422 and "context" in _detail(r)


def test_malformed_bodies(c):
    for content in ("", "{", "[]", '"x"', "null", '{"prompt": "a", "edits": {}}'):
        r = c.post("/api/stores/tiny/steer", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 422, (content, r.text)
        _detail(r)


def test_fire_lists_features_per_token(c, ws):
    r = c.post("/api/stores/tiny/fire", json={"text": "the sailor sees the whale at the harbor .", "top_k": 3})
    assert r.status_code == 200, r.text
    out = r.json()
    # BOS left out; the pieces join to the decoded text (the first keeps the space after BOS)
    assert "".join(out["tokens"]) == " the sailor sees the whale at the harbor ."
    assert [t.strip() for t in out["tokens"]] == "the sailor sees the whale at the harbor .".split()
    assert len(out["per_token"]) == len(out["tokens"]) == len(out["token_shade"])
    assert all(len(p) <= 3 for p in out["per_token"])
    assert out["features"], "some latent fires on an ordinary sentence"
    maxes = [f["max_act"] for f in out["features"]]
    assert maxes == sorted(maxes, reverse=True)
    for f in out["features"]:
        assert len(f["acts"]) == len(out["tokens"]) and f["count"] == sum(a > 0 for a in f["acts"])
        assert max(f["acts"]) == pytest.approx(f["max_act"])
    labelled = {f["latent"]: f["label"] for f in out["features"] if f["label"]}
    assert all(ws.labels[i] == t for i, t in labelled.items())
    # the per-token lists agree with the per-feature activations
    byid = {f["latent"]: f["acts"] for f in out["features"]}
    for t, feats in enumerate(out["per_token"]):
        for a in feats:
            if a["latent"] in byid:
                assert byid[a["latent"]][t] == pytest.approx(a["act"])


def test_fire_bad_input(c):
    assert c.post("/api/stores/tiny/fire", json={"text": ""}).status_code == 422
    assert c.post("/api/stores/tiny/fire", json={"text": "a" * 2001}).status_code == 422
    assert c.post("/api/stores/tiny/fire", json={"text": "a", "top_k": 0}).status_code == 422
    r = c.post("/api/stores/tiny/fire", json={"text": " ".join(["sea"] * 80)})
    assert r.status_code == 422 and "context" in _detail(r)
    assert c.post("/api/stores/nomodel/fire", json={"text": "the sea"}).status_code == 409


def test_sweep_gives_a_curve(c, ws):
    body = {"prompt": "the sailor", "max_new_tokens": 6, "edit": {"latent": 3, "op": "add", "unit": "max_act"},
            "values": [0, 4, 8]}
    r = c.post("/api/stores/tiny/sweep", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert [p["value"] for p in out["points"]] == [0, 4, 8]
    for p in out["points"]:
        assert 0 <= p["concept"] <= 1 and 0 <= p["fluency"] <= 1 and p["perplexity"] > 0 and p["text"]
    assert out["recommended"] in (4, 8, None) and "fires" in out["concept"]  # never 0, the unsteered text
    assert out["verdict"] and "repetition" in out["fluency"]
    plain = c.post("/api/stores/tiny/steer", json={"prompt": "the sailor", "max_new_tokens": 6,
                                                   "edits": [{"latent": 3, "op": "add", "value": 8}]}).json()
    assert out["points"][2]["text"] == plain["steered"]  # same seed and settings as the playground
    assert out["points"][0]["text"] == plain["default"]  # adding 0 changes nothing


def test_sweep_fluency_is_the_shared_measure(c, ws, monkeypatch):
    """The web sweep's fluency is steering.fluency (the old distinct-word share scored "(______" 1.0)."""
    import steering.fluency as fluency
    from saesteer.web.model_source import FiringScorer

    assert FiringScorer(ws.model, ws.sae, 3)(["p"], ["(______"])[0].fluency is None  # left to the sweep
    seen = []

    def fake(model, generation):
        seen.append(len(generation.texts))
        return [fluency.FluencyScore(0.25, 1.0, 1.0, 0.25, 0.0, 0.1, 1.0, 1) for _ in generation.texts]

    monkeypatch.setattr(fluency, "fluency_of_generation", fake)
    body = {"prompt": "the sailor", "max_new_tokens": 4, "edit": {"latent": 3, "op": "add", "unit": "max_act"},
            "values": [0, 4]}
    out = c.post("/api/stores/tiny/sweep", json=body).json()
    assert [p["fluency"] for p in out["points"]] == [0.25, 0.25] and seen == [1, 1]


@pytest.mark.parametrize("change,word", [
    ({"values": []}, "values"),
    ({"values": list(range(10))}, "values"),
    ({"values": [0, 25]}, "limit"),
    ({"values": [0, float("nan")]}, "finite"),
    ({"edit": {"latent": 3, "op": "ablate"}}, "add or clamp"),
    ({"edit": {"latent": 3, "op": "scale", "unit": "raw"}}, "add or clamp"),
    ({"edit": {"latent": 99, "op": "add"}}, "latent"),
    ({"max_new_tokens": 100}, "max_new_tokens"),
])
def test_sweep_bad_input(c, change, word):
    body = {"prompt": "the sailor", "max_new_tokens": 4, "edit": {"latent": 3, "op": "add"}, "values": [0, 1]}
    body.update(change)
    r = c.post("/api/stores/tiny/sweep", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert word in _detail(r)


# -- bad reads ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url,status",
    [
        ("/api/stores/nope", 404),
        ("/api/stores/Tiny", 422),
        ("/api/stores/..%2F..%2Fetc", 404),
        ("/api/stores/tiny/features/48", 404),
        ("/api/stores/tiny/features/-1", 422),
        ("/api/stores/tiny/features/abc", 422),
        ("/api/stores/tiny/features/99999999999999999999", 422),
        ("/api/stores/tiny/features?limit=101", 422),
        ("/api/stores/tiny/features?limit=0", 422),
        ("/api/stores/tiny/features?offset=-5", 422),
        ("/api/stores/tiny/features?sort=drop+table", 422),
        ("/api/stores/tiny/features?health=sick", 422),
        ("/api/stores/tiny/features?min_freq=2", 422),
        ("/api/stores/tiny/features?min_freq=nan", 422),
        ("/api/stores/tiny/features?min_score=inf", 422),
        ("/api/stores/tiny/features?min_freq=0.5&max_freq=0.1", 422),
        ("/api/stores/tiny/features?level=x", 422),
        ("/api/stores/tiny/features?label=" + "a" * 201, 422),
        ("/api/stores/tiny/search", 422),
        ("/api/stores/tiny/search?q=", 422),
        ("/api/stores/tiny/search?q=%20%20", 422),
        ("/api/stores/tiny/search?q=" + "a" * 201, 422),
        ("/api/stores/tiny/search?q=a&limit=500", 422),
        ("/api/nothing", 404),
    ],
)
def test_bad_reads_are_4xx_with_message(c, url, status):
    r = c.get(url)
    assert r.status_code == status, r.text
    _detail(r)


def test_a_latent_not_in_the_store_is_named_a_latent(c):
    r = c.get("/api/stores/tiny/features/48")
    assert r.status_code == 404 and "latent 48 is not in store" in _detail(r) and "0..47" in _detail(r)


def test_wrong_method_is_405(c):
    assert c.get("/api/stores/tiny/steer").status_code == 405
    assert c.delete("/api/stores/tiny/features/1").status_code == 405


def test_every_api_response_is_json_with_no_store(c):
    for url in ("/api/status", "/api/stores/tiny/features?limit=2", "/api/stores/nope"):
        r = c.get(url)
        assert r.headers["content-type"].startswith("application/json")
        assert r.headers["cache-control"] == "no-store"
        json.loads(r.text)


# -- never a 500 --------------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_value = st.one_of(_text, st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True).map(str), st.just(""))
_LIST_KEYS = ["sort", "desc", "label", "min_score", "min_freq", "max_freq", "health", "level", "labelled", "offset", "limit", "q"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.dictionaries(st.sampled_from(_LIST_KEYS), _value, max_size=5),
       url=st.sampled_from(["/api/stores/tiny/features", "/api/stores/tiny/search", "/s/tiny", "/s/tiny/search"]))
def test_random_query_parameters_never_500(c, params, url):
    r = c.get(url, params=params, headers={"accept": "text/html"})
    assert r.status_code < 500, (url, params, r.text[:300])


_json = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.integers(-99, 99) | _text,
                     lambda children: st.lists(children, max_size=3) | st.dictionaries(_text, children, max_size=3),
                     max_leaves=8)
_edit = st.fixed_dictionaries({"latent": st.integers(-2, 60), "op": st.sampled_from(["add", "clamp", "scale", "ablate", "x"]),
                               "value": st.one_of(st.floats(-50, 50), st.integers(-2000, 2000)),
                               "unit": st.sampled_from(["raw", "max_act", "max"])})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(
    _json,
    st.fixed_dictionaries({"prompt": _text, "max_new_tokens": st.integers(-1, 3), "edits": st.lists(_edit, max_size=3)}),
    st.fixed_dictionaries({"prompt": _text, "max_new_tokens": st.integers(-1, 3), "edit": _edit,
                           "values": st.lists(st.floats(-30, 30), max_size=3)}),
    st.fixed_dictionaries({"text": _text, "top_k": st.integers(-1, 60)}),
), endpoint=st.sampled_from(["steer", "sweep", "fire"]))
def test_random_bodies_never_500(c, body, endpoint):
    r = c.post(f"/api/stores/tiny/{endpoint}", json=body)
    assert r.status_code < 500, (endpoint, body, r.text[:300])


@pytest.mark.parametrize("q", ["\u00b9", "#\u00b2", "\u0663"])
def test_a_search_for_a_digit_int_refuses_is_a_page_not_a_500(c, q):
    """str.isdigit accepts superscripts and other scripts' digits; int() does not take them all."""
    r = c.get("/s/tiny/search", params={"q": q}, headers={"accept": "text/html"})
    assert r.status_code == 200, r.text[:300]


def test_a_store_labelled_and_scored_after_start_shows_its_scores_without_a_restart(ws, tmp_path):
    """`saesteer label` writing into a served store: has_labels and the score method (only fuzzing
    scores here) are read per request, by a row each, not the whole store summary; the score method
    was fixed at start ('detection' for a store with no scores), so the score column stayed empty."""
    import shutil
    import sqlite3

    from features import FeatureStore, LabelProvenance
    from saesteer.web import Limits, ServeConfig, StoreEntry, create_app
    from saesteer.web.store_source import StoreCatalog

    path = tmp_path / "unlabelled.db"
    shutil.copy(ws.path, path)
    with sqlite3.connect(path) as db:  # the store as `features build` leaves it: no labels, no scores
        db.execute("DELETE FROM scores")
        db.execute("DELETE FROM labels")
    catalog = StoreCatalog(FeatureStore.open(path), name="fresh")
    app = create_app([StoreEntry("fresh", catalog)], config=ServeConfig(port=8000), limits=Limits())
    statements: list[str] = []
    catalog.store._conn.set_trace_callback(statements.append)  # what one request asks the store
    with client(app) as c:
        before = c.get("/api/stores/fresh").json()
        assert before["has_labels"] is False and before["score_method"] == "detection"
        asked = [s for s in statements if s.startswith("SELECT")]
        assert len(asked) <= 3 and "COUNT" not in " ".join(asked), asked  # labels, then each score method
        latent = next(iter(ws.labels))
        with FeatureStore.open(path, readonly=False) as writer:  # another connection, as another process
            prov = LabelProvenance(judge_model="judge", judge_kind="human", prompt_version="t")
            lid = writer.write_label(latent, "waves and tides", provenance=prov)
            writer.write_scores(latent, {"fuzzing": 0.75}, provenance=prov, label_id=lid)
        after = c.get("/api/stores/fresh").json()
        assert after["has_labels"] is True and after["score_method"] == "fuzzing", after
        page = c.get("/api/stores/fresh/features", params={"sort": "score", "desc": "true", "limit": 1}).json()
        assert [(f["latent"], f["score"]) for f in page["items"]] == [(latent, 0.75)], page
        assert "fuzzing ≥" in c.get("/s/fresh").text
