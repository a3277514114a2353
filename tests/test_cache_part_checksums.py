"""A run over one hook of a many-hook cache checks what it reads, and only that.

A user caches several hooks in one `saesteer cache` run, then runs `train --hook H` and
`features build` once per hook. Each shard holds every hook's activations; the manifest records a
SHA-256 per part of a shard (header, each hook's activations, each row tensor), so a run over H
hashes the header, H's activations and the row tensors: a corrupt part it reads is refused naming
the shard and the part, a corrupt part of another hook does not stop it (and is refused when that
hook is read). A cache from before part checksums (no `part_sha256` in its manifest) is checked
whole, as it was. `saesteer cache --verify`, where a refused run sends the user, checks the whole
file and every part in one pass, and tells a corrupt file from a damaged manifest.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers.fake_cache import make_fake_cache
from helpers.real_cli import saesteer
from saes.fileio import sha256_file
from training.manifest import read_manifest, write_manifest
from training.reader import CacheReader
from training.shards import HEADER_PART, WHOLE_FILE, ShardCorruptError, read_header
from training.shardset import ShardSet, shard_digests

HOOKS = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
SHARD = "shard_000001.safetensors"


@pytest.fixture(scope="module")
def built(tmp_path_factory, offline_env):
    """A 2-hook toy cache of 4 shards, made by the CLI, and an SAE trained on its second hook."""
    work = tmp_path_factory.mktemp("parts")
    saesteer("cache", "--model", "toy", "--dataset", "toy", "--hooks", ",".join(HOOKS), "--max-tokens", 2048,
             "--context-length", 64, "--shard-contexts", 8, "--out", work / "cache", "--no-progress").ok()
    saesteer(*train(work / "cache", HOOKS[1], work / "run")).ok()
    return work


def train(cache: Path, hook: str, out: Path) -> tuple:
    return ("train", "--cache", cache, "--hook", hook, "--d-sae", 64, "--k", 4, "--total-tokens", 1024,
            "--eval-ce-contexts", 0, "--out", out, "--wandb", "false", "--no-progress")


def features(built: Path, cache: Path, out: Path) -> tuple:
    sae = next((built / "run" / "saes").iterdir())
    return ("features", "build", "--sae", sae, "--cache", cache, "--out", out, "--no-progress")


def copy_cache(built: Path, tmp_path: Path, *, old_format: bool = False) -> Path:
    cache = Path(shutil.copytree(built / "cache", tmp_path / "cache"))
    if old_format:  # what saesteer wrote before part checksums: the same manifest without them
        man = json.loads((cache / "manifest.json").read_text())
        for s in man["shards"]:
            del s["part_sha256"]
        (cache / "manifest.json").write_text(json.dumps(man, indent=1))
    return cache


def flip(path: Path, part: str) -> None:
    """Flip one byte in the middle of a part of a shard file (a tensor's bytes, or the header's)."""
    data = bytearray(path.read_bytes())
    if part == HEADER_PART:
        at = data.index(b'"dtype":"') + len(b'"dtype":"') + 1  # "F16" -> "F06": the header still parses
    else:
        e = read_header(path)[0][part]
        at = e.start + e.nbytes // 2
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_new_caches_record_a_checksum_per_part(built):
    man = json.loads((built / "cache" / "manifest.json").read_text())
    parts = man["shards"][0]["part_sha256"]
    assert set(parts) == {HEADER_PART, *(f"acts/{h}" for h in HOOKS), "token_ids", "positions", "seq_index",
                          "context_tokens"}
    assert len(set(parts.values())) == len(parts)
    saesteer("cache", "--verify", built / "cache").ok()


def test_a_corrupt_shard_of_another_hook_does_not_stop_a_run_and_is_refused_when_read(built, tmp_path):
    cache = copy_cache(built, tmp_path)
    flip(cache / SHARD, f"acts/{HOOKS[0]}")
    saesteer(*train(cache, HOOKS[1], tmp_path / "run1")).ok()
    saesteer(*features(built, cache, tmp_path / "store.db")).ok()
    r = saesteer(*train(cache, HOOKS[0], tmp_path / "run0")).no_traceback()
    assert r.rc != 0
    assert SHARD in r.text and f"acts/{HOOKS[0]}" in r.text and "corrupt" in r.text
    r = saesteer("cache", "--verify", cache)  # the whole-cache check still sees every part
    assert r.rc != 0 and SHARD in r.text


@pytest.mark.parametrize("part, refused", [(f"acts/{HOOKS[0]}", False), (f"acts/{HOOKS[1]}", False),
                                           ("context_tokens", True)])
def test_the_model_inputs_read_from_a_cache_are_checked_and_no_hooks_activations(built, tmp_path, part, refused):
    """`contexts_from_cache` (the CE evaluation's fallback: contexts of the cache's last shards) reads
    `context_tokens` alone: it opened the cache under its first hook, so a corrupt part of that hook's
    activations stopped a run of another hook, and every shard read had those hashed for nothing."""
    from training.sources import contexts_from_cache

    clean = contexts_from_cache(built / "cache", 16)
    cache = copy_cache(built, tmp_path)
    last = read_manifest(cache).shards[-1].file
    flip(cache / last, part)
    if refused:
        with pytest.raises(ShardCorruptError, match=f"{last}.*mismatch in {part}"):
            contexts_from_cache(cache, 16)
    else:
        assert torch.equal(contexts_from_cache(cache, 16), clean) and clean.shape == (16, 64)


@pytest.mark.parametrize("hook, asked", [(HOOKS[0], "acts"), (HOOKS[0], f"acts/{HOOKS[0]}"),
                                         (HOOKS[1], f"acts/{HOOKS[0]}")])
def test_activations_a_shardset_did_not_check_are_not_read(built, tmp_path, hook, asked):
    """A ShardSet reads only what it checked: one opened without acts (the model inputs alone) gave a
    hook's activations when asked by their tensor name, and one of a hook another hook's, unchecked
    (here corrupt). Its own hook's, asked so, are read."""
    cache = copy_cache(built, tmp_path)
    flip(cache / SHARD, f"acts/{HOOKS[0]}")
    shards = ShardSet(cache, hook, acts=hook != HOOKS[0])  # the corrupt activations not its own
    with pytest.raises(ValueError, match=f"{asked} asked of a ShardSet .*not checked"):
        shards.read(1, [asked, "context_tokens"])
    assert shards.read(1, ["context_tokens"])["context_tokens"].shape[1] == 64
    with pytest.raises(ShardCorruptError, match=f"mismatch in acts/{HOOKS[0]}"):
        ShardSet(cache, HOOKS[0]).read(1, [f"acts/{HOOKS[0]}"])


@pytest.mark.parametrize("part", [f"acts/{HOOKS[1]}", "token_ids", "context_tokens", HEADER_PART])
def test_a_corrupt_part_the_run_reads_is_refused_naming_the_shard_and_the_part(built, tmp_path, part):
    cache = copy_cache(built, tmp_path)
    flip(cache / SHARD, part)
    r = saesteer(*train(cache, HOOKS[1], tmp_path / "run")).no_traceback()
    assert r.rc != 0
    assert SHARD in r.text and f"mismatch in {part}" in r.text and "corrupt" in r.text


def test_a_cache_from_before_part_checksums_loads_and_is_checked_whole(built, tmp_path):
    cache = copy_cache(built, tmp_path, old_format=True)
    saesteer(*train(cache, HOOKS[1], tmp_path / "run")).ok()
    saesteer(*features(built, cache, tmp_path / "store.db")).ok()
    flip(cache / SHARD, f"acts/{HOOKS[0]}")  # another hook's bytes: the old manifest can only say "the file"
    r = saesteer(*train(cache, HOOKS[1], tmp_path / "run2")).no_traceback()
    assert r.rc != 0 and SHARD in r.text and "SHA-256 mismatch (file" in r.text


def damage_manifest(cache: Path, part: str, *, drop: bool = False) -> None:
    """Spoil (or drop) shard 1's checksum of `part` in the manifest; the shard files stay intact."""
    man = json.loads((cache / "manifest.json").read_text())
    parts = man["shards"][1]["part_sha256"]
    if drop:
        del parts[part]
    else:
        parts[part] = "0" * 64
    (cache / "manifest.json").write_text(json.dumps(man, indent=1))


@pytest.mark.parametrize("part", [f"acts/{HOOKS[0]}", "seq_index", HEADER_PART])
def test_verify_reports_a_damaged_part_checksum_where_train_sends_the_user(built, tmp_path, part):
    """Intact files, a spoilt part checksum: train refuses and sends the user to `cache --verify`,
    which must then name the shard and the part, and blame the manifest (the whole file matches)."""
    cache = copy_cache(built, tmp_path)
    damage_manifest(cache, part)
    r = saesteer(*train(cache, HOOKS[0], tmp_path / "run")).no_traceback()
    assert r.rc != 0 and SHARD in r.text and f"mismatch in {part}" in r.text and "cache --verify" in r.text
    r = saesteer("cache", "--verify", cache, "--no-progress")
    assert r.rc == 1, r.text
    bad = [line for line in r.text.splitlines() if line.startswith("BAD")]
    assert len(bad) == 1 and SHARD in bad[0] and f"mismatch in {part}" in bad[0], r.text
    assert "the manifest is damaged" in bad[0] and "file is corrupt" not in bad[0]


def test_verify_reports_a_part_checksum_missing_from_the_manifest(built, tmp_path):
    cache = copy_cache(built, tmp_path)
    damage_manifest(cache, "token_ids", drop=True)
    r = saesteer(*train(cache, HOOKS[1], tmp_path / "run")).no_traceback()
    assert r.rc != 0 and "token_ids missing from the manifest: the manifest is damaged" in r.text
    assert "cache --verify" in r.text
    r = saesteer("cache", "--verify", cache, "--no-progress")
    assert r.rc == 1 and f"BAD  {SHARD}: SHA-256 in token_ids missing from the manifest" in r.text, r.text


def test_verify_of_a_clean_cache_hashes_the_whole_file_and_every_part_in_one_pass(built):
    cache = built / "cache"
    r = saesteer("cache", "--verify", cache, "--no-progress").ok()
    assert "4 shard(s) checked, all good" in r.text and "BAD" not in r.text
    man = read_manifest(cache)
    for s in man.shards:
        got = shard_digests(cache / s.file, s, man.hooks, whole_file=True)
        assert got == {**s.part_sha256, WHOLE_FILE: s.sha256} == {**s.part_sha256, WHOLE_FILE: sha256_file(cache / s.file)}


def test_verify_of_a_cache_from_before_part_checksums_checks_whole_files(built, tmp_path):
    cache = copy_cache(built, tmp_path, old_format=True)
    saesteer("cache", "--verify", cache, "--no-progress").ok()
    flip(cache / SHARD, f"acts/{HOOKS[0]}")
    r = saesteer("cache", "--verify", cache, "--no-progress")
    assert r.rc == 1 and f"BAD  {SHARD}: SHA-256 mismatch (file" in r.text and "the file is corrupt" in r.text


def test_verify_of_a_damaged_whole_file_checksum_blames_the_manifest(built, tmp_path):
    cache = copy_cache(built, tmp_path)
    man = json.loads((cache / "manifest.json").read_text())
    man["shards"][1]["sha256"] = "0" * 64
    (cache / "manifest.json").write_text(json.dumps(man, indent=1))
    r = saesteer("cache", "--verify", cache, "--no-progress")
    assert r.rc == 1 and f"BAD  {SHARD}: SHA-256 mismatch (file" in r.text, r.text
    assert "the manifest is damaged (every part of the file matches its SHA-256)" in r.text


def test_verify_of_a_corrupt_file_blames_the_file(built, tmp_path):
    cache = copy_cache(built, tmp_path)
    flip(cache / SHARD, "positions")
    r = saesteer("cache", "--verify", cache, "--no-progress")
    assert r.rc == 1 and f"BAD  {SHARD}: SHA-256 mismatch (file" in r.text and "the file is corrupt" in r.text


# ------------------------------------------------------------------------- the reader, without a model
def rows_of(cache: Path, hook: str) -> int:
    reader = CacheReader(cache, 5, hook=hook, seed=0, epochs=1)
    try:
        return sum(len(b.acts) for b in reader)
    finally:
        reader.close()


@pytest.mark.parametrize("old_format", [False, True])
def test_the_reader_checks_the_parts_of_its_hook_or_whole_old_shards(tmp_path, old_format):
    cache = make_fake_cache(tmp_path / "c", [6, 6, 6], hooks=("a", "b"), part_checksums=not old_format)
    assert rows_of(cache.path, "a") == rows_of(cache.path, "b") == 18
    flip(cache.path / SHARD, "acts/b")
    if old_format:
        with pytest.raises(ShardCorruptError, match=SHARD):
            rows_of(cache.path, "a")
    else:
        assert rows_of(cache.path, "a") == 18
    with pytest.raises(ShardCorruptError, match=SHARD):
        rows_of(cache.path, "b")


def test_a_transcoder_pair_checks_both_hooks(tmp_path):
    cache = make_fake_cache(tmp_path / "c", [6, 6], hooks=("a", "b", "c"))
    flip(cache.path / SHARD, "acts/b")
    with pytest.raises(ShardCorruptError, match="acts/b"):
        ShardSet(cache.path, "a", target_hook="b").entries(1)
    ShardSet(cache.path, "a", target_hook="c").entries(1)  # c's pair never reads b


@pytest.mark.parametrize("part", ["acts/a", "token_ids", "positions", "seq_index", "context_tokens", HEADER_PART])
def test_the_reader_refuses_a_corrupt_part_it_reads(tmp_path, part):
    cache = make_fake_cache(tmp_path / "c", [6, 6, 6], hooks=("a", "b"))
    if part == "context_tokens":  # the fake cache's are empty: write shard 1 again with some
        from training.shards import load_tensors, write_safetensors_atomic

        t = load_tensors(cache.path / SHARD)
        t["context_tokens"] = torch.arange(8, dtype=torch.int32).reshape(2, 4)
        w = write_safetensors_atomic(cache.path / SHARD, t)
        man = cache.manifest
        man.shards[1] = man.shards[1].__class__(**{**man.shards[1].__dict__, "bytes": w.nbytes,
                                                   "sha256": w.sha256, "part_sha256": w.parts})
        write_manifest(cache.path, man)
    flip(cache.path / SHARD, part)
    with pytest.raises(ShardCorruptError, match=f"{SHARD}.*mismatch in {part}"):
        rows_of(cache.path, "a")


def test_a_cache_resumed_across_versions_checks_old_shards_whole_and_new_ones_by_part(tmp_path):
    """A build begun before part checksums and finished after: shard 0 has only the whole file's
    SHA-256, shard 1 a SHA-256 per part. Each shard is checked the way its own entry allows."""
    cache = make_fake_cache(tmp_path / "c", [6, 6, 6], hooks=("a", "b"))
    man = cache.manifest
    man.shards[0] = man.shards[0].__class__(**{**man.shards[0].__dict__, "part_sha256": None})
    write_manifest(cache.path, man)
    assert "part_sha256" not in json.loads((cache.path / "manifest.json").read_text())["shards"][0]
    flip(cache.path / SHARD, "acts/b")  # shard 1 (part checksums): another hook's bytes, not read
    assert rows_of(cache.path, "a") == 18
    flip(cache.path / "shard_000000.safetensors", "acts/b")  # shard 0 (whole file): refused
    with pytest.raises(ShardCorruptError, match=r"shard_000000.*SHA-256 mismatch \(file"):
        rows_of(cache.path, "a")
