"""The template-inversion attack ``template_inversion`` (ALGORITHMS §14 "Template inversion",
`[PAPER NbNet TPAMI'19]`, sizes `[ASSUMP]`).

The attacker holds templates — the defended recognizer F2's embeddings of the private faces, a
stolen template database (``Leak.extra["templates"]``) — and trains a decoder from embedding to
face on its public faces: pairs ``(F2(defense(x_pub)), x_pub)`` (``Leak.extra["train_templates"]``
with ``Leak.train_targets``). The pipeline computes both with F2 and the defense's test-time
encoding (:func:`bench.pipeline.templates`), as the attacker who holds F2 would: ``white_box``
runs the defense with the deployment's secrets; ``black_box`` with secrets it drew itself (its
queries of F2 on its own encodings), so against a secret key its pairs no longer match the
stolen templates. For a template-protection defense (SlerpFace-like) the templates are the
protected ones the deployment verifies with.

Decoder: :class:`bench.backbones.decoders.TemplateDecoder` — Linear → 4×4 map → NbNet-like blocks
(stride-2 transposed conv + densely connected convs, ``nb_layers`` per block; 0 = a plain
transposed-conv stack) up to the image size → sigmoid; trained with L1 by the shared loop
(:func:`bench.core.training.train_l1_decoder`, Adam). Templates are standardised per dimension
with the training statistics. ``epochs=50, batch_size=32, lr=1e-3, width=64, nb_layers=2`` are
``[ASSUMP]`` (the §7.2 decoders' recipe).

The reconstructions are measured as every reconstruction (§8) plus ``SRRA_other`` (accepted as
the same person against a *different* photo of that person; NbNet: 95.2 % same-image vs 58.05 %
other-image TAR@FAR 0.1 % on LFW).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from attacks.base import Attack
from bench.backbones.decoders import build_template_decoder
from bench.core.context import Context
from bench.core.contract import Leak, ModelSpec, Reconstruction
from bench.core.errors import ConfigError, TrainingError
from bench.core.registry import ATTACKS
from bench.core.training import Standardizer, check_positive, predict, train_l1_decoder


@ATTACKS.register("template_inversion")
class TemplateInversionAttack(Attack):
    """NbNet-like decoder from the defended recognizer's templates to faces (ALGORITHMS §14)."""

    requires = ("templates", "train_templates")  # in every leak the pipeline builds
    family = "template"
    # ALGORITHMS §15 floor on `none`, quick preset, ORL (measured SSIM .33, SRRA .98): README
    # "Identity-level attacks, worst case, strength floors"
    floor = {"SSIM": 0.25, "SRRA": 0.8}

    @dataclass
    class Options(Attack.Options):
        epochs: int = 50  # [ASSUMP] as the §7.2 decoders
        batch_size: int = 32  # [ASSUMP]
        lr: float = 1e-3  # [ASSUMP]
        width: int = 64  # [ASSUMP] the narrowest stage; the first is 8× wider
        nb_layers: int = 2  # [ASSUMP] densely connected convs per NbNet block (0: plain stack)

        def validate(self) -> None:
            Attack.Options.validate(self)  # knowledge (ALGORITHMS §1)
            check_positive("attacks.template_inversion", epochs=self.epochs,
                           batch_size=self.batch_size, lr=self.lr, width=self.width)
            if self.nb_layers < 0:
                raise ConfigError(f"attacks.template_inversion.nb_layers must be >= 0, "
                                  f"got {self.nb_layers}")

    def run(self, leak: Leak, ctx: Context) -> Reconstruction:
        o = self.options
        train_t, test_t = check_template_leak(self.name, leak)
        out_shape = tuple(leak.train_targets.shape[1:])
        norm = Standardizer(train_t)
        train_r, test_r = norm(train_t), norm(test_t)
        net, losses = train_l1_decoder(
            self.name, lambda: build_template_decoder(train_r.shape[1], out_shape, o.width,
                                                      o.nb_layers),
            train_r, leak.train_targets, epochs=o.epochs, batch_size=o.batch_size, lr=o.lr,
            ctx=ctx, init_salt=(self.name, "init"), shuffle=ctx.generator(self.name, "shuffle"))
        images = predict(lambda t: net(t.to(ctx.device)), test_r, max(o.batch_size, 64))
        return Reconstruction(images.clamp(0, 1), info={
            "final_l1": losses.get("l1"), "epochs": o.epochs, "knowledge": self.knowledge,
            "template_dim": int(train_r.shape[1])})

    def training_models(self, in_shape: tuple[int, ...],
                        image_shape: tuple[int, int, int]) -> dict[str, ModelSpec]:
        """The decoder (its input is a template, not ``in_shape``: 512-d assumed here, the
        paper recognizers' embedding size)."""
        dim = 512
        net = build_template_decoder(dim, tuple(image_shape), self.options.width,
                                     self.options.nb_layers)
        return {"decoder": ModelSpec(net, (dim,))}


def check_template_leak(name: str, leak: Leak) -> tuple[Tensor, Tensor]:
    """``(train_templates, templates)`` as ``[N, D]``, or a TrainingError naming what is missing."""
    train_t, test_t = leak.extra.get("train_templates"), leak.extra.get("templates")
    if train_t is None or test_t is None:
        missing = "train_templates" if train_t is None else "templates"
        raise TrainingError(f"{name}: the leak has no {missing} (F2's embeddings, ALGORITHMS §14; "
                            f"the pipeline adds templates and train_templates to every leak)")
    train_t, test_t = train_t.flatten(1).float(), test_t.flatten(1).float()
    if len(train_t) != len(leak.train_targets) or len(train_t) < 2:
        raise TrainingError(f"{name}: needs one train template per public face (at least 2), "
                            f"got {len(train_t)} templates for {len(leak.train_targets)} faces")
    if train_t.shape[1] != test_t.shape[1] or leak.train_targets.dim() != 4:
        raise TrainingError(f"{name}: templates {tuple(test_t.shape)} do not match train templates "
                            f"{tuple(train_t.shape)}, or targets are not [N, C, H, W]")
    return train_t, test_t
