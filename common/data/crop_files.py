"""S4.1's crop files: where a cell's crop lives (:func:`crop_path`, also read by S4.2's bags) and the
worker that writes every crop of one image (:func:`crop_image_cells`, run in S4.1's process pool).
The geometry is :mod:`common.cells`' (which reads and writes no file); which label map at which size
is :mod:`common.fov`'s.
"""
from __future__ import annotations

from pathlib import Path

from common import fov, images
from common.cells import cell_table, crop_cells
from common.parallel import up_to_date


def crop_path(cells_dir: str | Path, image_id: str, cell_id: int) -> Path:
    """``{cells_dir}/{ID}_{cell:04d}.png``."""
    return Path(cells_dir) / f"{image_id}_{int(cell_id):04d}.png"


def _original_available(folder: str | Path, image_id: str) -> bool:
    return bool(folder) and images.channel_path(folder, image_id, "red").is_file()


def crop_image_cells(task: dict) -> dict:
    """Crop every cell of one image (the S4.1 worker; a module-level function for the process pool).

    ``task``: image_id, mask_path (.npz, 512 px), image_path (512-px RGBY PNG), original_dir
    ("" = never use the original), out_dir, size, margin, overwrite. Crops come from the
    original-resolution image when its channel files are there and it is not smaller than the
    mask (with S2's original-size mask when there is one, else the mask resized with the one label
    kernel: :func:`common.fov.labels_at`, as S5 does), else from the 512-px image. Returns
    ``dict(rows=[index rows], written=int, from_original=bool)``; ``written == 0`` when every
    crop already existed.
    """
    image_id = str(task["image_id"])
    size, margin = int(task["size"]), float(task["margin"])
    cell, _ = images.load_masks(task["mask_path"])
    rows = [dict(ID=image_id, **r) for r in cell_table(cell)]
    ids = [r["cell_id"] for r in rows]
    # a crop is redone when missing or older than the mask (S2 re-segmented the image)
    todo = [c for c in ids if task.get("overwrite")
            or not up_to_date([crop_path(task["out_dir"], image_id, c)], [task["mask_path"]])]
    if not todo:
        return dict(rows=rows, written=0, from_original=False)
    image, labels, from_original = None, cell, False
    if task.get("original_dir") and _original_available(task["original_dir"], image_id):
        image = images.read_image(task["original_dir"], image_id)
        if image.shape[0] >= cell.shape[0] and image.shape[1] >= cell.shape[1]:
            from_original = True
            full = fov.full_mask_path(task["mask_path"])
            cell_full = images.load_masks(full)[0] if full.is_file() else None
            labels = fov.labels_at(image.shape[:2], cell, cell_full)
        else:
            image = None
    if image is None:
        image = images.read_rgby(task["image_path"])
        if image.shape[:2] != cell.shape:
            raise ValueError(f"{task['image_path']}: image {image.shape[:2]} and mask {task['mask_path']} "
                             f"{cell.shape} differ in size")
    for c, crop in zip(todo, crop_cells(image, labels, todo, size, margin)):
        images.write_rgby(crop_path(task["out_dir"], image_id, c), crop)
    return dict(rows=rows, written=len(todo), from_original=from_original)
