"""The whole chain on a user's own model and data (issue 16), as a new user runs it.

A tiny Llama with grouped-query attention (4 query heads, 2 key/value heads) whose tokenizer is a
byte-level BPE in Llama 3's style (the tokenizer itself prepends <|begin_of_text|>), trained
briefly, saved with `save_pretrained`; the text is Python source and prose (test.jsonl,
train.jsonl and validation.jsonl in one folder). Every stage runs through the `saesteer` CLI:

    cache -> train (resid + hook_z) -> features build -> label (offline, loopback judge)
          -> steer -> sweep -> serve (HTTP API)

and the tests check what a user must be able to trust: the recorded model is used when --model
is left out, a wrong --model is refused, token text is the tokenizer's, labels print literally,
dead fractions agree, eval rows are held out, and SAELens runs our SAEs with equal outputs.

The other three architectures run a thinner chain in tests/test_real_archs.py.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from helpers.judge_server import JudgeServer, fake_llm_answer
from helpers.real_cli import captured_serve, flags_named, known_flags, saesteer
from helpers.threads import torch_threads

FAMILY = "llama"
HOOK = "blocks.1.hook_resid_post"
HOOK_Z = "blocks.0.attn.hook_z"
CONTEXT = 64
CACHE_TOKENS = 8192
D_SAE = 512
RICH_LABEL = "[/x] [bold]{}[/bold]"  # what the judge answers: rich markup that must print literally
CODE = "def parse_args(self, args=None):\n\treturn self._parse(args)  # licence: PSF"

# ----------------------------------------------------------------------------------------------
# the chain, run once for the module


@dataclass
class Chain:
    work: Path
    model: Path
    wrong_model: Path  # another architecture's checkpoint with the same d_model
    corpus: object
    cache: Path
    run: Path
    sae: Path
    sae_z: Path
    store: Path
    train: object  # CliResult of the resid training
    eval_tokens: list = field(default_factory=list)  # contexts the CE evaluation ran on
    judge_records: list = field(default_factory=list)
    judged: list = field(default_factory=list)  # latents labelled by the loopback judge
    judge_url: str = ""


def judge_answer(body: dict) -> str:
    """The loopback judge: fake_llm_answer's labels wrapped in rich markup; sweep ratings from the
    fragment (concept: Python punctuation (brackets, colon, equals, quotes) present; fluency: not one repeated token)."""
    system = body["messages"][0]["content"]
    if "impartial judge of short text fragments" in system:
        user = body["messages"][1]["content"]
        fragment = user.split("<<<FRAGMENT", 1)[-1]
        if "Does the fragment incorporate the concept" in user:
            rating = 2 if any(c in fragment for c in "():='\"") else 0
        else:
            words = fragment.split()
            rating = 2 if len(set(words)) > len(words) // 2 else 1
        return json.dumps({"rating": rating, "reason": "loopback"})
    answer = json.loads(fake_llm_answer(body))
    if "label" in answer:
        answer["label"] = RICH_LABEL.format(answer["label"])
    return json.dumps(answer)


@pytest.fixture(scope="module", autouse=True)
def _env():
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "COLUMNS": "240", "OPENAI_API_KEY": "sk-loopback", "NO_COLOR": "1"}.items():
            mp.setenv(k, v)
        mp.delenv("SAESTEER_JUDGE_MODEL", raising=False)
        mp.delenv("OPENAI_BASE_URL", raising=False)
        with torch_threads(1):
            yield


@pytest.fixture(scope="module")
def judge():
    with JudgeServer(judge_answer) as srv:
        yield srv


@pytest.fixture(scope="module")
def chain(tmp_path_factory, real_models, real_corpus, judge) -> Chain:
    work = tmp_path_factory.mktemp("real-chain")
    model = real_models.path(FAMILY, train_steps=200)
    c = Chain(work, model, real_models.path("gpt2"), real_corpus, work / "cache", work / "run", Path(), Path(),
              work / "features.db", None)
    saesteer("cache", "--model", model, "--dataset", real_corpus.jsonl_dir, "--split", "train",
             "--context-length", CONTEXT, "--max-tokens", CACHE_TOKENS, "--hooks", f"{HOOK},{HOOK_Z}",
             "--out", c.cache, "--no-progress").ok()

    # resid SAE, with the model for CE loss recovered; record the contexts the evaluation runs on
    import training.evaluate as evaluate_mod

    real_model_eval = evaluate_mod.ModelEval

    def spy(model_, hook, tokens, *a, **kw):
        c.eval_tokens = [list(map(int, row)) for row in torch.as_tensor(tokens).tolist()]
        return real_model_eval(model_, hook, tokens, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate_mod, "ModelEval", spy)
        c.train = saesteer("train", "--cache", c.cache, "--hook", HOOK, "--model", model, "--out", c.run,
                           "--architecture", "batchtopk", "--d-sae", D_SAE, "--k", 8, "--total-tokens", 3 * CACHE_TOKENS,
                           "--batch-size", 512, "--holdout-tokens", 1024,
                           "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0, "--eval-ce-contexts", 8,
                           "--progress", "false", "--sae-name", "resid").ok()
    c.sae = c.run / "saes" / "resid"
    saesteer("train", "--cache", c.cache, "--hook", HOOK_Z, "--out", work / "run-z", "--architecture", "topk",
             "--d-sae", 256, "--k", 8, "--total-tokens", CACHE_TOKENS, "--batch-size", 512, "--holdout-tokens", 1024,
             "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0, "--model-eval", "false", "--progress", "false",
             "--sae-name", "z").ok()
    c.sae_z = work / "run-z" / "saes" / "z"

    saesteer("features", "build", "--sae", c.sae, "--cache", c.cache, "--out", c.store, "--model", model,
             "--device", "cpu", "--no-progress").ok()
    saesteer("label", "--store", c.store, "--no-progress").ok()  # offline, every live latent
    with sqlite3.connect(c.store) as db:  # the most frequent latents go to the judge
        c.judged = [r[0] for r in db.execute("SELECT latent FROM features WHERE n_fires > 0 ORDER BY freq DESC LIMIT 6")]
    c.judge_url = judge.url
    saesteer("label", "--store", c.store, "--latents", ",".join(map(str, c.judged)), "--judge-model", "loopback",
             "--judge-base-url", judge.url, "--judge-backoff-base-s", "0.01", "--max-example-tokens", 64,
             "--no-progress").ok()
    c.judge_records = judge.snapshot()
    return c


def tokenizer_of(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def decode(tok, ids) -> str:
    return tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def ngrams(ids, n: int = 12) -> set[tuple[int, ...]]:
    return {tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)}


# ----------------------------------------------------------------------------------------------
# the chain ran, on the right things


def test_chain_runs_on_the_user_model(chain):
    man = json.loads((chain.cache / "manifest.json").read_text())
    assert man["hooks"] == [HOOK, HOOK_Z] and man["d_in"] == {HOOK: 64, HOOK_Z: 64}
    assert man["tokenizer"]["bos_id"] == tokenizer_of(chain.model).bos_token_id
    metrics = json.loads((chain.run / "metrics.json").read_text())["saes"]["resid"]
    assert metrics["ce_loss_recovered"] is not None and metrics["explained_variance"] > 0.3
    with sqlite3.connect(chain.store) as db:
        labels = dict(db.execute("SELECT latent, label FROM labels"))
    assert set(chain.judged) <= set(labels) and all(labels[i].startswith("[/x]") for i in chain.judged)


def test_cache_rows_are_the_model_activations_at_the_recorded_tokens(chain):
    """Every cached row is the model's activation at the token and position it records (the fast
    forward of a rotary GQA model against TransformerLens's own run), and the tokenizer's own BOS
    (its post-processor adds one) appears once, at position 0."""
    from helpers.real_interop import cache_vs_model
    from saesteer.models import load_model
    from training.shards import load_tensors

    man = json.loads((chain.cache / "manifest.json").read_text())
    tokens = load_tensors(chain.cache / man["shards"][0]["file"], ["context_tokens"])["context_tokens"]
    bos = tokenizer_of(chain.model).bos_token_id
    assert (tokens[:, 0] == bos).all() and not (tokens[:, 1:] == bos).any()
    errors = cache_vs_model(chain.cache, load_model(str(chain.model), device="cpu"), [HOOK, HOOK_Z])
    assert max(errors.values()) < 2e-3, errors  # fp16 storage


# ----------------------------------------------------------------------------------------------
# identity: the recorded model when --model is left out, and a wrong --model refused


def _same_output(with_model, without_model):
    assert without_model.rc == 0, f"without --model: {without_model.text[-1500:]}"
    assert without_model.out == with_model.out


def test_train_without_model_evaluates_with_the_recorded_model(chain, tmp_path):
    r = saesteer("train", "--cache", chain.cache, "--hook", HOOK, "--out", tmp_path / "run", "--d-sae", 64, "--k", 4,
                 "--total-tokens", 1024, "--batch-size", 512, "--holdout-tokens", 512, "--eval-every-tokens", 0,
                 "--checkpoint-every-tokens", 0, "--eval-ce-contexts", 2, "--progress", "false").ok()
    assert "no CE loss recovered" not in r.text
    sae = json.loads((tmp_path / "run" / "metrics.json").read_text())["saes"]
    assert all(s["ce_loss_recovered"] is not None for s in sae.values())


def test_features_build_without_model_uses_the_recorded_model(chain, tmp_path):
    saesteer("features", "build", "--sae", chain.sae, "--cache", chain.cache, "--out", tmp_path / "f.db",
             "--device", "cpu", "--no-progress").ok()
    with sqlite3.connect(tmp_path / "f.db") as db:
        meta = dict(db.execute("SELECT key, value FROM meta"))
        assert json.loads(meta["with_logits"]) and json.loads(meta["with_vocab"])
        want = dict(sqlite3.connect(chain.store).execute("SELECT latent, token_id FROM logit_effects WHERE rank = 0"))
        assert dict(db.execute("SELECT latent, token_id FROM logit_effects WHERE rank = 0")) == want


def test_top_on_text_without_model_uses_the_recorded_model(chain):
    # --sae rather than the store: no labels printed (their markup is item 4's business)
    with_model = saesteer("features", "top-on-text", "--sae", chain.sae, CODE, "--model", chain.model).ok()
    _same_output(with_model, saesteer("features", "top-on-text", "--sae", chain.sae, CODE))


STEER = ("--latent", "{f}:add=3x", "--prompt", "import os", "--prompt", "The licence says", "--max-new-tokens", "6",
         "--seed", "1", "--json")


def steer_args(chain, *extra):
    f = chain.judged[0]
    return ("steer", "--sae", chain.sae, "--store", chain.store, *[a.format(f=f) for a in STEER], *extra)


def test_steer_without_model_uses_the_recorded_model(chain):
    with_model = saesteer(*steer_args(chain, "--model", chain.model)).ok()
    _same_output(with_model, saesteer(*steer_args(chain)))


def sweep_args(chain, out, *extra):
    return ("sweep", "--sae", chain.sae, "--store", chain.store, "--latent", chain.judged[0], "--concept", "Python code",
            "--prompt", "x = ", "--samples", 2, "--strengths", "0,1,3", "--max-new-tokens", 6, "--out", out,
            "--judge-model", "loopback", "--judge-base-url", chain.judge_url, "--judge-use-cache", "false", *extra)


def test_sweep_without_model_uses_the_recorded_model(chain, tmp_path):
    saesteer(*sweep_args(chain, tmp_path / "a", "--model", chain.model)).ok()
    saesteer(*sweep_args(chain, tmp_path / "b")).ok()
    a, b = (json.loads(next((tmp_path / d).glob("*.json")).read_text()) for d in ("a", "b"))
    assert a == b


def test_serve_without_model_steers_with_the_recorded_model(chain, monkeypatch):
    r, client = captured_serve(monkeypatch, "--store", chain.store, "--device", "cpu")
    assert r.rc == 0 and client is not None, r.text
    assert "browse + steer" in r.err, r.err
    sid = client.get("/api/stores").json()[0]["id"]
    res = client.post(f"/api/stores/{sid}/fire", json={"text": CODE, "top_k": 3})
    assert res.status_code == 200, res.text


# a wrong --model: another architecture's checkpoint of the same width (d_model 64), so only the
# identity check can tell; it must be refused naming both models and an override flag that exists
WRONG = {
    "train": lambda c, w, tmp: ("train", "--cache", c.cache, "--hook", HOOK, "--model", w, "--out", tmp / "run",
                                "--d-sae", 64, "--k", 4, "--total-tokens", 1024, "--batch-size", 512,
                                "--holdout-tokens", 512, "--eval-ce-contexts", 2, "--progress", "false"),
    "features build": lambda c, w, tmp: ("features", "build", "--sae", c.sae, "--cache", c.cache, "--out",
                                         tmp / "f.db", "--model", w, "--device", "cpu", "--no-progress"),
    "features top-on-text": lambda c, w, tmp: ("features", "top-on-text", "--sae", c.sae, CODE, "--model", w),
    "steer": lambda c, w, tmp: steer_args(c, "--model", w),
    "sweep": lambda c, w, tmp: sweep_args(c, tmp / "sw", "--model", w),
    "serve": lambda c, w, tmp: ("serve", "--store", c.store, "--model", w, "--port", 0),
}
@pytest.mark.parametrize("command", list(WRONG))
def test_a_wrong_model_is_refused(chain, command, tmp_path, monkeypatch):
    from helpers.web_app import record_server

    record_server(monkeypatch)  # serve: accepting it is the failure (and would not block)
    r = saesteer(*WRONG[command](chain, chain.wrong_model, tmp_path))
    assert r.rc == 2, f"{command} accepted the wrong model (rc {r.rc}):\n{r.text[-1500:]}"
    assert "Traceback" not in r.text
    assert chain.wrong_model.name in r.err and chain.model.name in r.err, r.err  # both sides named
    named = flags_named(r.err)
    assert named and named <= known_flags(*command.split()), f"flags named: {named}"


# ----------------------------------------------------------------------------------------------
# text: judge prompts, CLI, labels with markup


_LINE = re.compile(r"^(?:Example|Context) \d+: (.*)$", re.M)


def prompt_windows(records) -> list[str]:
    """The example / context lines of every auto-interp prompt the judge received, marks removed."""
    out = []
    for rec in records:
        user = rec.messages[1]["content"]
        lines = _LINE.findall(user)
        if "simulating a latent feature" in rec.messages[0]["content"]:  # "The[0] ship[1]s[2]": positions removed
            lines = [re.sub(r"\[\d+\]", "", ln) for ln in lines]
        # marks removed; then stripped, as the prompt strips the line (a marked whitespace token at
        # an end keeps its spaces inside the marks)
        out += [m.replace("<<", "").replace(">>", "").strip() for m in lines]
    return out


def window_ids(ex, bos) -> list[int]:
    """An example's token ids as the judge and the reader see them: the BOS starting its context
    left out (the cache excludes BOS rows, so no latent fires there)."""
    start = ex.centre - ex.position
    return [t for j, t in enumerate(ex.token_ids) if not (j == start and t == bos)]


def test_judge_prompt_windows_are_the_tokenizer_decoding(chain):
    from autointerp.prompts import escape_data
    from features import FeatureStore

    tok = tokenizer_of(chain.model)
    store = FeatureStore.open(chain.store)
    exs = [ex for f in chain.judged for ex in store.examples(f)]
    store.close()
    want = {escape_data(decode(tok, window_ids(ex, tok.bos_token_id))).strip() for ex in exs}
    lines = prompt_windows(chain.judge_records)
    assert len(lines) > 20 and any("self" in ln or "def " in ln for ln in lines)  # code windows among them
    wrong = [ln for ln in lines if ln not in want]
    assert not wrong, f"{len(wrong)}/{len(lines)} prompt windows are not the tokenizer's text, e.g. {wrong[:3]}"
    # the BOS marker is not text: the store keeps it, the judge never sees it
    assert any(ex.text.startswith(tok.bos_token) for ex in exs)
    assert not [ln for ln in lines if escape_data(tok.bos_token) in ln]


def test_shown_windows_leave_out_the_context_bos(chain, monkeypatch):
    """`features show`, the web app's feature page and full-text search show example windows without
    the BOS marker that starts their context (the store keeps the window as the model read it)."""
    from features import FeatureStore

    tok = tokenizer_of(chain.model)
    marker = tok.bos_token  # <|begin_of_text|>
    store = FeatureStore.open(chain.store)
    starts = [f for f in chain.judged if any(ex.text.startswith(marker) for ex in store.feature(f).top_examples)]
    store.close()
    assert starts, "no top example starts a context"
    shown = saesteer("features", "show", chain.store, starts[0], "--examples", 50).ok().out
    assert "top examples" in shown and marker not in shown
    # logit effects of a small model are small: printed to 3 significant digits, not as +0.00
    store = FeatureStore.open(chain.store)
    promoted = store.feature(starts[0]).logits.promoted[:8]
    store.close()
    line = next(ln for ln in shown.splitlines() if ln.startswith("promotes"))
    assert [float(v) for v in re.findall(r" ([+-]\d[\d.e+-]*)(?:  |$)", line)] == \
        [float(f"{t.value:.3g}") for t in promoted], (line, [t.value for t in promoted])
    r, client = captured_serve(monkeypatch, "--store", chain.store, "--model", "none")
    sid = client.get("/api/stores").json()[0]["id"]
    detail = client.get(f"/api/stores/{sid}/features/{starts[0]}").json()
    assert detail["top_examples"] and not [e for e in detail["top_examples"] if marker in "".join(e["tokens"])]
    assert "no latent matches" in saesteer("features", "search", chain.store, "begin_of_text").ok().out


def test_store_example_text_is_the_tokenizer_decoding(chain):
    from features import FeatureStore

    tok = tokenizer_of(chain.model)
    store = FeatureStore.open(chain.store)
    exs = [ex for f in chain.judged for ex in store.examples(f)]
    store.close()
    assert exs and all(ex.text == decode(tok, ex.token_ids) for ex in exs)


@pytest.mark.parametrize("argv", [
    pytest.param(("features", "show", "{store}", "{f}"), id="show"),
    pytest.param(("features", "list", "{store}", "--labelled", "--limit", "50"), id="list"),
    pytest.param(("features", "search", "{store}", "bold"), id="search"),
    pytest.param(("features", "top-on-text", "{store}", CODE, "--model", "{model}", "--top", "8"), id="top-on-text"),
])
def test_a_label_with_markup_prints_literally(chain, argv):
    from features import FeatureStore

    store = FeatureStore.open(chain.store)
    labels = [store.label(f).text for f in chain.judged]
    store.close()
    assert all(label.startswith("[/x] [bold]") for label in labels)
    r = saesteer(*(a.format(store=chain.store, f=chain.judged[0], model=chain.model) for a in argv))
    assert r.rc == 0 and "Traceback" not in r.text, r.text[-1500:]
    # show / list / search: the most frequent latent's label; top-on-text: the label of any judged
    # latent that fires on the text (the most frequent latents fire on about a tenth of all tokens)
    shown = [label for label in labels if label in r.out]
    assert (labels[0] in shown) if argv[1] != "top-on-text" else shown, r.out[-2000:]


# ----------------------------------------------------------------------------------------------
# training: dead fractions, held-out rows


def test_dead_fractions_agree_across_summary_metrics_and_store(chain):
    m = json.loads((chain.run / "metrics.json").read_text())["saes"]["resid"]
    row = next(ln for ln in chain.train.out.splitlines() if ln.startswith("resid "))
    assert f"{m['dead_fraction']:.2%}" in row.split()  # the summary prints what metrics.json holds
    with sqlite3.connect(chain.store) as db:
        never = db.execute("SELECT count(*) FROM features WHERE n_fires = 0").fetchone()[0] / D_SAE
    # one definition (never fired over the last N tokens, N scaled to the run): the trainer's last
    # passes over the cache and the store's pass with the final SAE see the same rows; what is left
    # is the training form (batch top-k) against the saved form (per-latent thresholds) and the SAE
    # still moving in the window, so within 5 points (the issue saw 0% against 19%)
    assert abs(m["dead_fraction"] - never) <= 0.05, (m["dead_fraction"], never)
    assert abs(m["eval_dead_fraction"] - never) <= 0.1, (m["eval_dead_fraction"], never)
    assert never > 0.02  # the check has something to compare (a wide SAE on a short cache)


def token_ngrams(tok, docs) -> set:
    return set().union(*(ngrams(tok(d, add_special_tokens=False, verbose=False)["input_ids"]) for d in docs))


def test_cached_rows_never_come_from_held_out_files(chain):
    """The corpus folder holds test.jsonl, train.jsonl and validation.jsonl; `--split train` reads
    train.jsonl only (12-token sequences found only in the held-out files must not be cached)."""
    from training.shards import load_tensors

    tok = tokenizer_of(chain.model)
    corpus = chain.corpus
    held_out_only = token_ngrams(tok, corpus.validation_docs + corpus.test_docs) - token_ngrams(tok, corpus.train_docs)
    man = json.loads((chain.cache / "manifest.json").read_text())
    leaked = 0
    for sh in man["shards"]:
        for row in load_tensors(chain.cache / sh["file"], ["context_tokens"])["context_tokens"].tolist():
            leaked += bool(ngrams(row) & held_out_only)
    assert leaked == 0, f"{leaked} of {man['totals']['contexts']} cached contexts hold held-out text"


def test_ce_evaluation_runs_on_validation_rows_only(chain):
    tok = tokenizer_of(chain.model)
    train_ng, val_ng = token_ngrams(tok, chain.corpus.train_docs), token_ngrams(tok, chain.corpus.validation_docs)
    assert len(chain.eval_tokens) == 8
    for row in chain.eval_tokens:
        grams = ngrams(row)
        assert grams & (val_ng - train_ng), "an evaluation context without validation text"
        assert not grams & (train_ng - val_ng), "an evaluation context with training text"


def test_eval_packs_the_held_out_text_as_training_did(chain, tmp_path):
    """`saesteer eval` with no --dataset or --context-length reads the text the SAE's training
    evaluated on, in the contexts training packed (64 tokens, not the flag's default 128): its CE
    contexts are training's, so its CE loss recovered is the one training reported."""
    saesteer("eval", "--sae", chain.sae, "--contexts", 8, "--ce-contexts", 8, "--absorption", "false",
             "--probing", "false", "--quiet", "--out", tmp_path).ok()
    doc = json.loads((tmp_path / "eval.json").read_text())
    assert (doc["data"]["context_length"], doc["data"]["bos_policy"]) == (CONTEXT, "prepend")
    got = doc["saes"]["sae"]["metrics"]
    want = json.loads((chain.run / "metrics.json").read_text())["saes"]["resid"]
    assert got["ce_loss_recovered"] == pytest.approx(want["ce_loss_recovered"], abs=1e-4)
    assert got["kl_div"] == pytest.approx(want["kl_div"], rel=1e-3)


# ----------------------------------------------------------------------------------------------
# SAELens interop


def test_saelens_runs_our_resid_sae_with_our_outputs(chain):
    from helpers.real_interop import assert_same_outputs, saelens_side_by_side

    ours, theirs = saelens_side_by_side(chain.model, chain.sae, CODE, latent=chain.judged[0], value=8.0)
    assert_same_outputs(ours, theirs)


def test_saelens_runs_our_hook_z_sae_with_our_outputs(chain):
    from helpers.real_interop import assert_same_outputs, saelens_side_by_side

    import saes
    from saesteer.models import load_model

    model = load_model(str(chain.model), device="cpu")
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(CODE), names_filter=[HOOK_Z])
    latent = int(saes.load_sae(chain.sae_z).encode(cache[HOOK_Z][0].flatten(1)).amax(0).argmax())
    ours, theirs = saelens_side_by_side(chain.model, chain.sae_z, CODE, latent=latent, value=8.0)
    assert_same_outputs(ours, theirs)


# ----------------------------------------------------------------------------------------------
# steering, sweep, serve


def test_steer_changes_the_text_and_batching_does_not(chain):
    both = json.loads(saesteer(*steer_args(chain, "--model", chain.model, "--do-sample", "false")).ok().out)["results"]
    assert any(r["steered"] != r["unsteered"] for r in both)
    f = chain.judged[0]
    alone = saesteer("steer", "--sae", chain.sae, "--store", chain.store, "--model", chain.model, "--latent",
                     f"{f}:add=3x", "--prompt", "import os", "--max-new-tokens", "6", "--seed", "1", "--json",
                     "--do-sample", "false").ok()
    # "import os" is the shorter prompt: batched, it is left-padded; rotary positions must not shift
    assert json.loads(alone.out)["results"][0] == both[0]


def test_sweep_scores_and_saves_a_recommended_strength(chain, tmp_path):
    saesteer(*sweep_args(chain, tmp_path, "--model", chain.model, "--save-strength")).ok()
    res = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert len(res["points"]) == 3
    from features import FeatureStore

    store = FeatureStore.open(chain.store)
    rec = store.feature(chain.judged[0]).recommended_strength
    store.close()
    assert rec is not None and rec != 0


@pytest.fixture(scope="module")
def server(chain):
    """`saesteer serve` in its own process on a free port; yields its base URL."""
    exe = Path(sys.executable).parent / "saesteer"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "saesteer"]
    proc = subprocess.Popen([*cmd, "serve", "--store", str(chain.store), "--model", str(chain.model), "--device", "cpu",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, lines, deadline = None, [], time.monotonic() + 240
    try:
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            m = re.search(r"serving on (http://127\.0\.0\.1:\d+)/", line)
            url = m.group(1) if m else None
        assert url, "serve did not start:\n" + "".join(lines)
        # the line comes once the server answers (saesteer.web.listen): no retrying
        assert http(f"{url}/api/status"), "".join(lines)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()


def http(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def test_serve_api_over_http(chain, server):
    tok = tokenizer_of(chain.model)
    stores = http(f"{server}/api/stores")
    assert len(stores) == 1 and stores[0]["can_steer"]
    sid = stores[0]["id"]
    f = chain.judged[0]
    detail = http(f"{server}/api/stores/{sid}/features/{f}")
    assert detail["label"]["text"].startswith("[/x] [bold]")  # JSON carries the label as it is
    ex = detail["top_examples"][0]
    assert len(ex["tokens"]) == len(ex["acts"]) and max(ex["acts"]) > 0
    fired = http(f"{server}/api/stores/{sid}/fire", {"text": CODE, "top_k": 3})
    # the web app shows the tokenizer's pieces: tabs and newlines kept, and they join to the text
    assert "".join(fired["tokens"]) == CODE
    assert fired["features"] and all(len(t) <= 3 for t in fired["per_token"])
    steered = http(f"{server}/api/stores/{sid}/steer", {"prompt": "import os", "edits": [
        {"latent": f, "op": "add", "value": 3, "unit": "max_act"}], "max_new_tokens": 6, "seed": 1})
    assert steered["steered"] != steered["default"]
    swept = http(f"{server}/api/stores/{sid}/sweep", {"prompt": "x = ", "edit": {"latent": f, "op": "add"},
                                                     "values": [0, 2], "max_new_tokens": 4})
    assert [p["value"] for p in swept["points"]] == [0, 2]


def test_serve_fire_tokens_join_to_non_ascii_text(chain, server):
    text = "naïve café … 中文 – “quoted”"
    sid = http(f"{server}/api/stores")[0]["id"]
    fired = http(f"{server}/api/stores/{sid}/fire", {"text": text, "top_k": 1})
    assert "".join(fired["tokens"]) == text
