"""An offline run's folder as wandb leaves it: its `run-<id>.wandb` file, the records in it (what `wandb sync`
uploads) and the marker `wandb sync` leaves beside it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def offline_run_file(run_dir: Path) -> Path | None:
    files = sorted(Path(run_dir).glob("run-*.wandb"))
    return files[0] if files else None


def synced_marker(run_dir: Path) -> Path | None:
    """`wandb sync` leaves `run-<id>.wandb.synced` beside a run file it has uploaded."""
    f = offline_run_file(run_dir)
    return f.with_name(f.name + ".synced") if f else None


def offline_records(run_file: Path) -> Iterator:
    """The records of an offline run's `run-<id>.wandb` file, as wandb's protobuf `Record`s.

    The file is wandb's transaction log (what `wandb sync` uploads): a 7-byte header, then 32 KiB blocks of
    chunks, each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last).
    """
    # private wandb API: the run file format and its protobuf `Record` are wandb internals; no public reader
    # exists (`wandb sync` reads the file itself), and audit and sync must see what an offline run holds.
    from wandb.proto import wandb_internal_pb2 as pb

    block, header = 32768, 7
    data = Path(run_file).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{run_file}: not a wandb run file")
    pos, pending = header, b""
    while pos + header <= len(data):
        room = block - pos % block
        if room < header:  # block trailer padding
            pos += room
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0 and length == 0:
            break
        chunk = data[pos + header : pos + header + length]
        pos += header + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = pb.Record()  # type: ignore[attr-defined]  # generated protobuf module
            rec.ParseFromString(pending)
            pending = b""
            yield rec
