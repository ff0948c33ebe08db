"""The official HPA cell-segmentation networks, natively (no hpacellseg, no pytorch_zoo) and safely.

    from common.segmentation.hpa import HPASegmenter, available
    if available("input/hpa-seg"):
        seg = HPASegmenter("input/hpa-seg", device="auto")
        [(cell, nucleus)] = seg.segment([img])       # img: H x W x 4 uint8 RGBY

* :mod:`common.segmentation.dpn_unet` — the DPN-92 U-Net as a plain ``nn.Module`` (state_dict = official).
* :mod:`.weights` — ``load_hpa_model`` (restricted unpickler for the official ``.pth``; ``.safetensors``),
  ``convert_to_safetensors``, ``available``.
* :mod:`.postprocess` — HPA-Cell-Segmentation's ``label_cell`` and its feeding, reproduced at the original
  resolution (quirks included; ``CORRECTED`` off), ``label_from_maps``.
* :mod:`.segmenter` — ``HPASegmenter``: batched inference, padding, AMP, TTA.
"""
from __future__ import annotations

from common.segmentation.dpn_unet import DPNUNet
from common.segmentation.hpa.postprocess import label_cell, label_cells, label_from_maps, official_inputs
from common.segmentation.hpa.segmenter import HPASegmenter
from common.segmentation.hpa.weights import (
    CELL_STEM,
    NUCLEI_STEM,
    HPAWeightsError,
    UnsafePickleError,
    available,
    convert_to_safetensors,
    load_hpa_model,
    load_state_dict_file,
    weight_file,
)

__all__ = ["CELL_STEM", "NUCLEI_STEM", "DPNUNet", "HPASegmenter", "HPAWeightsError", "UnsafePickleError",
           "available", "convert_to_safetensors", "label_cell", "label_cells", "label_from_maps",
           "load_hpa_model", "load_state_dict_file", "official_inputs", "weight_file"]
