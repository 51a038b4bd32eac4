"""One writer per run directory: ``RUN/.lock``, an OS file lock (``filelock``) held for the whole job.

Two ``meerkat train`` (or ``--resume``) processes on one run directory would both append every round
to the ledger. The lock is ``flock`` on ``RUN/.lock`` through ``filelock`` (replacing our own
create-exclusive pid file, which was racy between two starting processes: read, then unlink). The
system releases it when its process dies, so a lock left by a killed job is simply taken; the file
names the holder (host, pid, since) so a refusal can say who holds it. On release the file is removed
while still locked (filelock checks, after taking a lock, that its file was not unlinked meanwhile).
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import filelock

from meerkat_core.errors import MeerkatInputError

LOCK = ".lock"


def _owner(path: Path) -> str:
    try:
        who = json.loads(path.read_text())
        return f"process {who['pid']} on {who['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[Path]:
    """Hold ``run_dir/.lock`` for the block; a second holder (another process, or another call in this
    one) is refused with a one-line ``MeerkatInputError``. The directory is created if needed, and
    removed again if it is still empty at the end."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def name_the_holder(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)

    lock = filelock.FileLock(str(path), timeout=0, on_acquired=name_the_holder)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise MeerkatInputError(
            f"run directory {run_dir}: in use by {_owner(path)} (lock file {path}); wait for it to finish"
        ) from None
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still held: a waiter that opened this inode retries
        lock.release()
        if created and not any(run_dir.iterdir()):  # nothing was written (e.g. a bad input): leave no trace
            run_dir.rmdir()
