"""An eighteenth user path: the researcher who studies every layer (as sparsify users train all
layers from one forward pass, and Neuronpedia hosts an SAE per layer), through the CLI as the docs
say, on the tiny GPT-2 and NeoX checkpoints of tests/helpers/real_models.py (byte-level BPE, code and
prose):

- one `saesteer cache` run stores several hooks (resid_post of every layer, an MLP output and an
  attention hook_z); `train --hook H` trains one SAE per hook from that one cache, and each SAE
  records its own hook: `features build`, `steer` and `eval` with another --hook are refused naming
  both; `features build` without --hook reads the SAE's own hook's rows (the store's maxima are the
  SAE's encode of exactly those rows); `eval` splices each SAE at its own hook, one at a time;
- `steer --sae L1 --store L0.db` (a store of another layer's SAE, no --hook) was refused as "trained
  on blocks.1..., not blocks.0...; drop --hook", a flag the user never gave: the store's hook now
  only fills in for SAEs that record none, and the refusal names the store;
- a hook_z store's logit effects read the z-space decoder rows as residual directions (hook_z's
  width n_heads x d_head is d_model here, as in GPT-2 small, so nothing refused it): a silent wrong
  result; they now go through the layer's W_O;
- several SAEs steer at once at different layers (`steer --sae a=... --sae b=... -l a/N -l b/M`, the
  Python API, the batched engine the API server runs): the edits land at their own hooks in the
  model's order, so a later SAE reads the residual the earlier edit steered - the logits equal
  TransformerLens hooks doing the same edits by hand;
- two SAEs at one hook: each reads the activation as the model produced it (before any edit at that
  hook) and their changes add up, in `steer` and in the engine alike, whatever the edits' order
  (docs/api.md and docs/training-real-models.md say so);
- a feature store per layer in the web app: `serve --store l0.db --store l1.db` serves them side by
  side, the start page and /v1/models naming each one's hook; one API request to one store's model
  may now edit the SAE of another store over the same transformer (`"sae": ID` in an edit, or
  "ID/LATENT:..."), checked with the openai client against hooks by hand (before, one SAE per request);
  a Neuronpedia latent of an SAE two served stores share stays the request's store's (it went to the
  store listed first, its strength read with that store's typical max).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers.api_server import openai_client
from helpers.real_cli import captured_serve, saesteer

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

RESID = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
MLP_OUT = "blocks.0.hook_mlp_out"
ATTN_Z = "blocks.1.attn.hook_z"
HOOKS = (*RESID, MLP_OUT, ATTN_Z)
PROMPTS = ["def parse(self, args=None):\n    return self._parse(args)", "Le caf\u00e9 de la gare ouvre \u00e0 sept heures."]


def _cache_and_train(real_models, real_corpus, work: Path, family: str, hooks) -> SimpleNamespace:
    """One cache of `hooks` from the corpus, then one `train --hook` per hook (no model evaluation:
    eval is its own test)."""
    model_dir = real_models.path(family)
    cache = work / f"cache-{family}"
    saesteer("cache", "--model", model_dir, "--dataset", real_corpus.jsonl_dir, "--context-length", 48,
             "--max-tokens", 4096, "--hooks", ",".join(hooks), "--out", cache, "--no-progress").ok()
    saes = {}
    for hook in hooks:
        out = work / f"run-{family}-{hook}"
        saesteer("train", "--cache", cache, "--hook", hook, "--d-sae", 128, "--k", 4, "--total-tokens", 2048,
                 "--batch-size", 256, "--holdout-tokens", 512, "--model-eval", "false", "--sae-name", "sae",
                 "--out", out, "--no-progress").ok()
        saes[hook] = out / "saes" / "sae"
    return SimpleNamespace(model_dir=model_dir, cache=cache, saes=saes, work=work)


@pytest.fixture(scope="module")
def gpt2(real_models, real_corpus, tmp_path_factory):
    return _cache_and_train(real_models, real_corpus, tmp_path_factory.mktemp("allayers-gpt2"), "gpt2", HOOKS)


@pytest.fixture(scope="module")
def neox(real_models, real_corpus, tmp_path_factory):
    return _cache_and_train(real_models, real_corpus, tmp_path_factory.mktemp("allayers-neox"), "neox", RESID)


@pytest.fixture(scope="module")
def stores(gpt2):
    """`features build` per SAE, without --hook: each reads its own hook of the shared cache."""
    out = {}
    for hook, sae in gpt2.saes.items():
        out[hook] = gpt2.work / f"{hook}.db"
        saesteer("features", "build", "--sae", sae, "--cache", gpt2.cache, "--out", out[hook], "--no-progress").ok()
    return out


def _model(path):
    from saesteer.models import load_model

    return load_model(str(path))


def _sae(path):
    import saes

    return saes.load_sae(str(path)).eval()


# ------------------------------------------------------------------------------ one cache, an SAE per hook
def test_one_cache_run_trains_an_sae_per_hook_each_recording_its_own(gpt2):
    manifest = json.loads((gpt2.cache / "manifest.json").read_text())
    assert manifest["hooks"] == list(HOOKS)
    for hook, sae in gpt2.saes.items():
        cfg = json.loads((sae / "cfg.json").read_text())
        assert cfg["metadata"]["hook_name"] == hook
        assert json.loads((sae / "saesteer.json").read_text())["hook_name"] == hook
    assert json.loads((gpt2.saes[ATTN_Z] / "cfg.json").read_text())["reshape_activations"] == "hook_z"


def test_an_sae_is_refused_at_another_hook_naming_both(gpt2):
    sae = gpt2.saes[RESID[0]]
    for argv in (("features", "build", "--sae", sae, "--cache", gpt2.cache, "--hook", RESID[1],
                  "--out", gpt2.work / "wrong.db", "--no-progress"),
                 ("steer", "--sae", sae, "--hook", RESID[1], "-l", "3:add=4", "-p", "def f", "--max-new-tokens", 2),
                 ("eval", "--sae", sae, "--cache", gpt2.cache, "--hook", RESID[1], "--no-progress")):
        r = saesteer(*argv).no_traceback()
        assert r.rc != 0, argv
        assert RESID[0] in r.text and RESID[1] in r.text, r.text
    assert not (gpt2.work / "wrong.db").exists()


def test_a_store_of_another_layer_is_refused_as_the_stores_not_as_a_hook_flag(gpt2, stores):
    """`steer --sae LAYER1 --store LAYER0.db` (no --hook): refused as the wrong store, naming it. It was
    refused as "trained on blocks.1..., not blocks.0...; drop --hook", a flag the user never gave (the
    store's hook stood in for --hook)."""
    r = saesteer("steer", "--sae", gpt2.saes[RESID[1]], "--store", stores[RESID[0]], "-l", "3:add=2x", "-p", "def f",
                 "--max-new-tokens", 2).no_traceback()
    assert r.rc != 0
    assert "--hook" not in r.text and str(stores[RESID[0]]) in r.text and "not built for this SAE" in r.text, r.text


def test_each_store_holds_its_own_hooks_activations(gpt2, stores):
    """The store's per-latent maxima are the SAE's encode of the cache rows of its own hook, and of
    no other hook's rows (every hook of the cache has width 64: only the hook tells them apart)."""
    from training.manifest import read_manifest
    from training.shards import load_tensors

    man = read_manifest(gpt2.cache)
    shards = [load_tensors(gpt2.cache / s.file) for s in man.shards]
    for hook, path in stores.items():
        with sqlite3.connect(path) as db:
            recorded = json.loads(dict(db.execute("select key, value from meta"))["cache"])
            max_F = torch.zeros(128)
            for latent, m in db.execute("select latent, max_act from features"):
                max_F[latent] = m
        assert recorded["hook"] == hook
        sae = _sae(gpt2.saes[hook])
        with torch.no_grad():
            def maxima(h):
                return torch.stack([sae.encode(s[f"acts/{h}"].float()).amax(0) for s in shards]).amax(0)

            torch.testing.assert_close(max_F, maxima(hook), rtol=1e-3, atol=1e-3)
            for other in HOOKS:
                if other != hook:
                    assert not torch.allclose(max_F, maxima(other), rtol=1e-2, atol=1e-2), (hook, other)


def test_a_hook_z_stores_logit_effects_go_through_the_layers_w_o(gpt2, stores):
    """The promoted tokens of a hook_z latent: its decoder direction (heads flattened) through the
    layer's W_O, then the final norm and W_U. They were its z-space direction read as a residual one
    (hook_z's width n_heads x d_head is d_model here, as in GPT-2 small): a silent wrong result."""
    from features.analysis import logit_effects

    model = _model(gpt2.model_dir)
    z = _sae(gpt2.saes[ATTN_Z])
    W_O = model.blocks[1].attn.W_O.detach()  # [H, d_head, D]
    through_W_O = torch.einsum("fhd,hdD->fD", z.W_dec.detach().view(z.cfg.d_sae, *W_O.shape[:2]), W_O)
    for hook, directions in ((ATTN_Z, through_W_O), (MLP_OUT, _sae(gpt2.saes[MLP_OUT]).W_dec)):
        with sqlite3.connect(stores[hook]) as db:
            stored = db.execute("select latent, token_id from logit_effects where kind = 'promoted' and rank = 0 "
                                "order by latent").fetchall()
            method = json.loads(dict(db.execute("select key, value from meta"))["logit_method"])
        want = logit_effects(directions, model, 1).top_ids_Fn[:, 0]
        assert stored and all(want[f] == t for f, t in stored), hook
        assert ("W_O of layer 1" in method) == (hook == ATTN_Z)


def test_a_hook_z_latents_logit_effect_is_what_the_attention_output_writes(gpt2, stores):
    """Independent of our flatten: SAELens's own hook_z reshape turns a latent's decoder row into a z
    vector [n_heads, d_head]; written into TransformerLens's hook_z, it moves hook_attn_out by
    exactly the direction `features build` took (b_O cancels: it is no part of a latent's effect),
    and the store's top promoted token is that measured direction's through W_U."""
    from sae_lens import SAE as SAELensSAE

    from features.analysis import logit_effects, residual_directions

    model = _model(gpt2.model_dir)
    z = SAELensSAE.load_from_disk(str(gpt2.saes[ATTN_Z]), device="cpu")
    z.turn_on_forward_pass_hook_z_reshaping()
    d_head = model.cfg.d_head
    tokens = model.to_tokens(PROMPTS[:1], prepend_bos=True)
    latents = list(range(0, z.cfg.d_sae, 9))
    with torch.no_grad():
        _, base = model.run_with_cache(tokens, names_filter=["blocks.1.hook_attn_out"])
        written = []
        for f in latents:
            z_HE = z.reshape_fn_out(z.W_dec[f], d_head)  # SAELens's reshape back to [n_heads, d_head]
            with model.hooks(fwd_hooks=[(ATTN_Z, lambda x, hook, v=z_HE: x + v)]):
                _, cache = model.run_with_cache(tokens, names_filter=["blocks.1.hook_attn_out"])
            written.append((cache["blocks.1.hook_attn_out"] - base["blocks.1.hook_attn_out"])[0, 0])
        written_FD = torch.stack(written)
        mapped, _ = residual_directions(z.W_dec[latents], model, ATTN_Z)
    torch.testing.assert_close(mapped, written_FD, rtol=1e-4, atol=1e-5)
    with sqlite3.connect(stores[ATTN_Z]) as db:
        stored = dict(db.execute("select latent, token_id from logit_effects where kind = 'promoted' and rank = 0"))
    want = logit_effects(written_FD, model, 1).top_ids_Fn[:, 0].tolist()
    assert [stored[f] for f in latents] == want


def test_several_saes_with_one_store_refuse_what_the_store_cannot_serve_before_the_model_loads(gpt2, stores, monkeypatch):
    """`steer --sae a=L0 --sae b=L1 --store L0.db`: `--search` (the latents of one SAE) is refused, and
    so is an 'x' strength of SAE b, whose store was not given; both before the model loads, saying
    what works instead. Once, with several SAEs none was checked: `--search` read the store
    unchecked. (The store goes with the SAE it was built for: tests/test_multistore.py steers with
    a store each.)"""
    from saesteer.commands import _steering

    monkeypatch.setattr(_steering, "load_model", lambda *a, **kw: pytest.fail("the model loaded before the refusal"))
    two = ("--sae", f"a={gpt2.saes[RESID[0]]}", "--sae", f"b={gpt2.saes[RESID[1]]}", "--store", stores[RESID[0]])
    r = saesteer("steer", *two, "--search", "caf").no_traceback()
    assert r.rc == 2 and "a single --sae" in r.err and "saesteer serve" in r.err, r.text
    r = saesteer("steer", *two, "-l", "a/3:add=2x", "-l", "b/5:add=2x", "-p", "def f").no_traceback()
    assert r.rc == 2 and "b/5:add=2x" in r.err and "--store FILE of SAE 'b'" in r.err, r.text


def test_a_transcoders_logit_effects_are_of_the_hook_it_writes(gpt2, tmp_path):
    """A transcoder reading layer 0's residual and predicting layer 1's hook_z writes z-space rows:
    its logit effects go through layer 1's W_O. One whose files name no target (a transcoder
    folder without `hook_name_out`) gets none, and its store is built; `features build` ran the
    whole pass, then failed writing the store ('does not record the hook point it predicts')."""
    from features.analysis import logit_effects, residual_directions

    saesteer("train", "--cache", gpt2.cache, "--hook", RESID[0], "--target-hook", ATTN_Z, "--d-sae", 64, "--k", 4,
             "--total-tokens", 1024, "--batch-size", 256, "--holdout-tokens", 512, "--model-eval", "false",
             "--sae-name", "tc", "--out", tmp_path / "run", "--no-progress").ok()
    tc = tmp_path / "run" / "saes" / "tc"
    saesteer("features", "build", "--sae", tc, "--cache", gpt2.cache, "--out", tmp_path / "tc.db", "--no-progress").ok()
    model = _model(gpt2.model_dir)
    want = logit_effects(residual_directions(_sae(tc).W_dec, model, ATTN_Z)[0], model, 1).top_ids_Fn[:, 0]
    with sqlite3.connect(tmp_path / "tc.db") as db:
        stored = db.execute("select latent, token_id from logit_effects where kind = 'promoted' and rank = 0").fetchall()
        assert "W_O of layer 1" in json.loads(dict(db.execute("select key, value from meta"))["logit_method"])
    assert stored and all(want[f] == t for f, t in stored)

    for name in ("cfg.json", "saesteer.json"):  # as a transcoder folder naming no target is
        doc = json.loads((tc / name).read_text())
        (doc["metadata"] if name == "cfg.json" else doc).pop("hook_name_out", None)
        (tc / name).write_text(json.dumps(doc))
    saesteer("features", "build", "--sae", tc, "--cache", gpt2.cache, "--out", tmp_path / "untargeted.db",
             "--no-progress").ok()
    with sqlite3.connect(tmp_path / "untargeted.db") as db:
        assert json.loads(dict(db.execute("select key, value from meta"))["logit_method"]) is None
        assert db.execute("select count(*) from logit_effects").fetchone()[0] == 0


def test_a_hook_z_store_built_before_w_o_shows_no_logit_effects(stores, tmp_path):
    """A hook_z store built before its logit effects went through W_O holds wrong tokens: they are
    no longer shown (features show, the judge's prompts, the web page and exports all read them here)."""
    from features import FeatureStore

    old = _copy(stores[ATTN_Z], tmp_path / "old.db")
    with sqlite3.connect(old) as db:
        method = json.loads(dict(db.execute("select key, value from meta"))["logit_method"])
        db.execute("update meta set value = ? where key = 'logit_method'", (json.dumps(method.split("), ", 1)[1]),))
    for path, shown in ((stores[ATTN_Z], True), (old, False), (stores[MLP_OUT], True)):
        with FeatureStore.open(path) as s:
            assert (s.feature(3).logits is not None) == shown and bool(s.promoted_tokens([3])) == shown, path


def test_eval_measures_each_sae_at_its_own_hook(gpt2):
    out = gpt2.work / "eval"
    r = saesteer("eval", *[f for h in (RESID[1], ATTN_Z, MLP_OUT) for f in ("--sae", f"{h}={gpt2.saes[h]}")],
                 "--cache", gpt2.cache, "--out", out, "--ce-contexts", 8, "--absorption", "false", "--probing", "false", "--no-progress").ok()
    doc = json.loads((out / "eval.json").read_text())
    for hook in (RESID[1], ATTN_Z, MLP_OUT):
        assert doc["saes"][hook]["hook_name"] == hook
        assert f"at {hook}" in r.text
    # spliced at its own hook, one SAE at a time: each moves the loss by its own amount, the same
    # amount as when it is evaluated alone (not all spliced at once)
    spliced = {h: doc["saes"][h]["metrics"]["ce_loss_spliced"] for h in (RESID[1], ATTN_Z, MLP_OUT)}
    assert len({round(v, 6) for v in spliced.values()}) == 3, spliced
    saesteer("eval", "--sae", f"{ATTN_Z}={gpt2.saes[ATTN_Z]}", "--cache", gpt2.cache, "--out", gpt2.work / "eval-z",
             "--ce-contexts", 8, "--absorption", "false", "--probing", "false", "--no-progress").ok()
    alone = json.loads((gpt2.work / "eval-z" / "eval.json").read_text())["saes"][ATTN_Z]["metrics"]["ce_loss_spliced"]
    assert alone == pytest.approx(spliced[ATTN_Z], rel=1e-5)


# ------------------------------------------------------------------------------ several SAEs at once
def _manual_edit(sae, latent: int, c1: float, c0: float):
    """A TransformerLens hook doing a latent edit by hand: x + (a * c1 + c0) W_dec[latent], a read
    by the SAE's own encode of x."""
    def hook(x, hook=None):
        x_ND = x.reshape(x.shape[0] * x.shape[1], -1)
        a_N = sae.encode(x_ND)[:, latent]
        return (x_ND + (a_N * c1 + c0)[:, None] * sae.W_dec[latent]).reshape(x.shape)

    return hook


def _firing_latent(model, sae, hook: str, tokens) -> int:
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[hook])
        f = sae.encode(cache[hook].reshape(-1, sae.cfg.d_in))
    return int(f.gt(0).sum(0).argmax())


def _two_layers_firing(run):
    """What a test steering both layers by hand needs: the run's model, its SAEs at RESID[0] and
    RESID[1], the first prompt, its tokens, and a latent of each SAE that fires on them."""
    model = _model(run.model_dir)
    a, b = _sae(run.saes[RESID[0]]), _sae(run.saes[RESID[1]])
    prompt = PROMPTS[0]
    tokens = model.to_tokens(prompt, prepend_bos=True)
    la, lb = _firing_latent(model, a, RESID[0], tokens), _firing_latent(model, b, RESID[1], tokens)
    return model, a, b, prompt, tokens, la, lb


def _logprobs_by_hand(model, tokens, hooks, token_ids: list[int]) -> list[float]:
    """The log-probabilities of the generated `token_ids` after `tokens` with `hooks` editing."""
    ids = torch.cat([tokens, torch.tensor([token_ids])], dim=1)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        logp = model(ids).log_softmax(-1)[0, tokens.shape[1] - 1:-1]
    return logp.gather(1, torch.tensor(token_ids)[:, None])[:, 0].tolist()


@pytest.mark.parametrize("family", ["gpt2", "neox"])
def test_saes_at_two_layers_steer_in_order_the_later_reading_the_steered_residual(family, request):
    from steering import steer

    run = request.getfixturevalue(family)
    model = _model(run.model_dir)
    a, b = _sae(run.saes[RESID[0]]), _sae(run.saes[RESID[1]])
    tokens = model.to_tokens(PROMPTS, prepend_bos=True)
    la, lb = _firing_latent(model, a, RESID[0], tokens), _firing_latent(model, b, RESID[1], tokens)
    with torch.no_grad():
        with steer(model, {"a": a, "b": b}, [f"b/{lb}:clamp=1.5", f"a/{la}:add=6"]):  # order given: irrelevant
            steered = model(tokens)
        with model.hooks(fwd_hooks=[(RESID[0], _manual_edit(a, la, 0.0, 6.0)),
                                    (RESID[1], _manual_edit(b, lb, -1.0, 1.5))]):
            by_hand = model(tokens)
        with model.hooks(fwd_hooks=[(RESID[1], _manual_edit(b, lb, -1.0, 1.5))]):
            later_alone = model(tokens)
        unsteered = model(tokens)
    torch.testing.assert_close(steered, by_hand, rtol=1e-4, atol=1e-4)
    assert (steered - unsteered).abs().max() > 1e-2
    # the clamp at layer 1 read the residual the layer-0 edit had moved: without that edit it differs
    assert (steered - later_alone).abs().max() > 1e-3


def test_the_cli_steers_with_saes_at_several_hooks_as_hooks_by_hand_do(gpt2):
    """`steer --sae a=... --sae z=... -l a/N -l z/M` greedy: the steered text is what TransformerLens
    hooks doing the same edits by hand generate (strong edits: this briefly trained model's greedy
    text is one repeated token unless pushed)."""
    model = _model(gpt2.model_dir)
    a, z = _sae(gpt2.saes[RESID[0]]), _sae(gpt2.saes[ATTN_Z])
    prompt = PROMPTS[0]
    tokens = model.to_tokens(prompt, prepend_bos=True)
    la, lz = _firing_latent(model, a, RESID[0], tokens), _firing_latent(model, z, ATTN_Z, tokens)
    r = saesteer("steer", "--sae", f"a={gpt2.saes[RESID[0]]}", "--sae", f"z={gpt2.saes[ATTN_Z]}",
                 "-l", f"a/{la}:add=100", "-l", f"z/{lz}:scale=20", "-p", prompt, "--max-new-tokens", 8,
                 "--do-sample", "false", "--json", "--no-progress").ok()
    result = json.loads(r.out)["results"][0]
    by_hand = _greedy_by_hand(model, tokens, [(RESID[0], _manual_edit(a, la, 0.0, 100.0)),
                                              (ATTN_Z, _manual_edit(z, lz, 19.0, 0.0))], 8)
    assert result["steered"] == by_hand
    assert result["steered"] != result["unsteered"]


def _greedy_ids(model, tokens, hooks, n: int) -> list[int]:
    """n greedy token ids with TransformerLens hooks doing the edits at every position ("all")."""
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        for _ in range(n):
            tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens[0, -n:].tolist()


def _greedy_by_hand(model, tokens, hooks, n: int) -> str:
    return model.tokenizer.decode(_greedy_ids(model, tokens, hooks, n))


def _engine_logits(model, saes: dict, edits: list[tuple[str, int, str, float]], tokens) -> torch.Tensor:
    """Last-position logits of the first prefill of the batched engine the API server runs."""
    from steering.engine import BatchEngine, Row
    from steering.rowedits import RowEdit, RowSteering
    from steering.sampling import SamplingParams

    engine = BatchEngine(model, saes)
    seen = []
    handle = model.unembed.register_forward_hook(lambda m, i, o: seen.append(o[:, -1].detach().clone()))
    try:
        engine.add([Row(tokens[0].tolist(), SamplingParams(max_new_tokens=1, seed=0, temperature=0.0),
                        steering=RowSteering([RowEdit(n, l, op, v, "all") for n, l, op, v in edits]))])
        while engine.busy:
            engine.step()
    finally:
        handle.remove()
    return seen[0][0]


def test_two_saes_at_one_hook_each_read_the_unedited_activation(gpt2):
    """Defined behaviour (docs/features.md, docs/api.md): at one hook, every SAE reads the activation
    the model produced and the changes add up; order does not matter. `steer` and the engine agree."""
    from steering import steer

    model = _model(gpt2.model_dir)
    a, a2 = _sae(gpt2.saes[RESID[0]]), _sae(gpt2.saes[RESID[0]])
    tokens = model.to_tokens(PROMPTS[:1], prepend_bos=True)
    la = _firing_latent(model, a, RESID[0], tokens)

    def both_from_the_model_output(x, hook=None):
        x_ND = x.reshape(-1, x.shape[-1])
        a_N = a.encode(x_ND)[:, la]
        return (x_ND + 2 * (3.0 - a_N)[:, None] * a.W_dec[la]).reshape(x.shape)

    with torch.no_grad():
        with model.hooks(fwd_hooks=[(RESID[0], both_from_the_model_output)]):
            by_hand = model(tokens)
        with model.hooks(fwd_hooks=[(RESID[0], _manual_edit(a, la, -1.0, 3.0))] * 2):
            one_after_the_other = model(tokens)
        for order in ([f"a/{la}:clamp=3", f"a2/{la}:clamp=3"], [f"a2/{la}:clamp=3", f"a/{la}:clamp=3"]):
            with steer(model, {"a": a, "a2": a2}, order):
                torch.testing.assert_close(model(tokens), by_hand, rtol=1e-4, atol=1e-4)
    assert (by_hand - one_after_the_other).abs().max() > 1e-3  # the two readings differ here
    for edits in ([("a", la, "clamp", 3.0), ("a2", la, "clamp", 3.0)], [("a2", la, "clamp", 3.0), ("a", la, "clamp", 3.0)]):
        got = _engine_logits(model, {"a": a, "a2": a2}, edits, tokens)
        torch.testing.assert_close(got, by_hand[0, -1], rtol=1e-4, atol=1e-4)


def test_the_engine_steers_saes_at_several_layers_as_steer_does(gpt2):
    from steering import steer

    model = _model(gpt2.model_dir)
    a, b, z = (_sae(gpt2.saes[h]) for h in (RESID[0], RESID[1], ATTN_Z))
    tokens = model.to_tokens(PROMPTS[:1], prepend_bos=True)
    la, lb = _firing_latent(model, a, RESID[0], tokens), _firing_latent(model, b, RESID[1], tokens)
    lz = _firing_latent(model, z, ATTN_Z, tokens)
    edits = [("b", lb, "clamp", 1.5), ("z", lz, "scale", 3.0), ("a", la, "add", 6.0)]
    with torch.no_grad(), steer(model, {"a": a, "b": b, "z": z}, [f"{n}/{l}:{op}={v}" for n, l, op, v in edits]):
        want = model(tokens)[0, -1]
    torch.testing.assert_close(_engine_logits(model, {"a": a, "b": b, "z": z}, edits, tokens), want,
                               rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ a store per layer, side by side
def test_the_web_app_serves_a_store_per_layer_side_by_side(gpt2, stores, monkeypatch):
    chosen = [stores[h] for h in (RESID[0], RESID[1], ATTN_Z)]
    r, client = captured_serve(monkeypatch, *[f for s in chosen for f in ("--store", s)])
    assert client is not None, r.text
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    hooks = {m["saesteer"]["sae_hook"] for m in models.values()}
    assert hooks == {RESID[0], RESID[1], ATTN_Z}
    index = client.get("/").text  # the store list names each store's hook
    assert all(h in index for h in hooks), index[-2000:]
    for sid, m in models.items():
        page = client.get(f"/s/{sid}")
        assert page.status_code == 200 and m["saesteer"]["sae_hook"] in page.text, (sid, page.status_code)


def test_one_api_request_steers_with_the_sae_of_each_layer(gpt2, stores, monkeypatch):
    """`saesteer serve --store l0.db --store l1.db`: a request to one store's model may edit the other
    store's SAE (`"sae": ID` or "ID/LATENT:..."): the openai client's greedy tokens and their
    log-probabilities are what hooks doing both edits by hand give. Before, an edit could only name the request's own SAE."""
    import openai

    r, client = captured_serve(monkeypatch, "--store", stores[RESID[0]], "--store", stores[RESID[1]])
    assert client is not None, r.text
    ids = {m["saesteer"]["sae_hook"]: m["id"] for m in client.get("/v1/models").json()["data"]}
    model, a, b, prompt, tokens, la, lb = _two_layers_firing(gpt2)
    hooks = [(RESID[0], _manual_edit(a, la, 0.0, 20.0)), (RESID[1], _manual_edit(b, lb, -1.0, 5.0))]
    # the openai client over the app `serve` would serve (its TestClient is the client's httpx transport)
    api = openai_client(str(client.base_url), http_client=client)  # in process, through the TestClient

    for edits in ([{"latent": la, "op": "add", "value": 20}, {"latent": lb, "op": "clamp", "value": 5, "sae": ids[RESID[1]]}],
                  [f"{la}:add=20", f"{ids[RESID[1]]}/{lb}:clamp=5"]):
        got = api.completions.create(model=ids[RESID[0]], prompt=prompt, max_tokens=6, temperature=0, logprobs=1,
                                     extra_body={"steering": {"edits": edits}}).choices[0]
        assert got.model_extra["steering"]["token_ids"] == _greedy_ids(model, tokens, hooks, 6)
        token_ids = got.model_extra["steering"]["token_ids"]
        torch.testing.assert_close(got.logprobs.token_logprobs, _logprobs_by_hand(model, tokens, hooks, token_ids), rtol=1e-3, atol=1e-3)
        first_layer_only = _logprobs_by_hand(model, tokens, hooks[:1], token_ids)
        assert max(abs(x - y) for x, y in zip(got.logprobs.token_logprobs, first_layer_only)) > 1e-3
    with pytest.raises(openai.BadRequestError) as err:
        api.completions.create(model=ids[RESID[0]], prompt=prompt, max_tokens=2,
                               extra_body={"steering": {"edits": [f"elsewhere/{lb}:scale=2"]}})
    assert "elsewhere" in str(err.value) and ids[RESID[1]] in str(err.value)


def _copy(store: Path, out: Path) -> Path:
    src, dst = sqlite3.connect(store), sqlite3.connect(out)
    with dst:
        src.backup(dst)
    src.close(), dst.close()
    return out


def _as_on_neuronpedia(store: Path, np_sae: str, out: Path) -> Path:
    """A copy of `store` whose labels were imported from Neuronpedia's export of `np_sae` (the store
    then knows its SAE as that Neuronpedia id)."""
    _copy(store, out)
    model, layer = np_sae.split("/")
    export = out.with_suffix(".json")
    export.write_text(json.dumps([{"id": f"np{layer}", "modelId": model, "layer": layer, "index": "1",
                                   "description": "caf\u00e9 and na\u00efve", "explanationModelName": "gpt-4o-mini",
                                   "typeName": "oai_token-act-pair", "authorId": "np"}]))
    saesteer("label", "--store", out, "--import-neuronpedia", export, "--neuronpedia-sae", np_sae).ok()
    return out


def test_a_neuronpedia_latent_is_read_against_the_sae_its_edit_names(gpt2, stores, monkeypatch, tmp_path):
    """Served side by side, each store knowing its SAE's Neuronpedia id: a Neuronpedia latent of the
    other store's SAE steers that SAE; one of the request's SAE given to an edit of the other SAE
    (`"sae"`, or as its trigger) is refused naming both. Both were read against the request's SAE
    only: the first refused, the others taken as an index of the other SAE (a silent wrong edit)."""
    import openai

    l0 = _as_on_neuronpedia(stores[RESID[0]], "gpt2-small/0-res-jb", tmp_path / "l0.db")
    l1 = _as_on_neuronpedia(stores[RESID[1]], "gpt2-small/1-res-jb", tmp_path / "l1.db")
    r, client = captured_serve(monkeypatch, "--store", l0, "--store", l1)
    assert client is not None, r.text
    ids = {m["saesteer"]["sae_hook"]: m["id"] for m in client.get("/v1/models").json()["data"]}
    other = ids[RESID[1]]
    api = openai_client(str(client.base_url), http_client=client)  # in process, through the TestClient

    def complete(*edits):
        out = api.completions.create(model=ids[RESID[0]], prompt=PROMPTS[1], max_tokens=4, temperature=0,
                                     extra_body={"steering": {"edits": list(edits)}})
        return out.choices[0].model_extra["steering"]["token_ids"]

    by_index = complete(f"{other}/7:clamp=30?5>-1e6")
    assert by_index != complete(f"{other}/7:add=0")
    for same in (f"gpt2-small/1-res-jb/7:clamp=30?gpt2-small/1-res-jb/5>-1e6",
                 f"https://www.neuronpedia.org/gpt2-small/1-res-jb/7:clamp=30?5>-1e6",
                 f"{other}/7:clamp=30?gpt2-small/1-res-jb/5>-1e6",
                 {"latent": "gpt2-small/1-res-jb/7", "op": "clamp", "value": 30, "when": {"latent": 5, "above": -1e6}},
                 {"latent": "gpt2-small/1-res-jb/7", "op": "clamp", "value": 30, "sae": other,
                  "when": {"latent": "gpt2-small/1-res-jb/5", "above": -1e6}}):
        assert complete(same) == by_index, same
    for wrong in ({"latent": "gpt2-small/0-res-jb/7", "op": "clamp", "value": 30, "sae": other},
                  {"latent": 7, "op": "clamp", "value": 30, "sae": other,
                   "when": {"latent": "gpt2-small/0-res-jb/5", "above": -1e6}},
                  f"{other}/7:clamp=30?gpt2-small/0-res-jb/5>-1e6"):
        with pytest.raises(openai.BadRequestError) as err:
            complete(wrong)
        assert "'gpt2-small/0-res-jb'" in str(err.value) and "'gpt2-small/1-res-jb'" in str(err.value), str(err.value)
    with pytest.raises(openai.BadRequestError) as err:  # an SAE served by none: the refusal names the served ones
        complete("gpt2-small/5-res-jb/7:clamp=30")
    assert all(s in str(err.value) for s in ("'gpt2-small/5-res-jb'", "'gpt2-small/0-res-jb'", other)), str(err.value)


def test_a_neuronpedia_latent_of_the_requests_own_sae_stays_its_own(gpt2, stores, monkeypatch, tmp_path):
    """Two stores of one SAE served side by side (built on different text: their typical maxima
    differ), both knowing it as gpt2-small/1-res-jb: a request to the second store naming a latent by
    its Neuronpedia id steers with that store's strengths, as the same edit by index does. It went
    to whichever store was listed first, its '2x' read with the other store's typical max."""
    first = _as_on_neuronpedia(stores[RESID[1]], "gpt2-small/1-res-jb", tmp_path / "first.db")
    second = _as_on_neuronpedia(stores[RESID[1]], "gpt2-small/1-res-jb", tmp_path / "second.db")
    with sqlite3.connect(first) as db:  # as if built on other text
        db.execute("update features set typical_max_act = typical_max_act * 40")
    r, client = captured_serve(monkeypatch, "--store", first, "--store", second)
    assert client is not None, r.text
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert len(ids) == 2
    api = openai_client(str(client.base_url), http_client=client)  # in process, through the TestClient

    def complete(model, edit):
        """(the greedy token ids, the edits as the response describes them)"""
        out = api.completions.create(model=model, prompt=PROMPTS[1], max_tokens=4, temperature=0,
                                     extra_body={"steering": {"edits": [edit]}})
        return out.choices[0].model_extra["steering"]["token_ids"], out.model_extra["steering"]["edits"]

    model = _model(gpt2.model_dir)
    latent = _firing_latent(model, _sae(gpt2.saes[RESID[1]]), RESID[1], model.to_tokens(PROMPTS[1], prepend_bos=True))
    for sid in ids:
        by_index = complete(sid, f"{latent}:clamp=2x")
        assert complete(sid, f"gpt2-small/1-res-jb/{latent}:clamp=2x") == by_index, sid
        assert complete(sid, {"latent": f"gpt2-small/1-res-jb/{latent}", "op": "clamp", "value": 2,
                              "unit": "max_act"}) == by_index, sid
    assert complete(ids[0], f"{latent}:clamp=2x")[0] != complete(ids[1], f"{latent}:clamp=2x")[0]  # the maxima matter


def test_a_preset_of_the_store_served_beside_is_refused_naming_its_model(gpt2, stores, monkeypatch, tmp_path):
    """A preset saved in (or made for the SAE of) the other store: refused naming that model, which
    takes it, with this store's edits as `"sae"` edits. It said only 'no preset named ...' or 'save
    the preset again for this SAE', though the server holds the SAE it was made for."""
    import openai

    l0, l1 = _copy(stores[RESID[0]], tmp_path / "l0.db"), _copy(stores[RESID[1]], tmp_path / "l1.db")
    saesteer("preset", "save", "up", "--store", l1, "-l", "7:clamp=30", "--stop-when", "9>1e6").ok()
    preset = json.loads(saesteer("preset", "show", "up", "--store", l1).ok().out)
    r, client = captured_serve(monkeypatch, "--store", l0, "--store", l1)
    assert client is not None, r.text
    ids = {m["saesteer"]["sae_hook"]: m["id"] for m in client.get("/v1/models").json()["data"]}
    api = openai_client(str(client.base_url), http_client=client)  # in process, through the TestClient

    def complete(model, steering):
        out = api.completions.create(model=model, prompt=PROMPTS[1], max_tokens=4, temperature=0,
                                     extra_body={"steering": steering})
        return out.choices[0].model_extra["steering"]["token_ids"]

    for given in ("up", preset):
        with pytest.raises(openai.BadRequestError) as err:
            complete(ids[RESID[0]], {"preset": given})
        assert f"belongs to model '{ids[RESID[1]]}'" in str(err.value), str(err.value)
    both = {"preset": "up", "edits": [{"latent": 3, "op": "add", "value": 20, "sae": ids[RESID[0]]}]}
    assert complete(ids[RESID[1]], both) == complete(ids[RESID[1]], {"edits": [
        "7:clamp=30", {"latent": 3, "op": "add", "value": 20, "sae": ids[RESID[0]]}]})
