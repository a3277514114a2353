"""Building the activation cache: contents, hook handling, bad input, refusals, full disk, verify."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.tiny_model import make_model, make_tokenizer, write_corpus
from saes.hookpoints import UnknownHookError
from training.cache import build_cache
from training.cache_config import CacheConfig
from training.estimate import estimate_cache
from training.runner import ActivationRunner
from training.shardset import verify_cache
from training.writer import CacheDiskFullError
from training.manifest import CacheMismatchError, read_manifest
from training.live import model_batches
from training.reader import CacheReader
from training.shardset import all_rows, iter_shards
from training.text import TextConfig

pytestmark = [pytest.mark.usefixtures("one_thread")]

H0 = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return make_model(tok, d_model=64, n_layers=2, n_ctx=64, seed=0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    write_corpus(d, n_docs=60, seed=3, n_files=2)
    return d


def build(model, corpus, out, log=None, **kw):
    text_kw = {k: kw.pop(k) for k in list(kw) if k in ("context_length", "bos_policy", "separator", "dataset",
                                                       "txt_documents")}
    text = TextConfig(dataset=str(text_kw.pop("dataset", corpus)), context_length=text_kw.pop("context_length", 16), **text_kw)
    cfg = CacheConfig(out=str(out), hooks=kw.pop("hooks", [H0]), **{"shard_contexts": 8, "batch_size": 4, **kw})
    return build_cache(model, text, cfg, progress=False, log=log)


def tree(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_cached_rows_are_the_model_activations(model, corpus, tmp_path):
    hooks = [H0, "blocks.1.attn.hook_z"]
    res = build(model, corpus, tmp_path / "c", hooks=hooks, dtype="fp32", max_tokens=16 * 20)
    man = read_manifest(tmp_path / "c")
    assert man.complete and man.hooks == hooks and man.d_in == {H0: 64, "blocks.1.attn.hook_z": 64}
    assert man.total_contexts == 20 and [s.contexts for s in man.shards] == [8, 8, 4]
    assert res.shards_written == 3
    from safetensors.torch import load_file

    sh = load_file(str(tmp_path / "c" / man.shards[1].file))  # any safetensors reader opens a shard
    ctx = sh["context_tokens"].long()
    with torch.inference_mode():
        _, cache = model.run_with_cache(ctx)
    # prepend policy + exclude bos: positions 1..15 of every context, in order
    assert (sh["positions"].numpy() == np.tile(np.arange(1, 16), 8)).all()
    assert (sh["seq_index"].numpy() == np.repeat(np.arange(8, 16), 15)).all()
    assert torch.equal(sh["token_ids"], sh["context_tokens"][:, 1:].reshape(-1))
    for h in hooks:
        want = cache[h][:, 1:].reshape(8 * 15, -1)
        torch.testing.assert_close(sh[f"acts/{h}"], want, rtol=1e-5, atol=1e-5)


def test_forward_stops_after_the_last_needed_hook(model):
    fired = []
    runner = ActivationRunner(model, ["blocks.0.hook_resid_mid"])
    assert runner.stop_at_layer == 1
    with model.hooks(fwd_hooks=[("blocks.0.hook_mlp_out", lambda a, hook: fired.append(hook.name)),
                                ("blocks.1.hook_resid_pre", lambda a, hook: fired.append(hook.name))]):
        out = runner.run(torch.zeros(2, 8, dtype=torch.long))
    assert fired == [] and out["blocks.0.hook_resid_mid"].shape == (2, 8, 64)


@pytest.mark.parametrize("policy,exclude", [("doc", "special"), ("none", "none"), ("prepend", "none")])
def test_exclusion_and_bos_policies(model, tok, corpus, tmp_path, policy, exclude):
    build(model, corpus, tmp_path / "c", bos_policy=policy, exclude_tokens=exclude, max_tokens=16 * 10)
    acts, meta = all_rows(tmp_path / "c")
    man = read_manifest(tmp_path / "c")
    special = set(tok.all_special_ids)
    if exclude == "special":
        assert not special & set(meta[0].tolist())
        assert len(acts) < 16 * 10
    else:
        assert len(acts) == 16 * 10 == man.total_rows
    assert acts.dtype == torch.float16 and man.settings["bos_policy"] == policy
    for sd in iter_shards(tmp_path / "c"):  # every row's token is its context's token at its position
        assert torch.equal(sd.context_tokens[sd.seq_index - sd.first_context, sd.positions.long()], sd.token_ids)
        if policy == "prepend":
            assert (sd.context_tokens[:, 0] == tok.bos_token_id).all()


def test_unknown_hook_lists_the_valid_ones(model, corpus, tmp_path):
    with pytest.raises(UnknownHookError) as e:
        build(model, corpus, tmp_path / "c", hooks=["blocks.0.hook_resid_pots"])
    msg = str(e.value)
    assert "Did you mean blocks.0.hook_resid_post" in msg and "blocks.{0..1}.hook_resid_post" in msg
    assert "hook_pattern" not in msg
    with pytest.raises(UnknownHookError, match="not per-token"):
        build(model, corpus, tmp_path / "c", hooks=["blocks.0.attn.hook_pattern"])
    assert not (tmp_path / "c").exists()


def test_context_longer_than_the_model_and_missing_column(model, tmp_path):
    write_corpus(tmp_path / "d", n_docs=5, column="body")
    with pytest.raises(ValueError, match=r"context_length 65 is longer than the model's context window \(n_ctx 64\)"):
        build(model, tmp_path / "d", tmp_path / "c", context_length=65)
    with pytest.raises(ValueError, match="no column 'text'; available columns: body"):
        build(model, tmp_path / "d", tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_mismatched_settings_are_refused_naming_each_field(model, tok, corpus, tmp_path):
    out = tmp_path / "c"
    build(model, corpus, out, max_tokens=16 * 9)
    before = tree(out)
    with pytest.raises(CacheMismatchError) as e:
        build(model, corpus, out, max_tokens=16 * 9, dtype="bf16", context_length=12, bos_policy="doc")
    msg = str(e.value)
    for field in ("dtype", "context_length", "bos_policy"):
        assert f"  - {field}:" in msg
    assert "shard_contexts" not in msg and "hooks" not in msg
    cases = [
        (dict(hooks=["blocks.1.hook_resid_post"]), "hooks"),
        (dict(exclude_tokens="none"), "exclude_tokens"),
        (dict(dataset=corpus / "part-000.jsonl"), "dataset.files"),
    ]
    for kw, field in cases:
        with pytest.raises(CacheMismatchError, match=rf"- {field}"):
            build(model, corpus, out, **{"max_tokens": 16 * 9, **kw})
    other = make_model(tok, d_model=64, n_layers=2, n_ctx=64, seed=1)
    with pytest.raises(CacheMismatchError, match=r"- model\.fingerprint"):
        build(other, corpus, out, max_tokens=16 * 9)
    tok2 = make_tokenizer(extra_words=["zebra"])
    with pytest.raises(CacheMismatchError, match=r"- tokenizer\.sha256.*\n.*- tokenizer\.vocab_size"):
        build_cache(model, TextConfig(dataset=str(corpus), context_length=16),
                    CacheConfig(out=str(out), hooks=[H0], shard_contexts=8, batch_size=4, max_tokens=16 * 9),
                    tokenizer=tok2, progress=False, log=None)
    assert tree(out) == before  # nothing touched
    lines = []
    res = build(model, corpus, out, max_tokens=16 * 9, log=lines.append)  # same settings: already complete
    assert res.shards_written == 0 and "already complete" in lines[0]


def test_txt_documents_are_recorded_and_a_resume_with_the_other_reading_is_refused(model, tmp_path):
    """Whether a .txt file is one document or one per line is a setting: recorded in the manifest
    (dataset.txt_documents), refused on resume when it differs; caches made before the setting
    existed read lines, and say so when loaded."""
    import json

    from training.manifest import read_manifest
    from training.sources import text_config_from_manifest

    write_corpus(tmp_path / "txt", n_docs=40, seed=3, fmt="txt", n_files=2)  # one document per line
    out = tmp_path / "c"
    build(model, tmp_path / "txt", out, max_tokens=16 * 9, txt_documents="line")
    man = read_manifest(out)
    assert man.settings["dataset"]["txt_documents"] == "line"
    assert text_config_from_manifest(man).txt_documents == "line"
    before = tree(out)
    with pytest.raises(CacheMismatchError, match=r"- dataset\.txt_documents: cache has 'line', this run asks for 'file'"):
        build(model, tmp_path / "txt", out, max_tokens=16 * 9)  # the default: whole files
    assert tree(out) == before
    # an older cache: no txt_documents in its manifest (it read lines)
    raw = json.loads((out / "manifest.json").read_text())
    del raw["dataset"]["txt_documents"]
    (out / "manifest.json").write_text(json.dumps(raw))
    assert read_manifest(out).settings["dataset"]["txt_documents"] == "line"
    lines = []
    build(model, tmp_path / "txt", out, max_tokens=16 * 9, txt_documents="line", log=lines.append)
    assert "already complete" in lines[0]
    # jsonl data records no txt_documents (the setting does not apply to it)
    build(model, tmp_path / "txt", tmp_path / "j", max_tokens=16 * 2, dataset=write_corpus(tmp_path / "js", n_docs=8)[0])
    assert "txt_documents" not in read_manifest(tmp_path / "j").settings["dataset"]


def test_full_disk_is_a_clean_error_and_resume_finishes_identically(model, corpus, tmp_path, monkeypatch):
    import training.shards as shards

    ref = tmp_path / "ref"
    build(model, corpus, ref, max_tokens=16 * 30)
    calls = {"n": 0}
    real = shards._write_all

    def failing(f, data):
        if Path(f.name).name.lstrip(".").startswith("shard_000002"):
            calls["n"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, data)

    monkeypatch.setattr(shards, "_write_all", failing)
    out = tmp_path / "c"
    with pytest.raises(CacheDiskFullError, match="disk full while writing shard_000002.safetensors.*re-run the same command"):
        build(model, corpus, out, max_tokens=16 * 30)
    assert calls["n"] == 1
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.endswith(".tmp")]
    assert [n for n in names if n.startswith("shard_")] == ["shard_000000.safetensors", "shard_000001.safetensors"]
    assert not read_manifest(out).complete
    report = verify_cache(out)
    assert report.checked == 2 and "incomplete" in report.problems[0] and len(report.problems) == 1
    monkeypatch.setattr(shards, "_write_all", real)
    res = build(model, corpus, out, max_tokens=16 * 30)
    assert res.shards_resumed == 2 and res.shards_written == 2
    assert tree(out) == tree(ref), _tree_difference(out, ref)


def _tree_difference(a: Path, b: Path) -> str:
    """Which files and tensors of two caches differ (and the forwards their manifests record)."""
    from safetensors.torch import load_file

    ta, tb = tree(a), tree(b)
    lines = [f"forward {read_manifest(a).forward} vs {read_manifest(b).forward}"]
    for name in sorted(set(ta) | set(tb)):
        if ta.get(name) == tb.get(name):
            continue
        if not name.endswith(".safetensors") or name not in ta or name not in tb:
            lines.append(f"{name} differs")
            continue
        sa, sb = load_file(a / name), load_file(b / name)
        for k in sorted(set(sa) | set(sb)):
            if k not in sa or k not in sb or not torch.equal(sa[k], sb[k]):
                lines.append(f"{name}:{k} differs")
    return "; ".join(lines)


def test_not_enough_free_space_refused_before_writing(model, corpus, tmp_path, monkeypatch):
    import training.estimate as estimate

    monkeypatch.setattr(estimate, "free_bytes", lambda p: 1000)
    with pytest.raises(CacheDiskFullError, match="not enough disk space"):
        build(model, corpus, tmp_path / "c", max_tokens=16 * 30)
    assert not list((tmp_path / "c").glob("shard_*"))


def test_flipped_byte_found_by_verify_and_the_cli(model, corpus, tmp_path, capsys):
    out = tmp_path / "c"
    build(model, corpus, out, max_tokens=16 * 20)
    assert verify_cache(out).ok
    f = out / "shard_000001.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x20
    f.write_bytes(bytes(data))
    report = verify_cache(out)
    assert not report.ok and len(report.problems) == 1 and "shard_000001.safetensors: SHA-256 mismatch" in report.problems[0]
    from saesteer.cli import main

    assert main(["cache", "--verify", str(out), "--no-progress"]) == 1
    assert "BAD  shard_000001.safetensors" in capsys.readouterr().out
    with pytest.raises(Exception, match="shard_000001.safetensors"):
        list(CacheReader(out, 8))


def test_dry_run_writes_nothing_and_estimates(model, corpus, tmp_path):
    text = TextConfig(dataset=str(corpus), context_length=16)
    est = estimate_cache(model, text, CacheConfig(out=str(tmp_path / "c"), hooks=[H0], max_tokens=16 * 20))
    assert not (tmp_path / "c").exists()
    assert est.contexts == 20 and est.bytes_needed > 0 and est.seconds > 0 and est.rows_per_context == 15
    s = est.describe()
    assert "needs ~" in s and "free" in s and "tokens/s" in s


def test_the_rate_probe_times_the_builds_own_batches(model, corpus, tmp_path, monkeypatch):
    """The dry run's rate comes from batches of the build's size, of real contexts, through the
    forward the build uses and the shard copy; a batch size so slow that the probe would run long
    is cut down to what fits (no timing is asserted)."""
    import training.estimate as estimate

    text = TextConfig(dataset=str(corpus), context_length=16)
    cfg = CacheConfig(out=str(tmp_path / "c"), hooks=[H0], max_tokens=16 * 20, batch_size=6)
    batches, fills = [], []
    real_run, real_fill = ActivationRunner.run, estimate.fill_batch
    monkeypatch.setattr(ActivationRunner, "run", lambda self, t: batches.append(t.clone()) or real_run(self, t))
    monkeypatch.setattr(estimate, "fill_batch", lambda *a, **k: fills.append(a[2].shape) or real_fill(*a, **k))
    est = estimate_cache(model, text, cfg)
    shapes = [tuple(t.shape) for t in batches]
    assert est.probe_contexts == 6 and (6, 16) in shapes and (6, 16) in fills
    assert f"{est.forward_tokens_per_s:,.0f} tokens/s" in est.describe() and "6 contexts per batch" in est.describe()
    probe = next(t for t in batches if tuple(t.shape) == (6, 16))
    assert (probe[:, 0] == model.tokenizer.bos_token_id).all()  # packed contexts of the corpus, BOS first

    monkeypatch.setattr(estimate, "PROBE_SECONDS", 1e-9)  # one context already "too slow": batches of 1
    batches.clear()
    assert estimate_cache(model, text, cfg).probe_contexts == 1 and all(len(t) == 1 for t in batches)


def test_model_batches_match_the_cache(model, corpus, tmp_path):
    build(model, corpus, tmp_path / "c", dtype="fp32", max_tokens=16 * 12)
    acts, meta = all_rows(tmp_path / "c")
    lookup = {k: i for i, k in enumerate(zip(meta[2].tolist(), meta[1].tolist()))}
    text = TextConfig(dataset=str(corpus), context_length=16)
    seen = 0
    for b in model_batches(model, text, H0, 32, max_tokens=16 * 12, buffer_rows=100, with_tokens=True):
        idx = [lookup[k] for k in zip(b.seq_index.tolist(), b.positions.tolist())]
        torch.testing.assert_close(b.acts, acts[idx].float(), rtol=1e-5, atol=1e-5)
        seen += len(idx)
    assert seen == len(acts)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="CacheConfig.hooks"):
        CacheConfig(out="x", hooks=[])
    with pytest.raises(ValueError, match="CacheConfig.dtype"):
        CacheConfig(out="x", hooks=["a"], dtype="fp8")
    assert CacheConfig(out="x", hooks="a, b").hooks == ["a", "b"]


def test_cli_build_dry_run_and_refusal(model, corpus, tmp_path, monkeypatch, capsys):
    import sys
    import types

    from saesteer.cli import main

    fake = types.ModuleType("saesteer.models")
    fake.load_model = lambda spec, **kw: model  # the face's model resolution, stubbed
    fake.model_id = lambda m: "tiny-id"
    fake.model_info = lambda m: types.SimpleNamespace(revision=None)
    fake.start_model_spec = lambda spec, dataset: spec
    monkeypatch.setitem(sys.modules, "saesteer.models", fake)
    out = tmp_path / "c"
    base = ["cache", "--model", "tiny", "--dataset", str(corpus), "--context-length", "16", "--max-tokens", "256",
            "--shard-contexts", "8", "--out", str(out), "--no-progress"]
    assert main(base + ["--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "tokens:  256 in 16 contexts, 2 shards" in printed and "free" in printed and not out.exists()
    assert main(base) == 0
    man = read_manifest(out)
    assert man.complete and man.hooks == ["blocks.1.hook_resid_post"] and man.settings["model"]["id"] == "tiny-id"
    assert main(base + ["--dtype", "fp32"]) == 2
    assert "- dtype: cache has 'fp16', this run asks for 'fp32'" in capsys.readouterr().err
    other = [a if a != str(out) else str(tmp_path / "d") for a in base]
    assert main(other + ["--hooks", "blocks.7.hook_resid_post"]) == 2
    assert "unknown hook point 'blocks.7.hook_resid_post'" in capsys.readouterr().err


@pytest.mark.slow
def test_toy_model_and_corpus_through_the_cli(tmp_path, capsys):
    """`saesteer cache --model toy --dataset toy` end to end (writes the toy corpus once)."""
    from saesteer.cli import main

    out = tmp_path / "toy"
    args = ["cache", "--model", "toy", "--dataset", "toy", "--max-tokens", "4096", "--shard-contexts", "8",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    man = read_manifest(out)
    assert man.complete and man.total_contexts == 32 and man.hooks == ["blocks.2.hook_resid_post"]
    assert man.settings["dataset"]["name"] == "toy" and man.settings["model"]["id"].startswith("toy:")
    assert main(["cache", "--verify", str(out), "--no-progress"]) == 0
    batches = list(CacheReader(out, 512, seed=0))
    assert sum(len(b.acts) for b in batches) == man.total_rows


def test_max_tokens_below_one_context_is_refused(model, corpus, tmp_path):
    with pytest.raises(ValueError, match="max_tokens 10 is less than one context"):
        build(model, corpus, tmp_path / "c", max_tokens=10)


def test_hf_model_through_transformer_bridge(corpus, tmp_path):
    """A local HF checkpoint loads as a TransformerBridge (hooks fire under canonical names,
    resid_post of block 0 and resid_pre of block 1 are one hook point): same values as run_with_cache."""
    from safetensors.torch import load_file

    from helpers.tiny_hf import save_tiny_gpt2
    from saesteer.models import load_model

    m = load_model(str(save_tiny_gpt2(tmp_path / "gpt2")), device="cpu")
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    build_cache(m, TextConfig(dataset=str(corpus), context_length=16),
                CacheConfig(out=str(tmp_path / "c"), hooks=hooks, dtype="fp32", shard_contexts=8, max_tokens=16 * 8),
                progress=False, log=None)
    sh = load_file(str(tmp_path / "c" / "shard_000000.safetensors"))
    with torch.inference_mode():
        _, cache = m.run_with_cache(sh["context_tokens"].long())
    keep = (sh["context_tokens"] != m.tokenizer.bos_token_id).reshape(-1)  # GPT-2: BOS == EOS, both left out
    assert not keep[::16].any() and keep.sum() == len(sh["token_ids"])
    for h in hooks:
        torch.testing.assert_close(sh[f"acts/{h}"], cache[h].reshape(8 * 16, -1)[keep], rtol=1e-5, atol=1e-5)
