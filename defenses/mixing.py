"""Batch mixing shared by every mixing defense (ALGORITHMS §2, [H §4.1]).

- :func:`sample_weights`: λ ``[B, k]`` — ``|N(0, 1)|`` rows normalised to sum 1, rows whose max
  exceeds ``cap`` redrawn (vectorised rejection: only the rejected rows are drawn again).
- :func:`mix_batch`: slot 0 is the batch itself, slots 1..k−1 are random permutations of it;
  ``z_mix = Σ_i λ[:, i] · z[idx_i]``, labels ``gt [k, B]``, coefficients ``co = λ``; InstaHide
  multiplies every element by an independent random ±1 afterwards.
- Random sources: :class:`TorchRandom` (the run's seeded ``torch.Generator``, reproducible) and
  :class:`SecureRandom` (``os.urandom``, not reproducible). §2: the InstaHide challenge was broken
  by recovering a non-cryptographic PRNG's state, so a deployment should draw its mixing secrets
  from the OS's CSPRNG.
"""
from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from bench.core.context import device_generator
from bench.core.errors import ConfigError

K_MIN, K_MAX = 2, 10  # the k a mixing defense may be configured with
MAX_REJECTION_ROUNDS = 10_000  # far beyond what any cap accepted by check_cap needs in practice


class RandomSource(Protocol):
    """The draws mixing needs; every tensor comes back on the CPU."""

    def abs_normal(self, shape: Sequence[int]) -> Tensor: ...

    def randperm(self, n: int) -> Tensor: ...

    def signs(self, shape: Sequence[int], device: torch.device | str = "cpu") -> Tensor: ...

    def generator(self) -> torch.Generator: ...


class TorchRandom:
    """Draws from a seeded ``torch.Generator``: the same seed gives the same mixtures."""

    def __init__(self, gen: torch.Generator) -> None:
        self.gen = gen

    def abs_normal(self, shape: Sequence[int]) -> Tensor:
        return torch.randn(tuple(shape), generator=self.gen).abs()

    def randperm(self, n: int) -> Tensor:
        return torch.randperm(n, generator=self.gen)

    def signs(self, shape: Sequence[int], device: torch.device | str = "cpu") -> Tensor:
        g = device_generator(self.gen, device)  # one element per coefficient: draw it on the device
        return torch.randint(0, 2, tuple(shape), generator=g, device=device).float() * 2 - 1

    def generator(self) -> torch.Generator:
        return self.gen


class SecureRandom:
    """Draws from ``os.urandom`` (the OS CSPRNG), so no seed or PRNG state can be recovered.

    Normals by Box–Muller on 53-bit uniforms in (0, 1]; permutations by sorting 64-bit random
    keys; signs from random bits. Not reproducible by design.
    """

    @staticmethod
    def _uniform(n: int) -> np.ndarray:
        bits = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
        return (bits.astype(np.float64) + 1.0) / float(2**53)  # (0, 1]: log never sees 0

    def abs_normal(self, shape: Sequence[int]) -> Tensor:
        n = math.prod(shape)
        u1, u2 = self._uniform(n), self._uniform(n)
        z = np.sqrt(-2.0 * np.log(u1)) * np.abs(np.cos(2.0 * np.pi * u2))
        return torch.from_numpy(z.astype(np.float32)).reshape(tuple(shape))

    def randperm(self, n: int) -> Tensor:
        keys = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
        return torch.from_numpy(np.argsort(keys, kind="stable").astype(np.int64))

    def signs(self, shape: Sequence[int], device: torch.device | str = "cpu") -> Tensor:
        n = math.prod(shape)
        bits = np.unpackbits(np.frombuffer(os.urandom((n + 7) // 8), dtype=np.uint8))[:n]
        return torch.from_numpy(bits.astype(np.float32) * 2 - 1).reshape(tuple(shape)).to(device)

    def generator(self) -> torch.Generator:
        # For draws that need a torch.Generator (PPFR-FD's per-sample permutations): a fresh
        # generator seeded from the CSPRNG, so nothing about it follows from the run seed.
        return torch.Generator().manual_seed(secrets.randbits(63))


def random_source(gen: torch.Generator, secure: bool) -> RandomSource:
    return SecureRandom() if secure else TorchRandom(gen)


# -- validation ---------------------------------------------------------------------------------
def check_k(k: int, what: str = "k") -> None:
    if not isinstance(k, int) or not K_MIN <= k <= K_MAX:
        raise ConfigError(f"mixing {what} must be an integer in {K_MIN}..{K_MAX}, got {k!r}")


def check_cap(cap: float, k: int) -> None:
    """The weight cap must lie in (1/k, 1]: at 1/k only exactly equal weights would pass."""
    if not 1.0 / k < cap <= 1.0:
        raise ConfigError(f"mixing cap must be in (1/k, 1] = ({1.0 / k:.4g}, 1] for k = {k}, "
                          f"got {cap}")


# -- weights and mixing -------------------------------------------------------------------------
def sample_weights(b: int, k: int, cap: float, src: RandomSource) -> Tensor:
    """λ ``[b, k]``: rows of ``|N(0,1)|`` normalised to sum 1, max ≤ ``cap`` (ALGORITHMS §2.2).

    Rejected rows are redrawn together until every row passes; acceptance is low for k = 2
    (12.8 % at cap 0.55) but each round costs one small draw.
    """
    if k == 1:
        return torch.ones(b, 1)
    lam = torch.empty(b, k)
    todo = torch.arange(b)
    for _ in range(MAX_REJECTION_ROUNDS):
        if len(todo) == 0:
            return lam
        w = src.abs_normal((len(todo), k))
        w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
        ok = w.max(1).values <= cap
        lam[todo[ok]] = w[ok]
        todo = todo[~ok]
    raise ConfigError(f"mixing cap {cap} is too tight for k = {k}: no weights found after "
                      f"{MAX_REJECTION_ROUNDS} rounds; raise the cap")


@dataclass
class Mixed:
    """One mixed batch: ``z [B, C, h, w]``, per-slot labels ``gt [k, B]``, coefficients
    ``co [B, k]`` (rows sum to 1) and the batch indices mixed into each row ``idx [k, B]``."""

    z: Tensor
    gt: Tensor | None  # None when mixed without labels (what leaves the data owner)
    co: Tensor
    idx: Tensor


def mix_batch(z: Tensor, y: Tensor | None, k: int, cap: float, src: RandomSource,
              signs: bool = False) -> Mixed:
    """Mix a batch with itself (ALGORITHMS §2 steps 1–4); ``k = 1`` (with ``cap = 1``) returns
    the batch unchanged (up to InstaHide's signs)."""
    b = len(z)
    idx = torch.stack([torch.arange(b)] + [src.randperm(b) for _ in range(k - 1)])  # [k, B]
    lam = sample_weights(b, k, cap, src)
    idx_d, lam_d = idx.to(z.device), lam.to(z)
    shape = (b,) + (1,) * (z.ndim - 1)
    out = lam_d[:, 0].view(shape) * z  # slot 0 is the batch itself: no gather
    for i in range(1, k):
        out = out + lam_d[:, i].view(shape) * z[idx_d[i]]
    if signs:
        out = out * src.signs(out.shape, out.device).to(out)
    gt = y.to(z.device)[idx_d] if y is not None else None
    return Mixed(out, gt, lam_d, idx)
