"""docs/autointerp.md's "Python API" example run as a notebook user runs it: in a Jupyter cell (the
kernel's event loop running), against a loopback OpenAI-compatible judge, on a small labelled-to-be
store named as the example names it. Only what the example leaves open is filled in (`messages`,
`schema`, `fn`) and the server's address given; a text the swap no longer finds fails the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.judge_server import JudgeServer, fake_llm_answer
from helpers.label_store import build_trigger_store
from helpers.notebook_kernel import outputs_text, run_cells
from test_docs_examples import ROOT, blocks

SETUP = ('messages = [{"role": "user", "content": "Is this text about the sea? Le bateau quitte le port; 海。"}]\n'
         'schema = {"type": "object", "properties": {"rating": {"type": "integer", "minimum": 0, "maximum": 2}},\n'
         '          "required": ["rating"]}\n'
         'fn = lambda v: v["rating"]')


def answer(body: dict) -> str:
    """The fake LLM for auto-interp's prompts; a rating for the example's own question."""
    if "about the sea" in body["messages"][-1]["content"]:
        return '{"rating": 2}'
    return fake_llm_answer(body)


def python_api_example(url: str) -> str:
    doc = ROOT / "docs" / "autointerp.md"
    code = next(b.code for b in blocks(doc) if b.lang == "python" and "label_latents(" in b.code)
    swaps = [('JudgeConfig(model="gpt-4o-mini")', f'JudgeConfig(model="gpt-4o-mini", base_url={url!r}, api_key="k")'),
             ("schema={...}", "schema=schema"), ("[JudgeCall(messages, schema), ...]", "[JudgeCall(messages, schema)]")]
    for written, run in swaps:
        assert written in code, f"{doc}: update the swaps, the example no longer says {written!r}"
        code = code.replace(written, run)
    return code


@pytest.mark.slow  # ~20 s: a kernel, and the example's sentence-transformers model loads
def test_autointerp_python_api_example_runs_in_a_jupyter_cell(tmp_path: Path, monkeypatch) -> None:
    build_trigger_store(tmp_path / "toy.db")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")  # the example makes a Claude judge too (never called)
    with JudgeServer(answer) as srv:
        nb = run_cells([
            SETUP,
            python_api_example(srv.url),
            "print('report:', report.summary())\nprint('top hit:', hits[0].label if hits else None)\n"
            "print('embedder:', embedder.name)\nprint('done:', done.value, [c.value for c in many])",
        ], tmp_path)
    out = outputs_text(nb)
    assert "report: openai:gpt-4o-mini: 8 labelled, 0 failed" in out and "cost $" in out, out[-3000:]
    assert "done: 2 [{'rating': 2}]" in out, out[-3000:]  # validate=fn: the rating; no validate: the answer
    if "embedder: offline/" not in out:  # a model of meaning (the dev setup's MiniLM): "sea" finds the ocean
        assert "top hit: ocean" in out, out[-3000:]
    else:
        assert "top hit: None" not in out, out[-3000:]
