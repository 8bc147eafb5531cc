"""ArcFace training of recognizers that are not a plain :class:`bench.recognition.Recognizer`:
AdvFace's offline fine-tuning of Ψ (ALGORITHMS §6) and DuetFace's client and server models (§5).

The loop and the precise-BN pass are the harness's own (:func:`bench.recognition.sgd_epochs`,
:func:`bench.recognition.recalibrate_batchnorm`); only the source of a batch differs: a callable,
so a defense can serve precomputed representations (AdvFace's adversarial features are expensive
to recompute every epoch) or a cheap transform computed on the fly (DuetFace's BDCT).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from bench.config import RecognizerConfig
from bench.context import Context
from bench.recognition import recalibrate_batchnorm, sgd_epochs

#: ``batch(idx, flip)`` → the representation of examples ``idx``, image-flipped where ``flip``.
BatchFn = Callable[[Tensor, Tensor], Tensor]


def fit_arcface(model: nn.Module, batch: BatchFn, labels: Tensor, ctx: Context, cfg: RecognizerConfig,
                desc: str, params: list[nn.Parameter] | None = None,
                bn_scope: nn.Module | None = None) -> nn.Module:
    """Train ``model`` (it has ``loss(r, y)``) with ArcFace on the ``batch`` representations of
    examples with ``labels`` (0..n-1); ``params`` (default: every trainable parameter) are updated.
    Ends with a precise-BN pass over ``bn_scope`` (default: the whole model) without flips."""
    gen = ctx.generator("recognizer", desc)
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    n = len(labels)

    def step_loss(idx: Tensor, flip: Tensor) -> Tensor:
        return model.loss(batch(idx, flip).to(ctx.device), labels[idx].to(ctx.device))

    model.train()
    sgd_epochs(params, step_loss, n, cfg, gen, desc, ctx.progress)
    size = max(2, min(cfg.batch_size, n))
    no_flip = torch.zeros(size, dtype=torch.bool)
    recalibrate_batchnorm(model, (batch(idx, no_flip[:len(idx)]) for idx in torch.arange(n).split(size)),
                          scope=bn_scope)
    return model
