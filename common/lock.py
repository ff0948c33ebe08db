"""One writer per output folder: an advisory lock that a step holds for its whole run.

    with lock.hold(out_dir, "S5"):
        ...  # every write into out_dir

The lock is ``fcntl.flock`` on ``<folder>/.lock``, so the kernel releases it when the holder
ends, however it ends (a kill included). The file records who holds it (step, pid, host, start
time); a second writer stops at once with a message naming the folder and that holder. A record
left by a holder that ended without releasing (killed) is taken over, with a note. The holder
removes the file when it releases; a writer that opened it just before checks, once it holds the
lock, that the file it locked is still the one at that path. The file is opened without following a
link: a ``.lock`` that is a link, a folder or no regular file, or that cannot be made or written
(permissions, a read-only or full filesystem), stops the step with one line (:class:`LockError`).
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

from common import io

LOCK_NAME = ".lock"   # inside the locked folder (".lock.<tag>" for a tagged lock); hidden, matched by no glob


class FolderBusy(SystemExit):
    """Another process holds the folder's lock (a one-line message; exit status 1)."""


def _record(step: str) -> dict:
    return {"step": step, "pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode(errors="replace").strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


def describe(rec: dict) -> str:
    """``S5 (pid 123 on host, started 2026-12-04T10:00:00+00:00)`` from a lock record."""
    if not rec:
        return "another process (no record)"
    return (f"{rec.get('step', '?')} (pid {rec.get('pid', '?')} on {rec.get('host', '?')}, "
            f"started {rec.get('started', '?')})")


class LockError(SystemExit):
    """The lock file cannot be made or written (a link, a folder, no permission, a read-only or
    full filesystem): one line naming the folder, exit status 1."""


def _refuse(path: Path, step: str, e: OSError) -> LockError:
    """The one line for an ``OSError`` on the lock file ``path`` of ``step``."""
    if e.errno == errno.ELOOP or path.is_symlink():
        why = f"is a symbolic link; {step} never follows a link where it writes: remove it"
    elif e.errno == errno.EISDIR or path.is_dir():
        why = f"is a folder, where {step} keeps its lock file: remove it"
    else:
        why = f"cannot be written ({e.strerror or e}; {io.free_space(path.parent)} free)"
    return LockError(f"{step}: {path} {why}, or give this step another output folder")


def _open_locked(path: Path, step: str, what: str) -> int | None:
    """An fd of ``path`` holding its exclusive lock; None where the filesystem has no flock. The file
    is opened without following a link and must be a regular file."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
        except OSError as e:
            raise _refuse(path, step, e) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device planted there
            os.close(fd)
            raise LockError(f"{step}: {path} is not a regular file: remove it, or give this step another "
                            "output folder")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe(_read(fd))
            os.close(fd)
            raise FolderBusy(f"{step}: {what} is being written by {holder}; wait for it to end, or give "
                             "this step another output folder") from None
        except OSError as e:  # a filesystem without flock (some network mounts): go on, unguarded
            os.close(fd)
            print(f"{step}: note: cannot lock {what} ({e.strerror or e}); make sure no other step "
                  "writes there at the same time", file=sys.stderr, flush=True)
            return None
        try:  # the holder before us may have removed the file after we opened it: lock the current one
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def hold(folder: str | Path, step: str, tag: str = "") -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if missing) for the ``with`` block; stop at once with
    :class:`FolderBusy` when another process holds it. ``tag`` names one of several locks of a
    folder (``--SHARD i/n`` runs write disjoint items of one folder: each shard has its own).
    Yields the lock file's path, which is removed on release."""
    folder = Path(folder)
    path = folder / (f"{LOCK_NAME}.{tag}" if tag else LOCK_NAME)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LockError(f"{step}: cannot make {folder} ({e.strerror or e}): give this step another "
                        "output folder") from None
    fd = _open_locked(path, step, f"{folder} ({tag})" if tag else str(folder))
    if fd is None:
        yield path
        return
    try:
        try:
            left = _read(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(_record(step)) + "\n").encode(), 0)
        except OSError as e:
            raise _refuse(path, step, e) from None
        if left:
            print(f"{step}: note: took over the lock of {folder} left by {describe(left)}, which "
                  "ended without releasing it", file=sys.stderr, flush=True)
        yield path
    finally:
        with contextlib.suppress(OSError):  # ours only: a file put there meanwhile stays
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)  # still locked: a writer that opened it meanwhile sees another inode
        os.close(fd)
