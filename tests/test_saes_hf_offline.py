"""`saes.hf_offline`: the one reading of HuggingFace's offline switches, by the rules the installed
huggingface_hub (and transformers, through it) and datasets apply to HF_HUB_OFFLINE,
TRANSFORMERS_OFFLINE and HF_DATASETS_OFFLINE (before, two helpers applied two other rules)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from saes.hf_offline import hf_offline, offline_by_environment

# environment -> (huggingface_hub / transformers offline, datasets offline)
CASES = [
    ({}, (False, False)),
    ({"HF_HUB_OFFLINE": "1"}, (True, True)),
    ({"HF_HUB_OFFLINE": "yes"}, (True, True)),
    ({"TRANSFORMERS_OFFLINE": "On"}, (True, True)),  # huggingface_hub reads it too
    ({"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "1"}, (False, False)),  # a set HF_HUB_OFFLINE wins
    ({"HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "1"}, (True, True)),  # an empty one does not
    ({"HF_DATASETS_OFFLINE": "1"}, (False, True)),  # datasets only
    ({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "0"}, (True, False)),  # datasets' own switch wins for it
    ({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": ""}, (True, False)),  # set but empty: online
    ({"HF_HUB_OFFLINE": "true", "HF_DATASETS_OFFLINE": "TRUE"}, (True, True)),
    ({"HF_HUB_OFFLINE": "2"}, (False, False)),
]


@pytest.mark.parametrize("env,expected", CASES)
def test_the_environment_is_read_by_the_libraries_rules(env, expected) -> None:
    assert (offline_by_environment(env, "huggingface_hub"), offline_by_environment(env, "datasets")) == expected


def test_the_rules_are_the_installed_libraries_own() -> None:
    """Each case in a fresh environment: the flags huggingface_hub and datasets compute on import
    (reloaded per case in one child process) are the ones `offline_by_environment` gives."""
    script = """
import importlib, json, os, sys
import huggingface_hub.constants as hc, datasets.config as dc
out = []
for env in json.loads(sys.argv[1]):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.pop(name, None)
    os.environ.update(env)
    importlib.reload(hc)
    importlib.reload(dc)
    out.append([hc.HF_HUB_OFFLINE, hc.is_offline_mode(), dc.HF_HUB_OFFLINE])
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")}
    done = subprocess.run([sys.executable, "-c", script, json.dumps([c for c, _ in CASES])], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    libraries = json.loads(done.stdout.strip().splitlines()[-1])
    ours = [[offline_by_environment(c, "huggingface_hub")] * 2 + [offline_by_environment(c, "datasets")] for c, _ in CASES]
    assert libraries == ours


def test_an_imported_library_answers_by_the_flag_it_acts_on(monkeypatch) -> None:
    """The libraries read the environment once, on import: after that their flag decides (here the
    environment says offline, the imported libraries were told online)."""
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    assert not hf_offline("huggingface_hub") and not hf_offline("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    assert hf_offline("datasets") and not hf_offline("huggingface_hub")
    with pytest.raises(ValueError, match="library must be one of huggingface_hub, datasets"):
        hf_offline("transformers")  # type: ignore[arg-type]
