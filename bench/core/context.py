"""`Context`: what every stage and plugin is handed — device, seed-derived generators, options.

Randomness is passed, never global: :meth:`Context.generator` derives an independent, reproducible
``torch.Generator`` from the run seed and a salt naming its use.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


def derive_seed(seed: int, *salt: object) -> int:
    """A 63-bit seed from ``seed`` and a salt, stable across processes and platforms."""
    text = "/".join([str(seed), *map(str, salt)]).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


def device_generator(gen: torch.Generator, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded by one draw from ``gen``: large noise tensors (InstaHide's
    signs, feature noise) are drawn where the model is instead of on the CPU and copied per step,
    and stay a deterministic function of the run's seeded generator."""
    seed = int(torch.randint(2**62, (1,), generator=gen))
    return torch.Generator(device=device).manual_seed(seed)


@contextlib.contextmanager
def _global_rng_seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Fork torch's global RNG (CPU, and ``device`` when it is a GPU), seed it, restore it after."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if devices:
            torch.cuda.manual_seed(seed)
        yield


def global_rng_from(gen: torch.Generator,
                    device: torch.device | str | None = None) -> contextlib.AbstractContextManager:
    """Run the block with torch's global RNG (CPU, and ``device`` when it is a GPU) seeded by one
    draw from ``gen``, restoring the caller's state afterwards.

    Library modules draw from the global RNG (weight init, ``nn.Dropout``): seeding it from the
    passed generator for exactly the block makes them a function of the run seed alone — not of
    what ran before in the process, nor of how many numbers a library version happened to draw
    while importing or building (a measured cause of different accuracies in two environments).
    """
    seed = int(torch.randint(2**62, (1,), generator=gen))
    return _global_rng_seeded(seed, torch.device(device) if device is not None else torch.device("cpu"))


def seeded(ctx: "Context", *salt: object) -> contextlib.AbstractContextManager:
    """:func:`global_rng_from` with the seed derived from ``ctx.seed`` and ``salt`` instead of a
    generator draw: an attack or defense stage reproducible from the run seed alone."""
    return _global_rng_seeded(derive_seed(ctx.seed, *salt), ctx.device)


@dataclass
class Context:
    """Run-wide settings handed to stages and plugins."""

    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True
    recognizer: Any = None  # bench.config.RecognizerConfig
    baseline: Any = None  # the unprotected recognizer F1, once trained (feature defenses need E)
    workers: int = 0  # DataLoader processes decoding a streamed training set

    def generator(self, *salt: object) -> torch.Generator:
        """A fresh generator seeded from the run seed and ``salt`` (on the CPU)."""
        return torch.Generator().manual_seed(derive_seed(self.seed, *salt))
