"""The TopK exact read (steering.topk_read): every path equals its eager reference exactly, and
steered generation with it equals steered generation with the reference (tokens and edited
activations), across ops, positions, rows with different edits and both paths of the size rule."""

from __future__ import annotations

import pytest
import torch

import saes
from helpers.steering_fixtures import PROMPTS, random_sae, tiny_model, torch_threads
from steering.topk_read import TopKCandidates, TopKReader


def topk_sae(tie: str, d_in: int = 16, d_sae: int = 256, k: int = 6, seed: int = 3):
    """A random TopK SAE with ties: latents 40 and 41 identical ("pair": an exact tie), or latents
    40..47 equal up to a few units in the last place and shifted to sit at the k-th place on about
    half the rows ("group": more near-tied latents than places left, ordered by rounding alone)."""
    g = torch.Generator().manual_seed(seed)
    sae = saes.create_sae("topk", d_in, d_sae, k=k, generator=g)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2, generator=g)
        sae.b_dec.normal_(0, 0.1, generator=g)
        last = 41 if tie == "pair" else 47
        for j in range(41, last + 1):
            ulps = 0 if tie == "pair" else (-1) ** j * (j - 40) // 2  # 0, 1, -1, 2, -2, ...: rounding orders them
            sae.W_enc[:, j] = sae.W_enc[:, 40] * (1 + ulps * torch.finfo(torch.float32).eps)
            sae.b_enc[j] = sae.b_enc[40]
        if tie == "group":
            pre = sae.pre_activations(inputs(200, d_in, seed=11))
            sae.b_enc[40:48] += float((pre.topk(k, dim=1).values[:, -1] - pre[:, 40]).median())
    return sae


def inputs(n: int, d: int = 16, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def assert_rows_alone(got: torch.Tensor, sae, x: torch.Tensor, ids: torch.Tensor, need: torch.Tensor, where=None) -> None:
    """The contract of a read with a need mask: at the needed pairs, which latents are active is
    exactly what the SAE's encode of each row alone says, and the values are within rounding."""
    want = torch.cat([sae.encode(x[r : r + 1]) for r in range(x.shape[0])])[:, ids]
    assert torch.equal(got[need] != 0, want[need] != 0), where
    torch.testing.assert_close(got[need], want[need], rtol=1e-5, atol=1e-4, msg=lambda m: f"{where}: {m}")


@pytest.mark.parametrize("tie", ["pair", "group"])
@pytest.mark.parametrize("n_read", [1, 2, 5])
def test_every_path_of_the_topk_read_equals_the_reference(tie, n_read):
    sae = topk_sae(tie)
    x = inputs(600)
    pre = sae.pre_activations(x)
    often = int((sae.encode(x) != 0).sum(0).argmax())
    # the latent most often exactly k-th: the bound is tested at its edge
    at_k = int(pre.topk(sae.cfg.k, dim=1).indices[:, -1].bincount(minlength=sae.d_sae)[48:].argmax()) + 48
    ids = torch.tensor({1: [at_k], 2: [40, at_k], 5: [40, at_k, often, 41, 44]}[n_read])
    reader = TopKReader(sae, ids, n_candidates=128)  # half the latents: most rows' top k are candidates
    reader.cands.learn_rows = 120

    def check(lo: int, hi: int) -> None:
        got = reader(x[lo:hi])
        assert torch.equal(got, reader.reference(x[lo:hi])), (lo, hi)
        assert torch.equal(got, sae.encode(x[lo:hi])[:, ids])

    with torch.no_grad():
        for lo in range(0, 120, 40):  # young candidate set: the full path, its top k teaches the set
            check(lo, lo + 40)
        assert not reader.cands.young and reader.bound_pays(8)
        counts = (reader.full_rows, reader.bound_hits)
        for size in (1, 3, 8, 40):  # the bound path, the full path where it leaves a row open
            for lo in range(120, 360, size * 4):
                check(lo, lo + size)
        assert reader.bound_hits > counts[1] and reader.full_rows > counts[0]
        reader.min_bound_macs = 10**12  # the size rule sends every call to the full path
        assert not reader.bound_pays(8)
        hits = reader.bound_hits
        for lo in range(360, 600, 8):
            check(lo, lo + 8)
        assert reader.bound_hits == hits
    assert int((sae.encode(x)[:, ids] != 0).sum()) > 0  # the latents do fire


@pytest.mark.parametrize("tie", ["pair", "group"])
def test_the_one_latent_bound_equals_the_reference_next_to_near_tied_latents(tie):
    """One latent read (steer's usual edit): the bound compares the candidates' differences from
    it, with the sum of three tolerances; each of the near-tied latents 40..47 (and two others)
    read alone, so candidates sit within rounding of the latent read. A bound without its
    tolerance (d_c > 0) gives wrong zeros here."""
    sae = topk_sae(tie, seed=4)
    x = inputs(1200, seed=6)
    hits = 0
    with torch.no_grad():
        for latent in [*range(40, 48), 60, 100]:
            reader = TopKReader(sae, torch.tensor([latent]), n_candidates=128)
            reader.cands.learn_rows = 120
            reader(x[:120])
            reader.min_bound_rate = -1.0  # try the bound on every call
            for lo in range(120, 1200, 8):
                got = reader(x[lo : lo + 8])
                assert torch.equal(got, reader.reference(x[lo : lo + 8])), (latent, lo)
            hits += reader.bound_hits
    assert hits > 0


def test_a_bound_that_rarely_settles_is_skipped_and_tried_again():
    """A busy latent: the bound fails on most calls, so the reader skips it (full path alone) and
    retries it once every `retry_every` calls; once the latent goes quiet the retries settle and
    the bound is used again. Every call equals the reference."""
    sae = topk_sae("pair")
    x = inputs(3000, seed=7)
    with torch.no_grad():
        acts = sae.encode(x)
        busy = int((acts != 0).sum(0).argmax())
        fires = acts[:, busy] != 0
    busy_rows, quiet_rows = x[fires], x[~fires]
    reader = TopKReader(sae, torch.tensor([busy]), n_candidates=128)
    reader.cands.learn_rows = 120

    def check(rows):
        got = reader(rows)
        assert torch.equal(got, reader.reference(rows))

    with torch.no_grad():
        check(x[:120])
        for lo in range(0, 8 * 30, 8):  # every call has a firing row: the bound cannot settle any
            check(busy_rows[lo : lo + 8])
        assert reader.bound_rate < reader.min_bound_rate and reader.bound_skips > 0
        skips, hits = reader.bound_skips, reader.bound_hits
        for lo in range(0, 8 * 60, 8):  # quiet rows: the retries settle, and the bound is back
            check(quiet_rows[lo : lo + 8])
        assert reader.bound_hits > hits and reader.bound_rate >= reader.min_bound_rate
        assert reader.bound_skips < skips + 60


@pytest.mark.parametrize("n_read", [2, 6])
def test_a_read_of_the_needed_pairs_only_equals_the_reference_there(n_read):
    """Rows that need some of the latents only (the batched engine: each row its own edits), read
    as if alone; with more latents than `count_latents` the bound counts the needed pairs alone."""
    sae = topk_sae("group")
    x = inputs(300)
    pre = sae.pre_activations(x)
    at_k = int(pre.topk(sae.cfg.k, dim=1).indices[:, -1].bincount(minlength=sae.d_sae)[48:].argmax())
    often = (sae.encode(x) != 0).sum(0)
    often[[40, at_k + 48]] = -1
    ids = torch.tensor([40, at_k + 48] + often.topk(n_read - 2).indices.tolist())
    reader = TopKReader(sae, ids, n_candidates=128)
    reader.cands.learn_rows = 100
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        reader(x[:100])
        for lo in range(100, 300, 2):
            need = torch.rand(2, n_read, generator=g) < 0.4
            assert_rows_alone(reader(x[lo : lo + 2], need), sae, x[lo : lo + 2], ids, need, lo)
    assert reader.bound_hits > 0 and reader.full_rows > 100


@pytest.mark.parametrize("tie", ["pair", "group"])
def test_a_read_of_every_row_by_rows_alone_equals_the_reference_there(tie):
    """More latents than `count_latents`, a few needed per row (the batched engine's decode and
    prefill), no bound: every row that needs a latent is computed, its needed pairs counted;
    near ties at a needed latent's k-th place fall back on the SAE's encode of the row alone.
    Random need masks, one pair per row among them."""
    sae = topk_sae(tie)
    x = inputs(400)
    pre = sae.pre_activations(x)
    at_k = int(pre.topk(sae.cfg.k, dim=1).indices[:, -1].bincount(minlength=sae.d_sae)[48:].argmax()) + 48
    ids = torch.tensor([40, 41, 44, at_k, 7])
    reader = TopKReader(sae, ids, n_candidates=128)
    reader.cands.learn_rows = 100
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        reader(x[:100])
        assert not reader.cands.young
        reader.min_bound_macs = 10**12  # every call takes the full path
        for i, lo in enumerate(range(100, 400, 6)):
            if i % 3 == 0:  # one pair per row (a clamp per client)
                need = torch.nn.functional.one_hot(torch.randint(0, 5, (6,), generator=g), 5).bool()
            else:
                need = torch.rand(6, 5, generator=g) < (0.25 if i % 3 == 1 else 0.6)
            assert_rows_alone(reader(x[lo : lo + 6], need), sae, x[lo : lo + 6], ids, need, lo)
    assert reader.counted_pairs > 0 and reader.bound_hits == 0
    assert int((sae.encode(x[100:])[:, ids] != 0).sum()) > 0


def test_a_read_by_rows_alone_decides_near_ties_at_the_kth_place_by_the_row_alone(monkeypatch):
    """The batched engine's read (a need mask): latents 40..47 tie within rounding at the k-th
    place on about half the rows, so the count over the open rows' own product cannot decide them
    and the SAE's encode of the row alone must (a fallback that guessed instead gives wrong on/off
    there). Batches of 8 rows, one needed latent each (a clamp per client), with the bound on: some
    rows settled by it in calls that leave others open. On/off equal the row alone's encode, values
    within rounding, whichever rows share the call."""
    sae = topk_sae("group", seed=4)
    x = inputs(1000, seed=8)
    ids = torch.tensor([*range(40, 48), 3, 100])
    reader = TopKReader(sae, ids, n_candidates=128)
    reader.cands.learn_rows = 100
    reader.min_bound_rate = -1.0  # try the bound on every call
    open_rows = reader.open_rows
    partial = []

    def spy(x_ND, need_NM=None):
        rows = open_rows(x_ND, need_NM)
        partial.append(0 < len(rows) < x_ND.shape[0])
        return rows

    monkeypatch.setattr(reader, "open_rows", spy)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        reader(x[:100], torch.ones(100, ids.numel(), dtype=torch.bool))
        assert not reader.cands.young
        for lo in range(100, 996, 8):
            need = torch.nn.functional.one_hot(torch.randint(0, ids.numel(), (8,), generator=g), ids.numel()).bool()
            assert_rows_alone(reader(x[lo : lo + 8], need), sae, x[lo : lo + 8], ids, need, lo)
    assert reader.alone_rows > 0 and reader.bound_hits > 0 and any(partial)
    tied = (sae.encode(x)[:, 40:48] != 0).sum(1)
    assert bool(((tied > 0) & (tied < 8)).any())  # the tie is real: the k-th place splits the group


def test_candidates_are_shared_per_sae_and_stop_learning_when_mature():
    sae = topk_sae("pair")
    c = TopKCandidates.of(sae)
    assert TopKCandidates.of(sae) is c and c.young
    c.learn_rows = 50
    with torch.no_grad():
        reader = TopKReader(sae, torch.tensor([3]))
        reader(inputs(60))
    assert not c.young and c.learned_rows == 60
    with torch.no_grad():
        TopKReader(sae, torch.tensor([3]))(inputs(100, seed=9))
    assert c.learned_rows == 60  # a mature set is not taught again (no top-k paid for it)


# -------------------------------------------------------------- steered generation, fast vs reference
HOOK = "blocks.0.hook_resid_post"
CASES = [  # {B}: the latent that fires most on the prompts, {E}: the one most often last in the top k, {Q}: a silent one
    ["{B}:clamp=6"], ["{E}:scale=3@generated"], ["{B}:ablate@prompt", "{E}:clamp=4"],
    ["{B}:ablate@0,2,-1", "{Q}:add=4@generated"], ["{Q}:add=5?{B}>0.2"], ["{E}:clamp=0@last", "{Q}:clamp=2"],
]


def _record_edits(monkeypatch, seen: list) -> None:
    """Record every activation the steering hooks hand on (edited or not), `steer`'s and the engine's."""
    import steering.engine as engine
    import steering.session as session

    hook_call, apply_editors = session._HookFn.__call__, engine._apply_editors

    def recorded_hook(self, x, hook=None):
        out = hook_call(self, x, hook)
        seen.append((x if out is None else out).detach().clone())
        return out

    def recorded_apply(editors, x, *rest):
        out = apply_editors(editors, x, *rest)
        seen.append(out.detach().clone())
        return out

    monkeypatch.setattr(session._HookFn, "__call__", recorded_hook)
    monkeypatch.setattr(engine, "_apply_editors", recorded_apply)


@pytest.mark.parametrize("path", ["bound", "full"])
def test_steered_generation_with_the_topk_read_equals_the_reference(monkeypatch, path):
    from steering import GenerationConfig, steer
    from steering.engine import BatchEngine, Row
    from steering.rowedits import RowEdit, RowSteering
    from steering.sampling import SamplingParams
    from steering.session import resolve_edits

    model = tiny_model()
    sae = random_sae(model, "topk", hook=HOOK, d_sae=512, k=8, seed=1)
    TopKCandidates.of(sae).learn_rows = 16  # mature after the first prefill: later calls take the bound path
    readers: list[TopKReader] = []
    init = TopKReader.__init__

    def counting_init(self, *a, **kw):
        init(self, *a, **kw)
        readers.append(self)

    monkeypatch.setattr(TopKReader, "__init__", counting_init)
    if path == "full":  # the size rule's other side
        monkeypatch.setattr(TopKReader, "bound_pays", lambda self, n_rows: False)
    with torch.no_grad():
        x = model.run_with_cache(model.to_tokens(PROMPTS, padding_side="left"), names_filter=HOOK)[1][HOOK]
        pre = sae.pre_activations(x.reshape(-1, x.shape[-1]))
    top = pre.topk(sae.cfg.k, dim=1).indices
    busy, edge = (top[:, j:].flatten().bincount(minlength=sae.d_sae) for j in (0, -3))
    edge[busy.argmax()] = 0
    fill = {"B": int(busy.argmax()), "E": int(edge.argmax()), "Q": int(pre.amax(0).argmin())}
    cases = [[e.format(**fill) for e in c] for c in CASES]
    greedy = GenerationConfig(max_new_tokens=6, do_sample=False, stop_at_eos=False)

    def generations():
        """Every case through `steer` (all prompts, left padded), then every case as its own row of one batch."""
        seen: list = []
        with monkeypatch.context() as m:
            _record_edits(m, seen)
            out = []
            for edits in cases:
                with steer(model, sae, edits) as s:
                    out.append(s.generate(PROMPTS, greedy).new_tokens.tolist())
            engine = BatchEngine(model, {"s": sae})
            rows = []
            for i, edits in enumerate(cases):
                rs = resolve_edits(model, {"s": sae}, edits)
                steering = RowSteering([RowEdit("s", r.latent, r.op, r.value, r.positions, r.trigger) for r in rs])
                rows.append(Row(model.to_tokens(PROMPTS[i % len(PROMPTS)])[0].tolist(),
                                SamplingParams(max_new_tokens=6, temperature=0), steering, tag=i))
            engine.add(rows)
            done = {}
            while engine.busy:
                done.update({ev.tag: ev.detail["token_ids"] for ev in engine.step() if ev.finish_reason})
            out.append([done[i] for i in range(len(cases))])
        return out, seen

    with torch_threads(1):
        fast, fast_seen = generations()
        with monkeypatch.context() as m:
            m.setattr(TopKReader, "read", TopKReader.reference)
            ref, ref_seen = generations()
            base = [steer_free(model, PROMPTS, greedy)]
    assert fast == ref
    assert len(fast_seen) == len(ref_seen) and all(torch.equal(a, b) for a, b in zip(fast_seen, ref_seen))
    assert any(tokens != base[0] for tokens in fast[:-1])  # the edits changed the text
    full = sum(r.full_rows for r in readers)
    hits = sum(r.bound_hits for r in readers)
    assert full > 0 and (hits > 0) == (path == "bound")


def steer_free(model, prompts, cfg):
    from steering import generate

    return generate(model, prompts, cfg).new_tokens.tolist()


def test_candidates_are_rebuilt_when_the_encoder_changes_in_place():
    sae = topk_sae("pair")
    c = TopKCandidates.of(sae)
    with torch.no_grad():
        sae.b_dec.add_(0.5)
    c2 = TopKCandidates.of(sae)
    assert c2 is not c and torch.equal(c2.b_dec_D, sae.b_dec.detach())
    assert TopKCandidates.of(sae) is c2


def test_an_edit_that_changes_nothing_leaves_the_models_activation_untouched(monkeypatch):
    """An all-positions edit that changes nothing (an ablation the bound proves off) hands the
    activation back as it is; a later edit at some positions must then write into a copy, not into
    the tensor the model (and any hook before ours, e.g. a cache) holds."""
    import steering.session as session
    from steering import steer

    model = tiny_model()
    sae = random_sae(model, "topk", hook=HOOK, d_sae=512, k=8, seed=1)
    TopKCandidates.of(sae).learn_rows = 1
    tokens = model.to_tokens(PROMPTS[2])  # one prompt, no padding: "all" is every position
    call = session._HookFn.__call__
    untouched = []

    def spy(self, x, hook=None):
        before = x.clone()
        out = call(self, x, hook)
        untouched.append(torch.equal(x, before))
        return out

    monkeypatch.setattr(session._HookFn, "__call__", spy)
    with torch.no_grad():
        x = model.run_with_cache(tokens, names_filter=HOOK)[1][HOOK]
        quiet = int(sae.pre_activations(x[0]).amax(0).argmin())
        with steer(model, sae, [f"{quiet}:ablate", f"{(quiet + 1) % 512}:add=3@0,2"]):
            model(tokens)  # the young candidate set learns from the full path
            model(tokens)  # now the bound settles the ablation: nothing to change there
    assert untouched == [True, True]


@pytest.mark.parametrize("case", ["slice", "indices", "transcoder", "transcoder-indices"])
def test_an_edit_that_changes_nothing_skips_its_product_at_any_positions_and_for_transcoders(monkeypatch, case):
    """Where the bound proves the edited latent off, an ablation changes nothing: the hook hands the
    activation back (None) at a slice of positions, at listed positions and for a transcoder, as it
    does for all positions (no copy, no zero product added)."""
    import steering.session as session
    from steering import steer

    model = tiny_model()
    if case.startswith("transcoder"):
        g = torch.Generator().manual_seed(2)
        sae = saes.create_sae("topk", 64, 512, k=8, d_out=64, generator=g, apply_b_dec_to_input=False,
                              metadata={"hook_name": "blocks.0.ln2.hook_normalized", "hook_name_out": "blocks.0.hook_mlp_out"})
        read_at = "blocks.0.ln2.hook_normalized"
    else:
        sae = random_sae(model, "topk", hook=HOOK, d_sae=512, k=8, seed=1)
        read_at = HOOK
    TopKCandidates.of(sae).learn_rows = 1
    tokens = model.to_tokens(PROMPTS[2])  # one prompt, no padding
    positions = {"slice": "generated", "indices": "0,2", "transcoder": "all", "transcoder-indices": "0,2"}[case]
    call = session._HookFn.__call__
    returned = []

    def spy(self, x, hook=None):
        before = x.clone()
        out = call(self, x, hook)
        returned.append((out, torch.equal(x, before)))
        return out

    monkeypatch.setattr(session._HookFn, "__call__", spy)
    with torch.no_grad():
        x = model.run_with_cache(tokens, names_filter=read_at)[1][read_at]
        quiet = int(sae.pre_activations(x[0]).amax(0).argmin())
        with steer(model, sae, [f"{quiet}:ablate@{positions}"]) as s, s.prompt_length(3):  # "generated": positions 3..
            model(tokens)  # the young candidate set learns from the full path
            returned.clear()
            model(tokens)  # now the bound settles the ablation: nothing to change
    assert [(out is None, same) for out, same in returned] == [(True, True)]


def test_the_batched_editor_skips_an_edit_that_changes_nothing():
    """The engine's per-row editor: scale / ablate of latents the bound proves off change nothing
    (None, no product); a clamp of the same latent still writes its value."""
    from steering.rowedits import BatchEditor, RowEdit, RowLayout, RowSteering

    model = tiny_model()
    sae = random_sae(model, "topk", hook=HOOK, d_sae=512, k=8, seed=1)
    TopKCandidates.of(sae).learn_rows = 1
    with torch.no_grad():
        x = model.run_with_cache(model.to_tokens(PROMPTS[2]), names_filter=HOOK)[1][HOOK][0]  # [S, D]
        quiet = int(sae.pre_activations(x).amax(0).argmin())

        def editor(*ops):
            rows = [RowSteering([RowEdit("s", quiet, op, value, "all")]) for op, value in ops]
            ed = BatchEditor(sae, "s", rows, [RowLayout(3)] * len(rows))
            ed.decode([3] * len(rows))
            ed(x[: len(rows)])  # the young candidate set learns from the full path
            ed.decode([4] * len(rows))
            return ed(x[len(rows) : 2 * len(rows)])

        assert editor(("ablate", 0.0), ("scale", 2.0)) is None
        moved = editor(("ablate", 0.0), ("clamp", 2.0))
        assert moved is not None and torch.equal(moved[0], torch.zeros_like(moved[0]))
        torch.testing.assert_close(moved[1], 2.0 * sae.W_dec[quiet].detach())


def test_reused_outputs_never_leak_into_results_and_big_calls_keep_none():
    """The reader reuses its outputs from call to call (generation steps): a result must not change
    when the next call runs, and a call of more than `keep_rows` rows keeps no buffer."""
    sae = topk_sae("pair")
    x = inputs(400)
    ids = torch.tensor([40, int(sae.encode(x).ne(0).sum(0).argmax())])
    reader = TopKReader(sae, ids, n_candidates=128)
    reader.cands.learn_rows = 40
    with torch.no_grad():
        reader(x[:40])
        results = [(reader.full(x[lo : lo + 8]), reader.read(x[lo : lo + 8])) for lo in range(40, 200, 8)]
        for i, (full, read) in enumerate(results):
            want = reader.reference(x[40 + 8 * i : 48 + 8 * i])
            assert torch.equal(full, want) and (read is None and not want.any() or torch.equal(read, want)), i
        assert any(r is not None and r.any() for _, r in results)
        reader.keep_rows = 64
        reader._buffers.clear()
        reader.full(x[200:400])
        assert reader._buffers == {}
        reader.full(x[200:240])
        assert {b.shape[0] for b in reader._buffers.values()} == {40}


def test_the_kept_pairs_of_a_need_mask_follow_it_when_it_changes_in_place():
    """The reader keeps the pairs of the mask it saw last (the engine's is the same every step):
    a mask changed in place, or another mask, must not read the old pairs."""
    sae = topk_sae("pair")
    x = inputs(200)
    ids = torch.tensor([40, 3, 7, 11, 19])
    reader = TopKReader(sae, ids, n_candidates=128)
    reader.cands.learn_rows = 100
    with torch.no_grad():
        reader(x[:100])
        reader.min_bound_macs = 10**12
        fires = sae.encode(x[100:104])[:, ids] != 0
        need = torch.zeros(4, 5, dtype=torch.bool)
        need[0, 0] = True
        for other in (need, need.clone()):  # the mask seen last changed in place, then a new mask
            reader(x[100:104], other)
            other.copy_(fires)
            other[0, 0] = not bool(fires[0, 0])  # and the old pair changes too
            assert_rows_alone(reader(x[100:104], other), sae, x[100:104], ids, other)
            other.copy_(need.new_zeros(4, 5)); other[0, 0] = True
        assert bool(fires.any()) and reader.counted_pairs > 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_tie_at_the_kth_place_is_the_sae_s_own_in_low_precision(dtype):
    """Counts of a few thousand are not exact in bf16/fp16 (bf16 spaces integers 16 apart near
    4096): two latents tied at the k-th place must still go back to the SAE's own top k, not be
    read as both selected."""
    k = 32
    F_ = next(F for F in range(4000, 20000, 7)  # a width whose low-precision count would hide the tie
              if F - (k - 1) + torch.tensor(float((k - 1) - (F - k - 1))).to(dtype).item() <= k)
    sae = saes.create_sae("topk", 2, F_, k=k, dtype=dtype)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_dec.zero_()
        sae.b_enc.fill_(-1.0)
        sae.b_enc[100 : 100 + k - 1] = 10.0
        sae.b_enc[40] = sae.b_enc[41] = 5.0  # 31 clear winners, then a tie for the last place
        x = torch.randn(12, 2, generator=torch.Generator().manual_seed(0)).to(dtype)
        for latent in (40, 41):
            reader = TopKReader(sae, torch.tensor([latent]), n_candidates=256)
            reader.cands.learn_rows = 8
            reader(x[:8])  # teaches the candidate set
            assert torch.equal(reader(x[8:]), reader.reference(x[8:])), latent


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_a_topk_sae_steers_inside_bf16_autocast_with_its_own_reads(monkeypatch, dtype):
    """A TopK SAE (fp16, bf16, float32) steering a float32 model run under `torch.autocast("cpu",
    bf16)`, through `steer` and through the batched engine: every read equals the SAE's own encode
    at its dtype with autocast off (bit for bit without a need mask, rows alone with one), on both
    the bound and the full path, and the edited activation keeps the model's dtype. Before, the
    bound's torch.cat of fp16 tensors failed under CPU autocast ("Unexpected floating
    ScalarType"), and a float32 SAE's edit came back in bf16 (its product autocast)."""
    from steering import GenerationConfig, steer
    from steering.engine import BatchEngine, Row
    from steering.rowedits import RowEdit, RowSteering
    from steering.sampling import SamplingParams
    from steering.session import resolve_edits

    model = tiny_model()
    sae = random_sae(model, "topk", hook=HOOK, d_sae=512, k=8, seed=1).to(dtype)
    TopKCandidates.of(sae).learn_rows = 16  # mature after the first prefill: later reads try the bound
    reads: list = []
    read = TopKReader.read

    def recorded_read(self, x_ND, need_NM=None):
        out = read(self, x_ND, need_NM)
        reads.append((self, x_ND.clone(), None if need_NM is None else need_NM.clone(), out))
        return out

    monkeypatch.setattr(TopKReader, "read", recorded_read)
    seen: list = []
    _record_edits(monkeypatch, seen)
    edits = ["5:clamp=3", "7:scale=2", "9:ablate@generated"]
    greedy = GenerationConfig(max_new_tokens=5, do_sample=False, stop_at_eos=False)
    with torch_threads(1), torch.autocast("cpu", dtype=torch.bfloat16):
        with steer(model, sae, edits) as s:
            s.generate(PROMPTS, greedy)
        engine = BatchEngine(model, {"s": sae})
        steering = RowSteering([RowEdit("s", r.latent, r.op, r.value, r.positions, r.trigger)
                                for r in resolve_edits(model, {"s": sae}, edits)])
        engine.add([Row(model.to_tokens(p)[0].tolist(), SamplingParams(max_new_tokens=5, temperature=0), steering, tag=i)
                    for i, p in enumerate(PROMPTS)])
        while engine.busy:  # drained: no hooks stay on the shared model
            engine.step()
    # the edited activations stay the model's float32 (an edit's product under autocast came back bf16)
    assert seen and all(a.dtype == torch.float32 for a in seen)
    assert any(need is None for _, _, need, _ in reads) and any(need is not None for _, _, need, _ in reads)
    with torch.no_grad():
        for reader, x, need, got in reads:
            assert x.dtype == dtype
            got = torch.zeros(x.shape[0], reader.M, dtype=dtype) if got is None else got
            assert got.dtype == dtype
            if need is None:
                assert torch.equal(got, sae.encode(x)[:, reader.ids_M])
            else:
                want = torch.cat([sae.encode(x[r : r + 1]) for r in range(x.shape[0])])[:, reader.ids_M]
                assert torch.equal(got[need] != 0, want[need] != 0)
                eps = torch.finfo(dtype).eps
                torch.testing.assert_close(got[need].float(), want[need].float(), rtol=4 * eps, atol=1e-3)
    readers = {id(r): r for r, _, _, _ in reads}.values()
    assert sum(r.bound_hits for r in readers) > 0 and sum(r.full_rows for r in readers) > 0


# ---------------------------------------------------------------------------------------------
# the products' rounding in force (saes.precision): TF32 on a GPU


@pytest.fixture
def float32_matmul_precision():
    """Set torch's float32 matmul precision in a test (the legacy API only: mixing it with the
    new per-backend one makes torch refuse to read the global setting), restored after."""
    before = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(before)


def tf32(t: torch.Tensor) -> torch.Tensor:
    """float32 values rounded to TF32's 10-bit mantissa (to nearest, ties to even), as a GPU's
    tensor cores round the inputs of a float32 product under TF32."""
    i = t.contiguous().view(torch.int32)
    i = (i + 0x0FFF + ((i >> 13) & 1)) & ~0x1FFF
    return i.view(torch.float32)


def test_the_bound_covers_an_sae_whose_products_round_to_tf32(float32_matmul_precision):
    """With TF32 allowed (torch.backends.cuda.matmul.allow_tf32 / set_float32_matmul_precision('high')),
    the SAE's own float32 pre-activations on a GPU are products of TF32-rounded inputs: thousands of
    float32 ulps from ours. The tolerance was float32's, so the bound could prove a firing latent
    off; it is now the rounding in force on CUDA (the CPU has no TF32: these CPU tensors are given
    CUDA's rounding)."""
    from saes.precision import matmul_eps, matmul_rounding
    from steering.topk_read import fold_b_dec

    g = torch.Generator().manual_seed(0)
    D, F, N = 256, 64, 50
    # inputs whose TF32 rounding errors all have one sign (the worst case a bound must cover): every
    # entry's mantissa just under half a TF32 step above 1, signs making each product positive
    m = 1 + 2.0**-11 - 2.0**-20
    sign_D = torch.randint(0, 2, (D,), generator=g) * 2.0 - 1
    x = sign_D * m * 2.0 ** torch.randint(-1, 2, (N, D), generator=g)
    W = sign_D[:, None] * m * 2.0 ** torch.randint(-6, -3, (D, F), generator=g)
    b = torch.randn(F, generator=g) * 0.1
    assert torch.equal(tf32(x).abs(), x.abs() / m)  # TF32 rounds each one down to its power of two
    # the SAE's own pre-activations under TF32: rounded inputs, (nearly) exact sums
    own = tf32(x).double() @ tf32(W).double() + b.double()

    def worst_excess(fold) -> float:
        b_fold, e, c = fold
        ours = (x @ W + b_fold).double()
        tol = e * x.double().norm(dim=1, keepdim=True) + c
        return float(((ours - own).abs() - tol).max())

    assert matmul_rounding(torch.float32, "cuda") == torch.float32
    assert worst_excess(fold_b_dec(W, b, None, matmul_rounding(torch.float32, "cuda"))) > 0  # float32's does not cover TF32
    float32_matmul_precision("high")
    assert matmul_rounding(torch.float32, "cuda") == torch.float16 and matmul_eps(torch.float32, "cuda") == 2.0**-10
    assert matmul_rounding(torch.bfloat16, "cuda") == torch.bfloat16  # other dtypes are their own
    assert worst_excess(fold_b_dec(W, b, None, matmul_rounding(torch.float32, "cuda"))) <= 0


def test_tf32_settings_are_read_through_either_api():
    """CUDA's allow_tf32 and the per-backend fp32_precision (torch >= 2.9) are read too; once both
    APIs were used torch refuses to read the global setting, and the backend's own one says (in a
    child process: that state would outlive the test)."""
    import subprocess
    import sys

    code = ("import torch\nfrom saes.precision import matmul_rounding as r\n"
            "torch.backends.cuda.matmul.allow_tf32 = True\nprint(r(torch.float32, 'cuda'))\n"
            "torch.backends.cuda.matmul.allow_tf32 = False\nprint(r(torch.float32, 'cuda'))\n"
            "if hasattr(torch.backends.cuda.matmul, 'fp32_precision'):\n"
            "    torch.backends.cuda.matmul.fp32_precision = 'tf32'\n"
            "print(r(torch.float32, 'cuda'), r(torch.float32, 'cpu'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["torch.float16", "torch.float32", "torch.float16", "torch.float32"]


def test_the_topk_read_equals_its_reference_when_products_may_round_to_tf32(float32_matmul_precision, monkeypatch):
    """The bound's tolerance grows with the rounding in force and every path still equals the
    reference (the exact read is only as fast as the rounding allows, never wrong). The CPU has
    no TF32: the reader is given the rounding CUDA's settings give."""
    import steering.topk_read
    from saes.precision import matmul_rounding

    monkeypatch.setattr(steering.topk_read, "matmul_rounding", lambda dtype, device: matmul_rounding(dtype, "cuda"))
    sae = topk_sae("group")
    x = inputs(300)
    ids = torch.tensor([40, 44, 100])
    as_float32 = TopKReader(sae, ids).err_per_norm
    float32_matmul_precision("high")
    reader = TopKReader(sae, ids, n_candidates=128)
    reader.cands.learn_rows = 60
    D = sae.W_enc.shape[0]  # TF32 inputs (eps 2^-10), float32 sums (2^-23)
    assert reader.err_per_norm == pytest.approx(as_float32 * (2.0**-9 + 2.0**-20 + (D + 4) * 2.0**-23 * (1 + 2.0**-10) ** 2)
                                                / ((D + 4) * 2.0**-23))
    with torch.no_grad():
        for lo in range(0, 300, 6):
            assert torch.equal(reader(x[lo:lo + 6]), reader.reference(x[lo:lo + 6]))
        need = torch.rand(40, 3, generator=torch.Generator().manual_seed(1)) < 0.5
        assert_rows_alone(reader(x[:40], need), sae, x[:40], ids, need)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_low_precision_read_by_rows_alone_settles_most_pairs_itself_and_equals_the_reference(dtype):
    """bf16 / fp16 (the batched engine's read, a need mask): the bound and the count decide most
    needed pairs themselves, with thresholds relative to each value (`steering.lowprecision`),
    and on/off equal `TopKReader.reference` (each row's own encode) exactly, values within the
    dtype's rounding. Latents 40..47 tie (exactly, in this dtype) at the k-th place on about half
    the rows: those rows go to the SAE's own encode. Before, the worst-case tolerance of a bf16
    product exceeded every pre-activation, so every row that needed a latent went there."""
    sae = topk_sae("group", d_in=32, d_sae=512, k=8, seed=4).to(dtype)
    x = inputs(1200, d=32, seed=8).to(dtype)
    ids = torch.tensor([*range(40, 48), 3, 100, 300, 511])
    reader = TopKReader(sae, ids, n_candidates=128)
    assert reader.relative is not None
    reader.cands.learn_rows = 100
    g = torch.Generator().manual_seed(3)
    eps = torch.finfo(dtype).eps
    with torch.no_grad():
        reader(x[:100], torch.ones(100, ids.numel(), dtype=torch.bool))
        reader.full_rows = reader.alone_rows = 0
        for lo in range(100, 1196, 8):
            if lo % 16:  # one pair per row (a clamp per client)
                need = torch.nn.functional.one_hot(torch.randint(0, ids.numel(), (8,), generator=g), ids.numel()).bool()
            else:
                need = torch.rand(8, ids.numel(), generator=g) < 0.3
            got, want = reader(x[lo : lo + 8], need), reader.reference(x[lo : lo + 8], need)
            assert torch.equal(got[need] != 0, want[need] != 0), lo
            torch.testing.assert_close(got[need].float(), want[need].float(), rtol=4 * eps, atol=1e-3, msg=str(lo))
            assert not bool(got[~need].any())
    calls = (1196 - 100) // 8
    assert reader.bound_hits > 0 and reader.full_rows < 4 * calls  # the bound settles most rows of most calls
    assert 0 < reader.alone_rows < reader.full_rows / 2  # the count decides most open rows, ties go alone


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_low_precision_tolerance_covers_the_sae_s_own_rounding_and_no_more_than_needed(dtype):
    """`RelativeTolerance`: the SAE's own pre-activations (x - b_dec) @ W + b in the dtype, and ours
    by another accumulation (here the exactly rounded product, then + b), differ by at most
    a |q| + c_r; they do differ (by an ulp where the float32 sums straddle a rounding), so a
    tolerance without the relative term fails; and c_r is far below the values' spread."""
    from steering.lowprecision import RelativeTolerance

    g = torch.Generator().manual_seed(0)
    D, F_ = 256, 4096
    W = (torch.randn(D, F_, generator=g) / D**0.5).to(dtype)
    b_dec = (torch.randn(D, generator=g) * 0.1).to(dtype)
    x = (torch.randn(64, D, generator=g) * 2).to(dtype)
    v = x - b_dec
    cols = torch.randperm(F_, generator=g)[:1000]
    for scale in (0.3, 0.01):  # c_r carries the bias's rounding: with a small bias the relative term must do the work
        b = (torch.randn(F_, generator=g) * scale).to(dtype)
        own = v @ W + b  # the SAE's expression
        tol = RelativeTolerance(W, b)
        c = tol.row_const(v)
        # ours: the exactly rounded product then + b, and the reader's own kind of product (a fused
        # addmm over a few rows and a subset of columns: another blocking of the float32 sums)
        exact = (v.double() @ W.double()).to(dtype) + b
        fused = torch.cat([torch.addmm(b[cols], v[i : i + 3], W[:, cols]) for i in range(0, v.shape[0], 3)])
        for ours, want, c_rows in ((exact, own, c), (fused, own[:, cols], c)):
            gap = (want.double() - ours.double()).abs()
            assert bool((gap <= tol.a * ours.double().abs() + c_rows).all()), scale
            hi, lo = tol.above(ours, c_rows), tol.maybe(ours, c_rows)
            assert bool((hi > want).all() and (lo < want).all())  # each threshold on its side of the SAE's own value
        assert float(c.max()) < 0.02 * float(own.double().std())
        gap = (own.double() - exact.double()).abs()
    assert bool((gap > c).any())  # the relative term is needed


def test_a_shared_candidate_set_is_rebuilt_when_the_products_rounding_changes(float32_matmul_precision):
    """Readers built without n_candidates share one candidate set per SAE (`TopKCandidates.of`):
    one built under float32 products must not lend its float32 tolerance to a reader built after
    a coarser precision was allowed ('medium': bfloat16 products on the CPU too)."""
    from saes.precision import matmul_rounding

    sae = topk_sae("group")
    before = TopKReader(sae, torch.tensor([40]))
    assert before.cands.rounding == torch.float32
    float32_matmul_precision("medium")
    assert matmul_rounding(torch.float32, "cpu") == torch.bfloat16
    after = TopKReader(sae, torch.tensor([40]))
    assert after.cands is not before.cands
    assert after.err_per_norm > 1000 * before.err_per_norm  # bfloat16's eps 2^-7, float32's 2^-23
    float32_matmul_precision("highest")
    assert TopKReader(sae, torch.tensor([40])).err_per_norm == before.err_per_norm


def test_each_device_s_rounding_follows_the_settings_that_change_its_products():
    """The CPU (oneDNN) never uses TF32: "high" and CUDA's allow_tf32 leave its float32 products
    float32, while "medium" / mkldnn's fp32_precision "bf16" round them to bfloat16. On CUDA,
    torch >= 2.9 says what "medium" does (TF32) in cuda.matmul.fp32_precision. (In a child
    process: mixing the two precision APIs outlives a test.)"""
    import subprocess
    import sys

    code = ("import torch\nfrom saes.precision import matmul_rounding as r\n"
            "def both(): print(r(torch.float32, 'cpu'), r(torch.float32, 'cuda'))\n"
            "both()\n"
            "torch.backends.cuda.matmul.allow_tf32 = True\nboth()\n"
            "torch.set_float32_matmul_precision('high')\nboth()\n"
            "torch.set_float32_matmul_precision('medium')\nboth()\n"
            "torch.set_float32_matmul_precision('highest')\nboth()\n"
            "torch.backends.mkldnn.matmul.fp32_precision = 'bf16'\nboth()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    rows = [tuple(out[i:i + 2]) for i in range(0, len(out), 2)]
    f32, f16, bf16 = "torch.float32", "torch.float16", "torch.bfloat16"
    medium_on_cuda = f16 if hasattr(torch.backends.cuda.matmul, "fp32_precision") else bf16
    assert rows == [(f32, f32), (f32, f16), (f32, f16), (bf16, medium_on_cuda), (f32, f32), (bf16, f32)]


def mantissa_rounded(t: torch.Tensor, bits: int, truncate: bool) -> torch.Tensor:
    """float32 values with a `bits`-bit mantissa (TF32: 10, bfloat16: 7), rounded to nearest (ties
    to even) or truncated, as hardware may round a float32 product's inputs."""
    drop = 23 - bits
    i = t.contiguous().view(torch.int32)
    if not truncate:
        i = i + ((1 << (drop - 1)) - 1) + ((i >> drop) & 1)
    return (i & ~((1 << drop) - 1)).view(torch.float32)


@pytest.mark.parametrize("rounding,bits", [(torch.float16, 10), (torch.bfloat16, 7)])
def test_the_bound_for_coarse_inputs_covers_emulated_products_without_the_length_factor(rounding, bits):
    """Under TF32 (or bf16-internal float32) only a product's inputs round coarsely; its sums stay
    float32. The tolerance charges the inputs' rounding once per norm (Cauchy-Schwarz), not once
    per term of the sum: far tighter than 2 (D + 4) eps_in w_max, and it still covers products of
    inputs rounded to `bits` mantissa bits either way (to nearest or truncated), worst case: every
    rounding error of one sign, on our side and the SAE's."""
    from steering.topk_read import fold_b_dec

    g = torch.Generator().manual_seed(0)
    D, F, N = 768, 64, 40
    sign_D = torch.randint(0, 2, (D,), generator=g) * 2.0 - 1
    W = sign_D[:, None] * (1 + 2.0**-bits - 2.0**-22) * 2.0 ** torch.randint(-6, -3, (D, F), generator=g)
    b = torch.randn(F, generator=g) * 0.1
    b_dec = torch.randn(D, generator=g) * 0.01
    b_fold, e, c = fold_b_dec(W, b, b_dec, rounding)
    eps_in = 2.0**-bits
    w_max = float(W.double().norm(dim=0).max())
    assert e < 2.0 * (D + 4) * eps_in * w_max / 100  # the old tolerance, two orders looser at D=768
    worst = 0.0
    # mantissas just under half a step (nearest rounds down) or a whole step (truncation loses most)
    for m in (1 + 2.0**-(bits + 1) - 2.0**-20, 1 + 2.0**-bits - 2.0**-22):
        x = sign_D * m * 2.0 ** torch.randint(-1, 2, (N, D), generator=g)
        tol = e * x.double().norm(dim=1, keepdim=True) + c
        ours = [(x @ W + b_fold).double()] + [
            (mantissa_rounded(x, bits, t) @ mantissa_rounded(W, bits, t) + b_fold).double() for t in (False, True)]
        xc = x - b_dec  # the SAE's own input
        own = [mantissa_rounded(xc, bits, t).double() @ mantissa_rounded(W, bits, t).double() + b.double()
               for t in (False, True)]
        for o in ours:
            for s_ in own:
                ratio = float(((o - s_).abs() / tol).max())
                assert ratio <= 1.0
                worst = max(worst, ratio)
    assert worst > 0.2  # the inputs do stress the bound: it is not loose by orders of magnitude


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_a_float32_sae_s_edit_under_bf16_autocast_is_its_float32_edit(monkeypatch, arch):
    """Under `torch.autocast("cpu", bf16)` (a float32 model and SAE) every steering edit, of `steer`'s
    hook, of the engine's and `current_activations`, is bit for bit the edit computed with autocast
    off for the same activation: the products are not rounded to bf16 and handed back as float32."""
    import steering.engine as engine_mod
    import steering.session as session_mod
    from steering import GenerationConfig, current_activations, steer
    from steering.engine import BatchEngine, Row
    from steering.rowedits import RowEdit, RowSteering
    from steering.sampling import SamplingParams
    from steering.session import resolve_edits

    model = tiny_model()
    sae = random_sae(model, arch, hook=HOOK, d_sae=256, **({"k": 8} if arch == "topk" else {}))
    edits = ["5:clamp=3", "7:scale=2", "9:add=1"]  # unconditional: an edit computed twice is the same edit
    pairs: list = []  # (under autocast, autocast off) for the same activation
    hook_call, apply_editors = session_mod._HookFn.__call__, engine_mod._apply_editors

    def twice_hook(self, x, hook=None):
        out = hook_call(self, x, hook)
        with torch.autocast("cpu", enabled=False):
            pairs.append((x if out is None else out, hook_call(self, x, hook)))
        return out

    def twice_apply(editors, x, *rest):
        out = apply_editors(editors, x, *rest)
        with torch.autocast("cpu", enabled=False):
            pairs.append((out, apply_editors(editors, x, *rest)))
        return out

    monkeypatch.setattr(session_mod._HookFn, "__call__", twice_hook)
    monkeypatch.setattr(engine_mod, "_apply_editors", twice_apply)
    x = torch.randn(3, 5, model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 4
    ids = [5, 7, 9, 11]
    with torch_threads(1), torch.autocast("cpu", dtype=torch.bfloat16):
        with steer(model, sae, edits) as s:
            s.generate(PROMPTS, GenerationConfig(max_new_tokens=3, do_sample=False, stop_at_eos=False))
        engine = BatchEngine(model, {"s": sae})
        steering = RowSteering([RowEdit("s", r.latent, r.op, r.value, r.positions, r.trigger)
                                for r in resolve_edits(model, {"s": sae}, edits)])
        engine.add([Row(model.to_tokens(p)[0].tolist(), SamplingParams(max_new_tokens=3, temperature=0), steering, tag=i)
                    for i, p in enumerate(PROMPTS)])
        while engine.busy:
            engine.step()
        acts = current_activations(sae, x, ids)
    with torch.no_grad():
        want = current_activations(sae, x, ids)
    assert acts.dtype == torch.float32 and torch.equal(acts, want)
    assert len(pairs) > 4
    for got, ref in pairs:
        assert got.dtype == ref.dtype == torch.float32 and torch.equal(got, ref)
