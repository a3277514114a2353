"""Caching when the output cannot be written: a full disk (at a shard, the build log or the final
manifest), permission denied, a read-only or immutable folder, a real file-size limit and a real
tiny file system. Each stops with a clear error naming the folder, leaves no partial file under a
final name, keeps the finished shards, and a re-run finishes byte-identical to an uninterrupted build.

The real-fault cases need root tricks (chattr +i, mount -t tmpfs) or a child process with
RLIMIT_FSIZE; they skip with the reason where the trick is unavailable."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers.tiny_model import make_model, make_tokenizer, write_corpus
from training.cache import build_cache
from training.cache_config import CacheConfig
from training.shardset import verify_cache
from training.writer import CacheDiskFullError, CacheWriteError
from training.manifest import read_manifest
from training.text import TextConfig

pytestmark = [pytest.mark.usefixtures("one_thread")]

H0 = "blocks.0.hook_resid_post"
TOKENS = 16 * 30  # 30 contexts of 16 tokens, 8 contexts per shard: 4 shards


@pytest.fixture(scope="module")
def model():
    return make_model(make_tokenizer(), d_model=64, n_layers=2, n_ctx=64, seed=0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    write_corpus(d, n_docs=60, seed=3, n_files=2)
    return d


def build(model, corpus, out, **kw):
    text = TextConfig(dataset=str(corpus), context_length=16)
    cfg = CacheConfig(out=str(out), hooks=[H0], shard_contexts=8, batch_size=4, max_tokens=TOKENS, **kw)
    return build_cache(model, text, cfg, progress=False, log=None)


def tree(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def reference(model, corpus, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ref") / "cache"
    build(model, corpus, out)
    return tree(out)


def assert_clean_stop(out: Path, finished: int) -> None:
    """No temporary or unvouched file, the finished shards intact, the manifest incomplete."""
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.endswith(".tmp")], names
    assert [n for n in names if n.startswith("shard_")] == [f"shard_{i:06d}.safetensors" for i in range(finished)]
    assert not read_manifest(out).complete
    report = verify_cache(out)
    assert report.checked == finished and all("incomplete" in p for p in report.problems), report.problems


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@pytest.mark.parametrize("where, code", [
    ("shard", errno.ENOSPC), ("shard", errno.EACCES), ("shard", errno.EROFS),
    ("log", errno.ENOSPC), ("manifest", errno.ENOSPC), ("manifest", errno.EACCES),
])
def test_write_failure_stops_cleanly_and_the_rerun_is_byte_identical(model, corpus, reference, tmp_path, monkeypatch,
                                                                     where, code):
    import training.cache as cache
    import training.shards as shards

    if where == "shard":
        real = shards._write_all

        def failing(f, data):
            if Path(f.name).name.lstrip(".").startswith("shard_000002"):
                raise _oserror(code)
            return real(f, data)

        monkeypatch.setattr(shards, "_write_all", failing)
        finished = 2
    elif where == "log":
        import training.writer as writer

        real_append = writer.append_progress

        def failing_append(cache_dir, shard):
            if shard.index == 2:
                raise _oserror(code)
            return real_append(cache_dir, shard)

        monkeypatch.setattr(writer, "append_progress", failing_append)
        finished = 2  # shard 2 reached its final name, but the log never vouched for it: not kept
    else:
        real_write = cache.write_manifest

        def failing_write(cache_dir, manifest):
            if manifest.complete:
                raise _oserror(code)
            return real_write(cache_dir, manifest)

        monkeypatch.setattr(cache, "write_manifest", failing_write)
        finished = 4
    out = tmp_path / "cache"
    with pytest.raises(CacheWriteError) as e:
        build(model, corpus, out)
    text = str(e.value)
    assert str(out) in text and "re-run the same command to resume" in text and "Traceback" not in text
    assert e.value.errno == (errno.ENOSPC if code == errno.ENOSPC else code)
    assert isinstance(e.value, CacheDiskFullError) == (code == errno.ENOSPC)
    if where == "log":  # the unvouched shard stays until the re-run removes it
        (out / "shard_000002.safetensors").unlink()
    assert_clean_stop(out, finished)
    monkeypatch.undo()
    res = build(model, corpus, out)
    assert res.shards_resumed == finished
    assert tree(out) == reference


def _chattr(flag: str, path: Path) -> bool:
    return shutil.which("chattr") is not None and subprocess.run(
        ["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_an_immutable_output_folder_is_a_clear_error(model, corpus, reference, tmp_path):
    """As root a read-only folder does not stop writes; an immutable one (chattr +i) does."""
    parent = tmp_path / "locked"
    parent.mkdir()
    if not _chattr("+i", parent):
        pytest.skip("chattr +i is not available here (not root, or the file system has no immutable flag)")
    try:
        with pytest.raises(CacheWriteError, match=r"cannot write the cache folder .*locked/cache: the operation is "
                                                  r"not permitted .*re-run the same command"):
            build(model, corpus, parent / "cache")
        assert not (parent / "cache").exists()
    finally:
        _chattr("-i", parent)
    build(model, corpus, parent / "cache")
    assert tree(parent / "cache") == reference


_LIMITED_CHILD = """
import resource, signal, sys
sys.path.insert(0, sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
from test_cache_write_failures import build, make_model, make_tokenizer
from pathlib import Path
from training.writer import CacheDiskFullError

model = make_model(make_tokenizer(), d_model=64, n_layers=2, n_ctx=64, seed=0)
try:
    build(model, Path(sys.argv[4]), Path(sys.argv[1]))
except CacheDiskFullError as e:
    print("STOPPED:", e)
    sys.exit(3)
"""


def test_a_real_file_size_limit_stops_cleanly_and_resumes(model, corpus, reference, tmp_path):
    """RLIMIT_FSIZE in a child process: the kernel refuses the write with EFBIG mid-shard."""
    shard = reference["shard_000000.safetensors"]
    out = tmp_path / "cache"
    tests_dir = Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests_dir.parent), str(tests_dir)]), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", _LIMITED_CHILD, str(out), str(len(shard) // 2), str(tests_dir),
                        str(corpus)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "file size limit" in r.stdout and str(out) in r.stdout and "Traceback" not in r.stderr
    assert_clean_stop(out, 0)
    build(model, corpus, out)
    assert tree(out) == reference


def test_a_real_full_disk_stops_cleanly_and_resumes(model, corpus, reference, tmp_path):
    """A tmpfs just big enough for two shards (needs root and mount); skipped where mount is refused."""
    shard = len(reference["shard_000000.safetensors"])
    mnt = Path(tempfile.mkdtemp(dir=tmp_path))
    pages = -(-shard // 4096)
    size = 4096 * (2 * pages + pages // 2 + 3)  # two shards, half of the third, the small JSON files
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or 'mount failed'})")
    try:
        out = mnt / "cache"
        with pytest.raises(CacheDiskFullError, match=r"disk full while writing shard_0000\d\d\.safetensors in "):
            build(model, corpus, out, check_disk=False)
        kept = len([p for p in out.iterdir() if p.name.startswith("shard_")])
        assert kept >= 1
        assert_clean_stop(out, kept)
        moved = tmp_path / "moved"  # "free some space": continue the same cache on a bigger disk
        shutil.copytree(out, moved)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
    build(model, corpus, moved)
    assert tree(moved) == reference


def test_no_document_source_is_read_by_two_threads_at_once(model, corpus, tmp_path, monkeypatch):
    """The estimate samples documents while the prefetcher packs the first shards in its thread.
    Sharing one streaming dataset between them sometimes shifted the recorded text pointers (the
    same tokens, other document indices), and then a resume continued from the wrong place."""
    import threading

    from training.text import DocumentSource

    readers: dict[int, set[int]] = {}
    real = DocumentSource.chunks

    def chunks(self, *a, **kw):  # records the threads that iterate each source
        for item in real(self, *a, **kw):
            readers.setdefault(id(self), set()).add(threading.get_ident())
            yield item

    monkeypatch.setattr(DocumentSource, "chunks", chunks)
    build(model, corpus, tmp_path / "cache")
    assert readers and all(len(threads) == 1 for threads in readers.values()), readers
