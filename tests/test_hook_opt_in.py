"""TransformerLens's opt-in hook points (`hook_attn_in`, `hook_q_input`, `hook_mlp_in`, `attn.hook_result`)
fire only once a cfg flag is on, and a flag on changes the model for everyone using it (another forward
path; `use_attn_in` and `use_split_qkv_input` exclude each other on a TransformerBridge).

Checking a hook name once switched its flag on for good: one API request to a store at `hook_attn_in`
changed the shared model for every later request and then failed a request at `hook_q_input` that
works alone; a Python session that steered once at `hook_attn_in` could never read `hook_q_input`.
Now a check changes nothing, work that runs the model there switches the flag on for itself and off
after (`steer` for its block), and a server switches on at start what its SAEs need and pins the model
(two stores whose hooks exclude each other are refused at start, naming both).

Each piece of work holding a flag is counted (per model and flag): the flag goes off when the last
holder is done, never while other open work needs it, and never when it was on before the first holder.
A server's pin lasts as long as the app serves (released at shutdown, when `create_app` fails after
pinning, and when an app that never served is dropped)."""

from __future__ import annotations

import pytest

from helpers.steering_fixtures import random_sae
from saes.hookpoints import (
    OptInConflictError, UnknownHookError, check_editable_hook, check_hook, check_hooks, opt_in_hooks,
)

pytestmark = [pytest.mark.usefixtures("one_thread")]

FLAGS = ("use_attn_in", "use_split_qkv_input", "use_hook_mlp_in", "use_attn_result")
OPT_IN = ("blocks.0.hook_attn_in", "blocks.0.hook_q_input", "blocks.0.hook_mlp_in", "blocks.0.attn.hook_result")


def flags(model) -> dict[str, bool]:
    return {f: bool(getattr(model.cfg, f)) for f in FLAGS}


@pytest.fixture(scope="module")
def gpt2(real_models):
    """A tiny real GPT-2 loaded through saesteer (a TransformerBridge)."""
    from saesteer.models import load_model

    return load_model(str(real_models.path("gpt2")), device="cpu")


def _sae_at(model, hook: str, seed: int = 0):
    width = model.cfg.n_heads * model.cfg.d_model if hook.endswith(("attn_in", "_input")) else model.cfg.d_model
    return random_sae(model, "topk", hook=hook, d_sae=32, k=4, seed=seed, d_in=width)


def test_checking_a_hook_point_changes_nothing(gpt2):
    before = flags(gpt2)
    assert not any(before.values())
    for name in OPT_IN:
        check_hook(gpt2, name, per_token=True)
        check_hooks(gpt2, [name])
    check_editable_hook(gpt2, "blocks.0.hook_mlp_in")
    assert flags(gpt2) == before


def test_a_scope_switches_on_only_what_it_needs_and_restores_it(gpt2):
    with opt_in_hooks(gpt2, ["blocks.0.hook_resid_post", "blocks.0.hook_attn_in"]):
        assert flags(gpt2)["use_attn_in"]
        with opt_in_hooks(gpt2, "blocks.1.hook_attn_in"):  # already on: the inner scope leaves it on
            pass
        assert flags(gpt2)["use_attn_in"]
        with pytest.raises(OptInConflictError, match="exclude each other"):
            with opt_in_hooks(gpt2, "blocks.0.hook_q_input"):
                pass
    assert not any(flags(gpt2).values())


def test_steer_switches_an_opt_in_hook_on_for_its_block_only(gpt2):
    """A Python session steers at hook_attn_in, then at hook_q_input: the second failed ('exclude each
    other') once the first had switched use_attn_in on for good."""
    from steering import GenerationConfig, steer

    cfg = GenerationConfig(max_new_tokens=3, do_sample=False)
    for hook in ("blocks.0.hook_attn_in", "blocks.0.hook_q_input"):
        sae = _sae_at(gpt2, hook)
        with steer(gpt2, sae, ["1:add=5", "2:add=5"]) as s:
            assert flags(gpt2)["use_attn_in" if hook.endswith("attn_in") else "use_split_qkv_input"]
            steered = s.generate(["def f(x):"], cfg).texts[0]
        assert not any(flags(gpt2).values()), hook
        assert steered


def test_reading_an_opt_in_hook_leaves_the_model_as_it_was(gpt2):
    from features.text import features_on_text
    from training.runner import ActivationRunner

    runner = ActivationRunner(gpt2, ["blocks.0.hook_mlp_in", "blocks.1.attn.hook_result"], forward="transformer_lens")
    widths = runner.d_in(4)
    assert widths == {"blocks.0.hook_mlp_in": gpt2.cfg.d_model,
                      "blocks.1.attn.hook_result": gpt2.cfg.n_heads * gpt2.cfg.d_model}
    assert not any(flags(gpt2).values())
    res = features_on_text(gpt2, _sae_at(gpt2, "blocks.0.hook_attn_in"), "def f(x): return x", top_n=3)
    assert res.acts_SF is not None and not any(flags(gpt2).values())


def _app(model, saes: dict):
    """The web app + API over `model` with one store per SAE (the store file is only the catalog)."""
    from helpers.web_app import PORT, shared_store
    from features import FeatureStore
    from saesteer.web import Limits, ModelQueue, ServeConfig, StoreEntry, create_app
    from saesteer.web.model_source import ModelEngine
    from saesteer.web.store_source import StoreCatalog

    ws, limits = shared_store(), Limits()
    queue = ModelQueue("gpt2", limits.max_pending)
    entries = []
    for sid, sae in saes.items():
        cat = StoreCatalog(FeatureStore.open(ws.path), name=sid)
        entries.append(StoreEntry(sid, cat, ModelEngine(model, sae, cat, limits), queue))
    return create_app(entries, config=ServeConfig(port=PORT), limits=limits)


def _complete(client, store: str):
    r = client.post("/v1/completions", json={"model": store, "prompt": "def f(x):", "max_tokens": 3, "temperature": 0, "seed": 0,
                                             "logprobs": 1, "steering": {"edits": [{"latent": 1, "op": "add", "value": 5}]}})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def test_a_server_switches_on_what_its_saes_need_at_start_and_no_request_changes_it(real_models):
    """Before, the model was as loaded until the first request to the hook_attn_in store switched
    use_attn_in on for every later request to any store."""
    from helpers.web_app import client
    from saesteer.models import load_model

    model = load_model(str(real_models.path("gpt2")), device="cpu")
    app = _app(model, {"attnin": _sae_at(model, "blocks.0.hook_attn_in"), "resid": _sae_at(model, "blocks.1.hook_resid_post")})
    assert flags(model)["use_attn_in"]  # on from the start, for every request alike
    with client(app) as c:
        first = _complete(c, "resid")
        _complete(c, "attnin")
        assert _complete(c, "resid") == first
        assert flags(model)["use_attn_in"]
        # the model is pinned: nothing switches another flag on it, a clear refusal instead
        with pytest.raises(UnknownHookError, match="serve a store whose SAE reads blocks.0.hook_mlp_in"):
            with opt_in_hooks(model, "blocks.0.hook_mlp_in"):
                pass
        assert not flags(model)["use_hook_mlp_in"]


def test_stores_whose_hooks_exclude_each_other_are_refused_at_start(real_models):
    """Before, the server started, a request to 'attnin' switched use_attn_in on, and then every request
    to 'qinput' failed although a server of 'qinput' alone answers it."""
    from helpers.web_app import client
    from saesteer.models import load_model

    model = load_model(str(real_models.path("gpt2")), device="cpu")
    saes = {"attnin": _sae_at(model, "blocks.0.hook_attn_in"), "qinput": _sae_at(model, "blocks.0.hook_q_input", 1)}
    with pytest.raises(OptInConflictError) as e:
        _app(model, saes)
    msg = str(e.value)
    assert "store 'qinput'" in msg and "store 'attnin'" in msg and "separate servers" in msg
    assert not any(flags(model).values())  # what it switched on before refusing is off again
    alone = load_model(str(real_models.path("gpt2")), device="cpu")
    with client(_app(alone, {"qinput": saes["qinput"]})) as c:
        assert _complete(c, "qinput")["text"]


def test_the_batched_engine_switches_on_while_busy_and_gives_it_back_when_idle(gpt2):
    """Edits at an opt-in hook point through the batched engine (outside a server): its hooks sit on
    the hook point itself, so with the flag off they would silently never fire. The flag is on while
    the engine is busy and off once it is idle, and the tokens are `steer()`'s (not the unsteered ones)."""
    from steering import GenerationConfig, generate, steer
    from steering.engine import BatchEngine, Row
    from steering.resolve import resolve_edits
    from steering.rowedits import RowEdit, RowSteering
    from steering.sampling import SamplingParams

    sae = _sae_at(gpt2, "blocks.0.hook_attn_in")
    edits, cfg = ["1:add=50", "2:add=50"], GenerationConfig(max_new_tokens=4, do_sample=False)
    with steer(gpt2, sae, edits) as s:
        want = s.generate(["def f(x):"], cfg).new_tokens[0].tolist()
    assert want != generate(gpt2, ["def f(x):"], cfg).new_tokens[0].tolist()  # the edits change the tokens
    rs = resolve_edits(gpt2, {"s": sae}, edits, chat_positions=True)
    steering = RowSteering([RowEdit("s", r.latent, r.op, r.value, r.positions, r.trigger, r.describe()) for r in rs], [])
    engine = BatchEngine(gpt2, {"s": sae})
    engine.add([Row(gpt2.to_tokens("def f(x):")[0].tolist(), SamplingParams(max_new_tokens=4, temperature=0), steering)])
    busy_flags, got = [], []
    while engine.busy:
        got += [ev.token for ev in engine.step() if ev.token is not None]
        busy_flags.append(flags(gpt2)["use_attn_in"])
    assert got == want
    assert busy_flags[0] and not flags(gpt2)["use_attn_in"]


def _engine_row(model, sae, edits, prompt: str, max_new_tokens: int):
    """The batched engine over `sae` and one greedy row steered by `edits`."""
    from steering.engine import BatchEngine, Row
    from steering.resolve import resolve_edits
    from steering.rowedits import RowEdit, RowSteering
    from steering.sampling import SamplingParams

    rs = resolve_edits(model, {"s": sae}, edits, chat_positions=True)
    steering = RowSteering([RowEdit("s", r.latent, r.op, r.value, r.positions, r.trigger, r.describe()) for r in rs], [])
    engine = BatchEngine(model, {"s": sae})
    engine.add([Row(model.to_tokens(prompt)[0].tolist(), SamplingParams(max_new_tokens=max_new_tokens, temperature=0),
                    steering)])
    return engine


def test_a_flag_stays_on_while_other_open_work_holds_it():
    """The engine (busy with a row steered at hook_mlp_in) switched use_hook_mlp_in on; a steer() block at
    the same hook found it on and recorded nothing; the engine ran to idle inside the block and switched it
    off: the block's hooks stopped firing and s.generate gave the unsteered tokens."""
    from helpers.steering_fixtures import tiny_model
    from steering import GenerationConfig, generate, steer

    model = tiny_model()
    sae = random_sae(model, "topk", hook="blocks.0.hook_mlp_in", d_sae=32, k=4)
    edits, cfg, prompt = ["1:add=50", "2:add=50"], GenerationConfig(max_new_tokens=6, do_sample=False), ["the sea and the ship"]
    plain = generate(model, prompt, cfg).new_tokens[0].tolist()
    with steer(model, sae, edits) as s:
        want = s.generate(prompt, cfg).new_tokens[0].tolist()
    assert want != plain  # the edits change the tokens
    engine = _engine_row(model, sae, edits, "a tree", 5)
    engine.step()
    assert flags(model)["use_hook_mlp_in"]  # the busy engine holds it
    with steer(model, sae, edits) as s:
        while engine.busy:
            engine.step()
        assert flags(model)["use_hook_mlp_in"]  # the engine is done, the block still holds it
        assert s.generate(prompt, cfg).new_tokens[0].tolist() == want
    assert not any(flags(model).values())  # the last holder switched it off


def test_scopes_that_end_out_of_order_leave_a_flag_on_until_the_last_one_ends(gpt2):
    from saes.hookpoints import OptInSwitch

    first, second = OptInSwitch(gpt2), OptInSwitch(gpt2)
    first.need("blocks.0.hook_attn_in")
    second.need(["blocks.1.hook_attn_in", "blocks.0.hook_attn_in"])  # one flag, held once
    first.restore()
    assert flags(gpt2)["use_attn_in"]
    second.restore()
    assert not any(flags(gpt2).values())


def test_a_flag_on_before_the_first_holder_is_never_switched_off(gpt2):
    gpt2.set_use_attn_result(True)  # the user's own
    try:
        with opt_in_hooks(gpt2, "blocks.0.attn.hook_result"):
            with opt_in_hooks(gpt2, ["blocks.1.attn.hook_result", "blocks.0.hook_mlp_in"]):
                assert flags(gpt2)["use_hook_mlp_in"]
        assert flags(gpt2) == {**dict.fromkeys(FLAGS, False), "use_attn_result": True}
    finally:
        gpt2.set_use_attn_result(False)


def _steer_at_mlp_in(model) -> str:
    """A Python session steering `model` at hook_mlp_in (refused while a server pins the model)."""
    from steering import GenerationConfig, steer

    with steer(model, _sae_at(model, "blocks.0.hook_mlp_in"), ["1:add=5"]) as s:
        assert flags(model)["use_hook_mlp_in"]
        return s.generate(["def f(x):"], GenerationConfig(max_new_tokens=3, do_sample=False)).texts[0]


def test_a_servers_pin_ends_when_the_app_stops(real_models):
    """The pin was process-wide and never removed: once an app had served, steer() on its model at
    hook_mlp_in was refused ('off on the model this server shares') for the rest of the process, and
    its flags stayed on. Now the app gives its models back at shutdown."""
    from helpers.web_app import client
    from saesteer.models import load_model

    model = load_model(str(real_models.path("gpt2")), device="cpu")
    app = _app(model, {"attnin": _sae_at(model, "blocks.0.hook_attn_in")})
    with client(app) as c:
        _complete(c, "attnin")
        assert flags(model)["use_attn_in"]
        with pytest.raises(UnknownHookError, match="off on the model this server shares"):
            _steer_at_mlp_in(model)
    assert not any(flags(model).values())
    assert _steer_at_mlp_in(model)
    assert not any(flags(model).values())


def test_a_servers_pin_ends_when_create_app_fails_after_pinning_or_an_app_is_dropped(real_models, monkeypatch):
    import gc

    import saesteer.web.app as web_app
    from saesteer.models import load_model

    model = load_model(str(real_models.path("gpt2")), device="cpu")
    sae = _sae_at(model, "blocks.0.hook_attn_in")

    def broken(app, pages):
        raise RuntimeError("routes failed")

    with monkeypatch.context() as mp:
        mp.setattr(web_app, "_add_routes", broken)
        with pytest.raises(RuntimeError, match="routes failed"):
            _app(model, {"attnin": sae})
    assert not any(flags(model).values())
    assert _steer_at_mlp_in(model)

    app = _app(model, {"attnin": sae})  # never served
    assert flags(model)["use_attn_in"]
    del app
    gc.collect()
    assert not any(flags(model).values())
    assert _steer_at_mlp_in(model)


def test_compare_runs_the_unsteered_pass_on_the_steered_passs_forward_path(gpt2, monkeypatch):
    """compare() generated the unsteered text after the steer() block, with use_attn_in off again:
    another forward path, so at hook_attn_in an edit that changes nothing gave logits ~1e-6 apart from
    the unsteered ones. Now the unsteered pass has the same flags on: exactly the same logits."""
    import torch

    import steering.comparison as comparison
    from steering import steer

    sae = _sae_at(gpt2, "blocks.0.hook_attn_in")
    tokens = gpt2.to_tokens(["def f(x): return x + 1"])
    with steer(gpt2, sae, ["1:add=0"]):  # an edit that changes nothing
        steered_logits = gpt2(tokens)
    unsteered_logits = []
    real_generate = comparison.generate_tokenized

    def generate(model, *args, session=None, **kwargs):
        if session is None:  # the unsteered pass
            unsteered_logits.append(model(tokens))
        return real_generate(model, *args, session=session, **kwargs)

    monkeypatch.setattr(comparison, "generate_tokenized", generate)
    cmp = comparison.compare(gpt2, sae, ["1:add=0"], ["def f(x):", "x = 1"], max_new_tokens=5, do_sample=False)
    assert len(unsteered_logits) == 1 and torch.equal(unsteered_logits[0], steered_logits)
    assert cmp.steered == cmp.unsteered
    assert not any(flags(gpt2).values())
