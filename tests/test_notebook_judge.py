"""A judge called from a Jupyter cell, where the kernel's event loop is already running (asyncio.run
refuses there): the synchronous calls steering's judge scorer makes work as they do in a script."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.judge_server import JudgeServer
from helpers.notebook_kernel import outputs_text, run_cells


def rating_answer(body: dict) -> str:
    text = " ".join(str(m.get("content", "")) for m in body["messages"])
    return json.dumps({"rating": 2 if "whale" in text else 0})


def test_judge_scores_from_a_jupyter_cell_whose_event_loop_runs(tmp_path: Path) -> None:
    with JudgeServer(rating_answer) as srv:
        nb = run_cells([
            "import asyncio\nasyncio.get_running_loop()  # a Jupyter cell runs inside the kernel's loop",
            "from autointerp import JudgeConfig, make_judge\n"
            "from steering import JudgeScorer\n"
            f"judge = make_judge(JudgeConfig(model='fake-judge', base_url={srv.url!r}, api_key='k'), cache_path=None)\n"
            "print('one:', judge.complete_sync([{'role': 'user', 'content': 'a whale? answer {\"rating\": n}'}]).value)",
            "scores = JudgeScorer(judge, 'the ocean', instruction=False)(\n"
            "    ['Tell me about the sea.', 'Tell me about the sea.'],\n"
            "    ['A whale swam past the ship.', 'Le café était fermé; 东京の雨。'])\n"
            "print('concept:', [s.concept for s in scores])",
            "print('awaited:', (await judge.complete([{'role': 'user', 'content': 'whale'}])).value)",
            "print('again:', judge.complete_sync([{'role': 'user', 'content': 'a whale'}]).value)",
        ], tmp_path)
    out = outputs_text(nb)
    assert 'one: {"rating": 2}' in out, out  # no schema: the answer's text
    assert "concept: [1.0, 0.0]" in out, out
    assert 'awaited: {"rating": 2}' in out and 'again: {"rating": 2}' in out, out
