# ruff: noqa: E402  (constants block first, as in the numbered scripts)
"""Post-processing alone: the official HPA label maps from saved network outputs.

    python tools/label_from_maps.py MAPS.npz OUT_DIR [--LABEL_AT original] [--CORRECTED false]

Reads   MAPS.npz: ``nuclei`` and ``cell``, float (h, w, 3) softmax outputs of the official nuclei and cell
        networks on the original image scaled by 0.25 (channels background, border, interior), and an
        optional ``original_size`` ((height, width), or one side); without it the original is 4 x the map
Writes  OUT_DIR/cell.png, OUT_DIR/nucleus.png: uint16 label maps at the original size (cell ids = nucleus
        ids, 0 = background), by the project's default path (common.segmentation.hpa.postprocess:
        the official feeding and label_cell at the original resolution)

For maps made elsewhere (another GPU job, an exported model). Bad input is refused with the file named.
"""
# ---------------------------------------------------------------------------- post-processing
LABEL_AT = "original"   # original (the official label_cell, the default path) | working (fast, not the truth)
CORRECTED = False       # True: the "meant" behaviour instead of the official quirks (docs/SEGMENTATION.md)

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from common import config, images
from common.segmentation.hpa import postprocess

_USAGE = "usage: python tools/label_from_maps.py MAPS.npz OUT_DIR [--LABEL_AT original|working]"


def read_maps(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """``(nuclei, cell, (H, W))`` from a maps file, checked."""
    try:
        with np.load(path) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001
        raise SystemExit(f"{path}: cannot read as .npz ({e})") from None
    missing = [k for k in ("nuclei", "cell") if k not in data]
    if missing:
        raise SystemExit(f"{path}: missing array(s) {missing}; has {sorted(data)}")
    nuc, cell = data["nuclei"], data["cell"]
    for name, a in (("nuclei", nuc), ("cell", cell)):
        if a.ndim != 3 or a.shape[2] != 3 or not np.issubdtype(a.dtype, np.floating):
            raise SystemExit(f"{path}: '{name}' must be a float (h, w, 3) softmax map, got {a.shape} "
                             f"{a.dtype}")
        if not np.isfinite(a).all() or a.min() < -1e-3 or a.max() > 1 + 1e-3:
            raise SystemExit(f"{path}: '{name}' holds values outside [0, 1]: not softmax probabilities")
    if nuc.shape != cell.shape:
        raise SystemExit(f"{path}: 'nuclei' {nuc.shape} and 'cell' {cell.shape} differ in shape")
    if "original_size" in data:
        s = np.atleast_1d(data["original_size"]).astype(int).tolist()
        hw = (s[0], s[0]) if len(s) == 1 else (s[0], s[1])
    else:
        k = 1.0 / postprocess.OFFICIAL_SCALE
        hw = (int(round(nuc.shape[0] * k)), int(round(nuc.shape[1] * k)))
    if min(hw) < 1:
        raise SystemExit(f"{path}: original_size {hw} is not a size")
    return nuc, cell, hw


def main(argv=None) -> tuple[Path, Path]:
    argv = list(sys.argv[1:] if argv is None else argv)
    pos = []
    while argv and not argv[0].startswith("--"):
        pos.append(argv.pop(0))
    if len(pos) != 2:
        raise SystemExit(_USAGE)
    cfg = config.parse(globals(), argv)
    if cfg.LABEL_AT not in ("original", "working"):
        raise SystemExit(f"--LABEL_AT {cfg.LABEL_AT!r}: choose original or working")
    maps, out_dir = Path(pos[0]), Path(pos[1])
    nuc, cell, hw = read_maps(maps)
    label_hw = None if cfg.LABEL_AT == "original" else nuc.shape[:2]
    c, n = postprocess.label_from_maps(nuc, cell, hw, label_hw=label_hw, corrected=cfg.CORRECTED)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (images.write_label_png(out_dir / "cell.png", c),
             images.write_label_png(out_dir / "nucleus.png", n))
    print(f"{maps.name}: {int(c.max())} cells at {hw[0]} x {hw[1]} -> {paths[0]}, {paths[1]}")
    return paths


if __name__ == "__main__":
    main()
