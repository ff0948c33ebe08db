"""The official HPA cell segmentation (nuclei + 3-channel cell DPN U-Nets), batched.

Per image (H x W x 4 uint8 RGBY), as HPA-Cell-Segmentation does it:

1. scale by ``scale`` (default 0.25) exactly like ``skimage.transform.rescale`` with its defaults
   (Gaussian anti-aliasing with sigma = (factor - 1) / 2, then bilinear at pixel centres), on the device;
2. nuclei network input = blue in all three channels; cell network input = (red, yellow, blue);
   normalised per channel as ``(255 x - (124, 117, 104)) * 0.0167``;
3. when the working size is not a multiple of 32: reflect-pad (edge pixel repeated) by 32 at the top
   and left and by ``32 - n mod 32`` at the bottom and right (the official ``padding=True``), crop after;
4. both networks in eval mode (AMP float16 on CUDA only); softmax; optional 8-way flip/transpose TTA of
   the cell network (the mean of the probabilities);
5. :func:`~common.segmentation.hpa.postprocess.label_cells` at the working resolution (sizes scaled to
   it), then the label maps resized (nearest) to H x W.

Returns ``(cell, nucleus)`` int32 label maps: 0 = background, the nucleus of cell k has id k.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import config
from common.augment import dihedral, undo_dihedral
from common.constants import BLUE, HPA_SEG_DIR, RED, YELLOW
from common.segmentation.dpn_unet import normalize
from common.segmentation.hpa.postprocess import OFFICIAL_SCALE, label_cells
from common.segmentation.hpa.weights import available, load_hpa_model

SCALE = OFFICIAL_SCALE            # input -> working resolution (the official scale_factor)
PAD_TOP_LEFT = 32                 # official padding: 32 px at the top and left, the rest bottom/right
MULTIPLE = 32                     # the network needs H, W multiples of this
GAUSS_TRUNCATE = 4.0              # scipy.ndimage.gaussian_filter's default truncation (sigmas)


def working_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """``skimage.transform.rescale``'s output size: round half to even, at least 1."""
    return max(1, int(np.round(h * scale))), max(1, int(np.round(w * scale))),


def _gaussian_kernel(sigma: float, radius: int, device, dtype) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def rescale(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, h, w) like ``skimage.transform.resize(anti_aliasing=None)``.

    When shrinking an axis by factor f = in/out: Gaussian of sigma (f - 1) / 2 (truncated at 4 sigma,
    mirror borders), then linear interpolation at pixel centres (align_corners=False), clipped to the
    input's range.
    """
    h_in, w_in = x.shape[-2:]
    if (h_in, w_in) == tuple(size):
        return x
    lo, hi = x.amin(dim=(-2, -1), keepdim=True), x.amax(dim=(-2, -1), keepdim=True)
    for axis, (n_in, n_out) in enumerate(((h_in, size[0]), (w_in, size[1]))):
        sigma = max(0.0, (n_in / n_out - 1.0) / 2.0)
        if sigma <= 0:
            continue
        radius = min(int(GAUSS_TRUNCATE * sigma + 0.5), n_in - 1)
        if radius < 1:
            continue
        k = _gaussian_kernel(sigma, radius, x.device, x.dtype)
        c = x.shape[1]
        if axis == 0:
            pad, kshape = (0, 0, radius, radius), (1, 1, -1, 1)
        else:
            pad, kshape = (radius, radius, 0, 0), (1, 1, 1, -1)
        x = F.conv2d(F.pad(x, pad, mode="reflect"), k.view(kshape).repeat(c, 1, 1, 1), groups=c)
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return torch.minimum(torch.maximum(x, lo), hi)


def _reflect_index(n: int, before: int, after: int, device) -> torch.Tensor:
    """Indices of OpenCV BORDER_REFLECT (fedcba|abcdefgh|hgfedcb) padding of an axis of length n."""
    i = torch.arange(-before, n + after, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def pad_amounts(h: int, w: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the official padding, or zeros when h and w are multiples of 32."""
    if h % MULTIPLE == 0 and w % MULTIPLE == 0:
        return 0, 0, 0, 0
    return PAD_TOP_LEFT, MULTIPLE - h % MULTIPLE, PAD_TOP_LEFT, MULTIPLE - w % MULTIPLE


def pad_reflect(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    top, bottom, left, right = pads
    if not any(pads):
        return x
    h, w = x.shape[-2:]
    x = x.index_select(-2, _reflect_index(h, top, bottom, x.device))
    return x.index_select(-1, _reflect_index(w, left, right, x.device))


def resize_nearest(labels: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour (pixel-centre) resize of a label map; ids unchanged."""
    sh, sw = labels.shape
    if (sh, sw) == (h, w):
        return labels
    rows = np.minimum(((np.arange(h) + 0.5) * sh / h).astype(np.int64), sh - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * sw / w).astype(np.int64), sw - 1)
    return labels[np.ix_(rows, cols)]


class HPASegmenter:
    """Cells and nuclei by the official HPA networks; ``segment(images) -> [(cell, nucleus)]``.

    ``weights_dir``: the folder with ``dpn_unet_nuclei_v1`` and ``dpn_unet_cell_3ch_v1`` as ``.safetensors``
    (preferred) or ``.pth``. ``scale``: input -> working resolution (0.25 = the official value for raw
    HPA images; use 1.0 for images already at a quarter of the raw size). ``input_scale``: input pixels
    per raw-image pixel (1.0 raw; 0.25 for 512 px versions of 2048 px images); it only scales the sizes of
    the post-processing. ``tta``: 8-way flip/transpose averaging of the cell network. ``amp``: float16
    autocast, on CUDA only. ``models``: a ``(nuclei, cell)`` pair of networks to use instead of files.
    """

    name = "hpa"

    def __init__(self, weights_dir: str | Path = HPA_SEG_DIR, device: str | torch.device = "auto",
                 tta: bool = False, batch_size: int = 4, scale: float = SCALE, amp: bool = True,
                 input_scale: float = 1.0, models: tuple[torch.nn.Module, torch.nn.Module] | None = None):
        if scale <= 0 or input_scale <= 0 or batch_size < 1:
            raise ValueError("scale and input_scale must be > 0 and batch_size >= 1")
        self.device = config.resolve_device(device)
        self.tta, self.batch_size, self.scale, self.input_scale = bool(tta), int(batch_size), float(scale), \
            float(input_scale)
        self.amp = bool(amp) and self.device.type == "cuda"
        if models is None:
            if not available(weights_dir):
                raise FileNotFoundError(
                    f"HPA segmentation weights not found in {weights_dir}: need dpn_unet_nuclei_v1 and "
                    "dpn_unet_cell_3ch_v1 (.safetensors or .pth); see README 'Official HPA segmentation'")
            models = (load_hpa_model(weights_dir, "nuclei", self.device),
                      load_hpa_model(weights_dir, "cell", self.device))
        self.nuclei_model, self.cell_model = (m.to(self.device).eval() for m in models)
        if self.device.type == "cuda":
            for m in (self.nuclei_model, self.cell_model):
                m.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ networks
    @torch.no_grad()
    def _probs(self, model: torch.nn.Module, x: torch.Tensor, tta: bool) -> torch.Tensor:
        """Softmax probabilities (B, 3, h, w) float32 of a padded, normalised batch."""
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        views = range(8) if tta else (0,)
        out = None
        for k in views:
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                logits = model(dihedral(x, k))
            p = undo_dihedral(logits.float().softmax(dim=1), k)
            out = p if out is None else out + p
        return out / len(views)

    @torch.no_grad()
    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Per image a (4, h, w) float32 array at the working resolution:
        nuclei border, nuclei interior, cell border, cell interior (softmax channels 1 and 2)."""
        out: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, img in enumerate(images):
            if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 4
                    and img.dtype in (np.uint8, np.uint16)):
                got = getattr(img, "shape", None), getattr(img, "dtype", type(img).__name__)
                raise ValueError(f"image {i}: expected an H x W x 4 uint8 RGBY array, got {got}")
            groups[(img.shape[:2], img.dtype.str)].append(i)
        for ((h_in, w_in), _), idx in groups.items():
            h, w = working_size(h_in, w_in, self.scale)
            pads = pad_amounts(h, w)
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s:s + self.batch_size]
                arr = np.stack([images[i][..., [RED, YELLOW, BLUE]] for i in chunk])
                peak = 255.0 if arr.dtype == np.uint8 else 65535.0
                x = torch.from_numpy(arr).to(self.device).permute(0, 3, 1, 2).float() / peak
                x = rescale(x, (h, w))
                cell_in = pad_reflect(normalize(x), pads)
                nuc_in = pad_reflect(normalize(x[:, 2:3].expand(-1, 3, -1, -1)), pads)
                top, left = pads[0], pads[2]
                pn = self._probs(self.nuclei_model, nuc_in, False)[:, 1:, top:top + h, left:left + w]
                pc = self._probs(self.cell_model, cell_in, self.tta)[:, 1:, top:top + h, left:left + w]
                both = torch.cat([pn, pc], dim=1).cpu().numpy()
                for j, i in enumerate(chunk):
                    out[i] = both[j]
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ labels
    def postprocess(self, probs: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``(cell, nucleus)`` int32 at ``out_hw`` from one :meth:`predict` output."""
        cell, nucleus = label_cells(probs[0], probs[1], probs[2], probs[3],
                                    pixel_scale=self.scale * self.input_scale)
        return resize_nearest(cell, *out_hw), resize_nearest(nucleus, *out_hw)

    def segment(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(cell, nucleus)]``: int32 label maps at each image's H x W; nucleus k lies in cell k."""
        images = list(images)
        probs = self.predict(images)
        return [self.postprocess(p, img.shape[:2]) for p, img in zip(probs, images)]
