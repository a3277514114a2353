"""The researcher of tests/test_user_paths18.py (an SAE per layer of the tiny GPT-2, a feature store
each) steering with a latent of layer 0 and one of layer 1 at once:

- in the web playground (`saesteer serve --store l0.db --store l1.db`), each edit row naming its
  store: the page sends the request any /v1 client would (the other store's edit as `"sae": ID`), so
  the browser's text is the JSON endpoint's, whose tokens and log-probabilities are those of
  TransformerLens hooks doing both edits by hand. Before, the playground steered with the page's
  store's SAE only;
- with `saesteer steer --sae l0=... --sae l1=... --store l0.db --store l1.db`, 'x' strengths read
  from each SAE's own store (each store goes with the SAE it was built for). Before, a second
  --store silently replaced the first, and a store beside several SAEs was refused.
"""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
import torch

from helpers.real_cli import captured_serve, saesteer
from saes.fingerprint import sae_fingerprint
from helpers.api_server import openai_client
from helpers.web_app import ServerThread
from test_user_paths18 import (RESID, _cache_and_train, _copy, _greedy_ids, _logprobs_by_hand, _manual_edit, _sae,
                               _two_layers_firing)
from helpers.browser import DESKTOP, Page, browser  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]


@pytest.fixture(scope="module")
def layers(real_models, real_corpus, tmp_path_factory):
    """An SAE per residual layer of the tiny GPT-2 from one cache, and each one's feature store."""
    run = _cache_and_train(real_models, real_corpus, tmp_path_factory.mktemp("layers"), "gpt2", RESID)
    run.stores = {}
    for hook, sae in run.saes.items():
        run.stores[hook] = run.work / f"l{hook.split('.')[1]}.db"
        saesteer("features", "build", "--sae", sae, "--cache", run.cache, "--out", run.stores[hook], "--no-progress").ok()
    return run


@pytest.mark.browser
def test_the_playground_steers_with_a_latent_of_each_layer_in_one_generation(layers, browser, monkeypatch):  # noqa: F811
    r, client = captured_serve(monkeypatch, "--store", layers.stores[RESID[0]], "--store", layers.stores[RESID[1]])
    assert client is not None, r.text
    ids = {m["saesteer"]["sae_hook"]: m["id"] for m in client.get("/v1/models").json()["data"]}
    model, a, b, prompt, tokens, la, lb = _two_layers_firing(layers)

    srv = ServerThread(client.app, client.base_url.port).start()
    p = Page(browser, srv.url, DESKTOP)
    sent = []
    p.page.on("request", lambda q: sent.append(q.post_data_json) if q.url.endswith("/v1/completions") else None)
    try:
        page = p.goto(f"/s/{ids[RESID[0]]}/steer?latent={la}")
        pick = page.locator("#edits .fstore")
        assert pick.count() == 1 and pick.first.input_value() == ids[RESID[0]]  # a row of the page's store
        options = pick.first.locator("option").all_inner_texts()
        assert len(options) == 2 and RESID[0] in options[0] and RESID[1] in options[1], options
        page.locator("#edits .fstrength").first.fill("10")
        page.locator("#edits .funit").first.select_option("raw")
        page.locator("#add-edit").click()
        page.locator("#edits .fstore").nth(1).select_option(ids[RESID[1]])
        page.locator("#edits .fidx").nth(1).fill(str(b.cfg.d_sae))  # one past layer 1's latents: refused here
        page.locator("#generate").click()
        assert f"is not in store" in page.locator("#status").inner_text()
        page.locator("#edits .fidx").nth(1).fill(str(lb))
        page.locator("#edits .fmode").nth(1).select_option("clamp")
        page.locator("#edits .fstrength").nth(1).fill("-8")
        page.locator("#edits .funit").nth(1).select_option("raw")
        page.locator("#prompt").fill(prompt)
        page.locator("#max-new").fill("6")
        page.locator("#generate").click()
        page.wait_for_selector("#compare:not([hidden]), #status.error")
        assert page.locator("#compare").is_visible(), page.locator("#status").inner_text()
        shown = page.locator("#out-steered").inner_text()
        described = page.locator("#out-edits").inner_text()
        # the sweep varies the first row's edit on the store whose SAE it edits: layer 1's, once
        # layer 0's row is gone (it went to the page's store, whose latent lb is another one)
        page.locator("#edits .rm button").first.click()
        page.locator("#sweep-from").fill("-8")
        page.locator("#sweep-to").fill("0")
        page.locator("#sweep-n").fill("2")
        with page.expect_request(lambda q: q.url.endswith("/sweep")) as swept:
            page.locator("#sweep-run").click()
        page.wait_for_selector("#sweep-out:not([hidden]), #sweep-status.error")
        assert page.locator("#sweep-rows tr").count() == 2, page.locator("#sweep-status").inner_text()
        assert swept.value.url == f"{srv.url}/api/stores/{ids[RESID[1]]}/sweep"
        assert swept.value.post_data_json["edit"] == {"latent": lb, "op": "clamp", "value": -8, "unit": "raw"}
        p.check_clean()
        steered = [body for body in sent if "steering" in body]
        assert len(steered) == 1 and steered[0]["model"] == ids[RESID[0]], sent
        edits = steered[0]["steering"]["edits"]
        assert edits[1]["sae"] == ids[RESID[1]] and "sae" not in edits[0], edits
        # the JSON endpoint given the page's request through the openai client: the same text
        api = openai_client(srv)
        request = {k: v for k, v in steered[0].items() if k != "steering"}
        got = api.completions.create(**request, extra_body={"steering": steered[0]["steering"]}).choices[0]
        with_logprobs = api.completions.create(**request, logprobs=1,
                                               extra_body={"steering": steered[0]["steering"]}).choices[0]
    finally:
        p.close()
        srv.stop()

    assert f"{ids[RESID[1]]}/{lb}:clamp" in described, described
    assert got.text == shown
    # its tokens and their log-probabilities: those of hooks doing both edits by hand, at their own layers
    hooks = [(RESID[0], _manual_edit(a, la, 0.0, 10.0)), (RESID[1], _manual_edit(b, lb, -1.0, -8.0))]
    token_ids = got.model_extra["steering"]["token_ids"]
    assert token_ids == _greedy_ids(model, tokens, hooks, 6)
    logprobs = with_logprobs.logprobs.token_logprobs
    torch.testing.assert_close(logprobs, _logprobs_by_hand(model, tokens, hooks, token_ids), rtol=1e-3, atol=1e-3)
    for one in hooks:  # each layer's edit mattered
        alone = _logprobs_by_hand(model, tokens, [one], token_ids)
        assert max(abs(x - y) for x, y in zip(logprobs, alone)) > 1e-3, one[0]


def _typical_max(store, latent: int) -> float:
    with sqlite3.connect(store) as db:
        return db.execute("select typical_max_act from features where latent = ?", (latent,)).fetchone()[0]


def test_steer_reads_each_saes_x_strengths_from_its_own_store(layers):
    """Greedy text of `steer` with two SAEs and their stores (given in the other order: each goes with
    the SAE it was built for) = hooks by hand doing both edits at each latent's typical max times x."""
    model, a, b, prompt, tokens, la, lb = _two_layers_firing(layers)
    r = saesteer("steer", "--sae", f"l0={layers.saes[RESID[0]]}", "--sae", f"l1={layers.saes[RESID[1]]}",
                 "--store", layers.stores[RESID[1]], "--store", layers.stores[RESID[0]],
                 "-l", f"l0/{la}:add=10x", "-l", f"l1/{lb}:clamp=-40x", "-p", prompt, "--max-new-tokens", 6,
                 "--do-sample", "false", "--json", "--no-progress").ok()
    steered = json.loads(r.out)["results"][0]["steered"]
    ta, tb = _typical_max(layers.stores[RESID[0]], la), _typical_max(layers.stores[RESID[1]], lb)
    assert ta != pytest.approx(tb, rel=0.05)  # read from the wrong store, the strengths would differ
    hooks = [(RESID[0], _manual_edit(a, la, 0.0, 10 * ta)), (RESID[1], _manual_edit(b, lb, -1.0, -40 * tb))]
    assert steered == model.tokenizer.decode(_greedy_ids(model, tokens, hooks, 6))
    for one in hooks:  # each SAE's edit mattered
        assert steered != model.tokenizer.decode(_greedy_ids(model, tokens, [one], 6)), one[0]


def test_steer_refuses_stores_that_pair_with_no_sae_or_twice_before_the_model_loads(layers, monkeypatch, tmp_path):
    from saesteer.commands import _steering

    monkeypatch.setattr(_steering, "load_model", lambda *a, **kw: pytest.fail("the model loaded before the refusal"))
    l0, l1 = layers.stores[RESID[0]], layers.stores[RESID[1]]
    saes = ("--sae", f"l0={layers.saes[RESID[0]]}", "--sae", f"l1={layers.saes[RESID[1]]}")
    edits = ("-l", "l0/3:add=2x", "-l", "l1/5:add=2x", "-p", "def f")
    r = saesteer("steer", "--sae", f"a={layers.saes[RESID[0]]}", "--sae", f"b={layers.saes[RESID[0]]}",
                 "--store", l1, "-l", "a/3:add=4", "-p", "def f").no_traceback()
    assert r.rc == 2 and f"the store {l1} was built for none of the SAEs given" in r.err, r.text
    # both sides by weights: the folder a store records may be one given, retrained since
    fp0, fp1 = (sae_fingerprint(_sae(layers.saes[h]))[:12] for h in RESID)
    assert f"has weights fingerprint {fp1}; the SAEs given: 'a' {fp0}, 'b' {fp0}" in r.err, r.text
    assert len(r.err.strip().splitlines()) == 1, r.err
    # an SAE of the store's weights used at another hook: the hook is why
    moved = tmp_path / "moved"
    shutil.copytree(layers.saes[RESID[0]], moved)
    for name in ("cfg.json", "saesteer.json"):  # the hook both record
        (moved / name).write_text((moved / name).read_text().replace(RESID[0], RESID[1]))
    r = saesteer("steer", "--sae", f"a={moved}", "--sae", f"b={layers.saes[RESID[1]]}", "--store", l0,
                 "-l", "a/3:add=4", "-p", "def f").no_traceback()
    assert r.rc == 2 and f"SAE 'a' has its weights, but {l0} was built at hook point {RESID[0]}" in r.err, r.text
    copy = _copy(l0, tmp_path / "again.db")
    r = saesteer("steer", *saes, "--store", l0, "--store", copy, *edits).no_traceback()
    assert r.rc == 2 and f"--store {l0} and --store {copy} were both built for SAE 'l0'" in r.err, r.text
    r = saesteer("steer", *saes, "--store", l0, "--store", l0, *edits).no_traceback()
    assert r.rc == 2 and f"--store {l0} is given twice" in r.err, r.text
    r = saesteer("steer", *saes, "--store", l0, "--store", l1, "--store", copy, *edits).no_traceback()
    assert r.rc == 2 and "3 --store for 2 --sae" in r.err, r.text
    r = saesteer("steer", *saes, "--store", l0, "--store", l1, "--preset", "calm", "-p", "def f").no_traceback()
    assert r.rc == 2 and "--preset belongs to one SAE; give a single --sae" in r.err, r.text


def test_stores_beside_several_saes_hash_each_sae_once(layers, monkeypatch):
    """Pairing --store with --sae reads each SAE's weights once (a real SAE's hash reads every weight),
    not once more per store that check_sae then checks."""
    import features.fingerprint
    import saes.fingerprint
    from saesteer.commands import _steering

    hashed = []

    def counting(sae):
        hashed.append(sae)
        return sae_fingerprint(sae)

    monkeypatch.setattr(saes.fingerprint, "sae_fingerprint", counting)
    monkeypatch.setattr(features.fingerprint, "sae_fingerprint", counting)
    saes = {"l0": _sae(layers.saes[RESID[0]]), "l1": _sae(layers.saes[RESID[1]])}
    stores, links = _steering.open_stores([str(layers.stores[h]) for h in RESID], saes)
    for store in stores:
        store.close()
    assert set(links) == {"l0", "l1"}
    assert len(hashed) == 2, f"{len(hashed)} hashes of 2 SAEs"


@pytest.mark.parametrize("command", [("sweep", "--sae", "a", "-l", "3"), ("steer-eval", "--sae", "a", "-l", "3"),
                                     ("label",), ("output-score", "--sae", "a"), ("preset", "save", "calm", "-l", "3")])
def test_a_second_store_of_a_one_store_command_is_refused(command):
    """`sweep`, `steer-eval`, `label`, `output-score` and `preset` read one store: a second --store was
    taken in place of the first, silently (argparse keeps the last: `label --store l0.db --store l1.db`
    labelled l1 alone)."""
    r = saesteer(*command, "--store", "l0.db", "--store", "l1.db").no_traceback()
    prog = " ".join(command[:2] if command[0] == "preset" else command[:1])
    assert r.rc == 2 and f"saesteer {prog}: --store given twice: this command reads one store" in r.err, r.text
