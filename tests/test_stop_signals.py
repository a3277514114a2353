"""Stop signals during long commands, sent to `saesteer` in its own process as a scheduler, a closed
ssh session or Ctrl-C sends them (SIGTERM, SIGHUP, SIGINT): the work done is kept, the same command
goes on from there, one line says so, exit status 128 + the signal's number, no traceback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from helpers import train_child
from helpers.real_cli import OFFLINE_ENV, saesteer

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

REPO = Path(__file__).resolve().parents[1]

TRAIN_FLAGS = ["--total-tokens", "5120", "--batch-size", "256", "--holdout-tokens", "512", "--d-sae", "64", "--k", "4",
               "--architecture", "topk,matryoshka", "--checkpoint-every-tokens", "1024", "--checkpoint-keep-last", "2",
               "--eval-every-tokens", "0", "--no-progress", "--num-threads", "1"]  # 20 steps, a checkpoint every 4


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0", **extra}
    env.pop("SAESTEER_DEBUG", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _saesteer(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saesteer", *argv], env=env or _env(), capture_output=True, text=True,
                          timeout=300)


def _one_line_no_traceback(r: subprocess.CompletedProcess, signum: int) -> str:
    """The stop line of a command `signum` stopped (its exit status checked, no traceback)."""
    assert r.returncode == 128 + signum, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("stopped by ")]
    assert len(lines) == 1 and lines[0].startswith(f"stopped by {signal.Signals(signum).name}"), r.stderr[-3000:]
    return lines[0]


# ------------------------------------------------------------------------------------------ the CLI
def _signalled_info(monkeypatch, signum: int) -> None:
    """`saesteer info` sends itself `signum` while it works (in this process)."""
    import saesteer.commands.info as info

    def run(args):
        os.kill(os.getpid(), signum)
        time.sleep(30)  # the handler ends it at once
        return 0

    monkeypatch.setattr(info, "run", run)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_is_one_line_and_128_plus_its_number_and_the_handlers_are_put_back(monkeypatch, signum):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    _signalled_info(monkeypatch, signum)
    r = saesteer("info")
    assert r.rc == 128 + signum and r.err == f"stopped by {signal.Signals(signum).name}\n", r.err
    assert {s: signal.getsignal(s) for s in before} == before  # a program calling the CLI keeps its own


def test_debug_shows_the_traceback_of_a_stop(monkeypatch):
    from saesteer.stopsignals import Stopped

    _signalled_info(monkeypatch, signal.SIGTERM)
    with pytest.raises(Stopped) as e:
        saesteer("--debug", "info")
    assert e.value.exit_status == 143


# ------------------------------------------------------------------------------------------ train
@pytest.fixture(scope="module")
def train_cache(tmp_path_factory) -> Path:
    from helpers.fake_cache import make_fake_cache

    return make_fake_cache(tmp_path_factory.mktemp("c") / "cache", shard_rows=[2048, 2048, 2048], d_in=16).path


@pytest.fixture(scope="module")
def uninterrupted(train_cache: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "straight"
    r = _saesteer("train", "--cache", str(train_cache), "--out", str(out), *TRAIN_FLAGS)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _weights(out: Path) -> dict[str, dict]:
    return {p.name: load_file(p / "sae_weights.safetensors") for p in sorted((out / "saes").iterdir())}


def _steps_trained(out: Path) -> list[int]:
    return [int(s) for s in (out / "steps_trained").read_text().split()]


def _stop_training_at_step_14(train_cache: Path, out: Path, signum: int) -> list[str]:
    """`saesteer train` sent `signum` after step 14 (its periodic checkpoints: steps 4, 8, 12); its argv."""
    from training.checkpoint import list_checkpoints

    argv = ["train", "--cache", str(train_cache), "--out", str(out), *TRAIN_FLAGS]
    r = train_child.signal_when_waiting(argv, 14, out, _env(), signum)
    line = _one_line_no_traceback(r, signum)
    assert "step 14 " in line and "step_0000000014" in line and "run the same command to resume" in line, line
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_0000000012", "step_0000000014"]
    assert not (out / "metrics.json").exists()
    return argv


def test_train_called_from_python_checkpoints_the_step_a_ctrl_c_came_in(tmp_path: Path) -> None:
    """`train(..., stop_signals=stopsignals.deferred)` from Python (a notebook's "interrupt the
    kernel" sends SIGINT), not through the CLI: the step finishes and is checkpointed, as documented;
    the handlers are put back."""
    from saesteer import stopsignals
    from training.run import RunStopped, train

    before = signal.getsignal(signal.SIGINT)

    def ctrl_c_at_step_3(trainer) -> None:
        if trainer.step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    try:
        train(train_child.run_config(total_batches=8), train_child.source(), tmp_path / "run", on_step=ctrl_c_at_step_3,
              stop_signals=stopsignals.deferred)
    except RunStopped as e:
        stopped = e
    except KeyboardInterrupt:  # not noted: raised where the signal came, the step not checkpointed
        pytest.fail("Ctrl-C broke into the step instead of stopping the run after it")
    else:
        pytest.fail("the run did not stop")
    assert stopped.signum == signal.SIGINT and stopped.step == 3, stopped
    assert stopped.checkpoint is not None and stopped.checkpoint.name == "step_0000000003"
    assert str(stopped) == f"training stopped at step 3 (768 tokens); checkpoint {stopped.checkpoint}"  # a notebook's line
    assert signal.getsignal(signal.SIGINT) is before


def test_a_ctrl_c_while_the_data_runs_out_checkpoints_the_last_step(tmp_path: Path) -> None:
    """A stop signal noted while the source is read for a batch it no longer has (the loop's last
    read) stops the run with a checkpoint of its last step, as after any step; it raised `Stopped`
    with no checkpoint of the steps since the last periodic one."""
    from saesteer import stopsignals
    from training.run import RunStopped, train

    def five_steps_then_ctrl_c():
        batches = iter(train_child.source())
        for _ in range(2 + 5):  # the held-out rows (512 tokens), then 5 steps of the 8 asked for
            yield next(batches)
        os.kill(os.getpid(), signal.SIGINT)  # while the next batch is asked for

    with pytest.raises(KeyboardInterrupt) as stopped:
        train(train_child.run_config(total_batches=8), five_steps_then_ctrl_c(), tmp_path / "run",
              stop_signals=stopsignals.deferred)
    assert isinstance(stopped.value, RunStopped), f"stopped without a checkpoint of its last step: {stopped.value!r}"
    assert stopped.value.step == 5 and stopped.value.checkpoint.name == "step_0000000005", stopped.value


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_ctrl_c_and_a_closed_terminal_checkpoint_the_step_training_stopped_at(signum, train_cache: Path,
                                                                              tmp_path: Path) -> None:
    _stop_training_at_step_14(train_cache, tmp_path / "run", signum)


def test_a_closed_terminal_stops_training_with_its_checkpoint_though_nothing_can_be_written_to_it(
        train_cache: Path, tmp_path: Path) -> None:
    """ssh closed: SIGHUP, and every write to the terminal fails (EIO): the progress bar and the
    stop line too. The run still checkpoints its step and exits 129 (not 1 with an I/O error)."""
    import pty

    from training.checkpoint import list_checkpoints

    out = tmp_path / "run"
    argv = ["train", "--cache", str(train_cache), "--out", str(out),
            *[f for f in TRAIN_FLAGS if f != "--no-progress"]]  # the bar draws on the terminal
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, train_child.__file__, "cli-signal", "14", *argv], env=_env(),
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    try:
        os.set_blocking(master, False)
        deadline = time.monotonic() + 240
        while not (out / "hanging").exists():  # read what it draws, so that it never blocks on a full terminal
            with contextlib.suppress(OSError):
                os.read(master, 65536)
            assert proc.poll() is None and time.monotonic() < deadline, "the run never reached step 14"
            time.sleep(0.05)
        os.close(master)  # the terminal is gone
        proc.send_signal(signal.SIGHUP)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGHUP
    assert list_checkpoints(out / "checkpoints")[-1].name == "step_0000000014"


def test_a_preempted_training_run_resumes_where_it_stopped_and_ends_bit_identical(
        train_cache: Path, uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = _stop_training_at_step_14(train_cache, out, signal.SIGTERM)
    (out / "steps_trained").unlink()
    r = subprocess.run([sys.executable, train_child.__file__, "cli-signal", "0", *argv], env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step_0000000014" in r.stdout
    assert _steps_trained(out) == list(range(15, 21))  # steps 13 and 14 (after the checkpoint of 12) not redone
    a, b = _weights(uninterrupted), _weights(out)
    assert a.keys() == b.keys() and len(a) == 2
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert a[name][key].equal(b[name][key]), f"{name}/{key} differs after the stop and resume"
    assert json.loads((out / "metrics.json").read_text())["steps"] == 20


@pytest.mark.slow  # wandb starts its service (~10 s)
def test_a_stopped_run_closes_its_offline_wandb_run_as_preempted(train_cache: Path, tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    argv = ["train", "--cache", str(train_cache), "--out", str(out), *TRAIN_FLAGS, "--wandb", "true",
            "--wandb-project", "p"]
    r = train_child.signal_when_waiting(argv, 6, out, _env(WANDB_MODE="offline", WANDB_SILENT="true"), signal.SIGTERM)
    _one_line_no_traceback(r, signal.SIGTERM)
    from helpers.wandb_log import wandb_records_after_exit

    (run_dir,) = (out / "wandb").glob("offline-run-*")
    records = wandb_records_after_exit(run_dir)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "preempting" in kinds, kinds  # wandb shows it preempted (the same id resumes it), not finished
    (exit_record,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]  # closed by finish()
    assert exit_record.exit_code == 128 + signal.SIGTERM


# ------------------------------------------------------------------------------------------ cache
def _stop_child(target: str, n: int, marker: Path, *argv: str, signum: int = signal.SIGTERM,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`saesteer ARGV` sent `signum` while waiting in the n-th call of `target` (helpers/stop_child.py)."""
    from helpers.stop_child import __file__ as child
    from helpers.stop_child import signal_when_waiting

    return signal_when_waiting([sys.executable, child, target, str(n), str(marker), *argv], marker, env or _env(),
                               signum)


def test_a_stopped_cache_keeps_only_whole_shards_and_the_same_command_finishes_it(tmp_path: Path) -> None:
    from training.manifest import read_progress

    out = tmp_path / "cache"
    argv = ["cache", "--model", "toy", "--dataset", "toy", "--out", str(out), "--max-tokens", "6000",
            "--shard-contexts", "8", "--batch-size", "4", "--no-progress"]
    # stopped in the middle of a shard: 2 batches a shard, the 8th batch's copy (shards 0-2 handed to the
    # writer, the 4th half filled)
    r = _stop_child("training.cache:fill_batch", 8, tmp_path / "waiting", *argv)
    line = _one_line_no_traceback(r, signal.SIGTERM)
    assert "the same command" in line, line
    shards = read_progress(out)
    assert [s.index for s in shards] == [0, 1, 2]
    on_disk = sorted(p.name for p in out.iterdir() if p.name not in ("manifest.json", "progress.jsonl", ".lock"))
    assert on_disk == sorted(s.file for s in shards)  # no half shard, no temporary file

    assert "resuming after 3 finished shard(s)" in saesteer(*argv).ok().text
    saesteer("cache", "--verify", out).ok()


# ------------------------------------------------------------------------------------------ label
def _stopped_while_the_judge_holds(argv: list[str], cache_file: Path, signum: int, hold_from: int, responder):
    """`saesteer ARGV --judge-base-url URL` against the loopback judge, sent `signum` once the judge
    holds its requests (every one from the `hold_from`-th to arrive on: the run must send more), no
    answer is still being sent, and every answer is in `cache_file`;
    then the same command again, in this process. (the stop line, the keys of the requests answered
    before the stop, the keys of the requests the re-run sent)."""
    from helpers.judge_server import JudgeServer
    from test_autointerp_store import cached_rows

    with JudgeServer(responder, hold_from=hold_from) as srv:
        argv = [*argv, "--judge-base-url", srv.url]
        proc = subprocess.Popen([sys.executable, "-m", "saesteer", *argv], env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 180
            # settled: else an answer still being sent when the stop lands is counted as given and not found
            # in the cache (the client had not read it), a race a loaded machine wins now and then
            while not (srv.settled_on_hold() and cache_file.exists() and cached_rows(cache_file) == srv.n_completed()):
                assert proc.poll() is None, f"the run ended early: {proc.stderr.read()[-3000:]}"
                assert time.monotonic() < deadline, "the run never reached the held requests"
                time.sleep(0.02)
            proc.send_signal(signum)  # while requests are in flight
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        srv.release()
        line = _one_line_no_traceback(subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr), signum)
        answered = {r.key for r in srv.snapshot() if r.completed}
        n_before = len(srv.snapshot())
        assert len(answered) == hold_from and cached_rows(cache_file) == len(answered)  # every answer kept
        saesteer(*argv).ok()
        asked_again = [r.key for r in srv.snapshot()[n_before:]]
    return line, answered, asked_again


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_label_run_keeps_the_answers_paid_for_and_the_rerun_does_not_ask_them_again(signum, tmp_path):
    from helpers.judge_server import fake_llm_answer
    from helpers.label_store import build_trigger_store
    from test_autointerp_store import FAST, N, labels_of

    store, triggers = build_trigger_store(tmp_path / "toy.db", n_latents=N)
    argv = ["label", "--store", str(store), "--judge-model", "fake-judge", "--judge-concurrency", "4", "--no-progress",
            *FAST]
    cache_file = store.with_name(store.name + ".judge-cache.sqlite")
    line, answered, asked_again = _stopped_while_the_judge_holds(argv, cache_file, signum, 12, fake_llm_answer)
    assert "the same command" in line, line
    assert not set(asked_again) & answered  # nothing paid for before the stop was asked again
    assert len(answered) + len(asked_again) == 4 * N
    assert {i: f.label.text for i, f in labels_of(store).items()} == dict(enumerate(triggers))


_STOP_IN_THE_5TH_CACHE_WRITE = """
import os, signal, sys
from autointerp.cache import ResponseCache
put, n = ResponseCache.put, [0]
def put_after_a_stop(self, *a, **kw):  # the 5th answer received: the stop lands before it is cached
    n[0] += 1
    if n[0] == 5:
        os.kill(os.getpid(), int(sys.argv[1]))
    return put(self, *a, **kw)
ResponseCache.put = put_after_a_stop
from saesteer.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


def test_a_stop_landing_between_an_answer_and_its_cache_write_keeps_the_answer(tmp_path):
    """The signal lands while an event-loop task runs (here: an answer received, not yet cached),
    not while the loop waits: the stop raised there and the answer was lost (and, where a task was
    in the middle of a request, asyncio printed its traceback under the stop line: seen under load
    in the label test above). Now the stop cancels the run at its next wait."""
    from helpers.judge_server import JudgeServer, fake_llm_answer
    from helpers.label_store import build_trigger_store
    from test_autointerp_store import FAST, N, cached_rows

    store, _ = build_trigger_store(tmp_path / "toy.db", n_latents=N)
    with JudgeServer(fake_llm_answer, hold_after=5) as srv:  # one request at a time; none answered after the 5th
        argv = ["label", "--store", str(store), "--judge-model", "fake-judge", "--judge-concurrency", "1",
                "--no-progress", *FAST, "--judge-base-url", srv.url]
        r = subprocess.run([sys.executable, "-c", _STOP_IN_THE_5TH_CACHE_WRITE, str(int(signal.SIGTERM)), *argv],
                           env=_env(), capture_output=True, text=True, timeout=300)
        srv.release()
    _one_line_no_traceback(r, signal.SIGTERM)
    assert srv.n_completed() == 5 and cached_rows(store.with_name(store.name + ".judge-cache.sqlite")) == 5


def test_ctrl_c_in_a_judge_run_from_python_cancels_it_and_leaves_the_handlers_as_they_were():
    """Outside the CLI (a script or notebook calling `Judge.complete_many_sync`): Ctrl-C cancels the
    run (its `finally` blocks run) and raises KeyboardInterrupt; asyncio's own SIGINT handler
    (Python 3.11+) is not left installed."""
    import asyncio

    from autointerp.syncrun import run_coroutine_sync

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    finished = []

    async def work():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(60)
        finally:
            finished.append(True)

    with pytest.raises(KeyboardInterrupt):
        run_coroutine_sync(work)
    assert finished and {s: signal.getsignal(s) for s in before} == before


# ------------------------------------------------------------------------------------------ features build
@pytest.fixture(scope="module")
def toy_cache_and_sae(tmp_path_factory) -> Path:
    import torch

    import saes

    d = tmp_path_factory.mktemp("toy")
    hook = "blocks.2.hook_resid_post"
    saesteer("cache", "--model", "toy", "--dataset", "toy", "--max-tokens", "4096", "--shard-contexts", "8",
             "--hooks", hook, "--out", d / "cache", "--no-progress").ok()
    sae = saes.create_sae("topk", 128, 64, k=8, generator=torch.Generator().manual_seed(0),
                          metadata={"hook_name": hook, "model_name": "toyworld-tiny"})
    saes.save_sae(sae, d / "sae")
    return d


def test_a_stopped_rebuild_leaves_the_old_store_whole_at_its_path_and_the_same_command_finishes_it(
        toy_cache_and_sae: Path, tmp_path: Path) -> None:
    from features import FeatureStore
    from features.build import building_path

    d, store = toy_cache_and_sae, tmp_path / "toy.db"
    build = ["features", "build", "--sae", str(d / "sae"), "--cache", str(d / "cache"), "--out", str(store),
             "--model", "none", "--no-progress", "--batch-rows", "256", "--checkpoint-rows", "512"]
    saesteer(*build, "--top-k", "5").ok()
    with FeatureStore.open(store) as st:
        old = (st.meta["build_config"]["top_k"], st.count_features())
    assert old == (5, 64)

    rebuild = [*build, "--top-k", "6", "--overwrite"]
    r = _stop_child("features.accumulate:FeatureAccumulator.update", 4, tmp_path / "waiting", *rebuild)
    line = _one_line_no_traceback(r, signal.SIGTERM)
    assert "the same command" in line and "unchanged" in line, line
    with FeatureStore.open(store) as st:  # the old store, whole, where readers look
        assert st.complete and (st.meta["build_config"]["top_k"], st.count_features()) == old
        assert st.integrity_check() == "ok"
    assert building_path(store).is_file()

    assert "resum" in saesteer(*rebuild).ok().text.lower()
    assert not building_path(store).exists()
    with FeatureStore.open(store) as st:
        assert st.complete and st.meta["build_config"]["top_k"] == 6 and st.count_features() == 64




def test_a_second_first_build_of_a_store_is_refused_before_it_loads_anything(tmp_path: Path) -> None:
    """While a store's first build runs (only `<store>.building` exists yet), a second build of it
    is refused at once naming the first, before it reads its SAE and cache (here: folders that do
    not exist), as it is for a store already at the path."""
    from features.build import building_path
    from features.store import writer_lock

    store = tmp_path / "toy.db"
    with writer_lock(store):  # the first build, in this process
        building_path(store).write_bytes(b"")
        r = saesteer("features", "build", "--sae", tmp_path / "no-sae", "--cache", tmp_path / "no-cache", "--out", store)
    assert r.rc != 0 and f"process {os.getpid()}" in r.err and "wait for it to finish" in r.err, r.err
    assert "no-sae" not in r.err, r.err


def test_a_store_windows_cannot_replace_says_so_and_the_same_command_puts_the_built_one_in_place(
        toy_cache_and_sae: Path, tmp_path: Path, monkeypatch) -> None:
    """Windows refuses to replace a file another program has open (a `saesteer serve` of the store):
    the rebuild says what to close, not to fix permissions, and the same command then renames the
    store it built, without a second pass."""
    import errno

    from features import FeatureStore
    from features.accumulate import FeatureAccumulator
    from features.build import building_path

    d, store = toy_cache_and_sae, tmp_path / "toy.db"
    build = ["features", "build", "--sae", str(d / "sae"), "--cache", str(d / "cache"), "--out", str(store),
             "--model", "none", "--no-progress"]
    saesteer(*build, "--top-k", "5").ok()
    replace = os.replace

    def in_use(src, dst):
        if Path(src) == building_path(store):  # Windows: [WinError 5] Access is denied (errno EACCES)
            raise PermissionError(errno.EACCES, "Access is denied", str(src), 5, str(dst))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", in_use)
    r = saesteer(*build, "--top-k", "6", "--overwrite")
    assert r.rc != 0, r.text
    lines = [ln for ln in r.no_traceback().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "toy.db.building" in lines[0] and "saesteer serve" in lines[0], r.err
    assert "without building it again" in lines[0] and "permission" not in lines[0], lines[0]
    with FeatureStore.open(store) as st:
        assert st.complete and st.meta["build_config"]["top_k"] == 5

    monkeypatch.setattr(os, "replace", replace)

    def no_pass(self, *a, **kw):
        raise AssertionError("the store was built again")

    monkeypatch.setattr(FeatureAccumulator, "update", no_pass)
    saesteer(*build, "--top-k", "6", "--overwrite").ok()
    assert not building_path(store).exists()
    with FeatureStore.open(store) as st:
        assert st.complete and st.meta["build_config"]["top_k"] == 6 and st.count_features() == 64


# ------------------------------------------------------------------------------------------ serve / api
@pytest.fixture(scope="module")
def toy_store(toy_cache_and_sae: Path) -> Path:
    d = toy_cache_and_sae
    store = d / "served.db"
    saesteer("features", "build", "--sae", d / "sae", "--cache", d / "cache", "--out", store, "--no-progress").ok()
    return store


@pytest.mark.parametrize("command, signum", [("api", signal.SIGTERM), ("serve", signal.SIGHUP)])
def test_a_stopped_server_finishes_the_request_in_flight_and_exits_quietly(command, signum, toy_store: Path) -> None:
    from openai import OpenAI

    proc = subprocess.Popen([sys.executable, "-m", "saesteer", command, "--store", str(toy_store), "--port", "0",
                             "--max-new-tokens", "120"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        startup = []
        while not startup or "serving on" not in startup[-1]:
            line = proc.stderr.readline()
            assert line, "the server exited: " + "".join(startup)
            startup.append(line)
        port = int(startup[-1].split("127.0.0.1:")[1].split("/")[0])
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=120)
        stream = client.completions.create(model="served", prompt="the", max_tokens=120, stream=True,
                                           extra_body={"ignore_eos": True})
        chunks = [next(stream)]  # the request is being answered now
        proc.send_signal(signum)
        chunks += list(stream)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert chunks[-1].choices[0].finish_reason == "length"  # answered to the end, not cut
    assert len("".join(c.choices[0].text for c in chunks).split()) > 20
    _one_line_no_traceback(subprocess.CompletedProcess(command, proc.returncode, "", stderr), signum)


def test_a_stopped_sweep_without_a_store_keeps_the_judge_answers_for_the_rerun(toy_cache_and_sae: Path,
                                                                                tmp_path: Path) -> None:
    out = tmp_path / "sweeps"
    argv = ["sweep", "--model", "toy", "--sae", str(toy_cache_and_sae / "sae"), "--latent", "3", "--concept", "the sea",
            "--strengths", "0,2,4", "--unit", "raw", "--samples", "3", "--max-new-tokens", "4", "--out", str(out), "--no-progress",
            "--judge-model", "fake-judge", "--judge-concurrency", "2"]
    # its 6 judge requests: 5 answered, the 6th held. (Held after 5 *answers*, the 6th, sent while the
    # 5th was still being answered, was answered too on a loaded machine: the run finished unstopped.)
    line, answered, asked_again = _stopped_while_the_judge_holds(argv, out / "judge-cache.sqlite", signal.SIGTERM, 5,
                                                                 lambda body: '{"rating": 2}')
    assert "the same command" in line, line
    assert not set(asked_again) & answered  # nothing paid for before the stop was asked again
    assert asked_again and (out / "sweep_sae_3.json").is_file()
