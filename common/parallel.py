"""Batch steps over many items: a process pool with per-item errors, ``--SHARD i/n``, skip-what-exists.

Used by S2 (images) and S4.1 (cell crops); S0's generator takes its pool from ``process_pool``::

    todo, done = split_done(items, lambda it: [out_dir / f"{it}.png"], overwrite=cfg.OVERWRITE)
    todo = shard(todo, cfg.SHARD)            # "i/n": every n-th item starting at i (0-based)
    for o in run_parallel(work, todo, cfg.NUM_WORKERS, desc="images"):
        if not o.ok:
            print(o.item, o.error)

``fn`` must be a module-level function (it is pickled to the workers). ``num_workers <= 1`` runs
in the calling process (no pickling; easiest to debug). A worker that dies (e.g. killed for
memory) fails only the items the pool had in flight; a fresh pool goes on with the rest. Workers
end with the process that runs the pool, even when it is killed (``_die_with``).
Shard the full item list before skipping, so that shard i always owns the same items.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.io import pid_alive


@dataclass
class Outcome:
    """The result of one item: ``value`` when ``ok``, else ``error`` (one line) and ``trace``."""

    item: Any
    ok: bool
    value: Any = None
    error: str = ""
    trace: str = ""


# ----------------------------------------------------------------------------- shards
def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; ``""``/``None`` -> ``(0, 1)`` (everything)."""
    if spec is None or str(spec).strip() in ("", "none", "None"):
        return 0, 1
    text = str(spec).strip()
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise ValueError(f"SHARD {spec!r}: expected 'i/n' with integers, e.g. '0/4'") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"SHARD {spec!r}: need n >= 1 and 0 <= i < n (i is 0-based)")
    return i, n


def shard(items: Sequence, spec: str | tuple[int, int] | None) -> list:
    """Every n-th item starting at i (``items[i::n]``); the n shards partition ``items``."""
    i, n = spec if isinstance(spec, tuple) else parse_shard(spec)
    return list(items)[i::n]


# ----------------------------------------------------------------------------- skip what exists
def split_done(items: Iterable, outputs: Callable[[Any], Iterable[str | Path]],
               overwrite: bool = False, inputs: Callable[[Any], Iterable[str | Path]] | None = None
               ) -> tuple[list, list]:
    """``(todo, done)``: done: every path in ``outputs(item)`` exists, unless ``overwrite``.

    With ``inputs``, an item is done only when its outputs are also not older than any of its
    existing inputs (as ``make`` does), so replacing an input file redoes the item.
    """
    todo, done = [], []
    for it in items:
        if not overwrite and up_to_date(outputs(it), inputs(it) if inputs else ()):
            done.append(it)
        else:
            todo.append(it)
    return todo, done


def up_to_date(outputs: Iterable[str | Path], inputs: Iterable[str | Path] = ()) -> bool:
    """Every output exists and none is older than an existing input."""
    outputs = list(outputs)
    try:
        oldest = min(Path(p).stat().st_mtime_ns for p in outputs) if outputs else None
    except FileNotFoundError:
        return False
    for p in inputs:
        try:
            if oldest is not None and Path(p).stat().st_mtime_ns > oldest:
                return False
        except FileNotFoundError:
            continue  # a missing input is the step's error to report, not a reason to skip
    return True


# ----------------------------------------------------------------------------- pool
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_SECONDS = 1.0   # how often a worker without a parent-death signal looks for its parent


def _worker_init(parent_pid: int) -> None:
    """Worker initializer: one thread per process for the numeric libraries (the pool is the
    parallelism), and the worker ends when the process that runs the pool ends (:func:`_die_with`)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    try:
        import cv2  # here: the worker initializer runs in the new process; OpenCV is optional for a pool

        cv2.setNumThreads(0)
    except ImportError:  # pragma: no cover
        pass
    _die_with(parent_pid)


def _die_with(parent_pid: int) -> None:
    """End this worker when ``parent_pid`` (the pool's process) ends, even by SIGKILL: otherwise the
    worker stays, orphaned and blocked on the pool's pipe (it holds the pipe's other end itself).

    Linux: the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``). It fires when the
    *thread* that forked ends: with the fork start method that is the thread that submits (the main
    thread; CPython 3.11 forks in ``submit``), which outlives the pool, or the pool's management
    thread (replacement workers), which ends only at shutdown. A parent that died before ``prctl``
    is seen by ``getppid`` having changed. Elsewhere, or when the parent is not the direct one (the
    forkserver start method), a daemon thread looks every ``WATCH_SECONDS``.
    """
    direct = os.getppid() == parent_pid
    if direct and _parent_death_signal():
        if os.getppid() != parent_pid:  # died before prctl ran
            os._exit(1)
        return
    if direct:
        def gone() -> bool:
            return os.getppid() != parent_pid
    else:
        def gone() -> bool:
            return not pid_alive(parent_pid)
    if gone():
        os._exit(1)

    def watch() -> None:
        while not gone():
            time.sleep(WATCH_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _parent_death_signal() -> bool:
    """Ask Linux for SIGKILL when the parent dies; False where there is no ``prctl``."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        return False


def process_pool(num_workers: int) -> ProcessPoolExecutor:
    """The process pool of every batch step: single-threaded workers that end with this process."""
    return ProcessPoolExecutor(max_workers=num_workers, initializer=_worker_init, initargs=(os.getpid(),))


def _call(fn: Callable, item: Any) -> Outcome:
    try:
        return Outcome(item, True, fn(item))
    except Exception as e:  # noqa: BLE001 - every failure is reported per item, the run goes on
        return Outcome(item, False, error=f"{type(e).__name__}: {e}", trace=traceback.format_exc())


def iter_parallel(fn: Callable[[Any], Any], items: Sequence, num_workers: int = 1,
                  desc: str | None = None, max_in_flight: int | None = None,
                  progress: bool = True) -> Iterator[tuple[int, Outcome]]:
    """Yield ``(index, Outcome)`` as items finish (any order). Exceptions never escape per item.

    At most ``max_in_flight`` items (default ``4 * num_workers``) are submitted at once, so huge item
    lists and large results do not pile up in memory.
    """
    items = list(items)
    bar = tqdm(total=len(items), desc=desc, disable=not progress or not items, dynamic_ncols=True)
    try:
        if num_workers <= 1:
            for i, it in enumerate(items):
                out = _call(fn, it)
                bar.update(1)
                yield i, out
            return
        max_in_flight = max(num_workers, max_in_flight or 4 * num_workers)
        pending = list(range(len(items)))[::-1]  # stack of indices still to submit
        while pending:
            pool = process_pool(num_workers)
            running: dict = {}
            try:
                while pending or running:
                    while pending and len(running) < max_in_flight:
                        i = pending[-1]
                        running[pool.submit(_call, fn, items[i])] = i
                        pending.pop()
                    finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for fut in finished:
                        i = running.pop(fut)
                        try:
                            out = fut.result()
                        except BrokenProcessPool:
                            out = Outcome(items[i], False, error="worker process died (out of memory?)")
                        except Exception as e:  # noqa: BLE001 - e.g. an unpicklable result
                            out = Outcome(items[i], False, error=f"{type(e).__name__}: {e}")
                        bar.update(1)
                        yield i, out
            except BrokenProcessPool:  # pragma: no cover - raised by submit() after a death
                for i in running.values():
                    bar.update(1)
                    yield i, Outcome(items[i], False, error="worker process died (out of memory?)")
                running.clear()
            finally:
                for fut in running:
                    fut.cancel()
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def run_parallel(fn: Callable[[Any], Any], items: Sequence, num_workers: int = 1,
                 desc: str | None = None, **kw) -> list[Outcome]:
    """``fn`` over ``items`` in a process pool; one :class:`Outcome` per item, in the order of ``items``."""
    items = list(items)
    results: list[Outcome | None] = [None] * len(items)
    for i, out in iter_parallel(fn, items, num_workers, desc, **kw):
        results[i] = out
    return results  # type: ignore[return-value]
