"""Heap memory handed back to the system between fields.

glibc's allocator serves a mid-sized block (up to its dynamic mmap threshold, which grows to 32 MB once
such a block is freed) from the heap; the small results a long loop keeps between its large temporaries
then pin the heap's freed pages, and the resident size creeps up with every field until the loop's
results are let go. S5 keeps a chunk of fields' results (``common.predict.parts``): :func:`trim` after
each field gives those pages back (``malloc_trim``), so memory stays flat within a chunk. Elsewhere
(macOS, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def trim() -> bool:
    """Give the heap's free pages back to the system; whether the C library could (glibc)."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
