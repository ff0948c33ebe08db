"""What made a result besides the constants: package versions, Python, OS, CPU model, what picks
the floating-point kernels (torch's CPU capability, CPU flags, threads), the device, GPU names.

:func:`environment` is saved with every config (``config.save``). torch is never imported just to
ask about CUDA: a step that did not import torch records no CUDA (torch is imported for its CPU
capability only, after that question).
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from common.device import device_name

# the packages whose versions change results (recorded with every saved config)
RECORDED_PACKAGES = ("torch", "torchvision", "timm", "numpy", "opencv-python-headless", "opencv-python",
                     "albumentations", "albucore", "pandas", "scikit-image", "scipy", "scikit-learn",
                     "tifffile", "pycocotools", "safetensors", "iterative-stratification", "matplotlib",
                     "pillow")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# CPU features that pick the floating-point kernels (torch's ATen dispatch, oneDNN, numpy's SIMD loops)
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",   # x86 (/proc/cpuinfo flags)
             "asimd", "asimddp", "sve", "sve2", "bf16", "i8mm")                   # arm64 (Features)


def _cpu_flags() -> list[str] | None:
    """The :data:`CPU_FLAGS` this CPU has (None where /proc/cpuinfo does not list them)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            have = set(value.split())
            return [f for f in CPU_FLAGS if f in have]
    return None


def _cpu_capability() -> str | None:
    """torch's CPU kernel level (``DEFAULT`` | ``AVX2`` | ``AVX512`` | ``SVE256`` ...; the
    ``ATEN_CPU_CAPABILITY`` variable lowers it), importing torch where it is installed."""
    try:
        import torch  # here: steps that never compute with torch (S0, S6) do not load it at start
    except ImportError:
        return None
    return torch.backends.cpu.get_cpu_capability()


def _gpu_names(torch) -> list[str]:
    """GPU names without creating a CUDA context when there is none yet (forked workers stay safe)."""
    if torch is not None and torch.cuda.is_initialized():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            return [n.strip() for n in out.splitlines() if n.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return []


def environment(device: str | None = None) -> dict:
    """What made a result besides the constants: package versions, Python, OS, CPU model, what
    decides the floating-point path on the CPU (torch's ``cpu_capability``, the :data:`CPU_FLAGS`
    present, ``OMP_NUM_THREADS`` and torch's thread count), the device (``auto`` resolved) and the
    GPU names when CUDA is used. Seeded runs repeat exactly only with the
    same versions (requirements-lock.txt) on the same kind of machine."""
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    torch = sys.modules.get("torch")  # not imported here: a step without torch records no CUDA
    cuda = bool(torch is not None and torch.cuda.is_available())
    dev = device_name(str(device or "auto").lower(), cuda)
    env = {"python": platform.python_version(), "platform": platform.platform(), "cpu": _cpu_model(),
           "cpu_count": os.cpu_count(), "cpu_capability": _cpu_capability(), "cpu_flags": _cpu_flags(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "device": dev, "packages": versions}
    if "torch" in sys.modules:  # imported by the step or for cpu_capability
        env["torch_threads"] = sys.modules["torch"].get_num_threads()
    if torch is not None:
        if dev.startswith("cuda") and cuda:
            env["cuda"] = torch.version.cuda
            if torch.cuda.is_initialized():  # asking cuDNN earlier would create a CUDA context
                env["cudnn"] = torch.backends.cudnn.version()
            env["gpu"] = _gpu_names(torch)
    return env
