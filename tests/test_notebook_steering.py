"""Steering from Python as a notebook user drives it: a model and an SAE kept in memory from cell
to cell, `with steer(...)` blocks, `model.generate`, logits compared, cells re-run and interrupted,
and hooks of the user's own beside ours.

The kernel test runs the cells in a real ipykernel (nbclient), as Jupyter does; the rest run the same
calls in this process, on a real architecture where the model's kind matters."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import steering
from helpers.notebook_kernel import cell_error, outputs_text, run_cells
from helpers.steering_fixtures import PROMPTS, random_sae, tiny_model
from steering import SteeringError, hooks_attached, steer

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def model_and_sae():
    model = tiny_model()
    assert not hooks_attached(model)
    yield model, random_sae(model, "jumprelu", d_sae=128)
    leaked = hooks_attached(model)
    model.reset_hooks()
    assert not leaked, f"hooks left behind: {leaked}"


@pytest.mark.parametrize("call", ["compare", "sweep", "contrast_features", "compare_methods"])
def test_a_baseline_inside_a_steer_block_is_refused_not_steered(model_and_sae, call: str) -> None:
    """`compare` (and the others that generate or read the model unsteered) called under a `steer`
    block kept from another cell: the block's hooks steered the "unsteered" text without a sound."""
    from steering import SampleScores

    def scorer(prompts, texts):
        return [SampleScores(concept=0.5) for _ in texts]

    model, sae = model_and_sae
    calls = {
        "compare": lambda: steering.compare(model, sae, ["5:add=20"], PROMPTS[:2], max_new_tokens=6, seed=1),
        "sweep": lambda: steering.sweep(model, sae, 5, PROMPTS[:2], scorer,
                                        steering.SweepConfig(strengths=(0.0, 4.0), unit="raw")),
        "contrast_features": lambda: steering.contrast_features(model, sae, PROMPTS[:2], PROMPTS[2:]),
        "compare_methods": lambda: steering.compare_methods(model, sae, scorer, prompts=PROMPTS[:2],
                                                           latents=[5]),
    }
    with steer(model, sae, ["3:add=40"]):
        with pytest.raises(SteeringError, match=r"inside a `steer` block on this model \(3:add=40\)"):
            calls[call]()
    if call == "compare":  # after the block: the baseline is the model's own
        c = steering.compare(model, sae, ["5:add=20"], PROMPTS[:2], max_new_tokens=6, seed=1)
        plain = steering.generate(model, PROMPTS[:2], steering.generation.with_sae_bos(
            steering.GenerationConfig(max_new_tokens=6, seed=1), sae))
        assert c.unsteered == plain.texts


def test_nested_steer_blocks_stack_and_each_exit_removes_its_own(model_and_sae) -> None:
    model, sae = model_and_sae
    tokens = model.to_tokens(PROMPTS[:2])
    with torch.no_grad():
        base = model(tokens)
        with steer(model, sae, ["3:add=20", "5:add=20"]):
            both = model(tokens)
        with steer(model, sae, ["3:add=20"]):
            with steer(model, sae, ["5:add=20"]):
                nested = model(tokens)
            outer_only = model(tokens)
        with steer(model, sae, ["3:add=20"]):
            single = model(tokens)
        after = model(tokens)
    assert torch.allclose(nested, both, atol=1e-5) and not torch.allclose(nested, base)
    assert torch.equal(outer_only, single) and torch.equal(after, base)


def test_an_interrupted_generation_leaves_no_hook_and_the_rerun_matches(model_and_sae) -> None:
    """Ctrl-C (Jupyter's interrupt: KeyboardInterrupt) inside `model.generate` in a steer block: our
    hooks are gone, the user's own hook (added with model.add_hook) stays, and re-running the cell
    gives what an uninterrupted run gives."""
    model, sae = model_and_sae
    with steer(model, sae, ["3:add=20@generated"]) as s:
        want = s.generate(PROMPTS[:2], max_new_tokens=6, seed=2)

    seen = []

    def interrupt_at_third_step(act, hook):
        seen.append(act.shape[1])
        if len(seen) == 3:
            raise KeyboardInterrupt

    model.add_hook("blocks.0.hook_resid_post", interrupt_at_third_step)
    try:
        with pytest.raises(KeyboardInterrupt):
            with steer(model, sae, ["3:add=20@generated"]) as s:
                s.generate(PROMPTS[:2], max_new_tokens=6, seed=2)
        assert hooks_attached(model) == ["blocks.0.hook_resid_post"]  # the user's own, nothing of ours
    finally:
        model.reset_hooks()
    with steer(model, sae, ["3:add=20@generated"]) as s:
        again = s.generate(PROMPTS[:2], max_new_tokens=6, seed=2)
    assert torch.equal(again.tokens, want.tokens)


@pytest.mark.slow  # ~6-12 s: a kernel importing torch
def test_steer_cells_in_a_jupyter_kernel(tmp_path: Path) -> None:
    """The scenarios above as cells: a cell that raises inside the block, a re-run cell, a steered
    `model.generate`, logits against the unsteered ones, and `compare` under a block kept open."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nb = run_cells([
            f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
            "import torch, steering\nfrom steering import steer, hooks_attached\n"
            "from helpers.steering_fixtures import tiny_model, random_sae\n"
            "model = tiny_model(); sae = random_sae(model, 'jumprelu', d_sae=128)\n"
            "tokens = model.to_tokens(['the sea and the ship']); base = model(tokens)",
            "with steer(model, sae, ['3:add=20']) as s:\n    raise ValueError('a typo in the cell')",
            "print('after the error:', hooks_attached(model))",
            "for rerun in range(2):\n    with steer(model, sae, ['3:add=20']) as s:\n"
            "        steered = model(tokens)\n        text = model.generate('the sea', max_new_tokens=5, verbose=False)\n"
            "    print('rerun', rerun, round(float((steered - base).abs().max()), 3) > 0, hooks_attached(model))",
            "block = steer(model, sae, ['3:add=40']); s = block.__enter__()  # kept open across cells",
            "steering.compare(model, sae, ['5:add=20'], ['a tree'], max_new_tokens=4)",
            "block.__exit__(None, None, None); print('closed:', hooks_attached(model), torch.equal(model(tokens), base))",
        ], tmp_path, allow_errors=True)
    out = outputs_text(nb)
    assert cell_error(nb.cells[1]) == "ValueError: a typo in the cell"
    assert "after the error: []" in out, out
    assert "rerun 0 True []" in out and "rerun 1 True []" in out, out
    assert "inside a `steer` block on this model (3:add=40)" in (cell_error(nb.cells[5]) or ""), cell_error(nb.cells[5])
    assert "closed: [] True" in out, out


def test_edits_take_the_numbers_a_notebook_computes(model_and_sae) -> None:
    """`FeatureEdit(acts.argmax(), "clamp", acts.max())`: one-value tensors and NumPy scalars are the
    numbers they hold (they were refused: "latent must be an integer, got tensor(3)"); a float latent,
    a tensor of several values and a bool stay refused."""
    import numpy as np

    from steering import FeatureEdit, Trigger, VectorEdit

    model, sae = model_and_sae
    tokens = model.to_tokens(PROMPTS[:2])
    acts = torch.tensor([0.0, 1.0, 2.0, 20.0, 5.0])
    with torch.no_grad():
        with steer(model, sae, [FeatureEdit(3, "clamp", 20.0)]):
            want = model(tokens)
        for latent, value in [(acts.argmax(), acts.max()), (np.int64(3), np.float32(20.0)), (torch.tensor(3), np.array(20.0))]:
            edit = FeatureEdit(latent, "clamp", value)
            assert type(edit.latent) is int and type(edit.value) is float
            with steer(model, sae, [edit]):
                assert torch.equal(model(tokens), want)
    assert Trigger(np.int64(7), torch.tensor(1.5)) == Trigger(7, 1.5)
    assert VectorEdit("blocks.1.hook_resid_post", torch.ones(64), np.float32(2.0)).strength == 2.0
    for latent, value in [(3.0, 1.0), (torch.tensor(True), 1.0), (3, torch.tensor([20.0, 1.0])), (torch.tensor([3]), 1.0)]:
        with pytest.raises(SteeringError, match="must be"):
            FeatureEdit(latent, "clamp", value)
