"""Code run as a Jupyter user runs it: cells executed one after another by nbclient in an ipykernel
whose interpreter is this very one (a kernel spec written to a temporary folder whose argv starts
with `sys.executable`: nothing is installed into the user's Jupyter folders, and a `python3` kernel
spec registered elsewhere on the machine cannot be picked up instead).

    from helpers.notebook_kernel import execute, run_cells, outputs_text
    nb = run_cells(["import steering", "print(1 + 1)"], tmp_path)      # a notebook of those cells
    outputs_text(nb)                                                  # "2"

A cell that raises fails the run (nbclient's CellExecutionError) unless `allow_errors`; then the
error is the cell's output (`cell_error(nb.cells[i])`).

Without a kernel, in this process (fast, and the test's own objects at hand):

    answer = sigint_on_request(3, fake_llm_answer)     # a JudgeServer answer: Jupyter's interrupt at the 3rd
    run_as_cell(lambda: label_latents(...))           # as a cell runs it: in a running loop, SIGINT raising
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable


def kernel_manager(tmp_path: Path):
    """A jupyter_client KernelManager for this interpreter (its kernel spec under `tmp_path / "kernels"`);
    `km.interrupt_kernel()` is Jupyter's interrupt button."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / "saesteer-python"
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "saesteer (this interpreter)", "language": "python",
    }))
    return KernelManager(kernel_name="saesteer-python",
                         kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]))


def execute(nb, tmp_path: Path, cwd: Path, *, timeout: int = 900, allow_errors: bool = False, km=None):
    """Run every code cell of `nb` (an nbformat notebook, changed in place) with `cwd` as the
    kernel's working folder, in `km` (default: `kernel_manager(tmp_path)`)."""
    from nbclient import NotebookClient

    client = NotebookClient(nb, km=km or kernel_manager(tmp_path), timeout=timeout, allow_errors=allow_errors,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def run_cells(cells: list[str], tmp_path: Path, *, cwd: Path | None = None, timeout: int = 300,
              allow_errors: bool = False, km=None):
    """A notebook of `cells` (code), executed top to bottom (in `cwd`, default `tmp_path`)."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in cells])
    return execute(nb, tmp_path, cwd or tmp_path, timeout=timeout, allow_errors=allow_errors, km=km)


def outputs_text(nb) -> str:
    """Everything the cells printed or displayed as text, in order."""
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            if "text" in o:
                parts.append(o["text"])
            elif "data" in o and "text/plain" in o["data"]:
                parts.append(o["data"]["text/plain"])
    return "\n".join(parts)


def cell_error(cell) -> str | None:
    """`ename: evalue` of the error a cell raised (None if it raised none)."""
    err = next((o for o in cell.get("outputs", []) if o.get("output_type") == "error"), None)
    return None if err is None else f"{err['ename']}: {err['evalue']}"


def run_as_cell(fn: Callable[[], Any]) -> Any:
    """`fn()` run as a cell's code is: inside a running event loop (the kernel's), SIGINT raising
    KeyboardInterrupt in this thread (`signal.default_int_handler`, ipykernel's handler while a cell
    runs); the handler before is put back after."""
    import asyncio
    import signal

    async def cell():
        signal.signal(signal.SIGINT, signal.default_int_handler)  # inside the loop: asyncio.run sets its own
        return fn()

    before = signal.getsignal(signal.SIGINT)
    try:
        return asyncio.run(cell())
    finally:
        signal.signal(signal.SIGINT, before)


def sigint_on_request(n: int, answer: Callable[[dict], str]) -> Callable[[dict], str]:
    """A `JudgeServer` answer function: `answer`'s, sending this process SIGINT (Jupyter's interrupt
    button, as the kernel delivers it) once, while answering the `n`th request; its `sent` (a
    threading.Event) says whether it has."""
    import itertools
    import os
    import signal
    import threading

    sent, calls = threading.Event(), itertools.count(1)

    def answer_then_interrupt(body: dict) -> str:
        if next(calls) >= n and not sent.is_set():
            sent.set()
            os.kill(os.getpid(), signal.SIGINT)
        return answer(body)

    answer_then_interrupt.sent = sent
    return answer_then_interrupt
