"""The one place for the facts every step shares: classes, channel order, statistics, paths.

Paths (:func:`resolve`): a relative path constant is taken from the repository root, unless Kaggle
mode is on. Kaggle mode is explicit: the environment variable ``KAGGLE=1`` (a notebook of
tools/make_notebook.py sets it in its setup cell; a terminal run sets it by hand). Then
``input/<name>/...`` is read from ``<KAGGLE_ROOT>/input/<name>/...`` when that dataset is attached,
and every other relative path is taken under ``<KAGGLE_ROOT>/working``. ``KAGGLE_ROOT`` (environment,
default ``/kaggle``) moves the whole tree (tests use a temporary one). The mere existence of a
``/kaggle`` folder changes nothing. Each step prints the decision first (:func:`paths_line`).
"""
from __future__ import annotations

import hashlib
import importlib
import os
import re
import tempfile
from pathlib import Path

# ----------------------------------------------------------------------------- classes
CLASS_NAMES: tuple[str, ...] = (
    "Nucleoplasm",                                # 0
    "Nuclear membrane",                           # 1
    "Nucleoli",                                   # 2
    "Nucleoli fibrillar center",                  # 3
    "Nuclear speckles",                           # 4
    "Nuclear bodies",                             # 5
    "Endoplasmic reticulum",                      # 6
    "Golgi apparatus",                            # 7
    "Intermediate filaments",                     # 8
    "Actin filaments",                            # 9
    "Microtubules",                               # 10
    "Mitotic spindle",                            # 11
    "Centrosome",                                 # 12
    "Plasma membrane",                            # 13
    "Mitochondria",                               # 14
    "Aggresome",                                  # 15
    "Cytosol",                                    # 16
    "Vesicles and punctate cytosolic patterns",   # 17
    "Negative",                                   # 18
)
NUM_CLASSES = len(CLASS_NAMES)                    # 19
PROB_DECIMALS = 6                                 # decimals of the probabilities written to CSV
NEGATIVE = 18                                     # "Negative": no specific staining
MICROTUBULES = 10                                 # the class the red channel shows
ENDOPLASMIC_RETICULUM = 6                         # the class the yellow channel shows

# ----------------------------------------------------------------------------- channels
# Canonical in-memory channel order everywhere (arrays are H x W x 4, tensors 4 x H x W):
# red = microtubules, green = protein of interest, blue = nucleus, yellow = ER.
CHANNELS: tuple[str, ...] = ("red", "green", "blue", "yellow")
RED, GREEN, BLUE, YELLOW = 0, 1, 2, 3
STAINS: tuple[str, ...] = ("microtubules", "protein", "nucleus", "ER")  # what each channel shows
# The display false colour: each channel's (R, G, B) weight (yellow shows half in red, half in green)
FALSE_COLOUR: tuple[tuple[float, float, float], ...] = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (0.5, 0.5, 0))

# Per-channel mean/std of uint8 images scaled to [0, 1], in CHANNELS order.
# Competition images (HPA 2021 train set) and the public HPA external images differ a bit.
CHANNEL_STATS: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "competition": {"mean": (0.0781, 0.0529, 0.0544, 0.0811), "std": (0.1288, 0.0852, 0.1344, 0.1272)},
    "external":    {"mean": (0.0588, 0.0460, 0.0371, 0.0970), "std": (0.1062, 0.0827, 0.0978, 0.1610)},
}

# ----------------------------------------------------------------------------- paths
ROOT = Path(__file__).resolve().parents[1]        # repository root
INPUT_DIR = ROOT / "input"                        # everything a step reads (ignored by git)
OUTPUT_DIR = ROOT / "output"                      # runs, submission, plots (ignored by git)
COMPETITION_DIR = INPUT_DIR / "hpa-single-cell-image-classification"  # competition layout / demo data
HPA512_DIR = INPUT_DIR / "hpa-512"                # S2's processed images, folds, masks
HPA_SEG_DIR = INPUT_DIR / "hpa-seg"               # official HPA segmentation weights (optional)
KAGGLE_ENV = "KAGGLE"                             # environment variable: "1" turns Kaggle mode on
KAGGLE_ROOT_ENV = "KAGGLE_ROOT"                   # environment variable: the Kaggle tree (default /kaggle)
_ON = ("1", "true", "yes", "on")


def kaggle_root() -> Path:
    """The root of the Kaggle tree: ``$KAGGLE_ROOT``, else ``/kaggle``."""
    return Path(os.environ.get(KAGGLE_ROOT_ENV) or "/kaggle")


def kaggle_input() -> Path:
    """The read-only datasets of a Kaggle notebook (``/kaggle/input/<name>``)."""
    return kaggle_root() / "input"


def kaggle_working() -> Path:
    """The writable folder of a Kaggle notebook (``/kaggle/working``)."""
    return kaggle_root() / "working"


def on_kaggle() -> bool:
    """Kaggle mode: True only when the environment says ``KAGGLE=1`` (a generated notebook does)."""
    return os.environ.get(KAGGLE_ENV, "").strip().lower() in _ON


def paths_line() -> str:
    """How this step resolves relative paths, for the first line it prints."""
    value = os.environ.get(KAGGLE_ENV)
    said = f"{KAGGLE_ENV}={value}" if value is not None else f"{KAGGLE_ENV} unset"
    if not on_kaggle():
        return f"paths: relative to {ROOT} ({said})"
    return (f"paths: Kaggle mode ({said}): input/<name> from {kaggle_input()}/<name> when attached, "
            f"the rest under {kaggle_working()}")


def resolve(path: str | Path) -> Path:
    """A path constant as given by a user: absolute stays, relative is taken from the repo root.

    In Kaggle mode (:func:`on_kaggle`) a relative path is taken from ``<KAGGLE_ROOT>/working``
    instead, except ``input/<name>/...`` when a dataset ``<KAGGLE_ROOT>/input/<name>`` is attached:
    it is read from there (``input/hpa-512`` is written to ``/kaggle/working/input/hpa-512`` unless
    a dataset of that name is attached).
    """
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if not on_kaggle():
        return ROOT / p
    if len(p.parts) > 1 and p.parts[0] == "input" and (kaggle_input() / p.parts[1]).is_dir():
        return kaggle_input().joinpath(*p.parts[1:])
    return kaggle_working() / p


def run_folder(run_name: str, fold: int) -> str:
    """A training run's folder below OUTPUT_DIR: ``<RUN_NAME>/fold<k>``, or ``<RUN_NAME>/all`` when FOLD
    is -1 (S3 and S4.2 write it, a recipe names it, S5 names a run by it: :func:`run_of`)."""
    return f"{run_name}/{f'fold{fold}' if fold >= 0 else 'all'}"


def run_of(checkpoint: Path) -> str:
    """The run a checkpoint file belongs to, as :func:`run_folder` spells it (its folder and the one
    above it)."""
    return f"{checkpoint.parent.parent.name}/{checkpoint.parent.name}"


# ----------------------------------------------------------------------------- what a step misses
# The datasets a notebook attaches, by their name under /kaggle/input: what each holds, how it is made.
KAGGLE_DATASETS = {
    "hpa-single-cell-image-classification": "the competition data (Add data, Competitions)",
    "hpa-512": "S2's output: run the S2 notebook, then save its output as a dataset named `hpa-512`",
    "hpa-cells": "S4.1's output: run the S4.1 notebook, then save its output as a dataset named "
                 "`hpa-cells`",
    "timm-weights": ("pretrained backbones: where there is internet, `python tools/fetch_weights.py "
                     "--RECIPES all --DATASET_ID <you>/timm-weights input/timm-weights`, then `kaggle "
                     "datasets create -p input/timm-weights` (or set PRETRAINED = False)"),
    "hpa-runs": ("trained runs: the S3 / S4.2 notebooks' outputs, downloaded and packed with `python "
                 "tools/pack_runs.py <runs> --OUT packed_runs --DATASET_ID <you>/hpa-runs`, then `kaggle "
                 "datasets create -p packed_runs`"),
    "hpa-seg": "the official HPA segmentation weights (docs/SEGMENTATION.md)",
}
WHEELS_DATASET = "hpa-wheels"                     # the wheels dataset (tools/make_wheelhouse.sh)
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"cv2": "opencv-python-headless", "skimage": "scikit-image", "sklearn": "scikit-learn",
                 "iterstrat": "iterative-stratification", "PIL": "pillow", "yaml": "pyyaml"}


def _alike(a: str, b: str) -> bool:
    a, b = (re.sub(r"[^a-z0-9]", "", x.lower()) for x in (a, b))
    return bool(a and b) and (a in b or b in a)


def missing_input(what: str | Path, dataset: str, command: str) -> str:
    """The one line a step stops with when an input is missing, in the words of where the user is.

    Kaggle mode: the dataset to attach (``dataset``, a key of :data:`KAGGLE_DATASETS`, and how it is
    made), what ``<KAGGLE_ROOT>/input`` holds, and any dataset there under a name like it (``hpa512``,
    ``hpa-runs-v1``): attach it under ``dataset``, or point the constants cell at it. In a shell:
    ``command``, what to run (e.g. "run S2 first: python S2_data_process.py")."""
    if not on_kaggle():
        return f"{what}: not found ({command})"
    held = sorted(p.name for p in kaggle_input().iterdir() if p.is_dir()) if kaggle_input().is_dir() else []
    line = (f"{what}: not found: attach the dataset `{dataset}` ({KAGGLE_DATASETS[dataset]}). "
            f"{kaggle_input()} holds: {', '.join(held) or 'nothing'}")
    for name in (n for n in held if n != dataset and _alike(n, dataset)):
        line += (f"; `{name}` looks like it: attach it under the name `{dataset}`, or replace "
                 f"{kaggle_input() / dataset} by {kaggle_input() / name} in the constants cell")
    return line


def missing_package(module: str, why: str) -> str | None:
    """None when ``module`` imports; else the one line naming its distribution and how to install it:
    in Kaggle mode offline from the wheels dataset (:data:`WHEELS_DATASET`), in a shell with pip."""
    try:
        importlib.import_module(module)
        return None
    except ImportError:
        pass
    dist = DISTRIBUTIONS.get(module, module)
    if on_kaggle():
        how = (f"attach the wheels dataset `{WHEELS_DATASET}` (tools/make_wheelhouse.sh) and run: "
               f"!pip install --no-index --find-links {kaggle_input() / WHEELS_DATASET} {dist}")
    else:
        how = f"pip install -r requirements.txt -c requirements-lock.txt (or pip install {dist})"
    return f"{why}: the package {dist} (import {module}) is not installed: {how}"


def output_folder(path: str | Path, name: str, *, file: bool = False, keep: bool = True) -> Path:
    """Resolve the output constant ``name`` and make sure its folder can be written, at start.

    ``file=True``: ``path`` is a file and its parent folder is checked. The folder is created and a
    small file is created and removed in it (``os.access`` says yes to root on a read-only mount).
    ``keep=False``: a folder this check had to create is removed again (the step makes it when it
    writes), so a step that then refuses its input leaves nothing behind.
    Raises SystemExit naming the folder and the constant to change. Returns the resolved path.
    """
    target = resolve(path)
    folder = target.parent if file else target
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_check_", dir=folder)
        os.close(fd)
        os.unlink(probe)
        if not keep:
            for p in made:  # innermost first
                p.rmdir()
    except OSError as e:
        where = f" (on Kaggle: a folder under {kaggle_working()})" if on_kaggle() else ""
        raise SystemExit(f"cannot write to {folder} ({e.strerror or e}): set {name} to a writable "
                         f"folder{where}, with --{name} PATH or in the constants block") from None
    return target


# ----------------------------------------------------------------------------- image IDs
# An image ID becomes file names ({ID}_green.png, {ID}.npz, ...): plain names only.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# {ID}_yellow.tiff.gz and the hidden temporary ".{name}.{host}-{pid}-{token}.tmp" must stay <= 255 bytes
MAX_ID_LENGTH = 128


def id_problem(image_id) -> str | None:
    """Why ``image_id`` cannot be an image ID (a path separator, '..', an absolute path, other
    characters than letters, digits, '_', '-', '.'), or None when it is a plain name."""
    text = "" if image_id is None or (isinstance(image_id, float) and image_id != image_id) else str(image_id)
    if not text.strip():
        return "is empty"
    if text.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", text):
        return "is an absolute path"
    if "/" in text or "\\" in text:
        return "contains a path separator"
    if ".." in text:
        return "contains '..'"
    if len(text) > MAX_ID_LENGTH:
        return (f"is {len(text)} characters long: at most {MAX_ID_LENGTH}, so that every file made from "
                "it fits the filesystem's 255-byte name limit")
    if not _SAFE_ID.match(text):
        return "is not a plain name (letters, digits, '_', '-', '.'; starting with a letter or digit)"
    return None


# One's own images (S5 --IMAGES) take their ID from the file name: any printable Unicode name (spaces,
# accents, a leading '-'), never used as a path itself; the files made from it are named by file_stem.
_PLAIN_STEM = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"{p}{k}" for p in ("COM", "LPT") for k in range(1, 10))}
STEM_KEEP = 100                                   # characters of a mapped name kept before its hash
STEM_HASH = 10                                    # hex digits of the hash that ends a mapped name


def shown_name(name: str) -> str:
    """``name`` as it can be printed and written to a UTF-8 table: bytes that are not UTF-8 (a file name
    read as str keeps them as surrogates) as ``\\xNN``, other unprintable characters as their escapes."""
    text = str(name).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def own_id_problem(image_id: str) -> str | None:
    """Why a file name's ``image_id`` cannot be an own image's ID (S5 --IMAGES), or None: empty, bytes
    that are not UTF-8, or a character that is not printable (a control character, a line break)."""
    text = str(image_id)
    if not text.strip():
        return "is empty"
    if shown_name(text) != text:
        undecodable = text.encode("utf-8", "surrogateescape") != text.encode("utf-8", "replace")
        return ("is not valid UTF-8 (its bytes shown as \\xNN)" if undecodable
                else "holds a character that is not printable (shown escaped)")
    return None


def file_stem(image_id: str) -> str:
    """The stem of every file named after an image (``labels/{stem}.png``, ``overlays/``, ``report/``),
    the one mapping of a name to a file name that is safe on any filesystem. A plain name (letters,
    digits, '_', '.', '-', not starting with '-' or '.', not ending in '.', at most MAX_ID_LENGTH
    characters, no Windows device name such as ``CON``) is its own stem: every competition ID. Any other
    name has each other character replaced by '_', a '_' put before a leading '-' or '.', is cut to
    STEM_KEEP characters, and ends in '~' and the first STEM_HASH hex digits of the SHA-256 of the exact
    name (UTF-8): ``Image 1`` -> ``Image_1~<hash>``. No plain name holds '~', so two names never share
    a stem. Tables (cells.csv, images.csv, the submission) keep the name itself."""
    name = str(image_id)
    if (_PLAIN_STEM.match(name) and not name.endswith(".") and len(name) <= MAX_ID_LENGTH
            and name.split(".")[0].upper() not in _WINDOWS_DEVICES):
        return name
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:STEM_KEEP]
    if safe[:1] in ("", "-", ".") or safe.split(".")[0].upper() in _WINDOWS_DEVICES:
        safe = "_" + safe
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:STEM_HASH]
    return f"{safe}~{digest}"


def label_file(image_id: str) -> str:
    """The file name of a field's label map in ``labels/``: ``{file_stem(ID)}.png``."""
    return f"{file_stem(image_id)}.png"


def parse_labels(label: str | float | None) -> list[int]:
    """'8|5|0' -> [8, 5, 0]; empty or NaN -> []. Raises ValueError on an id outside 0..18."""
    if label is None or (isinstance(label, float) and label != label) or str(label).strip() == "":
        return []
    out = [int(x) for x in str(label).split("|")]
    bad = [x for x in out if not 0 <= x < NUM_CLASSES]
    if bad:
        raise ValueError(f"class id(s) {bad} outside 0..{NUM_CLASSES - 1} in label {label!r}")
    return out


def format_labels(labels) -> str:
    """[8, 5, 0] -> '8|5|0' (order kept)."""
    return "|".join(str(int(x)) for x in labels)
