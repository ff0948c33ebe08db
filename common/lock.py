"""One writer per output folder: an advisory lock that a step holds for its whole run.

    with lock.hold(out_dir, "S5"):
        ...  # every write into out_dir

The lock is ``fcntl.flock`` on ``<folder>/.lock``, so the kernel releases it when the holder
ends, however it ends (a kill included). The file records who holds it (step, pid, host, start
time); a second writer stops at once with a message naming the folder and that holder. A record
left by a holder that ended without releasing (killed) is taken over, with a note. The holder
removes the file when it releases; a writer that opened it just before checks, once it holds the
lock, that the file it locked is still the one at that path.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

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


def _open_locked(path: Path, step: str, what: str) -> int | None:
    """An fd of ``path`` holding its exclusive lock; None where the filesystem has no flock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
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
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
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
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"{LOCK_NAME}.{tag}" if tag else LOCK_NAME)
    fd = _open_locked(path, step, f"{folder} ({tag})" if tag else str(folder))
    if fd is None:
        yield path
        return
    try:
        left = _read(fd)
        if left:
            print(f"{step}: note: took over the lock of {folder} left by {describe(left)}, which "
                  "ended without releasing it", file=sys.stderr, flush=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_record(step)) + "\n").encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # still locked: a writer that opened it meanwhile sees another inode
        os.close(fd)
