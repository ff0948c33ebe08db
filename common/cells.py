"""The only cell geometry: bounding boxes, the square cell crop, and the pipeline-1 views.

A label map is ``H x W`` of integers (uint16/int32/int64; 0 = background, ids may exceed 255 and
are never cast to uint8). An image is ``H x W x C`` uint8 (C = 4, RGBY). Boxes are
``(x0, y0, x1, y1)`` with x1/y1 exclusive, in the label map's pixel coordinates.

Crop (S4.1, S4.2, S5): :func:`square_window` is the one window computation, used by
:func:`crop_cell` and by its inverse :func:`paste_back`. The window is a square of side
``max(w, h) * (1 + 2 * margin)`` (``margin`` is a fraction of the box's longer side, S4.1's
CROP_MARGIN, saved in each pipeline-2 checkpoint's config, so a crop is
the same at 512 px and at the original resolution), centred on the box centre, zero-padded
where it leaves the image (never shifted back inside), every pixel not of this cell zeroed
(neighbours included), then resized to ``size x size``.

Pipeline-1 views (S3 training, S5 test time):
* :func:`masked_views` - the whole image with only this cell's pixels kept.
* :func:`centered_views` - a square window with the side of the image (``max(H, W)``) centred on
  the cell's box centre, zero-padded outside the image, resized to ``size``. Choice: neighbours
  are KEPT as context (``keep_neighbours=True``); the cell is only moved to the centre, so the
  view looks like a whole field of view whose middle cell is the one being classified.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import cv2
import numpy as np
from scipy import ndimage

from common.resize import resize_image

Box = tuple[int, int, int, int]


# ----------------------------------------------------------------------------- labels and boxes
def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label map must be 2-D, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"a label map must be of an integer dtype, got {labels.dtype}")
    return labels


def bounding_boxes(labels: np.ndarray) -> dict[int, Box]:
    """``{cell_id: (x0, y0, x1, y1)}`` of every id > 0 present in ``labels`` (sorted by id)."""
    labels = _check_labels(labels)
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ValueError("a label map must not hold negative ids")
    out: dict[int, Box] = {}
    for i, sl in enumerate(ndimage.find_objects(labels)):
        if sl is not None:
            out[i + 1] = (int(sl[1].start), int(sl[0].start), int(sl[1].stop), int(sl[0].stop))
    return out


def cell_ids(labels: np.ndarray) -> list[int]:
    """The ids > 0 present in ``labels``, sorted."""
    return list(bounding_boxes(labels))


def touches_border(box: Box, shape: Sequence[int]) -> bool:
    """Whether a cell with bounding box ``box`` touches the edge of an image of ``shape`` (H, W, ...)."""
    x0, y0, x1, y1 = box
    return x0 <= 0 or y0 <= 0 or x1 >= shape[1] or y1 >= shape[0]


def cell_table(labels: np.ndarray) -> list[dict]:
    """One dict per cell: cell_id, x0, y0, x1, y1, area (pixels), border (bool), and the centroid
    x, y (the mean column and row of the cell's pixels)."""
    labels = _check_labels(labels)
    boxes = bounding_boxes(labels)
    if not boxes:
        return []
    rows = []
    for c, b in boxes.items():  # each cell's own box: a few cells of a large map cost little
        ys, xs = np.nonzero(labels[b[1]:b[3], b[0]:b[2]] == c)
        n = int(ys.size)  # centroid: the exact integer sums, one division
        rows.append(dict(cell_id=c, x0=b[0], y0=b[1], x1=b[2], y1=b[3], area=n,
                         border=touches_border(b, labels.shape), x=(int(xs.sum()) + b[0] * n) / n,
                         y=(int(ys.sum()) + b[1] * n) / n))
    return rows


# ----------------------------------------------------------------------------- the window
def square_window(box: Box, margin: float, side: int | None = None) -> tuple[int, int, int]:
    """The square window ``(wx0, wy0, side)`` around a box, centred on the box centre.

    ``side`` defaults to ``ceil(max(w, h) * (1 + 2 * margin))``; pass it to get a window of a
    fixed side (the centred views). The window may extend past the image (negative origin).
    """
    x0, y0, x1, y1 = box
    if side is None:
        side = int(np.ceil(max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin) - 1e-9))
    side = max(int(side), 1)
    return (x0 + x1 - side) // 2, (y0 + y1 - side) // 2, side


def _window_slices(wx0: int, wy0: int, side: int, shape: Sequence[int]):
    """Slices of the window inside the image (source) and of the same pixels in the window (dest)."""
    h, w = shape[0], shape[1]
    ix0, iy0 = max(wx0, 0), max(wy0, 0)
    ix1, iy1 = min(wx0 + side, w), min(wy0 + side, h)
    if ix1 <= ix0 or iy1 <= iy0:
        return None, None
    src = (slice(iy0, iy1), slice(ix0, ix1))
    dst = (slice(iy0 - wy0, iy1 - wy0), slice(ix0 - wx0, ix1 - wx0))
    return src, dst


def _cut(image: np.ndarray, labels: np.ndarray | None, cell_id: int | None,
         wx0: int, wy0: int, side: int) -> np.ndarray:
    """The window of ``image`` (zero-padded); with ``labels``, pixels not of ``cell_id`` zeroed."""
    out = np.zeros((side, side, *image.shape[2:]), dtype=image.dtype)
    src, dst = _window_slices(wx0, wy0, side, image.shape)
    if src is None:
        return out
    if labels is None:
        out[dst] = image[src]
    else:
        keep = labels[src] == cell_id
        if image.ndim == 3:
            keep = keep[..., None]
        out[dst] = np.where(keep, image[src], 0)
    return out


def _check_pair(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = _check_labels(labels)
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and label map {labels.shape} differ in size")
    return image, labels


# ----------------------------------------------------------------------------- crops
def crop_cell(image: np.ndarray, labels: np.ndarray, cell_id: int, size: int,
              margin: float, box: Box | None = None) -> np.ndarray:
    """One cell as a ``size x size x C`` crop (see the module docstring for the geometry)."""
    image, labels = _check_pair(image, labels)
    if box is None:
        box = bounding_boxes(labels).get(int(cell_id))
        if box is None:
            raise KeyError(f"cell id {cell_id} is not in the label map")
    wx0, wy0, side = square_window(box, margin)
    return resize_image(_cut(image, labels, cell_id, wx0, wy0, side), size)


def iter_crop_cells(image: np.ndarray, labels: np.ndarray, ids: Iterable[int] | None, size: int,
                    margin: float) -> Iterator[tuple[int, np.ndarray]]:
    """``(cell_id, crop)`` for each id (all cells when ``ids`` is None), boxes computed once."""
    image, labels = _check_pair(image, labels)
    boxes = bounding_boxes(labels)
    for c in (boxes if ids is None else ids):
        c = int(c)
        if c not in boxes:
            raise KeyError(f"cell id {c} is not in the label map")
        yield c, crop_cell(image, labels, c, size, margin, box=boxes[c])


def crop_cells(image: np.ndarray, labels: np.ndarray, ids: Iterable[int] | None, size: int,
               margin: float) -> np.ndarray:
    """``(n, size, size, C)`` crops of the cells ``ids`` (all cells, sorted, when None)."""
    crops = [c for _, c in iter_crop_cells(image, labels, ids, size, margin)]
    if not crops:
        return np.zeros((0, size, size, *image.shape[2:]), dtype=image.dtype)
    return np.stack(crops)


def paste_back(crop: np.ndarray, labels: np.ndarray, cell_id: int, margin: float,
               out: np.ndarray | None = None, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """The inverse of :func:`crop_cell`: put a crop back where its cell is.

    The crop is resized to the window side, and only the cell's own pixels are written into
    ``out`` (a new zero array of the label map's size with the crop's channels when None).
    With ``size`` equal to the window side, ``paste_back(crop_cell(...))`` recovers the
    cell's pixels exactly.
    """
    labels = _check_labels(labels)
    box = bounding_boxes(labels).get(int(cell_id))
    if box is None:
        raise KeyError(f"cell id {cell_id} is not in the label map")
    wx0, wy0, side = square_window(box, margin)
    if out is None:
        out = np.zeros((*labels.shape, *crop.shape[2:]), dtype=crop.dtype)
    win = crop
    if crop.shape[0] != side or crop.shape[1] != side:
        win = cv2.resize(crop, (side, side), interpolation=interpolation).reshape(side, side, *crop.shape[2:])
    src, dst = _window_slices(wx0, wy0, side, labels.shape)
    if src is None:
        return out
    keep = labels[src] == cell_id
    region = out[src]
    region[keep] = win[dst][keep]
    return out


# ----------------------------------------------------------------------------- pipeline-1 views
def iter_masked_views(image: np.ndarray, labels: np.ndarray, ids: Iterable[int] | None = None,
                      chunk: int = 16) -> Iterator[tuple[list[int], np.ndarray]]:
    """Chunks ``(ids, views (k, H, W, C))`` of :func:`masked_views` (bounded memory)."""
    image, labels = _check_pair(image, labels)
    boxes = bounding_boxes(labels)
    ids = list(boxes) if ids is None else [int(i) for i in ids]
    for s in range(0, len(ids), chunk):
        part = ids[s:s + chunk]
        views = np.zeros((len(part), *image.shape), dtype=image.dtype)
        for k, c in enumerate(part):
            if c not in boxes:
                raise KeyError(f"cell id {c} is not in the label map")
            x0, y0, x1, y1 = boxes[c]
            box = (slice(y0, y1), slice(x0, x1))
            keep = labels[box] == c
            views[k][box][keep] = image[box][keep]
        yield part, views


def masked_views(image: np.ndarray, labels: np.ndarray, ids: Iterable[int] | None = None) -> np.ndarray:
    """``(n, H, W, C)``: the whole image with only cell ``ids[i]``'s pixels kept, the rest zero."""
    chunks = [v for _, v in iter_masked_views(image, labels, ids, chunk=64)]
    if not chunks:
        return np.zeros((0, *image.shape), dtype=image.dtype)
    return np.concatenate(chunks)


def iter_centered_views(image: np.ndarray, labels: np.ndarray, ids: Iterable[int] | None, size: int,
                        keep_neighbours: bool = True, chunk: int = 16
                        ) -> Iterator[tuple[list[int], np.ndarray]]:
    """Chunks ``(ids, views (k, size, size, C))`` of :func:`centered_views`."""
    image, labels = _check_pair(image, labels)
    boxes = bounding_boxes(labels)
    ids = list(boxes) if ids is None else [int(i) for i in ids]
    side = max(labels.shape)
    for s in range(0, len(ids), chunk):
        part = ids[s:s + chunk]
        views = np.zeros((len(part), size, size, *image.shape[2:]), dtype=image.dtype)
        for k, c in enumerate(part):
            if c not in boxes:
                raise KeyError(f"cell id {c} is not in the label map")
            wx0, wy0, _ = square_window(boxes[c], margin=0.0, side=side)  # a fixed side: no margin
            win = _cut(image, None if keep_neighbours else labels, c, wx0, wy0, side)
            views[k] = resize_image(win, size)
        yield part, views


def centered_views(image: np.ndarray, labels: np.ndarray, ids: Iterable[int] | None, size: int,
                   keep_neighbours: bool = True) -> np.ndarray:
    """``(n, size, size, C)``: a window of the image's side centred on each cell's box centre.

    Outside the image is zero; neighbours are kept as context (``keep_neighbours=False`` zeroes
    every pixel that is not this cell's).
    """
    chunks = [v for _, v in iter_centered_views(image, labels, ids, size, keep_neighbours, chunk=64)]
    if not chunks:
        return np.zeros((0, size, size, *image.shape[2:]), dtype=image.dtype)
    return np.concatenate(chunks)
