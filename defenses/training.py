"""ArcFace training of recognizers that are not a plain :class:`bench.recognition.Recognizer`:
AdvFace's offline fine-tuning of Ψ (ALGORITHMS §6) and DuetFace's client and server models (§5).

Same recipe as :func:`bench.recognition.train_recognizer` (SGD with momentum and weight decay,
the step schedule, horizontal flips in image space, ragged last batch dropped, NaN check, one
"precise BN" pass at the end), but the representation of a batch comes from a callable, so a
defense can serve precomputed representations (AdvFace's adversarial features are expensive to
recompute every epoch) or a cheap transform computed on the fly (DuetFace's BDCT).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from bench.config import RecognizerConfig
from bench.context import Context
from bench.errors import TrainingError

#: ``batch(idx, flip)`` → the representation of examples ``idx``, image-flipped where ``flip``.
BatchFn = Callable[[Tensor, Tensor], Tensor]


def lr_at(cfg: RecognizerConfig, epoch: int) -> float:
    """Step schedule ×0.1 at each milestone with optional linear warm-up (as the harness's)."""
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / (cfg.warmup_epochs + 1)
    return cfg.lr * 0.1 ** sum(epoch >= m for m in cfg.milestones)


def fit_arcface(model: nn.Module, batch: BatchFn, labels: Tensor, ctx: Context, cfg: RecognizerConfig,
                desc: str, params: list[nn.Parameter] | None = None,
                bn_scope: nn.Module | None = None) -> nn.Module:
    """Train ``model`` (it has ``loss(r, y)``) with ArcFace on the ``batch`` representations of
    examples with ``labels`` (0..n-1); ``params`` (default: every trainable parameter) are updated.
    Ends with a precise-BN pass over ``bn_scope`` (default: the whole model) without flips."""
    gen = ctx.generator("recognizer", desc)
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    n = len(labels)
    size = min(cfg.batch_size, n)
    steps = max(1, n // size)  # BatchNorm needs > 1 sample: drop the ragged last batch
    bar = tqdm(range(cfg.epochs), desc=desc, disable=not ctx.progress, leave=False)
    model.train()
    for epoch in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for step in range(steps):
            idx = order[step * size:(step + 1) * size]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            loss = model.loss(batch(idx, flip).to(ctx.device), labels[idx].to(ctx.device))
            if not torch.isfinite(loss):
                raise TrainingError(f"{desc}: loss became {loss.item()} at epoch {epoch}; "
                                    "lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        bar.set_postfix(loss=f"{total / steps:.3f}")
    precise_bn(model, bn_scope or model, lambda idx: batch(idx, torch.zeros(len(idx), dtype=torch.bool)),
               n, size)
    model.eval()
    return model


@torch.no_grad()
def precise_bn(model: nn.Module, scope: nn.Module, batch: Callable[[Tensor], Tensor], n: int,
               size: int) -> None:
    """Re-estimate the BatchNorm statistics of ``scope`` (a part of ``model``) with one pass over
    the ``n`` training examples, as :func:`bench.recognition.recalibrate_batchnorm` does; the rest
    of the model (e.g. DuetFace's frozen client) stays in eval mode and keeps its statistics."""
    norms = [m for m in scope.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    device = next(model.parameters()).device
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the pass
        bn.train()
    for start in range(0, n, max(2, size)):
        idx = torch.arange(start, min(n, start + max(2, size)))
        if len(idx) > 1:
            model(batch(idx).to(device))
    for bn in norms:
        bn.momentum = 0.1
    model.eval()
