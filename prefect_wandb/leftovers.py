"""What a stage whose process died leaves behind, and who removes it.

A stage's process can end without its own clean-up: kill -9, a lost Dask worker, a disk that turned read-only
under it (the clean-up cannot delete either). It leaves its staging folder, wandb's temporary folders in $TMPDIR
(`tmp…wandb-media`, `tmp…wandb-artifacts`: made when wandb is imported, removed by its exit handler) and, offline,
a W&B run folder that `wandb sync` would upload although the lineage store may never have heard of the run (a
sweep trial's records come back with its journal; a lost worker's never do). So every stage `claim`s its staging
folder first, writing who runs it, and the first stage of a process also writes which of those temporary folders
are its process's own, beside them (`$TMPDIR/prefect-wandb-process-<pid>-<id>.json`, removed when the process exits
normally): they belong to the process, not to a stage, and a process killed between two stages leaves them too. The next stage on that
host with the store open (not a sweep trial on a worker), and `gc`, remove the folders whose owner is gone
(`remove_abandoned`), the offline W&B run folder of a run the store does not know, and the temporary folders an
ended process recorded, while they are still the ones it recorded (`wandb_temp_left`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prefect_wandb.environment import process_gone, process_identity
from prefect_wandb.layout import STAGING
from prefect_wandb.storage import write_json

if TYPE_CHECKING:
    from prefect_wandb.store import LineageStore

log = logging.getLogger(__name__)

OWNER = ".owner.json"  # not a possible output name: those start with a letter or digit
PROCESS = "prefect-wandb-process-"  # `$TMPDIR/<PROCESS><pid>-<id>.json`: a process's wandb temporary folders
# wandb's temporary folders (tempfile.TemporaryDirectory("wandb-media" / "wandb-artifacts")): nothing else is removed
WANDB_TEMP = re.compile(r"tmp[A-Za-z0-9_]{8}wandb-(media|artifacts)")
# wandb makes them when imported. They are this process's own only if wandb was imported here, after this module:
# not in a parent before a fork (a forked child has another pid, and one that imports this module finds wandb
# imported already); a parent's folders are never claimed by its child.
_PID, _WANDB_BEFORE = os.getpid(), "wandb" in sys.modules


def claim(staging_root: Path, run_id: str, wandb_run_dir: str | None, wandb_temp: Sequence[Path] = ()) -> None:
    """Create `staging_root` and write who owns it (this process) and its offline W&B run folder; the first claim
    of this process also records wandb's temporary folders (`wandb_temp`) in $TMPDIR."""
    staging_root.mkdir(parents=True, exist_ok=True)
    write_json(staging_root / OWNER, {"run_id": run_id, "process": process_identity(),
                                      "wandb_run_dir": wandb_run_dir})
    _claim_process(wandb_temp)


_claimed: list[Path] = []  # this process's record, once written


def _claim_process(wandb_temp: Sequence[Path]) -> None:
    """Write, once per process, this process's wandb temporary folders as they are now (device, inode), when they
    are this process's own, beside them in $TMPDIR; the record goes when the process exits normally (wandb's exit
    handler then removes the folders)."""
    if os.getpid() != _PID or _WANDB_BEFORE or _claimed:
        return
    temp = []
    for p in wandb_temp:
        try:
            st = os.lstat(p)
        except OSError:
            continue
        temp.append({"path": str(p), "dev": st.st_dev, "ino": st.st_ino})
    if not temp:
        return
    record = Path(tempfile.gettempdir()) / f"{PROCESS}{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    try:
        write_json(record, {"process": process_identity(), "wandb_temp": temp})
    except OSError as e:  # a full or read-only $TMPDIR: the stage goes on; only this clean-up is lost
        log.warning("could not record wandb's temporary folders in %s: %s", record.parent, e)
        return
    _claimed.append(record)
    atexit.register(_unlink, record)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def process_records() -> list[tuple[Path, dict]]:
    """The records of wandb's temporary folders that processes wrote in this process's $TMPDIR (a file each,
    with its content; an unreadable one is skipped)."""
    out = []
    for f in sorted(Path(tempfile.gettempdir()).glob(f"{PROCESS}*.json")):
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            out.append((f, data))
    return out


def owner(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / OWNER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def abandoned(folder: Path) -> bool:
    """True only when sure: the folder's owner is a process of this host that has ended."""
    who = owner(folder)
    return who is not None and isinstance(who.get("process"), dict) and process_gone(who["process"])


def ended_here(who: dict | None) -> bool:
    """True only when sure: `who` (an owner or process record) names a process of this host that has ended."""
    proc = (who or {}).get("process")
    return isinstance(proc, dict) and proc.get("host") == socket.gethostname() and process_gone(proc)


def wandb_temp_left(who: dict | None) -> list[Path]:
    """wandb's temporary folders that a record (`process_records`, or the owner file of a staging folder written
    before process records) lists, when its process is provably gone (`ended_here`: a process of this host that
    has ended) and each folder is still the one it recorded (wandb's name, a folder, not a link, the same device
    and inode); else none."""
    if not ended_here(who):
        return []
    out = []
    for t in (who or {}).get("wandb_temp") or ():
        try:
            p = Path(t["path"])
            st = os.lstat(p)
        except (OSError, KeyError, TypeError):
            continue
        if WANDB_TEMP.fullmatch(p.name) and p.is_absolute() and os.path.isdir(p) and not p.is_symlink() \
                and (st.st_dev, st.st_ino) == (t.get("dev"), t.get("ino")):
            out.append(p)
    return out


def remove_abandoned(artifacts_dir: Path, store: LineageStore, wandb_root: Path,
                     dead_runs: Sequence[str] = ()) -> list[str]:
    """Remove the staging folders of ended owners (and of `dead_runs`, which the store just marked failed), the
    offline W&B run folder (inside `wandb_root` only) of such a run that `store` has no record of, and the wandb
    temporary folders a provably ended owner left (`wandb_temp_left`). Returns the run ids whose folders went; what
    cannot be removed now stays for later."""
    root = Path(artifacts_dir) / STAGING
    removed = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if not d.is_dir() or not (d.name in dead_runs or abandoned(d)):
            continue
        wb = (owner(d) or {}).get("wandb_run_dir")
        if isinstance(wb, str) and store.run(d.name) is None:
            _remove_unrecorded_wandb_run(Path(wb), d.name, wandb_root)
        _remove_wandb_temp(owner(d), f"run {d.name}")
        shutil.rmtree(d, ignore_errors=True)
        if not d.exists():
            removed.append(d.name)
            log.info("removed the staging folder of run %s, whose process ended without removing it", d.name)
    for record, who in process_records():
        if ended_here(who):
            _remove_wandb_temp(who, f"pid {who['process'].get('pid')}")
            _unlink(record)
    return removed


def _remove_wandb_temp(who: dict | None, whose: str) -> None:
    for t in wandb_temp_left(who):
        shutil.rmtree(t, ignore_errors=True)
        log.info("removed wandb's temporary folder %s, left by the ended process of %s", t, whose)


def _remove_unrecorded_wandb_run(run_dir: Path, run_id: str, wandb_root: Path) -> None:
    real = run_dir.resolve()
    if not (real.name.startswith("offline-run-") and real.name.endswith(f"-{run_id}")
            and real.is_relative_to(Path(wandb_root).resolve()) and real.is_dir()):
        return  # only the offline run folder the owner named, of this run, under this W&B folder
    shutil.rmtree(real, ignore_errors=True)
    log.warning("removed W&B offline run %s (%s): its process ended before the lineage store recorded the run, "
                "so `wandb sync` must not upload it", run_id, real)
