"""A researcher's own model and text, driven through the CLI as the docs say: a tiny Qwen2 (byte-level
BPE, no BOS token, a chat template) known only by its hub name from a local HF cache (offline), and a
folder of .txt files with Windows line ends and non-ASCII prose. Checks what only this path shows:
the records pin the hub commit, later commands re-load the model from that record offline, the
cached and stored text is the files' text byte for byte (CRLF kept), and eval measures the SAE on
contexts packed as it was trained (here 32 tokens without BOS, not the flag defaults)."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from helpers.real_cli import OFFLINE_ENV, cache_train_store, saesteer

REPO = "researcher/tiny-qwen2"
COMMIT = "d" * 40
HOOK = "blocks.1.hook_resid_post"
DOCS = {  # CRLF code, CRLF prose with accents and CJK, LF text: one document per file
    "a.txt": "def greet(name):\r\n    return f'h\u00e9llo, {name}'\r\n\r\n\r\nprint(greet('caf\u00e9'))\r\n" * 12,
    "b.txt": "R\u00e9sum\u00e9 of the caf\u00e9 meeting.\r\n\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8.\r\n" * 12,
    "c.txt": "plain lines\n\n\tindented after a blank line\n" * 12,
}
CHAT = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}")


@pytest.fixture(scope="module")
def user(real_models, tmp_path_factory):
    """The model in a hub-cache layout (refs/main -> COMMIT), the text folder, and the chain run on
    them through the CLI with HF offline: cache -> train -> features build."""
    from huggingface_hub import constants
    from transformers import AutoTokenizer

    from helpers.foreign_saes import write_hf_snapshot
    from helpers.threads import torch_threads

    work = tmp_path_factory.mktemp("user")
    model_dir = real_models.path("qwen2")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.chat_template = CHAT  # a real Qwen2 ships one
    tok.save_pretrained(str(work / "tok"))
    files = {p.name: p for p in model_dir.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors")}
    files.update({p.name: p for p in (work / "tok").iterdir()})
    write_hf_snapshot(work / "hub", REPO, files, revision=COMMIT)
    text = work / "text"
    text.mkdir()
    for name, doc in DOCS.items():
        (text / name).write_bytes(doc.encode("utf-8"))
    with pytest.MonkeyPatch.context() as mp, torch_threads(1):
        for k, v in OFFLINE_ENV.items():
            mp.setenv(k, v)
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        mp.setattr(constants, "HF_HUB_CACHE", str(work / "hub"))
        cache_train_store(REPO, text, work, "f.db")
        yield work, mp


def test_the_records_pin_the_hub_commit_the_model_was_loaded_from(user):
    work, _ = user
    man = json.loads((work / "cache" / "manifest.json").read_text())
    assert man["model_identity"]["name"] == REPO and man["model_identity"]["revision"] == COMMIT
    prov = json.loads((work / "run/saes/sae/saesteer.json").read_text())
    assert prov["model_identity"]["revision"] == COMMIT


def test_stored_examples_are_the_files_text_with_their_line_ends(user):
    """Every example's text is its tokens' decoding, and every window (away from a character cut at
    its edges) is a span of one of the files, \\r\\n included."""
    from transformers import AutoTokenizer

    work, _ = user
    tok = AutoTokenizer.from_pretrained(REPO)
    with sqlite3.connect(work / "f.db") as db:
        rows = db.execute("SELECT token_ids, text FROM examples").fetchall()
    assert rows
    crlf = 0
    for ids, text in rows:
        assert text == tok.decode(np.frombuffer(ids, "<i4").tolist(), clean_up_tokenization_spaces=False)
        for part in text.split(tok.eos_token):  # documents end with EOS (--separator eos)
            part = part.strip("\ufffd")
            assert "\ufffd" in part or any(part in d for d in DOCS.values()), repr(part)
        crlf += "\r\n" in text
    assert crlf > 0


def test_later_commands_reload_the_recorded_hub_model_offline(user):
    """steer, with no --model: the model the SAE records (name@commit), from the HF cache."""
    work, _ = user
    r = saesteer("steer", "--sae", work / "run/saes/sae", "--latent", "3:add=4", "--prompt", "def greet(",
                 "--max-new-tokens", 4, "--do-sample", "false", "--json").ok()
    assert json.loads(r.out)["results"][0]["prompt"] == "def greet("


def test_eval_packs_contexts_as_the_sae_was_trained(user, tmp_path):
    work, _ = user
    saesteer("eval", "--sae", work / "run/saes/sae", "--dataset", work / "text", "--split", "train",
             "--allow-eval-overlap", "true", "--contexts", 4, "--ce-contexts", 2, "--absorption", "false",
             "--probing", "false", "--quiet", "--out", tmp_path).ok()
    data = json.loads((tmp_path / "eval.json").read_text())["data"]
    assert (data["context_length"], data["bos_policy"]) == (32, "none")
    assert json.loads((tmp_path / "eval.json").read_text())["model"] == f"hub:{REPO}@{COMMIT}"
