"""A test hook that kills this process with SIGKILL at a named commit point (tests/test_faults.py).

``MEERKAT_KILL_AT=KEY`` (or ``KEY#N``: the N-th time) makes ``commit_point(KEY)`` send SIGKILL to the
running process, so a test can stop a real ``meerkat train`` exactly between two writes and check that
``--resume`` recovers. Keys:

- ``after:<artifact>:<round>``: ``run_training`` has just written ``<artifact>`` (``config``, ``metrics``,
  ``gradip``, ``ledger``, ``checkpoint``, ``summary``) for round ``<round>`` (0 = before round 1);
- ``rename:<file name>``: the atomic writer (``meerkat_core.atomic``) has written and fsynced the
  temporary file (or directory) of ``<file name>`` and is about to rename it into place (a kill leaves
  the temporary);
- ``swapped:<directory name>``: ``atomic_dir`` has swapped the new directory in and not yet deleted the
  old one (a kill leaves the old content at a temporary name).

With the variable unset (every normal run) a commit point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "MEERKAT_KILL_AT"
_seen: dict[str, int] = {}


def commit_point(key: str) -> None:
    """SIGKILL this process if ``$MEERKAT_KILL_AT`` names ``key`` (and this is its N-th visit)."""
    want = os.environ.get(ENV)
    if not want:
        return
    name, _, nth = want.partition("#")
    if name != key:
        return
    _seen[key] = _seen.get(key, 0) + 1
    if _seen[key] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
