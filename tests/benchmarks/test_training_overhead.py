"""Overhead of the harness's training loop over a bare PyTorch loop, as a ratio in one run.

What is measured: one recognizer training step for the ``ppfr_fd`` defense (ArcFace on the
masked maps ``PpfrFd.encode(x)``, i.e. ×8 upsampling, BDCT, shuffles, mixing), driven once by
the harness — :func:`bench.recognition.sgd_epochs` reading an in-memory :class:`FaceSet` with the
``step_loss`` that :func:`bench.recognition.train_recognizer` builds (``defense.train_step``) —
and once by a hand-written loop doing the same arithmetic on the same batches: index, flip half,
encode, ``model.loss``, ``zero_grad``, ``backward``, ``SGD.step``. Same model architecture and
initial weights, same batch size, same number of steps, one intra-op thread on both sides.

Why: the harness wraps every step of every recognizer it trains (epoch chunks, flips, device
copies, loss bookkeeping, the finite-loss check); that wrapping must stay ≤ 5 % of a step. Extra
per-step work — a copy of the batch or of the weights, a rebuilt loader or optimizer, Python
bookkeeping — costing more than ~1–2 ms of a ~20–50 ms step shows here (an injected 2.5 ms per
step measured 1.10–1.13 and failed). On the CPU a per-step host sync (``loss.item()``) costs
nothing, so the CUDA side of that rule is beyond what this CPU test can see.

How (robust on a busy 2-core CI machine): sizes are chosen so one step costs tens of ms; both
sides are warmed up, then harness and bare blocks of a few steps alternate (ABBA order, so a
load drift hits both sides alike) and the medians of the block times are compared. A round over
the bound is measured again (at most ``ROUNDS`` rounds): noise from other processes makes a round
slower at random, a real overhead makes every round slower. Times are taken with
``time.perf_counter`` (pytest-benchmark is disabled in the default run); the test asserts only the
ratio measured in this run and prints it with its bound (``pytest -s`` shows it).
"""
from __future__ import annotations

import copy
import statistics
import time

import pytest
import torch

from bench.config import RecognizerConfig
from bench.data.facedata import FaceSet
from bench.recognition import Recognizer, sgd_epochs
from defenses.ppfr_fd import PpfrFd
from ratio import injected

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIDE = 16  # 16×16 gray faces → ×8 upsampled BDCT → 63×16×16 masked maps
BATCH = 16
STEPS = 4  # steps per timed block (one harness epoch)
IDENTITIES = 8
PAIRS = 16  # harness/bare block pairs per round
ROUNDS = 3  # a round over the bound is measured again, at most this many rounds
BOUND = 1.05  # harness ≤ 1.05 × bare
CPU = torch.device("cpu")
CFG = RecognizerConfig(widths=(8, 16, 32, 64), embedding_dim=32, batch_size=BATCH, epochs=1,
                       lr=0.01, milestones=(), warmup_epochs=0, dropout=0.0)


class Harness:
    """``sgd_epochs`` as ``train_recognizer`` calls it (one epoch = ``STEPS`` steps); ``gen``
    draws the epoch's permutation and flips and the defense's randomness, as there."""

    def __init__(self, model: Recognizer, faces: FaceSet, defense: PpfrFd, seed: int) -> None:
        self.model, self.faces, self.defense = model, faces, defense
        self.gen = torch.Generator().manual_seed(seed)
        labels = faces.labels.to(CPU)
        # hog_check.py's regression: every batch encoded once more (its own generator, so the
        # two sides still train alike)
        twice = injected("training")

        def step_loss(idx: torch.Tensor, flip: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
            y = labels[idx.to(CPU)]
            if twice:
                defense.encode(x, torch.Generator().manual_seed(0))
            return defense.train_step(model, x, y, self.gen)

        self.step_loss = step_loss

    def block(self) -> None:
        sgd_epochs(list(self.model.parameters()), self.step_loss, len(self.faces), CFG, self.gen,
                   "overhead", progress=False, faces=self.faces, device=CPU)


class Bare:
    """The hand-written loop: a permutation and flips per block, then per step index, flip,
    encode, ArcFace loss, zero_grad, backward, SGD step."""

    def __init__(self, model: Recognizer, faces: FaceSet, defense: PpfrFd, seed: int) -> None:
        self.model, self.faces, self.defense = model, faces, defense
        self.gen = torch.Generator().manual_seed(seed)
        self.opt = torch.optim.SGD(model.parameters(), lr=CFG.lr, momentum=CFG.momentum,
                                   weight_decay=CFG.weight_decay)

    def block(self) -> float:
        n, gen = len(self.faces), self.gen
        torch.randint(2**62, (1,), generator=gen)  # the harness's draw seeding the global RNG
        order = torch.randperm(n, generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5
        loss = torch.zeros(())
        for s in range(n // BATCH):
            idx, flip = order[s * BATCH:(s + 1) * BATCH], flips[s * BATCH:(s + 1) * BATCH]
            x = self.faces.images[idx]
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = self.model.loss(self.defense.encode(x, gen), self.faces.labels[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return float(loss.detach())


def _faces() -> FaceSet:
    gen = torch.Generator().manual_seed(0)
    n = BATCH * STEPS
    return FaceSet(torch.rand(n, 1, SIDE, SIDE, generator=gen), torch.arange(n) % IDENTITIES)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_harness_training_step_overhead_within_5_percent():
    faces, defense = _faces(), PpfrFd()
    in_shape = tuple(defense.encode(faces.images[:2], torch.Generator().manual_seed(0)).shape[1:])
    assert in_shape == (63, SIDE, SIDE)
    torch.manual_seed(0)
    model_h = Recognizer(CFG, in_shape, IDENTITIES).train()
    model_b = copy.deepcopy(model_h)
    harness, bare = Harness(model_h, faces, defense, seed=1), Bare(model_b, faces, defense, seed=1)

    # Same computation on both sides: from the same weights and seed, one block each (a fresh
    # SGD on both) lands on the same weights — same batches, flips, masks and updates.
    harness.block()
    bare.block()
    for p, q in zip(model_h.parameters(), model_b.parameters()):
        torch.testing.assert_close(p, q)

    for _ in range(2):  # warm-up: allocator, kernels, momentum buffers
        harness.block()
        bare.block()

    ratios: list[float] = []
    for round_ in range(ROUNDS):
        t_h: list[float] = []
        t_b: list[float] = []
        for i in range(PAIRS):
            first, second = (harness, bare) if i % 2 == 0 else (bare, harness)
            a, b = _seconds(first.block), _seconds(second.block)
            t_h.append(a if first is harness else b)
            t_b.append(b if first is harness else a)
        ratio = statistics.median(t_h) / statistics.median(t_b)
        pair = statistics.median(h / b for h, b in zip(t_h, t_b))
        ratios.append(ratio)
        step_h, step_b = (1e3 * statistics.median(t) / STEPS for t in (t_h, t_b))
        print(f"\ntraining-step overhead, round {round_ + 1}: harness {step_h:.1f} ms/step, "
              f"bare {step_b:.1f} ms/step, ratio of medians harness/bare "
              f"{ratio:.3f} (bound {BOUND:g}); median pair ratio {pair:.3f}")
        if ratio <= BOUND:
            break
    assert min(ratios) <= BOUND, (
        f"harness training step is {min(ratios):.3f}× a bare PyTorch loop in the best of "
        f"{len(ratios)} rounds (ratios {[round(r, 3) for r in ratios]}); bound {BOUND:.2f}")
