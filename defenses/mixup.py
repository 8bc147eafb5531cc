"""MixUp / InstaHide defenses: pixel, full-BDCT and PPFR-FD-masked variants (ALGORITHMS §2,
[H §4.1, Table 1, Table 2], [CODE Hazelsuko07/InstaHide:train_inside.py]).

Every batch is mixed with itself, re-randomised each iteration, and the recognizer is trained with
mixed-label ArcFace (§0.3). Test-time recognition uses the unmixed representation (no mixing, no
sign flips, §0.2). Threat model (§1–§3, §7.1): the attacker holds the mixed representations of the
victim's images (``inputs``; scored against their slot-0 originals) and simulates the defense with
its real randomness on its auxiliary faces to get (mixed, slot-0 image) training pairs.

[ASSUMP] choices, each an option or documented here:
- Pixel ("rgb") variants mix ``2x − 1`` (pixels centred to [−1, 1]), as InstaHide mixes
  mean-normalised images; without centring a sign flip of a [0, 1] pixel would carry its value in
  the sign alone. On grayscale data the "RGB" variants mix the gray pixels.
- Full-BDCT ("fd") variants mix the raw gray BDCT coefficients (all 64 channels, DC included, no
  per-channel normalisation; the recognizer's BatchNorm absorbs the scale).
- Mixing happens in batches of ``recognizer.batch_size`` also when the leak is simulated; a ragged
  set is split into near-equal batches so that no image is mixed inside a tiny batch.
- ``leak_rounds``: how many independent mixtures of each auxiliary face the attacker simulates
  (default 1, so the attacker has as many pairs as for any other defense).
- ``secure_rng``: draw weights, partners, signs (and PPFR-FD's permutations) from ``os.urandom``
  instead of the run's seeded generator (§2); results are then not reproducible.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from bench.core.context import Context
from bench.core.contract import Leak
from bench.core.errors import ConfigError
from bench.core.registry import DEFENSES
from bench.data.facedata import FaceData
from defenses.base import Defense
from defenses.bdct import bdct_image, masked_view
from defenses.mixing import Mixed, RandomSource, check_cap, check_k, mix_batch, random_source
from defenses.ppfr_fd import PpfrMasker, PpfrOptions


@dataclass
class MixOptions:
    """Options shared by the fixed-k mixing defenses (ALGORITHMS §2)."""

    k: int = 2
    cap: float = 0.65  # [ASSUMP] the InstaHide default, for the MixUp-FD / InstaHide-FD baselines
    secure_rng: bool = False  # os.urandom instead of the run's generator (§2)
    leak_rounds: int = 1  # [ASSUMP] mixtures of each auxiliary face the attacker simulates

    def validate(self) -> None:
        check_k(self.k)
        check_cap(self.cap, self.k)
        if self.leak_rounds < 1:
            raise ConfigError(f"mixing leak_rounds must be >= 1, got {self.leak_rounds}")


@dataclass
class FdMixOptions(MixOptions):
    upsample: bool = True  # §0.1 TFace ×8 upsampling before the BDCT (v2: every preset)


@dataclass
class MaskingMixOptions(MixOptions, PpfrOptions):
    """PPFR-FD's options (§1) plus the mixing ones; cap 0.55 as in [H]."""

    cap: float = 0.55

    def validate(self) -> None:
        PpfrOptions.validate(self)
        MixOptions.validate(self)


class MixingDefense(Defense):
    """Shared machinery: ``represent`` (unmixed representation) → in-batch mixing → mixed-label
    ArcFace; the leak of §2/§7.1; ``record`` with the share of each k used in training."""

    name = "mixing"
    signs: ClassVar[bool] = False  # InstaHide's random ±1 per element
    space: ClassVar[str] = "bdct"  # pixel | bdct | masked (recorded for Table 1)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.k_counts: Counter[int] = Counter()
        self.record: dict[str, Any] = {}

    # -- the representation, before mixing ---------------------------------------------------------
    def represent(self, x: Tensor, gen: torch.Generator) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def train_k(self, z: Tensor, src: RandomSource) -> int:
        """The k of one training batch: fixed here; AdaMixUp asks its policy."""
        return self.options.k

    def leak_k(self, src: RandomSource) -> int:
        """The k of one simulated batch of the leak: the training k (AdaMixUp: its histogram)."""
        return self.options.k

    def _source(self, gen: torch.Generator) -> RandomSource:
        return random_source(gen, self.options.secure_rng)

    def mix(self, z: Tensor, y: Tensor | None, k: int, src: RandomSource) -> Mixed:
        return mix_batch(z, y, k, self.options.cap, src, signs=self.signs)

    # -- Defense contract ----------------------------------------------------------------------------
    def encode(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """What leaves the data owner: the batch ``x`` mixed with itself."""
        src = self._source(gen)
        return self.mix(self.represent(x, src.generator()), None, self.leak_k(src), src).z

    def test_encode(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """Verification uses the unmixed representation (§0.2: no mixing, no sign flips)."""
        return self.represent(x, self._source(gen).generator())

    def train_step(self, model: Any, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        """Mixed-label ArcFace on a freshly mixed batch (§2 step 5, §0.3)."""
        src = self._source(gen)
        z = self.represent(x, src.generator())
        k = self.train_k(z, src)
        self.k_counts[k] += 1
        m = self.mix(z, y, k, src)
        return model.mixed_loss(m.z, m.gt, m.co)

    def train_recognizer(self, data: FaceData, ctx: Context) -> Any:
        self.k_counts = Counter()
        model = super().train_recognizer(data, ctx)
        self.record = self.make_record()
        return model

    def make_record(self) -> dict[str, Any]:
        """Shares of each k over the training batches (keys as strings: JSON) — [H] Table 3."""
        total = sum(self.k_counts.values()) or 1
        ks = sorted(self.k_counts)
        return {"space": self.space, "signs": self.signs, "cap": self.options.cap,
                "k_counts": {str(k): int(self.k_counts[k]) for k in ks},
                "k_share": {str(k): self.k_counts[k] / total for k in ks}}

    # The stream (issue 11, ALGORITHMS §7.3): the server receives every mixed training batch, so
    # each private face appears in about k × epochs encodings. [ASSUMP] the leak simulates enough
    # random batchings of the private (test) faces that each appears in about
    # ``STREAM_APPEARANCES`` encodings (the attack weakens near 10, Luo et al. 2105.07754), and the
    # attacker simulates ``TRAIN_STREAM_APPEARANCES`` of its own public faces.
    STREAM_APPEARANCES: ClassVar[int] = 20
    TRAIN_STREAM_APPEARANCES: ClassVar[int] = 10

    def leak(self, data: FaceData, ctx: Context) -> Leak:
        """Attacker pairs: mixed auxiliary faces → their slot-0 originals (real randomness);
        stolen ``inputs``: the test faces mixed in batches, row ``i`` having test face ``i`` in
        slot 0 (its scoring target). ``extra`` holds what the attacker knows from its own
        simulation (membership/coefficients of its pairs); ``oracle`` the true membership of the
        stolen mixtures (never handed to attacks). The decoupling attack's stream is added by
        :meth:`extend_leak`, only for attacks that require it."""
        gen = ctx.generator("leak", self.name)
        batch = ctx.recognizer.batch_size if ctx.recognizer is not None else 32
        rounds = self.options.leak_rounds
        aux = data.aux.images
        tr = [self.mix_dataset(aux, batch, gen) for _ in range(rounds)]
        train_inputs = torch.cat([t[0] for t in tr])
        train_targets = aux.repeat(rounds, 1, 1, 1)
        inputs, members, coeffs = self.mix_dataset(data.test.images, batch, gen)
        extra = {"mixing": {"space": self.space, "signs": self.signs, "cap": self.options.cap,
                            "k_share": self.record.get("k_share"),
                            "upsample": getattr(self.options, "upsample", None)},
                 "train_members": torch.cat([t[1] for t in tr]),
                 "train_coefficients": torch.cat([t[2] for t in tr])}
        return Leak(train_inputs, train_targets, inputs, data.test.images, data.test.labels,
                    views=self.view(inputs), extra=extra,
                    oracle={"members": members, "coefficients": coeffs})

    def extend_leak(self, leak: Leak, data: FaceData, ctx: Context) -> None:
        """Add the stream (ALGORITHMS §7.3, for the decoupling attack) to ``leak`` in place. A
        separate step from :meth:`leak` because it is large (hundreds of MiB on ORL quick) and
        only attacks that declare ``requires = ("stream", …)`` read it: the pipeline stores the
        extended leak under its own key.

        ``extra["stream"]`` holds ``inputs [E, C, h, w]`` — ``stream_rounds`` random batchings
        of the test faces, the first being ``leak.inputs`` itself (rows ``0..N−1``) — with what
        the server sees of each encoding: the per-slot identity ``labels [E, k_max]`` (−1
        padded, slot order as the mixed-label loss consumes them) and ``coefficients
        [E, k_max]``, plus ``n_private`` (the number of private faces), ``rounds`` and ``bytes``;
        ``oracle["stream_members"]`` the true member indices ``[E, k_max]``.
        ``extra["train_stream"]``: the same for the attacker's own public faces
        (``train_targets[:n_aux]``), membership included (its own simulation). Masked spaces add
        ``extra["unmixed_train_inputs"]``: the attacker's public faces masked but not mixed (rows
        of ``train_targets[:n_aux]``), for a masked→image decoder. Memory:
        ``extra["stream_bytes"]`` = float32 bytes of both streams, about
        ``4·C·h·w·N·(STREAM_APPEARANCES + TRAIN_STREAM_APPEARANCES·n_aux/N)/k̄`` (ORL quick,
        MixUp-FD k = 2: 1000 + 500 encodings of 64×32×32 → 384 MiB)."""
        batch = ctx.recognizer.batch_size if ctx.recognizer is not None else 32
        aux = data.aux.images
        first = (leak.inputs, leak.oracle["members"], leak.oracle["coefficients"])
        sgen = ctx.generator("leak_stream", self.name)
        stream, stream_members = self.mix_stream(
            data.test.images, data.test.labels, batch, sgen,
            self.stream_rounds(self.STREAM_APPEARANCES), first=first)
        train_stream, train_stream_members = self.mix_stream(
            aux, data.aux.labels, batch, sgen, self.stream_rounds(self.TRAIN_STREAM_APPEARANCES))
        train_stream["members"] = train_stream_members
        leak.extra["stream"], leak.extra["train_stream"] = stream, train_stream
        if self.space == "masked":
            with torch.no_grad():
                leak.extra["unmixed_train_inputs"] = self.represent(aux, self._source(sgen).generator())
        leak.extra["stream_bytes"] = int(stream["bytes"] + train_stream["bytes"])
        leak.oracle["stream_members"] = stream_members

    def mean_leak_k(self) -> float:
        """Mean k of the leak's mixtures: the training k histogram when recorded, else ``k``."""
        share = (self.record or {}).get("k_share") or {}
        total = sum(float(v) for v in share.values())
        if total > 0:
            return sum(int(k) * float(v) for k, v in share.items()) / total
        return float(getattr(self.options, "k", 2))

    def stream_rounds(self, appearances: int) -> int:
        """Random batchings of a set so that each face appears in about ``appearances``
        encodings (one batching puts each face in k̄ encodings on average)."""
        return max(1, math.ceil(appearances / self.mean_leak_k()))

    @torch.no_grad()
    def mix_stream(self, images: Tensor, labels: Tensor, batch: int, gen: torch.Generator,
                   rounds: int, first: tuple[Tensor, Tensor, Tensor] | None = None
                   ) -> tuple[dict[str, Any], Tensor]:
        """``rounds`` independent :meth:`mix_dataset` batchings of ``images`` (``first``, when
        given, is round 0). Returns the server's view ``{"inputs", "labels", "coefficients",
        "n_private", "rounds", "bytes"}`` and the true members ``[E, k_max]`` (−1 padded)."""
        parts = [first] if first is not None else []
        while len(parts) < rounds:
            parts.append(self.mix_dataset(images, batch, gen))
        k_max = max(p[1].shape[1] for p in parts)
        pad = lambda t, v: torch.nn.functional.pad(t, (0, k_max - t.shape[1]), value=v)  # noqa: E731
        z = torch.cat([p[0] for p in parts])
        members = torch.cat([pad(p[1], -1) for p in parts])
        coeffs = torch.cat([pad(p[2], 0.0) for p in parts])
        labels = labels.to(torch.long)
        mixed_labels = torch.where(members >= 0, labels[members.clamp_min(0)],
                                   torch.full_like(members, -1))
        return ({"inputs": z, "labels": mixed_labels, "coefficients": coeffs,
                 "n_private": len(images), "rounds": rounds,
                 "bytes": z.numel() * z.element_size()}, members)

    @torch.no_grad()
    def mix_dataset(self, images: Tensor, batch: int,
                    gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Mix a whole set in random batches of about ``batch`` images. Returns the mixtures in
        the set's order (row ``i`` has image ``i`` in slot 0), the members ``[N, k_max]`` (indices
        into ``images``, −1 padded) and their coefficients ``[N, k_max]`` (0 padded)."""
        n = len(images)
        src = self._source(gen)
        order = src.randperm(n)
        out: Tensor | None = None
        parts = []
        for chunk in torch.tensor_split(order, max(1, math.ceil(n / batch))):
            m = self.mix(self.represent(images[chunk], src.generator()), None, self.leak_k(src), src)
            if out is None:
                out = m.z.new_empty((n,) + tuple(m.z.shape[1:]))
            out[chunk] = m.z
            parts.append((chunk, chunk[m.idx].T, m.co.cpu()))
        k_max = max(p[1].shape[1] for p in parts)
        members = torch.full((n, k_max), -1, dtype=torch.long)
        coeffs = torch.zeros(n, k_max)
        for chunk, mem, co in parts:
            members[chunk, : mem.shape[1]] = mem
            coeffs[chunk, : co.shape[1]] = co
        assert out is not None
        return out, members, coeffs


# -- pixel domain ([H] Table 1, "RGB") ---------------------------------------------------------------
@DEFENSES.register("mixup_rgb")
class MixupRgb(MixingDefense):
    """MixUp in the pixel domain, k = 2, cap 0.65 ([H] Table 1 "RGB"; ALGORITHMS §2)."""

    space = "pixel"
    Options = MixOptions

    def represent(self, x: Tensor, gen: torch.Generator) -> Tensor:
        return x * 2 - 1  # [ASSUMP] centred pixels (see module docstring)

    def view(self, r: Tensor) -> Tensor:
        """The mixed image itself, back in [0, 1]."""
        return ((r + 1) / 2).clamp(0, 1)


@DEFENSES.register("instahide_rgb")
class InstahideRgb(MixupRgb):
    """InstaHide in the pixel domain: MixUp plus an independent random ±1 per element ([H] Table 1)."""

    signs = True


# -- full 64-channel BDCT ([H] Tables 1–2, "FD") ----------------------------------------------------------
@DEFENSES.register("mixup_fd")
class MixupFd(MixingDefense):
    """MixUp-FD: MixUp of the full 64-channel gray BDCT, k = 2, cap 0.65 (ALGORITHMS §2)."""

    space = "bdct"
    Options = FdMixOptions

    def represent(self, x: Tensor, gen: torch.Generator) -> Tensor:
        return bdct_image(x, upsample=self.options.upsample)

    def view(self, r: Tensor) -> Tensor:
        """Inverse BDCT of the mixed coefficients, min-maxed per image (§0.1)."""
        return masked_view(r, removed=(), upsampled=self.options.upsample)


@DEFENSES.register("instahide_fd")
class InstahideFd(MixupFd):
    """InstaHide-FD: MixUp-FD plus an independent random ±1 per coefficient (ALGORITHMS §2)."""

    signs = True


# -- PPFR-FD masked ([H] Table 2, "Masking+MixUp") ---------------------------------------------------------
@DEFENSES.register("masking_mixup", k=2)
@DEFENSES.register("masking_mixup", k=3)
@DEFENSES.register("masking_mixup", k=4)
@DEFENSES.register("masking_mixup", k=5)
@DEFENSES.register("masking_mixup", k=6)
class MaskingMixup(MixingDefense):
    """Masking+MixUp(k): PPFR-FD masking (§1) then MixUp of the masked maps, cap 0.55 (§2)."""

    space = "masked"
    Options = MaskingMixOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.masker = PpfrMasker(self.options)

    def represent(self, x: Tensor, gen: torch.Generator) -> Tensor:
        return self.masker(x, gen)

    def view(self, r: Tensor) -> Tensor:
        return self.masker.view(r)

    def attacker_copy(self, gen: torch.Generator) -> Defense:
        """The black-box attacker's simulator (ALGORITHMS §1 v2): under PPFR-FD's ``fixed_key``
        a copy with a fresh key drawn from ``gen``; else ``self`` (no deployment secret)."""
        from defenses.ppfr_fd import with_fresh_key

        return with_fresh_key(self, gen)
