"""One writer per run directory: ``RUN/.lock`` names the process that is training into it.

Two ``meerkat train`` (or ``--resume``) processes on one run directory would both append every round
to the ledger. The lock is a file created with ``O_EXCL`` holding the owner's host and pid. A lock
whose process is gone (same host, pid no longer alive) is stale and taken over; a live one, or one
from another host (which cannot be checked), is refused with the way out in the message.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from meerkat_core.errors import MeerkatInputError

LOCK = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _stale(owner: dict[str, Any]) -> bool:
    pid = owner.get("pid")
    return owner.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[Path]:
    """Hold ``run_dir/.lock`` for the block. The directory is created if needed, and removed again if it
    is still empty at the end."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read(path)
            if _stale(owner):
                path.unlink(missing_ok=True)
                continue
            who = f"process {owner.get('pid', '?')} on {owner.get('host', '?')}" if owner else "another process"
            raise MeerkatInputError(
                f"run directory {run_dir}: in use by {who} (lock file {path}); wait for it to finish, "
                "or delete the lock file if that process is gone"
            ) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    else:  # pragma: no cover - a third process took the stale lock between our two tries
        raise MeerkatInputError(f"run directory {run_dir}: lock file {path} keeps changing; try again")
    try:
        yield path
    finally:
        if _read(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
        if created and not any(run_dir.iterdir()):  # nothing was written (e.g. a bad input): leave no trace
            run_dir.rmdir()
