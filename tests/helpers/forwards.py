"""Forward passes in tests: counting them (work not done twice), reading what a hook holds."""

from __future__ import annotations


def count_forwards(monkeypatch, model) -> list[tuple[int, ...]]:
    """The shape of the input of every forward pass of `model`'s class from now on (for the test's
    lifetime: `monkeypatch` undoes it); clear the list to start counting again."""
    calls: list[tuple[int, ...]] = []
    real_forward = type(model).forward

    def counting_forward(self, *a, **k):
        calls.append(tuple(a[0].shape))
        return real_forward(self, *a, **k)

    monkeypatch.setattr(type(model), "forward", counting_forward)
    return calls


def read_at_hook(model, hook: str, tokens):
    """What TransformerLens hook `hook` of `model` holds on `tokens` (a detached copy)."""
    import torch

    got = {}

    def keep(x, hook):  # noqa: ARG001 - TransformerLens passes the hook point
        got["x"] = x.detach().clone()

    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(hook, keep)])
    return got["x"]


def hf_greedy(hf, ids: list[int], n_new: int) -> list[int]:
    """transformers' most likely next token `n_new` times after `ids`, each from a whole forward of the
    sequence so far (no cache, no padding: the reference a batched generation is held to)."""
    import torch

    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n_new):
            x = torch.cat([x, hf(x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x[0, len(ids):].tolist()
