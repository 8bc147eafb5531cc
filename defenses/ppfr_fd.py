"""`ppfr_fd`: PPFR-FD "Masking" (ALGORITHMS §1, [H App. A.1]).

Gray BDCT → drop DC → shuffle π₁ → self-normalise → channel mixing → shuffle π₂ → self-normalise.
No trained parameters; the recognizer is trained on the masked maps. Choices marked [ASSUMP] in
ALGORITHMS §1 are options here: ``mix_mode``, ``perm_mode``, ``keep_channels``, ``upsample``.

Attacker knowledge (§1 v2): under ``perm_mode='fixed_key'`` the key is the deployment's secret;
:meth:`PpfrFd.attacker_copy` gives the black-box attacker's simulator (a fresh key),
:meth:`PpfrMasker.secrets` what only a white-box attacker gets, :meth:`PpfrMasker.mechanism` the
public description every attacker knows.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor

from bench.core.context import derive_seed
from bench.core.errors import ConfigError
from bench.core.registry import DEFENSES
from defenses.base import Defense
from defenses.bdct import BLOCK, DC_CHANNEL, bdct_image, masked_view

MIX_MODES = ("adjacent_sum", "random_pair_sum", "random_orthogonal")
PERM_MODES = ("per_sample", "fixed_key")


def self_normalise(c: Tensor, eps: float = 1e-5) -> Tensor:
    """Per sample and channel, over space: ``(c − mean) / (std + eps)`` [ASSUMP], population std.

    Two passes over each flattened map (the mean, then the mean of the squared deviations), not
    ``torch.std_mean``: the same figures to float32 rounding (~5e-7 from a float64 reference on
    unit-variance output, as std_mean's), but std_mean's reduction over the two trailing dims
    took 3.8 ms on a ``[128, 63, 8, 8]`` batch (one thread) where these two means take 0.3 ms —
    it made PPFR-FD masking 2.3× slower than the numpy reference of
    ``tests/benchmarks/test_masking_speed.py``. Out of place, so autograd can run through it
    (the white-box attack's adjoint)."""
    flat = c.reshape(*c.shape[:2], -1)
    centred = flat - flat.mean(dim=2, keepdim=True)
    std = centred.square().mean(dim=2, keepdim=True).sqrt()
    return (centred / (std + eps)).view(c.shape)


def permute_channels(c: Tensor, perms: Tensor) -> Tensor:
    """Apply per-sample channel permutations ``perms [B, C]`` (or one ``[C]`` for all); also a
    selection of ``C`` of ``c``'s channels in one copy (``out[:, k] = c[:, perms[k]]``)."""
    if perms.ndim == 1:
        return c[:, perms]
    idx = perms.to(c.device)[:, :, None, None].expand(-1, -1, *c.shape[2:])
    return torch.gather(c, 1, idx)


@dataclass
class PpfrOptions:
    keep_channels: list[int] = field(default_factory=list)  # [] = all 63 AC channels
    perm_mode: str = "per_sample"  # per_sample (no key management) | fixed_key
    mix_mode: str = "adjacent_sum"
    upsample: bool = True  # TFace ×8 bilinear upsampling before the BDCT (§0.1 v2: every preset)
    key_seed: int = 0  # the deployment's secret for perm_mode=fixed_key

    def validate(self) -> None:
        if self.perm_mode not in PERM_MODES:
            raise ConfigError(f"ppfr_fd perm_mode must be one of {PERM_MODES}, got {self.perm_mode!r}")
        if self.mix_mode not in MIX_MODES:
            raise ConfigError(f"ppfr_fd mix_mode must be one of {MIX_MODES}, got {self.mix_mode!r}")
        bad = [c for c in self.keep_channels if not 0 < c < BLOCK * BLOCK]
        if bad or len(set(self.keep_channels)) != len(self.keep_channels):
            raise ConfigError(f"ppfr_fd keep_channels must be distinct AC indices 1..63, got {self.keep_channels}")


class PpfrMasker:
    """The PPFR-FD transform on its own, reused by the mixing defenses built on top of it."""

    def __init__(self, options: PpfrOptions) -> None:
        self.options = options
        self.channels = list(options.keep_channels) or [i for i in range(BLOCK * BLOCK) if i != DC_CHANNEL]
        self.removed = tuple(i for i in range(BLOCK * BLOCK) if i not in self.channels)
        n = len(self.channels)
        key = torch.Generator().manual_seed(derive_seed(options.key_seed, "ppfr_fd-key"))
        self._key_perms = (torch.randperm(n, generator=key), torch.randperm(n, generator=key))
        self._key_mix = self._mixing_params(1, n, key)

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    def _perms(self, b: int, gen: torch.Generator, which: int) -> Tensor:
        if self.options.perm_mode == "fixed_key":
            return self._key_perms[which]
        return torch.argsort(torch.rand(b, self.num_channels, generator=gen), dim=1)

    def _mixing_params(self, b: int, n: int, gen: torch.Generator) -> Tensor | None:
        if self.options.mix_mode == "random_pair_sum":
            # partner of channel j is j + shift (mod n), shift ≠ 0: every channel gets a partner
            return torch.randint(1, n, (b,), generator=gen)
        if self.options.mix_mode == "random_orthogonal":
            q, r = torch.linalg.qr(torch.randn(b, n, n, generator=gen))
            return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
        return None

    def _mix(self, c: Tensor, gen: torch.Generator) -> Tensor:
        b, n = c.shape[:2]
        mode = self.options.mix_mode
        if mode == "adjacent_sum":
            return c + torch.roll(c, shifts=-1, dims=1)
        params = self._key_mix if self.options.perm_mode == "fixed_key" else self._mixing_params(b, n, gen)
        if mode == "random_pair_sum":
            shift = params.expand(b) if params.numel() == 1 else params
            idx = (torch.arange(n)[None, :] + shift[:, None]) % n
            return c + permute_channels(c, idx)
        q = params.expand(b, n, n).to(c)
        return torch.einsum("bij,bjhw->bihw", q, c)

    def _select(self, x: Tensor, perm1: Tensor) -> Tensor:
        """Gray BDCT of ``x``, kept channels permuted by ``perm1`` (``[C]`` or ``[B, C]``):
        channel k is BDCT channel ``channels[perm1[k]]``, selected and permuted in one index
        copy (two copies of a 128-face batch took 1.1 ms, one 0.6 ms)."""
        c = bdct_image(x, upsample=self.options.upsample)
        return permute_channels(c, torch.tensor(self.channels, device=perm1.device)[perm1])

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        c = self_normalise(self._select(x, self._perms(len(x), gen, 0)))
        c = self._mix(c, gen)
        return self_normalise(permute_channels(c, self._perms(len(c), gen, 1)))

    def view(self, r: Tensor) -> Tensor:
        return masked_view(r, self.removed, upsampled=self.options.upsample)

    # -- attacker knowledge (ALGORITHMS §1 v2) --------------------------------------------------------
    @property
    def keyed(self) -> bool:
        """Whether the deployment holds secrets (one fixed key for every image)."""
        return self.options.perm_mode == "fixed_key"

    def fresh_key(self, gen: torch.Generator) -> "PpfrMasker":
        """A copy with the fixed key (π₁, π₂ and the keyed mixing parameters) drawn from ``gen``:
        the mechanism as a black-box attacker simulates it. Same draw order as ``__init__``."""
        other = copy.copy(self)
        n = self.num_channels
        other._key_perms = (torch.randperm(n, generator=gen), torch.randperm(n, generator=gen))
        other._key_mix = self._mixing_params(1, n, gen)
        return other

    def secrets(self) -> dict[str, Tensor]:
        """The deployment's key under ``fixed_key`` (π₁, π₂ as channel-index tensors, the keyed
        mixing parameters when the mix mode has any); none under ``per_sample``."""
        if not self.keyed:
            return {}
        out = {"perm1": self._key_perms[0].clone(), "perm2": self._key_perms[1].clone()}
        if self._key_mix is not None:
            out["mix"] = self._key_mix.clone()
        return out

    def mechanism(self) -> dict[str, object]:
        """Public description (no key): what every attacker knows (Kerckhoffs)."""
        return {"family": "ppfr_fd", "channels": list(self.channels),
                "keep_channels": list(self.options.keep_channels),
                "perm_mode": self.options.perm_mode, "mix_mode": self.options.mix_mode,
                "upsample": bool(self.options.upsample)}

    def apply_with(self, x: Tensor, perm1: Tensor, perm2: Tensor,
                   mix: Tensor | None = None) -> Tensor:
        """The transform with explicit secrets (``perm1``/``perm2`` ``[C]`` or ``[B, C]``; ``mix``
        the mixing parameters for ``random_pair_sum``/``random_orthogonal``): what an attacker
        simulates when it needs to know the secrets of every pair it builds (§7.4)."""
        c = self_normalise(self._select(x, perm1))
        b, n = c.shape[:2]
        mode = self.options.mix_mode
        if mode == "adjacent_sum":
            c = c + torch.roll(c, shifts=-1, dims=1)
        elif mode == "random_pair_sum":
            shift = mix.reshape(-1).expand(b) if mix.numel() == 1 else mix
            idx = (torch.arange(n)[None, :] + shift[:, None]) % n
            c = c + permute_channels(c, idx)
        else:
            c = torch.einsum("bij,bjhw->bihw", mix.expand(b, n, n).to(c), c)
        return self_normalise(permute_channels(c, perm2))


@DEFENSES.register("ppfr_fd")
class PpfrFd(Defense):
    """PPFR-FD masking (ALGORITHMS §1). Threat model [H §3]: the attacker holds the trained model
    and masked data plus an auxiliary public face set, and simulates (masked, image) pairs on it."""

    Options = PpfrOptions

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.masker = PpfrMasker(self.options)

    def encode(self, x: Tensor, gen: torch.Generator) -> Tensor:
        return self.masker(x, gen)

    def view(self, r: Tensor) -> Tensor:
        return self.masker.view(r)

    def attacker_copy(self, gen: torch.Generator) -> Defense:
        """Under ``fixed_key``: a copy with a key drawn from ``gen`` (a black-box attacker knows
        the mechanism, not the key; ALGORITHMS §1 v2). Under ``per_sample``: ``self`` (the
        deployment has no secret; the two knowledge settings coincide in distribution)."""
        return with_fresh_key(self, gen)


def with_fresh_key(defense: Defense, gen: torch.Generator) -> Defense:
    """``defense`` (which holds a :class:`PpfrMasker` as ``masker``) with a fresh PPFR-FD key
    when it is keyed, else ``defense`` itself; shared by PPFR-FD and the masking mixups."""
    masker = getattr(defense, "masker", None)
    if not isinstance(masker, PpfrMasker) or not masker.keyed:
        return defense
    other = copy.copy(defense)
    other.masker = masker.fresh_key(gen)
    return other
