"""Pack trained runs into one folder to upload as a Kaggle dataset (for the S5 notebook).

    python tools/pack_runs.py output/p1_x/fold0 output/p2_y --OUT packed_runs
    python tools/pack_runs.py output --OUT packed_runs --DATASET_ID me/hpa-runs   # every run

Each RUN is a run folder holding CHECKPOINT, a folder above several of them (all are taken), or a
checkpoint file. For each run it writes ``OUT/<run>/<fold>/best.pth`` (named by the run's last two
folders) holding only what S5 needs: the weights S5 would load (the EMA weights when the checkpoint
has them, else the raw ones) and the constants the run was trained with. The optimizer, scheduler,
scaler, RNG state and history are left out. S3 / S4.2 write ``best.pth`` slim already, so packing
it saves nothing; a full ``last.pth`` (``--CHECKPOINT last.pth``) shrinks to about a third with Adam.
Packing says what it saved, per run and in all. The run's ``config.json`` (and ``summary.csv``) are
copied beside it, and ``OUT/runs.json`` lists each packed run by its relative name, with bytes before
and after and sha256. With ``--DATASET_ID owner/slug`` it also writes ``dataset-metadata.json`` for
``kaggle datasets create -p OUT``.

Packed runs carry no path of this machine (:func:`portable`): in ``config.json`` and in the
checkpoint's constants an absolute path inside the run becomes relative to the run, one inside this
repository relative to its root (as the constants blocks write them), and any other (it only records
where the run was trained: its data folders, OUTPUT_DIR) is dropped, set to "" and listed in
``runs.json`` (``dropped``). RUN and ``--OUT`` given as relative paths are taken from the current folder.

In the S5 notebook set ``RUNS_DIR`` to the attached dataset (``/kaggle/input/<slug>``): S5 finds
every ``best.pth`` under it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import constants, io, owned
from common.models import checkpoints
from common.predict import predict

KEEP = ("model", "config")           # what a slim checkpoint holds (checkpoints.load_checkpoint needs these)
COPY = ("summary.csv",)  # copied beside the slim checkpoint (config.json is written, made portable)


def here(path: str | Path) -> Path:
    """A path argument: absolute stays, relative is taken from the current folder (as a shell would)."""
    return Path.cwd() / Path(path).expanduser()


def portable(value, run: Path, key: str = "", dropped: list | None = None):
    """``value`` (a run's constants, nested) without this machine's absolute paths: inside ``run`` ->
    relative to it, inside the repository -> relative to its root, else "" (its key added to
    ``dropped``)."""
    if isinstance(value, dict):
        return {k: portable(v, run, f"{key}.{k}" if key else k, dropped) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(portable(v, run, key, dropped) for v in value)
    if not (isinstance(value, str) and Path(value).is_absolute()):
        return value
    path = Path(value)
    for base in (run, constants.ROOT):
        if path.is_relative_to(base):
            return path.relative_to(base).as_posix()
    if dropped is not None:
        dropped.append(key)
    return ""


def find(run_args: list[str], checkpoint: str) -> list[Path]:
    """The checkpoint files named by the RUN arguments, in order, without repeats."""
    out: list[Path] = []
    for arg in run_args:
        p = here(arg)
        if p.is_file():
            found = [p]
        elif (p / checkpoint).is_file():
            found = [p / checkpoint]
        elif p.is_dir():
            found = [r / checkpoint for r in predict.find_runs(p, checkpoint)]
        else:
            raise SystemExit(f"{p}: no such run folder or checkpoint")
        if not found:
            raise SystemExit(f"{p}: no {checkpoint} under it")
        out += [f for f in found if f not in out]
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pack(run_args: list[str], out: str | Path, checkpoint: str = "best.pth",
         dataset_id: str = "") -> list[dict]:
    """Write the slim checkpoints of the runs into ``out``; returns the rows of runs.json."""
    meta = io.dataset_metadata(dataset_id) if dataset_id else None  # checked before any work
    ckpts = find(run_args, checkpoint)
    out = constants.output_folder(here(out), "OUT")
    rows, seen = [], {}
    for src in ckpts:
        name = Path(src.parent.parent.name, src.parent.name)
        if name in seen:
            raise SystemExit(f"{src} and {seen[name]} would both be packed as {name}: pack them separately")
        seen[name] = src
        ckpt = checkpoints.read_checkpoint(src, "", "leave this run out, or train it again")
        dst = out / name / "best.pth"
        for rel in (name / "best.pth", *(name / f for f in (*COPY, "config.json"))):  # no link followed
            owned.check_path(out, rel.as_posix(), "pack_runs", "--OUT")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dropped: list[str] = []
        slim = checkpoints.slim_checkpoint(ckpt, src)
        slim["config"] = portable(slim["config"], src.parent, "", dropped)
        slim_already = set(slim) == set(ckpt)  # S3 / S4.2's best.pth
        if slim_already and slim["config"] == ckpt["config"]:  # and no path to change: the same bytes
            with io.atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
        else:
            checkpoints.save_checkpoint(slim, dst)  # a full disk: io.WriteError
        saved = src.parent / "config.json"
        config = slim["config"]
        if saved.is_file():  # with the environment it was trained in
            config = portable(json.loads(saved.read_text()), src.parent, "", dropped)
        io.atomic_write_text(dst.parent / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
        for extra in COPY:
            if (src.parent / extra).is_file():
                with io.atomic_path(dst.parent / extra) as tmp:  # a full disk: io.WriteError
                    shutil.copyfile(src.parent / extra, tmp)
        before, after = src.stat().st_size, dst.stat().st_size
        rows.append({"run": name.as_posix(), "file": (name / "best.pth").as_posix(), "bytes": after,
                     "source_bytes": before, "sha256": _sha256(dst), "dropped": sorted(set(dropped))})
        said = _saved(before, after)
        if slim_already:
            said = "slim already" + ("; its paths made portable" if slim["config"] != ckpt["config"] else "")
        print(f"{name.as_posix()}: {src.name} {_size(before)} -> best.pth {_size(after)} ({said})")
    io.atomic_write_text(out / "runs.json", json.dumps(rows, indent=2) + "\n")
    if meta:
        io.write_dataset_metadata(out, meta)
    before, after = sum(r["source_bytes"] for r in rows), sum(r["bytes"] for r in rows)
    print(f"packed {len(rows)} run(s) into {out}: {_size(before)} -> {_size(after)} ({_saved(before, after)})"
          f"{'; ' + io.KAGGLE_METADATA + ' for ' + dataset_id if dataset_id else ''}; in the S5 notebook "
          f"RUNS_DIR is the dataset's folder (/kaggle/input/<slug>)")
    return rows


def _size(n: int) -> str:
    return f"{n:,} bytes"


def _saved(before: int, after: int) -> str:
    if after >= before:
        return "saved nothing" if after == before else f"{after - before:,} bytes more"
    return f"saved {_size(before - after)}, {100 * (before - after) / before:.0f}%"


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", metavar="RUN", help="run folder, folder of runs, or checkpoint")
    ap.add_argument("--OUT", required=True, help="folder to write (a Kaggle dataset)")
    ap.add_argument("--CHECKPOINT", default="best.pth", help="checkpoint of each run folder")
    ap.add_argument("--DATASET_ID", default="", help="owner/slug: also write dataset-metadata.json")
    args = ap.parse_args(argv)
    try:
        return pack(args.runs, args.OUT, args.CHECKPOINT, args.DATASET_ID)
    except ValueError as e:  # a --DATASET_ID that is no owner/slug
        raise SystemExit(f"pack_runs: --{e}") from None


if __name__ == "__main__":
    main()
