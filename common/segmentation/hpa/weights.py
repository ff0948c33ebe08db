"""Loading the official HPA segmentation weights without executing their pickles.

The official files (``dpn_unet_nuclei_v1.pth``, ``dpn_unet_cell_3ch_v1.pth``) are whole pickled
``pytorch_zoo`` models. ``torch.load`` would need that package importable and would run whatever the
pickle says. Here a restricted unpickler rebuilds only what such a file may contain:

* tensors and storages (our own rebuild functions; data read from the zip's ``data/`` entries, or
  from the tail of a legacy non-zip file), ``OrderedDict``, ``set``, ``torch.device``;
* the module classes listed in the spec (``pytorch_zoo.*`` and the torch layers) as **inert stand-ins**:
  plain objects that only receive their pickled ``__dict__``; no constructor or layer code ever runs.

Any other global (``posix.system``, ``builtins.eval``, ...) raises :class:`UnsafePickleError` naming it.
The tree of stand-ins is then walked into a flat state_dict (names as ``torch`` would give them), which
must equal the native :class:`~common.segmentation.dpn_unet.DPNUNet` key for key and shape for shape.

``.safetensors`` copies (``convert_to_safetensors``) load without any pickle at all and are preferred.
"""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from common.io import atomic_path
from common.segmentation.dpn_unet import DPNUNet

NUCLEI_STEM = "dpn_unet_nuclei_v1"      # official file names (Zenodo record 4665863), without extension
CELL_STEM = "dpn_unet_cell_3ch_v1"
STEMS = {"nuclei": NUCLEI_STEM, "cell": CELL_STEM}
PTH_EXTS = (".pth", ".pt")
SAFETENSORS_EXT = ".safetensors"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C    # first pickle of a legacy (pre-zip) torch.save file
LEGACY_PROTOCOL = 1001
ROOT_CLASSES = ("pytorch_zoo.unet.DPNUnet",)
WRAPPER_CLASSES = ("torch.nn.parallel.data_parallel.DataParallel",
                   "torch.nn.parallel.distributed.DistributedDataParallel")

# globals that become inert stand-in classes (never called, only filled with their pickled __dict__)
STANDIN_GLOBALS = frozenset({
    "pytorch_zoo.unet.DPNUnet",
    "pytorch_zoo.abstract_model.ConvBottleneck",
    "pytorch_zoo.abstract_model.UnetDecoderBlock",
    "pytorch_zoo.abstract_model.Upscale",
    "pytorch_zoo.dpn.DualPathBlock",
    "pytorch_zoo.dpn.BnActConv2d",
    "pytorch_zoo.dpn.CatBnAct",
    "pytorch_zoo.dpn.InputBlock",
    "pytorch_zoo.dpn.DPN",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.upsampling.Upsample",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    *WRAPPER_CLASSES,
})
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_STORAGE_MODULES = ("torch", "torch.cuda")  # GPU-saved files name torch.cuda.FloatStorage; loaded on CPU


class HPAWeightsError(ValueError):
    """A weight file is missing, malformed, or does not match the DPN-92 U-Net (the message names the key)."""


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global outside the allow-list; nothing it names was imported or called."""


# ----------------------------------------------------------------------------- inert stand-ins
class StandIn:
    """Base of the inert stand-ins: no constructor runs, ``BUILD`` only fills ``__dict__``."""

    global_name = "?"

    def __new__(cls, *args, **kwargs):
        if args or kwargs:
            raise UnsafePickleError(f"stand-in {cls.global_name} was given constructor arguments")
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):  # only reached through REDUCE (a call), which real files never do
        raise UnsafePickleError(f"{self.global_name} may not be called while unpickling")

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise HPAWeightsError(f"{self.global_name}: unexpected pickled state {type(state).__name__}")
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"<stand-in {self.global_name}>"


_STANDINS: dict[str, type] = {}


def standin_class(global_name: str) -> type:
    """The (cached) inert stand-in class for an allowed module global."""
    if global_name not in _STANDINS:
        module, _, name = global_name.rpartition(".")
        _STANDINS[global_name] = type(name, (StandIn,), {"global_name": global_name, "__module__": module})
    return _STANDINS[global_name]


class _StorageType:
    def __init__(self, global_name: str, dtype: torch.dtype):
        self.global_name, self.dtype = global_name, dtype

    def __repr__(self) -> str:
        return self.global_name


class _Storage:
    """A loaded storage: a flat tensor of its dtype."""

    def __init__(self, flat: torch.Tensor):
        self.flat = flat


def _ints(x, what: str) -> tuple[int, ...]:
    if not isinstance(x, (tuple, list)) or not all(isinstance(i, int) and i >= 0 for i in x):
        raise HPAWeightsError(f"bad tensor {what} {x!r} in pickle")
    return tuple(x)


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
    """Our stand-in for torch._utils._rebuild_tensor_v2: a strided view of a loaded storage."""
    if not isinstance(storage, _Storage) or not isinstance(storage_offset, int):
        raise HPAWeightsError("tensor rebuild with a storage that did not come from the file")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
        raise HPAWeightsError(f"tensor size {size} and stride {stride} differ in length")
    try:
        return storage.flat.as_strided(size, stride, storage_offset)
    except RuntimeError as e:  # out of the storage's bounds
        raise HPAWeightsError(f"tensor view out of its storage's bounds: {e}") from None


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, *args):
    if not isinstance(data, torch.Tensor):
        raise HPAWeightsError("parameter rebuild without a tensor")
    return data


_ALLOWED_CALLABLES = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "__builtin__.set": set,
    "builtins.frozenset": frozenset,
    "__builtin__.frozenset": frozenset,
    "torch.device": torch.device,
}


def resolve_global(module: str, name: str):
    """What the restricted unpickler gives for ``module.name``; raises UnsafePickleError for the rest."""
    full = f"{module}.{name}"
    if full in _ALLOWED_CALLABLES:
        return _ALLOWED_CALLABLES[full]
    if full in STANDIN_GLOBALS:
        return standin_class(full)
    if module in _STORAGE_MODULES and name in _STORAGE_DTYPES:
        return _StorageType(full, _STORAGE_DTYPES[name])
    raise UnsafePickleError(
        f"refusing to load global {full!r}: not on the allow-list of the HPA weight loader "
        "(a genuine HPA segmentation file only references tensors, containers and module classes)")


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only allow-listed globals and loads storages through a callback.

    ``load_storage(dtype, key, numel) -> torch.Tensor`` (flat) is called once per distinct storage key.
    Without a callback any persistent id is refused (used for the small header pickles).
    """

    def __init__(self, file, load_storage=None):
        super().__init__(file)
        self._load_storage = load_storage
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        return resolve_global(module, name)

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or self._load_storage is None:
            raise UnsafePickleError(f"unexpected persistent id {pid!r:.80}")
        kind = pid[0]
        if kind == "module":  # legacy files: ('module', class, source_file, source_text); source ignored
            if len(pid) < 2 or not (isinstance(pid[1], type) and issubclass(pid[1], StandIn)):
                raise UnsafePickleError(f"legacy module id names a non-module {pid[1:2]!r:.80}")
            return pid[1]
        if kind != "storage" or len(pid) not in (5, 6):
            raise UnsafePickleError(f"unexpected persistent id kind {kind!r:.40}")
        stype, key, _location, numel = pid[1:5]
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise HPAWeightsError(f"malformed storage id {pid!r:.120}")
        if key not in self._storages:
            self._storages[key] = _Storage(self._load_storage(stype.dtype, key, numel))
        st = self._storages[key]
        if st.flat.dtype != stype.dtype:
            raise HPAWeightsError(f"storage {key} used with two dtypes")
        view = pid[5] if len(pid) == 6 else None
        if view is not None:  # legacy view metadata: (view_key, offset, size)
            vkey, offset, vsize = view
            vkey = f"{key}/view/{vkey}"
            if vkey not in self._storages:
                self._storages[vkey] = _Storage(st.flat[offset:offset + vsize])
            return self._storages[vkey]
        return st


# ----------------------------------------------------------------------------- file formats
def _readinto(f, buf) -> None:
    view = memoryview(buf).cast("B")
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise HPAWeightsError(f"file ends inside a storage (read {got} of {len(view)} bytes)")
        got += n


def _load_zip(path: Path):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkls = [n for n in names if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
        if len(pkls) != 1:
            raise HPAWeightsError(f"{path}: not a torch.save zip archive ({len(pkls)} data.pkl entries)")
        prefix = pkls[0][: -len("data.pkl")]
        big_endian = f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder").strip() == b"big"

        def load_storage(dtype: torch.dtype, key: str, numel: int) -> torch.Tensor:
            entry = f"{prefix}data/{key}"
            try:
                info = zf.getinfo(entry)
            except KeyError:
                raise HPAWeightsError(f"{path}: storage entry {entry!r} is missing") from None
            itemsize = torch.empty(0, dtype=dtype).element_size()
            if numel < 0 or info.file_size != numel * itemsize:
                raise HPAWeightsError(f"{path}: storage {key} has {info.file_size} bytes, "
                                      f"expected {numel} x {itemsize}")
            if numel == 0:
                return torch.empty(0, dtype=dtype)
            buf = bytearray(info.file_size)
            with zf.open(entry) as f:
                _readinto(f, buf)
            flat = torch.frombuffer(buf, dtype=dtype)
            if big_endian and itemsize > 1:
                flat = torch.from_numpy(flat.numpy().byteswap())
            return flat

        with zf.open(pkls[0]) as f:
            return RestrictedUnpickler(io.BytesIO(f.read()), load_storage).load()


def _load_legacy(path: Path):
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = RestrictedUnpickler(f)
        try:
            magic = header.load()
        except Exception as e:  # noqa: BLE001 - anything unreadable is "not a torch file"
            if isinstance(e, UnsafePickleError):
                raise
            raise HPAWeightsError(f"{path}: neither a torch zip archive nor a legacy torch file ({e})") from e
        if magic != LEGACY_MAGIC:
            raise HPAWeightsError(f"{path}: not a torch file (bad magic number)")
        if RestrictedUnpickler(f).load() != LEGACY_PROTOCOL:
            raise HPAWeightsError(f"{path}: unsupported legacy torch protocol")
        sys_info = RestrictedUnpickler(f).load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise HPAWeightsError(f"{path}: big-endian legacy files are not supported")
        pending: dict[str, torch.Tensor] = {}
        budget = [size]

        def allocate(dtype: torch.dtype, key: str, numel: int) -> torch.Tensor:
            nbytes = numel * torch.empty(0, dtype=dtype).element_size()
            if numel < 0 or nbytes > budget[0]:
                raise HPAWeightsError(f"{path}: storage {key} claims {numel} elements, more than the file")
            budget[0] -= nbytes
            pending[key] = torch.empty(numel, dtype=dtype)
            return pending[key]

        obj = RestrictedUnpickler(f, allocate).load()
        keys = RestrictedUnpickler(f).load()
        if not isinstance(keys, list) or set(keys) != set(pending):
            raise HPAWeightsError(f"{path}: legacy storage key list does not match the pickle")
        for key in keys:
            t = pending[key]
            (count,) = struct.unpack("<q", f.read(8))
            if count != t.numel():
                raise HPAWeightsError(f"{path}: storage {key} holds {count} elements, expected {t.numel()}")
            if count:
                _readinto(f, t.view(torch.uint8).numpy())
    return obj


def unpickle_hpa_file(path: str | Path):
    """The object tree of a torch.save file (zip or legacy format) with stand-ins for module classes."""
    path = Path(path)
    if not path.is_file():
        raise HPAWeightsError(f"{path}: weight file is missing")
    return _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)


# ----------------------------------------------------------------------------- tree -> state_dict
def _global_of(obj) -> str:
    return getattr(type(obj), "global_name", type(obj).__name__)


def tree_state_dict(root) -> OrderedDict:
    """Flatten a stand-in module tree into a state_dict (torch's naming and order).

    Unwraps a DataParallel wrapper (its ``module.`` prefix disappears). Non-persistent buffers and
    ``None`` slots are skipped, as ``nn.Module.state_dict`` does.
    """
    if _global_of(root) in WRAPPER_CLASSES:
        root = root.__dict__.get("_modules", {}).get("module")
    if _global_of(root) not in ROOT_CLASSES:
        raise HPAWeightsError(f"the pickle holds a {_global_of(root)}, not a pytorch_zoo DPNUnet")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()

    def walk(mod, prefix: str, depth: int) -> None:
        if depth > 32:
            raise HPAWeightsError(f"module tree deeper than 32 levels at {prefix!r}")
        d = getattr(mod, "__dict__", None)
        if not isinstance(mod, StandIn) or d is None:
            raise HPAWeightsError(f"{prefix or '<root>'} is a {type(mod).__name__}, not a module")
        skip = d.get("_non_persistent_buffers_set") or set()
        for slot in ("_parameters", "_buffers"):
            for name, t in (d.get(slot) or {}).items():
                if t is None or (slot == "_buffers" and name in skip):
                    continue
                if not isinstance(t, torch.Tensor):
                    raise HPAWeightsError(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
                out[prefix + name] = t
        for name, child in (d.get("_modules") or {}).items():
            if child is not None:
                walk(child, f"{prefix}{name}.", depth + 1)

    walk(root, "", 0)
    return out


def check_state_dict(sd: dict, reference: dict, source: str = "weights") -> OrderedDict:
    """``sd`` checked against ``reference`` (the native model's state_dict): same keys, same shapes.

    Floating tensors are cast to the reference dtype; a missing ``num_batches_tracked`` (very old torch)
    is filled with 0. Raises HPAWeightsError naming the first missing, unexpected or mis-shaped key.
    """
    sd = OrderedDict((k[len("module."):] if k.startswith("module.") else k, v) for k, v in sd.items())
    missing = [k for k in reference if k not in sd and not k.endswith("num_batches_tracked")]
    extra = [k for k in sd if k not in reference]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing key(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"unexpected key(s) {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        raise HPAWeightsError(f"{source}: does not match the DPN-92 U-Net: {'; '.join(parts)}")
    out = OrderedDict()
    for k, ref in reference.items():
        t = sd.get(k)
        if t is None:  # num_batches_tracked of a very old file
            out[k] = torch.zeros((), dtype=ref.dtype)
            continue
        if tuple(t.shape) != tuple(ref.shape):
            raise HPAWeightsError(f"{source}: {k} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
        if t.dtype != ref.dtype:
            if not (t.dtype.is_floating_point and ref.dtype.is_floating_point):
                raise HPAWeightsError(f"{source}: {k} has dtype {t.dtype}, expected {ref.dtype}")
            t = t.to(ref.dtype)
        out[k] = t
    return out


def _reference_state() -> OrderedDict:
    with torch.device("meta"):
        return DPNUNet().state_dict()


# ----------------------------------------------------------------------------- public API
def _resolve(path: str | Path, kind: str) -> Path:
    """A file as given; or, for a folder or an extension-less stem, its .safetensors before its .pth."""
    if kind not in STEMS:
        raise ValueError(f"kind must be one of {tuple(STEMS)}, got {kind!r}")
    path = Path(path)
    if path.is_dir():
        path = path / STEMS[kind]
    elif path.suffix in (SAFETENSORS_EXT, *PTH_EXTS):
        return path
    for ext in (SAFETENSORS_EXT, *PTH_EXTS):
        cand = path.with_name(path.name + ext)
        if cand.is_file():
            return cand
    raise HPAWeightsError(f"no {path.name}{SAFETENSORS_EXT} or {path.name}.pth in {path.parent}")


def weight_file(weights_dir: str | Path, kind: str) -> Path | None:
    """The file ``load_hpa_model(weights_dir, kind)`` would read (safetensors preferred), or None."""
    try:
        return _resolve(Path(weights_dir), kind) if Path(weights_dir).is_dir() else None
    except HPAWeightsError:
        return None


def available(weights_dir: str | Path) -> bool:
    """True when both networks' weights are in ``weights_dir`` (each as .safetensors or .pth)."""
    return all(weight_file(weights_dir, k) is not None for k in STEMS)


def load_state_dict_file(path: str | Path, kind: str = "nuclei") -> tuple[OrderedDict, dict]:
    """The checked state_dict of a weight file (``.pth`` safely unpickled, or ``.safetensors``) and info.

    ``info``: ``format`` ("zip", "legacy" or "safetensors"), ``path``, ``training`` (the pickled flag of
    the root module, None for safetensors) and, for safetensors, its metadata.
    """
    path = _resolve(path, kind)
    info: dict = {"path": str(path)}
    if path.suffix == SAFETENSORS_EXT:
        if not path.is_file():
            raise HPAWeightsError(f"{path}: weight file is missing")
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            sd = OrderedDict((k, f.get_tensor(k)) for k in f.keys())  # noqa: SIM118 - safe_open API
        if meta.get("kind") and meta["kind"] != kind:
            raise HPAWeightsError(f"{path}: holds the {meta['kind']} network, asked for {kind}")
        info.update(format="safetensors", training=None, metadata=meta)
    else:
        root = unpickle_hpa_file(path)
        info["format"] = "zip" if zipfile.is_zipfile(path) else "legacy"
        inner = root
        if _global_of(root) in WRAPPER_CLASSES:
            inner = root.__dict__.get("_modules", {}).get("module")
        info["training"] = getattr(inner, "__dict__", {}).get("training")
        sd = tree_state_dict(root)
    return check_state_dict(sd, _reference_state(), str(path)), info


def load_hpa_model(path: str | Path, kind: str = "nuclei", device: str | torch.device = "cpu") -> DPNUNet:
    """The native DPN-92 U-Net with an official network's weights, in eval mode, on ``device``.

    ``path``: a ``.pth`` (official whole-model pickle, read safely), a ``.safetensors`` (from
    :func:`convert_to_safetensors`), a stem without extension, or the weights folder (the file is then
    chosen by ``kind``: "nuclei" or "cell"); with both present the ``.safetensors`` wins. Eval mode is
    always used (running BatchNorm statistics), whatever ``training`` flag the pickle stored.
    """
    sd, info = load_state_dict_file(path, kind)
    with torch.device("meta"):
        model = DPNUNet()
    model.load_state_dict(OrderedDict((k, v.contiguous()) for k, v in sd.items()), strict=True, assign=True)
    model.hpa_kind, model.hpa_source = kind, info
    return model.to(device).eval()


def convert_to_safetensors(pth: str | Path, out_path: str | Path | None = None,
                           kind: str | None = None) -> Path:
    """Convert an official ``.pth`` into a ``.safetensors`` file (default: beside it, same stem).

    ``kind`` defaults to the one the file name says (cell when the name contains "cell"). The file is
    written atomically and its metadata records the kind, source name and format.
    """
    pth = Path(pth)
    kind = kind or ("cell" if "cell" in pth.name else "nuclei")
    sd, info = load_state_dict_file(pth, kind)
    seen: set[int] = set()
    tensors = {}
    for k, t in sd.items():
        t = t.contiguous()
        if t.numel() and t.data_ptr() in seen:
            t = t.clone()
        seen.add(t.data_ptr())
        tensors[k] = t
    out = Path(out_path) if out_path is not None else pth.with_suffix(SAFETENSORS_EXT)
    meta = {"kind": kind, "source": pth.name, "source_format": info["format"],
            "architecture": "DPNUNet-dpn92", "pickled_training": str(info.get("training"))}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return out
