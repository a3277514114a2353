"""Torch thread count for a block: tiny models run fastest on one thread on a busy 2-core machine."""

from saes.threads import torch_threads

__all__ = ["torch_threads"]
