"""Content-addressed artifact store: finished stages are reused, a crash loses only the stage in
flight (ARCHITECTURE "The stages of one cell").

A stage's key hashes its name, the config values it depends on, its upstream keys, the harness
version and a fingerprint of the code that computes it (``bench.fingerprint``) — never upstream
*contents* — so every key of a matrix is known before anything runs.
Writes are atomic: the payload goes to a temporary file in the same folder, is flushed to disk,
then renamed over the final name, so a reader sees a finished file or none. Two processes (or
machines) computing the same stage at once both finish; the last rename wins and both files are
whole, so the stage is valid either way.

Stages are written in the stage format of :mod:`bench.stageformat`: ``<key>.safetensors``, the
tensors as safetensors and the rest as JSON naming allowed classes, no pickle (a format to take
from strangers: ``python -m bench unpack``). Stores written before it hold ``<key>.pt`` files;
those keep loading, through the safe unpickler below, and are replaced by the new format when the
stage is next written.

Loading never executes code from a file. A legacy stage file is a :func:`torch.save` zip; it is read with
``torch.load(weights_only=True)``, whose unpickler builds only tensors, containers and the globals
it is given. Those are derived, per file and never from a hand list that goes stale, by
:func:`safe_global`: a class *defined* in the harness packages (:data:`HARNESS_PACKAGES`) or in a
registered plugin's package, an ``nn.Module`` (or enum) class of the libraries models are built
from (:data:`MODULE_PACKAGES`, any class of ``torch.nn``), and a few fixed numpy/builtin types
(:data:`_FIXED`). Functions are never allowed (so no ``os.system``, ``eval``, ``functools.partial``
or harness function can be called); ``builtins.getattr`` is replaced by :func:`_nested_class`, which
only looks up a nested class of an allowed class. A file naming anything else is refused like a
damaged one: a warning, and the stage is recomputed (:meth:`ArtifactStore.get_or_compute`). The
same :func:`safe_global` decides which classes a safetensors stage file may name.
"""
from __future__ import annotations

import enum
import hashlib
import importlib
import io
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from bench import __version__
from bench import stageformat

_UMASK = os.umask(0)
os.umask(_UMASK)


def stage_key(stage: str, **parts: Any) -> str:
    """Stable 20-hex-digit key of a stage from what it depends on."""
    payload = json.dumps({"stage": stage, "version": __version__, **parts}, sort_keys=True,
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


#: Packages every class of which may appear in a stored stage (the harness and its plugins).
HARNESS_PACKAGES = ("bench", "defenses", "attacks", "metrics")
#: Libraries whose ``nn.Module`` (and enum) classes stored models are built from; any class
#: defined under ``torch.nn`` (modules, spectral-norm hooks, …).
MODULE_PACKAGES = ("torch.nn", "torchvision", "timm", "opacus", "lpips")


class UnsafeArtifactError(Exception):
    """A stored stage names a global that safe loading does not allow."""


def _fixed_globals() -> dict[str, Any]:
    """Non-class or non-harness globals stages may contain: numpy arrays and scalars, a few
    builtin types, and the restricted nested-class lookup standing in for ``getattr``."""
    import numpy as np

    out: dict[str, Any] = {"builtins.getattr": _nested_class, "builtins.slice": slice,
                           "builtins.range": range, "builtins.frozenset": frozenset,
                           "numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[f"{mod}._reconstruct"] = multiarray._reconstruct
        out[f"{mod}.scalar"] = multiarray.scalar
    for name, cls in vars(getattr(np, "dtypes", object)).items():
        if isinstance(cls, type) and issubclass(cls, np.dtype):
            out[f"numpy.dtypes.{name}"] = cls
    return out


_FIXED: dict[str, Any] = {}


def _nested_class(owner: Any, name: str) -> type:
    """``getattr`` as pickle protocol 2 uses it for a nested class (``Outer.Inner``): only an
    allowed class's attribute that is itself an allowed class."""
    if not isinstance(owner, type) or safe_global(f"{owner.__module__}.{owner.__qualname__}") \
            is not owner:
        raise UnsafeArtifactError(f"getattr on {owner!r} is not allowed")
    value = owner.__dict__.get(name)
    if not isinstance(value, type) or \
            safe_global(f"{value.__module__}.{value.__qualname__}") is not value:
        raise UnsafeArtifactError(f"getattr({owner.__qualname__}, {name!r}) is not an allowed class")
    return value


def _nested(obj: Any) -> list[type]:
    """Allowed classes nested (at any depth) in class ``obj``."""
    out: list[type] = []
    if isinstance(obj, type):
        for value in vars(obj).values():
            if isinstance(value, type) and value.__qualname__.startswith(obj.__qualname__ + ".") \
                    and safe_global(f"{value.__module__}.{value.__qualname__}") is value:
                out += [value, *_nested(value)]
    return out


def _plugin_packages() -> set[str]:
    """Top-level packages of every registered plugin (third-party ones included)."""
    registry = sys.modules.get("bench.core.registry")
    if registry is None:
        return set()
    out = set()
    for reg in (registry.DEFENSES, registry.ATTACKS, registry.DATASETS):
        for name in reg.names():
            out.add(str(getattr(reg.get(name).factory, "__module__", "") or "").split(".")[0])
    return out - {"", "builtins"}


def _under(module: str, packages: Any) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _allowed_class(obj: Any, module: str, qualname: str) -> bool:
    if not (isinstance(obj, type) and obj.__module__ == module and obj.__qualname__ == qualname):
        return False  # only a class, named where it is defined (no alias, no re-export)
    if _under(module, HARNESS_PACKAGES) or _under(module, _plugin_packages()):
        return True
    if _under(module, ("torch.nn",)):
        return True
    return _under(module, MODULE_PACKAGES) and issubclass(obj, (torch.nn.Module, enum.Enum))


def _resolve_class(name: str) -> Any | None:
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:i])
        if "__main__" in parts[:i] or not (_under(module, HARNESS_PACKAGES + MODULE_PACKAGES)
                                           or _under(module, _plugin_packages())):
            continue  # (a package's __main__ runs its program when imported)
        try:  # importing a trusted, installed module runs its code, not the file's
            obj: Any = importlib.import_module(module)
        except ImportError:
            continue
        for attr in parts[i:]:  # attribute lookups only: nothing is called
            obj = getattr(obj, attr, None)
        return obj if _allowed_class(obj, module, ".".join(parts[i:])) else None
    return None


_RESOLVED: dict[str, Any] = {}  # allowed names only: a refusal is decided again next time


def safe_global(name: str) -> Any | None:
    """The object a stored stage may name as pickle global ``name`` (``module.qualname``), or
    None when it is not allowed (see the module docstring)."""
    if not _FIXED:
        _FIXED.update(_fixed_globals())
    if name in _FIXED:
        return _FIXED[name]
    if name not in _RESOLVED:
        found = _resolve_class(name)
        if found is None:
            return None
        _RESOLVED[name] = found
    return _RESOLVED[name]


def unsafe_globals(data: bytes) -> list[str]:
    """The globals of a :func:`torch.save` payload that safe loading refuses (sorted)."""
    names = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    return sorted(n for n in names if safe_global(n) is None)


def safe_load(data: bytes) -> Any:
    """Unpickle a :func:`torch.save` payload with ``weights_only=True`` and exactly the globals
    it names that :func:`safe_global` allows; raise :class:`UnsafeArtifactError` (before
    unpickling anything) if it names any other."""
    names = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    allowed: list[tuple[Any, str]] = []
    refused: list[str] = []
    for name in sorted(names):
        obj = safe_global(name)
        (refused.append(name) if obj is None else allowed.append((obj, name)))
    if refused:
        raise UnsafeArtifactError(f"refused to load globals {', '.join(refused)}")
    # protocol 2 names a nested class ``Outer.Inner`` as getattr(Outer, "Inner") (our
    # _nested_class): the unpickler must also accept the allowed classes nested in those named
    nested = [(c, f"{c.__module__}.{c.__qualname__}") for obj, _ in allowed for c in _nested(obj)]
    # and the fixed types always (numpy.dtype builds a numpy.dtypes.* instance the file never names)
    fixed = [(obj, name) for name, obj in _FIXED.items()]
    with torch.serialization.safe_globals(allowed + nested + fixed):
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


#: suffix of a stage file (:mod:`bench.stageformat`) and of the legacy pickle files still read
STAGE_SUFFIX = ".safetensors"
LEGACY_SUFFIX = ".pt"


def load_stage_bytes(data: bytes) -> Any:
    """A stage from a stage file's bytes, classes admitted by :func:`safe_global` only."""
    return stageformat.loads(data, safe_global)


class ArtifactStore:
    """``root/<stage>/<key>.safetensors`` files (:mod:`bench.stageformat`: tensors, and JSON naming
    allowed classes; nothing in them runs). ``<key>.pt`` files of older stores are still read,
    through :func:`safe_load`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / f"{key}{STAGE_SUFFIX}"

    def legacy_path(self, stage: str, key: str) -> Path:
        return self.root / stage / f"{key}{LEGACY_SUFFIX}"

    def stored_path(self, stage: str, key: str) -> Path | None:
        """The file holding the stage (the stage format first, then a legacy pickle), or None."""
        for path in (self.path(stage, key), self.legacy_path(stage, key)):
            if path.is_file():
                return path
        return None

    def has(self, stage: str, key: str) -> bool:
        return self.stored_path(stage, key) is not None

    def save(self, stage: str, key: str, obj: Any) -> bool:
        """Store ``obj`` as the stage; False (with a warning, nothing written) when the stage
        format cannot hold it (a function, a generator) — the run goes on with the object in
        memory and a later run recomputes the stage. A class the allowlist refuses is written by
        name, with a warning: loading refuses the file, so it is recomputed each run."""
        try:
            data = stageformat.dumps(obj, None)  # any class by name; the allowlist is for loading
        except stageformat.UnstorableError as exc:
            warnings.warn(f"stage {stage} cannot be stored ({exc}): it will be recomputed on "
                          f"every run; store modules, tensors and harness classes only "
                          f"(bench/stageformat.py)")
            return False
        refused = sorted(c for c in stageformat.referenced_classes(stageformat.read_header(data)[1])
                         if safe_global(c) is None)
        if refused:  # written (nothing in it runs) but no later run will load it
            warnings.warn(f"stage {stage} holds {', '.join(refused)}, which safe loading refuses: "
                          f"it will be recomputed on every run; store modules, tensors and harness "
                          f"classes only (bench/store.py)")
        atomic_write_bytes(self.path(stage, key), data)
        self.legacy_path(stage, key).unlink(missing_ok=True)  # superseded by the new file
        return True

    def load(self, stage: str, key: str) -> Any:
        path = self.stored_path(stage, key)
        if path is None:
            raise FileNotFoundError(f"no stored {stage} stage {key}")
        data = path.read_bytes()
        return safe_load(data) if path.suffix == LEGACY_SUFFIX else load_stage_bytes(data)

    def get_or_compute(self, stage: str, key: str, compute: Callable[[], Any]) -> Any:
        """Load the stage if stored (recomputing a damaged or unsafe file), else compute and store it."""
        if self.has(stage, key):
            try:
                return self.load(stage, key)
            except Exception as exc:  # a damaged or unsafe artifact is recomputed, never trusted
                warnings.warn(f"stored {stage} artifact {key} is unreadable or unsafe ({exc}); "
                              f"recomputing")
        obj = compute()
        self.save(stage, key, obj)
        return obj
