"""Is a device name one this machine can run on? Checked before any work starts.

torch names a device it cannot use only when the first tensor goes there ("Torch not compiled
with CUDA enabled", "PyTorch is not linked with support for mps devices"), deep inside loading a
model; on a laptop (an Apple-silicon Mac has MPS, not CUDA) that reads like a crash. `check_device`
refuses such a name up front in one line that lists the devices this machine has.
"""

from __future__ import annotations

from saes.errors import SaesteerError

__all__ = ["available_devices", "check_device"]


def available_devices() -> list[str]:
    """The devices torch can use here: cpu, then each CUDA GPU (cuda:0, ...), then mps."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def check_device(device: object, *, field: str | None = "device") -> None:
    """Refuse (SaesteerError naming `field`) a device torch cannot parse or this machine lacks:
    a CUDA device without a CUDA GPU (or beyond the GPUs there are), mps off Apple silicon. Devices
    torch parses but saesteer has no check for (xpu, meta, ...) pass: torch says more about them."""
    import torch

    if device is None or isinstance(device, torch.device) and device.type == "cpu":
        return
    try:
        parsed = torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError):
        raise SaesteerError(f"unknown {field or 'device'} {device!r}; this machine has {', '.join(available_devices())}",
                            field=field) from None
    have = available_devices()
    name = field or "device"  # the CLI's boundary turns the field into its flag: "--device 'mps': ..."
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (parsed.index or 0) >= count:
            build = "" if torch.version.cuda else ", a CPU-only build"
            why = f"no CUDA GPU is visible (torch {torch.__version__}{build})" if count == 0 else \
                f"only {count} CUDA GPU(s) are visible"
            raise SaesteerError(f"{name} {device!r}: {why}; this machine has {', '.join(have)}", field=field)
    elif parsed.type == "mps" and "mps" not in have:
        raise SaesteerError(f"{name} {device!r}: MPS (Apple-silicon GPU) is not available here "
                            f"(torch.backends.mps.is_available() is False); this machine has {', '.join(have)}",
                            field=field)


def refuse_mps_float64(device: object, what: str, *, field: str | None = "device") -> None:
    """Refuse MPS for `what` (a step that keeps float64 tensors on its device: training's
    initialisation and evaluation sums): Apple-silicon GPUs have no float64, and torch would stop
    with "Cannot convert a MPS Tensor to float64" only after the data is read."""
    import torch

    if device is not None and torch.device(device).type == "mps":  # type: ignore[arg-type]
        raise SaesteerError(f"{field or 'device'} {device!r}: {what} keeps float64 statistics on its device, which MPS "
                            "(Apple-silicon GPU) cannot hold; use cpu for it", field=field)
