"""S5's parts: the results of its fields kept chunk by chunk on disk, so that S5 streams, resumes and spreads.

The fields to score (the source's IDs in order, LIMIT applied) are cut into chunks of ``CHUNK``; chunk
``c`` holds fields ``c * CHUNK ..`` and its part is the same whoever scores it (one process, a torchrun
rank, a ``--SHARD i/n`` run). A part (:class:`Part`) is everything the final outputs need of its fields:
each cell's encoded mask and every variant's probabilities (the merge writes the prediction strings from
them: a mask is kept once, not once per class and variant), the cell_predictions rows, the cells.csv /
images.csv rows and the report's pictures (``cell_tables.CellTables``), the failures, the overlays of the
first N_OVERLAYS fields and the sizes of the fields read. Its label maps go to ``labels/`` when it is saved
(before the part: a part on disk means its label maps are there).

``OUTPUT_DIR/.s5_parts/`` (:data:`FOLDER`) holds

* ``part-000012.pkl``: two pickles, the header (``format``, ``fingerprint``: the run's digest, ``chunk``,
  ``world``: how many ways the work was spread, ``fields``, ``cells``, ``inputs``: the :func:`signature`
  of its fields' files) then the :class:`Part`; written under a temporary name and renamed
  (``io.atomic_path``), so a part is whole or absent; one that cannot be read, or of another digest,
  counts as not done, and one whose fields' files changed since is scored again when S5 resumes;
* ``run.json``: the fingerprint (:func:`fingerprint`): the constants that change the results, each run's
  checkpoint (path, size, modification time) and the ordered field IDs (count and SHA-256). A rerun with
  the same fingerprint skips the chunks whose part is there; another one stops (:func:`check_run`).
  It is written with the first part saved.

The parts are S5's own files (its record lists them); they are removed once the final outputs are written.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

from common import constants, io

FOLDER = ".s5_parts"        # inside OUTPUT_DIR
RUN_FILE = "run.json"       # the fingerprint of the run the parts belong to
FORMAT = 2                  # the parts' layout; another one is not read (its chunk is scored again)


@dataclass
class Part:
    """What S5 keeps of one chunk of fields (the rows of its outputs, in field order)."""

    chunk: int
    ids: list[str]                                # the chunk's fields, in order
    names: list[str]                              # the submissions: ensemble, then the comparisons
    probs: dict[str, dict]                        # {name: {ID: (n_cells, 19) probabilities}}
    masks: dict = field(default_factory=dict)     # {ID: the cells' encoded masks, in the rows' order}
    rows: list = field(default_factory=list)      # cell_predictions.csv
    failures: list = field(default_factory=list)  # s5_failures.csv ({"ID", "reason"})
    overlays: list = field(default_factory=list)  # (ID, image, labels, ids, probs) of the first N_OVERLAYS
    tables: object = None                         # cell_tables.CellTables: cells.csv, images.csv, labels/,
                                                  # the report's pictures
    sizes: dict = field(default_factory=dict)     # {ID: (H, W)} of the fields read
    n_cells: int = 0
    n_dropped: int = 0                            # cells lost at the original size
    n_segmented: int = 0                          # fields segmented here


def part_name(chunk: int) -> str:
    return f"part-{chunk:06d}.pkl"


def n_chunks(n_fields: int, size: int) -> int:
    return -(-n_fields // size)


def chunk_ids(ids: list[str], size: int, chunk: int) -> list[str]:
    """The fields of ``chunk``: ``ids[chunk * size : (chunk + 1) * size]``."""
    return list(ids[chunk * size:(chunk + 1) * size])


def spread(total: int, rank: int, world: int) -> list[int]:
    """The chunks one of ``world`` processes scores: every ``world``-th from ``rank``."""
    return list(range(rank, total, world))


# ----------------------------------------------------------------------------- the fingerprint
def _checkpoint(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def fingerprint(settings: dict, checkpoints: list[Path], ids: list[str]) -> dict:
    """What makes the parts of one run: ``settings`` (the constants that change the results), the
    checkpoints (path, size, modification time) and the field IDs in order (count, SHA-256)."""
    sha = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    fp = {"constants": json.loads(json.dumps(settings, default=str)),
          "runs": [_checkpoint(Path(p)) for p in checkpoints], "fields": {"count": len(ids), "sha256": sha}}
    fp["digest"] = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    return fp


def differences(old: dict, new: dict) -> list[str]:
    """What differs between two fingerprints, in words (constants first)."""
    a, b = old.get("constants", {}), new.get("constants", {})
    out = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if old.get("runs") != new.get("runs"):
        out.append("the runs (their checkpoints' paths, sizes or times)")
    if old.get("fields") != new.get("fields"):
        out.append(f"the fields ({old.get('fields', {}).get('count')} -> {new['fields']['count']}, or "
                   "other IDs)")
    return out or ["the format of the parts"]


def check_run(folder: Path, fp: dict, overwrite: bool) -> bool:
    """Whether ``folder`` (the parts) holds a run to resume: its ``run.json`` equals ``fp``. Another
    run's parts stop S5 with one line. With ``overwrite`` False: the caller removes the parts."""
    if overwrite:
        return False
    try:
        old = json.loads((folder / RUN_FILE).read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        old = {}
    if old.get("digest") == fp["digest"]:
        return True
    diff = differences(old if isinstance(old, dict) else {}, fp)
    shown = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
    raise SystemExit(f"S5: {folder} holds the parts of an unfinished run with other settings ({shown}): "
                     "rerun with those to resume it, or start afresh with --OVERWRITE true")


def write_run(folder: Path, fp: dict) -> None:
    io.atomic_write_text(folder / RUN_FILE, json.dumps(fp, indent=1, sort_keys=True) + "\n")


def _stat(path: Path, name: str) -> list[str]:
    """``name size mtime_ns`` of a file ('-' when absent); of a folder, one such line per file under it."""
    if path.is_dir():
        return [line for root, dirs, files in sorted(os.walk(path)) for f in sorted(files)
                for line in _stat(Path(root) / f, str((Path(root) / f).relative_to(path.parent)))]
    try:
        st = path.stat()
    except OSError:
        return [f"{name} -"]
    return [f"{name} {st.st_size} {st.st_mtime_ns}"]


def signature(inputs: list[tuple[str, list[Path]]]) -> str:
    """The state of a chunk's input files (``(ID, its files)`` per field: their names, sizes and
    modification times), 16 hex digits; a part whose signature differs is scored again on resume."""
    lines = [f"{i}\t{line}" for i, files in inputs for p in files for line in _stat(Path(p), Path(p).name)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- parts on disk
def save(out_dir: Path, part: Part, fp: dict, world: int, inputs: str) -> Path:
    """Write the part's label maps to ``out_dir/labels`` (then forget them), the run's fingerprint
    ``fp`` when it is not there yet, then the part itself (``world``: the number of shards or ranks;
    ``inputs``: the :func:`signature` of its fields' files taken before they were read)."""
    if not (out_dir / FOLDER / RUN_FILE).is_file():
        write_run(out_dir / FOLDER, fp)
    if part.tables is not None:
        for image_id, png in part.tables.pngs.items():
            io.atomic_write_bytes(out_dir / "labels" / constants.label_file(image_id), png)
        part.tables.pngs = {}
    header = {"format": FORMAT, "fingerprint": fp["digest"], "chunk": part.chunk, "world": world,
              "fields": len(part.ids), "cells": part.n_cells, "inputs": inputs}
    path = out_dir / FOLDER / part_name(part.chunk)
    with io.atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(header, f, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.dump(part, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def header(path: Path) -> dict | None:
    """A part's header, or None when it is absent or unreadable."""
    try:
        with open(path, "rb") as f:
            head = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError):
        return None
    return head if isinstance(head, dict) and head.get("format") == FORMAT else None


def load(path: Path) -> Part:
    """A part (read only from S5's own folder: its record lists the parts); one line when it cannot be read
    (say, written by another version of S5)."""
    try:
        with open(path, "rb") as f:
            pickle.load(f)
            part = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as e:
        raise SystemExit(f"S5: {path}: cannot be read ({type(e).__name__}: {e}); start afresh with "
                         "--OVERWRITE true") from None
    if not isinstance(part, Part):
        raise SystemExit(f"S5: {path}: is not a part of S5; start afresh with --OVERWRITE true")
    return part


def done(folder: Path, digest: str, chunks: list[int]) -> dict[int, dict]:
    """The headers of the parts of ``chunks`` in ``folder`` that belong to the run ``digest``."""
    out = {}
    for c in chunks:
        head = header(folder / part_name(c))
        if head is not None and head.get("fingerprint") == digest and head.get("chunk") == c:
            out[c] = head
    return out


def missing_message(folder: Path, missing: list[int], found: dict[int, dict]) -> str:
    """The line that stops ``--MERGE`` when chunks are missing: the shards that did not write them."""
    chunks = ", ".join(map(str, missing[:6])) + (", ..." if len(missing) > 6 else "")
    worlds = sorted({int(h.get("world", 1)) for h in found.values()})
    if worlds and worlds[-1] > 1:
        n = worlds[-1]
        shards = ", ".join(f"{i}/{n}" for i in sorted({c % n for c in missing}))
        return (f"S5: --MERGE: shard(s) {shards} missing (chunks {chunks}) in {folder}: run them "
                "(--SHARD i/n), then --MERGE true again")
    return (f"S5: --MERGE: {len(missing)} chunk(s) missing (chunks {chunks}) in {folder}: run S5 with the "
            "same constants (or its shards) first")


def remove(folder: Path) -> None:
    """Remove the parts and ``run.json`` (S5's own names only), then the folder if it is left empty."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for e in os.scandir(folder):
        if e.is_file(follow_symlinks=False) and (e.name == RUN_FILE or
                                                 (e.name.startswith("part-") and e.name.endswith(".pkl"))):
            os.unlink(e.path)
    io.remove_stale_temps(folder)
    if not os.listdir(folder):
        os.rmdir(folder)


class Store:
    """The parts of a run in chunk order, one at a time: from ``folder``, or ``held`` in memory."""

    def __init__(self, folder: Path, total: int, held: dict[int, Part] | None = None):
        self.folder, self.total, self.held = folder, total, dict(held or {})

    def part(self, chunk: int) -> Part:
        return self.held[chunk] if chunk in self.held else load(self.folder / part_name(chunk))

    def __iter__(self):
        for c in range(self.total):
            yield self.part(c)
