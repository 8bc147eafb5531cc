"""The decoder attacks ``resrec``, ``urec`` and ``transrec`` (ALGORITHMS §7.2).

Each trains a decoder network (bench/backbones/decoders.py) with L1 on (r, x) pairs with Adam;
``epochs=50, batch_size=32, lr=1e-3`` are ``[ASSUMP]``. Inputs are standardised per channel with
train statistics, as in the CGAN attack. The (r, x) pairs are those the attack's ``knowledge``
option allows (ALGORITHMS §1 v2; :class:`attacks.base.Attack.Options`): simulated with the
deployment's secrets (``white_box``, default) or with secrets the attacker drew itself
(``black_box``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from attacks.base import Attack
from bench.backbones.decoders import build_decoder
from bench.core.context import Context
from bench.core.contract import Leak, ModelSpec, Reconstruction
from bench.core.registry import ATTACKS
from bench.core.training import Standardizer, check_leak, check_positive, predict, train_l1_decoder


class DecoderAttack(Attack):
    """Train a §7.2 decoder with L1 on ``(train_inputs, train_targets)`` and decode ``inputs``.
    Subclasses fix ``kind``."""

    name: ClassVar[str] = "decoder"
    kind: ClassVar[str] = "resrec"
    family = "decoder"  # ALGORITHMS §15

    @dataclass
    class Options(Attack.Options):
        epochs: int = 50  # [ASSUMP]
        batch_size: int = 32  # [ASSUMP]
        lr: float = 1e-3  # [ASSUMP] (AdvFace's shadow uses 1e-4, §6)
        width: int = 64  # [ASSUMP]
        where: ClassVar[str] = "attacks.decoder"  # config path named in error messages

        def validate(self) -> None:
            Attack.Options.validate(self)  # knowledge (ALGORITHMS §1)
            check_positive(self.where, epochs=self.epochs, batch_size=self.batch_size,
                           lr=self.lr, width=self.width)

    def run(self, leak: Leak, ctx: Context) -> Reconstruction:
        o = self.options
        check_leak(self.name, leak.train_inputs, leak.train_targets, leak.inputs)
        device = ctx.device
        out_shape = tuple(leak.train_targets.shape[1:])
        norm = Standardizer(leak.train_inputs)
        train_r, test_r = norm(leak.train_inputs), norm(leak.inputs)
        net, losses = train_l1_decoder(
            self.name, lambda: build_decoder(self.kind, tuple(train_r.shape[1:]), out_shape, o.width),
            train_r, leak.train_targets, epochs=o.epochs, batch_size=o.batch_size, lr=o.lr, ctx=ctx,
            init_salt=(self.name, "init"), shuffle=ctx.generator(self.name, "shuffle"))
        images = predict(lambda r: net(r.to(device)), test_r, max(o.batch_size, 64))
        return Reconstruction(images.clamp(0, 1), info={"final_l1": losses.get("l1"),
                                                        "epochs": o.epochs,
                                                        "knowledge": self.knowledge})

    def training_models(self, in_shape: tuple[int, ...],
                        image_shape: tuple[int, int, int]) -> dict[str, ModelSpec]:
        """The decoder :meth:`run` trains (L1: forward + backward per sample)."""
        net = build_decoder(self.kind, tuple(in_shape), tuple(image_shape), self.options.width)
        return {self.kind: ModelSpec(net, tuple(in_shape))}


@ATTACKS.register("resrec")
class ResRecAttack(DecoderAttack):
    """ResRec decoder attack (ALGORITHMS §7.2)."""

    kind: ClassVar[str] = "resrec"
    family_rank = 0  # ALGORITHMS §15: `--attacks strongest` tries resrec first
    # on `none` (quick, ORL): measured SSIM .993 (seed 0; .936 seed 1), SRRA 1.0
    floor = {"SSIM": 0.85, "SRRA": 0.9}

    class Options(DecoderAttack.Options):
        where: ClassVar[str] = "attacks.resrec"


@ATTACKS.register("urec")
class URecAttack(DecoderAttack):
    """URec decoder attack (ALGORITHMS §7.2)."""

    kind: ClassVar[str] = "urec"
    family_rank = 1  # ALGORITHMS §15: `--attacks strongest` tries resrec first
    floor = {"SSIM": 0.85, "SRRA": 0.9}  # on `none` (quick, ORL): measured SSIM .992, SRRA 1.0

    class Options(DecoderAttack.Options):
        where: ClassVar[str] = "attacks.urec"


@ATTACKS.register("transrec")
class TransRecAttack(DecoderAttack):
    """TransRec decoder attack (ALGORITHMS §7.2)."""

    kind: ClassVar[str] = "transrec"
    family_rank = 2  # ALGORITHMS §15: `--attacks strongest` tries resrec first
    floor = {"SSIM": 0.85, "SRRA": 0.9}  # on `none` (quick, ORL): measured SSIM .988, SRRA 1.0

    class Options(DecoderAttack.Options):
        where: ClassVar[str] = "attacks.transrec"
