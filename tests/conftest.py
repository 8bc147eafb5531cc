import os
from pathlib import Path


def _pin_xdist_worker() -> bool:
    """Under pytest-xdist with one worker per core, each worker (and every process it starts: `bench`
    subprocesses, loky / Ray / Dask workers) runs on a core of its own. Unpinned, a test's `bench`
    subprocess took both cores' worth of threads while the other worker computed (measured, idle
    2-core machine: the suite 8 min 17 s unpinned, 7 min 20 s pinned, before any other change).
    `bench` sizes its threads by the affinity mask (usable_cpus); BLAS gets one thread, since its
    threads spinning on one core made a test of mixing matrices 47 s instead of 0.1 s."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return False
    cpus = sorted(os.sched_getaffinity(0))
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")) != len(cpus):
        return False  # pin only when the workers exactly fill the cores
    os.sched_setaffinity(0, {cpus[int(worker[2:]) % len(cpus)]})
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"  # before numpy loads: BLAS threads spinning on one core stall
    return True


_pin_xdist_worker()


import pytest  # noqa: E402
import torch  # noqa: E402


# Under pytest-xdist the workers already fill the cores: a second intra-op thread per worker only
# adds contention. Alone (`-n 0`), tests may use two.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))

MAX_WORKERS = 8  # the heaviest tests hold ~1–2 GiB each


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per usable core (the affinity mask, as ``bench`` counts them), at
    most MAX_WORKERS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, MAX_WORKERS))


def _shares_a_module_fixture(item: pytest.Item) -> bool:
    """Whether ``item`` uses a module- or session-scoped fixture its own module defines."""
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    module = getattr(item.module, "__name__", None)
    return any(fd.scope in ("module", "session") and getattr(fd.func, "__module__", None) == module
               for fds in defs.values() for fd in fds)


BENCHMARKS = Path(__file__).resolve().parent / "benchmarks"


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(config, items) -> None:
    """The schedule of a parallel run: a module whose tests share a module fixture (a trained run,
    written files) runs on one worker, so the fixture is computed once, not once per worker; the
    ``slow`` end-to-end tests go first, then those modules, so the longest test (minutes) starts
    at once instead of finishing last. Every worker sorts the same way (xdist requires it)."""
    for item in items:
        if item.get_closest_marker("alone") and BENCHMARKS not in item.path.parents:
            # the README's second pytest collects only tests/benchmarks (the whole suite's
            # collection would take longer than the test): elsewhere it would never run
            raise pytest.UsageError(f"{item.nodeid} is marked `alone`: move it under "
                                    f"tests/benchmarks/, where `pytest -m alone` looks")
        if _shares_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    items.sort(key=lambda it: 0 if it.get_closest_marker("slow")
               else 1 if it.get_closest_marker("xdist_group") else 2)

# A tiny but complete configuration: every stage of the real pipeline, in seconds.
TINY_SETTINGS = [
    "data.image_size=32", "data.limit_identities=12", "data.split=[0.5,0.25,0.25]", "data.num_pairs=60",
    "recognizer.widths=[8,8,16,16]", "recognizer.embedding_dim=16", "recognizer.epochs=2",
    "recognizer.batch_size=16", "recognizer.milestones=[]", "recognizer.warmup_epochs=0",
    "attacks.cgan.epochs=1", "attacks.cgan.ngf=8", "attacks.cgan.ndf=8", "attacks.cgan.batch_size=8",
]


@pytest.fixture
def tiny_settings() -> list[str]:
    return list(TINY_SETTINGS)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: a second intra-op thread only adds synchronisation (and stalls badly on a busy
    machine). Modules of tiny-model tests use it with ``pytestmark`` (module scope, so it
    also covers their module-scoped fixtures); the setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def context_with_random_baseline(data, cfg):
    """A seed-0 context whose baseline F1 is a randomly initialised recognizer for ``data``'s
    1×32×32 faces: client/server splits and feature defenses need its shape, not its skill."""
    from bench.core.context import Context
    from bench.recognition import Recognizer

    torch.manual_seed(0)
    ctx = Context(seed=0, progress=False, recognizer=cfg)
    ctx.baseline = Recognizer(cfg, (1, 32, 32), data.train.num_identities).eval()
    return ctx

