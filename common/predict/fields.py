"""Fields of view from a folder of one's own images (S5 ``--IMAGES``): found, read, made square; and S5's
two image sources behind one interface (``FieldSource`` for such a folder, ``ImageSource`` for the
competition's test images; see "sources" below).

Layouts (one folder, files side by side; hidden files and other extensions are ignored):

* one file per channel, ``{ID}{suffix}{ext}``: the four ``suffixes`` name the microtubule, protein,
  nucleus and ER channels in the canonical order (``constants.CHANNELS``); the competition's
  ``_red, _green, _blue, _yellow`` by default, ``ext`` any of ``images.CHANNEL_EXTS``;
* one multi-channel TIFF per field, ``{ID}.tif`` / ``{ID}.tiff``: ``planes`` says which plane holds
  each channel. The plane axis: the axis that is not Y or X in tifffile's series axes (``CYX``,
  ``QYX``, ``YXS``, ...; singleton axes dropped); when the axes do not name Y and X, the smaller of
  the first and the last axis (``C x H x W`` or ``H x W x C``). An axis tifffile calls Z (depth) or
  T (time) is never taken as channels: the field is refused, unless ``z_plane`` (TIFF_Z_PLANE >= 0)
  picks that plane of it.
* an OME-Zarr plate, the folder itself or folders in it (:mod:`common.predict.plates`): ID
  ``{plate}_{well}_{field}``; an OME-TIFF ``{ID}.ome.tif`` is a multi-channel TIFF. With ``names``
  (CHANNEL_NAMES) the channels of both are picked by their names in the OME metadata, not by ``planes``.

A file name ending in a suffix is a channel file (the longest matching suffix); another ``.tif`` /
``.tiff`` is a multi-channel TIFF. The ID is the rest of the name: any printable name (spaces, accents,
a leading '-'; ``constants.own_id_problem``); the files made from it are named by
``constants.file_stem``. A name that is not UTF-8 is a failure shown escaped (``constants.shown_name``).

Pixel values (:func:`read_field`), nothing clipped silently: a field may declare at most
``max_pixels`` values in its files' headers (``images.PixelBudget``, checked before decoding). 8-bit as
it is; integer files (16-bit, or signed / 32-bit holding 0..65535) at the field's bit depth, the
smallest of ``DEPTHS`` above its brightest value, scaled to 16 bits and then proportionally to 8
(``images.to_uint8``): 12-bit data in 16-bit files read as if scaled to the full range; floats in [0, 1]
as ``round(x * 255)``. Refused with the reason: NaN or inf, floats outside [0, 1], negative values,
values beyond 16 bits, and a field whose brightest 8-bit value is below ``DIM_BELOW`` ("looks dim").
With ``rescale`` (percentiles) each channel is stretched instead (:func:`stretch`), any range.

Any size: a non-square field is padded with zeros at the bottom and right to a square before
``fov.prepare`` (the working image and the models are square), and its original-size label map is
cut back to ``H x W``; a square field is unchanged. A field that cannot be used (bad ID, two files
for one ID or channel, a channel missing or unreadable, too few planes, channels of other sizes) is a
failure with its reason; the others go on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from common import config, constants, fov, images, io, segmentation
from common.constants import CHANNELS, own_id_problem, shown_name
from common.predict import plates
from common.resize import resize_labels

TIFF_EXTS = (".tif", ".tiff")
OME_TIFF = ".ome"              # an OME-TIFF's name: {ID}.ome.tif / {ID}.ome.tiff
DEPTHS = (8, 10, 12, 14, 16)   # bit depths an integer field may have: the smallest above its brightest value
DIM_BELOW = 16                 # a field whose brightest value, read at 8 bits, is below this looks dim


class FieldFailed(Exception):
    """One field could not be read or segmented; S5 lists it with this reason and goes on."""


@dataclass(frozen=True)
class Field:
    """A field of view found in a folder: one multi-channel TIFF, one file per channel (RGBY), or a
    plate's field (``plate``; ``files``: its image group)."""

    image_id: str
    files: tuple[Path, ...]
    plate: plates.PlateField | None = None


# ----------------------------------------------------------------------------- finding
def _split_ext(name: str) -> tuple[str, str] | None:
    low = name.lower()
    for ext in sorted(images.CHANNEL_EXTS, key=len, reverse=True):
        if low.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    return None


def _classify(folder: Path, suffixes: list[str]) -> tuple[dict, dict]:
    """``{ID: [tiff paths]}`` and ``{ID: {channel index: [paths]}}`` of the files in ``folder``."""
    tiffs: dict[str, list[Path]] = {}
    chans: dict[str, dict[int, list[Path]]] = {}
    order = sorted(range(len(suffixes)), key=lambda k: -len(suffixes[k]))
    for path in sorted(folder.iterdir()):
        split = _split_ext(path.name) if path.is_file() and not path.name.startswith(".") else None
        if split is None:
            continue
        stem, ext = split
        k = next((k for k in order if suffixes[k] and stem.endswith(suffixes[k])
                  and len(stem) > len(suffixes[k])), None)
        if k is not None:
            chans.setdefault(stem[: -len(suffixes[k])], {}).setdefault(k, []).append(path)
        elif ext in TIFF_EXTS:
            ome = stem.lower().endswith(OME_TIFF) and len(stem) > len(OME_TIFF)
            tiffs.setdefault(stem[: -len(OME_TIFF)] if ome else stem, []).append(path)
    return tiffs, chans


def _problem(image_id: str, tiffs: list[Path], chans: dict[int, list[Path]], suffixes: list[str],
             placed: list[plates.PlateField]) -> str:
    """Why the files (and plate fields) found for ``image_id`` make no field ("" when they do)."""
    names = [shown_name(p.name) for p in [*tiffs, *(p for k in sorted(chans) for p in chans[k])]]
    names += [shown_name(p.where) for p in placed]
    why = own_id_problem(image_id)
    if why:
        return f"the name {names[0]} {why}"
    if sum(map(bool, (tiffs, chans, placed))) > 1:
        return "two layouts claim this ID: " + ", ".join(names)
    if len(tiffs) > 1 or len(placed) > 1:
        what = "multi-channel TIFFs" if tiffs else "plate fields"
        return f"several {what} claim this ID: " + ", ".join(names)
    twice = [k for k in sorted(chans) if len(chans[k]) > 1]
    if twice:
        return (f"two files for the {CHANNELS[twice[0]]} channel ({suffixes[twice[0]]}): "
                + ", ".join(p.name for p in chans[twice[0]]))
    missing = [k for k in range(len(CHANNELS)) if k not in chans]
    if chans and missing:
        return "channel file missing: " + ", ".join(
            f"{image_id}{suffixes[k]}.* ({CHANNELS[k]})" for k in missing)
    return ""


def discover(folder: str | Path, suffixes: list[str]) -> tuple[list[Field], list[dict]]:
    """The fields of ``folder`` sorted by ID (its files, the OME-Zarr plates in it, or the fields of the
    plate it is), and the failures (``{"ID", "reason"}``) of the IDs whose files make no field. Raises
    ValueError (naming the folder and what was looked for) when the folder does not exist or holds no
    recognisable field."""
    folder = Path(folder)
    if len(suffixes) != len(CHANNELS) or len(set(suffixes)) != len(suffixes):
        raise ValueError(f"CHANNEL_SUFFIXES {suffixes}: give {len(CHANNELS)} different file-name endings")
    looked = (f"one file per channel {{ID}}{{{','.join(suffixes)}}}.{{png,jpg,tif,...}}, one "
              "multi-channel {ID}.tif/.tiff/.ome.tif or an OME-Zarr plate")
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder (looked for {looked})")
    placed, failures = plates.find(folder)
    tiffs, chans = ({}, {}) if plates.is_plate(folder) else _classify(folder, list(suffixes))
    found = []
    for image_id in sorted(set(tiffs) | set(chans) | set(placed)):
        t, c, z = tiffs.get(image_id, []), chans.get(image_id, {}), placed.get(image_id, [])
        why = _problem(image_id, t, c, list(suffixes), z)
        if why:
            failures.append({"ID": shown_name(image_id), "reason": why})
        elif z:
            found.append(Field(image_id, (z[0].group,), z[0]))
        else:
            found.append(Field(image_id, tuple(t) if t else tuple(c[k][0] for k in range(len(CHANNELS)))))
    if not found and not failures:
        raise ValueError(f"{folder}: no field of view found (looked for {looked})")
    return found, failures


# ----------------------------------------------------------------------------- reading
def tiff_planes(path: str | Path, z_plane: int, budget: images.PixelBudget | None = None) -> np.ndarray:
    """The planes of a multi-channel TIFF as ``P x H x W`` (see the module docstring for the axis); a Z
    or T axis gives its plane ``z_plane``, or is refused (``z_plane`` < 0)."""
    path = Path(path)
    arr, axes = images.read_planes(path, budget)
    keep = [i for i, n in enumerate(arr.shape) if n != 1]
    arr, axes = arr.squeeze(), "".join(axes[i] for i in keep) if len(axes) == arr.ndim else ""
    for a in (a.upper() for a in plates.STACK_AXES if a.upper() in axes):  # Z, then T: never channels
        i = axes.index(a)
        plane = plates.stack_plane(a, arr.shape[i], z_plane, path.name, axes)
        arr, axes = arr[(slice(None),) * i + (plane,)], axes[:i] + axes[i + 1:]
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise io.ImageReadError(f"{path}: shape {arr.shape} (axes {axes or '?'}): expected one plane per "
                                "channel, C x H x W or H x W x C")
    if "Y" in axes and "X" in axes:
        axis = next(i for i, a in enumerate(axes) if a not in "YX")
    else:
        axis = 0 if arr.shape[0] <= arr.shape[2] else 2
    return np.moveaxis(arr, axis, 0)


def stretch(channel: np.ndarray, percentiles: list[float]) -> np.ndarray:
    """A channel stretched to uint8: ``percentiles[0]`` -> 0, ``percentiles[1]`` -> 255, clipped there
    (the stretch saturates by design). NaN or inf, or a type other than integers and floats, is an
    ``io.ImageReadError``."""
    if not (np.issubdtype(channel.dtype, np.integer) or np.issubdtype(channel.dtype, np.floating)):
        raise io.ImageReadError(f"pixel type {channel.dtype} is not read (integers or floats only)")
    if not all(np.isfinite(images.value_range(channel))):
        raise io.ImageReadError("holds NaN or infinite values")
    lo, hi = np.percentile(channel, [float(percentiles[0]), float(percentiles[1])])
    if hi <= lo:
        return np.zeros(channel.shape, np.uint8)
    lo, k = np.float32(lo), np.float32(255.0 / (hi - lo))
    return images.blockwise(channel, lambda b: np.clip(np.rint((b.astype(np.float32) - lo) * k), 0, 255))


def field_bits(chans: list[np.ndarray]) -> int | None:
    """The bit depth the integer channels of a field are read at: the smallest of ``DEPTHS`` above
    their brightest value (16 beyond; None when no channel is an integer type wider than 8 bits)."""
    wide = [c for c in chans if np.issubdtype(c.dtype, np.integer) and c.dtype != np.uint8]
    if not wide:
        return None
    top = max(images.value_range(c)[1] for c in wide)
    return next((b for b in DEPTHS if top < 2 ** b), 16)


def _channels(f: Field, planes: list[int], names: list[str], z_plane: int,
              budget: images.PixelBudget) -> tuple[list[np.ndarray], list[str]]:
    """The four channels of a field (2-D, dtype as stored) and how messages name each: by CHANNEL_NAMES
    (``names``) from a plate's or an OME-TIFF's metadata, else by TIFF_PLANES (``planes``)."""
    if f.plate is not None:
        return plates.read_plate_field(f.plate, names, planes, z_plane, budget)
    if len(f.files) == 1:
        path = f.files[0]
        labels = plates.ome_channel_names(path) if names else None
        stack = tiff_planes(path, z_plane, budget)
        picked = plates.channel_indices(labels, names, planes, len(stack), path.name)
        return [stack[p] for p in picked], [f"{path.name} plane {p}" for p in picked]
    return [images.read_gray(path, budget) for path in f.files], [p.name for p in f.files]


def _to_uint8(chans: list[np.ndarray], names: list[str], bits: int | None) -> np.ndarray:
    out = np.empty((*chans[0].shape, len(chans)), np.uint8)
    for k, (c, name) in enumerate(zip(chans, names)):
        why = images.value_problem(c, bits or 16)
        if why:  # RESCALE stretches any finite integers or floats
            numbers = np.issubdtype(c.dtype, np.integer) or np.issubdtype(c.dtype, np.floating)
            rescalable = numbers and all(np.isfinite(images.value_range(c)))
            raise io.ImageReadError(f"{name}: {why}" + (": use --RESCALE true to stretch it to 0..255"
                                                         if rescalable else ""))
        out[..., k] = images.to_uint8(c, bits or 16)
    top = int(out.max(initial=0))
    if top < DIM_BELOW:
        raise io.ImageReadError(f"looks dim: brightest value {top} of 255 at 8 bits: use --RESCALE true")
    return out


def read_field(f: Field, planes: list[int], rescale: list[float] | None, z_plane: int,
               max_pixels: int, names: list[str]) -> tuple[np.ndarray, int | None]:
    """``H x W x 4`` uint8 RGBY of a field by the rules of the module docstring, and the bit depth its
    integer channels were read at (:func:`field_bits`; None with ``rescale`` or without such channels).
    A reader failure, a refused value, channels of different sizes or more than ``max_pixels`` values
    is an ``io.ImageReadError``."""
    budget = images.PixelBudget(max_pixels)
    try:
        chans, shown = _channels(f, list(planes), list(names), z_plane, budget)
        shapes = [c.shape for c in chans]
        if len(set(shapes)) != 1:
            raise io.ImageReadError("channel sizes differ: " + ", ".join(
                f"{n} {s[0]} x {s[1]}" for n, s in zip(shown, shapes)))
        if rescale:
            return np.stack([stretch(c, rescale) for c in chans], axis=-1), None
        bits = field_bits(chans)
        return _to_uint8(chans, shown, bits), bits
    except MemoryError:
        raise io.ImageReadError(f"too large to decode: {budget.used} pixels (out of memory)") from None


def reason(e: BaseException) -> str:
    """What a failure list says of an exception: its message, else its type (never empty)."""
    return str(e) or type(e).__name__


def pad_square(image: np.ndarray) -> np.ndarray:
    """``image`` padded with zeros at the bottom and right to a square (the same array when square)."""
    h, w = image.shape[:2]
    if h == w:
        return image
    out = np.zeros((max(h, w), max(h, w), *image.shape[2:]), image.dtype)
    out[:h, :w] = image
    return out


def region(hw: tuple[int, int], side: int) -> tuple[int, int]:
    """The part ``(rows, columns)`` of a ``side``-px working map that an ``H x W`` field padded by
    :func:`pad_square` covers."""
    h, w = int(hw[0]), int(hw[1])
    s = max(h, w)
    return max(1, round(h * side / s)), max(1, round(w * side / s))


# ----------------------------------------------------------------------------- sources
# S5's two image sources share one interface: ``ids`` (the fields to score, in order), ``load(id)`` (a
# prepared ``fov.FieldOfView`` with ``hw`` and ``region`` set, the original in it when asked for), ``sizes``
# (``(H, W)`` of the fields known), ``table()`` (the submission's ID and size rows), ``failures`` (fields
# that could not be used before any was loaded), ``n_segmented`` and ``inputs(id)`` (the files a field is
# read from: a resumed S5 scores a chunk again when they changed, ``parts.signature``).
class FieldSource:
    """S5's images from ``cfg["IMAGES"]``: each field read, padded square, segmented by ``fov.prepare``
    (the SEGMENTER constants). ``sizes`` holds ``(H, W)`` of every field read."""

    def __init__(self, cfg, found: list[Field], failures: list[dict], segment: bool = True):
        self.fields = {f.image_id: f for f in found}
        self.ids, self.failures = [f.image_id for f in found], list(failures)
        self.planes, self.size, self.seg_at = list(cfg["TIFF_PLANES"]), int(cfg["IMAGE_SIZE"]), cfg["SEG_AT"]
        self.names = [str(x) for x in cfg["CHANNEL_NAMES"]]  # a name that looks like a number is read as one
        self.locations = {f.image_id: f.plate.location for f in found if f.plate is not None}
        self.z_plane, self.max_pixels = int(cfg["TIFF_Z_PLANE"]), int(cfg["MAX_PIXELS"])
        self.rescale = list(cfg["RESCALE_PERCENTILES"]) if cfg["RESCALE"] else None
        self.segmenter = segmentation.get_segmenter(cfg["SEGMENTER"], constants.resolve(cfg["HPA_SEG_DIR"]),
                                                    device=cfg["DEVICE"], precision=cfg["SEG_PRECISION"]
                                                    ) if segment else None  # a merge segments nothing
        self.sizes: dict[str, tuple[int, int]] = {}
        self.n_segmented = 0
        self.depths: set[int] = set()  # bit depths below 16 said once each

    def table(self) -> None:
        """No fixed rows: the submission holds every field that was read, with its size (S5 takes them from
        its parts, whichever process read the field)."""
        return None

    def location_columns(self, ids: list[str]) -> pd.DataFrame | None:
        """``image, plate, well, field`` of ``ids`` for ``cell_tables.with_location`` (None: no field is a
        plate's; :func:`plates.location_frame`)."""
        return plates.location_frame(self.locations, ids)

    def inputs(self, image_id: str) -> list[Path]:
        """The field's files (a plate's field: its image group, a folder)."""
        return list(self.fields[image_id].files)

    def load(self, image_id: str) -> fov.FieldOfView:
        try:
            original, bits = read_field(self.fields[image_id], self.planes, self.rescale, self.z_plane,
                                        self.max_pixels, self.names)
        except Exception as e:  # noqa: BLE001 - any reader failure is this field's
            raise FieldFailed(reason(e)) from e
        if bits is not None and bits < 16 and bits not in self.depths:
            self.depths.add(bits)
            tqdm.write(f"S5: {image_id} (and any other such field): integer values below {2 ** bits}, read "
                       f"as {bits}-bit data, scaled to the full range (--RESCALE true stretches instead)")
        h, w = hw = original.shape[:2]
        self.sizes[image_id] = hw
        try:
            f = fov.prepare([pad_square(original)], self.size, self.segmenter, self.seg_at, full=True)[0]
        except Exception as e:  # noqa: BLE001
            what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise FieldFailed(f"segmentation failed: {what}") from e
        self.n_segmented += 1
        return fov.FieldOfView(f.image, f.cell, f.nucleus, hw, f.cell_full[:h, :w], f.nucleus_full[:h, :w],
                               original, region(hw, f.cell.shape[0]))


class ImageSource:
    """The competition's test images (``sample``: the sample submission, its IDs and sizes) at the working
    resolution, from S2 or made here (at S2's working size: from S2's saved constants under HPA512_DIR,
    else the runs' ``S2_IMAGE_SIZE``, else IMAGE_SIZE); the original read too with ``keep_original``."""

    def __init__(self, cfg, sample: pd.DataFrame, run_configs: list[dict], keep_original: bool):
        self.run_configs = list(run_configs)  # the runs' saved constants (their S2_IMAGE_SIZE)
        self.sample, self.keep_original, self.failures = sample, keep_original, []
        self.ids = [str(i) for i in sample["ID"]]
        self.sizes = {str(i): (int(h), int(w)) for i, h, w in
                      zip(sample["ID"], sample["ImageHeight"], sample["ImageWidth"])}
        self.hpa = constants.resolve(cfg["HPA512_DIR"])
        self.test_dir = constants.resolve(cfg["COMPETITION_DIR"]) / "test"
        self.size, self.segmenter_name = int(cfg["IMAGE_SIZE"]), cfg["SEGMENTER"]
        self.seg_dir, self.device = constants.resolve(cfg["HPA_SEG_DIR"]), cfg["DEVICE"]
        self.precision = cfg["SEG_PRECISION"]
        self.seg_at, self.max_pixels = cfg["SEG_AT"], cfg["MAX_PIXELS"]
        try:
            fov.resolve_seg_at(self.seg_at, "hpa")  # a bad value stops here, not at the first image
        except ValueError as e:
            raise SystemExit(f"S5: --{e}") from None
        self._segmenter = None
        self.n_segmented = 0

    def table(self) -> pd.DataFrame:
        """The submission's fixed rows: the sample submission's, in its order."""
        return self.sample

    def location_columns(self, ids: list[str]) -> None:
        """The competition's images lie on no plate."""
        return None

    def inputs(self, image_id: str) -> list[Path]:
        """S2's working image and masks of the image, and its original channel files (those that exist
        count: :func:`load` reads S2's when they are there, else the original)."""
        mask = self.hpa / "test_cell_mask" / f"{image_id}.npz"
        return [self.hpa / "test" / f"{image_id}.png", mask, fov.full_mask_path(mask),
                *(images.channel_path(self.test_dir, image_id, ch) for ch in CHANNELS)]

    def _s2_size(self) -> int:
        """S2's working size, and where it comes from, said once; another IMAGE_SIZE is a warning."""
        s2 = config.saved_s2(self.hpa)
        # S2_IMAGE_SIZE: in the config of runs trained since S3 / S4.2 recorded it (an older run's lacks it)
        sizes = [int(saved["S2_IMAGE_SIZE"]) for saved in self.run_configs if saved.get("S2_IMAGE_SIZE")]
        if s2:
            size, src = int(s2[0]["IMAGE_SIZE"]), f"S2's saved constants ({s2[1]})"
        elif sizes:
            size, src = sizes[0], f"the runs' configs (S2_IMAGE_SIZE {sorted(set(sizes))})"
        else:
            size, src = self.size, "IMAGE_SIZE (S2's saved constants and the runs' configs lack it)"
        if size != self.size:
            print(f"S5: warning: S2 worked at {size} px ({src}), IMAGE_SIZE is {self.size}: segmenting at "
                  f"{size} px, as S2 did", flush=True)
        print(f"S5: segmenting at {size} px: S2's working size, from {src}", flush=True)
        return size

    def _original(self, image_id: str) -> np.ndarray | None:
        """The original image when its files are there (None when not); an unreadable one fails."""
        if images.channel_path(self.test_dir, image_id, "red").is_file():
            try:
                return images.read_image(self.test_dir, image_id, self.max_pixels)
            except Exception as e:  # noqa: BLE001 - any reader failure is this image's
                raise FieldFailed(reason(e)) from e
        return None

    def _cached(self, image_id: str) -> fov.FieldOfView | None:
        """S2's working image and masks of ``image_id`` (None when S2 made none); raises when unreadable."""
        small = self.hpa / "test" / f"{image_id}.png"
        mask_path = self.hpa / "test_cell_mask" / f"{image_id}.npz"
        if not (small.is_file() and mask_path.is_file()):
            return None
        image, labels = images.read_rgby(small), images.load_masks(mask_path)[0]
        full_path = fov.full_mask_path(mask_path)
        full = images.load_masks(full_path)[0] if full_path.is_file() else None
        if labels.shape != image.shape[:2]:
            labels = resize_labels(labels, image.shape[:2])
        return fov.FieldOfView(image, labels, None, self.sizes[image_id], full)

    def load(self, image_id: str) -> fov.FieldOfView:
        """S2's files when they are there and readable, else prepared from the original (a corrupt cache
        file is noted and made again here). An unreadable or unsegmentable image raises
        :class:`FieldFailed`."""
        try:
            cached = self._cached(image_id)
        except Exception as e:  # noqa: BLE001 - a corrupt cache: the original may still be intact
            if not images.channel_path(self.test_dir, image_id, "red").is_file():
                raise FieldFailed(reason(e)) from e
            tqdm.write(f"S5: {image_id}: S2's file is unreadable ({e}); preparing it again from the original")
            cached = None
        if cached is not None:
            cached.original = self._original(image_id) if self.keep_original else None
            return cached
        try:
            original = images.read_image(self.test_dir, image_id, self.max_pixels)  # names a missing file
        except Exception as e:  # noqa: BLE001 - any reader failure is this image's
            raise FieldFailed(reason(e)) from e
        if self._segmenter is None:  # a segmenter that cannot be built stops S5; one image failing does not
            self._segmenter = segmentation.get_segmenter(self.segmenter_name, self.seg_dir,
                                                         device=self.device, precision=self.precision)
            self.size = self._s2_size()
            print(f"S5: segmenting test images without an S2 mask with '{self._segmenter.name}' "
                  f"(common.fov, as S2)", flush=True)
        try:
            f = fov.prepare([original], self.size, self._segmenter, self.seg_at, full=True)[0]
        except Exception as e:  # noqa: BLE001
            raise FieldFailed(f"segmentation failed: {type(e).__name__}: {e}") from e
        self.n_segmented += 1
        f.hw, f.original = self.sizes[image_id], original
        return f
