"""Steering hooked into a model: no-op edits are exact, edits land at the chosen positions only,
a planted direction moves its logit, bad input is refused and no hook is ever left behind."""

import pytest
import torch

from helpers.steering_fixtures import PROMPTS, torch_threads, hook_activations, random_sae, tiny_model
from steering import FeatureEdit, SteerLimits, SteeringError, VectorEdit, current_activations, hooks_attached, steer

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def tokens(model):
    return model.to_tokens(PROMPTS, padding_side="left")  # rows of different lengths: left padding


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens, padding_side="left")


def assert_clean(model):
    assert hooks_attached(model) == []
    for hp in model.hook_dict.values():
        assert not hp.fwd_hooks and not hp._forward_hooks


@pytest.mark.parametrize("arch", ["jumprelu", "topk", "matryoshka_batchtopk"])
@pytest.mark.parametrize("edits", [["3:add=0"], ["3:scale=1"], ["3:add=0", "4:scale=1@prompt", "5:add=0@0,1"]])
def test_no_op_edits_leave_logits_identical(model, tokens, arch, edits):
    sae = random_sae(model, arch)
    base = logits(model, tokens)
    with steer(model, sae, edits):
        steered = logits(model, tokens)
    assert torch.equal(base, steered)
    assert_clean(model)


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_clamping_to_the_current_value_leaves_logits_identical(model, tokens, arch):
    sae = random_sae(model, arch)
    one = tokens[2:3]  # the longest prompt: no padding, token index == position
    acts = hook_activations(model, one, HOOK)  # [1, S, D], unsteered
    pos = 3
    feature = int(sae.encode(acts[0, pos]).argmax())
    # the value the hook reads at that position (the hook encodes the selected rows only)
    value = float(current_activations(sae, acts[0, pos][None], [feature])[0, 0])
    assert value > 0
    base = logits(model, one)
    with steer(model, sae, [FeatureEdit(feature, "clamp", value, positions=(pos,))]):
        assert torch.equal(logits(model, one), base)
    # and a different value does change them
    with steer(model, sae, [FeatureEdit(feature, "clamp", value + 5, positions=(pos,))]):
        assert not torch.equal(logits(model, one), base)


@pytest.mark.parametrize("positions", [(1, 3), (-1,), "last", "prompt", "all"])
def test_ablation_zeroes_the_latent_at_the_chosen_positions_only(model, tokens, positions):
    sae = random_sae(model, "jumprelu", threshold=0.1)
    feature = 7
    with torch.no_grad():  # make the latent fire everywhere (its own direction, big bias)
        sae.b_enc[feature] = 3.0
    base_acts = hook_activations(model, tokens, HOOK)
    with steer(model, sae, [FeatureEdit(feature, "ablate", positions=positions)]):
        hooked = hook_activations(model, tokens, HOOK)
    before = sae.encode(base_acts)[..., feature]
    after = sae.encode(hooked)[..., feature]
    mask = (tokens != model.tokenizer.pad_token_id)  # real tokens (BOS is real)
    n_real = mask.sum(1)
    chosen = torch.zeros_like(mask)
    for b in range(tokens.shape[0]):
        first = tokens.shape[1] - int(n_real[b])  # left padding
        if positions == "all" or positions == "prompt":
            chosen[b, first:] = True
        else:
            idx = (-1,) if positions == "last" else positions
            for i in idx:
                j = first + (i if i >= 0 else int(n_real[b]) + i)
                if first <= j < tokens.shape[1]:
                    chosen[b, j] = True
    assert (before[mask] > 0).all()  # it did fire before
    assert (after[chosen].abs() < 1e-4).all()
    unchanged = ~chosen
    assert torch.equal(hooked[unchanged], base_acts[unchanged])  # other positions (and pads) untouched
    assert_clean(model)


@pytest.mark.parametrize("positions", ["prompt", "generated"])
def test_ablation_without_padding_edits_only_its_slice(model, tokens, positions):
    """No pad tokens: prompt / generated positions are a contiguous slice of the forward (the
    fast slice path, not the index path that padded batches take)."""
    sae = random_sae(model, "jumprelu", threshold=0.1)
    feature = 7
    with torch.no_grad():
        sae.b_enc[feature] = 3.0
    one = tokens[2:3]  # the longest prompt: no padding
    P = 4  # the first 4 positions are the "prompt", the rest count as generated
    base_acts = hook_activations(model, one, HOOK)
    with steer(model, sae, [FeatureEdit(feature, "ablate", positions=positions)]) as s, s.prompt_length(P):
        hooked = hook_activations(model, one, HOOK)
    chosen = torch.zeros(one.shape, dtype=torch.bool)
    if positions == "prompt":
        chosen[:, :P] = True
    else:
        chosen[:, P:] = True
    assert 0 < int(chosen.sum()) < one.numel()
    assert (sae.encode(base_acts)[..., feature] > 0).all()
    assert (sae.encode(hooked)[..., feature][chosen].abs() < 1e-4).all()
    assert torch.equal(hooked[~chosen], base_acts[~chosen])
    assert_clean(model)


def test_planted_direction_moves_its_logit(model):
    last = model.cfg.n_layers - 1
    sae = random_sae(model, "jumprelu", hook=f"blocks.{last}.hook_resid_post")
    target = model.tokenizer.convert_tokens_to_ids("whale")
    feature = 11
    with torch.no_grad():
        u = model.W_U[:, target].clone()
        sae.W_dec[feature] = u / u.norm()
    tokens = model.to_tokens(["the sea and the ship"])
    base = logits(model, tokens)[0, -1]
    results = []
    for s in [2.0, 8.0, 32.0]:
        with steer(model, sae, [FeatureEdit(feature, "add", s, positions="last")]):
            lg = logits(model, tokens)[0, -1]
        results.append(lg)
    gains = [float((lg - base)[target] - (lg - base).mean()) for lg in results]
    assert gains[0] > 0 and gains[0] < gains[1] < gains[2]
    assert int(results[-1].argmax()) == target
    assert int(base.argmax()) != target


def test_vector_edit_adds_exactly_the_vector(model, tokens):
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3))
    base_acts = hook_activations(model, tokens, HOOK)
    with steer(model, None, [VectorEdit(HOOK, v, 2.0, positions="last")]):
        hooked = hook_activations(model, tokens, HOOK)
    diff = hooked - base_acts
    changed = diff.abs().sum(-1) > 0
    assert changed.sum() == tokens.shape[0]  # one position per row
    assert changed[:, -1].all()  # the last prompt token is flush right under left padding
    torch.testing.assert_close(diff[:, -1], (2.0 * v).expand(tokens.shape[0], -1), rtol=1e-5, atol=1e-5)


def test_edits_on_two_saes_at_two_layers(model, tokens):
    a = random_sae(model, "jumprelu", hook="blocks.0.hook_resid_post", seed=1)
    b = random_sae(model, "topk", hook="blocks.1.hook_resid_post", seed=2)
    base = logits(model, tokens)
    with steer(model, {"a": a, "b": b}, ["a/3:add=0", "b/4:scale=1"]):
        assert torch.equal(logits(model, tokens), base)
    with steer(model, {"a": a, "b": b}, ["a/3:add=4", "b/4:clamp=3"]) as s:
        assert {r.hook_name for r in s.edits} == {"blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}
        assert not torch.equal(logits(model, tokens), base)
    assert_clean(model)


def test_typical_max_units(model, tokens):
    sae = random_sae(model)
    with steer(model, sae, ["5:clamp=2x"], typical_max={5: 1.5}):
        a = logits(model, tokens)
    with steer(model, sae, ["5:clamp=3"]):
        b = logits(model, tokens)
    assert torch.equal(a, b)
    with steer(model, {"x": sae}, ["x/5:clamp=2x"], typical_max={"x": lambda f: 1.5}):
        assert torch.equal(logits(model, tokens), b)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "edits, saes_kw, fragment",
    [
        (["128:clamp=1"], {}, r"latent 128 is out of range.*0\.\.127"),
        (["-1:clamp=1"], {}, r"latent -1 is out of range.*0\.\.127"),
        (["3:clamp=1?200>0.5"], {}, r"trigger latent 200 is out of range.*0\.\.127"),
        (["3:clamp=1?5>2x"], {}, "trigger latent 5 has no known typical max"),
        (["zz/3:clamp=1"], {}, "unknown SAE 'zz'"),
        (["3:clamp=1e9"], {}, "max_abs_value"),
        (["3:clamp=2x"], {}, "latent 3 of SAE 'sae' has no known typical max"),
        (["3:clamp=1", "3:add=1"], {}, "edited twice"),
        ([], {}, "no edits"),
        (["3:clamp=1"], {"hook": "blocks.9.hook_resid_post"}, "unknown hook point 'blocks.9.hook_resid_post'"),
        (["3:clamp=1"], {"hook": ""}, "hook_name"),
    ],
)
def test_bad_requests_are_refused_before_any_hook(model, edits, saes_kw, fragment):
    sae = random_sae(model)
    if "hook" in saes_kw:
        if saes_kw["hook"]:
            sae.cfg.metadata["hook_name"] = saes_kw["hook"]
        else:
            del sae.cfg.metadata["hook_name"]
    from saes.hookpoints import UnknownHookError

    with pytest.raises((SteeringError, UnknownHookError), match=fragment):  # a hook check is the same everywhere
        with steer(model, sae, edits):
            pytest.fail("the block must not run")
    assert_clean(model)


def test_non_finite_vector_and_wrong_width_are_refused(model, tokens):
    with pytest.raises(SteeringError, match="non-finite"):
        with steer(model, None, [VectorEdit(HOOK, torch.full((64,), float("nan")))]):
            pass
    wide = random_sae(model, d_in=32)  # SAE for another model
    with pytest.raises(SteeringError, match="width 64"):
        with steer(model, wide, ["1:clamp=1"]):
            pass
    # a hook whose width is not known statically is checked when it runs
    odd = random_sae(model, hook="blocks.0.attn.hook_pattern", d_in=32)
    with pytest.raises(SteeringError, match="carries width"):
        with steer(model, odd, ["1:clamp=1"]):
            model(tokens, padding_side="left")
    assert_clean(model)


def test_limits_are_configurable(model):
    sae = random_sae(model)
    with pytest.raises(SteeringError, match="max_abs_scale"):
        with steer(model, sae, ["3:scale=500"]):
            pass
    with steer(model, sae, ["3:scale=500"], limits=SteerLimits(max_abs_scale=1000)):
        pass
    assert_clean(model)


def test_hooks_are_removed_after_an_exception(model, tokens):
    sae = random_sae(model)
    outer = []
    with model.hooks(fwd_hooks=[(HOOK, lambda x, hook: outer.append(1))]):  # someone else's hook survives
        with pytest.raises(RuntimeError, match="boom"):
            with steer(model, sae, ["3:clamp=2@generated", "4:ablate"]) as s:
                assert len(hooks_attached(model)) >= 2
                model(tokens, padding_side="left")
                raise RuntimeError("boom")
        assert not s.active
        assert hooks_attached(model) == [HOOK]
        model(tokens, padding_side="left")
        assert len(outer) == 2
    assert_clean(model)


def test_hooks_are_removed_when_a_hook_raises_mid_generation(model):
    sae = random_sae(model)
    with pytest.raises(SteeringError, match="cap"):
        with steer(model, sae, ["3:clamp=2"]) as s:
            s.generate(["the sea"], max_new_tokens=10_000)
    assert_clean(model)
    with pytest.raises(SteeringError, match="context"):
        with steer(model, sae, ["3:clamp=2"]) as s:
            s.generate(["the sea"], max_new_tokens=100, max_new_tokens_cap=1000)
    assert_clean(model)

    def bad(x, hook):
        raise ValueError("hook failure")

    with pytest.raises(ValueError, match="hook failure"):
        with steer(model, sae, ["3:clamp=2"]) as s, model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", bad)]):
            s.generate(["the sea"], max_new_tokens=3)
    assert_clean(model)


def test_positions_need_a_block_hook(model):
    with pytest.raises(SteeringError, match="positions='all'"):
        with steer(model, None, [VectorEdit("hook_embed", torch.zeros(64), positions="generated")]):
            pass
    assert_clean(model)


@pytest.mark.parametrize("arch", ["jumprelu", "topk", "standard"])
@pytest.mark.filterwarnings("error")
def test_a_forward_with_autograd_on_steers_as_one_without(model, tokens, arch):
    """A plain `model(tokens)` (autograd on) under `steer` gives the logits of the same forward
    under no_grad, builds no graph through the SAE, and passes the gradient to the layers before
    the hook. Before, a TopK SAE's read failed ("mm(): functions with out=... arguments don't
    support automatic differentiation") and a JumpReLU SAE's warned on every forward ("Converting a
    tensor with requires_grad=True to a scalar")."""
    sae = random_sae(model, arch, **({"k": 8} if arch == "topk" else {}))
    edits = ["5:clamp=3", "7:scale=2", "9:add=1@last"]
    with steer(model, sae, edits):
        want = logits(model, tokens)
        got = model(tokens, padding_side="left")
    assert got.requires_grad and torch.equal(got.detach(), want)
    model.zero_grad(set_to_none=True)
    sae.zero_grad(set_to_none=True)
    got[:, -1].logsumexp(-1).sum().backward()
    assert model.blocks[0].attn.W_Q.grad is not None and model.blocks[0].attn.W_Q.grad.abs().sum() > 0
    assert all(p.grad is None for p in sae.parameters())  # no graph through the SAE
    model.zero_grad(set_to_none=True)
    assert_clean(model)
