"""The timing loop the ratio gates share: harness vs reference, side by side in one run.

Both sides are timed with ``time.perf_counter`` (pytest-benchmark is disabled in the default
run) in blocks of calls of about equal length, the blocks alternating ABBA (ours, ref, ref,
ours, …) so a load drift hits both sides alike, and the medians of the block times are compared. A round over the
bound is measured again, at most ``rounds`` rounds: noise from other processes on a busy 2-core
machine slows a round at random, a real slowdown slows every round. Each round prints
``<name> <ratio> (bound <bound>)``, so the figure shows in the log (``pytest -s``, or the
failure report) before it fails a change; only the ratio measured in this run is asserted,
never an absolute time.

Every timing gate in this folder compares against a reference timed in the same round (this
loop's, or the gate's own ABBA loop: the training overhead, the ``--jobs 2`` speed-up against a
bare two-process loop's), so a busy machine slows both sides and a gate fails only for a
regression of ours. ``hog_check.py`` shows it: each gate quiet, beside two CPU hogs, and with a
regression injected through :func:`injected` (the one hook the gates honour, for that script).
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


#: ``hog_check.py`` sets it to one gate's name to run that gate with its regression injected
#: (the check that the gate can fail); nothing else sets it.
REGRESSION_ENV = "BENCH_GATE_REGRESSION"


def injected(gate: str) -> bool:
    """Whether this run asks gate ``gate`` to inject its regression (``hog_check.py`` only)."""
    return os.environ.get(REGRESSION_ENV) == gate


@dataclass
class Measured:
    """The best round: its ratio and median block times (seconds per call), every round's ratio."""

    ratio: float
    ours_s: float
    ref_s: float
    ratios: list[float] = field(default_factory=list)


def settle_allocator(mib: int = 24) -> None:
    """Put glibc's malloc in its steady state before timing: allocating and freeing one block
    larger than the current mmap threshold raises that threshold to the block's size (and the
    heap's trim threshold to twice that), never to lower again. Without it, whether each
    multi-MiB temporary of a timed call is reused from the heap or mapped anew and faulted in
    page by page (~0.8 ms per 2 MiB on the CI-class VM) depends on what the process freed
    before: the same PSNR call measured 0.2 ms or 2.6 ms in two test sessions."""
    np.ones(mib * 2**20 // 8).sum()


def block_seconds(fn: Callable[[], object], reps: int) -> float:
    """Mean seconds per call over one block of ``reps`` calls."""
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def call_seconds(fn: Callable[[], object], n: int = 3) -> float:
    """Median seconds of ``n`` single calls."""
    return statistics.median(block_seconds(fn, 1) for _ in range(n))


def measure_ratio(name: str, ours: Callable[[], object], ref: Callable[[], object], bound: float,
                  *, block_s: float = 0.04, pairs: int = 6, rounds: int = 4, warmup: int = 1,
                  round_s: float = 4.0, unit: str = "ms", scale: float = 1e3) -> Measured:
    """Median(ours) / median(ref) per call over ``pairs`` ABBA pairs of blocks, re-measured (at
    most ``rounds`` rounds) while over ``bound``; prints every round. The caller asserts.

    Both sides' blocks last about as long — ``max(block_s, one call of either side)``, each
    side's calls per block set from a timed call after the warm-up — so time-sharing with other
    processes hits both alike: with a 0.5 ms reference block against a 10 ms harness block, the
    short blocks mostly fit in one scheduler slice and the long ones do not (measured under a
    2-process CPU hog: a 7 → 15 ms re-run against an unchanged 0.55 ms load, ratio ×2). When
    a call is so slow that ``pairs`` pairs would take more than ``round_s``, fewer pairs (at
    least 2) are timed, so a failing gate still fails in seconds."""
    for _ in range(warmup):  # caches, first-touch allocations, lazy imports
        ours(), ref()
    settle_allocator()
    t_ours, t_ref = call_seconds(ours), call_seconds(ref)
    block = max(block_s, t_ours, t_ref)
    reps_ours, reps_ref = (max(1, round(block / t)) for t in (t_ours, t_ref))
    pairs = max(2, min(pairs, int(round_s / (4 * block))))  # a slow side (a regression) stays quick
    best: Measured | None = None
    ratios: list[float] = []
    for round_ in range(rounds):
        a: list[float] = []
        b: list[float] = []
        for _ in range(pairs):
            a.append(block_seconds(ours, reps_ours))
            b.append(block_seconds(ref, reps_ref))
            b.append(block_seconds(ref, reps_ref))
            a.append(block_seconds(ours, reps_ours))
        ours_s, ref_s = statistics.median(a), statistics.median(b)
        ratio = ours_s / ref_s
        ratios.append(ratio)
        print(f"\n{name} {ratio:.3f} (bound {bound:g}); round {round_ + 1}: "
              f"{ours_s * scale:.2f} {unit} vs {ref_s * scale:.2f} {unit} per call "
              f"({reps_ours} vs {reps_ref} calls per block)")
        if best is None or ratio < best.ratio:
            best = Measured(ratio, ours_s, ref_s)
        if ratio <= bound:
            break
    assert best is not None
    best.ratios = ratios
    return best


def assert_within(name: str, m: Measured, bound: float) -> None:
    assert m.ratio <= bound, (
        f"{name} {m.ratio:.3f} > bound {bound:g} in the best of {len(m.ratios)} rounds "
        f"(ratios {[round(r, 3) for r in m.ratios]})")
