"""Pretrained timm weights without internet, at run time: a folder of weight files found by model name,
one clear error when no source has them, the original's stem initialisation, one line for an unusable
weights file. (The fetcher that fills such a folder, ``tools/fetch_weights.py``, is
:mod:`common.models.weights_fetch`.)

Sources, in order (:func:`local_source`, :func:`require`):

1. ``PRETRAINED_FILE``: one weights file (state_dict / timm checkpoint / ``.safetensors``);
2. ``PRETRAINED_DIR``: a folder holding ``<model name>.safetensors`` (or ``.pth`` / ``.bin``), the
   model name with or without its pretrained tag (``tf_efficientnet_b0.ns_jft_in1k`` or
   ``tf_efficientnet_b0``; a tag-less request also finds timm's default tag's file);
3. the timm hub (Hugging Face, or the legacy URL) through its local cache. Its host is tried once,
   with a connection that must open within ``HUB_CONNECT_TIMEOUT`` seconds (:func:`hub_reachable`);
   when it does not (no network, a Kaggle notebook with internet off; ``HF_HUB_OFFLINE`` need not be
   set), the run goes on from the local caches only, so no download is retried and nothing waits.

A local file is given to timm as ``pretrained_cfg_overlay=dict(file=...)``, so it goes through the
very code a hub download goes through (``timm.models.load_pretrained``: the model's checkpoint
filter, then ``adapt_input_conv`` widening the 3-channel stem to 4 inputs, then the classifier
dropped): a run starts from the same weights whichever source held them.

Stem initialisation (``STEM_INIT``): timm widens RGB filters to 4 inputs as (R, G, B, R) x 3/4 on
our channels (red, green, blue, yellow). The original repeated them as (R, G, B, R) without the
3/4 and applied them to its in-memory order (blue, green, red, yellow): on our channels that is
(B, G, R, R) x 1. ``STEM_INIT="original"`` rebuilds that from timm's widened weights.
"""
from __future__ import annotations

import os
import pickle
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch
from timm.models import get_pretrained_cfg

from common.constants import CHANNELS, missing_input, on_kaggle, resolve

# ----------------------------------------------------------------------------- stem initialisation
STEM_INITS = ("timm", "original")
# the original's in-memory channel order, the one its (R, G, B, R) stem filters were applied to
ORIGINAL_STEM_CHANNELS = ("blue", "green", "red", "yellow")
_ORIGINAL_RGB_FILTER = (0, 1, 2, 0)  # RGB filter index per position of ORIGINAL_STEM_CHANNELS

WEIGHT_EXTS = (".safetensors", ".pth", ".bin")
HUB_CONNECT_TIMEOUT = 3.0  # seconds a connection to the hub's host may take before the run is offline


class PretrainedUnavailable(RuntimeError):
    """Pretrained weights were asked for but no source can provide them (the message says all)."""


# ----------------------------------------------------------------------------- names and sources
def pretrained_cfg(model_name: str):
    """timm's pretrained config of ``model_name`` (tag optional: timm's default tag) or None."""
    try:
        return get_pretrained_cfg(model_name)
    except (RuntimeError, KeyError):
        return None


def full_name(model_name: str) -> str:
    """``arch.tag`` with timm's default tag filled in (the name as given when timm knows no tag)."""
    arch, _, tag = model_name.partition(".")
    if tag:
        return model_name
    cfg = pretrained_cfg(model_name)
    return f"{arch}.{cfg.tag}" if cfg is not None and getattr(cfg, "tag", None) else model_name


def file_names(model_name: str) -> list[str]:
    """The file names that hold ``model_name``'s weights in a PRETRAINED_DIR, most specific first."""
    stems = dict.fromkeys([model_name, full_name(model_name), model_name.partition(".")[0]])
    return [s + ext for s in stems for ext in WEIGHT_EXTS]


def find_in_dir(model_name: str, folder: str | Path) -> Path | None:
    """The first of :func:`file_names` present in ``folder``, else None."""
    if not folder:
        return None
    folder = Path(folder).expanduser()
    for name in file_names(model_name):
        if (folder / name).is_file():
            return folder / name
    return None


def local_source(model_name: str, pretrained: bool, pretrained_file: str = "",
                 pretrained_dir: str | Path = "") -> Path | None:
    """The local file to load (PRETRAINED_FILE, else a PRETRAINED_DIR match when ``pretrained``),
    else None (hub, or no pretrained weights). A PRETRAINED_FILE that does not exist raises."""
    if pretrained_file:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: PRETRAINED_FILE does not exist")
        return path
    if pretrained and pretrained_dir:
        return find_in_dir(model_name, _resolve(pretrained_dir))
    return None


def _resolve(path: str | Path) -> Path:
    return resolve(path)


def hub_location(model_name: str) -> str:
    """Where timm takes the weights from (``hf-hub:timm/...`` or the URL), for messages and manifests."""
    from timm.models._builder import _resolve_pretrained_source  # timm's private API: read when asked

    cfg = pretrained_cfg(model_name)
    if cfg is None:
        return ""
    load_from, loc = _resolve_pretrained_source(cfg.to_dict())
    if isinstance(loc, (list, tuple)):
        loc = "/".join(loc)
    return f"{load_from}:{loc}" if load_from else ""


def hub_state_dict(model_name: str) -> dict[str, torch.Tensor]:
    """The checkpoint timm's ``load_pretrained`` would load for ``model_name`` (hub or URL, through
    the local cache; downloads when online), before timm's filter and stem adaptation."""
    from timm.models._builder import _resolve_pretrained_source  # timm's private API: read when asked
    from timm.models._hub import load_state_dict_from_hf  # timm's private API: read when asked

    cfg = pretrained_cfg(model_name)
    if cfg is None:
        raise PretrainedUnavailable(f"timm knows no pretrained weights for {model_name!r}")
    load_from, loc = _resolve_pretrained_source(cfg.to_dict())
    if load_from == "hf-hub":
        return load_state_dict_from_hf(*loc) if isinstance(loc, (list, tuple)) else \
            load_state_dict_from_hf(loc, weights_only=True)
    if load_from == "url":
        return torch.hub.load_state_dict_from_url(loc, map_location="cpu", weights_only=True)
    raise PretrainedUnavailable(f"timm lists no download for {model_name!r} (source {load_from or 'none'})")


def hub_host(model_name: str) -> tuple[str, int] | None:
    """``(host, port)`` timm downloads ``model_name``'s weights from (None: no download)."""
    loc = hub_location(model_name)
    kind, _, where = loc.partition(":")
    if kind == "hf-hub":
        from huggingface_hub import constants as hf  # here: its constants follow HF_HUB_* set before

        where = hf.ENDPOINT
    elif kind != "url":
        return None
    url = urlparse(where)
    if not url.hostname:
        return None
    return url.hostname, url.port or (443 if url.scheme == "https" else 80)


def hub_reachable(host: str, port: int, timeout: float = HUB_CONNECT_TIMEOUT) -> str:
    """"" when a TCP connection to ``host:port`` opens within ``timeout`` seconds, else why not.
    One try; the name lookup is bounded by the same timeout (a thread that is not waited for)."""
    result: dict[str, str] = {}

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["why"] = ""
        except OSError as e:
            result["why"] = f"{type(e).__name__}: {e}"

    t = threading.Thread(target=probe, daemon=True, name="hub-probe")
    t.start()
    t.join(timeout)
    return result.get("why", f"no connection within {timeout:g} s")


def go_offline_unless_reachable(model_name: str) -> str:
    """Try the hub's host of ``model_name`` once; when it cannot be reached, switch this process's
    Hugging Face hub to offline mode (its cache only: no retries) and say why -> "" when reachable,
    already offline, or no download applies."""
    try:
        from huggingface_hub import constants as hf  # here: its constants follow HF_HUB_* set before
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        hf = None
    if hf is not None and hf.HF_HUB_OFFLINE:
        return ""
    where = hub_host(model_name)
    if where is None:
        return ""
    why = hub_reachable(*where)
    if why and hf is not None:
        hf.HF_HUB_OFFLINE = True  # read at each call: hf_hub_download takes the cache, never retries
    return f"{where[0]}:{where[1]} cannot be reached ({why})" if why else ""


def _cache_dirs() -> str:
    try:
        from huggingface_hub import constants as hf  # here: its constants follow HF_HUB_* set before

        hf_cache = hf.HF_HUB_CACHE
        offline = " (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") else ""
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        hf_cache, offline = "?", ""
    return f"HF cache {hf_cache}{offline}, torch hub {torch.hub.get_dir()}"


def first_line(error: BaseException | str) -> str:
    """The first line of an error, whole."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(error).__name__}: {text}" if isinstance(error, BaseException) else text


def unavailable_message(model_name: str, pretrained_dir: str | Path, error: BaseException | str) -> str:
    """The one message of a run that cannot get its pretrained weights."""
    if pretrained_dir:
        folder = _resolve(pretrained_dir)
        state = "" if folder.is_dir() else " (no such folder)"
        tried_dir = f"PRETRAINED_DIR {folder}{state}: none of {', '.join(file_names(model_name)[:2])}, ..."
    else:
        tried_dir = "PRETRAINED_DIR: not set"
    err = first_line(error)
    src = hub_location(model_name) or "no timm download"
    name = full_name(model_name)
    said = (f"pretrained weights for {model_name!r} are not available here.\n"
            f"  tried: {tried_dir}\n"
            f"  tried: the timm hub ({src}) and the local caches ({_cache_dirs()}): {err}\n")
    if on_kaggle():  # a notebook: the dataset to attach, what is attached, or no pretrained weights
        return (said + f"  way out: {missing_input(f'{name}.safetensors', 'timm-weights', '')}; or set "
                "PRETRAINED = False in the constants cell (random initial weights)")
    return (said + f"  ways out: --PRETRAINED_DIR <folder> holding {name}.safetensors (fill one with "
            f"`python tools/fetch_weights.py --MODELS {name} <folder>` where there is internet; a "
            f"Kaggle dataset can hold the folder), or --PRETRAINED_FILE <weights file>, "
            f"or --PRETRAINED false (random initial weights)")


def require(cfg: dict) -> str:
    """Check, before any work, that the run's pretrained weights can be had -> a description of the
    source ("random init" | the local file | "timm hub"). Raises :class:`PretrainedUnavailable`
    (catch it in ``main`` and ``raise SystemExit(str(e))``). A hub source is fetched into the cache
    here, so building the model later needs no network; when the hub's host cannot be reached the
    process stays offline (:func:`go_offline_unless_reachable`) and only the caches are read."""
    name = str(cfg["MODEL_NAME"])
    pretrained = bool(cfg["PRETRAINED"])
    stem = str(cfg["STEM_INIT"])
    if stem not in STEM_INITS:
        raise PretrainedUnavailable(f"STEM_INIT must be one of {STEM_INITS}, got {stem!r}")
    folder = str(cfg["PRETRAINED_DIR"] or "")
    try:
        path = local_source(name, pretrained, str(cfg["PRETRAINED_FILE"] or ""), folder)
    except FileNotFoundError as e:
        raise PretrainedUnavailable(f"{e}; give an existing file, or --PRETRAINED_FILE '' to use "
                                    f"PRETRAINED_DIR / the hub, or --PRETRAINED false") from None
    if path is not None:
        return str(path)
    if not pretrained:
        return "random init"
    offline = go_offline_unless_reachable(name)
    try:
        hub_state_dict(name)
    except Exception as e:  # noqa: BLE001 - any failure of the hub/cache ends the same way
        why = f"{offline}, and the caches have no copy" if offline else e
        raise PretrainedUnavailable(unavailable_message(name, folder, why)) from None
    return f"timm hub ({hub_location(name)})"


def widen_stem_original(model: torch.nn.Module) -> list[str]:
    """Turn timm's widened 4-channel stem ((R, G, B, R) x 3/4 on CHANNELS) into the original's
    ((R, G, B, R) x 1 on (blue, green, red, yellow)) -> the names of the convs changed."""
    first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    names = (first,) if isinstance(first, str) else tuple(first or ())
    done = []
    for name in names:
        conv = model.get_submodule(name)
        w = conv.weight
        if w.ndim != 4 or w.shape[1] != 4 or not torch.equal(w[:, 0], w[:, 3]):
            continue  # not a stem timm widened from RGB (e.g. a 4-channel checkpoint): leave it
        rgb = w.detach()[:, :3].double() * (4 / 3)  # undo adapt_input_conv's 3 / in_chans
        order = [_ORIGINAL_RGB_FILTER[ORIGINAL_STEM_CHANNELS.index(c)] for c in CHANNELS]
        with torch.no_grad():
            w.copy_(rgb[:, order].to(w.dtype))
        done.append(name)
    return done


# ----------------------------------------------------------------------------- unusable weights files
def _first_problem(error: BaseException) -> str:
    """The first line of ``load_state_dict``'s error that says what is wrong (e.g. a size mismatch)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    detail = [ln for ln in lines if not ln.startswith("Error(s) in loading")] or [type(error).__name__]
    return detail[0] if len(detail[0]) <= 300 else detail[0][:297] + "..."


def _refused_pickle(error: BaseException | None) -> BaseException | None:
    """torch's refusal of a pickle under ``weights_only=True``, when ``error`` is it or was raised
    from it (timm wraps it in a RuntimeError with advice of its own)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, pickle.UnpicklingError) and "weights only load failed" in str(error).lower():
            return error
        error = error.__cause__ or error.__context__
    return None


def load_error(path: str | Path, error: BaseException, what: str, remedy: str) -> str:
    """The one line for a weights file that cannot be used: ``what`` (e.g. ``"RESUME: "``) and ``path``,
    then why, then ``remedy``. A pickle that ``weights_only=True`` refuses gets the opposite of
    torch's advice: the file holds more than tensors and plain values, and loading it with
    ``weights_only=False`` would run code from the file."""
    text = str(error)
    refused = _refused_pickle(error)
    if refused is not None:
        reason = [ln.strip() for ln in str(refused).splitlines() if ln.strip() and not ln.startswith(
            ("Weights only load failed", "Check the documentation")) and "weights_only" not in ln]
        reason = (reason[0].split(". ")[0].rstrip(".") if reason else "refused by torch.load")[:200]
        return (f"{what}{path}: holds objects beyond tensors and plain values ({reason}); loading it with "
                "weights_only=False would run code from the file: do not, unless you made the file yourself")
    if isinstance(error, RuntimeError) and ("size mismatch" in text or "state_dict" in text):
        return f"{what}{path}: its weights do not fit the model ({_first_problem(error)}): {remedy}"
    reason = _first_problem(error) if text.strip() else type(error).__name__
    return f"{what}{path} cannot be read (truncated or corrupt: {reason}): {remedy}"
