"""Two processes on one store / one output folder / one cache, through the CLI in real processes.

A user browses with `saesteer serve` while `saesteer label` writes into the same store, starts a
second `label` (or `features upgrade`) on it by mistake, or a second `train` / `cache` into one
folder. Readers are never blocked and see each commit whole; a second writer is refused at once
in one line naming the first (pid, host, command: `saes.fileio.FileLock`'s record); a writer killed
with SIGKILL never blocks the next run. Processes are synchronized on what they write (the lock
file's record, the judge server's held requests), never on sleeps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.judge_server import JudgeServer, fake_llm_answer
from helpers.label_store import build_trigger_store
from helpers.real_cli import captured_serve, saesteer

pytestmark = [pytest.mark.usefixtures("offline_env")]
FAST = ["--judge-backoff-base-s", "0.005", "--judge-backoff-max-s", "0.02", "--judge-max-retries", "2",
        "--scorers", "detection", "--embed-backend", "none", "--no-progress"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_trigger_store(tmp_path_factory.mktemp("store") / "toy.db", n_latents=6)


@pytest.fixture()
def store(built, tmp_path):
    path = tmp_path / "toy.db"
    path.write_bytes(built[0].read_bytes())
    return path


def _wait_for(what: str, done, proc: subprocess.Popen) -> None:
    """Poll `done()` until true; fail if `proc` ends first (a generous deadline only against a hang)."""
    deadline = time.monotonic() + 120
    while not done():
        if proc.poll() is not None:
            pytest.fail(f"the first process ended before {what}: {proc.stdout.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"never saw {what}")
        time.sleep(0.02)


def _holds(lock: Path, proc: subprocess.Popen) -> bool:
    """Whether `lock` records `proc` as its holder."""
    try:
        return json.loads(lock.read_text() or "{}").get("pid") == proc.pid
    except (OSError, ValueError):
        return False


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _refused_naming(r, proc: subprocess.Popen, command: str) -> None:
    assert r.rc != 0
    r.no_traceback()
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1, r.err  # one line ...
    line = lines[0]  # ... naming the other process, where it runs, what it is, and what to do
    assert f"process {proc.pid} on {socket.gethostname()}" in line and command in line, line
    assert "wait for it to finish" in line, line


def test_label_while_serving_a_second_writer_refused_and_a_killed_one_does_not_block(store, monkeypatch):
    n = 6
    other = store.with_name("other.db")  # two stores: "/" lists them (one store: "/" is its feature list)
    other.write_bytes(store.read_bytes())
    r, client = captured_serve(monkeypatch, "--store", store, "--store", other)
    assert client is not None, r.text
    sid = client.get("/api/stores").json()[0]["id"]

    def shown_labels():
        items = client.get(f"/api/stores/{sid}/features", params={"limit": 50}).json()["items"]
        return {f["latent"]: f["label"] for f in items}

    assert set(shown_labels().values()) == {None}
    assert client.get("/").text.count("no labels yet") == 2 and not client.get(f"/api/stores/{sid}").json()["has_labels"]
    with JudgeServer(fake_llm_answer, hold_after=3) as srv:
        cmd = [sys.executable, "-m", "saesteer", "label", "--store", str(store), "--judge-model", "fake-judge",
               "--judge-base-url", srv.url, "--judge-concurrency", "1", *FAST]
        first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            _wait_for("the label run's held judge requests", srv.held, first)
            # the browser reads while the label run holds the store open for writing
            assert len(shown_labels()) == n
            # a second writer of the store is refused at once, naming the first
            _refused_naming(saesteer("label", "--store", store, "--no-progress", "--embed-backend", "none"),
                            first, "saesteer label")
            _refused_naming(saesteer("features", "upgrade", store), first, "saesteer label")
            # a rebuild too, before it reads its SAE and cache (here: folders that do not exist)
            _refused_naming(saesteer("features", "build", "--sae", store.parent / "no-sae", "--cache",
                                     store.parent / "no-cache", "--out", store, "--overwrite"), first, "saesteer label")
            # a reader (export) is not
            saesteer("features", "export", store, store.parent / "dash", "--limit", 3).ok()
            _kill(first)  # kill -9: the OS drops its lock; its record is left behind
        finally:
            _kill(first)
            srv.release()
    assert json.loads(store.with_name("toy.db.lock").read_text())["pid"] == first.pid
    done = subprocess.run([sys.executable, "-m", "saesteer", "label", "--store", str(store), "--no-progress",
                           "--embed-backend", "none"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert store.with_name("toy.db.lock").read_text() == ""  # released: no record left
    # the server, running all along, shows the new labels on the next request (a reload)
    shown = shown_labels()
    assert None not in shown.values() and len(shown) == n, shown
    assert client.get("/").text.count("no labels yet") == 1 and client.get(f"/api/stores/{sid}").json()["has_labels"]


def test_a_reader_keeps_the_store_it_opened_while_it_is_rebuilt(store, monkeypatch):
    """`features build --overwrite` while `serve` (and another reader) have the old store open: they
    keep reading the old store whole, a label still only in its -wal file too (the build removes
    the -wal and -shm names before it renames the new store over the old); the web app says the file
    was rebuilt and that a restart shows it; a new opening reads the new one."""
    from features import FeatureStore
    from features.records import LabelProvenance

    old = FeatureStore.open(store)
    r, client = captured_serve(monkeypatch, "--store", store)
    assert client is not None, r.text
    sid = client.get("/api/stores").json()[0]["id"]
    assert "rebuilt" not in client.get(f"/s/{sid}").text and client.get(f"/api/stores/{sid}").json()["replaced_note"] is None
    with FeatureStore.open(store, readonly=False) as writer:  # the readers keep it in the -wal file
        writer.write_label(5, "kept from before", provenance=LabelProvenance("human", "human", "v1"))
    assert Path(f"{store}-wal").stat().st_size > 0 and old.label(5).text == "kept from before"
    before = old.feature(5).stats.n_fires
    child = ("import sys; from helpers.label_store import build_trigger_store; "
             "build_trigger_store(sys.argv[1], n_latents=4, overwrite=True)")
    for _ in range(2):  # twice: the second new file may take the first new file's inode, never the served one's
        subprocess.run([sys.executable, "-c", child, str(store)], check=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        old.refresh()
        assert old.meta["sae"]["d_sae"] == 6 and old.feature(5).stats.n_fires == before
        assert old.label(5).text == "kept from before" and old.integrity_check() == "ok"
        info = client.get(f"/api/stores/{sid}").json()
        assert info["d_sae"] == 6 and "toy.db was rebuilt" in info["replaced_note"], info
        assert len(client.get(f"/api/stores/{sid}/features", params={"limit": 50}).json()["items"]) == 6
        page = client.get(f"/s/{sid}").text
        assert "toy.db was rebuilt or replaced after this server opened it" in page and "Restart `saesteer serve`" in page
    with FeatureStore.open(store) as new:
        assert new.meta["sae"]["d_sae"] == 4
    old.close()


def _start(argv: list, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "saesteer", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


@pytest.mark.parametrize("command", ["train", "cache"])
def test_a_second_train_or_cache_into_one_folder_is_refused_naming_the_first(command, tmp_path, monkeypatch):
    """... at once: before it loads a model (a real one can take minutes)."""
    from saesteer import models

    def no_model(*a, **kw):
        raise AssertionError("the second run loaded a model before finding the folder in use")

    monkeypatch.setattr(models, "load_model", no_model)
    monkeypatch.setattr(models, "load_recorded_model", no_model)
    out = tmp_path / "out"
    toy = ["--model", "toy", "--dataset", "toy", "--no-progress"]
    if command == "train":
        argv, lock = ["train", *toy, "--out", out, "--total-tokens", 50_000_000, "--eval-every-tokens", 0,
                      "--model-eval", "false"], out / "train.lock"
    else:
        argv, lock = ["cache", *toy, "--out", out, "--max-tokens", 50_000_000], out / ".lock"
    first = _start(argv, out)
    try:
        _wait_for(f"{lock} recording the first {command}", lambda: _holds(lock, first), first)
        _refused_naming(saesteer(*argv), first, f"saesteer {command}")
    finally:
        _kill(first)


@pytest.fixture()
def no_flock(monkeypatch):
    """A filesystem without flock (ENOLCK, some NFS setups)."""
    import errno
    import fcntl

    def flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", flock)


def _busy(holder: str) -> RuntimeError:
    return RuntimeError(holder)


def test_without_flock_the_record_is_the_lock_and_a_dead_holder_is_stale(tmp_path, no_flock):
    """On a filesystem without flock (ENOLCK, some NFS setups): a live holder's record refuses
    (naming the file to delete if it is gone), a record of a pid gone from this host is taken over."""
    from saes.fileio import FileLock

    path = tmp_path / "x.lock"
    with FileLock(path, _busy):
        with pytest.raises(RuntimeError, match=f"process {os.getpid()} on .*delete {path}"):
            with FileLock(path, _busy):
                pass
    with FileLock(path, _busy):  # released: free again
        pass
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname(), "command": "saesteer label"}))
    with FileLock(path, _busy):  # stale: its process is gone
        assert json.loads(path.read_text())["pid"] == os.getpid()
    path.write_text(json.dumps({"pid": 1, "host": "another-host", "command": "saesteer label"}))
    with pytest.raises(RuntimeError, match="process 1 on another-host"):
        with FileLock(path, _busy):
            pass


def _read_only_mount(folder: Path, mnt: Path, *argv) -> subprocess.CompletedProcess:
    """`saesteer *argv` with `folder` mounted read-only at `mnt` (a user namespace's bind mount);
    skips where there is none (no `unshare -rm`)."""
    script = (f"mount --bind -o ro {folder} {mnt} && touch {mnt}/probe 2>/dev/null && exit 99; "
              f"exec {sys.executable} -m saesteer {' '.join(map(str, argv))}")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True)
    if r.returncode == 99 or "unshare" in r.stderr and r.returncode != 0 and "saesteer" not in r.stderr:
        pytest.skip(f"no read-only bind mount here (unshare -rm): {r.stderr.strip()[:200]}")
    return r


def _published(built, tmp_path) -> tuple[Path, Path]:
    folder, mnt = tmp_path / "folder", tmp_path / "mnt"
    folder.mkdir()
    mnt.mkdir()
    (folder / "toy.db").write_bytes(built[0].read_bytes())
    return folder, mnt


def test_a_store_in_a_read_only_folder_is_readable(built, tmp_path):
    """A store published in a read-only folder (a read-only mount, a lab's shared folder): SQLite
    cannot create `<store>-shm` there, and the store is read all the same."""
    folder, mnt = _published(built, tmp_path)
    r = _read_only_mount(folder, mnt, "features", "show", mnt / "toy.db", 2)
    assert r.returncode == 0, r.stdout + r.stderr
    assert built[1][2] in r.stdout  # latent 2's trigger word in its examples


def test_a_read_only_store_with_changes_pending_is_refused_with_advice_that_works(built, tmp_path):
    """A label written into the store was still in `toy.db-wal` (its writer killed; the folder then
    copied without `-shm`): read as an unchanging file it would be missed, so it is refused, saying
    what to run where the folder is writable; once that has run, the label is read in the read-only
    folder (a reader there leaves the -wal but makes the `-shm` SQLite reads it through)."""
    folder, mnt = _published(built, tmp_path)
    child = ("import os, signal, sys; from features import FeatureStore; from features.records import LabelProvenance\n"
             "st = FeatureStore.open(sys.argv[1], readonly=False)\n"
             "st._conn.execute('PRAGMA wal_autocheckpoint=0')\n"
             "st.write_label(2, 'pending label', provenance=LabelProvenance('me', 'human', 'v1'))\n"
             "os.kill(os.getpid(), signal.SIGKILL)")
    subprocess.run([sys.executable, "-c", child, str(folder / "toy.db")],
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert (folder / "toy.db-wal").stat().st_size > 0
    (folder / "toy.db-shm").unlink()
    r = _read_only_mount(folder, mnt, "features", "show", mnt / "toy.db", 2)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "toy.db-wal" in r.stderr, r.stderr
    advice = re.search(r"`saesteer ([^`]+)`", r.stderr)
    assert advice, r.stderr
    words = [w for w in advice.group(1).split() if w != "toy.db"]
    saesteer(*words, folder / "toy.db").ok()  # run by the owner, where the folder is writable
    r = _read_only_mount(folder, mnt, "features", "show", mnt / "toy.db", 2)
    assert r.returncode == 0 and "pending label" in r.stdout, r.stdout + r.stderr


def _on_reading_the_record(monkeypatch, then) -> None:
    """Run `then()` once, right after the first read of a lock record: another process starting
    at that moment."""
    from saes.fileio import FileLock

    read, done = FileLock._record, []

    def record(self):
        found = read(self)
        if not done:
            done.append(True)
            then()
        return found

    monkeypatch.setattr(FileLock, "_record", record)


def test_without_flock_two_writers_starting_together_do_not_both_take_the_lock(tmp_path, no_flock, monkeypatch):
    """Both read the record before either wrote one: without `<lock>.claim` both found it empty and
    both wrote (both labels judging the same latents, and the first to finish emptied the other's
    record for a third to take)."""
    from saes.fileio import FileLock

    path = tmp_path / "x.lock"
    second = []

    def second_starts():
        try:
            second.append(FileLock(path, _busy).__enter__())
        except RuntimeError as e:
            second.append(e)

    _on_reading_the_record(monkeypatch, second_starts)
    with FileLock(path, _busy):
        assert isinstance(second[0], RuntimeError), "both took the lock"
        assert f"taking {path} at this moment; if none is, delete {path}.claim" in str(second[0])
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.with_name("x.lock.claim").exists()
    with FileLock(path, _busy):  # free again
        pass


def test_an_early_check_never_empties_the_holders_record(tmp_path, no_flock, monkeypatch):
    """`refuse_if_held` (train, cache, features build before loading a model) found the lock free, and
    a writer took it meanwhile: the check wrote its own record over the writer's and emptied it when
    done, so a third process took the lock the writer holds."""
    from saes.fileio import FileLock

    path = tmp_path / "x.lock"
    with FileLock(path, _busy):  # an earlier run: its lock file stays, emptied
        pass
    writer = FileLock(path, _busy)
    _on_reading_the_record(monkeypatch, writer.__enter__)  # the writer starts while the check reads
    FileLock(path, _busy).refuse_if_held()
    try:
        assert json.loads(path.read_text() or "{}").get("pid") == os.getpid()
        with pytest.raises(RuntimeError, match=f"process {os.getpid()} on "):
            with FileLock(path, _busy):
                pass
    finally:
        writer.release()


def test_an_early_check_creates_no_lock_file(tmp_path):
    from saes.fileio import FileLock

    FileLock(tmp_path / "x.lock", _busy).refuse_if_held()
    assert list(tmp_path.iterdir()) == []


def test_on_windows_a_lock_record_is_not_probed_with_os_kill(tmp_path, no_flock, monkeypatch):
    """Where the record is the lock, a holder's pid was probed with os.kill(pid, 0): on Windows that
    ends the process (TerminateProcess), so a second label killed the running one. There a record
    is never taken over as stale: the refusal names the file to delete."""
    from saes.fileio import FileLock

    def kill(pid, sig):
        raise AssertionError(f"os.kill({pid}, {sig}) ends process {pid} on Windows")

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "kill", kill)
    path = tmp_path / "x.lock"
    path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": "saesteer label"}))
    with pytest.raises(RuntimeError, match=f"process {os.getpid()} on .*delete {path}"):
        with FileLock(path, _busy):
            pass


def test_the_demos_label_stage_takes_the_stores_writer_lock(built, tmp_path, monkeypatch):
    """`saesteer demo`'s label stage wrote labels without the lock `saesteer label` takes: a label run
    of the demo's store meanwhile (or a second demo) judged the same latents. Refused now, naming the
    holder, before a judge is made (a local judge model can take minutes to load)."""
    import autointerp.config
    from features.store import StoreError, writer_lock
    from saesteer.demo import DemoConfig, DemoPaths
    from saesteer.demo.stages import stage_label

    def no_judge(*a, **kw):
        raise AssertionError("a judge was made before the store's lock was taken")

    paths = DemoPaths(tmp_path)
    paths.store.write_bytes(built[0].read_bytes())
    monkeypatch.setattr(autointerp.config, "make_judge", no_judge)
    with writer_lock(paths.store):  # here: as another process's `saesteer label` holds it
        with pytest.raises(StoreError, match=f"features.db is being written by process {os.getpid()} on "):
            stage_label(DemoConfig(out=tmp_path), paths, None, False, {}, print)


def test_a_served_store_deleted_meanwhile_is_said_deleted_not_rebuilt(built, tmp_path, monkeypatch):
    """The note said "rebuilt or replaced ... Restart `saesteer serve` to show the new one" for a store
    file deleted or moved away: there is no new one, and a restart would fail to find it. The file
    name in it is shown escaped."""
    store = tmp_path / "toy <b>&lab.db"
    store.write_bytes(built[0].read_bytes())
    r, client = captured_serve(monkeypatch, "--store", store)
    assert client is not None, r.text
    sid = client.get("/api/stores").json()[0]["id"]
    store.rename(tmp_path / "elsewhere.db")
    note = client.get(f"/api/stores/{sid}").json()["replaced_note"]
    assert note.startswith("toy <b>&lab.db was moved or deleted after this server opened it") and "Restart" not in note
    page = client.get(f"/s/{sid}").text
    assert "toy &lt;b&gt;&amp;lab.db was moved or deleted" in page and "<b>&" not in page
    assert len(client.get(f"/api/stores/{sid}/features", params={"limit": 50}).json()["items"]) == 6  # still read


def test_without_flock_a_holder_ending_leaves_the_record_of_one_that_took_over(tmp_path, no_flock):
    """A holder judged gone by another process (its pid not seen from there: another PID namespace
    under one host name) was taken over; when it ended it emptied the new holder's record, and a
    third process took the lock that one holds."""
    from saes.fileio import FileLock

    path = tmp_path / "x.lock"
    taker = {"pid": os.getpid() + 1, "host": socket.gethostname(), "command": "saesteer label", "since": "now"}
    with FileLock(path, _busy):
        path.write_text(json.dumps(taker))  # the other process takes it over
    assert json.loads(path.read_text()) == taker
