"""The plain official post-processing: HPA-Cell-Segmentation's ``label_cell``, its own skimage / scipy
calls step by step, as the test oracle of ``common.segmentation.hpa.postprocess`` (and the "before"
column of ``benchmarks/bench_hpa_seg.py``).

Two departures from the published text, both recorded: sizes are multiplied by ``pixel_scale`` squared
(1 = the official resolution) and ``corrected=True`` gives what the code meant (the project's
``CORRECTED``). skimage 0.26 deprecated ``min_size`` / ``area_threshold`` for ``max_size`` (parts up to
and including the value); the published code ran on skimage < 0.26, where parts *smaller* than the value
were removed, so that is what :func:`remove_small_objects` / :func:`remove_small_holes` do here on every
version. Returns ``(cell, nucleus)`` (the original returned nucleus first), cell ids uint16.
:func:`official_inputs` is the feeding (the float maps of the networks to label_cell's uint8 maps).
"""
from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import scipy.ndimage as ndi
import skimage
from skimage import filters, measure, morphology, segmentation
from skimage.morphology import closing, disk
from skimage.util import img_as_ubyte

_NEW_SIZES = tuple(int(p) for p in skimage.__version__.split(".")[:2]) >= (0, 26)


def remove_small_objects(ar, min_size):
    """skimage < 0.26 ``remove_small_objects(ar, min_size)``: parts with fewer than min_size pixels go."""
    with warnings.catch_warnings():  # "only one label was provided": a label image of one cell
        warnings.simplefilter("ignore", UserWarning)
        if _NEW_SIZES:
            return morphology.remove_small_objects(ar, max_size=math.ceil(min_size) - 1)
        return morphology.remove_small_objects(ar, min_size)


def remove_small_holes(ar, area_threshold):
    """skimage < 0.26 ``remove_small_holes(ar, area_threshold)``: holes under area_threshold filled."""
    if _NEW_SIZES:
        return morphology.remove_small_holes(ar, max_size=math.ceil(area_threshold) - 1)
    return morphology.remove_small_holes(ar, area_threshold)


def official_inputs(nuclei, cell, out_hw):
    """``label_cell``'s uint8 (H, W, 3) inputs from the float softmax maps, as ``CellSegmentator`` makes
    them: nuclei -> img_as_ubyte, channel 0 = 0, INTER_AREA to the original size; cell -> channel 0 = 0,
    INTER_AREA in float, img_as_ubyte (the size given as OpenCV wants it, (W, H))."""
    h, w = out_hw
    nuc = img_as_ubyte(np.clip(np.asarray(nuclei, np.float32), 0.0, 1.0))
    nuc[..., 0] = 0
    c = np.array(cell, dtype=np.float32)
    c[..., 0] = 0
    if nuc.shape[:2] != (h, w):
        nuc = cv2.resize(nuc, (w, h), interpolation=cv2.INTER_AREA)
        c = cv2.resize(c, (w, h), interpolation=cv2.INTER_AREA)
    return nuc, img_as_ubyte(np.clip(c, 0.0, 1.0))


def _fill_holes(image):
    """Fill_holes for labelled image, with a unique number (the official ``__fill_holes``)."""
    boundaries = segmentation.find_boundaries(image)
    image = np.multiply(image, np.invert(boundaries))
    image = ndi.binary_fill_holes(image > 0)
    image = ndi.label(image)[0]
    return image


def _wsh(mask_img, threshold, border_img, seeds, threshold_adjustment, small_object_size_cutoff, a):
    """The official ``__wsh`` (sizes scaled by ``a``)."""
    img_copy = np.copy(mask_img)
    m = seeds * border_img
    img_copy[m <= threshold + threshold_adjustment] = 0
    img_copy[m > threshold + threshold_adjustment] = 1
    img_copy = img_copy.astype(bool)
    img_copy = remove_small_objects(img_copy, small_object_size_cutoff * a).astype(np.uint8)

    mask_img[mask_img <= threshold] = 0
    mask_img[mask_img > threshold] = 1
    mask_img = mask_img.astype(bool)
    mask_img = remove_small_holes(mask_img, 1000 * a)
    mask_img = remove_small_objects(mask_img, 8 * a).astype(np.uint8)
    markers = ndi.label(img_copy, output=np.uint32)[0]
    labeled_array = segmentation.watershed(mask_img, markers, mask=mask_img, watershed_line=True)
    return labeled_array


def label_cell(nuclei_pred, cell_pred, pixel_scale=1.0, corrected=False):
    """The official ``label_cell`` on uint8 (H, W, 3) maps -> ``(cell, nucleus)``."""
    a = float(pixel_scale) ** 2
    if corrected:
        border_sum = nuclei_pred[..., 1].astype(np.int32) + cell_pred[..., 1]
    else:  # uint8 + uint8: wraps past 255
        border_sum = nuclei_pred[..., 1] + cell_pred[..., 1]
    nuclei_label = _wsh(nuclei_pred[..., 2] / 255.0, 0.4, 1 - border_sum / 255.0 > 0.05,
                        nuclei_pred[..., 2] / 255, -0.25, 500, a)
    nuclei_label = remove_small_objects(nuclei_label, 2500 * a)
    nuclei_label = measure.label(nuclei_label)
    threshold_value = max(0.22, filters.threshold_otsu(cell_pred[..., 2] / 255) * 0.5)
    if corrected:
        cell_region = (cell_pred[..., 2] / 255 > threshold_value) & ~(cell_pred[..., 1] / 255 > 0.05)
        distance = np.clip(cell_pred[..., 2].astype(np.float64), 255 * threshold_value, None)
    else:
        cell_region = np.multiply(cell_pred[..., 2] / 255 > threshold_value,
                                  np.invert(np.asarray(cell_pred[..., 1] / 255 > 0.05, dtype=np.int8)))
        distance = np.clip(cell_pred[..., 2], 255 * threshold_value, cell_pred[..., 2])
    sk = np.asarray(cell_region, dtype=np.int8)
    cell_label = segmentation.watershed(-distance, nuclei_label, mask=sk)
    cell_label = remove_small_objects(cell_label, 5500 * a)
    if not corrected:
        cell_label = cell_label.astype(np.uint8)
    cell_label = closing(cell_label, disk(int(np.round(6 * pixel_scale))))
    cell_label = _fill_holes(cell_label)
    sk = np.asarray(np.add(np.asarray(cell_label > 0, dtype=np.int8),
                           np.asarray(cell_pred[..., 1] / 255 > 0.05, dtype=np.int8)) > 0, dtype=np.int8)
    cell_label = segmentation.watershed(-distance, cell_label, mask=sk)
    cell_label = _fill_holes(cell_label)
    cell_label = np.asarray(cell_label > 0, dtype=np.uint8)
    cell_label = measure.label(cell_label)
    cell_label = remove_small_objects(cell_label, 5500 * a)
    cell_label = measure.label(cell_label)
    cell_label = np.asarray(cell_label, dtype=np.uint16)
    nuclei_label = np.multiply(cell_label > 0, nuclei_label) > 0
    nuclei_label = measure.label(nuclei_label)
    nuclei_label = remove_small_objects(nuclei_label, 2500 * a)
    nuclei_label = np.multiply(cell_label, nuclei_label > 0)
    return cell_label, nuclei_label.astype(np.uint16)
