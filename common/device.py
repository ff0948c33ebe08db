"""The one rule for a ``DEVICE`` constant: ``"auto"`` is CUDA when it is available, else the CPU.

:func:`device_name` is the rule on strings (no torch: :mod:`common.provenance` records the device
of steps that never import torch); :func:`resolve_device` gives the ``torch.device`` (training,
prediction, the official segmentation networks). torch is imported only when a device is resolved,
so importing this module (``config`` does, through ``provenance``) never loads it.
"""
from __future__ import annotations


def device_name(device, cuda_available: bool) -> str:
    """``"auto"`` -> ``"cuda"`` when ``cuda_available`` else ``"cpu"``; any other device as given."""
    device = str(device)
    if device == "auto":
        return "cuda" if cuda_available else "cpu"
    return device


def resolve_device(device="auto"):
    """A DEVICE constant ("auto" | "cpu" | "cuda" | "cuda:1" | torch.device) -> ``torch.device``."""
    import torch  # here, not at the top: steps that never compute with torch do not load it

    if isinstance(device, torch.device):
        return device
    return torch.device(device_name(device, torch.cuda.is_available()))
