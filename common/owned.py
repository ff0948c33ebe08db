"""What a step wrote, and only that: the record of its outputs, kept beside them.

A step writes into folders others use too: S5's ``OUTPUT_DIR`` holds the training runs, S2's
``HPA512_DIR``, S4.1's ``CELLS_DIR`` and S6's submission folder may hold a user's files. So each
keeps a record of what it wrote there, ``<folder>/.<step>[.<tag>].manifest.json`` (JSON: ``step``,
``files``, ``folders``; paths relative to the folder), and the rules are:

* before anything is written, :meth:`Record.claim` checks every path the step will write: a file
  absent or in the record; a folder absent, empty or in the record; no part of it below the output
  folder a symbolic link, a file where a folder is needed or a folder where a file is; no input of
  the step among them (:func:`check_path` does the link and kind part alone, for S0). Anything else
  stops the step with one line naming the path and the way out (move it, or another output
  folder). The output folder itself may be a link (a user's ``output`` on another disk);
* :meth:`Record.begin` checks again and writes the record with the old and the new paths (a kill
  leaves nothing unrecorded), :meth:`Record.remove` deletes files of the record only (never a
  folder's contents, never through a link: :func:`remove_files`) and the recorded folders it leaves
  empty, :meth:`Record.finish` records what was written;
* a recorded folder is the step's: what the step names inside is its (S2's images, S4.1's crops);
  anything else put there is left alone.

A step that holds several locks on one folder (S2 ``--SHARD i/n``, S4.1 per cell size) keeps one
record per lock (``tag``); a path in any record of the step counts as its. Another step may write
into a step's record (``owner``): S6's scores of S5's submission join S5's record, so that S5's next
run removes them with the submission they score.
"""
from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from common import io

SUFFIX = ".manifest.json"


class Refused(SystemExit):
    """A path the step would write is not its own, or is a link: one line, exit status 1."""


def record_name(step: str, tag: str = "") -> str:
    """``.s5.manifest.json`` for S5, ``.s41.cells_256.manifest.json`` for S4.1 with tag cells_256."""
    return "." + _slug(step) + (f".{tag}" if tag else "") + SUFFIX


def _slug(step: str) -> str:
    return re.sub(r"[^a-z0-9]", "", step.lower())


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # a parent that is a file: the caller names it
        return None


def _plain(rel: str) -> str | None:
    """``rel`` as a clean relative posix path, or None when it is absolute or climbs out (``..``)."""
    p = PurePosixPath(str(rel))
    if not str(rel) or p.is_absolute() or ".." in p.parts or str(p) == ".":
        return None
    return str(p)


def _stop(step: str, constant: str, path: Path, why: str, way: str = "move it") -> Refused:
    return Refused(f"{step}: {path} {why}: {way}, or choose another {constant}")


def _link(step: str, constant: str, path: Path) -> Refused:
    try:
        to = f" (to {os.readlink(path)})"
    except OSError:
        to = ""
    return _stop(step, constant, path, f"is a symbolic link{to}; {step} never writes through a link",
                 "remove the link")


def check_path(root: Path, rel: str, step: str, constant: str, folder: bool = False) -> os.stat_result | None:
    """Stop unless ``root/rel`` can be written without following a link: every part below ``root`` is
    a real folder or absent, and ``rel`` itself is no link and of the right kind (a folder with
    ``folder``, else a regular file) or absent. Returns its ``lstat`` (None when absent)."""
    plain = _plain(rel)
    if plain is None:
        raise _stop(step, constant, root / str(rel), "is outside the output folder", "name a plain file")
    parts = PurePosixPath(plain).parts
    for i in range(1, len(parts) + 1):
        p = root.joinpath(*parts[:i])
        st = _lstat(p)
        if st is None:
            return None
        if stat.S_ISLNK(st.st_mode):
            raise _link(step, constant, p)
        if i < len(parts) or folder:
            if not stat.S_ISDIR(st.st_mode):
                raise _stop(step, constant, p, f"is a file, where {step} writes a folder")
        elif stat.S_ISDIR(st.st_mode):
            raise _stop(step, constant, p, f"is a folder, where {step} writes a file")
        elif not stat.S_ISREG(st.st_mode):
            raise _stop(step, constant, p, f"is not a regular file, where {step} writes one")
    return st


def remove_files(root: Path, rels: Iterable[str]) -> list[str]:
    """Delete the files ``rels`` of ``root``: never one under a link or a file where a folder should be,
    never a folder; returns those deleted."""
    gone = []
    for rel in sorted(rels):
        try:
            st = check_path(root, rel, "", "")
        except Refused:
            continue
        if st is not None:
            try:
                os.unlink(root / rel)
            except FileNotFoundError:
                continue
            except OSError as e:  # a read-only folder, say: one line
                raise io.WriteError(root / rel, e) from None
            gone.append(rel)
    return gone


def load(path: Path) -> tuple[set[str], set[str]]:
    """``(files, folders)`` of a record (empty when there is none); a record that is a link or not
    JSON counts as none (it is never followed, and nothing is removed on its word)."""
    st = _lstat(path)
    if st is None or not stat.S_ISREG(st.st_mode):
        return set(), set()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            data = json.loads(f.read(64 << 20))
        files, folders = data["files"], data["folders"]
    except (OSError, ValueError, KeyError, TypeError):
        return set(), set()
    clean = [{_plain(x) for x in part if isinstance(x, str)} - {None} for part in (files, folders)]
    return clean[0], clean[1]


class Record:
    """The record of what ``owner`` (default ``step``) wrote in ``folder``, as ``step`` uses it;
    ``constant`` names the way out in messages; ``tag`` one of the owner's locks on the folder."""

    def __init__(self, folder: str | Path, step: str, constant: str, tag: str = "", owner: str = ""):
        self.folder, self.step, self.constant, self.owner = Path(folder), step, constant, owner or step
        self.path = self.folder / record_name(self.owner, tag)
        self.files, self.folders = load(self.path)
        self.kin_files: set[str] = set()
        self.kin_folders: set[str] = set()
        for other in self._kin():  # the owner's records of its other locks on this folder
            files, folders = load(other)
            self.kin_files |= files
            self.kin_folders |= folders
        self.adopted: list[str] = []
        self.inputs: set[Path] = set()

    # ------------------------------------------------------------------ what is the step's
    def owns(self, rel: str, folder: bool = False) -> bool:
        rel = _plain(rel) or ""
        return rel in (self.folders | self.kin_folders if folder else self.files | self.kin_files)

    def empty(self) -> bool:
        """Whether no record of the owner on this folder lists anything yet."""
        return not (self.files or self.folders or self.kin_files or self.kin_folders)

    def adopt(self, files: Iterable[str] = (), folders: Iterable[str] = ()) -> None:
        """Count the outputs of an earlier version of the step (before records) as its own: the
        regular files and real folders among these paths."""
        for rel, is_folder in [(f, False) for f in files] + [(f, True) for f in folders]:
            plain = _plain(rel)
            st = _lstat(self.folder / rel) if plain else None
            if st is not None and (stat.S_ISDIR(st.st_mode) if is_folder else stat.S_ISREG(st.st_mode)):
                (self.folders if is_folder else self.files).add(plain)
                self.adopted.append(plain + "/" * is_folder)

    # ------------------------------------------------------------------ checks
    def check(self, rel: str, folder: bool = False) -> None:
        """Stop unless the step may write ``rel`` (a file, or a folder): see the module's rules."""
        path = self.folder / (_plain(rel) or str(rel))
        real = path.resolve()
        inside = [i for i in self.inputs if i.is_relative_to(real)] if folder else []
        if real in self.inputs or inside:  # a set: one look-up per file, however many inputs
            what = "is" if real in self.inputs else "holds"
            raise _stop(self.step, self.constant, path, f"{what} an input of {self.step} "
                        f"({real if real in self.inputs else inside[0]}), which it never writes over",
                        "keep them apart")
        if check_path(self.folder, rel, self.step, self.constant, folder) is None:
            return
        if folder:  # the owner's, or holding nothing but the owner's files
            plain = _plain(rel)
            foreign = next((e for e in sorted(os.listdir(path)) if not self.owns(f"{plain}/{e}")), None)
            if foreign is not None and not self.owns(rel, folder=True):
                raise _stop(self.step, self.constant, path, f"is not {self.owner}'s folder (it holds "
                            f"{foreign!r}, and {self.path.name} does not list the folder)")
        elif not self.owns(rel):
            raise _stop(self.step, self.constant, path,
                        f"was not written by {self.owner} (not in its record {self.path.name})")

    def claim(self, files: Iterable[str] = (), folders: Iterable[str] = (),
              inputs: Iterable[Path] = ()) -> None:
        """Stop with one line unless every folder and file the step will write is its to write
        (``inputs``: files and folders the step reads; kept for :meth:`begin`)."""
        self.inputs = {Path(p).resolve() for p in inputs} or self.inputs
        if self.folder.resolve() in self.inputs:
            raise _stop(self.step, self.constant, self.folder, f"is an input of {self.step}, which it never "
                        "writes over", "keep them apart")
        for rel in folders:
            self.check(rel, folder=True)
        for rel in files:
            self.check(rel)

    # ------------------------------------------------------------------ writing
    def _write(self, files: set[str], folders: set[str]) -> None:
        st = _lstat(self.path)
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise _stop(self.step, self.constant, self.path, f"is not {self.owner}'s record (a link or a "
                        "folder)", "remove it")
        data = {"step": self.owner, "files": sorted(files), "folders": sorted(folders)}
        io.atomic_write_text(self.path, json.dumps(data, indent=0) + "\n")
        self.files, self.folders = set(files), set(folders)

    def begin(self, files: Iterable[str] = (), folders: Iterable[str] = ()) -> None:
        """Check again (:meth:`claim`, the same inputs), then record the old and the new paths, before
        any write."""
        files, folders = list(files), list(folders)
        self.claim(files, folders)
        self._write(self.files | {_plain(f) for f in files}, self.folders | {_plain(f) for f in folders})

    def remove(self, keep: Iterable[str] = ()) -> list[str]:
        """Delete the recorded files (but ``keep``) and the recorded folders left empty; returns the files
        deleted."""
        gone = remove_files(self.folder, self.files - {_plain(f) for f in keep})
        for rel in sorted(self.folders, key=lambda r: -len(PurePosixPath(r).parts)):
            try:
                real = check_path(self.folder, rel, self.step, self.constant, folder=True)
            except Refused:
                continue
            if real is not None and not os.listdir(self.folder / rel):
                os.rmdir(self.folder / rel)
        return gone

    def _kin(self) -> list[Path]:
        """The owner's other records on this folder (its shards' or ranks'): plain files, never a link."""
        if not self.folder.is_dir():
            return []
        return [p for p in sorted(self.folder.glob(f".{_slug(self.owner)}.*{SUFFIX}"))
                if p.name != self.path.name and stat.S_ISREG(os.lstat(p).st_mode)]

    def absorb(self) -> None:
        """Take the owner's other records on this folder (those of its finished shards or ranks) into
        this one, then delete them: what they list is this record's from now on."""
        kin = self._kin()
        if not kin:
            return
        self._write(self.files | self.kin_files, self.folders | self.kin_folders)
        for p in kin:
            p.unlink(missing_ok=True)
        self.kin_files, self.kin_folders = set(), set()

    def finish(self, files: Iterable[str], folders: Iterable[str] = ()) -> None:
        """Record exactly what was written: ``files`` that exist, ``folders`` (a full disk keeps the
        record of :meth:`begin`, a superset, so nothing written goes unrecorded)."""
        files = {_plain(f) for f in files if (self.folder / f).is_file()}
        try:
            self._write(files, {_plain(f) for f in folders})
        except io.WriteError:
            pass
