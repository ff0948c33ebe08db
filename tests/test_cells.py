"""common.cells: boxes, the square crop (padded not shifted, neighbours zeroed), paste-back, views."""
from __future__ import annotations

import numpy as np
import pytest

from common import cells

M = 0.05  # the crop margin of S4.1


def _scene(dtype=np.uint16):
    """A 40x50 label map: cell 300 on the top border, cell 7 inside, cell 9 touching cell 7."""
    lab = np.zeros((40, 50), dtype)
    lab[0:6, 10:22] = 300          # 12 wide, 6 high, touches the top edge
    lab[15:30, 15:25] = 7          # 10 x 15
    lab[20:26, 25:31] = 9          # right neighbour of 7
    rng = np.random.default_rng(0)
    img = rng.integers(1, 256, (40, 50, 4), dtype=np.uint8)  # no zero pixel: zeros mean "masked"
    return img, lab


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])
def test_boxes_ids_border_and_large_ids(dtype):
    img, lab = _scene(dtype)
    boxes = cells.bounding_boxes(lab)
    assert boxes == {7: (15, 15, 25, 30), 9: (25, 20, 31, 26), 300: (10, 0, 22, 6)}
    assert cells.cell_ids(lab) == [7, 9, 300]
    assert cells.touches_border(boxes[300], lab.shape)
    assert not cells.touches_border(boxes[7], lab.shape)
    table = {r["cell_id"]: r for r in cells.cell_table(lab)}
    assert table[300]["area"] == 72 and table[300]["border"] and not table[9]["border"]


def test_crop_at_border_is_padded_not_shifted():
    img, lab = _scene()
    wx0, wy0, side = cells.square_window((10, 0, 22, 6), margin=0)
    assert (wx0, wy0, side) == (10, -3, 12)     # centred on the box: 3 rows above the image
    crop = cells.crop_cell(img, lab, 300, size=12, margin=0)
    assert crop.shape == (12, 12, 4) and crop.dtype == np.uint8
    assert (crop[:3] == 0).all()                 # padding above the image, not a shift
    np.testing.assert_array_equal(crop[3:9], img[0:6, 10:22])
    assert (crop[9:] == 0).all()


def test_crop_zeroes_neighbours_and_margin():
    img, lab = _scene()
    side = cells.square_window((15, 15, 25, 30), margin=0.2)[2]
    assert side == 21                             # ceil(15 * 1.4)
    crop = cells.crop_cell(img, lab, 7, size=side, margin=0.2)
    wx0, wy0, _ = cells.square_window((15, 15, 25, 30), margin=0.2)
    win_lab = np.zeros((side, side), lab.dtype)
    win_lab[:, :] = lab[wy0:wy0 + side, wx0:wx0 + side]
    assert (win_lab == 9).any()                   # the neighbour is inside the window ...
    assert (crop[win_lab != 7] == 0).all()        # ... and zeroed, like the background
    np.testing.assert_array_equal(crop[win_lab == 7], img[wy0:wy0 + side, wx0:wx0 + side][win_lab == 7])
    resized = cells.crop_cell(img, lab, 7, size=64, margin=0.2)
    assert resized.shape == (64, 64, 4)


def test_crop_paste_back_recovers_cell_pixels():
    img, lab = _scene(np.int32)
    for c in cells.cell_ids(lab):
        side = cells.square_window(cells.bounding_boxes(lab)[c], M)[2]
        crop = cells.crop_cell(img, lab, c, size=side, margin=M)
        back = cells.paste_back(crop, lab, c, M)
        np.testing.assert_array_equal(back[lab == c], img[lab == c])
        assert (back[lab != c] == 0).all()
    # resized crops come back approximately (a smooth image survives the resize round-trip)
    yy, xx = np.mgrid[0:40, 0:50]
    smooth = np.stack([(xx * 4 + yy * 2) % 256] * 4, -1).astype(np.uint8)
    back = cells.paste_back(cells.crop_cell(smooth, lab, 7, size=64, margin=M), lab, 7, M)
    assert np.abs(back[lab == 7].astype(int) - smooth[lab == 7]).mean() < 3


def test_crop_cells_batched_equals_single():
    img, lab = _scene()
    batch = cells.crop_cells(img, lab, [300, 7], size=32, margin=M)
    assert batch.shape == (2, 32, 32, 4)
    np.testing.assert_array_equal(batch[1], cells.crop_cell(img, lab, 7, 32, M))
    assert cells.crop_cells(img, lab, None, 32, M).shape == (3, 32, 32, 4)
    assert cells.crop_cells(img, np.zeros_like(lab), None, 32, M).shape == (0, 32, 32, 4)
    with pytest.raises(KeyError):
        cells.crop_cell(img, lab, 5, 32, M)


def test_masked_views_keep_only_the_cell():
    img, lab = _scene()
    views = cells.masked_views(img, lab, [7, 300])
    assert views.shape == (2, 40, 50, 4)
    np.testing.assert_array_equal(views[0][lab == 7], img[lab == 7])
    assert (views[0][lab != 7] == 0).all()
    assert (views[1][lab != 300] == 0).all()
    chunks = list(cells.iter_masked_views(img, lab, None, chunk=2))
    assert [c[0] for c in chunks] == [[7, 9], [300]]


def test_centered_views_centre_the_cell_and_keep_context():
    img, lab = _scene()
    views = cells.centered_views(img, lab, [7, 300], size=50)   # side = max(H, W) = 50: no resize
    assert views.shape == (2, 50, 50, 4)
    # cell 7's box centre (20, 22.5) -> window origin (-5, -3): image pixel (y, x) lands at (y+3, x+5)
    wx0, wy0, side = cells.square_window((15, 15, 25, 30), 0.0, side=50)
    assert (wx0, wy0, side) == (-5, -3, 50)
    np.testing.assert_array_equal(views[0][3:43, 5:50], img[:, :45])   # neighbours kept
    assert (views[0][:3] == 0).all() and (views[0][43:] == 0).all()
    alone = cells.centered_views(img, lab, [7], size=50, keep_neighbours=False)[0]
    shifted = np.zeros((50, 50), lab.dtype)
    shifted[3:43, 5:50] = lab[:, :45]
    assert (alone[shifted != 7] == 0).all()
    assert cells.centered_views(img, lab, [9], size=16).shape == (1, 16, 16, 4)
