"""`saesteer train` end to end on a small fake cache: outputs, resume, refusal, config files."""

from __future__ import annotations

import argparse

import json
from pathlib import Path

import pytest

from saesteer.cli import main

FLAGS = ["--total-tokens", "3072", "--batch-size", "256", "--holdout-tokens", "512", "--d-sae", "64", "--k", "4",
         "--architecture", "topk,matryoshka", "--checkpoint-every-tokens", "1024", "--eval-every-tokens", "1024",
         "--no-progress", "--num-threads", "1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    from helpers.fake_cache import make_fake_cache

    return make_fake_cache(tmp_path_factory.mktemp("c") / "cache", shard_rows=[1024, 1024, 2048], d_in=16).path


def test_train_cli_outputs_and_resume(cache: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "--cache", str(cache), "--out", str(out), *FLAGS]) == 0
    text = capsys.readouterr().out
    assert "topk_k4_f64" in text and "matryoshka_batchtopk_k4_f64" in text and "no CE loss recovered" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["format"] == "saesteer.train_metrics" and metrics["tokens_trained"] == 3072
    for key in ("steps", "activation_scale", "step_method", "tokens_per_second", "config", "data", "saes"):
        assert key in metrics
    m = metrics["saes"]["matryoshka_batchtopk_k4_f64"]
    assert [lv["width"] for lv in m["levels"]][-1] == 64
    for key in ("explained_variance", "mse", "l0", "dead_fraction", "eval_dead_fraction", "dense_fraction"):
        assert isinstance(m[key], float)
    assert (out / "training_curves.html").stat().st_size > 100_000
    assert metrics["data"]["hook_name"] == "blocks.0.hook_resid_post"

    from saes import load_sae, read_provenance

    folder = out / "saes" / "topk_k4_f64"
    ours = load_sae(folder)
    prov = read_provenance(folder)
    assert prov["tokens_trained"] == 3072 and prov["activation_scale_folded"] and "explained_variance" in prov["metrics"]
    assert ours.cfg.metadata["hook_name"] == "blocks.0.hook_resid_post"
    assert load_sae(out / "saes" / "matryoshka_batchtopk_k4_f64").architecture == "matryoshka_batchtopk"

    # same command again: the run is complete, nothing is retrained
    assert main(["train", "--cache", str(cache), "--out", str(out), *FLAGS]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["saes"]["topk_k4_f64"]["explained_variance"] == metrics["saes"]["topk_k4_f64"]["explained_variance"]
    # a changed setting is refused naming the flag that changed it (the domain error names the field)
    code = main(["train", "--cache", str(cache), "--out", str(out), *FLAGS, "--aux-coef", "0.5", "--k-aux", "3",
                 "--k", "8"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot resume" in err, err
    for said in ("--aux-coef: checkpoint 0.03125, now 0.5", "--k-aux: checkpoint None, now 3",
                 "--k (SAE 0): checkpoint 4, now 8", "--sae-name (SAE 1): checkpoint 'matryoshka_batchtopk_k4_f64'"):
        assert said in err, err
    assert "train.aux_coef" not in err and "saes.0.k" not in err and "Traceback" not in err


def test_resume_refusal_paths_without_a_flag_stay_fields() -> None:
    from saesteer.commands._config_paths import config_paths_as_flags

    said = config_paths_as_flags("  - train.no_such_field: checkpoint 1, now 2\n  - checkpoint.every_tokens: x\n"
                                 "  - saes.len: checkpoint 2, now 1\n  - eval.every_tokens /runs/train.k_aux",
                                 _train_parser())
    assert said == ("  - train.no_such_field: checkpoint 1, now 2\n  - --checkpoint-every-tokens: x\n"
                    "  - the number of SAEs (--architecture, --d-sae, --k): checkpoint 2, now 1\n"
                    "  - --eval-every-tokens /runs/train.k_aux")


def _train_parser():
    from saesteer.cli import build_parser

    return build_parser().parse_args(["train"])._parser  # the sub-command's parser, as the CLI's boundary gets it


def test_resume_refusal_never_names_a_flag_of_another_field() -> None:
    """A path whose field has no flag of its own stays a path, even where another section's flag
    has the same name (--seed is train.seed's, --device train.device's)."""
    from saesteer.commands._config_paths import config_paths_as_flags

    said = config_paths_as_flags("saes.0.seed: a; log.device: b; optim.seed: c; saes.0.options.k_aux: d; "
                                 "saes.1.options.l0_coefficient: e; config.json", _train_parser())
    assert said == ("saes.0.seed: a; log.device: b; optim.seed: c; saes.0.options.k_aux: d; "
                    "--l0-coefficient (SAE 1): e; config.json")


def test_every_run_config_field_with_a_flag_is_said_as_that_flag() -> None:
    """Each section field and architecture setting of RunConfig is said as a flag of train's --help
    (log.progress: set by --no-progress and never refused, it stays a path)."""
    import dataclasses

    from saesteer.commands._train_options import option_configs, shared_sae_fields
    from saesteer.commands._config_paths import config_paths_as_flags
    from training.config import RunConfig, SAESpec

    parser = _train_parser()
    shown = {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}
    paths = [f"{f.name}.{g.name}" for f in dataclasses.fields(RunConfig) if f.name != "saes"
             for g in dataclasses.fields(f.default_factory())]
    paths += [f"saes.0.{g.name}" for g in dataclasses.fields(SAESpec) if g.name != "options"]
    paths += [f"saes.0.options.{g.name}" for cls, _ in option_configs() for g in dataclasses.fields(cls)
              if g.name not in shared_sae_fields()]
    said = {p: config_paths_as_flags(p, parser) for p in paths}
    assert {p for p, s in said.items() if s == p} == {"log.progress"}, said
    assert all(s.split(" (SAE 0)")[0] in shown for p, s in said.items() if s != p), said
    assert said["checkpoint.every_tokens"] == "--checkpoint-every-tokens" and said["saes.0.lr"] == "--sae-lr (SAE 0)"


@pytest.mark.parametrize("text, flags, given", [({}, [], False), ({"separator": "bos"}, [], True),
                                                 ({}, ["--separator", "bos"], True)])
def test_the_config_file_is_read_once_and_says_whether_the_separator_is_given(tmp_path: Path, monkeypatch, text,
                                                                              flags, given) -> None:
    """Whether --separator or the file's text.separator says the separator (else a pretokenized dataset's
    rows do) is taken from the config file as read once (it was read a second time for that)."""
    from saesteer import configargs
    from saesteer.commands import _train_data

    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"data": {"model": "toy"}, "text": {"dataset": "toy", **text}}))
    reads, load = [], configargs.load_config_file
    monkeypatch.setattr(configargs, "load_config_file", lambda path: reads.append(path) or load(path))
    seen = []

    def prepare_data(*a, text_given, **kw):
        seen.append("separator" in text_given)
        raise ValueError("stopped before the data is read")

    monkeypatch.setattr(_train_data, "prepare_data", prepare_data)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), *flags]) == 2
    assert reads == [str(cfg)] and seen == [given]


def test_config_file_and_flags(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({
        "data": {"cache": "caches/x"}, "train": {"total_tokens": 1000, "batch_size": 100},
        "saes": [{"architecture": "batchtopk", "k": 8, "d_sae": 256}, {"architecture": "topk", "k": 4, "d_sae": 128}],
        "optim": {"lr": 0.001},
    }))
    assert main(["train", "--config", str(cfg), "--print-config", "--batch-size", "50"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["total_tokens"] == 1000 and printed["train"]["batch_size"] == 50
    assert [s["name"] for s in printed["saes"]] == ["batchtopk_k8_f256", "topk_k4_f128"]
    assert printed["data"]["cache"] == "caches/x" and printed["optim"]["lr"] == 0.001
    # SAE flags replace the file's list with every combination
    assert main(["train", "--config", str(cfg), "--print-config", "--k", "8,16", "--architecture", "topk,batchtopk"]) == 0
    assert len(json.loads(capsys.readouterr().out)["saes"]) == 4
    # k and levels go to the architectures that take them (`takes_k`, `takes_levels`; an alias as its architecture)
    assert main(["train", "--config", str(cfg), "--print-config", "--k", "8,16", "--architecture", "jumprelu,matryoshka",
                 "--d-sae", "64", "--matryoshka-widths", "16,64"]) == 0
    specs = json.loads(capsys.readouterr().out)["saes"]
    assert [s["name"] for s in specs] == ["jumprelu_f64", "matryoshka_batchtopk_k8_f64", "matryoshka_batchtopk_k16_f64"]
    assert "matryoshka_widths" not in specs[0]
    assert specs[1]["matryoshka_widths"] == specs[2]["matryoshka_widths"] == [16, 64]
    cfg.write_text(json.dumps({"trian": {}}))
    assert main(["train", "--config", str(cfg), "--print-config"]) == 2
    assert "unknown section" in capsys.readouterr().err


def test_help_reads(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for phrase in ("Resuming:", "--total-tokens", "--architecture", "--checkpoint-every-tokens", "--wandb"):
        assert phrase in text


@pytest.mark.slow
def test_wandb_offline_run(tmp_path: Path, monkeypatch) -> None:
    import sys

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sys.path.insert(0, str(Path(__file__).parent / "helpers"))
    import train_child

    from training.run import train

    cfg = train_child.run_config(total_batches=8)
    cfg.log.wandb = True
    train(cfg, train_child.source(), tmp_path / "run")
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert (tmp_path / "run" / "wandb_run_id.txt").read_text().strip() in runs[0].name


def test_token_counts_say_what_they_count(cache: Path, tmp_path: Path, capsys) -> None:
    """The cache holds 4,096 rows; 4,096 training tokens + 512 held-out rows ask for more than one
    pass. The note and the summary name training and held-out tokens apart (the note once said
    "4,608 tokens asked for", the held-out rows silently included)."""
    flags = ["--total-tokens", "4096", "--batch-size", "256", "--holdout-tokens", "512", "--d-sae", "32", "--k", "4",
             "--architecture", "topk", "--no-progress", "--num-threads", "1"]
    assert main(["train", "--cache", str(cache), "--out", str(tmp_path / "run"), *flags]) == 0
    out = capsys.readouterr().out
    assert "note: 4,096 training tokens (+512 held out) asked for, the cache holds 4,096 rows: " \
           "the reader makes 1.1 passes over it" in out
    assert "trained 4,096 training tokens in 16 steps (+512 held out for evaluation)" in out


def test_a_single_file_dataset_says_in_one_short_note_why_there_is_no_ce_evaluation(tmp_path: Path, capsys) -> None:
    """A single .jsonl file is the split 'train', so there is no held-out split for the CE
    evaluation: one note says so and how to give one (before: two notes, one quoting the whole
    --split advice for the training split). The file's whole name, though it holds a ';'."""
    data = tmp_path / "notes; draft.jsonl"
    docs = ["Le café où j'ai lu « Les Misérables » ferme à midi.", "def area(r):\n    return 3.14159 * r ** 2\n",
            "東京の天気は晴れ。the cat sat on the mat and the dog ran home."]
    data.write_text("".join(json.dumps({"text": d * 8}) + "\n" for d in docs * 20), encoding="utf-8")
    assert main(["train", "--model", "toy", "--dataset", str(data), "--out", str(tmp_path / "run"), "--total-tokens", "512",
                 "--batch-size", "128", "--holdout-tokens", "128", "--d-sae", "64", "--k", "4", "--no-progress",
                 "--num-threads", "1"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == [f"note: no CE evaluation: dataset {str(data)!r} has no split 'validation' (a single file is the "
                     f"split 'train'); give held-out text with --eval-dataset PATH or --eval-split NAME"], notes
