"""`saesteer eval`'s CE loss recovered and KL at a large vocabulary: the contexts go through the model a
few at a time (`training.evaluate._LOGITS_PASS_ELEMS`), so the clean and spliced logits held at once
[contexts, positions, vocab] no longer grow with `--ce-batch-size` (16 x 128 x Gemma's 262k was 2.1 GB
each). On real architectures built locally with a widened byte-level BPE, through `evaluate_saes` (what
`saesteer eval` runs), every reported figure equals the eager formulas over the whole batch's logits."""

from __future__ import annotations

import pytest
import torch

from helpers.eager_ce import eager_splice_metrics

pytestmark = [pytest.mark.usefixtures("one_thread")]

HOOK = "blocks.1.hook_resid_post"
VOCAB, CONTEXT, CONTEXTS = 40_000, 24, 5
NAMES = ("ce_loss_clean", "ce_loss_spliced", "ce_loss_zero", "ce_loss_recovered", "kl_div")


@pytest.fixture(scope="module")
def wide_tokenizer(real_corpus):
    from helpers.real_models import build_family_tokenizer, widen_vocab

    return widen_vocab(build_family_tokenizer("gemma", real_corpus.train_docs, vocab_size=512), VOCAB)


def _contexts(tok, docs) -> torch.Tensor:
    """Code and prose packed into [CONTEXTS, CONTEXT], each row from BOS, a second document's BOS mid-row."""
    ids = []
    for d in docs:
        ids += [tok.bos_token_id] + tok(d, add_special_tokens=False)["input_ids"]
    rows = torch.tensor(ids[:CONTEXTS * CONTEXT]).reshape(CONTEXTS, CONTEXT)
    rows[:, 0] = tok.bos_token_id
    rows[2, 11] = tok.bos_token_id
    return rows


@pytest.mark.parametrize("arch", ["gemma3", "qwen3"])
def test_eval_ce_kl_streamed_over_contexts_equal_the_eager_figures(arch, wide_tokenizer, real_corpus, tmp_path,
                                                                   monkeypatch):
    import training.evaluate as ev
    from evals.activations import collect
    from evals.config import EvalConfig
    from evals.run import EvalInputs, evaluate_saes
    from helpers.real_models import save_arch_model
    from saes import create_sae
    from saesteer.models import load_model

    model = load_model(str(save_arch_model(tmp_path / arch, arch, wide_tokenizer)))
    assert model.cfg.d_vocab == VOCAB
    tokens = _contexts(wide_tokenizer, real_corpus.validation_docs)
    bos = (wide_tokenizer.bos_token_id,)
    sae = create_sae("topk", d_in=64, d_sae=256, k=8, generator=torch.Generator().manual_seed(0))
    sae.cfg.metadata["hook_name"] = HOOK

    # two contexts' logits per pass: the batch of 4 goes as 2 + 2, then the last context alone
    monkeypatch.setattr(ev, "_LOGITS_PASS_ELEMS", 2 * CONTEXT * VOCAB)
    passes = []
    forward = type(model).forward

    def counted(self, toks, *a, **kw):
        passes.append(int(toks.shape[0]))
        return forward(self, toks, *a, **kw)

    monkeypatch.setattr(type(model), "forward", counted)
    inputs = EvalInputs(model, collect(model, [HOOK], tokens, bos), ce_tokens=tokens, keep_ids=bos)
    cfg = EvalConfig(ce_batch_size=4, absorption=False, probing=False)
    got = evaluate_saes({"sae": sae}, inputs, cfg)["sae"]["metrics"]
    spliced_passes = passes[1:]  # after collect's one pass of all the contexts
    assert spliced_passes == [2, 2, 2, 2, 2, 2, 1, 1, 1]  # clean, spliced, zero-ablated of each group
    monkeypatch.setattr(type(model), "forward", forward)

    want = eager_splice_metrics(model, tokens, bos, HOOK, lambda x: sae(x.float()).recon)
    for name, w in zip(NAMES, want):
        assert got[name] == pytest.approx(w, rel=1e-5, abs=1e-6), name
    assert got["kl_div"] > 1e-3 and abs(got["ce_loss_zero"] - got["ce_loss_clean"]) > 1e-2  # the splices change the model


def test_a_pass_is_sized_by_the_logits_width_not_the_tokenizers(real_corpus, tmp_path, monkeypatch):
    """A checkpoint whose embedding is padded past its tokenizer (GPT-2's 50,257 rows, Pythia's 50,304
    for 50,277 tokens) returns logits as wide as the embedding: a pass is sized by that width
    (TransformerBridge's cfg.d_vocab), not by the tokenizer's length, so it stays within the budget."""
    import training.evaluate as ev
    from helpers.real_models import save_real_model
    from saesteer.models import load_model

    model = load_model(str(save_real_model(tmp_path / "gpt2", "gpt2", real_corpus, train_steps=0, vocab_size=512,
                                           model_vocab=700)))
    tokens = torch.randint(0, 512, (4, CONTEXT), generator=torch.Generator().manual_seed(0))
    width = int(model(tokens[:1]).shape[-1])
    assert (len(model.tokenizer), width) == (512, 700)
    # two contexts' logits at the tokenizer's width, less than two at the logits' own width
    monkeypatch.setattr(ev, "_LOGITS_PASS_ELEMS", 2 * CONTEXT * width - 1)
    passes = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, toks, *a, **kw: passes.append(int(toks.shape[0]))
                        or forward(self, toks, *a, **kw))
    ev.splice_metrics(model, lambda x: x, HOOK, tokens, batch_size=4)
    assert passes == [1] * 12  # 4 contexts alone: clean, spliced, zero-ablated each


def test_the_ce_batch_size_help_states_the_pass_budget():
    """`--ce-batch-size`'s help (train and eval) says how much float32 logits a pass may hold: the
    budget `_LOGITS_PASS_ELEMS` sets, so a change to it shows in the help."""
    import dataclasses

    import evals.config
    import training.config
    from training.evaluate import _LOGITS_PASS_ELEMS

    budget = f"{_LOGITS_PASS_ELEMS * 4 // 2**20} MB"
    for cfg in (evals.config.EvalConfig, training.config.EvalConfig):
        field = {f.name: f for f in dataclasses.fields(cfg)}["ce_batch_size"]
        assert budget in field.metadata["help"], (cfg, budget)
