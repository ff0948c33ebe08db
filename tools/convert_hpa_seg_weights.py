# ruff: noqa: E402  (constants block first, as in the numbered scripts)
"""Convert the official HPA segmentation weights (whole pickled models) into .safetensors files.

Reads   WEIGHTS_DIR/dpn_unet_nuclei_v1.pth, WEIGHTS_DIR/dpn_unet_cell_3ch_v1.pth  (Zenodo record 4665863)
Writes  WEIGHTS_DIR/dpn_unet_nuclei_v1.safetensors, WEIGHTS_DIR/dpn_unet_cell_3ch_v1.safetensors

The .pth files are read with a restricted unpickler (no pytorch_zoo, no code execution; a file that
references anything but tensors, containers and the expected module classes is refused). Every tensor
is checked against the native DPN-92 U-Net (names, shapes), and with VERIFY the written file is read
back and compared tensor by tensor. Once converted, the .pth files are no longer needed (the
.safetensors are preferred when both exist). Run:  python tools/convert_hpa_seg_weights.py
"""
# ---------------------------------------------------------------------------- files
WEIGHTS_DIR = "input/hpa-seg"    # folder holding the official .pth files; outputs go beside them
OVERWRITE = False                # re-convert when the .safetensors already exists
VERIFY = True                    # read the written file back and compare every tensor

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from common import config, constants
from common.segmentation.hpa.weights import STEMS, convert_to_safetensors, load_state_dict_file


def main(argv=None) -> list[Path]:
    cfg = config.parse(globals(), argv)
    folder = constants.resolve(cfg.WEIGHTS_DIR)
    written = []
    for kind, stem in STEMS.items():
        src, dst = folder / f"{stem}.pth", folder / f"{stem}.safetensors"
        if dst.is_file() and not cfg.OVERWRITE:
            print(f"{dst.name}: exists (--OVERWRITE true to redo)")
            continue
        if not src.is_file():
            raise SystemExit(f"{src}: missing. Download it from https://zenodo.org/record/4665863 "
                             f"into {folder} (see docs/SEGMENTATION.md).")
        out = convert_to_safetensors(src, dst, kind=kind)
        if cfg.VERIFY:
            a, info = load_state_dict_file(src, kind)
            b, _ = load_state_dict_file(out, kind)
            bad = [k for k in a if not torch.equal(a[k], b[k])]
            if bad:
                out.unlink()
                raise SystemExit(f"{out}: verification failed for {bad[:3]}; removed")
            print(f"{src.name} ({info['format']} pickle, training={info['training']}) -> {out.name}: "
                  f"{len(a)} tensors verified")
        else:
            print(f"{src.name} -> {out.name}")
        written.append(out)
    return written


if __name__ == "__main__":
    main()
