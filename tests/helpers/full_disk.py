"""A full disk, portably: a file size limit makes every write past it fail as a full disk does (EFBIG; a
tmpfs needs root), in this process and the CLI runs it starts.

    with file_size_limit(128 * 1024):
        ...                                  # a write past 128 KiB raises OSError(EFBIG)
"""

from __future__ import annotations

import contextlib
import resource
import signal
from typing import Iterator


@contextlib.contextmanager
def file_size_limit(nbytes: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    before = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), not the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, before)
