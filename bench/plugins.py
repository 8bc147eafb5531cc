"""The one place that imports plugins: the built-in packages and third-party entry points.

Every module of ``defenses`` and ``attacks`` is imported, listed anywhere or not, so a new file
there (``python -m bench new-defense NAME``) registers with no other edit; the dataset loaders of
``bench.data`` register on import too. Third-party packages add plugins through each registry's
entry-point group (``faceprivbench.defenses``, ``faceprivbench.attacks``,
``faceprivbench.datasets``); each entry point is imported once per process.
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from bench.core.registry import ATTACKS, DATASETS, DEFENSES, Registry

_loaded_groups: set[str] = set()


def import_package_modules(package_name: str) -> None:
    """Import every module of ``package_name`` (their registrations run on import)."""
    package = importlib.import_module(package_name)
    for module in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
        importlib.import_module(module.name)


def load_entry_points(registry: Registry) -> None:
    """Import the entry points of ``registry``'s group, once per process."""
    group = registry.entry_point_group
    if not group or group in _loaded_groups:
        return
    _loaded_groups.add(group)
    for ep in entry_points(group=group):
        ep.load()  # the plugin module registers itself on import


def load_plugins() -> None:
    """Register every built-in and installed plugin (idempotent)."""
    import bench.data  # noqa: F401  (registers the dataset loaders)

    for package in ("defenses", "attacks"):
        import_package_modules(package)
    for registry in (DEFENSES, ATTACKS, DATASETS):
        load_entry_points(registry)
