"""The folder lock (common.lock) never shows a traceback: a .lock that is a link, a folder, a FIFO or
unreadable, or a folder on a read-only or full filesystem, stops the step with one line naming it,
and nothing outside the folder is touched. Read-only and full filesystems are tmpfs mounts in a
private mount namespace (conftest.tmpfs_run)."""
from __future__ import annotations

import errno
import os
import sys

import pytest
from conftest import ROOT, tmpfs_run

from common import lock
from common.demo import demo_data

HOLD = ("import sys; sys.path.insert(0, sys.argv[1]); from common import lock\n"
        "with lock.hold(sys.argv[2], 'S9'):\n    print('held')")


def _one_line(call) -> str:
    with pytest.raises(SystemExit) as e:
        call()
    msg = str(e.value.code)
    assert e.value.code not in (0, None) and "\n" not in msg
    return msg


@pytest.mark.parametrize("kind", ["folder", "fifo", "link to a file", "link to a folder"])
def test_a_lock_that_is_no_regular_file_stops_with_one_line(tmp_path, kind):
    out, far = tmp_path / "out", tmp_path / "far"
    out.mkdir()
    far.mkdir()
    (far / "precious.txt").write_text("never truncated")
    path = out / ".lock"
    {"folder": lambda: path.mkdir(), "fifo": lambda: os.mkfifo(path),
     "link to a file": lambda: path.symlink_to(far / "precious.txt"),
     "link to a folder": lambda: path.symlink_to(far)}[kind]()

    def hold():
        with lock.hold(out, "S9"):
            pass

    msg = _one_line(hold)
    assert msg.startswith(f"S9: {path} is ") and msg.endswith("give this step another output folder")
    assert (far / "precious.txt").read_text() == "never truncated" and os.listdir(far) == ["precious.txt"]
    assert os.path.lexists(path)                                   # the user's thing stays


def test_an_unreadable_lock_stops_with_one_line(tmp_path, monkeypatch):
    """(root reads any file, so the refusal of the kernel is played by os.open.)"""
    def refuse(*args, **kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(lock.os, "open", refuse)

    def hold():
        with lock.hold(tmp_path, "S9"):
            pass

    msg = _one_line(hold)
    assert msg.startswith(f"S9: {tmp_path / '.lock'} cannot be written (Permission denied;")


@pytest.mark.parametrize("fs", ["read-only", "full"])
def test_a_lock_on_a_read_only_or_full_filesystem_is_one_line(tmp_path, fs):
    out = tmp_path / "out"
    first = ("mount -o remount,ro " + str(out) if fs == "read-only"
             else f"head -c 1048576 /dev/zero > {out}/fill 2>/dev/null; true")
    proc = tmpfs_run({out: 64 * 1024}, ["sh", "-c", f"{first} && {sys.executable} -c \"$0\" \"$@\"", HOLD,
                                        str(ROOT), str(out)])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    why = "Read-only file system" if fs == "read-only" else "No space left on device"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"S9: {out / '.lock'} cannot be written ({why};"), lines
    assert lines[0].endswith("give this step another output folder") and "held" not in proc.stdout


def test_s2_on_a_disk_full_at_start_stops_with_one_line(tmp_path):
    data = tmp_path / "data"
    demo_data.make_dataset(data, demo_data.DemoPlan(n_train=2, n_test=0, size=64, seed=1,
                                                    min_cells=2, max_cells=3))
    out = tmp_path / "out"
    argv = [sys.executable, str(ROOT / "S2_data_process.py"), "--COMPETITION_DIR", str(data),
            "--HPA512_DIR", str(out), "--SEGMENTER", "builtin", "--NUM_WORKERS", "1"]
    proc = tmpfs_run({out: 64 * 1024}, ["sh", "-c", f"head -c 1048576 /dev/zero > {out}/fill 2>/dev/null; "
                                        "exec \"$@\"", "sh", *argv])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()
    assert len(last) == 1 and str(out) in last[0] and "No space left on device" in last[0], last
