"""Counting a model's forward passes (tests of work not done twice)."""

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
