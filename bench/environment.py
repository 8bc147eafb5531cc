"""The software and hardware a cell's numbers were computed with (issue "numbers you can defend").

:func:`environment` goes into every cell record. :func:`environment_key` is the part that can change
numbers: versions of the libraries that compute (torch, numpy, timm, scikit-image, scipy), the
harness version, the device model and torch's thread count (CPU float reductions depend on it).
Reports never pool records whose keys differ (leaderboard rows are split by it, ``bench compare``
says so next to the numbers). Python's patch level, the host name and the CPU count do not enter it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from importlib import metadata
from typing import Any

import torch

from bench import __version__

#: distributions whose version is recorded (import name → distribution name)
LIBRARIES = {"torch": "torch", "numpy": "numpy", "timm": "timm", "scikit-image": "scikit-image",
             "scipy": "scipy", "torchvision": "torchvision", "opacus": "opacus"}
#: what may change a number (see the module docstring)
KEY_FIELDS = ("harness", "torch", "numpy", "timm", "scikit-image", "scipy", "device_model",
              "torch_threads")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_model(device: torch.device | str | None = None) -> str:
    """``cpu: <model>`` or ``cuda: <GPU name>`` of the device stages ran on."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    return f"cpu: {cpu_model()}"


def usable_cpus() -> int:
    """The cores this process may run on: its affinity mask (``taskset``, a container's cpuset, a
    pinned test worker), not every core of the machine — threads beyond it only queue."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Versions, device and thread counts of this process (JSON-ready)."""
    env: dict[str, Any] = {"harness": __version__, "python": platform.python_version()}
    env.update({name: _version(dist) for name, dist in LIBRARIES.items()})
    env.update({
        "platform": platform.platform(),
        "device_model": device_model(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.version.cuda,
    })
    return env


def environment_key(env: dict[str, Any] | None) -> str:
    """8 hex digits of the fields that can change numbers; ``"unknown"`` for old records."""
    if not env:
        return "unknown"
    blob = json.dumps({k: env.get(k) for k in KEY_FIELDS}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def environment_diff(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[str]:
    """``field: A → B`` for each key field that differs between two environments."""
    a, b = a or {}, b or {}
    return [f"{k}: {a.get(k)} → {b.get(k)}" for k in KEY_FIELDS if a.get(k) != b.get(k)]
