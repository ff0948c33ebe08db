# ruff: noqa: E402  (constants block first, as in the numbered scripts)
"""Score and compare trained runs on their out-of-fold predictions (no test data needed).

Reads  every ``oof.csv`` (image level: ID, y0..y18, p0..p18) under the given folders, and the
       ``oof_cells.csv`` beside it when the run had per-cell truth (S4.2 on the demo data)
Prints one row per run: recipe (from config.json), fold, images, image-level mAP, cell mAP strict and
       lenient (when there is cell truth), best epoch; sorted by image-level mAP; --CSV writes it.

    python tools/compare_oof.py output
    python tools/compare_oof.py output/p1_densenet121_center output/p2_effb0_c256 --CSV oof_table.csv
"""
# ---------------------------------------------------------------------------- what
CSV = ""              # also write the table to this CSV file ("" = print only)

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd

from common import constants, io
from common.competition import metric
from common.constants import NUM_CLASSES

YS = [f"y{c}" for c in range(NUM_CLASSES)]  # oof.csv: true labels
PS = [f"p{c}" for c in range(NUM_CLASSES)]  # oof.csv, oof_cells.csv: probabilities

def score_run(folder: Path) -> dict:
    """The OOF scores of one run folder (one holding oof.csv)."""
    oof = io.read_id_table(folder / "oof.csv", ["ID", *YS, *PS])
    y = oof[YS].to_numpy() > 0.5
    p = oof[PS].to_numpy()
    cfg = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    row = {"run": str(folder.parent.name), "fold": folder.name, "recipe": cfg.get("RECIPE") or "-",
           "model": cfg.get("MODEL_NAME", "?"), "images": len(oof),
           "image_mAP": metric.image_level_map(y, p)[0]}
    cells_csv = folder / "oof_cells.csv"
    if cells_csv.is_file():
        c = io.read_id_table(cells_csv, ["ID", "cell_id", "Label", *PS], ["cell_id"], unique=False)
        truth = {(i, int(k)): constants.parse_labels(lab)
                 for i, k, lab in zip(c["ID"], c["cell_id"], c["Label"])}
        probs = c[PS].to_numpy()
        for mode in ("strict", "lenient"):
            row[f"cell_mAP_{mode}"] = metric.score_cells(c["ID"], c["cell_id"], probs, truth, mode)["mAP"]
    return row


def find(folders: list[str]) -> list[Path]:
    out: list[Path] = []
    for f in folders:
        root = constants.resolve(f)
        if not root.exists():
            raise SystemExit(f"{root}: no such folder")
        out += sorted({p.parent for p in root.rglob("oof.csv")} - set(out))
    return out


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*", default=["output"], help="run folders or folders of runs")
    ap.add_argument("--CSV", "--csv", default=CSV, help="also write the table to this CSV file")
    args = ap.parse_args(argv)
    runs = find(args.folders)
    if not runs:
        raise SystemExit("no oof.csv found (S3 / S4.2 write one per validated run)")
    table = pd.DataFrame([score_run(r) for r in runs]).sort_values("image_mAP", ascending=False)
    with pd.option_context("display.width", 160, "display.max_columns", 20,
                           "display.float_format", "{:.4f}".format):
        print(table.to_string(index=False))
    if args.CSV:
        io.atomic_to_csv(table, constants.resolve(args.CSV))
    return table


if __name__ == "__main__":
    main()
