"""Session fixtures shared by several test files (kept here only when more than one file needs them)."""

import signal

import pytest


def _hypothesis_profiles() -> None:
    """Property tests draw the same examples on every run (`derandomize`), so the default run cannot
    fail on one day and pass the next; HYPOTHESIS_PROFILE=explore draws new ones each run, to hunt."""
    import os

    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, database=None)
    settings.register_profile("explore", max_examples=1000)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


_hypothesis_profiles()


def pytest_configure(config):
    """`-p no:warnings` turns off pytest's warnings plugin, which registers the `filterwarnings`
    marker: under --strict-markers (pyproject) every file that quiets a warning with it would then
    fail to collect. Registered here in its place (it does nothing then: warnings are not captured)."""
    _take_back_ignored_stop_signals()
    if not config.pluginmanager.has_plugin("warnings"):
        config.addinivalue_line("markers", "filterwarnings(spec): ignored (pytest's warnings plugin is off)")


def _take_back_ignored_stop_signals() -> None:
    """A run started with SIGINT or SIGHUP ignored (a background job of a shell without job control,
    `nohup`) hands that on to every child it starts, and saesteer rightly leaves an ignored signal
    alone: the stop-signal tests, which send them as a user's Ctrl-C or a closed terminal does, then
    fail or hang. The run takes them back to their defaults, for itself and its children."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.fixture(scope="session")
def real_corpus(tmp_path_factory):
    """Python source and prose from this interpreter's library, split into train and validation
    (tests/helpers/real_models.py)."""
    from helpers.real_models import write_corpus

    return write_corpus(tmp_path_factory.mktemp("real-corpus"))


@pytest.fixture(scope="session")
def real_models(tmp_path_factory, real_corpus):
    """Tiny GPT-2 / GPT-NeoX / Llama (GQA) / Qwen2 checkpoints with byte-level BPE tokenizers trained
    on `real_corpus`, each built the first time a test asks for it: `real_models.path("llama")`."""
    from helpers.real_models import RealModels

    return RealModels(tmp_path_factory.mktemp("real-models"), real_corpus)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one torch thread (the CI machine has 2 busy cores). A module
    asks for it with `pytestmark = [pytest.mark.usefixtures("one_thread")]`."""
    from helpers.threads import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def offline_env():
    """`helpers.real_cli.OFFLINE_ENV` set for a whole module: `pytest.mark.usefixtures("offline_env")`."""
    from helpers.real_cli import OFFLINE_ENV

    with pytest.MonkeyPatch.context() as mp:
        for k, v in OFFLINE_ENV.items():
            mp.setenv(k, v)
        yield


@pytest.fixture(scope="module")
def tiny_model():
    """The tiny TransformerLens model of `helpers.tiny_model` (d_model 32, 2 layers, context 32), one per module."""
    from helpers.tiny_model import make_model, make_tokenizer

    return make_model(make_tokenizer(), d_model=32, n_layers=2, n_ctx=32, seed=0)


@pytest.fixture(scope="module")
def judge_server():
    """One loopback `helpers.judge_server.JudgeServer` per module, answering as a fake LLM until a test
    scripts its `reply`; a test takes it as `srv`."""
    from helpers.judge_server import JudgeServer, fake_llm_answer

    with JudgeServer(fake_llm_answer) as server:
        yield server


@pytest.fixture
def srv(judge_server):
    """`judge_server` for one test: no reply scripted by an earlier test, none of its exchanges."""
    judge_server.reply = None
    judge_server.messages_cache_usage = None
    judge_server.exchanges.clear()
    yield judge_server
    judge_server.reply = None
    judge_server.messages_cache_usage = None
