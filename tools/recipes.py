"""The original's recipes from the shell: the table, and the training plan of ``run_all.sh --real``.

    python tools/recipes.py list [--script S3|S4.2]
    python tools/recipes.py plan [--recipes all|a,b,c] [--output output] [--epochs-from a.json]

``plan`` prints one line per recipe, ``<script> <recipe> <state> <cell size>``, in training order
(pipeline 1 first, then pipeline 2 grouped by cell size), where state is
``done`` (summary.csv reached the recipe's EPOCHS), ``resume`` (last.pth exists) or ``new``.
``--epochs N`` judges "done" against N epochs instead (when EPOCHS is overridden).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import constants, recipes  # noqa: E402


def state(run_dir: Path, epochs: int) -> str:
    """done | resume | new, from the run folder's summary.csv and last.pth."""
    summary = run_dir / "summary.csv"
    if summary.is_file() and (run_dir / "last.pth").is_file():
        with summary.open() as f:
            done = max((int(r["epoch"]) for r in csv.DictReader(f) if r.get("epoch")), default=0)
        if done >= epochs:
            return "done"
    return "resume" if (run_dir / "last.pth").is_file() else "new"


def select(spec: str) -> list[str]:
    if spec in ("", "all"):
        return list(recipes.RECIPES)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in recipes.RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; known: {', '.join(recipes.RECIPES)}")
    return names


def plan(names: list[str], output: Path, epochs: int = 0) -> list[tuple[str, str, str, int]]:
    rows = []
    for n in names:
        r = recipes.RECIPES[n]
        c = r["constants"]
        rows.append((r["script"], n, state(output / recipes.run_dir(n), epochs or int(c["EPOCHS"])),
                     int(c.get("CELL_SIZE", 0))))
    return sorted(rows, key=lambda x: (x[0] != "S3", x[3]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list")
    ls.add_argument("--script", default=None)
    pl = sub.add_parser("plan")
    pl.add_argument("--recipes", default="all")
    pl.add_argument("--output", default="output")
    pl.add_argument("--epochs", type=int, default=0)
    args = ap.parse_args(argv)
    if args.cmd == "list":
        print(recipes.table(args.script))
        return
    for row in plan(select(args.recipes), constants.resolve(args.output), args.epochs):
        print(*row)


if __name__ == "__main__":
    main()
