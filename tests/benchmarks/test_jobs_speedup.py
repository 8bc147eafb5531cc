"""``--jobs 2`` (loky) against ``--jobs 1`` on a matrix of independent cells, as a ratio in one run.

What is measured: the tiny matrix of ``tests/conftest.py`` (``TINY_SETTINGS``, ResRec cut to one
epoch of width 8, three recognizer epochs) with one defense (``none``), one attack (``resrec``)
and four seeds: four cells that share nothing, so each of the three waves (baselines, defense
chains, attacks) has four equal, CPU-bound tasks, each on one torch thread. A run is
:func:`bench.matrix.run_matrix` into a fresh results folder (everything trained), serial
(``jobs=1``: in this process) or on two loky worker processes (``jobs=2``).

The loky workers are started and warmed by one untimed parallel run (imports, code
fingerprints, the dataset cache; joblib reuses the same two processes for every later wave),
as are this process's caches.

The gate is a ratio against the machine as it is now, never a constant speed-up: a busy machine
lowers what ``--jobs 2`` can gain (the README's test command once measured 0.97 against the old
fixed bound of 1.6 while another process held one core), and it lowers it alike for any
CPU-bound work. So each round also times a bare reference: :func:`reference_run`, three waves of
four equal pure-Python CPU-bound loops (``sum(range(n))``, no allocation, no library), once in
this process and once on a bare two-process pool, the same shape as the matrix's waves. The
round is ABBA-interleaved (ours serial, reference serial, reference parallel, ours parallel, and
back) so that a load drift hits both alike, and the gate is

    efficiency = (our --jobs 2 speed-up) / (the reference's 2-process speed-up),

measured again (at most ``ROUNDS`` rounds, within ``BUDGET_S``) while under the bound: other
processes slow a round at random, a lost speed-up lowers every round.

``BOUND`` = 0.75. A lost speed-up (ours ≈ 1.0) gives ours / reference ≈ 1 / reference, so it
can only show in a round whose reference gains at least 1 / ``BOUND`` = 1.33; a round below that
is reported as inconclusive, and when every round is, the test is skipped with that reason — a
saturated machine can show nothing either way, and a pass there would be a test that cannot
fail. On a 2-core machine to itself the reference gains ~1.9, beside two CPU hogs ~1.5 (four
runnable processes on two cores), so there the gate sees a lost speed-up (ours / reference
≈ 0.5–0.67) and fails it.

Measured on the 2-core CI-class machine shared with other engineers' sessions (Linux
``sched_autogroup`` gives each session an equal share, so this session often had about one
core): ours / reference 0.95 (ours 1.35, reference 1.42, load average 13), 0.98 (1.20 vs 1.23),
0.98; beside two CPU hogs 0.82–0.83 (ours 1.07, reference 1.31). The injected regression
(``hog_check.py``: ``Session.n_jobs`` → 1, the tasks of ``--jobs 2`` one at a time) measured
ours 0.90–1.02 against references 0.99–1.12: inconclusive, as it must be on that machine (the
old absolute form would have failed there for the machine's state, not for ours). Skipped on a
machine with fewer than 2 cores, where no speed-up is possible.
"""
from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from bench.backends import BackendSpec, Session
from bench.config import resolve
from bench.matrix import run_matrix
from conftest import TINY_SETTINGS
from ratio import injected

# alone: the reference needs both cores free (run after the suite: `-m alone -n 0 tests/benchmarks`)
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.alone]

SETTINGS = [*TINY_SETTINGS, "recognizer.epochs=3", "attacks.resrec.epochs=1",
            "attacks.resrec.width=8", "seeds=[0,1,2,3]", "device=cpu"]
BOUND = 0.75  # see the module docstring: measured efficiencies and the injected lost speed-up
# A round whose reference gains less than 1 / BOUND cannot show a lost speed-up (ours ≈ 1, so
# ours / reference ≥ BOUND whatever we do): it is inconclusive, not a pass.
MIN_REFERENCE_SPEEDUP = 1 / BOUND
ROUNDS = 3
BUDGET_S = 60.0  # no new round starts after this
REF_WAVES, REF_TASKS = 3, 4  # the matrix's shape: three waves of four equal tasks
REF_SHARE = 0.5  # a serial reference run lasts about this share of a serial matrix run


def one_run(jobs: int) -> float:
    """Seconds of one full run of the matrix (fresh store) on ``jobs`` loky processes."""
    cfg = resolve("quick", SETTINGS)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        run_matrix(cfg, ["none"], ["resrec"], Path(d), run_id="r", jobs=jobs, progress=False,
                   log=lambda _: None, wave_log=lambda _: None, backend=BackendSpec("loky"), threads=1)
        return time.perf_counter() - t0


def reference_run(n: int, pool: ProcessPoolExecutor | None) -> float:
    """Seconds of ``REF_WAVES`` waves of ``REF_TASKS`` bare CPU-bound loops ``sum(range(n))``:
    in this process (``pool`` None) or on the two processes of ``pool``, a barrier per wave."""
    t0 = time.perf_counter()
    for _ in range(REF_WAVES):
        if pool is None:
            for _ in range(REF_TASKS):
                sum(range(n))
        else:
            list(pool.map(sum, [range(n)] * REF_TASKS))
    return time.perf_counter() - t0


def calibrate(target_s: float) -> int:
    """``n`` for which a serial :func:`reference_run` lasts about ``target_s`` seconds."""
    n = 100_000
    while (t := reference_run(n, None)) < 0.05:
        n *= 4
    return max(1, round(n * target_s / t))


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="a speed-up needs 2 cores")
def test_two_jobs_speed_up_as_much_as_the_machine_allows(monkeypatch):
    if injected("jobs"):  # hog_check.py: --jobs 2 silently runs its tasks one at a time
        monkeypatch.setattr(Session, "n_jobs", lambda self: 1)
    start = time.perf_counter()
    one_run(2)  # warm-up: loky workers, their imports, fingerprints and data
    one_run(1)  # and this process's
    ctx = multiprocessing.get_context("spawn")  # a bare pool: nothing of this process's state
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        reference_run(1000, pool)  # start the pool's two processes
        n, best, rounds, inconclusive = 0, 0.0, [], []
        for round_ in range(ROUNDS):
            ours_serial = [one_run(1)]
            # the reference sized from a warm serial run of ours, measured just now
            n = n or calibrate(REF_SHARE * ours_serial[0])
            ref_serial = [reference_run(n, None)]
            ref_par = [reference_run(n, pool)]
            ours_par = [one_run(2), one_run(2)]
            ref_par.append(reference_run(n, pool))
            ref_serial.append(reference_run(n, None))
            ours_serial.append(one_run(1))
            ours = sum(ours_serial) / sum(ours_par)
            ref = sum(ref_serial) / sum(ref_par)
            ratio = ours / ref
            conclusive = ref >= MIN_REFERENCE_SPEEDUP
            (rounds if conclusive else inconclusive).append(ratio)
            if conclusive:
                best = max(best, ratio)
            print(f"\n--jobs 2 speed-up / bare 2-process speed-up {ratio:.3f} (bound {BOUND:g}); "
                  f"round {round_ + 1}: ours {ours:.2f} ({sum(ours_serial) / 2:.2f} s serial vs "
                  f"{sum(ours_par) / 2:.2f} s on 2 jobs), reference {ref:.2f} "
                  f"({sum(ref_serial) / 2:.2f} s vs {sum(ref_par) / 2:.2f} s)"
                  + ("" if conclusive else
                     f"; inconclusive: the reference gains < {MIN_REFERENCE_SPEEDUP:.2f}"))
            if best >= BOUND or time.perf_counter() - start > BUDGET_S:
                break
    if not rounds:
        pytest.skip(f"this machine gives two processes no speed-up right now (reference "
                    f"{ref:.2f} < {MIN_REFERENCE_SPEEDUP:.2f} in {len(inconclusive)} rounds): a "
                    f"lost --jobs 2 speed-up could not show")
    assert best >= BOUND, (
        f"--jobs 2 speed-up / bare 2-process speed-up {best:.3f} < {BOUND:g} in the best of "
        f"{len(rounds)} rounds (ratios {[round(r, 3) for r in rounds]})")
