"""A chat dataset (a `messages` column of {role, content} lists, as HF's and OpenAI's chat format) cached
for a chat model: each conversation is written by the model's own chat template, its markers the special
tokens, the messages' text read as text, one BOS per context; a model without a chat template is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("offline_env", "one_thread")]

CONVERSATIONS = [
    [{"role": "system", "content": "You answer in one line."},
     {"role": "user", "content": f"Why does `tok.decode([0])` print <|eot_id|> in example {i}?"},
     {"role": "assistant", "content": f"Because id 0 is a special token; caf\u00e9 \u65e5\u672c {i}."}]
    for i in range(30)
]


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    path = tmp_path_factory.mktemp("chats") / "chats.jsonl"
    path.write_text("".join(json.dumps({"id": i, "messages": c}) + "\n" for i, c in enumerate(CONVERSATIONS)),
                    encoding="utf-8")
    return path


def _cache(model, data, out):
    return saesteer("cache", "--model", str(model), "--dataset", str(data), "--text-column", "messages",
                    "--hooks", "blocks.0.hook_resid_post", "--context-length", "64", "--max-tokens", "640",
                    "--out", str(out), "--no-progress")


def test_chat_dataset_is_written_by_the_models_chat_template(real_models, chats, tmp_path):
    from transformers import AutoTokenizer

    from training.shardset import iter_shards

    model = real_models.path("llama3", train_steps=0)
    _cache(model, chats, tmp_path / "cache").ok()
    tok = AutoTokenizer.from_pretrained(model)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    stream = []
    for c in CONVERSATIONS:
        ids = list(tok.apply_chat_template(c, tokenize=True, sanitize_control_tokens=True)["input_ids"])
        assert ids[0] == bos and bos not in ids[1:]
        stream += ids[1:] + [eos]  # the template's BOS left to packing, which starts every context with it
    ctx = np.concatenate([sd.context_tokens.numpy() for sd in iter_shards(tmp_path / "cache")])
    assert (ctx[:, 0] == bos).all() and (ctx[:, 1:] != bos).all()
    assert ctx[:, 1:].reshape(-1).tolist() == stream[:ctx[:, 1:].size]
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    first = tok.decode(stream[:stream.index(eos)])
    assert "<|eot_id|> in example 0" in first  # the user's characters, not the turn marker
    assert stream[:stream.index(eos)].count(eot) == 3  # one per message: the template's
    from training.manifest import read_manifest

    import hashlib

    recorded = read_manifest(tmp_path / "cache").settings["dataset"]["chat_template_sha256"]
    assert recorded == hashlib.sha256(tok.chat_template.encode()).hexdigest()  # another template: not resumed


def test_chat_dataset_for_a_model_without_a_chat_template_is_refused(real_models, chats, tmp_path):
    r = _cache(real_models.path("gpt2", train_steps=0), chats, tmp_path / "cache").no_traceback()
    assert r.rc != 0 and "has no chat template" in r.text and "--text-column" in r.text
