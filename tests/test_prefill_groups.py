"""The API's engine prefills rows that join in one step in groups of close prompt lengths
(`steering.lengthgroups`), on a tiny Qwen2 checkpoint loaded as users load it (a TransformerBridge)
with prompts of source code and prose:

- prompts of 1 to 90 tokens sent together were left padded to the longest in one prefill: about
  half of its positions were padding. Grouped, under a quarter are, and each row's tokens are still
  those of the row alone (log-probabilities within 1e-4).
- a long prompt is not left waiting while short ones keep coming: rows are taken oldest first, and
  only the rows taken in one step are grouped, so it is served in its turn (and the short rows
  taken with it do not pay for its length).
"""

from __future__ import annotations

import pytest

from steering.lengthgroups import PAD_SHARE, PAD_SLACK, prefill_groups

pytestmark = [pytest.mark.usefixtures("one_thread")]

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory, real_corpus):
    from helpers.real_models import save_real_model
    from saesteer.models import load_model

    path = save_real_model(tmp_path_factory.mktemp("prefill-groups") / "qwen2", "qwen2", real_corpus,
                           train_steps=0, vocab_size=512)
    return load_model(str(path), device="cpu")


def _sae(model):
    from helpers.steering_fixtures import random_sae

    return random_sae(model, "jumprelu", hook=HOOK, d_sae=64, seed=1)


def _steering(model, sae, edits):
    from steering.resolve import resolve_edits
    from steering.rowedits import RowEdit, RowSteering

    rs = resolve_edits(model, {"s": sae}, edits, chat_positions=True)
    return RowSteering([RowEdit("s", r.latent, r.op, r.value, r.positions, r.trigger, r.describe()) for r in rs], [])


def _prompts(model, docs, lengths):
    text = "\n".join(docs)  # code and prose
    ids = model.tokenizer(text)["input_ids"]
    assert len(ids) > max(lengths) + 40 * len(lengths)
    return [ids[40 * i: 40 * i + n] for i, n in enumerate(lengths)]


def test_groups_keep_every_row_once_in_order_and_bound_their_padding():
    lengths = [90, 1, 33, 2, 70, 5, 41, 77, 9, 30, 3, 88]
    groups = prefill_groups(list(range(len(lengths))), lambda i: lengths[i])
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert groups[0][0] == 0 and all(g == sorted(g) for g in groups)  # the oldest row's group first, rows in order
    for g in groups:
        positions = len(g) * max(lengths[i] for i in g)
        padding = positions - sum(lengths[i] for i in g)
        assert padding <= max(PAD_SHARE * positions, PAD_SLACK), g
    assert len(groups) < len(lengths)  # close lengths do share a forward pass
    assert prefill_groups([], len) == [] and prefill_groups(["abc"], len) == [["abc"]]


def test_mixed_length_prompts_sent_together_are_prefilled_in_groups_and_equal_each_alone(qwen2, real_corpus):
    from steering.engine import BatchEngine, Row
    from steering.sampling import SamplingParams

    model, sae = qwen2, _sae(qwen2)
    lengths = [90, 1, 33, 2, 70, 5, 41, 77, 9, 30]
    prompts = _prompts(model, real_corpus.test_docs, lengths)
    edits = [["3:add=20@0,2,-1"], None, ["5:add=30@prompt", "7:add=-20@generated"], None, ["9:clamp=25@last"]] * 2

    def rows():
        return [Row(p, SamplingParams(max_new_tokens=6, temperature=float(i % 2), seed=10 + i, logprobs=1),
                    _steering(model, sae, e) if e else None, tag=i)
                for i, (p, e) in enumerate(zip(prompts, edits))]

    def run(rows_):
        engine, out = BatchEngine(model, {"s": sae}), {}
        engine.add(rows_)
        while engine.busy:
            for ev in engine.step():
                ids, lps = out.setdefault(ev.tag, ([], []))
                if ev.token is not None:
                    ids.append(ev.token)
                    lps.append(ev.logprob)
        return out, engine

    together, engine = run(rows())
    one_batch = 1 - sum(lengths) / (len(lengths) * max(lengths))
    assert one_batch > 0.45  # the workload: one padded prefill would be about half padding
    assert engine.prefill_padding / engine.prefill_positions < 0.25
    for r in rows():
        alone, _ = run([r])
        assert together[r.tag][0] == alone[r.tag][0], r.tag
        assert max(abs(a - b) for a, b in zip(together[r.tag][1], alone[r.tag][1])) < 1e-4, r.tag


def test_a_long_prompt_is_served_in_its_turn_while_short_ones_keep_coming(qwen2, real_corpus):
    from steering.engine import BatchEngine, Row
    from steering.sampling import SamplingParams

    model, sae = qwen2, _sae(qwen2)
    long_ids, *shorts = _prompts(model, real_corpus.test_docs, [90] + [3, 4, 5, 6] * 6)
    engine = BatchEngine(model, {"s": sae}, max_rows=3)
    made = iter(range(1, 1000))

    def short() -> Row:
        i = next(made)
        return Row(shorts[i % len(shorts)], SamplingParams(max_new_tokens=3, temperature=0), tag=i)

    first_token: dict = {}
    engine.add([short() for _ in range(3)])  # the batch is full
    step = 0
    for step in range(40):
        if step == 1:
            engine.add([Row(long_ids, SamplingParams(max_new_tokens=3, temperature=0), tag="long")])
        engine.add([short(), short()])  # every step, more short prompts than the batch has room for
        for ev in engine.step():
            if ev.token is not None:
                first_token.setdefault(ev.tag, step)
        if "long" in first_token and step > first_token["long"] + 3:
            break
    assert "long" in first_token, "the long prompt never got in while short ones kept coming"
    # rows added after it (tags 6 on) got their first token no earlier than it did
    assert all(s >= first_token["long"] for t, s in first_token.items() if t != "long" and t > 5)
    # it joined with short rows and was prefilled apart from them: they paid no padding for its length
    assert engine.prefill_padding / engine.prefill_positions < 0.25


def test_a_row_whose_client_leaves_while_its_group_is_prefilled_is_cancelled():
    """A short and a long prompt joining in one step are two groups, prefilled one after the other;
    the long row's request is cancelled (its client left) during its own group's prefill, after the
    short group's rows are running: `cancel` must still find it (among the rows in their prefill)."""
    from helpers.steering_fixtures import tiny_model, torch_threads
    from steering.engine import BatchEngine, Row
    from steering.sampling import SamplingParams

    model = tiny_model()
    engine = BatchEngine(model)
    prefill, shapes = engine.runner.prefill, []

    def prefill_while_a_client_leaves(tokens, mask):
        shapes.append(tuple(tokens.shape))
        if len(shapes) == 2:  # the second group's prefill: its row's client leaves now
            engine.cancel("late")
        return prefill(tokens, mask)

    engine.runner.prefill = prefill_while_a_client_leaves
    ids = [(7 * i + 3) % model.cfg.d_vocab for i in range(50)]
    engine.add([Row(ids[:2], SamplingParams(max_new_tokens=10, temperature=0), tag="short", group="early"),
                Row(ids, SamplingParams(max_new_tokens=10, temperature=0), tag="long", group="late")])
    last = {}
    with torch_threads(1):
        while engine.busy:
            for ev in engine.step():
                if ev.finish_reason:
                    last[ev.tag] = ev
    assert shapes == [(1, 2), (1, 50)]  # two groups, the short one first
    # the prefill step's own tokens (its prefill's and its decode's), then no more
    assert last["long"].finish_reason == "cancelled" and len(last["long"].detail["token_ids"]) <= 2
    assert last["short"].finish_reason == "length" and len(last["short"].detail["token_ids"]) == 10


def test_an_hf_models_cache_layout_is_probed_once_per_engine(qwen2, real_corpus):
    """Whether a TransformerBridge model's prefill caches merge is asked once (a one-token prefill),
    not at every step that forms groups."""
    from steering.engine import BatchEngine, Row
    from steering.sampling import SamplingParams

    engine = BatchEngine(qwen2, {})
    prefill, shapes = engine.runner.prefill, []
    engine.runner.prefill = lambda tokens, mask: (shapes.append(tuple(tokens.shape)), prefill(tokens, mask))[1]
    short, long_ = _prompts(qwen2, real_corpus.test_docs, [3, 60])
    for _ in range(2):  # two requests' worth of rows, each a short and a long prompt: two groups
        engine.add([Row(p, SamplingParams(max_new_tokens=2, temperature=0)) for p in (short, long_)])
        while engine.busy:
            engine.step()
    assert shapes.count((1, 1)) == 1 and shapes.count((1, 3)) == shapes.count((1, 60)) == 2, shapes
