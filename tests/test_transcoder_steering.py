"""Steering a transcoder latent on a tiny TransformerLens model: the edit reads the latent at the input
hook and changes the target hook's output by (edited - original latent) x decoder row, at the chosen
positions only; everything that runs before the target (the input hook included) is unchanged.
The feature stage reads a transcoder's latents from its input hook."""

import pytest
import torch

import saes
from steering import SteeringError, current_activations, hooks_attached, steer

pytestmark = [pytest.mark.usefixtures("one_thread")]

H_IN = "blocks.0.ln2.hook_normalized"
H_OUT = "blocks.0.hook_mlp_out"
BEFORE = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.0.hook_resid_mid", H_IN]


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def tokens(model):
    return model.to_tokens(["the ship sails over the sea today", "a tree"], padding_side="left")


def transcoder(arch="jumprelu", skip=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    kw = {"k": 4} if arch == "topk" else {}
    sae = saes.create_sae(arch, 32, 64, generator=g, d_out=32, skip_connection=skip, apply_b_dec_to_input=False,
                          metadata={"hook_name": H_IN, "hook_name_out": H_OUT}, **kw)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.5, generator=g)
        if skip:
            sae.W_skip.normal_(0, 0.1, generator=g)
    return sae


def run(model, tokens):
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, padding_side="left")
    return logits, cache


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_edit_changes_the_target_by_the_decoded_latent_change_only(model, tokens, arch):
    sae = transcoder(arch)
    clean_logits, clean = run(model, tokens)
    x_in = clean[H_IN]  # [B, S, 32]
    latent = int(sae.encode(x_in.reshape(-1, 32)).gt(0).sum(0).argmax())  # a latent that fires somewhere
    original = current_activations(sae, x_in, [latent])[..., 0]  # [B, S], read at the input hook
    assert bool((original > 0).any())
    with steer(model, sae, [f"{latent}:clamp=5"]):
        steered_logits, steered = run(model, tokens)
    assert hooks_attached(model) == []
    real = ((tokens != model.tokenizer.pad_token_id).cumsum(1) > 0)[..., None]  # left padding is never edited
    expected = clean[H_OUT] + real * (5.0 - original)[..., None] * sae.W_dec[latent].detach()
    torch.testing.assert_close(steered[H_OUT], expected, rtol=1e-5, atol=1e-5)
    for hook in BEFORE:  # nothing before the target moves, the input hook included
        assert torch.equal(steered[hook], clean[hook]), hook
    assert not torch.equal(steered_logits, clean_logits)  # and the change flows on


def test_edit_lands_at_its_positions_only(model, tokens):
    sae = transcoder()
    _, clean = run(model, tokens)
    with steer(model, sae, ["7:add=2@-1"]):  # the last position of every row
        _, steered = run(model, tokens)
    diff = (steered[H_OUT] - clean[H_OUT]).norm(dim=-1)  # [B, S]
    assert bool((diff[:, :-1] == 0).all())
    assert bool((diff[:, -1] > 0).all())
    torch.testing.assert_close(steered[H_OUT][:, -1] - clean[H_OUT][:, -1],
                               2.0 * sae.W_dec[7].detach().expand(tokens.shape[0], -1), rtol=1e-5, atol=1e-5)


def test_no_op_edit_leaves_everything_identical(model, tokens):
    clean_logits, _ = run(model, tokens)
    with steer(model, transcoder(), ["3:add=0"]):
        logits, _ = run(model, tokens)
    assert torch.equal(logits, clean_logits)


def test_a_transcoder_for_another_pair_is_refused(model):
    sae = transcoder()
    sae.cfg.metadata["hook_name_out"] = "blocks.0.hook_resid_pre"  # runs before the input
    with pytest.raises(SteeringError, match="runs before"):
        with steer(model, sae, ["3:add=1"]):
            pass
    del sae.cfg.metadata["hook_name_out"]
    with pytest.raises(SteeringError, match="hook_name_out"):
        with steer(model, sae, ["3:add=1"]):
            pass
    assert hooks_attached(model) == []


def test_features_on_text_reads_the_input_hook(model):
    from features.text import features_on_text, hook_activations

    sae = transcoder()
    res = features_on_text(model, sae, "the ship sails", top_n=64)
    toks = model.to_tokens("the ship sails")
    want = sae.encode(hook_activations(model, H_IN, toks)[0])
    assert res.hook_name == H_IN
    torch.testing.assert_close(res.acts_SF, want.detach(), rtol=1e-5, atol=1e-6)


def test_feature_store_of_a_transcoder_counts_its_input_hook_latents(model, tmp_path):
    """The store's statistics are the transcoder's latents on the input hook's cached rows (a pair cache)."""
    from features.build import build_feature_store
    from features.config import BuildConfig
    from features.source import CacheSource
    from features.store import FeatureStore
    from helpers.tiny_model import write_corpus
    from training.cache import build_cache
    from training.cache_config import CacheConfig
    from training.shardset import all_rows
    from training.text import TextConfig

    write_corpus(tmp_path / "corpus", n_docs=20, seed=4)
    cfg = CacheConfig(out=str(tmp_path / "cache"), hooks=[H_IN, H_OUT], dtype="fp32", shard_contexts=8, batch_size=8)
    build_cache(model, TextConfig(dataset=str(tmp_path / "corpus"), context_length=16), cfg, progress=False, log=None)
    sae = transcoder()
    build_feature_store(tmp_path / "f.db", sae, CacheSource(tmp_path / "cache", H_IN), BuildConfig(), model=model,
                        progress=False)
    x, _ = all_rows(tmp_path / "cache", H_IN)
    fires = (sae.encode(x) > 0).sum(0)
    assert int(fires.sum()) > 0
    with FeatureStore.open(tmp_path / "f.db") as store:
        for latent in range(64):
            assert store.feature(latent).stats.n_fires == int(fires[latent])


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_batched_engine_steers_a_transcoder_as_steer_does(model, arch):
    """The batched engine (API, web playground) captures the transcoder's input and edits its target:
    greedy rows with their own edits, in one batch and joining mid-batch, equal `steer()` one at a time."""
    from steering import GenerationConfig
    from steering.engine import BatchEngine, Row
    from steering.rowedits import RowEdit, RowSteering
    from steering.sampling import SamplingParams
    from steering.resolve import resolve_edits

    sae = transcoder(arch, seed=2)
    prompts = ["the sea and the ship", "a tree", "the whale sees the harbor"]
    fire = sae.encode(model.run_with_cache(model.to_tokens(prompts[0]), names_filter=H_IN)[1][H_IN])[0]
    on = int((fire > 0).sum(0).argmax())
    cases = [[f"{on}:clamp=9"], [f"{on}:scale=3@prompt", "5:add=4@generated"], []]

    def rows():
        out = []
        for i, (p, e) in enumerate(zip(prompts, cases)):
            rs = resolve_edits(model, {"t": sae}, e, chat_positions=True) if e else []
            st = RowSteering([RowEdit("t", r.latent, r.op, r.value, r.positions, r.trigger, r.describe()) for r in rs], [])
            out.append(Row(model.to_tokens(p)[0].tolist(), SamplingParams(max_new_tokens=6, temperature=0),
                           st if e else None, tag=i))
        return out

    def run(engine, rs, stagger=0):
        done = {}
        for r in rs:
            engine.add([r])
            for _ in range(stagger):
                done.update({ev.tag: ev for ev in engine.step() if ev.finish_reason})
        while engine.busy:
            done.update({ev.tag: ev for ev in engine.step() if ev.finish_reason})
        return done

    cfg = GenerationConfig(max_new_tokens=6, do_sample=False, stop_at_eos=False)
    together = run(BatchEngine(model, {"t": sae}), rows())
    joined = run(BatchEngine(model, {"t": sae}, max_rows=2), rows(), stagger=2)
    for i, (p, e) in enumerate(zip(prompts, cases)):
        if e:
            with steer(model, sae, e) as s:
                want = s.generate([p], cfg).new_tokens[0].tolist()
        else:
            from steering import generate

            want = generate(model, [p], cfg).new_tokens[0].tolist()
        assert together[i].detail["token_ids"] == want, (i, e)
        assert joined[i].detail["token_ids"] == want, (i, e)
    from steering import generate

    assert want is not None and together[0].detail["token_ids"] != generate(model, [prompts[0]], cfg).new_tokens[0].tolist()
    assert hooks_attached(model) == []
