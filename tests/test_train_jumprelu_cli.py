"""`saesteer train --architecture jumprelu`: its settings as flags generated from JumpReLUConfig,
recorded and compared on resume; bad values are one-line errors naming the flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saesteer.cli import main

FLAGS = ["--total-tokens", "2048", "--batch-size", "256", "--holdout-tokens", "512", "--d-sae", "64", "--k", "4",
         "--checkpoint-every-tokens", "1024", "--eval-every-tokens", "0", "--no-progress", "--num-threads", "1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    from helpers.fake_cache import make_fake_cache

    return make_fake_cache(tmp_path_factory.mktemp("c") / "cache", shard_rows=[1024, 1024, 1024], d_in=16).path


def _train(cache: Path, out: Path, *extra: str) -> int:
    return main(["train", "--cache", str(cache), "--out", str(out), *FLAGS, *extra])


def test_jumprelu_trains_from_the_cli_with_its_settings(cache: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    settings = ["--architecture", "jumprelu,topk", "--l0-coefficient", "2", "--l0-warm-up-steps", "4",
                "--jumprelu-sparsity-loss-mode", "tanh", "--jumprelu-bandwidth", "0.1", "--jumprelu-threshold-lr", "0.02",
                "--pre-act-loss-coefficient", "1e-3"]
    assert _train(cache, out, *settings) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err, captured.err
    metrics = json.loads((out / "metrics.json").read_text())
    specs = {s["name"]: s for s in metrics["config"]["saes"]}
    assert set(specs) == {"jumprelu_f64", "topk_k4_f64"}  # one JumpReLU per width: it has no k
    assert specs["jumprelu_f64"]["options"] == {"jumprelu_bandwidth": 0.1, "jumprelu_sparsity_loss_mode": "tanh",
                                                "l0_coefficient": 2.0, "l0_warm_up_steps": 4,
                                                "pre_act_loss_coefficient": 0.001}
    assert specs["topk_k4_f64"]["options"] == {}
    assert metrics["config"]["train"]["jumprelu_threshold_lr"] == 0.02  # the run's (TrainConfig), compared on resume
    assert metrics["step_method"] in ("fast", "fast_native")  # JumpReLU has a fast step: auto keeps it
    from saes import load_sae

    sae = load_sae(out / "saes" / "jumprelu_f64")
    assert sae.architecture == "jumprelu" and float(sae.threshold.detach().min()) >= 0
    assert isinstance(metrics["saes"]["jumprelu_f64"]["explained_variance"], float)
    assert metrics["saes"]["jumprelu_f64"]["k"] is None and metrics["saes"]["topk_k4_f64"]["k"] == 4  # no k reported
    # a changed setting is refused on resume, naming its flag
    code = _train(cache, out, *settings[:-2], "--pre-act-loss-coefficient", "0")
    err = capsys.readouterr().err
    assert code == 2 and "--pre-act-loss-coefficient (SAE 0): checkpoint 0.001, now 0.0" in err, err


def test_a_jumprelu_run_resumes_with_another_k_which_it_ignores(cache: Path, tmp_path: Path) -> None:
    """--k means nothing to JumpReLU: its run records none (config.json, metrics.json) and a resume
    given another --k continues instead of being refused as a changed setting, also from a
    checkpoint written when JumpReLU specs still recorded k=32 (and empty Matryoshka widths)."""
    out = tmp_path / "run"
    assert _train(cache, out, "--architecture", "jumprelu") == 0  # FLAGS give --k 4
    recorded = json.loads((out / "config.json").read_text())["saes"][0]
    assert recorded["name"] == "jumprelu_f64" and "k" not in recorded
    for state_file in (out / "checkpoints").glob("step_*/state.json"):  # as the previous version wrote them
        state = json.loads(state_file.read_text())
        state["config"]["saes"][0].update(k=32, matryoshka_widths=[])
        state_file.write_text(json.dumps(state))
    config = json.loads((out / "config.json").read_text())
    config["saes"][0].update(k=32, matryoshka_widths=[])
    (out / "config.json").write_text(json.dumps(config))
    assert _train(cache, out, "--architecture", "jumprelu", "--k", "16", "--total-tokens", "2560") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tokens_trained"] == 2560 and "k" not in metrics["config"]["saes"][0]


def test_a_config_file_giving_jumprelu_a_k_is_refused(tmp_path: Path, capsys) -> None:
    """A config file's JumpReLU spec with a k is refused in one line naming the spec and the field
    (the k was dropped without a word); --k on the command line (FLAGS) applies to the architectures
    that take it and is accepted, as above."""
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"saes": [{"architecture": "jumprelu", "d_sae": 64, "k": 16}]}))
    assert main(["train", "--config", str(cfg), "--cache", str(tmp_path / "nocache"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"saes[0] of {cfg}: SAESpec.k is 16 but architecture 'jumprelu' has no k" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra,flag", [
    (["--jumprelu-bandwidth", "-0.5"], "--jumprelu-bandwidth"),
    (["--jumprelu-bandwidth", "0"], "--jumprelu-bandwidth"),
    (["--l0-coefficient", "nan"], "--l0-coefficient"),
    (["--l0-warm-up-steps", "-3"], "--l0-warm-up-steps"),
    (["--jumprelu-sparsity-loss-mode", "quadratic"], "--jumprelu-sparsity-loss-mode"),
    (["--jumprelu-init-threshold", "inf"], "--jumprelu-init-threshold"),
    (["--jumprelu-threshold-lr", "-0.01"], "--jumprelu-threshold-lr"),
])
def test_bad_values_are_one_line_errors_naming_the_flag(cache: Path, tmp_path: Path, capsys, extra, flag) -> None:
    try:
        code = _train(cache, tmp_path / "run", "--architecture", "jumprelu", *extra)
    except SystemExit as e:  # argparse's own refusals (not a number, not a choice)
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[0].startswith("error:") and len(err) <= 2, err
    assert flag in err[0] and "JumpReLUConfig" not in err[0] and "Traceback" not in "\n".join(err), err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_setting_no_sae_takes_is_refused(cache: Path, tmp_path: Path, capsys) -> None:
    assert _train(cache, tmp_path / "run", "--architecture", "topk", "--l0-coefficient", "3") == 2
    err = capsys.readouterr().err
    assert "--l0-coefficient" in err and "--architecture jumprelu" in err and len(err.strip().splitlines()) == 1


def test_config_file_options_are_checked(cache: Path, tmp_path: Path, capsys) -> None:
    run_flags = [f for i, f in enumerate(FLAGS) if f not in ("--d-sae", "--k") and FLAGS[i - 1] not in ("--d-sae", "--k")]

    def _train(cache: Path, out: Path, *extra: str) -> int:  # no SAE flags: the file's SAEs are trained
        return main(["train", "--cache", str(cache), "--out", str(out), *run_flags, *extra])

    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"saes": [{"architecture": "jumprelu", "d_sae": 32, "options": {"l0_coeficient": 2}}]}))
    assert _train(cache, tmp_path / "run", "--config", str(cfg)) == 2
    err = capsys.readouterr().err
    assert "l0_coeficient" in err and "l0_coefficient" in err  # the typo, and the valid names
    cfg.write_text('{"saes": [{"architecture": "jumprelu", "d_sae": 32, "options": {"l0_coefficient": NaN}}]}')
    assert _train(cache, tmp_path / "run", "--config", str(cfg)) == 2
    assert "l0_coefficient must be a finite number" in capsys.readouterr().err
