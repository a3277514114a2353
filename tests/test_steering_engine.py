"""The batched engine (steering.engine) against the eager paths: TransformerLens's own generate and
`steering.steer` (one row at a time), for every SAE architecture and op, with rows joining and
leaving a running batch; plus its parts: sampling, text pieces, chat prompts, presets."""

from __future__ import annotations

import pytest
import torch

from helpers.steering_fixtures import random_sae, tiny_model, torch_threads
from steering import GenerationConfig, generate, steer
from steering.engine import BatchEngine, Row
from steering.rowedits import RowEdit, RowSteering
from steering.sampling import SamplingParams
from steering.resolve import resolve_edits
from steering.spec import SteeringError

PROMPTS = ["the sea and the ship", "a tree", "the whale sees the harbor at the shore", "bread", "the"]
HOOK = "blocks.0.hook_resid_post"


def row_steering(model, sae, edits, stops=()):
    from steering.rowedits import StopTrigger

    rs = resolve_edits(model, {"s": sae}, edits, chat_positions=True) if edits else []
    return RowSteering([RowEdit("s", r.latent, r.op, r.value, r.positions, r.trigger, r.describe()) for r in rs],
                       [StopTrigger("s", f, t, f"{f}>{t}") for f, t in stops])


def run(engine, rows, stagger: int = 0):
    """Finish events by tag; with `stagger`, each row joins `stagger` steps after the previous one."""
    out = {}
    for r in rows:
        engine.add([r])
        for _ in range(stagger):
            for ev in engine.step():
                if ev.finish_reason:
                    out[ev.tag] = ev
    while engine.busy:
        for ev in engine.step():
            if ev.finish_reason:
                out[ev.tag] = ev
    return out


def greedy(n):
    return SamplingParams(max_new_tokens=n, temperature=0)


def eager(model, sae, edits, prompt, n):
    cfg = GenerationConfig(max_new_tokens=n, do_sample=False, stop_at_eos=False)
    if not edits:
        return generate(model, [prompt], cfg).new_tokens[0].tolist()
    with steer(model, sae, edits) as s:
        return s.generate([prompt], cfg).new_tokens[0].tolist()


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "standard"])
def test_batched_rows_with_their_own_edits_equal_the_eager_path(arch):
    model = tiny_model()
    sae = random_sae(model, arch, hook=HOOK, d_sae=128, seed=1)
    fire = sae.encode(model.run_with_cache(model.to_tokens(PROMPTS[0]), names_filter=HOOK)[1][HOOK])[0]
    on = int((fire > 0).sum(0).argmax())  # a latent that fires: clamp/scale/ablate change something
    cases = [[f"{on}:clamp=12"], [f"{on}:scale=4@prompt", "9:add=6@generated"], [f"{on}:ablate", "20:add=5@last"],
             [], [f"{on}:add=8@0,2,-1", f"31:clamp=3@{len(model.to_tokens(PROMPTS[4])[0]) + 2}"]]
    with torch_threads(1):
        def rows():
            return [Row(model.to_tokens(p)[0].tolist(), greedy(8), row_steering(model, sae, e) if e else None, tag=i)
                    for i, (p, e) in enumerate(zip(PROMPTS, cases))]
        together = run(BatchEngine(model, {"s": sae}), rows())  # one left-padded prefill for all
        got = run(BatchEngine(model, {"s": sae}, max_rows=3), rows(), stagger=2)  # joins mid-batch, waits for room
        for i, (p, e) in enumerate(zip(PROMPTS, cases)):
            want = eager(model, sae, e, p, 8)
            assert got[i].detail["token_ids"] == want, (arch, i, e)
            assert together[i].detail["token_ids"] == want, (arch, i, e)
    assert got[0].detail["token_ids"] != eager(model, sae, [], PROMPTS[0], 8)  # the edit mattered


def test_sampled_rows_do_not_depend_on_their_batch():
    model = tiny_model()
    sae = random_sae(model, "jumprelu", hook=HOOK, seed=2)
    params = [SamplingParams(max_new_tokens=10, temperature=t, top_p=p, top_k=k, seed=s, frequency_penalty=f)
              for t, p, k, s, f in [(1.0, 1.0, None, 1, 0.0), (0.7, 0.9, None, 2, 0.5), (1.3, 1.0, 5, 3, 0.0),
                                    (1.0, 0.5, 3, 4, 1.0)]]
    with torch_threads(1):
        def rows():
            return [Row(model.to_tokens(p)[0].tolist(), prm, row_steering(model, sae, ["5:add=3"]) if i % 2 else None,
                        tag=i) for i, (p, prm) in enumerate(zip(PROMPTS, params))]
        together = run(BatchEngine(model, {"s": sae}), rows())
        alone = {}
        for r in rows():
            alone.update(run(BatchEngine(model, {"s": sae}), [r]))
    for i in range(len(params)):
        assert together[i].detail["token_ids"] == alone[i].detail["token_ids"]
        assert together[i].detail["seed"] == params[i].seed
    assert len({tuple(e.detail["token_ids"]) for e in together.values()}) == len(params)


def test_rows_joining_and_leaving_reuse_the_readers_and_do_not_depend_on_their_batch():
    """Rows join and leave a running TopK batch at different steps (sampled, each its own edits):
    each row's tokens equal the row run alone, and a join whose latents already have columns
    builds no reader (the engine keeps each SAE's columns between batches); a row with a new
    latent builds one, and weights changed in place build a fresh one."""
    model = tiny_model()
    sae = random_sae(model, "topk", hook=HOOK, d_sae=128, k=8, seed=1)
    pre = sae.encode(model.run_with_cache(model.to_tokens(PROMPTS[2]), names_filter=HOOK)[1][HOOK])[0]
    a, b = (int(f) for f in (pre > 0).sum(0).topk(2).indices)  # latents that fire: the clamps change something
    latent_of = [a, b, a, b, a, b]

    def rows(latents, n_tokens=(9, 4, 7, 3, 8, 5)):
        return [Row(model.to_tokens(PROMPTS[i % len(PROMPTS)])[0].tolist(),
                    SamplingParams(max_new_tokens=n, temperature=1.0, seed=10 + i),
                    row_steering(model, sae, [f"{f}:clamp={4 + i}"]), tag=i)
                for i, (f, n) in enumerate(zip(latents, n_tokens))]

    with torch_threads(1):
        engine = BatchEngine(model, {"s": sae})
        got = run(engine, rows(latent_of), stagger=2)  # rows leave (3, 4, 5 tokens) while others join
        cols = engine.columns["s"]
        assert engine.steps > 10 and cols.latents == [a, b]
        assert cols.builds == 2 and cols.reader_builds == 2  # latent a, then b: one build each
        assert engine.editor_reuses >= 8 and engine.editor_builds <= 3  # joins and leaves reuse the tables
        run(engine, rows([b, a, b, a, b, a]), stagger=1)  # a new batch of the same latents: nothing rebuilt
        assert cols.builds == 2 and cols.reader_builds == 2
        alone = {}
        for r in rows(latent_of):
            alone.update(run(BatchEngine(model, {"s": sae}), [r]))
        for i in range(len(latent_of)):
            assert got[i].detail["token_ids"] == alone[i].detail["token_ids"], i
        busy = BatchEngine(model, {"s": sae})  # always busy, every row a new latent: unused columns are still dropped
        for i in range(40):
            busy.add([Row([1], SamplingParams(max_new_tokens=3, temperature=0), row_steering(model, sae, [f"{i}:add=1"]))])
            busy.step()
        assert busy.editor_reuses > 30 and busy.columns["s"].U <= 2 * 3 + busy.columns["s"].spare
        run(busy, [])  # drained: its hooks leave the (shared) model
        new = int((pre > 0).sum(0).topk(3).indices[2])
        run(engine, rows([a, new]), stagger=1)
        assert cols.builds == 3 and cols.latents == [a, b, new]
        with torch.no_grad():
            sae.W_enc[:, a] *= 2.0  # in place: the reader's copies are stale
        run(engine, rows([a]))
        assert cols.builds == 4 and cols.reader_builds == 4
        assert torch.equal(cols.reader.topk.W_DM[:, 0], sae.W_enc[:, a])
    assert len({tuple(e.detail["token_ids"]) for e in got.values()}) == len(latent_of)


def test_the_decode_editors_of_rows_leaving_and_joining_equal_rebuilt_ones():
    """When rows leave or join, the decode editors come from the old ones' table rows (no
    rebuild): at every step they equal editors built afresh for the running rows (tables, entries,
    flags), with two SAEs, unsteered rows, conditional edits, stops and offset positions, and a
    new latent (a rebuild) on the way."""
    import copy

    from steering.rowedits import BatchEditor, editors_for

    model = tiny_model()
    saes_ = {"s": random_sae(model, "topk", hook=HOOK, d_sae=128, k=8, seed=1),
             "j": random_sae(model, "jumprelu", hook=HOOK, d_sae=64, seed=2)}
    specs = [("s", ["5:clamp=4", "7:add=2@generated"], [(9, 50.0)]), (None, [], []), ("j", ["3:scale=2@prompt"], []),
             ("s", ["5:add=1@2,3,9"], []), ("j", ["8:clamp=1"], [(3, 90.0)]), ("s", ["11:ablate"], []),
             ("s", ["7:add=3"], [])]
    lengths = [9, 3, 6, 4, 8, 2, 5]

    def steering(name, edits, stops):
        if name is None:
            return None
        rs = row_steering(model, saes_[name], edits, stops)
        return RowSteering([RowEdit(name, e.latent, e.op, e.value, e.positions, e.trigger, e.label) for e in rs.edits],
                           [type(t)(name, t.latent, t.above, t.label) for t in rs.stops])

    rows = [Row(model.to_tokens(PROMPTS[i % 5])[0].tolist(), SamplingParams(max_new_tokens=n, temperature=1.0, seed=i),
                steering(*spec), tag=i) for i, (spec, n) in enumerate(zip(specs, lengths))]
    rows[1].steering = RowSteering([RowEdit("s", 7, "add", 1.0, "all", (5, 0.0), "if 5")])  # conditional
    tables, checked = BatchEditor._TABLES, 0
    with torch_threads(1):
        engine = BatchEngine(model, saes_)
        for r in rows:
            engine.add([r])
            for _ in range(2):
                engine.step()
                if engine._decode_editors is None or not engine.running:
                    continue
                fresh_columns = {n: copy.copy(c) for n, c in engine.columns.items()}
                for c in fresh_columns.values():
                    c.spare = 10**9  # the same columns: nothing dropped or added
                want = editors_for(saes_, [l.row.steering for l in engine.running], [l.layout for l in engine.running],
                                   fresh_columns)
                got = engine._decode_editors
                assert list(got) == list(want), engine.steps  # same SAEs, in the order their deltas are added
                for name, ed in got.items():
                    w = want[name]
                    assert ed.B == w.B == len(engine.running)
                    for t in tables:
                        assert torch.equal(getattr(ed, t), getattr(w, t)), (engine.steps, name, t)
                    for e in BatchEditor._ENTRIES:
                        assert getattr(ed, e) == getattr(w, e), (engine.steps, name, e)
                    assert [ed.conditional, ed.watches_stops, ed.c0_zero, ed.reads, ed.decode_covers_all,
                            ed.offset_rules] == [w.conditional, w.watches_stops, w.c0_zero, w.reads,
                                                 w.decode_covers_all, w.offset_rules]
                    checked += 1
        run(engine, [])
    assert checked > 10 and engine.editor_reuses > 8 and engine.editor_builds < engine.editor_reuses


def test_rows_leaving_make_one_index_tensor_for_the_cache_and_every_sae(monkeypatch):
    """When rows leave a running batch, the kept rows' index is made once (a copy from the host on
    a GPU) and serves the KV cache and every SAE's tables; before, each SAE made its own."""
    import steering.engine as engine_mod

    model = tiny_model()
    saes_ = {"s": random_sae(model, "topk", hook=HOOK, d_sae=128, k=8, seed=1),
             "j": random_sae(model, "jumprelu", hook=HOOK, d_sae=64, seed=2)}

    def steering(name, edit):
        rs = row_steering(model, saes_[name], [edit])
        return RowSteering([RowEdit(name, e.latent, e.op, e.value, e.positions, e.trigger, e.label) for e in rs.edits])

    rows = [Row(model.to_tokens(PROMPTS[i])[0].tolist(), greedy(n), steering(name, edit), tag=i)
            for i, (name, edit, n) in enumerate([("s", "5:clamp=4", 3), ("j", "3:scale=2", 5), ("s", "7:add=2", 7),
                                                 ("j", "8:clamp=1", 9), ("s", "9:ablate", 11)])]
    made, inside = [], []  # tensors made from lists while rows are dropped
    tensor, drop = torch.tensor, engine_mod.BatchEngine._drop_finished

    def counted_tensor(*a, **kw):
        if inside:
            made.append(a)
        return tensor(*a, **kw)

    def counted_drop(self):
        saes_before = len(self._decode_editors or {})
        inside.append(True)
        made.clear()
        try:
            drop(self)
        finally:
            inside.clear()
        if self.running and made:  # rows left, some stay: (rows kept, SAEs whose tables were cut, indices made)
            changes.append((len(self.running), saes_before, len(made)))

    changes: list[tuple[int, int, int]] = []
    monkeypatch.setattr(torch, "tensor", counted_tensor)
    monkeypatch.setattr(engine_mod.BatchEngine, "_drop_finished", counted_drop)
    with torch_threads(1):
        engine = BatchEngine(model, saes_)
        got = run(engine, rows)
    assert changes == [(4, 2, 1), (3, 2, 1), (2, 2, 1), (1, 2, 1)]  # two SAEs' tables cut, one index made
    assert engine.editor_reuses >= 3 and {ev.tag for ev in got.values()} == set(range(5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_low_precision_topk_sae_in_the_engine_reads_without_encoding_every_row_alone(dtype):
    """A bf16 / fp16 TopK SAE (a float32 model): rows in one batch equal each row alone, and the
    read decides most rows itself (before, every row that needed a latent was encoded alone)."""
    model = tiny_model()
    sae = random_sae(model, "topk", hook=HOOK, d_sae=512, k=8, seed=1).to(dtype)
    pre = sae.encode(model.run_with_cache(model.to_tokens(PROMPTS[2]), names_filter=HOOK)[1][HOOK].to(dtype))[0]
    fire = [int(f) for f in (pre > 0).sum(0).topk(4).indices]

    def rows():
        return [Row(model.to_tokens(p)[0].tolist(), SamplingParams(max_new_tokens=12, temperature=1.0, seed=i),
                    row_steering(model, sae, [f"{fire[i % 4]}:clamp={3 + i}", f"{(37 * i) % 512}:scale=0.5"]), tag=i)
                for i, p in enumerate(PROMPTS)]

    with torch_threads(1):
        engine = BatchEngine(model, {"s": sae})
        together = run(engine, rows(), stagger=1)
        alone = {}
        for r in rows():
            alone.update(run(BatchEngine(model, {"s": sae}), [r]))
    for i in range(len(PROMPTS)):
        assert together[i].detail["token_ids"] == alone[i].detail["token_ids"], i
    reader = engine.columns["s"].reader.topk
    assert reader.relative is not None and reader.counted_pairs > 0
    assert reader.alone_rows < reader.full_rows / 2


def test_stops_end_of_text_stop_strings_and_length():
    model = tiny_model()
    tok = model.tokenizer
    with torch_threads(1):
        free = run(BatchEngine(model), [Row(model.to_tokens("the sea")[0].tolist(), greedy(12), tag=0)])[0]
        ids = free.detail["token_ids"]
        assert free.finish_reason == "length" and len(ids) == 12
        # the 4th token as end-of-text: the text ends before it, and it is not counted
        eot = run(BatchEngine(model), [Row(model.to_tokens("the sea")[0].tolist(),
                                           SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=(ids[3],)),
                                           tag=0)])[0]
        assert eot.finish_reason == "stop" and eot.detail["token_ids"] == ids[: ids.index(ids[3])]
        word = tok.decode([ids[5]])
        from steering.generation import continuation_text

        text = continuation_text(tok, model.to_tokens("the sea")[0].tolist(), ids)  # reads on: " ..."
        for stream in (False, True):
            eng = BatchEngine(model)
            eng.add([Row(model.to_tokens("the sea")[0].tolist(), SamplingParams(max_new_tokens=12, temperature=0,
                                                                                 stop=(word,)), stream=stream, tag=0)])
            pieces, last = [], None
            while eng.busy:
                for ev in eng.step():
                    pieces.append(ev.text)
                    last = ev
            assert last.finish_reason == "stop" and last.detail["text"] == text[: text.index(word)]
            if stream:
                assert "".join(pieces) == last.detail["text"] and len([p for p in pieces if p]) > 1


def test_context_limit_and_cancel():
    model = tiny_model()  # n_ctx 64
    eng = BatchEngine(model)
    with pytest.raises(SteeringError, match="context"):
        eng.add([Row([1] * 60, greedy(8))])
    with torch_threads(1):
        eng.add([Row(model.to_tokens("the sea")[0].tolist(), greedy(40), group="g", tag=0),
                 Row(model.to_tokens("a tree")[0].tolist(), greedy(5), group="h", tag=1)])
        eng.step()
        eng.cancel("g")
        out = run(eng, [])
    assert out[0].finish_reason == "cancelled" and out[1].finish_reason == "length"
    assert len(out[1].detail["token_ids"]) == 5 and not eng.busy


def test_cancel_during_prefill_ends_the_rows_at_the_next_step():
    """`cancel` from another thread while rows are in their prefill (out of the waiting list, not yet
    running) used to find nothing: the rows ran to max_new_tokens for nobody."""
    model = tiny_model()
    eng = BatchEngine(model)
    prefill = eng.runner.prefill
    eng.runner.prefill = lambda *a: (eng.cancel("g"), prefill(*a))[1]  # the client leaves mid-prefill
    with torch_threads(1):
        eng.add([Row(model.to_tokens("the sea")[0].tolist(), greedy(40), group="g", tag=0)])
        out = run(eng, [])
    assert out[0].finish_reason == "cancelled" and len(out[0].detail["token_ids"]) <= 2 and not eng.busy  # the prefill step's own tokens


def test_bridge_model_batches_and_joins(tmp_path):
    from helpers.tiny_hf import save_tiny_gpt2
    from saesteer.models import load_model

    save_tiny_gpt2(tmp_path / "g")
    import saes

    with torch_threads(1):
        model = load_model(str(tmp_path / "g"))
        sae = saes.create_sae("jumprelu", 32, 64, generator=torch.Generator().manual_seed(0), metadata={"hook_name": HOOK})
        with torch.no_grad():
            sae.threshold.fill_(0.05)
        prompts = ["hello world there", "a", "the cat sat on the mat"]
        edits = [["3:clamp=30@generated"], [], ["7:add=9@0,1"]]
        rows = [Row(model.to_tokens(p)[0].tolist(), greedy(6), row_steering(model, sae, e) if e else None, tag=i)
                for i, (p, e) in enumerate(zip(prompts, edits))]
        got = run(BatchEngine(model, {"s": sae}), rows, stagger=1)
        for i, (p, e) in enumerate(zip(prompts, edits)):
            assert got[i].detail["token_ids"] == eager(model, sae, e, p, 6), i


# -- parts ---------------------------------------------------------------------------------------------


def test_text_pieces_hold_back_what_may_still_change():
    from helpers.tiny_model import make_tokenizer
    from steering.textstream import TextAssembler

    tok = make_tokenizer()
    ids = tok("the sea . a tree , the ship")["input_ids"]
    final = tok.decode(ids, skip_special_tokens=True)
    a = TextAssembler(tok)
    pieces = [a.push(i)[0] for i in ids] + [a.finish()]
    assert "".join(pieces) == final and not any(p.endswith(" ") for p in pieces[:-1])
    # a stop string spanning two tokens: nothing of it is ever emitted
    a = TextAssembler(tok, stop=["a tree"])
    pieces, stopped = [], False
    for i in ids:
        piece, stopped = a.push(i)
        pieces.append(piece)
        if stopped:
            break
    assert stopped and "".join(pieces) == final[: final.index("a tree")] and "a" not in "".join(pieces).split()


def test_chat_prompt_roles_and_turns():
    from helpers.tiny_model import make_chat_tokenizer
    from steering.chat import render_chat

    tok = make_chat_tokenizer()
    msgs = [{"role": "system", "content": "the ship"}, {"role": "user", "content": "a tree"},
            {"role": "assistant", "content": "the sea"}, {"role": "user", "content": "bread"}]
    chat = render_chat(tok, msgs)
    names = tok.convert_ids_to_tokens(chat.token_ids)
    assert chat.token_ids == tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)["input_ids"]
    for i, n in enumerate(names):
        if n.startswith("<|") and n != "<|end|>":
            role = n.strip("<|>")
            assert chat.roles[i] == role, (i, n)
    assert chat.turns[names.index("bread")] == 3 and chat.roles[-1] == "assistant" and chat.turns[-1] == 4
    # a template that rewrites earlier text when a message is added, where no message's turn can be
    # placed (each new message is written first): no roles, and role positions refused
    tmpl = "{{ bos_token }}{% for m in messages | reverse %}{{ m['content'] }} {% endfor %}"
    plain = render_chat(tok, msgs, chat_template=tmpl)
    assert plain.roles is None and "rewriting" in plain.why_no_roles
    from steering.rowedits import RowLayout, compile_positions

    layout = RowLayout(len(plain.token_ids), plain.roles, plain.turns, plain.n_messages, plain.why_no_roles)
    with pytest.raises(SteeringError, match="rewriting"):
        compile_positions("role:user", layout)
    # a role no message has is refused (as a turn beyond the last), naming the roles there; the
    # assistant's reply is always there to steer
    full = render_chat(tok, msgs)
    layout = RowLayout(len(full.token_ids), full.roles, full.turns, full.n_messages, full.why_no_roles)
    with pytest.raises(SteeringError, match=r"no 'tool' message \(its roles: system, user, assistant\)"):
        compile_positions("role:tool", layout)
    assert compile_positions("role:assistant", layout).every_generated
    assert any(compile_positions("role:user", layout).prompt)
    with pytest.raises(SteeringError, match="has no chat template"):
        from helpers.tiny_model import make_tokenizer

        render_chat(make_tokenizer(), msgs)


def test_role_positions_are_refused_outside_chat():
    model = tiny_model()
    sae = random_sae(model, "jumprelu", hook=HOOK)
    with pytest.raises(SteeringError, match="chat"):
        with steer(model, sae, ["3:add=1@role:user"]):
            pass


def test_stop_trigger_ends_the_row_after_the_token_it_fires_on():
    model = tiny_model()
    sae = random_sae(model, "jumprelu", hook=HOOK, seed=4)
    with torch_threads(1):
        prompt = model.to_tokens("the sea")[0].tolist()
        free = run(BatchEngine(model, {"s": sae}), [Row(prompt, greedy(20), tag=0)])[0].detail["token_ids"]
        _, cache = model.run_with_cache(torch.tensor([prompt + free]), names_filter=HOOK)
        acts = sae.encode(cache[HOOK][0])[len(prompt):]
        f = next(f for f in range(sae.d_sae) if 0 < int((acts[1:-1, f] > 0).sum()) and not bool(acts[0, f] > 0))
        first = int((acts[:, f] > 0).nonzero()[0])
        ev = run(BatchEngine(model, {"s": sae}), [Row(prompt, greedy(20), row_steering(model, sae, [], [(f, 0.0)]),
                                                      tag=0)])[0]
    assert ev.finish_reason == "stop" and ev.detail["token_ids"] == free[: first + 1]
    assert f"{f}>0" in ev.detail["stopped_by"]


def test_engine_hooks_act_only_in_its_own_forward_passes_and_leave_when_idle():
    from steering import hooks_attached

    model = tiny_model()
    sae = random_sae(model, "jumprelu", hook=HOOK, seed=5)
    toks = model.to_tokens(PROMPTS[:2], padding_side="left")
    with torch_threads(1):
        clean = model(toks, padding_side="left")
        eng = BatchEngine(model, {"s": sae})
        eng.add([Row(model.to_tokens("the sea")[0].tolist(), greedy(6), row_steering(model, sae, ["3:add=50"]), tag=0)])
        eng.step()
        assert eng.busy and hooks_attached(model)  # registered while busy ...
        assert torch.equal(model(toks, padding_side="left"), clean)  # ... but inert for anyone else
        with steer(model, sae, ["4:add=2"]) as s:  # a steer block in between keeps its own hooks, and ours survive it
            s.generate(PROMPTS[:1], GREEDY_2)
        out = run(eng, [])
        assert out[0].detail["token_ids"] == eager(model, sae, ["3:add=50"], "the sea", 6)
    assert not eng.busy and hooks_attached(model) == []


GREEDY_2 = GenerationConfig(max_new_tokens=2, do_sample=False, stop_at_eos=False)


def test_sampling_respects_top_k_top_p_bias_and_penalties():
    from steering.sampling import RowRandom, choose

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]]))
    draws = {"k2": set(), "p": set(), "all": set()}
    for seed in range(300):
        for key, prm in (("k2", SamplingParams(top_k=2, seed=seed)), ("p", SamplingParams(top_p=0.7, seed=seed)),
                         ("all", SamplingParams(seed=seed))):
            draws[key].add(choose(logits, [prm], [RowRandom(prm.seed)])[0].token)
    assert draws["k2"] == {0, 1} and draws["p"] == {0, 1} and draws["all"] == {0, 1, 2, 3}  # p=0 never drawn
    greedy = SamplingParams(temperature=0, logit_bias=((2, 5.0),), logprobs=2)
    c = choose(logits, [greedy], [RowRandom(0)])[0]
    assert c.token == 2 and c.logprob == pytest.approx(float(logits[0, 2]))  # log-probs are the model's, before bias
    assert [t for t, _ in c.top] == [0, 1]
    counts = torch.tensor([[3, 0, 0, 0, 0]])
    pen = SamplingParams(temperature=0, frequency_penalty=1.0)
    assert choose(logits, [pen], [RowRandom(0)], counts)[0].token == 1


def test_text_pieces_hold_back_an_incomplete_character():
    from helpers.tiny_hf import build_bpe_tokenizer
    from steering.textstream import TextAssembler

    tok = build_bpe_tokenizer()
    text = "the whale é ! 🐋 done"
    ids = tok(text)["input_ids"]
    a = TextAssembler(tok)
    pieces = [a.push(i)[0] for i in ids] + [a.finish()]
    assert "".join(pieces) == tok.decode(ids) and not any("\ufffd" in p for p in pieces)


@pytest.mark.parametrize("name", ["byte_level_bpe", "sentencepiece_bpe", "toy_words"])
def test_streamed_text_reads_on_from_the_prompt_as_continuation_text_does(name):
    """The API's text (pieces joined) is `continuation_text` of the prompt and new tokens, at every
    cut: it brings its own leading space or line break, so prompt + text is the whole decoding."""
    from steering.generation import continuation_text
    from steering.textstream import TextAssembler

    if name == "toy_words":
        from toyworld.tokenizer import load_tokenizer

        tok = load_tokenizer()
    else:
        from helpers import text_tokenizers

        tok = getattr(text_tokenizers, name)()
    texts = {"toy_words": "the sailor sees a whale . did the old owl fly ?"}.get(
        name, "def main(self):\n    return self.value  # the sea is deep, and the ship sails on")
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    spaced = 0
    for k in range(1, len(ids)):
        prompt = [tok.bos_token_id, *ids[:k]]
        a = TextAssembler(tok, context_ids=prompt)
        text = "".join([a.push(i)[0] for i in ids[k:]] + [a.finish()])
        assert text == continuation_text(tok, prompt, ids[k:]), (k, text)
        spaced += text[:1].isspace()
    assert spaced  # some cuts fall between words: the text starts with the space or line break


def test_token_offsets_come_when_the_text_settles_them():
    """A token's offset (completions' text_offset) is certain once the emitted text disagrees with the
    decoding before it or covers it: held-back line breaks (whitespace, the start of a stop string)
    get theirs with the text after them, each its own (they shared the emitted length: 4, 4, 4). A
    row abandoned early (cancelled) gets the rest against the text it emitted."""
    from helpers.text_tokenizers import byte_level_bpe
    from steering.textstream import TextAssembler

    tok = byte_level_bpe()
    ids = tok(" sat\n\nthe mat", add_special_tokens=False)["input_ids"]
    a = TextAssembler(tok, stop=["\n\nX"], offsets=True)
    certain = []
    for i in ids:
        a.push(i)
        certain.append(a.offsets())
    starts = [o for got in certain for o in got] + a.offsets(final=True)
    assert len(starts) == len(ids) and a.text == " sat\n\nthe mat"
    assert [a.text[x:y] for x, y in zip(starts, starts[1:] + [len(a.text)])] == [tok.decode([i]) for i in ids]
    newlines = [k for k, i in enumerate(ids) if tok.decode([i]) == "\n"]
    assert len(newlines) == 2 and certain[newlines[1]] == []  # held back until "the" settles both
    a = TextAssembler(tok, stop=["\n\nX"], offsets=True)
    early = []
    for i in ids[: newlines[1] + 1]:
        a.push(i)
        early += a.offsets()
    assert a.text == " sat" and early == starts[: newlines[1]]
    assert a.offsets(final=True) == [4]  # the second line break: the end of the text it never reached


def test_latent_columns_keep_their_place_and_drop_unused_ones_only_when_they_outnumber_the_used():
    from steering.latentcolumns import LatentColumns

    model = tiny_model()
    sae = random_sae(model, "topk", hook=HOOK, d_sae=128, seed=1)
    cols = LatentColumns(sae, spare=1)
    cols.cover([5, 9, 7])
    assert cols.latents == [5, 9, 7] and cols.builds == 1
    assert torch.equal(cols.W_dec_UD, sae.W_dec[[5, 9, 7]]) and torch.equal(cols.reader.ids_M, cols.ids_U)
    cols.cover([7, 5])  # a row left: its column stays (it may come back)
    cols.cover([3], drop_unused=False)  # joining rows only: the running rows' columns stay
    assert cols.latents == [5, 9, 7, 3] and cols.builds == 2 and cols.col[3] == 3
    cols.cover([9, 3])  # two unused, 2 used + 1 spare: kept
    assert cols.builds == 2
    cols.cover([3])  # three unused: dropped, the used keep their order
    assert cols.latents == [3] and cols.col == {3: 0} and cols.builds == 3


def test_rows_leaving_after_an_in_place_weight_change_rebuild_the_columns():
    """Rows only leaving reuse the editors, but not over weights changed in place since they were
    copied: the reader's gathered encoder columns and the decoder rows follow the new weights."""
    model = tiny_model()
    sae = random_sae(model, "topk", hook=HOOK, d_sae=128, k=8, seed=1)
    engine = BatchEngine(model, {"s": sae})
    engine.add([Row(model.to_tokens(PROMPTS[i])[0].tolist(), SamplingParams(max_new_tokens=n, temperature=0),
                    row_steering(model, sae, ["5:clamp=4"]), tag=i) for i, n in enumerate((4, 8, 8))])
    engine.step()
    assert len(engine.running) == 3
    with torch.no_grad():
        sae.W_enc.mul_(-1.0)
        sae.W_dec.mul_(3.0)
    while len(engine.running) == 3:  # until the first row leaves: its editors are derived, not built
        engine.step()
    engine.step()
    editor = engine._decode_editors["s"]
    u = editor.columns.col[5]
    assert torch.equal(editor.W_dec_UD[u], sae.W_dec[5])
    assert torch.equal(editor.reader.topk.W_DM[:, u], sae.W_enc[:, 5])
    run(engine, [])  # drained: its hooks leave the (shared) model
    assert not engine.busy


def test_low_precision_reads_are_not_trusted_while_cublas_may_sum_fp16_in_fp16():
    """fp16 products on CUDA summed in fp16 (allow_fp16_accumulation) break the premise of the
    relative tolerance: the reader must not assume a float32 sum there."""
    from steering.lowprecision import rounds_once_in_float32

    m = torch.backends.cuda.matmul
    if not hasattr(m, "allow_fp16_accumulation"):
        pytest.skip("this torch has no allow_fp16_accumulation")
    before = (m.allow_fp16_reduced_precision_reduction, m.allow_fp16_accumulation)
    try:
        m.allow_fp16_reduced_precision_reduction = False
        m.allow_fp16_accumulation = False
        assert rounds_once_in_float32(torch.float16, torch.device("cuda"))
        m.allow_fp16_accumulation = True
        assert not rounds_once_in_float32(torch.float16, torch.device("cuda"))
    finally:
        m.allow_fp16_reduced_precision_reduction, m.allow_fp16_accumulation = before
