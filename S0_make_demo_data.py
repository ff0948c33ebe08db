"""S0: write a small synthetic HPA-like dataset with per-cell truth in the competition layout.

    python S0_make_demo_data.py                       # 160 train + 24 test images, 512 px
    python S0_make_demo_data.py --IMAGE_SIZE 2048     # real-size images

Writes COMPETITION_DIR/{train,test}/{ID}_{red,green,blue,yellow}.png, train.csv, sample_submission.csv,
{train,test}_cell_truth/{ID}.png, {train,test}_nucleus_truth/{ID}.png (uint16 label maps, same
ids), {train,test}_cells.csv (one row per cell and label) and demo_config.json (written last).
Skips when COMPETITION_DIR already holds a demo made with the same config (unless OVERWRITE). Every file
it writes is listed first in demo_manifest.json; OVERWRITE deletes only those, and S0 refuses to
write over any file it did not make (a train.csv of the real data, say), OVERWRITE or not.
"""
# ---------------------------------------------------------------------------- data
N_TRAIN = 320             # training images
N_TEST = 32               # test images (truth in test_cells.csv, labels hidden in sample_submission)
IMAGE_SIZE = 512          # side of the square images in pixels (2048 = real HPA size)
MIN_CELLS = 8             # fewest cells per image
MAX_CELLS = 30            # most cells per image
FRAC_16BIT = 0.25         # fraction of images written as 16-bit PNGs (exercises io's 16-bit path)
LABEL_TEMPER = 0.5        # label-combo weight = real count ** LABEL_TEMPER (1 = real frequencies)
RARE_BOOST = 0.5          # chance an image's combo is drawn among those holding a uniformly chosen class
# ---------------------------------------------------------------------------- run
SEED = 2021               # everything (ids, labels, pixels) follows from this seed
COMPETITION_DIR = "input/hpa-single-cell-image-classification"  # where the competition layout is written
NUM_WORKERS = 2           # processes generating images (1 = in this process)
OVERWRITE = False         # regenerate even when the same demo already exists

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import config, constants, io, lock
from common.demo import demo_data

# constants renamed in this release: an old name on the command line stops with the new one
_RENAMED = {"OUT_DIR": "COMPETITION_DIR"}

# constants that change the generated data (the rest only change how it is made)
_DATA_KEYS = ("N_TRAIN", "N_TEST", "IMAGE_SIZE", "MIN_CELLS", "MAX_CELLS", "FRAC_16BIT", "LABEL_TEMPER",
              "RARE_BOOST", "SEED")


def main(argv=None):
    cfg = config.parse(globals(), argv, renamed=_RENAMED)
    out_dir = constants.output_folder(cfg.COMPETITION_DIR, "COMPETITION_DIR")
    with lock.hold(out_dir, "S0"):  # one writer of the demo data at a time
        return _make(cfg, out_dir)


def _make(cfg, out_dir: Path) -> Path:
    """The demo data in ``out_dir`` (skipped when the same constants made it already)."""
    wanted = {k: cfg[k] for k in _DATA_KEYS} | {"GENERATOR_VERSION": demo_data.VERSION}
    old = demo_data.read_config(out_dir)
    own = demo_data.read_manifest(out_dir) or []
    if (out_dir / "train.csv").exists() and "train.csv" not in own:
        raise SystemExit(f"{out_dir} holds a train.csv that S0 did not make (not in "
                         f"{demo_data.MANIFEST_NAME}): it may be real competition data; S0 never writes over "
                         "or deletes files it did not "
                         "make, even with --OVERWRITE: choose another COMPETITION_DIR")
    if old is not None and {k: old.get(k) for k in wanted} == wanted and not cfg.OVERWRITE:
        missing = [p for p in demo_data.demo_outputs(out_dir) if not p.exists()]
        if not missing:
            print(f"demo data with the same config already in {out_dir}; skipping (--OVERWRITE true to redo)")
            return out_dir
    io.remove_stale_temps(out_dir, recursive=True)  # temporaries of a killed run
    if own:  # only what S0 wrote (its manifest); anything else in COMPETITION_DIR stays
        demo_data.remove_outputs(out_dir)
    if cfg.N_TRAIN < 1 or cfg.N_TEST < 0:
        raise SystemExit(f"need N_TRAIN >= 1 and N_TEST >= 0, got {cfg.N_TRAIN}, {cfg.N_TEST}")
    t0 = time.time()
    try:
        plan = demo_data.DemoPlan(cfg.N_TRAIN, cfg.N_TEST, cfg.IMAGE_SIZE, cfg.SEED, min_cells=cfg.MIN_CELLS,
                                  max_cells=cfg.MAX_CELLS, frac_16bit=cfg.FRAC_16BIT, temper=cfg.LABEL_TEMPER,
                                  rare_boost=cfg.RARE_BOOST)
        summary = demo_data.make_dataset(out_dir, plan, num_workers=cfg.NUM_WORKERS, progress=True)
    except FileExistsError as e:
        raise SystemExit(f"S0: {e}: choose another COMPETITION_DIR") from None
    config.save(dict(cfg) | wanted, out_dir / demo_data.CONFIG_NAME)  # last: marks the dataset complete
    counts = ", ".join(f"{c}:{n}" for c, n in enumerate(summary["class_images"]))
    print(f"wrote {summary['n_train']} train + {summary['n_test']} test images ({summary['n_cells']} cells) "
          f"to {out_dir} in {time.time() - t0:.1f}s; images per class {counts}")
    return out_dir


if __name__ == "__main__":
    main()
