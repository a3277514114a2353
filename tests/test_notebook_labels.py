"""Labelling from Python as a notebook does it: one judge made once (`make_judge`, no budget of its
own) and `label_latents` run from cell to cell with a `LabelConfig`; the config's budget holds and
each report counts its own run (the CLI makes a judge per command, so it never saw either)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autointerp import FeatureStoreLabels, JudgeConfig, LabelConfig, label_latents, make_judge
from helpers.judge_server import JudgeServer, fake_llm_answer
from helpers.label_store import build_trigger_store


def test_label_config_budget_holds_for_a_judge_made_without_one(tmp_path: Path) -> None:
    store, _ = build_trigger_store(tmp_path / "t.db")
    with JudgeServer(fake_llm_answer) as srv:
        judge = make_judge(JudgeConfig(model="fake-judge", base_url=srv.url, api_key="k"), cache_path=None)
        with FeatureStoreLabels.open(store) as labels:
            report = label_latents(labels, judge, LabelConfig(budget="20000tokens"), progress=False)
        spent = report.usage["prompt_tokens"] + report.usage["completion_tokens"]
        assert report.stopped == "budget" and 0 < report.labelled < report.requested, report
        assert 0 < spent <= 20000 and report.usage["budget"] == "20,000 tokens", report.usage
        assert report.usage["budget_exhausted"] and judge.ledger.budget is None  # the judge is as it was

        # the next cell: the rest, within a budget of its own; its report counts its own calls
        with FeatureStoreLabels.open(store) as labels:
            again = label_latents(labels, judge, LabelConfig(budget="1000000tokens"), progress=False)
        assert again.stopped is None and again.skipped == report.labelled
        assert again.labelled == report.requested - report.labelled, again
        assert again.usage["paid_calls"] + report.usage["paid_calls"] == len(srv.records), (again.usage, report.usage)
        assert not again.usage["budget_exhausted"]


def test_a_run_budget_never_loosens_the_judges_own(tmp_path: Path) -> None:
    from autointerp.accounting import Budget

    store, _ = build_trigger_store(tmp_path / "t.db")
    with JudgeServer(fake_llm_answer) as srv:
        judge = make_judge(JudgeConfig(model="fake-judge", base_url=srv.url, api_key="k"), cache_path=None,
                           budget=Budget(8000, "tokens"))
        with FeatureStoreLabels.open(store) as labels:
            report = label_latents(labels, judge, LabelConfig(budget="1000000tokens"), progress=False)
        assert report.stopped == "budget" and judge.ledger.spent_tokens <= 8000, report
        assert judge.ledger.budget == Budget(8000, "tokens")


def test_interrupting_a_labelling_cell_stops_the_run(tmp_path: Path) -> None:
    """Jupyter's interrupt button during `label_latents` in a cell (the kernel's event loop runs, so
    the run is in a worker thread): the KeyboardInterrupt the kernel raises in the cell's thread
    stops the run at its next await; before, the cell went on until every latent was labelled.
    ipykernel's handler while a cell runs is `signal.default_int_handler`, set here as it sets it; the
    server sends the interrupt itself while answering the second request."""
    import threading

    from helpers.notebook_kernel import run_as_cell, sigint_on_request

    store, _ = build_trigger_store(tmp_path / "t.db")
    answer = sigint_on_request(2, fake_llm_answer)

    def cell():
        with FeatureStoreLabels.open(store) as labels:
            return label_latents(labels, judge, LabelConfig(), progress=False)

    with JudgeServer(answer) as srv:
        judge = make_judge(JudgeConfig(model="fake-judge", base_url=srv.url, api_key="k", concurrency=1),
                           cache_path=None)
        with pytest.raises(KeyboardInterrupt):
            run_as_cell(cell)
        asked = len(srv.records)
        assert answer.sent.is_set() and asked < 48, asked  # 8 latents x 6 requests when nothing stops it
        assert not [t for t in threading.enumerate() if t.name.startswith("label_latents")]  # the worker ended
    with FeatureStoreLabels.open(store) as labels:
        assert len(labels.store.labels(range(8))) < 8


@pytest.mark.slow  # ~10 s: a kernel
def test_jupyters_interrupt_button_stops_a_labelling_cell(tmp_path: Path) -> None:
    """The same through a real kernel: `interrupt_kernel` (the button) while the judge answers."""
    import threading

    from helpers.notebook_kernel import cell_error, kernel_manager, outputs_text, run_cells

    build_trigger_store(tmp_path / "t.db")
    km = kernel_manager(tmp_path)
    sent = threading.Event()

    def answer_then_interrupt(body: dict) -> str:
        if len(srv.records) >= 2 and not sent.is_set():
            sent.set()
            threading.Thread(target=km.interrupt_kernel).start()
        return fake_llm_answer(body)

    with JudgeServer(answer_then_interrupt) as srv:
        nb = run_cells([
            "from autointerp import FeatureStoreLabels, JudgeConfig, LabelConfig, label_latents, make_judge\n"
            f"judge = make_judge(JudgeConfig(model='fake-judge', base_url={srv.url!r}, api_key='k', concurrency=1), "
            "cache_path=None)",
            "with FeatureStoreLabels.open('t.db') as labels:\n"
            "    report = label_latents(labels, judge, LabelConfig(), progress=False)",
            "import threading\nprint('workers:', [t.name for t in threading.enumerate() if t.name.startswith('label')])",
        ], tmp_path, allow_errors=True, km=km)
        asked = len(srv.records)
    assert cell_error(nb.cells[1]) == "KeyboardInterrupt: " and asked < 48, (asked, cell_error(nb.cells[1]))
    assert "workers: []" in outputs_text(nb)
