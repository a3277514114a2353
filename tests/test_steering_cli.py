"""`saesteer steer` and `saesteer sweep` on the tiny model (injected instead of --model)."""

import json

import pytest

import saes
from helpers.steering_fixtures import random_sae, tiny_model, torch_threads
from saesteer.cli import build_parser
from steering import hooks_attached


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def sae_dir(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("sae") / "tiny-sae"
    saes.save_sae(random_sae(model, "topk"), path)
    return path


def parse(*argv):
    return build_parser().parse_args(list(argv))


def test_steer_prints_both_sides_as_json(model, sae_dir, capsys):
    from saesteer.commands import steer

    args = parse("steer", "--sae", str(sae_dir), "-l", "3:clamp=9", "-l", "5:add=4@generated", "-p", "the sea",
                 "-p", "", "--max-new-tokens", "5", "--seed", "2", "--do-sample", "false", "--json")
    assert steer._run(args, model=model) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["edits"] == "3:clamp=9; 5:add=4@generated" and out["seed"] == 2
    assert [r["prompt"] for r in out["results"]] == ["the sea", ""]
    assert any(r["steered"] != r["unsteered"] for r in out["results"])
    assert hooks_attached(model) == []


def test_feature_the_older_name_of_latent_still_works_and_is_hidden_from_help(model, sae_dir, capsys):
    from saesteer.commands import steer

    runs = []
    for flag in ("--latent", "-l", "--feature", "-f"):
        args = parse("steer", "--sae", str(sae_dir), flag, "3:clamp=9", "-p", "the sea", "--max-new-tokens", "3", "--json")
        assert steer._run(args, model=model) == 0
        runs.append(json.loads(capsys.readouterr().out))
    assert all(r == runs[0] for r in runs) and runs[0]["edits"] == "3:clamp=9"
    assert parse("sweep", "--sae", str(sae_dir), "-f", "3", "--feature", "4").latent == ["3", "4"]  # an index or a Neuronpedia latent
    assert parse("features", "export", "s.db", "out", "--features", "0-3").latents == "0-3"
    for cmd in (["steer"], ["sweep"], ["steer-eval"], ["preset", "save"], ["features", "export"]):
        with pytest.raises(SystemExit):
            parse(*cmd, "--help")
        text = capsys.readouterr().out
        assert "--feature" not in text and "-f " not in text and "--lat" in text


def test_steer_table_output(model, sae_dir, capsys):
    from saesteer.commands import steer

    args = parse("steer", "--sae", str(sae_dir), "-l", "3:clamp=9", "-p", "the sea", "--max-new-tokens", "3")
    assert steer._run(args, model=model) == 0
    out = capsys.readouterr().out
    assert "unsteered" in out and "steered" in out and "3:clamp=9" in out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["-l", "999:clamp=1", "-p", "x"], "out of range"),
        (["-l", "3:clamp=nan", "-p", "x"], "finite"),
        (["-l", "3:clamp=2x", "-p", "x"], "typical max"),
        (["-l", "3:clamp=1"], "--prompt"),
        (["-p", "x"], "--latent"),
        (["-l", "3:clamp=1", "-p", "x", "--max-new-tokens", "5000"], "cap"),
        (["--search", "ocean"], "--store"),
    ],
)
def test_steer_errors(model, sae_dir, capsys, argv, fragment, monkeypatch):
    from saesteer.commands import steer

    monkeypatch.setattr(steer, "_run", lambda a, _run=steer._run: _run(a, model=model))
    args = parse("steer", "--sae", str(sae_dir), *argv)
    assert steer.run(args) == 2
    assert fragment in capsys.readouterr().err
    assert hooks_attached(model) == []


def test_steer_bad_sae_folder(tmp_path, capsys):
    from saesteer.commands import steer

    assert steer.run(parse("steer", "--sae", str(tmp_path / "nope"), "-l", "1:clamp=1", "-p", "x")) == 2
    assert "cannot load SAE" in capsys.readouterr().err


def test_sweep_writes_plot_and_numbers(model, sae_dir, tmp_path, capsys):
    pytest.importorskip("toyworld.validate")
    from saesteer.commands import sweep

    args = parse("sweep", "--sae", str(sae_dir), "--latent", "3", "--topic", "ocean", "--strengths", "0,6",
                 "--unit", "raw", "--samples", "2", "--max-new-tokens", "4", "--out", str(tmp_path), "--perplexity", "false",
                 "--target-concept", "0.99", "--min-fluency", "0.99", "--rule", "margin")
    assert sweep._run(args, model=model) == 0
    html = tmp_path / "sweep_sae_3.html"
    data = json.loads((tmp_path / "sweep_sae_3.json").read_text())
    assert html.is_file() and [p["strength"] for p in data["points"]] == [0.0, 6.0]
    assert all(p["n_samples"] == 2 for p in data["points"])
    # nothing reaches these targets: no strength works (never "0", the unsteered baseline)
    assert data["recommended"] is None and data["rule"].startswith("the largest margin over")
    assert data["verdict"].startswith("no strength works") and "no strength works" in capsys.readouterr().out


def test_a_clamp_sweep_of_several_latents_generates_the_unsteered_text_once(model, sae_dir, tmp_path, monkeypatch):
    """A clamp sweep's baseline is the unsteered text (clamping to 0 ablates): `sweep --latent A
    --latent B` makes it once, not once per latent."""
    pytest.importorskip("toyworld.validate")
    import steering.sweeps as sweeps
    from saesteer.commands import sweep

    unsteered_runs = []
    real = sweeps.generate
    monkeypatch.setattr(sweeps, "generate", lambda *a, **kw: unsteered_runs.append(1) or real(*a, **kw))
    args = parse("sweep", "--sae", str(sae_dir), "--latent", "3", "--latent", "5", "--topic", "ocean", "--op", "clamp",
                 "--strengths", "0,6", "--unit", "raw", "--samples", "2", "--max-new-tokens", "4", "--out", str(tmp_path),
                 "--perplexity", "false")
    assert sweep._run(args, model=model) == 0
    assert len(unsteered_runs) == 1
    docs = [json.loads((tmp_path / f"sweep_sae_{f}.json").read_text()) for f in (3, 5)]
    assert docs[0]["unsteered"] == docs[1]["unsteered"] and docs[0]["unsteered"]["n_samples"] == 2


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The web tests' tiny feature store, with its SAE saved as a folder for --sae."""
    from helpers.web_store import build_web_store

    d = tmp_path_factory.mktemp("stored")
    with torch_threads(1):
        ws = build_web_store(d)
    saes.save_sae(ws.sae, d / "sae")
    return ws, d / "sae"


def test_sweep_save_strength_stores_a_strength_or_an_explicit_none_never_zero(stored, tmp_path, capsys, monkeypatch):
    from features import FeatureStore
    from saesteer.commands import sweep
    from steering.evaluate import OfflineScorer

    ws, sae = stored
    # the tiny model does not speak the toy language: score "ocean" as the share of its sea words
    sea = set("sea wave ship sailor fish salt tide harbor storm whale coral shore".split())
    share = OfflineScorer(lambda t: sum(w in sea for w in t.split()) / max(1, len(t.split())), lambda t: (1, 1))
    monkeypatch.setattr(sweep, "_scorer", lambda args, judge_cfg: (share, None))
    def run(label, *extra):
        f = next(i for i, lab in ws.labels.items() if lab == label)
        argv = ["sweep", "--sae", str(sae), "--store", str(ws.path), "--latent", str(f), "--topic", "ocean",
                "--samples", "2", "--max-new-tokens", "6", "--out", str(tmp_path), "--save-strength", "--no-progress",
                "--strengths", "0,1,4", *extra]
        assert sweep._run(parse(*argv), model=ws.model) == 0
        with FeatureStore.open(ws.path) as st:
            stored = st.feature(f).recommended_strength
        return json.loads((tmp_path / f"sweep_sae_{f}.json").read_text()), stored, capsys.readouterr().out

    # steering "kitchen tools" brings a sea word in at 4x: recommended and stored
    data, stored, out = run("kitchen tools")
    assert data["recommended"] == 4.0 and stored == 4.0 and "stored recommended strength 4" in out
    # the "ocean words" latent only loses the one sea word the unsteered text had: the unsteered point
    # scores best, which the old rule recommended (and stored: 0); now no strength works
    data, stored, out = run("ocean words")
    assert [p["concept"] > 0 for p in data["points"]] == [True, False, False]
    assert data["recommended"] is None and stored is None
    assert "no strength works" in out and "stored 'no strength'" in out
    # and a stricter target replaces an earlier recommendation with the explicit none
    data, stored, out = run("kitchen tools", "--target-concept", "0.9")
    assert data["recommended"] is None and stored is None and data["verdict"].startswith("no strength works")


def test_sweep_with_a_judge_that_gives_no_usable_rating_stores_nothing(stored, tmp_path, capsys, monkeypatch):
    """A judge whose answers are no 0-2 rating (a misconfigured server, another schema) scores 0 per
    answer (AxBench's rule): when no answer was usable the sweep stops before writing or storing,
    naming the judge flags; some unusable answers are counted in a note."""
    from features import FeatureStore
    from saesteer.commands import sweep
    from saesteer.commands._steering import CLIError
    from steering.evaluate import JudgeScorer

    ws, sae = stored
    f = next(iter(ws.labels))
    with FeatureStore.open(ws.path) as st:
        before = st.feature(f).recommended_strength
    answers = {"n": 0}

    def judge(messages, usable_every=0):
        answers["n"] += 1
        return '{"rating": 2}' if usable_every and answers["n"] % usable_every == 0 else '{"answers": [1]}'

    argv = ["sweep", "--sae", str(sae), "--store", str(ws.path), "--latent", str(f), "--concept", "the sea",
            "--samples", "1", "--max-new-tokens", "4", "--out", str(tmp_path / "o"), "--save-strength",
            "--no-progress", "--strengths", "0,2", "--judge-model", "judge", "--judge-base-url", "http://127.0.0.1:9/v1"]
    monkeypatch.setattr(sweep, "_scorer", lambda args, judge_cfg: (JudgeScorer(judge, "the sea"), None))
    with pytest.raises(CLIError, match=r"no usable rating \(\d+ of \d+ answers.*--judge-model and --judge-base-url"):
        sweep._run(parse(*argv), model=ws.model)
    assert not (tmp_path / "o").exists()
    with FeatureStore.open(ws.path) as st:
        assert st.feature(f).recommended_strength == before
    monkeypatch.setattr(sweep, "_scorer", lambda args, judge_cfg: (
        JudgeScorer(lambda m: judge(m, usable_every=2), "the sea"), None))
    assert sweep._run(parse(*argv), model=ws.model) == 0
    assert "judge answers were unusable and scored 0" in capsys.readouterr().err


def test_sweep_errors_name_flags_that_exist(model, sae_dir, stored, tmp_path, capsys):
    from saesteer.commands import sweep

    base = ["sweep", "--sae", str(sae_dir), "--latent", "3", "--no-progress", "--out", str(tmp_path)]
    assert sweep.run(parse(*base, "--topic", "ocean")) == 2  # x strengths without a store
    err = capsys.readouterr().err
    assert "give --store FILE, or --unit raw" in err and "typical_max=" not in err
    assert sweep.run(parse(*base, "--concept", "the sea", "--min-grammar", "0.8")) == 2
    assert "--min-grammar needs" in capsys.readouterr().err
    # steering's own errors name config fields; the command says them as its flags
    assert sweep.run(parse(*base, "--topic", "ocean", "--rule", "margin")) == 2
    err = capsys.readouterr().err
    assert "set --target-concept" in err and "target_concept" not in err
    assert sweep.run(parse(*base, "--topic", "ocean", "--unit", "raw", "--strengths", "0,2", "--min-fluency", "2")) == 2
    assert "--min-fluency must be in [0, 1]" in capsys.readouterr().err
    ws, sae = stored
    from features import FeatureStore

    with FeatureStore.open(ws.path) as st:
        dead = [r.latent for r in st.list_features(filter={"flags": ["dead"]}, limit=5)]
    assert dead, "the web tests' store has latents that never fire"
    from saesteer.commands._steering import CLIError

    # a latent that never fired has no typical max in its store
    args = parse("sweep", "--sae", str(sae), "--store", str(ws.path), "--latent", str(dead[0]), "--topic", "ocean",
                 "--out", str(tmp_path))
    with pytest.raises(CLIError, match=rf"^latent\(s\) {dead[0]} have no typical max .*sweep them with --unit raw"):
        sweep._run(args, model=ws.model)
    from saesteer.boundary import fields_as_flags

    sweep_parser = parse(*base)._parser
    assert (fields_as_flags("use a smaller value or raise SteerLimits.max_multiple", sweep_parser)
            == "use a smaller value or raise --max-multiple")
    assert fields_as_flags("see /tmp/target_concept/x and no_such_field", sweep_parser) == (
        "see /tmp/target_concept/x and no_such_field")


def test_sweep_needs_one_scorer(model, sae_dir, capsys):
    from saesteer.commands import sweep

    assert sweep.run(parse("sweep", "--sae", str(sae_dir), "--latent", "3")) == 2
    assert "--topic" in capsys.readouterr().err


def test_toy_scorer_judges_sentences_in_the_prompt_context():
    pytest.importorskip("toyworld.validate")
    from saesteer.toyscore import ToyScorerError, toy_scorer

    scorer = toy_scorer("ocean", "document")
    with_intro, without = scorer(["anna was a happy sailor .", ""], ["she found the boat . the", "she found the boat ."])
    assert with_intro.concept == 1.0 and with_intro.grammar == 1.0  # "she" refers to anna; "the" is unfinished
    assert without.grammar == 0.0  # no character introduced for "she"
    alone = toy_scorer("ocean", "sentence")(["", ""], ["she found the boat .", "boat the found she ."])
    assert [s.grammar for s in alone] == [1.0, 0.0]
    with pytest.raises(ToyScorerError, match="unknown toy-world topic"):
        toy_scorer("mars")


def test_steer_hook_flag_for_saes_without_one(model, tmp_path, capsys):
    from saesteer.commands import steer

    sae = random_sae(model, "jumprelu")
    del sae.cfg.metadata["hook_name"]
    saes.save_sae(sae, tmp_path / "nohook")
    base = ["steer", "--sae", str(tmp_path / "nohook"), "-l", "3:clamp=5", "-p", "the sea", "--max-new-tokens", "2"]
    from saesteer.commands._steering import CLIError
    from steering.spec import SteeringError

    with pytest.raises(SteeringError, match="hook point"):
        steer._run(parse(*base), model=model)
    assert steer._run(parse(*base, "--hook", "blocks.1.hook_resid_post", "--json"), model=model) == 0
    saes.save_sae(random_sae(model, "jumprelu"), tmp_path / "withhook")
    with pytest.raises(CLIError, match="trained on"):
        steer._run(parse("steer", "--sae", str(tmp_path / "withhook"), "-l", "3:clamp=5", "-p", "x",
                         "--hook", "blocks.0.hook_resid_post"), model=model)


def test_an_sae_without_hook_point_asks_for_hook_in_every_command(tmp_path, capsys):
    """A Gemma Scope params.npz records no hook point: steer, sweep and top-on-text say --hook (not a
    Python attribute or argument), before any model is loaded."""
    import numpy as np

    from saesteer.cli import main

    D, F = 128, 16
    np.savez(tmp_path / "params.npz", W_enc=np.zeros((D, F), np.float32), W_dec=np.zeros((F, D), np.float32),
             b_enc=np.zeros(F, np.float32), b_dec=np.zeros(D, np.float32), threshold=np.zeros(F, np.float32))
    npz = str(tmp_path / "params.npz")
    for argv in (["steer", "--sae", npz, "--model", "toy", "-p", "x", "-l", "1:add=1"],
                 ["sweep", "--sae", npz, "--model", "toy", "-p", "x", "-l", "1", "--topic", "ocean", "--unit", "raw"],
                 ["features", "top-on-text", "--sae", npz, "--model", "toy", "anna saw"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "does not record its hook point; pass --hook" in err and "metadata" not in err and "hook_name" not in err, err


def test_an_unrecorded_sae_naming_the_toy_model_is_told_to_pass_model_toy(tmp_path) -> None:
    """An SAE whose files name the toy model ('toyworld-tiny', which no hub has) and record no model:
    the refusal says --model toy, not to pass its name as a hub name."""
    from types import SimpleNamespace

    from saesteer.commands._steering import CLIError, _refuse_unrecorded

    item = SimpleNamespace(sae=SimpleNamespace(cfg=SimpleNamespace(metadata={"model_name": "toyworld-tiny"})))
    with pytest.raises(CLIError) as err:
        _refuse_unrecorded("SAE 'sae'", {"sae": item})
    msg = str(err.value)
    assert "'toyworld-tiny'" in msg and "--model toy" in msg and "if it is the HF hub name" not in msg


def test_steer_feeds_prompts_after_bos_to_an_sae_trained_on_bos_policy_doc(model, tmp_path, capsys, monkeypatch):
    """An SAE trained with `--bos-policy doc` (BOS before every document; cfg.json prepend_bos=false,
    as SAELens reads its contexts) steers generations whose prompts start with BOS: a prompt is a
    document's start. It was fed without BOS, as a 'none' SAE is."""
    import steering.comparison
    from saesteer.commands import steer

    sae = random_sae(model, "topk")
    sae.cfg.metadata["prepend_bos"] = False
    seen = {}
    real = steering.comparison.compare

    def spy(model, saes, edits, prompts, config, **kw):
        seen["prepend_bos"] = config.prepend_bos
        return real(model, saes, edits, prompts, config, **kw)

    monkeypatch.setattr(steering.comparison, "compare", spy)
    for policy, wanted in (("doc", True), ("none", False)):
        saes.save_sae(sae, tmp_path / policy, provenance={"tool": "saesteer", "data": {"bos_policy": policy}})
        args = parse("steer", "--sae", str(tmp_path / policy), "-l", "3:add=4", "-p", "the sea", "--max-new-tokens", "2",
                     "--do-sample", "false", "--json")
        assert steer._run(args, model=model) == 0 and seen["prepend_bos"] is wanted, policy
        capsys.readouterr()


def test_steer_contrast_reads_a_doc_policy_saes_prompt_sets_after_bos(model, tmp_path, capsys, monkeypatch):
    """`steer --contrast` ranks a 'doc'-policy SAE's latents on prompts read after BOS, as its
    generations are (it took the bare SAE's cfg.json: no BOS)."""
    import steering.search
    from saesteer.commands import steer

    sae = random_sae(model, "topk")
    sae.cfg.metadata["prepend_bos"] = False
    saes.save_sae(sae, tmp_path / "doc", provenance={"tool": "saesteer", "data": {"bos_policy": "doc"}})
    (tmp_path / "pos.txt").write_text("the sea\nthe whale\n")
    (tmp_path / "neg.txt").write_text("the owl\nthe tree\n")
    seen = []
    real = steering.search.mean_latent_activation

    def spy(*a, prepend_bos=None, **kw):
        seen.append(prepend_bos)
        return real(*a, prepend_bos=prepend_bos, **kw)

    monkeypatch.setattr(steering.search, "mean_latent_activation", spy)
    args = parse("steer", "--sae", str(tmp_path / "doc"), "--contrast", str(tmp_path / "pos.txt"), str(tmp_path / "neg.txt"),
                 "--json")
    assert steer._run(args, model=model) == 0 and seen == [True, True]


@pytest.fixture(scope="module")
def no_bos_sae_dir(model, tmp_path_factory):
    """An SAE trained with `--bos-policy none`: cfg.json prepend_bos=false, saesteer.json says "none"."""
    sae = random_sae(model, "topk")
    sae.cfg.metadata["prepend_bos"] = False
    path = tmp_path_factory.mktemp("sae") / "no-bos"
    saes.save_sae(sae, path, provenance={"tool": "saesteer", "data": {"bos_policy": "none"}})
    return path


def test_an_unconditional_sweep_on_a_no_bos_sae_generates_from_the_bos_token(model, no_bos_sae_dir, tmp_path,
                                                                            monkeypatch):
    """`saesteer sweep` without --prompt generates from nothing (""); an SAE trained without BOS
    prepends none, so the prompt was zero tokens and TransformerLens's generate died of an IndexError.
    Generating from nothing starts from the model's BOS; prompts with text still get none."""
    pytest.importorskip("toyworld.validate")
    import steering.generation
    import steering.sweeps
    from saesteer.commands import sweep

    starts = []
    real = steering.generation.generate

    def spy(model, prompts, config=None, **kw):
        res = real(model, prompts, config, **kw)
        starts.extend(res.tokens[:, 0].tolist())
        return res

    monkeypatch.setattr(steering.generation, "generate", spy)
    monkeypatch.setattr(steering.sweeps, "generate", spy)
    args = parse("sweep", "--sae", str(no_bos_sae_dir), "--latent", "3", "--topic", "ocean", "--strengths", "0,6",
                 "--unit", "raw", "--samples", "2", "--max-new-tokens", "4", "--out", str(tmp_path),
                 "--perplexity", "false")
    assert sweep._run(args, model=model) == 0
    data = json.loads((tmp_path / "sweep_sae_3.json").read_text())
    assert [p["n_samples"] for p in data["points"]] == [2, 2]
    assert starts and set(starts) == {model.tokenizer.bos_token_id}
    # a prompt with text is fed as the SAE was trained: no BOS
    starts.clear()
    args = parse("sweep", "--sae", str(no_bos_sae_dir), "--latent", "3", "--topic", "ocean", "--strengths", "0,6",
                 "--unit", "raw", "--samples", "1", "--max-new-tokens", "2", "--out", str(tmp_path), "-p", "the sea",
                 "--perplexity", "false")
    assert sweep._run(args, model=model) == 0
    assert starts and set(starts) == {int(model.to_tokens("the sea", prepend_bos=False)[0, 0])}


def test_an_empty_prompt_on_a_model_without_a_bos_token_is_refused_asking_for_a_prompt(no_bos_sae_dir, capsys,
                                                                                       monkeypatch):
    """Where the tokenizer has no BOS token (Qwen2's has none; TransformerLens fills in its eos, a model
    built otherwise may not) an empty prompt has nothing to start from: one line asking for a prompt,
    not TransformerLens's IndexError."""
    from helpers.real_models import build_family_tokenizer, corpus_documents
    from helpers.tiny_model import make_model
    from saesteer.commands import steer

    bosless = make_model(build_family_tokenizer("qwen2", corpus_documents(), vocab_size=300))
    bosless.tokenizer.bos_token = None  # undo TransformerLens's fill-in (its eos)
    monkeypatch.setattr(steer, "_run", lambda a, _run=steer._run: _run(a, model=bosless))
    assert steer.run(parse("steer", "--sae", str(no_bos_sae_dir), "-l", "3:add=4", "-p", "", "--max-new-tokens", "2",
                           "--no-progress")) == 2
    err = capsys.readouterr().err.strip()
    assert "no BOS token" in err and err.endswith("give a prompt") and len(err.splitlines()) == 1, err
    assert hooks_attached(bosless) == []


@pytest.mark.parametrize("argv, what", [
    (["steer", "-l", "128:clamp=1", "-p", "x"], "128:clamp=1: latent 128"),
    (["steer", "-l", "3:clamp=1?200>1", "-p", "x"], "3:clamp=1?200>1: trigger latent 200"),
    (["sweep", "-l", "3", "-l", "128", "--topic", "ocean", "--unit", "raw"], "latent 128"),
    (["steer-eval", "-l", "128", "--topic", "ocean"], "latent 128"),
])
def test_a_latent_out_of_range_is_refused_from_the_saes_width_before_the_model_loads(sae_dir, monkeypatch, argv, what):
    from helpers.real_cli import saesteer
    from saesteer.commands import _steering

    def no_model(*a, **kw):
        raise AssertionError("the model was loaded for a latent the SAE does not have")

    monkeypatch.setattr(_steering, "load_model", no_model)
    r = saesteer(*argv, "--sae", sae_dir, "--model", "toy").no_traceback()
    assert r.rc == 2 and r.err.strip().splitlines() == [
        f"error: {what} is out of range for SAE 'sae' (d_sae 128); valid ids are 0..127"]
