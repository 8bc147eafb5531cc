"""Content-addressed artifact store: finished stages are reused, a crash loses only the stage in
flight (ARCHITECTURE "The stages of one cell").

A stage's key hashes its name, the config values it depends on, its upstream keys, the harness
version and a fingerprint of the code that computes it (``bench.fingerprint``) — never upstream
*contents* — so every key of a matrix is known before anything runs.
Writes are atomic: the payload goes to a temporary file in the same folder, is flushed to disk,
then renamed over the final name, so a reader sees a finished file or none.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from bench import __version__


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


class ArtifactStore:
    """``root/<stage>/<key>.pt`` files written by :func:`torch.save` (our own, trusted, cache)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / f"{key}.pt"

    def has(self, stage: str, key: str) -> bool:
        return self.path(stage, key).is_file()

    def save(self, stage: str, key: str, obj: Any) -> None:
        buf = io.BytesIO()
        torch.save(obj, buf)
        atomic_write_bytes(self.path(stage, key), buf.getvalue())

    def load(self, stage: str, key: str) -> Any:
        return torch.load(self.path(stage, key), map_location="cpu", weights_only=False)

    def get_or_compute(self, stage: str, key: str, compute: Callable[[], Any]) -> Any:
        """Load the stage if stored (recomputing a damaged file), else compute and store it."""
        if self.has(stage, key):
            try:
                return self.load(stage, key)
            except Exception as exc:  # a damaged artifact is recomputed, never trusted
                warnings.warn(f"stored {stage} artifact {key} is unreadable ({exc}); recomputing")
        obj = compute()
        self.save(stage, key, obj)
        return obj
