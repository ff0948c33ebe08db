"""The official HPA cell segmentation (nuclei + 3-channel cell DPN U-Nets), batched.

Per field of view (handed as an H x W x 4 uint8 RGBY image of any size, with its ORIGINAL size):

1. the network input is the original image scaled by ``scale`` (0.25, the official value), whatever
   size the handed image has: a handed original is scaled exactly like ``skimage.transform.rescale``
   with its defaults (Gaussian anti-aliasing with sigma = (factor - 1) / 2, then bilinear at pixel
   centres), on the device; a handed 512-px copy of a 2048-px image is already at that size;
2. nuclei network input = blue in all three channels; cell network input = (red, yellow, blue);
   normalised per channel as ``(255 x - (124, 117, 104)) * 0.0167``;
3. when the working size is not a multiple of 32: reflect-pad (edge pixel repeated) by 32 at the top
   and left and by ``32 - n mod 32`` at the bottom and right (the official ``padding=True``), crop after;
4. both networks in eval mode, in float32 on a CPU (``precision="fp32"``, the truth path; float16 AMP
   on CUDA, ``amp``) or under bfloat16 autocast (``precision="bf16"``: CPUs with AMX or AVX-512-BF16, and
   CUDA; labels may then differ from the official cells); softmax; optional 8-way flip/transpose TTA of
   the cell network (the mean of the probabilities);
5. :func:`~common.segmentation.hpa.postprocess.label_from_maps`: the maps brought to the original size
   the official way and labelled there by the official ``label_cell`` (``label_at="original"``, the
   default), or labelled at the network's size and resized (``label_at="working"``, the fast path).

Returns ``(cell, nucleus)`` uint16 label maps at the original size: 0 = background, nucleus k in cell k.
"""
from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.constants import BLUE, HPA_SEG_DIR, RED, YELLOW
from common.device import resolve_device
from common.segmentation.dpn_unet import normalize
from common.segmentation.hpa.postprocess import OFFICIAL_SCALE, label_from_maps
from common.segmentation.hpa.weights import available, load_hpa_model
from common.tta import dihedral, undo_dihedral

SCALE = OFFICIAL_SCALE            # input -> working resolution (the official scale_factor)
PAD_TOP_LEFT = 32                 # official padding: 32 px at the top and left, the rest bottom/right
MULTIPLE = 32                     # the network needs H, W multiples of this
GAUSS_TRUNCATE = 4.0              # scipy.ndimage.gaussian_filter's default truncation (sigmas)
LABEL_AT = "original"             # where label_cell runs: original (official) | working (fast, not the truth)
PRECISIONS = ("fp32", "bf16")     # the networks' arithmetic: float32 (the truth path) | bfloat16 autocast


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
    input's range. The Gaussian runs on channels-last tensors: the same numbers as on contiguous ones
    (tests/test_hpa_seg.py checks it), a fraction of the time.
    """
    h_in, w_in = x.shape[-2:]
    if (h_in, w_in) == tuple(size):
        return x
    lo, hi = x.amin(dim=(-2, -1), keepdim=True), x.amax(dim=(-2, -1), keepdim=True)
    x = x.contiguous(memory_format=torch.channels_last)  # the same sums, several times faster on a CPU
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
    x = F.interpolate(x.contiguous(), size=tuple(size), mode="bilinear", align_corners=False)
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




class HPASegmenter:
    """Cells and nuclei by the official HPA networks; ``segment(images, sizes) -> [(cell, nucleus)]``.

    ``weights``: the folder with ``dpn_unet_nuclei_v1`` and ``dpn_unet_cell_3ch_v1`` as ``.safetensors``
    (preferred) or ``.pth``, or a ``(nuclei, cell)`` pair of networks to use instead. ``scale``: original
    -> network resolution (0.25, the official value); it is applied to the ORIGINAL size of each field of
    view (``sizes`` of :meth:`segment`), whatever size the handed image has. ``label_at``: ``original``
    (the official ``label_cell`` at the original size) or ``working`` (at the network's size, sizes
    scaled: faster, cells ~15 % smaller). ``tta``: 8-way flip/transpose averaging of the cell network.
    ``precision``: ``fp32`` (float16 autocast on CUDA, exact float32 on the CPU) or ``bf16`` (bfloat16
    autocast and channels-last tensors, on CPU and CUDA). ``post_workers``: processes that run the
    post-processing of a batch in parallel (it holds the GIL; 1 = in this process).
    """

    name = "hpa"
    uses_original_size = True     # the network scale is taken from the original size (common.fov)

    def __init__(self, weights: str | Path | tuple[torch.nn.Module, torch.nn.Module] = HPA_SEG_DIR,
                 device: str | torch.device = "auto", tta: bool = False, batch_size: int = 4,
                 scale: float = SCALE, label_at: str = LABEL_AT, post_workers: int = 1,
                 precision: str = "fp32"):
        if scale <= 0 or batch_size < 1:
            raise ValueError("scale must be > 0 and batch_size >= 1")
        if label_at not in ("original", "working"):
            raise ValueError(f"label_at {label_at!r}: choose original or working")
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: choose one of {PRECISIONS}")
        self.device = resolve_device(device)
        self.tta, self.batch_size, self.scale = bool(tta), int(batch_size), float(scale)
        self.label_at = label_at
        self.post_workers, self._pool = max(1, int(post_workers)), None
        self.precision = precision
        self.amp = self.device.type == "cuda" and precision == "fp32"  # float16 autocast: CUDA's fp32 path
        self.channels_last = self.device.type == "cuda" or precision == "bf16"
        self._autocast = {"dtype": torch.bfloat16 if precision == "bf16" else torch.float16,
                          "enabled": self.amp or precision == "bf16"}
        models = weights
        if isinstance(weights, (str, Path)):
            if not available(weights):
                raise FileNotFoundError(
                    f"HPA segmentation weights not found in {weights}: need dpn_unet_nuclei_v1 and "
                    "dpn_unet_cell_3ch_v1 (.safetensors or .pth); see docs/SEGMENTATION.md")
            models = tuple(load_hpa_model(weights, net, self.device) for net in ("nuclei", "cell"))
        self.nuclei_model, self.cell_model = (m.to(self.device).eval() for m in models)
        if self.channels_last:
            for m in (self.nuclei_model, self.cell_model):
                m.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ networks
    @torch.no_grad()
    def _probs(self, model: torch.nn.Module, x: torch.Tensor, tta: bool) -> torch.Tensor:
        """Softmax probabilities (B, 3, h, w) float32 of a padded, normalised batch."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        views = range(8) if tta else (0,)
        out = None
        for k in views:
            with torch.autocast(self.device.type, **self._autocast):
                logits = model(dihedral(x, k))
            p = undo_dihedral(logits.float().softmax(dim=1), k)
            out = p if out is None else out + p
        return out / len(views)

    @torch.no_grad()
    def predict(self, images: list[np.ndarray], sizes: list[tuple[int, int]] | None = None
                ) -> list[np.ndarray]:
        """Per image a (4, h, w) float32 array at the network's resolution ``scale x`` the original size
        (``sizes[i]``, default the image's own size): nuclei border, nuclei interior, cell border, cell
        interior (softmax channels 1 and 2)."""
        out: list[np.ndarray | None] = [None] * len(images)
        sizes = [img.shape[:2] for img in images] if sizes is None else [tuple(s) for s in sizes]
        if len(sizes) != len(images):
            raise ValueError(f"{len(images)} images but {len(sizes)} sizes")
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, img in enumerate(images):
            if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 4
                    and img.dtype in (np.uint8, np.uint16)):
                got = getattr(img, "shape", None), getattr(img, "dtype", type(img).__name__)
                raise ValueError(f"image {i}: expected an H x W x 4 uint8 RGBY array, got {got}")
            target = working_size(int(sizes[i][0]), int(sizes[i][1]), self.scale)
            groups[(img.shape[:2], img.dtype.str, target)].append(i)
        for (_, _, (h, w)), idx in groups.items():
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
    def _post_args(self, probs: np.ndarray, out_hw: tuple[int, int]) -> tuple:
        zero = np.zeros_like(probs[0])
        nuclei = np.stack([zero, probs[0], probs[1]], axis=-1)
        cell = np.stack([zero, probs[2], probs[3]], axis=-1)
        label_hw = None if self.label_at == "original" else tuple(probs.shape[1:])
        return nuclei, cell, tuple(out_hw), label_hw

    def postprocess(self, probs: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``(cell, nucleus)`` uint16 at ``out_hw`` (the original size) from one :meth:`predict` output."""
        return label_from_maps(*self._post_args(probs, out_hw))

    def close(self) -> None:
        """Stop the post-processing processes (started on the first batch when ``post_workers > 1``)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def segment(self, images: list[np.ndarray], sizes: list[tuple[int, int]] | None = None
                ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(cell, nucleus)]`` at each field of view's original size ``sizes[i]`` (default: the handed
        image's size); nucleus k lies in cell k."""
        images = list(images)
        sizes = [img.shape[:2] for img in images] if sizes is None else [tuple(s) for s in sizes]
        probs = self.predict(images, sizes)
        if self.post_workers > 1 and len(images) > 1:
            if self._pool is None:  # spawn: the children never touch CUDA state of this process
                self._pool = ProcessPoolExecutor(self.post_workers, mp_context=get_context("spawn"))
            args = [self._post_args(p, hw) for p, hw in zip(probs, sizes)]
            return list(self._pool.map(_label_from_args, args))
        return [self.postprocess(p, hw) for p, hw in zip(probs, sizes)]


def _label_from_args(args: tuple) -> tuple[np.ndarray, np.ndarray]:
    return label_from_maps(*args)
