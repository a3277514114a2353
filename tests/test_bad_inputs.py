"""The CLI over a table of bad inputs: corrupt files, wrong models and widths, bad values, a full
disk, an unwritable folder. Every case must end with a non-zero exit status, no Python traceback,
and a message naming the file or the flag at fault (the `expect` strings of the case).

    pytest tests/test_bad_inputs.py            # in-process (fast), a few cases in a child process
    python tests/test_bad_inputs.py [-k TEXT]  # every case as its own `python -m saesteer` process;
                                               # prints one line per case and the counts

The fixtures (a small toy-model cache, SAE folders, a feature store...) are built once per run.
Cases that need a trick the machine may refuse (chattr +i, mount -t tmpfs) skip with the reason.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.2.hook_resid_post"  # the toy model's middle layer (d_model 128)
TINY = ["--no-progress"]


# ------------------------------------------------------------------------------------ fixtures
class World:
    """Every input the cases need, built lazily under one folder (each piece once)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, object] = {}

    def _once(self, key: str, make: Callable[[], object]):
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def path(self, name: str) -> Path:
        return self.root / name

    # -- caches -------------------------------------------------------------------------------
    def toy_cache(self) -> Path:
        def make():
            from saesteer.cli import main

            out = self.path("toy-cache")
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                assert main(["cache", "--model", "toy", "--dataset", "toy", "--max-tokens", "2048",
                             "--context-length", "64", "--out", str(out), "--no-progress"]) == 0
            return out
        return self._once("toy_cache", make)

    def fake_cache(self, name: str, d_in: int = 16, seed: int = 0, nan: bool = False) -> Path:
        def make():
            sys.path.insert(0, str(ROOT / "tests"))
            from helpers.fake_cache import make_fake_cache

            if not nan:
                return make_fake_cache(self.path(name), shard_rows=[512, 512, 1024], d_in=d_in, seed=seed).path
            from training.manifest import Manifest, read_manifest, write_manifest
            from training.shards import load_tensors, write_safetensors_atomic

            path = make_fake_cache(self.path(name), shard_rows=[512, 512, 1024], d_in=d_in, seed=seed).path
            man = read_manifest(path)
            shards = []
            for sh in man.shards:  # every 16th row overflowed (fp16, say): the held-out rows hold some
                tensors = load_tensors(path / sh.file)
                key = next(k for k in tensors if k.startswith("acts/"))
                tensors[key][::16, 3] = float("nan")
                w = write_safetensors_atomic(path / sh.file, {k: v.contiguous() for k, v in tensors.items()})
                shards.append(sh.__class__(**{**sh.__dict__, "bytes": w.nbytes, "sha256": w.sha256,
                                                "part_sha256": w.parts}))
            write_manifest(path, Manifest(man.settings, True, shards, man.forward))
            return path
        return self._once(f"fake_cache:{name}", make)

    def corrupt_cache(self) -> Path:
        def make():
            path = self.fake_cache("to-corrupt", seed=5)
            shard = path / "shard_000001.safetensors"
            data = bytearray(shard.read_bytes())
            data[len(data) // 2] ^= 0xFF
            shard.write_bytes(bytes(data))
            return path
        return self._once("corrupt_cache", make)

    def corrupt_toy_cache(self) -> Path:
        """A copy of the toy cache with one flipped byte in its shard."""
        def make():
            path = self.path("toy-cache-corrupt")
            shutil.copytree(self.toy_cache(), path)
            shard = sorted(path.glob("shard_*.safetensors"))[0]
            data = bytearray(shard.read_bytes())
            data[len(data) // 3] ^= 0x01
            shard.write_bytes(bytes(data))
            return path
        return self._once("corrupt_toy_cache", make)

    def trained_run(self, name: str = "run") -> Path:
        """A finished small training run on fake cache 'a' (its checkpoints are what resumes read)."""
        def make():
            from saesteer.cli import main

            out = self.path(name)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                assert main(["train", "--cache", str(self.fake_cache("a")), "--out", str(out), *TRAIN_FLAGS]) == 0
            return out
        return self._once(f"run:{name}", make)

    # -- SAE folders ----------------------------------------------------------------------------
    def sae(self, name: str, d_in: int = 128, hook: str = HOOK, edit: Callable[[Path], None] | None = None,
            toy_identity: bool = True) -> Path:
        """An SAE folder; toy_identity: its saesteer.json records the toy model (as a trained SAE's does)."""
        def make():
            import torch

            import saes

            g = torch.Generator().manual_seed(0)
            sae = saes.create_sae("topk", d_in, 256, k=8, generator=g)
            sae.cfg.metadata["hook_name"] = hook
            folder = self.path(f"sae-{name}")
            provenance = {"hook_name": hook}
            if toy_identity:
                from saesteer.models import load_model, model_identity

                provenance["model_identity"] = model_identity(load_model("toy", device="cpu")).to_json()
            saes.save_sae(sae, folder, provenance=provenance)
            if edit is not None:
                edit(folder)
            return folder
        return self._once(f"sae:{name}", make)

    def feature_store(self) -> Path:
        def make():
            from saesteer.cli import main

            out = self.path("toy.db")
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                assert main(["features", "build", "--sae", str(self.sae("good")), "--cache", str(self.toy_cache()),
                             "--out", str(out), "--no-progress", "--model", "none"]) == 0
            return out
        return self._once("store", make)

    def garbage(self, name: str, data: bytes = b"this is not what it claims to be\n" * 8) -> Path:
        def make():
            p = self.path(name)
            p.write_bytes(data)
            return p
        return self._once(f"garbage:{name}", make)

    def immutable_dir(self) -> Path:
        """A folder root cannot write into (chattr +i); skips where the flag is unavailable."""
        def make():
            d = self.path("immutable")
            d.mkdir()
            ok = shutil.which("chattr") and subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0
            return d if ok else None
        d = self._once("immutable", make)
        if d is None:
            pytest.skip("chattr +i is not available here (a read-only folder does not stop root)")
        return d

    def tiny_disk(self) -> Path:
        """A 96 KiB tmpfs (a real full disk); skips where mount is refused."""
        def make():
            d = self.path("tiny-disk")
            d.mkdir()
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(d)], capture_output=True)
            return d if r.returncode == 0 else None
        d = self._once("tiny_disk", make)
        if d is None:
            pytest.skip("cannot mount a small tmpfs here (needs root and mount)")
        return d

    def close(self) -> None:
        if self._made.get("immutable"):
            subprocess.run(["chattr", "-i", str(self._made["immutable"])], capture_output=True)
        if self._made.get("tiny_disk"):
            subprocess.run(["umount", str(self._made["tiny_disk"])], capture_output=True)


TRAIN_FLAGS = ["--total-tokens", "1024", "--batch-size", "128", "--holdout-tokens", "256", "--d-sae", "32", "--k", "4",
               "--checkpoint-every-tokens", "512", "--eval-every-tokens", "512", "--progress", "false",
               "--num-threads", "1"]


def _edit_cfg(**changes) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        cfg = json.loads((folder / "cfg.json").read_text())
        cfg.update(changes)
        (folder / "cfg.json").write_text(json.dumps(cfg))
    return edit


def _flip_weight_bit(folder: Path) -> None:
    w = folder / "sae_weights.safetensors"
    data = bytearray(w.read_bytes())
    data[random.Random(1).randrange(200, len(data))] ^= 0x10
    w.write_bytes(bytes(data))


def _non_utf8_cfg(folder: Path) -> None:
    (folder / "cfg.json").write_bytes((folder / "cfg.json").read_bytes().replace(b'"topk"', b'"top\xffk"'))


def _nan_weights(folder: Path) -> None:
    """NaN in W_dec, with the checksum recorded for the new bytes (a diverged SAE saved as it was)."""
    import hashlib

    from safetensors.torch import load, save

    state = load((folder / "sae_weights.safetensors").read_bytes())
    state["W_dec"][1, 2] = float("nan")
    blob = save({k: v.contiguous() for k, v in state.items()}, metadata={"format": "pt"})
    (folder / "sae_weights.safetensors").write_bytes(blob)
    prov = json.loads((folder / "saesteer.json").read_text())
    prov["files"] = {"sae_weights.safetensors": {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}}
    (folder / "saesteer.json").write_text(json.dumps(prov))


def _pickle_file(world: World) -> Path:
    import pickle

    p = world.path("sae.pt")
    if not p.exists():
        p.write_bytes(pickle.dumps({"W_enc": [1, 2, 3]}))
    return p


# ------------------------------------------------------------------------------------ the table
@dataclass
class Case:
    id: str
    argv: Callable[[World], list[str]]
    expect: Callable[[World], list[str]] | list[str]  # all must appear in the output (stderr + stdout)
    child: bool = False  # run as a child process in pytest too (needs its own process: limits, signals)
    fsize: int | None = None  # RLIMIT_FSIZE for the child (bytes)
    skip: str | None = None  # why this case does not run yet


CASES: list[Case] = [
    # ---- caching: unwritable or full output, bad values, mismatches
    Case("cache-immutable-out",
         lambda w: ["cache", "--model", "toy", "--dataset", "toy", "--max-tokens", "1024", "--out",
                    str(w.immutable_dir() / "c"), *TINY],
         lambda w: [str(w.immutable_dir() / "c"), "not permitted", "--out"]),
    Case("cache-full-disk",
         lambda w: ["cache", "--model", "toy", "--dataset", "toy", "--max-tokens", "4096", "--context-length", "64",
                    "--shard-contexts", "8", "--check-disk", "false", "--out", str(w.tiny_disk() / "c"), *TINY],
         lambda w: ["disk full", str(w.tiny_disk() / "c"), "re-run the same command"]),
    Case("cache-file-size-limit",
         lambda w: ["cache", "--model", "toy", "--dataset", "toy", "--max-tokens", "4096", "--context-length", "64",
                    "--shard-contexts", "8", "--out", str(w.path("fsize-cache")), *TINY],
         lambda w: ["file size limit", str(w.path("fsize-cache")), "re-run the same command"], child=True, fsize=64_000),
    Case("cache-unknown-hook",
         lambda w: ["cache", "--model", "toy", "--dataset", "toy", "--hooks", "blocks.99.hook_resid_post", "--dry-run"],
         ["blocks.99.hook_resid_post"]),
    Case("cache-context-length-zero",
         lambda w: ["cache", "--model", "toy", "--dataset", "toy", "--context-length", "0", "--dry-run"],
         ["--context-length"]),
    Case("cache-max-tokens-not-a-number",
         lambda w: ["cache", "--model", "toy", "--dataset", "toy", "--max-tokens", "lots", "--dry-run"],
         ["--max-tokens", "lots"]),
    Case("cache-other-settings-same-out",
         lambda w: ["cache", "--model", "toy", "--dataset", "toy", "--max-tokens", "2048", "--context-length", "32",
                    "--out", str(w.toy_cache()), *TINY],
         lambda w: [str(w.toy_cache()), "--context-length"]),
    Case("cache-verify-corrupt-shard",
         lambda w: ["cache", "--verify", str(w.corrupt_cache()), *TINY],
         ["shard_000001.safetensors"]),
    Case("cache-missing-dataset",
         lambda w: ["cache", "--model", "toy", "--dataset", str(w.path("no-such-corpus")), "--dry-run"],
         lambda w: [str(w.path("no-such-corpus"))]),
    Case("cache-model-not-found",
         lambda w: ["cache", "--model", str(w.path("no-such-model")), "--dataset", "toy", "--dry-run"],
         lambda w: [str(w.path("no-such-model"))]),
    # ---- training: corrupt or mismatched data, resumes of another run, bad values
    Case("train-corrupt-shard",
         lambda w: ["train", "--cache", str(w.corrupt_cache()), "--out", str(w.path("t-corrupt")), *TRAIN_FLAGS],
         ["shard_000001.safetensors", "SHA-256"]),
    Case("train-missing-cache",
         lambda w: ["train", "--cache", str(w.path("nope")), "--out", str(w.path("t-missing")), *TRAIN_FLAGS],
         lambda w: [str(w.path("nope")), "not an activation cache"]),
    Case("train-pickle-as-cache",
         lambda w: ["train", "--cache", str(_pickle_file(w)), "--out", str(w.path("t-pickle")), *TRAIN_FLAGS],
         lambda w: [str(_pickle_file(w))]),
    Case("train-resume-on-another-cache",
         lambda w: ["train", "--cache", str(w.fake_cache("b", seed=1)), "--out", str(w.trained_run()), *TRAIN_FLAGS,
                    "--total-tokens", "2048"],
         ["cannot resume", "another cache"]),
    Case("train-resume-on-another-width",
         lambda w: ["train", "--cache", str(w.fake_cache("wide", d_in=24, seed=2)), "--out", str(w.trained_run()),
                    *TRAIN_FLAGS, "--total-tokens", "2048"],
         ["d_in", "width 16", "width 24"]),
    Case("train-resume-with-another-shuffle-window",
         lambda w: ["train", "--cache", str(w.fake_cache("a")), "--out", str(w.trained_run()), *TRAIN_FLAGS,
                    "--total-tokens", "2048", "--reader-buffer-rows", "256"],
         ["--reader-buffer-rows", "cannot resume"]),
    Case("train-resume-with-another-k",
         lambda w: ["train", "--cache", str(w.fake_cache("a")), "--out", str(w.trained_run()), *TRAIN_FLAGS, "--k", "8"],
         ["--k (SAE 0): checkpoint", "cannot resume"]),
    Case("train-non-finite-held-out-rows",
         lambda w: ["train", "--cache", str(w.fake_cache("nan", nan=True)), "--out", str(w.path("t-nan")), *TRAIN_FLAGS],
         lambda w: ["NaN", str(w.fake_cache("nan", nan=True))]),
    Case("train-hook-not-in-cache",
         lambda w: ["train", "--cache", str(w.fake_cache("a")), "--hook", "blocks.5.hook_resid_post", "--out",
                    str(w.path("t-hook")), *TRAIN_FLAGS],
         ["blocks.5.hook_resid_post"]),
    Case("train-k-not-a-number",
         lambda w: ["train", "--cache", str(w.fake_cache("a")), "--out", str(w.path("t-k")), *TRAIN_FLAGS[:-4],
                    "--k", "sixteen"],
         ["--k", "sixteen"]),
    Case("train-lr-infinite",
         lambda w: ["train", "--cache", str(w.fake_cache("a")), "--out", str(w.path("t-lr")), "--lr", "inf"],
         ["--lr", "inf"]),
    Case("train-batch-size-zero",
         lambda w: ["train", "--cache", str(w.fake_cache("a")), "--out", str(w.path("t-bs")), *TRAIN_FLAGS,
                    "--batch-size", "0"],
         ["--batch-size"]),
    Case("train-config-not-json",
         lambda w: ["train", "--config", str(w.garbage("bad-config.json")), "--out", str(w.path("t-cfg"))],
         lambda w: [str(w.garbage("bad-config.json"))]),
    Case("train-out-immutable",
         lambda w: ["train", "--cache", str(w.fake_cache("a")), "--out", str(w.immutable_dir() / "run"), *TRAIN_FLAGS],
         lambda w: [str(w.immutable_dir() / "run")]),
    # ---- SAE folders: corrupt, unsafe or of another width / hook
    Case("features-sae-flipped-bit",
         lambda w: ["features", "build", "--sae", str(w.sae("flipped", edit=_flip_weight_bit)), "--cache",
                    str(w.toy_cache()), "--out", str(w.path("f1.db")), "--model", "none", *TINY],
         lambda w: [str(w.sae("flipped", edit=_flip_weight_bit) / "sae_weights.safetensors"), "SHA-256"]),
    Case("features-sae-cfg-k-nan",
         lambda w: ["features", "build", "--sae", str(w.sae("k-nan", edit=_edit_cfg(k=float("nan")))), "--cache",
                    str(w.toy_cache()), "--out", str(w.path("f2.db")), "--model", "none", *TINY],
         lambda w: [str(w.sae("k-nan") / "cfg.json"), "k must be"]),
    Case("features-sae-cfg-k-words",
         lambda w: ["features", "build", "--sae", str(w.sae("k-words", edit=_edit_cfg(k="sixteen"))), "--cache",
                    str(w.toy_cache()), "--out", str(w.path("f3.db")), "--model", "none", *TINY],
         lambda w: [str(w.sae("k-words") / "cfg.json"), "sixteen"]),
    Case("features-sae-cfg-metadata-oops",
         lambda w: ["features", "build", "--sae", str(w.sae("meta", edit=_edit_cfg(metadata="oops"))), "--cache",
                    str(w.toy_cache()), "--out", str(w.path("f4.db")), "--model", "none", *TINY],
         lambda w: [str(w.sae("meta") / "cfg.json"), "metadata"]),
    Case("features-sae-cfg-d-in-abc",
         lambda w: ["features", "build", "--sae", str(w.sae("d-in-abc", edit=_edit_cfg(d_in="abc"))), "--cache",
                    str(w.toy_cache()), "--out", str(w.path("f5.db")), "--model", "none", *TINY],
         lambda w: [str(w.sae("d-in-abc") / "cfg.json"), "d_in"]),
    Case("features-sae-cfg-not-utf8",
         lambda w: ["features", "build", "--sae", str(w.sae("utf8", edit=_non_utf8_cfg)), "--cache",
                    str(w.toy_cache()), "--out", str(w.path("f6.db")), "--model", "none", *TINY],
         lambda w: [str(w.sae("utf8") / "cfg.json"), "UTF-8"]),
    Case("features-sae-nan-weights",
         lambda w: ["features", "build", "--sae", str(w.sae("nan", edit=_nan_weights)), "--cache",
                    str(w.toy_cache()), "--out", str(w.path("f7.db")), "--model", "none", *TINY],
         lambda w: [str(w.sae("nan") / "sae_weights.safetensors"), "NaN", "W_dec"]),
    Case("features-sae-is-a-pickle",
         lambda w: ["features", "build", "--sae", str(_pickle_file(w)), "--cache", str(w.toy_cache()), "--out",
                    str(w.path("f8.db")), "--model", "none", *TINY],
         lambda w: [str(_pickle_file(w)), "pickle"]),
    Case("features-sae-of-another-width",
         lambda w: ["features", "build", "--sae", str(w.sae("narrow", d_in=64)), "--cache", str(w.toy_cache()),
                    "--out", str(w.path("f9.db")), "--model", "none", *TINY],
         ["d_in", "64", "128"]),
    Case("features-sae-of-another-hook",
         lambda w: ["features", "build", "--sae", str(w.sae("hook1", hook="blocks.1.hook_resid_post")), "--cache",
                    str(w.toy_cache()), "--out", str(w.path("f10.db")), "--model", "none", *TINY],
         ["blocks.1.hook_resid_post", HOOK]),
    Case("features-corrupt-cache-shard",
         lambda w: ["features", "build", "--sae", str(w.sae("good")), "--cache", str(w.corrupt_toy_cache()), "--out",
                    str(w.path("f13.db")), "--model", "none", *TINY],
         ["shard_000000.safetensors", "SHA-256"]),
    Case("features-store-of-another-sae",
         lambda w: ["features", "build", "--sae", str(w.sae("other-seed", edit=_flip_weight_bit_and_resave)),
                    "--cache", str(w.toy_cache()), "--out", str(w.feature_store()), "--model", "none", *TINY],
         lambda w: [str(w.feature_store())]),
    Case("features-hook-not-in-cache",
         lambda w: ["features", "build", "--sae", str(w.sae("good")), "--cache", str(w.toy_cache()), "--hook",
                    "blocks.0.hook_resid_post", "--out", str(w.path("f12.db")), "--model", "none", *TINY],
         ["blocks.0.hook_resid_post"]),
    Case("features-wrong-model",
         lambda w: ["features", "build", "--sae", str(w.sae("good")), "--cache", str(w.toy_cache()), "--out",
                    str(w.path("f11.db")), "--model", str(w.tiny_gpt2()), *TINY],
         lambda w: [str(w.tiny_gpt2()), "toy"]),
    # ---- steering: bad generation settings, positions, SAE / model / store mismatches
    Case("steer-freq-penalty-inf",
         lambda w: ["steer", "--sae", str(w.sae("good")), "--latent", "1:clamp=2", "--prompt", "anna",
                    "--freq-penalty", "inf"],
         ["--freq-penalty", "inf"]),
    Case("steer-temperature-zero",
         lambda w: ["steer", "--sae", str(w.sae("good")), "--latent", "1:clamp=2", "--prompt", "anna",
                    "--temperature", "0"],
         ["--temperature"]),
    Case("steer-top-p-above-one",
         lambda w: ["steer", "--sae", str(w.sae("good")), "--latent", "1:clamp=2", "--prompt", "anna", "--top-p", "2"],
         ["--top-p"]),
    Case("steer-positions-beyond-the-generation",
         lambda w: ["steer", "--sae", str(w.sae("good")), "--latent", "1:clamp=2", "--prompt", "anna",
                    "--positions", "999", "--max-new-tokens", "4"],
         ["999", "beyond every sequence"]),
    Case("steer-prompt-longer-than-the-context",
         lambda w: ["steer", "--sae", str(w.sae("good")), "--latent", "1:clamp=2", "--prompt",
                    " ".join(["anna was a sailor ."] * 60), "--max-new-tokens", "8"],
         ["--max-new-tokens", "tokens) + --max-new-tokens (8)", "context of 128"]),
    Case("steer-sae-of-another-width",
         lambda w: ["steer", "--sae", str(w.sae("narrow", d_in=64)), "--latent", "1:clamp=2", "--prompt", "anna"],
         ["d_in=64", "width 128"]),
    Case("steer-sae-flipped-bit",
         lambda w: ["steer", "--sae", str(w.sae("flipped", edit=_flip_weight_bit)), "--latent", "1:clamp=2",
                    "--prompt", "anna"],
         lambda w: [str(w.sae("flipped") / "sae_weights.safetensors")]),
    Case("steer-sae-is-a-pickle",
         lambda w: ["steer", "--sae", str(_pickle_file(w)), "--latent", "1:clamp=2", "--prompt", "anna"],
         lambda w: [str(_pickle_file(w)), "pickle"]),
    Case("steer-feature-out-of-range",
         lambda w: ["steer", "--sae", str(w.sae("good")), "--latent", "99999:clamp=2", "--prompt", "anna"],
         ["99999", "0..255"]),
    Case("steer-store-not-sqlite",
         lambda w: ["steer", "--sae", str(w.sae("good")), "--store", str(w.garbage("not-a-store.db")), "--latent",
                    "1:clamp=2x", "--prompt", "anna"],
         lambda w: [str(w.garbage("not-a-store.db"))]),
    Case("steer-store-of-another-sae",
         lambda w: ["steer", "--sae", str(w.sae("other-seed", edit=_flip_weight_bit_and_resave)), "--store",
                    str(w.feature_store()), "--latent", "1:clamp=2x", "--prompt", "anna"],
         lambda w: [str(w.feature_store()), "not built for this SAE"]),
    Case("steer-model-not-found",
         lambda w: ["steer", "--sae", str(w.sae("good")), "--model", str(w.path("no-model")), "--latent", "1:clamp=2",
                    "--prompt", "anna"],
         lambda w: [str(w.path("no-model"))]),
    Case("steer-wrong-model",
         lambda w: ["steer", "--sae", str(w.sae("good")), "--model", str(w.tiny_gpt2()),
                    "--latent", "1:clamp=2", "--prompt", "anna"],
         lambda w: ["toy:toyworld-tiny", "tiny-gpt2", "--allow-model-mismatch"]),
    # ---- labelling and serving: bad stores and values
    Case("label-store-not-sqlite",
         lambda w: ["label", "--store", str(w.garbage("not-a-store.db")), *TINY],
         lambda w: [str(w.garbage("not-a-store.db"))]),
    Case("label-store-missing",
         lambda w: ["label", "--store", str(w.path("missing.db")), *TINY],
         lambda w: [str(w.path("missing.db"))]),
    Case("label-budget-unreadable",
         lambda w: ["label", "--store", str(w.feature_store()), "--judge-model", "m", "--judge-base-url",
                    "http://127.0.0.1:9/v1", "--budget", "lots", *TINY],
         ["--budget", "lots"]),
    Case("label-judge-timeout-nan",
         lambda w: ["label", "--store", str(w.feature_store()), "--judge-timeout-s", "nan", *TINY],
         ["--judge-timeout-s"]),
    Case("serve-sae-is-a-pickle",
         lambda w: ["serve", "--store", str(w.feature_store()), "--model", "toy", "--sae", str(_pickle_file(w)),
                    "--port", "0"],
         lambda w: [str(_pickle_file(w))]),  # "no such folder" (saesteer/web/launch.py checks it is a folder)
    Case("serve-sae-of-another-store",
         lambda w: ["serve", "--store", str(w.feature_store()), "--model", "toy", "--sae",
                    str(w.sae("other-seed", edit=_flip_weight_bit_and_resave)), "--port", "0"],
         lambda w: [str(w.feature_store())]),
    Case("serve-store-not-sqlite",
         lambda w: ["serve", "--store", str(w.garbage("not-a-store.db")), "--port", "0"],
         lambda w: [str(w.garbage("not-a-store.db"))]),
]


def _flip_weight_bit_and_resave(folder: Path) -> None:
    """Another SAE of the same shape (weights changed, re-saved with a fresh checksum)."""
    import torch

    import saes

    sae = saes.load_sae(folder)
    with torch.no_grad():
        sae.W_enc.mul_(-1.0)
    shutil.rmtree(folder)
    saes.save_sae(sae, folder, provenance={"hook_name": HOOK})


def _tiny_gpt2(world: World) -> Path:
    def make():
        sys.path.insert(0, str(ROOT / "tests"))
        from helpers.tiny_hf import save_tiny_gpt2

        return save_tiny_gpt2(world.path("tiny-gpt2"))
    return world._once("tiny_gpt2", make)


World.tiny_gpt2 = _tiny_gpt2  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------ running
@dataclass
class Outcome:
    status: int | str
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.err + "\n" + self.out


class _WouldServe(Exception):
    """`saesteer serve` accepted the bad input and was about to serve."""


@contextlib.contextmanager
def _never_serve():
    import uvicorn

    def refuse(*a, **kw):
        raise _WouldServe("the server would have started: the bad input was accepted")

    real, uvicorn.run = uvicorn.run, refuse
    try:
        yield
    finally:
        uvicorn.run = real


def run_in_process(argv: list[str]) -> Outcome:
    from saesteer.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _never_serve():
        try:
            status: int | str = main(argv)
        except SystemExit as e:  # argparse, config files: the message is already printed or is the code
            if isinstance(e.code, str):
                print(e.code, file=err)
                status = 1
            else:
                status = e.code or 0
        except BaseException:  # escaped the CLI: exactly what the table must catch
            traceback.print_exc(file=err)
            status = "raised"
    return Outcome(status, out.getvalue(), err.getvalue())


def run_in_child(argv: list[str], fsize: int | None = None, timeout: int = 600) -> Outcome:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", WANDB_MODE="offline", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")

    def limit() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))

    try:
        r = subprocess.run([sys.executable, "-m", "saesteer", *argv], env=env, capture_output=True, text=True,
                           timeout=timeout, preexec_fn=limit, cwd=ROOT)
    except subprocess.TimeoutExpired as e:  # e.g. a server that started: the input was accepted
        return Outcome("timeout", str(e.stdout or ""), str(e.stderr or "") + f"\n(no end within {timeout} s)")
    return Outcome(r.returncode, r.stdout, r.stderr)


def check(case: Case, world: World, outcome: Outcome) -> list[str]:
    """What is wrong with how the CLI ended (empty: the case passes)."""
    problems = []
    if outcome.status == "timeout":
        problems.append("it did not stop (a server started?)")
    elif outcome.status == "raised" or "Traceback" in outcome.err:
        problems.append("a Python traceback reached the user")
    elif outcome.status == 0:
        problems.append("exit status 0")
    expect = case.expect(world) if callable(case.expect) else case.expect
    missing = [s for s in expect if s not in outcome.text]
    if missing:
        problems.append(f"the message does not name {missing}")
    return problems


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("bad-inputs"))
    yield w
    w.close()


@pytest.fixture(scope="module", autouse=True)
def _quiet_threads():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_clear_error(case: Case, world: World) -> None:
    if case.skip:
        pytest.skip(case.skip)
    argv = case.argv(world)
    outcome = run_in_child(argv, case.fsize) if case.child else run_in_process(argv)
    problems = check(case, world, outcome)
    assert not problems, f"{case.id}: {'; '.join(problems)}\n--- stderr ---\n{outcome.err[-3000:]}\n--- stdout ---\n{outcome.out[-1500:]}"


@pytest.mark.parametrize("case_id", ["cache-unknown-hook", "steer-freq-penalty-inf", "features-sae-cfg-k-nan"])
def test_a_few_cases_as_real_processes(case_id: str, world: World) -> None:
    """The in-process runs above see what `main` prints; these check a real `python -m saesteer`."""
    case = next(c for c in CASES if c.id == case_id)
    outcome = run_in_child(case.argv(world))
    assert not check(case, world, outcome), outcome.err[-3000:]
    assert outcome.err.count("\n") <= 3, outcome.err  # one or two lines (plus notes)


def test_debug_shows_the_traceback(world: World) -> None:
    case = next(c for c in CASES if c.id == "train-resume-on-another-width")
    plain = run_in_process(case.argv(world))
    assert plain.status == 2 and "Traceback" not in plain.err
    for argv in (["--debug", *case.argv(world)], [*case.argv(world), "--debug"]):
        outcome = run_in_process(argv)
        assert outcome.status == "raised" and "ConfigMismatchError" in outcome.err


# ------------------------------------------------------------------------------------ as a script
def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="run every bad-input case as its own saesteer process")
    ap.add_argument("-k", default="", help="only cases whose id contains this")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="saesteer-bad-inputs-"))
    world = World(root)
    passed = failed = skipped = 0
    try:
        for case in CASES:
            if args.k not in case.id:
                continue
            if case.skip:
                print(f"SKIP  {case.id}: {case.skip}")
                skipped += 1
                continue
            try:
                argv_ = case.argv(world)
            except pytest.skip.Exception as e:
                print(f"SKIP  {case.id}: {e}")
                skipped += 1
                continue
            outcome = run_in_child(argv_, case.fsize, timeout=120 if argv_[0] == "serve" else 600)
            problems = check(case, world, outcome)
            first = next((ln for ln in outcome.err.splitlines() if ln.startswith("error")), outcome.err.strip()[:160])
            if problems:
                failed += 1
                print(f"FAIL  {case.id}: {'; '.join(problems)}\n      {first}")
            else:
                passed += 1
                print(f"ok    {case.id} (exit {outcome.status}): {first[:200]}")
    finally:
        world.close()
        shutil.rmtree(root, ignore_errors=True)
    print(f"{passed + failed + skipped} cases: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
