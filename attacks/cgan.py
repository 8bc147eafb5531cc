"""CGAN (pix2pix) reconstruction attack (ALGORITHMS §7.1).

The attacker trains a conditional GAN on (protected representation, original image) pairs built
from its auxiliary faces, then maps the stolen representations back to images.

Our choices, each marked ``[ASSUMP]`` and exposed as an option where it is a knob:

- ``epochs=100, batch_size=16``: pix2pix trains 100 + 100 (linear decay) epochs at batch 1;
  that is too slow for a matrix of cells, so the default keeps its learning rate and schedule
  shape (constant for the first half, then linear decay to 0 — ``lr_decay``) with batch 16 and
  100 epochs in all.
- Inputs are standardised per channel (statistics of ``train_inputs``) and, when smaller than
  the image, bilinearly upsampled to the image size (§7.1: "upsampled to the image size first").
- Image sizes that are not a power of two are replicate-padded to the next power of two (at
  least 32, the smallest 5-level U-Net) and the output is cropped back; ``num_downs=0`` picks
  ``log2`` of that size (7 for 128 px, 6 for 64, 5 for 32).
- ``knowledge`` (ALGORITHMS §1 v2, shared by every attack: :class:`attacks.base.Attack.Options`):
  which simulated pairs the attack trains on — the deployment's secrets (``white_box``, default,
  §7.1 "with its real randomness") or secrets the attacker drew itself (``black_box``).
- At reconstruction time BatchNorm uses its running statistics (``eval``) while dropout stays
  active: pix2pix's dropout is its noise z and is kept at test time; its default test script
  uses batch statistics at batch 1 instead, which would make a reconstruction depend on its
  batch-mates here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attacks.base import Attack
from bench.backbones.pix2pix import NLayerDiscriminator, UnetGenerator, auto_num_downs
from bench.core.context import Context, seeded
from bench.core.contract import Leak, ModelSpec, Reconstruction
from bench.core.errors import ConfigError
from bench.core.registry import ATTACKS
from bench.core.training import (Standardizer, check_leak, check_positive, crop_to,
                                 eval_keep_dropout, pad_to, predict, resize, train_epochs)


@ATTACKS.register("cgan")
class CganAttack(Attack):
    """pix2pix: U-Net generator + 70×70 PatchGAN on ``cat(r, x)``, BCE GAN + λ·L1 (§7.1)."""

    family = "cgan"  # ALGORITHMS §15; floor on `none` (quick, ORL; measured SSIM .88, SRRA 1.0)
    floor = {"SSIM": 0.8, "SRRA": 0.9}

    @dataclass
    class Options(Attack.Options):
        epochs: int = 100  # [ASSUMP] pix2pix: 100 + 100 decay epochs at batch 1
        batch_size: int = 16  # [ASSUMP] pix2pix: 1
        ngf: int = 64
        ndf: int = 64
        n_layers: int = 3  # 70×70 PatchGAN
        num_downs: int = 0  # 0 = log2(padded image side)
        lr: float = 2e-4
        beta1: float = 0.5
        lambda_l1: float = 100.0
        dropout: bool = True
        lr_decay: bool = True  # [ASSUMP] linear decay to 0 over the second half of the epochs

        def validate(self) -> None:
            Attack.Options.validate(self)  # knowledge (ALGORITHMS §1)
            check_positive("attacks.cgan", epochs=self.epochs, batch_size=self.batch_size,
                           lr=self.lr, ngf=self.ngf, ndf=self.ndf, n_layers=self.n_layers)
            if self.num_downs < 0 or 0 < self.num_downs < 5:
                raise ConfigError(f"attacks.cgan.num_downs must be 0 (auto) or >= 5, "
                                  f"got {self.num_downs}")
            if not 0 <= self.beta1 < 1:
                raise ConfigError(f"attacks.cgan.beta1 must be in [0, 1), got {self.beta1}")
            if self.lambda_l1 < 0:
                raise ConfigError(f"attacks.cgan.lambda_l1 must be >= 0, got {self.lambda_l1}")

    def run(self, leak: Leak, ctx: Context) -> Reconstruction:
        o = self.options
        check_leak(self.name, leak.train_inputs, leak.train_targets, leak.inputs)
        device = ctx.device
        out_c, H, W = leak.train_targets.shape[1:]
        in_c = leak.train_inputs.shape[1]
        num_downs = o.num_downs or auto_num_downs((H, W))
        side = max(2 ** num_downs, 32)  # padded working grid; 2**num_downs reaches 1×1
        if side < max(H, W):
            raise ConfigError(f"attacks.cgan.num_downs={o.num_downs} is too small for "
                              f"{H}x{W} images; use 0 (auto) or >= {auto_num_downs((H, W))}")
        grid = (side, side)

        norm = Standardizer(leak.train_inputs)
        train_r = norm(leak.train_inputs)
        test_r = norm(leak.inputs)
        train_x = leak.train_targets.float() * 2 - 1  # pix2pix works in [-1, 1]

        def condition(r: Tensor) -> Tensor:
            # Upsample per batch on the device: a 63-channel map at image size is ~1 MB a face.
            return pad_to(resize(r.to(device), (H, W)), grid)

        with seeded(ctx, "cgan", "init"):
            G = UnetGenerator(in_c, out_c, num_downs, o.ngf, use_dropout=o.dropout).to(device)
            D = NLayerDiscriminator(in_c + out_c, o.ndf, o.n_layers).to(device)
            opt_g = torch.optim.Adam(G.parameters(), lr=o.lr, betas=(o.beta1, 0.999))
            opt_d = torch.optim.Adam(D.parameters(), lr=o.lr, betas=(o.beta1, 0.999))
            # pix2pix "linear" policy: constant for n_epochs, then linear decay to ~0.
            keep = o.epochs - o.epochs // 2 if o.lr_decay else o.epochs
            decay = o.epochs - keep

            def factor(e: int) -> float:
                return 1.0 - max(0, e + 1 - keep) / float(decay + 1)

            scheds = [torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in (opt_g, opt_d)]
            G.train()
            D.train()

            def step(idx: Tensor) -> dict[str, Tensor]:
                r = condition(train_r[idx])
                x = pad_to(train_x[idx].to(device), grid)
                fake = G(r)
                # D: real pairs → 1, generated pairs → 0; the loss is halved (pix2pix).
                D.requires_grad_(True)
                opt_d.zero_grad(set_to_none=True)
                pred_fake = D(torch.cat([r, fake.detach()], 1))
                pred_real = D(torch.cat([r, x], 1))
                loss_d = 0.5 * (F.binary_cross_entropy_with_logits(pred_fake, torch.zeros_like(pred_fake))
                                + F.binary_cross_entropy_with_logits(pred_real, torch.ones_like(pred_real)))
                loss_d.backward()
                opt_d.step()
                # G: fool D, plus λ·L1 to the target; D is frozen so only G gets gradients.
                D.requires_grad_(False)
                opt_g.zero_grad(set_to_none=True)
                pred = D(torch.cat([r, fake], 1))
                loss_gan = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred))
                loss_l1 = F.l1_loss(fake, x)
                (loss_gan + o.lambda_l1 * loss_l1).backward()
                opt_g.step()
                # L1 reported in [0, 1] pixel units (the [-1, 1] range doubles it).
                return {"g_gan": loss_gan, "l1": loss_l1 / 2, "d": loss_d}

            def end_epoch(_: int) -> None:
                for s in scheds:
                    s.step()

            losses = train_epochs(self.name, len(train_r), o.epochs, o.batch_size, step,
                                  ctx.generator("cgan", "shuffle"), ctx, end_epoch)

            eval_keep_dropout(G)

            def reconstruct(r: Tensor) -> Tensor:
                out = crop_to(G(condition(r)), (H, W))
                return ((out + 1) / 2).clamp(0, 1)

            images = predict(reconstruct, test_r, max(o.batch_size, 32))
        return Reconstruction(images, info={"final_l1": losses.get("l1"),
                                            "final_g_gan": losses.get("g_gan"),
                                            "final_d": losses.get("d"), "epochs": o.epochs,
                                            "num_downs": num_downs, "knowledge": self.knowledge})

    def training_models(self, in_shape: tuple[int, ...],
                        image_shape: tuple[int, int, int]) -> dict[str, ModelSpec]:
        """G and D as :meth:`run` builds them, on the padded working grid. Passes per sample and
        step: G forward + backward (3); D forward + backward on the fake and on the real pair
        (3 + 3), then forward + input-gradient backward in G's step (2)."""
        o = self.options
        out_c, H, W = image_shape
        num_downs = o.num_downs or auto_num_downs((H, W))
        side = max(2 ** num_downs, 32)  # as in run: the condition is upsampled and padded
        G = UnetGenerator(in_shape[0], out_c, num_downs, o.ngf, use_dropout=o.dropout)
        D = NLayerDiscriminator(in_shape[0] + out_c, o.ndf, o.n_layers)
        return {"G": ModelSpec(G, (in_shape[0], side, side), 3.0),
                "D": ModelSpec(D, (in_shape[0] + out_c, side, side), 8.0, inference=False)}
