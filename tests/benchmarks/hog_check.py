"""Check that every timing gate of ``tests/benchmarks`` fails only for a regression of ours.

    python tests/benchmarks/hog_check.py                  # every gate, all three conditions
    python tests/benchmarks/hog_check.py --gates masking,jobs --conditions quiet,hogs

Each gate is run (one pytest process per gate and condition, from the repository root):

- ``quiet``: as the test suite runs it (other people's work on the machine included);
- ``hogs``: beside ``--hogs`` (default 2) CPU hogs, ``python -c 'while True: pass'`` processes
  started here and killed by their process ids afterwards — on a 2-core machine they take both
  cores; a gate must still pass, since its reference is slowed alike;
- ``regression``: with the gate's regression injected: ``BENCH_GATE_REGRESSION=<gate>``, which
  the gate's test (and only it, see ``ratio.injected``) reads to patch in a slow path of ours —
  the gate must fail.

It prints every round's ratio (what the gate prints, ``<ratio> (bound <bound>)``) and the
outcome per gate and condition, and exits 1 when an outcome is not the expected one (pass, pass,
fail). ``SKIPPED`` is the ``--jobs`` gate saying that two processes gain nothing on the machine
right now (other sessions' load; ``sched_autogroup`` shares the CPUs per session, so a busy
shared machine gives this session about one core whatever it runs) — then nothing can be
compared; run the check again on a calmer machine. The injected regressions are (each in its
test):

- ``masking``: PPFR-FD self-normalisation by ``torch.std_mean`` (the slow path it replaced);
- ``bdct``: the BDCT's block GEMM in float64 and back;
- ``ssim``: a symmetric SSIM (two scikit-image calls per pair); ``psnr``: the MSE per image;
- ``cached_rerun``: the per-process cache of code fingerprints lost (every key reads and parses
  the project again); ``fresh_rerun``: every module parsed twice for the fingerprints;
- ``training``: every training batch encoded once more;
- ``jobs``: ``--jobs 2`` running its tasks one at a time;
- ``memory``: the streamed train split decoded into memory (not a timing gate: a memory ratio,
  unaffected by hogs, slow — ~110 MB of PNG files written — so only with ``--gates memory``).

This is a script, not a test (no ``test_`` prefix): it takes ~10–20 minutes for all gates and
is meant for whoever changes a gate or its bound.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = "tests/benchmarks"
REGRESSION_ENV = "BENCH_GATE_REGRESSION"  # ratio.REGRESSION_ENV (not imported: no torch here)
RATIO = re.compile(r"(\d+\.\d+) \(bound ")

GATES = {
    "masking": "test_masking_speed.py::test_masking_is_within_bound_of_the_scipy_reference",
    "bdct": "test_bdct_speed.py::test_ours_is_not_slower_than_scipy",
    "ssim": "test_metric_speed.py::test_ssim_is_within_bound_of_scikit_image",
    "psnr": "test_metric_speed.py::test_psnr_is_within_bound_of_scikit_image",
    "cached_rerun": "test_cached_rerun.py::test_cached_rerun_is_within_bound_of_loading_its_cells",
    "fresh_rerun": "test_cached_rerun.py::test_fresh_process_rerun_is_within_bound_of_loading_its_cells",
    "training": "test_training_overhead.py::test_harness_training_step_overhead_within_5_percent",
    "jobs": "test_jobs_speedup.py::test_two_jobs_speed_up_as_much_as_the_machine_allows",
    "memory": "test_streaming_memory.py::test_peak_rss_does_not_grow_with_streamed_set_size",
}
DEFAULT_GATES = [g for g in GATES if g != "memory"]
CONDITIONS = ("quiet", "hogs", "regression")


@dataclass
class Outcome:
    gate: str
    condition: str
    passed: bool
    ratios: list[float]
    seconds: float
    tail: str
    timed_out: bool = False
    rounds: list[str] = field(default_factory=list)  # the gate's printed rounds
    skipped: bool = False  # the gate could not measure (the --jobs gate on a saturated machine)

    @property
    def verdict(self) -> str:
        return ("TIMEOUT" if self.timed_out else "SKIPPED" if self.skipped
                else "pass" if self.passed else "FAIL")

    @property
    def expected(self) -> bool:
        return (not self.timed_out and not self.skipped
                and self.passed == (self.condition != "regression"))


def start_hogs(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_hogs(hogs: list[subprocess.Popen]) -> None:
    for p in hogs:  # only the processes started here, each by its own id
        p.kill()
        p.wait()


def run_gate(gate: str, condition: str, hogs: int, timeout: float) -> Outcome:
    env = {k: v for k, v in os.environ.items() if k != REGRESSION_ENV}
    if condition == "regression":
        env[REGRESSION_ENV] = gate
    # -n 0: in this process, so -s shows the gate's printed ratios (xdist workers' output is not
    # shown); -m "": the suite's `-m 'not alone'` would deselect the --jobs gate
    cmd = [sys.executable, "-m", "pytest", f"{HERE}/{GATES[gate]}", "-q", "-s", "-n", "0",
           "-m", "", "-p", "no:cacheprovider"]
    started = start_hogs(hogs) if condition == "hogs" else []
    t0 = time.perf_counter()
    timed_out = False
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)
        out, rc = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:  # reported (with the rounds it printed), not fatal
        partial = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        out, rc, timed_out = f"{partial}\ntimed out after {timeout:g} s", 1, True
    finally:
        stop_hogs(started)
    if rc not in (0, 1):  # 1: a test failed; anything else: the run itself broke
        raise SystemExit(f"{gate} ({condition}): pytest exited {rc}\n{out[-3000:]}")
    rounds = [ln.strip() for ln in out.splitlines() if RATIO.search(ln)]
    ratios = [float(r) for ln in rounds for r in RATIO.findall(ln)]
    skipped = re.search(r"(\d+) skipped", out) is not None and rc == 0
    return Outcome(gate, condition, rc == 0, ratios, time.perf_counter() - t0, out[-1500:],
                   timed_out, rounds, skipped)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gates", default=",".join(DEFAULT_GATES),
                        help=f"comma-separated, of: {', '.join(GATES)}")
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--hogs", type=int, default=2, help="CPU hogs for the 'hogs' condition")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds per pytest run (a busy machine slows the fixtures ~10×)")
    args = parser.parse_args(argv)
    gates = [g for g in args.gates.split(",") if g]
    conditions = [c for c in args.conditions.split(",") if c]
    bad = [g for g in gates if g not in GATES] + [c for c in conditions if c not in CONDITIONS]
    if bad:
        parser.error(f"unknown gate or condition: {', '.join(bad)}")

    outcomes: list[Outcome] = []
    for gate in gates:
        for condition in conditions:
            o = run_gate(gate, condition, args.hogs, args.timeout)
            outcomes.append(o)
            flag = "" if o.expected else "   <-- unexpected"
            print(f"{gate:13s} {condition:10s} {o.verdict}  ratios {o.ratios}  "
                  f"({o.seconds:.0f} s){flag}", flush=True)
            for line in o.rounds:
                print(f"    {line}", flush=True)
            if not o.expected:
                print(o.tail, flush=True)
    wrong = [o for o in outcomes if not o.expected]
    print(f"\n{len(outcomes) - len(wrong)}/{len(outcomes)} as expected "
          f"(quiet and hogs pass, regression fails)")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
