"""Atomic writes: every file and directory meerkat writes goes through this module.

- A file is written to a hidden temporary sibling ``.NAME.XXXXXXXX.tmp``, fsynced, renamed over
  ``NAME``, and the directory is fsynced: a reader sees the old file or the new one, never a part.
- A directory is built in a hidden temporary sibling (every file and the directory fsynced) and then
  swapped with the old one in one step (Linux ``renameat2(RENAME_EXCHANGE)``), so there is no moment at
  which neither the old nor the new directory is in place; the old one is removed after the swap.
  Where that call does not exist, the old directory is renamed aside first (a kill between the two
  renames then leaves it at ``.NAME.XXXXXXXX.tmp``).
- Nothing is deleted that this module did not create: on failure only its own temporary is removed;
  after a success, the temporaries an earlier, killed write of the same target left behind (older than
  this write) are removed too.
- File-system errors (read-only, full, a file where a directory belongs, no permission) become
  ``MeerkatInputError`` naming the path and the way out; ``check_writable`` finds most of them before
  a command starts its work.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from meerkat_core.errors import MeerkatInputError
from meerkat_core.faults import commit_point
from meerkat_core.jsonsafe import dumps_safe

TMP_SUFFIX = ".tmp"
# mkstemp / mkdtemp names: "." + the target's name + "." + 8 random characters + ".tmp"
_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")

_REASONS = {
    errno.EROFS: ("read-only file system", "choose a writable location"),
    errno.ENOSPC: ("no space left on the device", "free some space or choose another location"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose another location"),
    errno.EACCES: ("permission denied", "choose a location you can write to"),
    errno.EPERM: ("operation not permitted", "choose a location you can write to"),
    errno.ENOTDIR: ("a part of the path is a file, not a directory", "choose another path"),
    errno.EISDIR: ("it is a directory", "pass a file path"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
}


def os_error(path: str | os.PathLike[str], exc: OSError, what: str | None = None, action: str = "write") -> MeerkatInputError:
    """A one-line ``MeerkatInputError`` for an ``OSError`` met while writing ``path``."""
    reason, fix = _REASONS.get(exc.errno or -1, (exc.strerror or type(exc).__name__, "check the path"))
    label = f"{what} {path}" if what else str(path)
    return MeerkatInputError(f"{label}: cannot {action} ({reason}); {fix}")


_EMBEDDED = re.compile(r"os error (\d+)")


def _embedded_os_error(exc: BaseException) -> OSError | None:
    """The OSError inside a library's own exception type (safetensors reports "(os error 28)")."""
    if isinstance(exc, OSError):
        return exc
    m = _EMBEDDED.search(str(exc))
    if m and not isinstance(exc, MeerkatInputError):
        code = int(m.group(1))
        return OSError(code, os.strerror(code))
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory (makes a rename in it durable); a no-op where directories cannot be fsynced."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _mkparents(path: Path, what: str | None) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise os_error(path, OSError(errno.ENOTDIR, "not a directory"), what) from exc
    except OSError as exc:
        raise os_error(path, exc, what) from None


@contextmanager
def atomic_path(path: str | os.PathLike[str], what: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed over ``path``.

    The caller writes the complete file to the yielded path. On an exception the temporary file is
    removed and ``path`` is left as it was. ``what`` (e.g. ``"--out"``) names the input in errors.
    """
    target = Path(path)
    if target.is_dir():
        raise os_error(target, OSError(errno.EISDIR, "is a directory"), what)
    _mkparents(target.parent, what)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    except OSError as exc:
        raise os_error(target, exc, what) from None
    os.close(fd)
    tmp = Path(tmp_name)
    started = tmp.lstat().st_mtime
    try:
        try:
            yield tmp
            _fsync_file(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
            commit_point(f"rename:{target.name}")
            os.replace(tmp, target)
            fsync_dir(target.parent)
            _sweep(target, started)
        except Exception as exc:
            oe = _embedded_os_error(exc)
            if oe is None:
                raise
            raise os_error(target, oe, what) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, what: str | None = None) -> None:
    with atomic_path(path, what) as tmp:
        tmp.write_bytes(data)


def append_bytes(path: str | os.PathLike[str], data: bytes, hint: str | None = None) -> None:
    """Append ``data`` to ``path`` (created if missing) with one ``write`` per chunk, then fsync: an
    append-only file gains whole records, or, if the process dies mid-way, a torn tail its reader
    drops. A file-system error is one ``MeerkatInputError`` (``hint``: what the user can do next)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked (a signal, a nearly full disk)
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        err = os_error(path, exc)
        raise (MeerkatInputError(f"{err}; {hint}") if hint else err) from None


def write_text_atomic(path: str | os.PathLike[str], text: str, what: str | None = None) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), what)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, what: str | None = None) -> None:
    write_text_atomic(path, dumps_safe(obj, indent=2, sort_keys=True) + "\n", what)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            _fsync_file(Path(dirpath) / f)
        fsync_dir(dirpath)


@contextmanager
def atomic_dir(path: str | os.PathLike[str], what: str | None = None) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` whole.

    The caller decides whether an existing ``path`` may be replaced (check it first): this helper swaps
    it out in one step and then deletes the old copy.
    """
    target = Path(path)
    _mkparents(target.parent, what)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent))
    except OSError as exc:
        raise os_error(target, exc, what) from None
    started = tmp.lstat().st_mtime
    try:
        try:
            yield tmp
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
            _fsync_tree(tmp)
            commit_point(f"rename:{target.name}")
            if os.path.lexists(target):
                if not _exchange(tmp, target):
                    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent))
                    os.replace(target, old)  # onto our own empty directory
                    os.replace(tmp, target)
                    tmp = old
                fsync_dir(target.parent)
                commit_point(f"swapped:{target.name}")
                shutil.rmtree(tmp)  # the old content, now at our temporary name
            else:
                os.replace(tmp, target)
                fsync_dir(target.parent)
            _sweep(target, started)
        except Exception as exc:  # the caller's writes into ``tmp`` too (e.g. save_pretrained on a full disk)
            oe = _embedded_os_error(exc)
            if oe is None:
                raise
            raise os_error(target, oe, what) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def temporaries(directory: str | os.PathLike[str]) -> dict[Path, str]:
    """This module's temporaries in ``directory``: path -> the name of the file it was to become."""
    found: dict[Path, str] = {}
    d = Path(directory)
    if not d.is_dir():
        return found
    for p in d.iterdir():
        m = _TMP_NAME.match(p.name)
        if m:
            found[p] = m.group("name")
    return found


def _sweep(target: Path, before: float) -> None:
    """Remove temporaries of ``target`` that earlier (killed) writes left, i.e. older than ``before``."""
    for p, name in temporaries(target.parent).items():
        try:
            stale = name == target.name and p.lstat().st_mtime < before
        except FileNotFoundError:
            continue
        if stale:
            _remove(p)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def remove_temporaries(directory: str | os.PathLike[str], owned: Any) -> list[Path]:
    """Delete the temporaries in ``directory`` of the files ``owned(name)`` accepts (a crash's leftovers)."""
    removed = []
    for p, name in temporaries(directory).items():
        if owned(name):
            _remove(p)
            removed.append(p)
    return removed


def check_writable(path: str | os.PathLike[str], what: str, kind: str = "file") -> None:
    """Refuse, before any work, an output path that cannot be written.

    ``kind="file"``: ``path`` must not be a directory; ``kind="dir"``: it must not be a file. The
    nearest existing ancestor must be a directory in which a file can be created (a probe file is
    created and removed again; nothing else is touched).
    """
    target = Path(path)
    if kind == "file" and target.is_dir():
        raise MeerkatInputError(f"{what} {target}: is a directory; pass a file path")
    if kind == "dir" and target.exists() and not target.is_dir():
        raise MeerkatInputError(f"{what} {target}: exists and is not a directory; choose another path")
    probe_in = target if kind == "dir" and target.is_dir() else target.parent
    while not probe_in.exists():
        if probe_in.is_symlink():  # a dangling link where a directory belongs
            raise os_error(target, OSError(errno.ENOTDIR, "not a directory"), what)
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise os_error(target, OSError(errno.ENOTDIR, "not a directory"), what)
    try:
        fd, probe = tempfile.mkstemp(prefix=".meerkat-probe.", suffix=TMP_SUFFIX, dir=probe_in)
    except OSError as exc:
        raise os_error(target, exc, what) from None
    os.close(fd)
    os.unlink(probe)
