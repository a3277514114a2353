"""`saesteer steer-eval` and `steering.methods.compare_methods`: SAE steering, difference of means and
prompting on one protocol (picked on a dev seed, scored on a test seed), with a scorecard."""

from __future__ import annotations

import json

import pytest

import saes
from helpers.steering_fixtures import torch_threads
from saesteer.cli import build_parser


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def test_compare_methods_on_the_toy_world():
    """The toy world end to end: default concept sets and cue from the toy grammar, offline scores."""
    from helpers.steering_fixtures import random_sae
    from saesteer.toyscore import toy_scorer
    from saesteer.commands.steer_eval import toy_concept
    from saesteer.models import load_model
    from steering import CompareConfig, GenerationConfig
    from steering.methods import compare_methods

    model = load_model("toy", device="cpu")
    sae = random_sae(model, "topk", hook="blocks.2.hook_resid_post", d_sae=256, seed=0, k=16)
    pos, neg, cue = toy_concept("ocean", 6)
    card = compare_methods(model, sae, toy_scorer("ocean"), prompts=[""] * 3, positive=pos, negative=neg, cue=cue,
                           config=CompareConfig(candidates=2, sae_strengths=[1.0, 4.0], vector_strengths=[1.0, 3.0]),
                           gen_config=GenerationConfig(max_new_tokens=10, do_sample=True, stop_at_eos=False))
    assert [r.method for r in card.rows] == ["unsteered", "SAE feature", "diff-of-means", "prompting"]
    pick = card.picks["SAE feature"]
    assert pick.latent in pick.candidates and len(pick.candidates) == 2 and pick.unit == "raw"
    assert len(pick.dev_points) == 2 and card.picks["diff-of-means"].strength in (1.0, 3.0)
    for r in card.rows:
        assert 0 <= r.concept <= 1 and 0 <= r.fluency <= 1 and r.n_samples == 3 and r.perplexity > 0
    # prompting is scored on the plain prompts; its continuation follows the cue
    assert card.generations["prompting"].prompts[0] == cue
    assert card.settings["dev_seed"] != card.settings["test_seed"]
    json.dumps(card.to_json(), allow_nan=False)  # the scorecard is plain JSON


def test_steer_eval_cli_writes_a_scorecard_and_saves_the_pick_as_a_preset(tmp_path, capsys):
    from helpers.web_store import build_web_store

    from features import FeatureStore
    from saesteer.commands import steer_eval
    from steering.store import StoreLink

    ws = build_web_store(tmp_path, name="e")
    sae_dir = tmp_path / "sae"
    saes.save_sae(ws.sae, sae_dir)
    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("the sea and the ship\nthe whale at the shore\nthe sailor sees the wave\n")
    neg.write_text("the tree in the forest\nbread and soup\nthe car on the road\n")
    out = tmp_path / "card.json"
    argv = ["steer-eval", "--sae", str(sae_dir), "--store", str(ws.path), "--topic", "ocean", "--positive", str(pos),
            "--negative", str(neg), "--cue", "the sea", "--samples", "2", "--max-new-tokens", "6",
            "--sae-strengths", "1,3", "--vector-strengths", "1,2", "--candidates", "1", "--out", str(out),
            "--save-preset", "eval-pick"]
    assert steer_eval._run(build_parser().parse_args(argv), model=ws.model) == 0
    text = capsys.readouterr().out
    assert "SAE feature" in text and "diff-of-means" in text and "prompting" in text
    card = json.loads(out.read_text())
    assert [m["method"] for m in card["methods"]] == ["unsteered", "SAE feature", "diff-of-means", "prompting"]
    assert card["settings"]["topic"] == "ocean" and card["settings"]["cue"] == "the sea"
    assert card["provenance"]["hook"] == "blocks.0.hook_resid_post"
    pick = card["picks"]["SAE feature"]
    with FeatureStore.open(ws.path) as store:
        preset = StoreLink(store).preset("eval-pick")
    assert preset.scorecard["picks"]["SAE feature"]["latent"] == pick["latent"]
    assert preset.edits[0].startswith(f"{pick['latent']}:add=")
    # a sweep of the same SAE records what it measured with the same record (one builder, the same keys)
    from saesteer.commands import sweep

    argv = ["sweep", "--sae", str(sae_dir), "--store", str(ws.path), "--latent", str(pick["latent"]), "--topic", "ocean",
            "--strengths", "0,3", "--unit", "raw", "--samples", "1", "--max-new-tokens", "3", "--perplexity", "false",
            "--out", str(tmp_path)]
    assert sweep._run(build_parser().parse_args(argv), model=ws.model) == 0
    (swept,) = tmp_path.glob(f"sweep_*_{pick['latent']}.json")
    assert json.loads(swept.read_text())["provenance"] == card["provenance"]
    assert card["provenance"]["store"] == str(ws.path.resolve()) and card["provenance"]["model"]["id"]


@pytest.mark.parametrize("argv, fragment", [
    (["--topic", "ocean", "--positive", "POS"], "both --positive and --negative"),
    (["--concept", "sea"], "--latent L, or --positive"),
    (["--topic", "lava"], "unknown toy-world topic"),
    (["--topic", "ocean", "--dev-seed", "3", "--test-seed", "3"], "must differ"),
    (["--topic", "ocean", "--save-preset", "x"], "--store"),
])
def test_steer_eval_errors(tmp_path, capsys, argv, fragment):
    from saesteer.commands import steer_eval

    pos = tmp_path / "pos.txt"
    pos.write_text("the sea\n")
    argv = [a if a != "POS" else str(pos) for a in argv]
    args = build_parser().parse_args(["steer-eval", "--sae", str(tmp_path / "none"), *argv])
    assert steer_eval.run(args) == 2
    assert fragment in capsys.readouterr().err


def test_steer_eval_refuses_a_mistyped_out_folder_before_the_judge_cache_creates_it(tmp_path, capsys):
    """--out TYPO/card.json with --concept: the judge's cache (TYPO/card.json.judge-cache.sqlite) made
    the folder, so "does not exist" never fired and the run went on to write there; now the folder is
    checked first (here before the SAE, which does not exist, is even read)."""
    from saesteer.cli import main

    typo = tmp_path / "rsults"
    rc = main(["steer-eval", "--sae", str(tmp_path / "no-sae"), "--latent", "3", "--concept", "the ocean",
               "--judge-model", "m", "--judge-base-url", "http://127.0.0.1:9/v1", "--out", str(typo / "card.json")])
    assert rc == 2 and f"the folder {typo} does not exist" in capsys.readouterr().err
    assert not typo.exists()


@pytest.mark.parametrize("command, beside_out", [("steer-eval", "<out>.judge-cache.sqlite"),
                                                  ("sweep", "<out>/judge-cache.sqlite")])
def test_judge_cache_path_help_says_the_default_without_a_store(command, beside_out):
    """--judge-cache-path's help named only <store>.judge-cache.sqlite; without --store the answers are
    kept beside --out (`sweep._judge_cache_path`)."""
    import re

    (sub,) = [a for a in build_parser()._subparsers._group_actions[0].choices[command]._actions
              if "--judge-cache-path" in a.option_strings]
    assert beside_out in sub.help and "<store>.judge-cache.sqlite" in sub.help, sub.help
    assert not re.search(r"\(default: None\)", sub.help), sub.help


def test_steer_eval_with_a_judge_that_gives_no_usable_rating_writes_nothing(tmp_path, monkeypatch):
    """A judge that never answers with a 0-2 rating would score every method 0 (AxBench's rule for
    an unusable answer): the scorecard is refused instead, naming the judge flags."""
    from helpers.web_store import build_web_store

    from saesteer.commands import steer_eval, sweep
    from saesteer.commands._steering import CLIError
    from steering.evaluate import JudgeScorer

    ws = build_web_store(tmp_path, name="j")
    saes.save_sae(ws.sae, tmp_path / "sae")
    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("the sea and the ship\nthe whale at the shore\n")
    neg.write_text("the tree in the forest\nbread and soup\n")
    monkeypatch.setattr(sweep, "_scorer", lambda args, judge_cfg: (JudgeScorer(lambda m: "I cannot rate this", "the sea"),
                                                                None))
    out = tmp_path / "card.json"
    argv = ["steer-eval", "--sae", str(tmp_path / "sae"), "--store", str(ws.path), "--concept", "the sea",
            "--positive", str(pos), "--negative", str(neg), "--cue", "the sea", "--samples", "1",
            "--max-new-tokens", "4", "--sae-strengths", "1", "--vector-strengths", "1", "--candidates", "1",
            "--out", str(out), "--judge-model", "judge", "--judge-base-url", "http://127.0.0.1:9/v1"]
    with pytest.raises(CLIError, match="no usable rating.*--judge-model"):
        steer_eval._run(build_parser().parse_args(argv), model=ws.model)
    assert not out.exists()


def test_compare_methods_feeds_every_method_the_prompts_the_sae_was_trained_on():
    """Every method's prompts start with the BOS the SAE records (cfg.json prepend_bos=false here,
    on a model that prepends BOS by default): the unsteered, diff-of-means and prompting rows got
    the model's default, the SAE-feature row the SAE's, so the scorecard compared other prompts."""
    from helpers.steering_fixtures import random_sae
    from saesteer.models import load_model
    from saesteer.toyscore import toy_scorer
    from steering import CompareConfig, GenerationConfig
    from steering.methods import compare_methods

    model = load_model("toy", device="cpu")
    assert model.cfg.default_prepend_bos
    sae = random_sae(model, "topk", hook="blocks.2.hook_resid_post", d_sae=64, seed=0, k=8)
    sae.cfg.metadata["prepend_bos"] = False
    card = compare_methods(model, sae, toy_scorer("ocean"), prompts=["the sea"], positive=["the whale"],
                           negative=["the owl"], cue="Talk about the ocean.", latents=[3],
                           config=CompareConfig(sae_strengths=[1.0], vector_strengths=[1.0]),
                           gen_config=GenerationConfig(max_new_tokens=2, do_sample=False, stop_at_eos=False),
                           with_perplexity=False)
    bos = model.tokenizer.bos_token_id
    firsts = {method: int(gen.tokens[0, 0]) for method, gen in card.generations.items()}
    assert set(firsts) == {"unsteered", "SAE feature", "diff-of-means", "prompting"}
    assert bos not in firsts.values(), firsts


def test_prompt_files_read_alike_in_steer_and_steer_eval(tmp_path):
    """--prompts-file, --contrast and --positive / --negative: one reader, one rule. --positive stripped
    a code line's indentation (tokens the contrast should see) and --prompts-file kept the invisible
    spaces at a line's end; now every file keeps indentation and drops what ends a line."""
    from saesteer.commands import steer_eval
    from saesteer.commands._steering import read_prompt_file, read_prompts

    code = tmp_path / "code.txt"
    code.write_bytes("def café(x):\r\n    return x  \r\n\r\n\t# 東京\n".encode())
    want = ["def café(x):", "    return x", "\t# 東京"]
    sae = str(tmp_path / "sae")
    steer = build_parser().parse_args(["steer", "--sae", sae, "-l", "1:add=2", "--prompts-file", str(code)])
    evaluate = build_parser().parse_args(["steer-eval", "--sae", sae, "--concept", "code", "--positive", str(code),
                                          "--negative", str(code), "--prompts-file", str(code)])
    assert read_prompts(steer) == want and read_prompts(evaluate) == want
    assert steer_eval._concept_sets(evaluate)[:2] == (want, want)
    assert read_prompt_file(str(code), "--contrast") == want
