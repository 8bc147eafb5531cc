"""Which engine runs a wave's tasks (ARCHITECTURE "Backends"): one parameter, never a branch in
the stages. Every engine sits behind joblib:

- ``loky`` (default): local worker processes (``--jobs N``); ``--jobs 1`` runs in this process.
- ``ray``: ``ray.util.joblib.register_ray()`` + ``joblib.parallel_config("ray")``. ``--address``
  joins a running cluster (``host:6379``, ``ray://host:10001`` or ``auto``); without it a local
  instance starts for the run and stops with it.
- ``dask``: ``distributed.Client``; ``--address`` names a scheduler (``tcp://host:8786``);
  without it a ``LocalCluster`` of ``--jobs`` single-threaded worker processes starts and stops
  with the run.

Tasks carry a config, an artifact-store path and a stage name, never models: each worker writes
the stages it finishes to the store (a shared path on a cluster) and the driver reads them back.
Each task asks for its resources: ``threads`` CPUs (its ``torch.set_num_threads``) and, when the
cluster has GPUs and the run may use them, one GPU (Ray: the pool actors' ``ray_remote_args``;
Dask: ``resources`` that the workers advertise, e.g. ``dask worker … --resources "CPU=8,GPU=1"``).

Ray and Dask are optional extras (``pip install 'faceprivbench[ray]'`` / ``'[dask]'``).
:func:`check_backend` fails fast — one line through :class:`bench.core.errors.BenchError`, before
anything trains — when the engine is not installed or its ``--address`` does not answer within
``--connect-timeout`` seconds.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from bench.core.errors import ConfigError
from bench.environment import usable_cpus

BACKENDS = ("loky", "ray", "dask")
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds an --address gets to answer
_EXTRA = {"ray": ("ray", "ray"), "dask": ("distributed", "dask")}  # backend -> (module, extra)
_DEFAULT_PORT = {"ray": 6379, "dask": 8786}


class BackendError(ConfigError):
    """A backend that is not installed, or a cluster address that does not answer."""


@dataclass(frozen=True)
class BackendSpec:
    """What ``bench run --backend/--address/--connect-timeout`` asked for."""

    name: str = "loky"
    address: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT


def check_backend(spec: BackendSpec) -> None:
    """Fail with one line, before anything trains, when ``spec`` cannot run: an unknown name, an
    engine that is not installed, or an ``--address`` that does not answer in time."""
    if spec.name not in BACKENDS:
        raise BackendError(f"unknown backend {spec.name!r}; choose one of {', '.join(BACKENDS)}")
    if not spec.connect_timeout > 0:
        raise BackendError(f"--connect-timeout must be > 0 seconds, got {spec.connect_timeout:g}")
    if spec.name == "loky":
        if spec.address:
            raise BackendError("--address needs --backend ray or --backend dask "
                               "(loky runs local processes only)")
        return
    _require(spec.name)
    if spec.address:
        probe_address(spec.name, spec.address, spec.connect_timeout)


def _require(name: str) -> Any:
    module, extra = _EXTRA[name]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendError(
            f"backend {name} needs the {module!r} package, which is not installed ({exc}); "
            f"pip install 'faceprivbench[{extra}]' (or --backend loky)") from None


def _host_port(name: str, address: str) -> tuple[str, int] | None:
    """``(host, port)`` to probe for ``address``; None for addresses the engine resolves itself
    (Ray's ``auto``/``local``)."""
    if name == "ray" and address in ("auto", "local"):
        return None
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        raise BackendError(f"--address {address!r} has an invalid port") from None
    if not parts.hostname:
        raise BackendError(f"--address {address!r} names no host; e.g. "
                           + ("10.0.0.5:6379 or ray://10.0.0.5:10001" if name == "ray"
                              else "tcp://10.0.0.5:8786"))
    return parts.hostname, port or _DEFAULT_PORT[name]


def probe_address(name: str, address: str, timeout: float) -> None:
    """Open (and close) a TCP connection to the cluster's address within ``timeout`` seconds."""
    target = _host_port(name, address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        start = "ray start --head" if name == "ray" else "dask scheduler"
        raise BackendError(
            f"no {name} cluster answers at {address} within {timeout:g} s ({why}); start one "
            f"(`{start}`), fix --address or raise --connect-timeout, or drop --address to run "
            f"a local {name} instance") from None


@dataclass
class Session:
    """An open engine for one run: started lazily by the first wave that has work, closed at the
    end of the run (a local Ray instance or Dask cluster stops; a joined cluster is left alone)."""

    spec: BackendSpec
    jobs: int
    threads: int
    use_gpu: bool = True  # False when the run is pinned to the CPU (device = "cpu")
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _open: bool = False
    _client: Any = None
    _parallel: Any = None
    gpus: int = 0
    where: str = ""

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def inline(self) -> bool:
        """Serial loky runs in this process (nested progress bars, no pickling)."""
        return self.spec.name == "loky" and self.jobs == 1

    def open(self) -> None:
        if self._open:
            return
        self._open = True
        if self.spec.name == "loky":
            self.where = ("this process" if self.inline
                          else f"loky ({self.jobs} local processes × {self.threads} threads)")
            if not self.inline:
                self._start_pool()
            return
        check_backend(self.spec)
        getattr(self, f"_open_{self.spec.name}")()
        self._start_pool()

    def _start_pool(self) -> None:
        """One joblib pool for the whole run (``Parallel`` as a context manager): Ray's actors
        and Dask's / loky's workers start, import the harness and warm their caches once, not
        once per wave."""
        from joblib import Parallel, parallel_config

        # Ray's joblib pool cannot stream results; loky and dask can (progress as cells finish)
        return_as = "list" if self.spec.name == "ray" else "generator_unordered"
        self._stack.enter_context(parallel_config(backend=self.spec.name, n_jobs=self.n_jobs(),
                                                  **self.resources()))
        self._parallel = self._stack.enter_context(Parallel(batch_size=1, return_as=return_as))

    def _open_ray(self) -> None:
        ray = _require("ray")
        from ray.util.joblib import register_ray

        register_ray()
        if not ray.is_initialized():
            kw: dict[str, Any] = dict(log_to_driver=False, configure_logging=False)
            if self.spec.address:
                try:
                    ray.init(address=self.spec.address, **kw)
                except Exception as exc:  # noqa: BLE001  (any failure to join is the user's to fix)
                    raise BackendError(f"could not join the ray cluster at {self.spec.address}: "
                                       f"{_one_line(exc)}") from None
            else:
                ray.init(num_cpus=max(usable_cpus(), self.jobs * self.threads),
                         include_dashboard=False, **kw)
            self._stack.callback(ray.shutdown)
        res = ray.cluster_resources()
        self.gpus = int(res.get("GPU", 0)) if self.use_gpu else 0
        cpus = int(res.get("CPU", 0))
        if cpus < self.threads:
            raise BackendError(f"the ray cluster has {cpus} CPUs, fewer than --threads "
                               f"{self.threads} per task")
        self.where = (f"ray at {self.spec.address}" if self.spec.address else "ray (local instance)") \
            + f", {cpus} CPUs, {self.gpus} GPUs"

    def _open_dask(self) -> None:
        distributed = _require("dask")
        if self.spec.address:
            try:
                client = distributed.Client(self.spec.address, timeout=self.spec.connect_timeout,
                                            set_as_default=False)
            except Exception as exc:  # noqa: BLE001
                raise BackendError(f"could not connect to the dask scheduler at "
                                   f"{self.spec.address}: {_one_line(exc)}") from None
        else:
            cluster = distributed.LocalCluster(
                n_workers=self.jobs, threads_per_worker=1, processes=True,
                resources={"CPU": self.threads}, memory_limit=0, dashboard_address=None)
            self._stack.callback(cluster.close)
            client = distributed.Client(cluster, set_as_default=False)
        self._stack.callback(client.close)
        self._client = client
        workers = client.scheduler_info().get("workers", {}).values()
        self.gpus = sum(int(w.get("resources", {}).get("GPU", 0)) for w in workers) \
            if self.use_gpu else 0
        self.where = (f"dask at {self.spec.address}" if self.spec.address else "dask LocalCluster") \
            + f", {len(workers)} workers, {self.gpus} GPUs"

    def close(self) -> None:
        self._stack.close()  # the pool, then the engine a run started (in reverse order)
        self._open, self._parallel = False, None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running a wave ----------------------------------------------------------------------
    def resources(self) -> dict[str, Any]:
        """What each task asks its engine for (joblib backend parameters)."""
        if self.spec.name == "ray":
            args: dict[str, Any] = {"num_cpus": self.threads}
            if self.gpus:
                args["num_gpus"] = 1
            return {"ray_remote_args": args}
        if self.spec.name == "dask":
            advertised: set[str] = set()
            for w in self._client.scheduler_info().get("workers", {}).values():
                advertised |= set(w.get("resources", {}))
            wanted = {"CPU": self.threads, **({"GPU": 1} if self.gpus else {})}
            # a resource no worker advertises would leave the task waiting forever
            asked = {k: v for k, v in wanted.items() if k in advertised}
            return {"client": self._client, **({"resources": asked} if asked else {})}
        return {}

    def n_jobs(self) -> int:
        """Concurrent tasks: ``--jobs``, at most one per GPU when each task holds one."""
        return max(1, min(self.jobs, self.gpus)) if self.gpus else self.jobs

    def run(self, fn: Callable[..., Any], calls: list[tuple], progress: Callable[[], None]
            ) -> Iterator[Any]:
        """Run ``fn(*args)`` for every ``args`` in ``calls``; call ``progress()`` as each ends."""
        self.open()
        if self.inline:
            for args in calls:
                yield fn(*args)
                progress()
            return
        from joblib import delayed

        for out in self._parallel(delayed(fn)(*a) for a in calls):
            yield out
            progress()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"
