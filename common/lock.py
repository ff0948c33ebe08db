"""One writer per output folder: an advisory lock that a step holds for its whole run.

    with lock.hold(out_dir, "S5"):
        ...  # every write into out_dir

The lock is ``fcntl.flock`` on ``<folder>/.lock``, so the kernel releases it when the holder
ends, however it ends (a kill included). The file records who holds it (step, pid, host, start
time); a second writer stops at once with a message naming the folder and that holder. A record
left by a holder that ended without releasing (killed) is taken over, with a note. The file
itself stays (removing a lock file races with a writer that has just opened it); it is empty
while nobody holds it.
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

LOCK_NAME = ".lock"   # inside the locked folder; hidden, and matched by no step's glob


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


@contextlib.contextmanager
def hold(folder: str | Path, step: str) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if missing) for the ``with`` block; stop at once with
    :class:`FolderBusy` when another process holds it. Yields the lock file's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(f"{step}: {folder} is being written by {describe(_read(fd))}; wait for it "
                             f"to end, or give this step another output folder") from None
        except OSError as e:  # a filesystem without flock (some network mounts): go on, unguarded
            print(f"{step}: note: cannot lock {folder} ({e.strerror or e}); make sure no other step "
                  "writes there at the same time", file=sys.stderr, flush=True)
            yield path
            return
        left = _read(fd)
        if left:
            print(f"{step}: note: took over the lock of {folder} left by {describe(left)}, which "
                  "ended without releasing it", file=sys.stderr, flush=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_record(step)) + "\n").encode(), 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
