"""What an offline wandb run wrote: the protobuf records of its `.wandb` file.

    records = wandb_records_after_exit(run_dir)     # once wandb's service has written the exit record
    [r.WhichOneof("record_type") for r in records]  # "run", "history", "summary", "preempting", "exit", ...
"""

from __future__ import annotations

import time
from pathlib import Path


def wandb_records(path: Path):
    """The protobuf records of an offline run's .wandb file (wandb's LevelDB-style log: 32 KiB blocks of
    chunks with a 7-byte header: crc32, length, type full/first/middle/last)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a wandb transaction log"
    pos, buf, block = 7, b"", 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # padding to the end of the block
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def wandb_records_after_exit(run_dir: Path) -> list:
    """The records of the offline run in `run_dir`, read once its exit record is there (wandb's
    service writes the file after `finish()` returns; waits up to 20 s, then returns what there is)."""
    (log,) = run_dir.glob("*.wandb")
    for _ in range(200):
        records = list(wandb_records(log))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.1)
    return records
