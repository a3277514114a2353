"""Settings of the web app: where it listens, who may talk to it, and how big a request may be.

`ServeConfig` is where the server binds and how callers prove who they are; `Limits` bounds
every request (the API rejects anything beyond them with a 4xx naming the limit). Both are
plain dataclasses, so `saesteer serve` builds its flags from them (see `saesteer.configargs`).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field

__all__ = ["ServeConfig", "Limits", "HARD_LIMITS", "is_loopback"]


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the name `localhost`."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


@dataclass
class Limits:
    """Bounds on every request (a request beyond them gets a 4xx naming the limit)."""

    max_page_size: int = field(default=100, metadata={"help": "most rows in one page of a list or search"})
    max_query_chars: int = field(default=200, metadata={"help": "longest search query, in characters"})
    max_text_chars: int = field(default=2000, metadata={"help": "longest text for 'which features fire' and prompts, in characters"})
    max_new_tokens: int = field(default=64, metadata={"help": "most tokens one generation may add"})
    max_edits: int = field(default=8, metadata={"help": "most feature edits in one steering request"})
    max_abs_strength: float = field(default=1000.0, metadata={"help": "largest |value| of an add/clamp edit in raw activation units"})
    max_abs_multiple: float = field(default=20.0, metadata={"help": "largest |value| of an edit in multiples of the feature's typical max, and largest |scale| factor"})
    max_sweep_points: int = field(default=9, metadata={"help": "most values in one sweep"})
    max_pending: int = field(default=8, metadata={"help": "most model jobs (generate, sweep, fire) waiting per model; more get 503"})
    max_choices: int = field(default=8, metadata={"help": "most generations in one API request (prompts x n)"})
    max_body_bytes: int = field(default=65536, metadata={"help": "largest request body, in bytes"})

    def __post_init__(self) -> None:
        for name, hard in HARD_LIMITS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"Limits.{name} must be a positive finite number, got {v!r}")
            if v > hard:
                raise ValueError(f"Limits.{name}={v} is above the hard ceiling {hard}; use at most {hard}")


# Ceilings no configuration may exceed (they also document the API schema).
HARD_LIMITS: dict[str, float] = {
    "max_page_size": 1000,
    "max_query_chars": 1000,
    "max_text_chars": 20000,
    "max_new_tokens": 1024,
    "max_edits": 64,
    "max_abs_strength": 1e4,
    "max_abs_multiple": 1000.0,
    "max_sweep_points": 41,
    "max_pending": 256,
    "max_choices": 64,
    "max_body_bytes": 1 << 20,
}


@dataclass
class ServeConfig:
    """Where the server listens and who may use it."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; anything but loopback needs --allow-remote"})
    port: int = field(default=8000, metadata={"help": "TCP port to bind (0: pick a free one)"})
    allow_remote: bool = field(default=False, metadata={"help": "allow binding to a non-loopback address (then a token is always required)"})
    allowed_hosts: tuple[str, ...] = field(default=(), metadata={"help": "extra host names accepted in the Host header, comma-separated (e.g. the machine's DNS name when remote)"})
    require_token: bool = field(default=False, metadata={"help": "require the access token even on loopback (always on when remote)"})

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise ValueError(f"ServeConfig.port must be an integer in 0..65535, got {self.port!r}")
        if not self.host or any(c.isspace() for c in self.host):
            raise ValueError(f"ServeConfig.host must be an address such as 127.0.0.1, got {self.host!r}")
        if not is_loopback(self.host) and not self.allow_remote:
            raise ValueError(
                f"ServeConfig.host={self.host!r} is not a loopback address; binding to it exposes the app "
                "to the network. Pass --allow-remote to do that on purpose (a token is then required), "
                "or use --host 127.0.0.1"
            )
        self.allowed_hosts = tuple(_normalize_name(h) for h in self.allowed_hosts if h.strip())

    @property
    def remote(self) -> bool:
        return not is_loopback(self.host)

    @property
    def needs_token(self) -> bool:
        return self.remote or self.require_token


def _normalize_name(host: str) -> str:
    h = host.strip().lower().rstrip(".")
    if ":" in h and not h.startswith("["):  # a bare IPv6 address
        h = f"[{h}]"
    return h
