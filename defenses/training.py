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
from bench.core.context import Context
from bench.data.facedata import FaceSource
from bench.recognition import recalibrate_batchnorm, recalibration_batches, sgd_epochs

#: ``batch(idx, flip, x)`` → the representation of examples ``idx``, image-flipped where ``flip``;
#: ``x`` is their images (float, on the device, flipped) when ``fit_arcface`` reads a face set.
BatchFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def fit_arcface(model: nn.Module, batch: BatchFn, labels: Tensor, ctx: Context, cfg: RecognizerConfig,
                desc: str, params: list[nn.Parameter] | None = None,
                bn_scope: nn.Module | None = None, faces: FaceSource | None = None) -> nn.Module:
    """Train ``model`` (it has ``loss(r, y)``) with ArcFace on the ``batch`` representations of
    examples with ``labels`` (0..n-1); ``params`` (default: every trainable parameter) are updated.
    With ``faces`` the loop reads their images (streamed or in memory) and hands them to
    ``batch``. Ends with a precise-BN pass over ``bn_scope`` (default: the whole model) without
    flips when ``cfg.bn_recalibration`` is true; leaves ``model`` in eval mode."""
    gen = ctx.generator("recognizer", desc)
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    n = len(labels)
    on_device = labels.to(ctx.device)

    def step_loss(idx: Tensor, flip: Tensor, x: Tensor | None) -> Tensor:
        return model.loss(batch(idx, flip, x).to(ctx.device), on_device[idx.to(ctx.device)])

    model.train()
    sgd_epochs(params, step_loss, n, cfg, gen, desc, ctx.progress, faces=faces, device=ctx.device,
               workers=ctx.workers)
    if cfg.bn_recalibration:  # precise BN (why: RecognizerConfig.bn_recalibration)
        size = max(2, min(cfg.batch_size, n))
        no_flip = torch.zeros(size, dtype=torch.bool)
        if faces is None:
            reps = (batch(idx, no_flip[:len(idx)], None) for idx in torch.arange(n).split(size))
        else:
            reps = (batch(torch.arange(len(x)), no_flip[:len(x)], x)
                    for x in recalibration_batches(faces, size, ctx.device, ctx.workers))
        recalibrate_batchnorm(model, reps, scope=bn_scope)
    model.eval()
    return model
