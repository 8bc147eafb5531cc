"""Training plumbing shared by attacks and defenses (ALGORITHMS §7.1, §7.2, §6).

Input standardisation, resizing a representation to the image grid, the epoch/mini-batch loop
with NaN detection and a progress bar, the one L1 decoder loop (every attack decoder, Carlini's
masked decoder, XNN's token decoders and AdvFace's shadow decoder train through it), batched
inference. :func:`train_epochs` reports each epoch's mean losses to the stage's training curves
(:mod:`bench.core.curves`).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from bench.core.context import Context, seeded
from bench.core.curves import record_epoch, start_curve
from bench.core.errors import ConfigError, TrainingError


class Standardizer:
    """Per-channel affine standardisation fitted on the attacker's training inputs.

    Representations come in any scale (DCT coefficients spanning orders of magnitude,
    normalised channels, activations), so each channel is mapped to zero mean / unit std using
    statistics of ``train_inputs`` only; the same map is reused on the stolen inputs.
    Constant channels (e.g. masked-out ones) get std 1 so they stay finite.
    """

    def __init__(self, train_inputs: Tensor, eps: float = 1e-6) -> None:
        x = train_inputs.detach().float()
        dims = [d for d in range(x.dim()) if d != 1]
        self.mean = x.mean(dim=dims, keepdim=True)[:1]
        std = x.std(dim=dims, keepdim=True)[:1] if x.numel() > x.shape[1] else torch.ones_like(self.mean)
        self.std = torch.where(std > eps, std, torch.ones_like(std))

    def __call__(self, x: Tensor) -> Tensor:
        return (x.float() - self.mean.to(x.device)) / self.std.to(x.device)


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize to ``size`` (no-op when already there); area when shrinking, so a
    larger representation is averaged rather than aliased."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def pad_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Replicate-pad ``x`` (centred) up to ``size``; see :func:`crop_to` for the inverse."""
    dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    if dh == 0 and dw == 0:
        return x
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), mode="replicate")


def crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Centre crop undoing :func:`pad_to`."""
    top, left = (x.shape[-2] - size[0]) // 2, (x.shape[-1] - size[1]) // 2
    return x[..., top:top + size[0], left:left + size[1]]


def check_positive(where: str, **values: float) -> None:
    """Raise ConfigError for each non-positive hyper-parameter (for ``Options.validate``)."""
    for name, value in values.items():
        if not value > 0:
            raise ConfigError(f"{where}.{name} must be > 0, got {value}")


def check_leak(name: str, train_inputs: Tensor, train_targets: Tensor, inputs: Tensor) -> None:
    """Shape sanity of a Leak for the image-reconstruction attacks."""
    if train_inputs.dim() != 4 or train_targets.dim() != 4 or inputs.dim() != 4:
        raise TrainingError(f"{name}: expects [N, C, H, W] tensors, got train_inputs "
                            f"{tuple(train_inputs.shape)}, train_targets "
                            f"{tuple(train_targets.shape)}, inputs {tuple(inputs.shape)}")
    if len(train_inputs) != len(train_targets) or len(train_inputs) == 0:
        raise TrainingError(f"{name}: needs as many (non-zero) train_inputs as train_targets, "
                            f"got {len(train_inputs)} and {len(train_targets)}")
    if inputs.shape[1:] != train_inputs.shape[1:]:
        raise TrainingError(f"{name}: inputs {tuple(inputs.shape[1:])} do not match "
                            f"train_inputs {tuple(train_inputs.shape[1:])}")


def train_epochs(name: str, n: int, epochs: int, batch_size: int,
                 step: Callable[[Tensor], dict[str, Tensor]], gen: torch.Generator,
                 ctx: Context, on_epoch_end: Callable[[int], None] | None = None,
                 lr_option: str = "lr",
                 held_out: Callable[[], dict[str, float]] | None = None) -> dict[str, float]:
    """Shuffled mini-batch epochs over ``n`` examples; returns the last epoch's mean losses.

    ``step(idx)`` trains on the examples ``idx`` and returns its losses as tensors (``.item()``
    is taken here, once per step). A NaN/inf loss raises TrainingError naming ``lr_option``.
    Each epoch's means (and ``held_out()``'s losses on data the loop does not train on, for
    loops that keep such a split) go to the stage's training curves (:func:`record_epoch`);
    ``held_out`` must leave the model and every generator as it found them.
    """
    bar = tqdm(range(epochs), desc=name, unit="ep", disable=not ctx.progress, leave=False)
    means: dict[str, float] = {}
    curve = start_curve(name, "train_epochs")
    for epoch in bar:
        sums: dict[str, float] = {}
        order = torch.randperm(n, generator=gen)
        batches = 0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            losses = step(idx)
            batches += 1
            for key, value in losses.items():
                v = float(value.detach())
                if not math.isfinite(v):
                    raise TrainingError(f"{name}: loss became NaN at epoch {epoch + 1}; "
                                        f"lower attacks.{name}.{lr_option}")
                sums[key] = sums.get(key, 0.0) + v
        means = {k: v / batches for k, v in sums.items()}
        record_epoch(curve, epoch, means, held_out() if held_out is not None else None)
        bar.set_postfix({k: f"{v:.4f}" for k, v in means.items()})
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    bar.close()
    return means


def train_l1_decoder(name: str, build: Callable[[], nn.Module], inputs: Tensor, targets: Tensor, *,
                     epochs: int, batch_size: int, lr: float, ctx: Context,
                     init_salt: tuple[object, ...], shuffle: torch.Generator,
                     batch_inputs: Callable[[Tensor], Tensor] | None = None,
                     lr_option: str = "lr",
                     held_out: Callable[[nn.Module], dict[str, float]] | None = None,
                     ) -> tuple[nn.Module, dict[str, float]]:
    """Train ``build()`` with Adam on L1(net(input), target) over shuffled mini-batches; returns
    the network in eval mode and the last epoch's mean losses (``{"l1": …}``).

    The network is built and trained with torch's global RNG seeded from ``ctx.seed`` and
    ``init_salt`` (init and dropout reproducible from the run seed alone); ``shuffle`` orders the
    batches. ``batch_inputs(idx)`` (optional) returns a batch's inputs instead of ``inputs[idx]``
    (standardised, or re-drawn per step as XNN's expected attack does). ``held_out(net)``
    (optional): the losses on pairs the decoder does not train on, after each epoch (see
    :func:`train_epochs`).
    """
    device = ctx.device
    fetch = batch_inputs if batch_inputs is not None else (lambda idx: inputs[idx])
    with seeded(ctx, *init_salt):
        net = build().to(device).train()
        opt = torch.optim.Adam(net.parameters(), lr=lr)

        def step(idx: Tensor) -> dict[str, Tensor]:
            opt.zero_grad(set_to_none=True)
            loss = F.l1_loss(net(fetch(idx).to(device)), targets[idx].float().to(device))
            loss.backward()
            opt.step()
            return {"l1": loss}

        losses = train_epochs(name, len(inputs), epochs, batch_size, step, shuffle, ctx,
                              lr_option=lr_option,
                              held_out=None if held_out is None else lambda: held_out(net))
    return net.eval(), losses


@torch.no_grad()
def predict(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int) -> Tensor:
    """``fn`` over ``x`` in batches (CPU tensors in, CPU tensors out)."""
    outs = [fn(x[i:i + batch_size]).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else x.new_zeros((0,))


def eval_keep_dropout(model: nn.Module) -> None:
    """BatchNorm in eval mode (running statistics) while Dropout stays stochastic: the pix2pix
    generator's dropout is its noise z and is kept at test time (ALGORITHMS §7.1)."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.train()
