"""Code fingerprints for stage keys: a stage's key hashes the source of the code that computes it,
so an edited plugin or harness module retires exactly the stored stages it computes.

The code of a module is its own file plus every project module it imports, transitively. Imports
are read with :mod:`ast` (``import`` / ``from`` statements anywhere in a file, inside functions
too), never executed, and followed only into the project's packages (:data:`PROJECT_PACKAGES`):
third-party libraries are part of the environment, not of the keys. Two rules keep one plugin's
edit from retiring every other plugin's stages:

- ``bench.core.registry`` and ``bench.plugins`` are neither hashed nor followed: the registry maps
  names to factories and computes nothing, and ``bench.plugins`` imports every plugin package;
- a package's ``__init__.py`` counts when a module imports the package itself
  (``from bench.backbones import build_backbone``), not as the parent of an imported submodule
  (``from defenses.base import Defense`` does not pull in ``defenses/__init__.py``, which imports
  every defense).

What each stage hashes (``bench.pipeline``): the dataset loader's module (data); ``bench.pipeline``
itself and ``bench.recognition`` with what it imports — backbones, config, data containers,
``metrics.identity`` (baseline, and through its key every later stage); the defense's module
(fit; recognizer and leak through the fit key); the attack's module (attack); ``bench.pipeline``
with everything it imports, among it the ``metrics`` modules (measure). A third-party plugin's own
module is hashed, its other modules (outside these packages) are not.

Fingerprints are computed once per process (files are read on first use);
:func:`clear_cache` forgets them (tests that edit a module).
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

PROJECT_PACKAGES = ("bench", "defenses", "attacks", "metrics")
NOT_FOLLOWED = frozenset({"bench.core.registry", "bench.plugins"})

#: Harness modules whose code computes each stage that no plugin computes (see module docstring):
#: ``(module, follow its imports)``.
HARNESS = {
    "baseline": (("bench.pipeline", False), ("bench.recognition", True)),
    "measure": (("bench.pipeline", True),),
}


@functools.lru_cache(maxsize=None)
def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def module_file(name: str) -> Path | None:
    """The source file of project module ``name`` (``a.b`` → ``a/b.py`` or ``a/b/__init__.py``),
    None when ``name`` is outside the project packages or is not a module (e.g. a class)."""
    parts = name.split(".")
    if parts[0] not in PROJECT_PACKAGES or name in NOT_FOLLOWED:
        return None
    root = _package_dir(parts[0])
    if root is None:
        return None
    target = root.joinpath(*parts[1:])
    for candidate in ((target.parent / f"{parts[-1]}.py") if len(parts) > 1 else None,
                      target / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Names every ``import`` / ``from`` statement of ``source`` may load (relative imports
    resolved against ``module``); for ``from a import b`` both ``a`` and ``a.b``."""
    return set(_imported_modules(source, module, is_package))


@functools.lru_cache(maxsize=None)
def _imported_modules(source: str, module: str, is_package: bool) -> frozenset[str]:
    # keyed by the source text itself, so it survives clear_cache(): an edited file is new text
    # (parsing every module again was most of a fingerprint's cost after each clear_cache)
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            if parent:
                out.add(parent)
            out.update(f"{parent}.{alias.name}" if parent else alias.name for alias in node.names)
    return frozenset(out)


@functools.lru_cache(maxsize=None)
def closure(module: str, path: str | None = None, follow: bool = True) -> tuple[tuple[str, str], ...]:
    """``(module name, file)`` of ``module`` and, with ``follow``, of every project module it
    imports, transitively; sorted by name. ``path``: the module's file when it lies outside the
    project packages (a third-party or test plugin)."""
    start = Path(path) if path else module_file(module)
    if start is None:
        return ()
    seen: dict[str, Path] = {module: start}
    todo = [module] if follow else []
    while todo:
        name = todo.pop()
        file = seen[name]
        for dep in imported_modules(file.read_text(), name, file.name == "__init__.py"):
            dep_file = module_file(dep)
            if dep_file is not None and dep not in seen:
                seen[dep] = dep_file
                todo.append(dep)
    return tuple(sorted((name, str(file)) for name, file in seen.items()))


def fingerprint(files: tuple[tuple[str, str], ...]) -> str:
    """sha256 over ``(module name, sha256 of its bytes)`` pairs: names, not paths, so the same
    code installed elsewhere gives the same fingerprint."""
    h = hashlib.sha256()
    for name, file in sorted(set(files)):
        h.update(f"{name}\0{hashlib.sha256(Path(file).read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()[:20]


@functools.lru_cache(maxsize=None)
def _plugin_fingerprint(module: str, path: str | None) -> str:
    return fingerprint(closure(module, path))


def plugin_fingerprint(factory: Any) -> str:
    """Fingerprint of the module that defines a registered plugin's ``factory`` and the project
    modules it imports; ``""`` for a factory without a source file."""
    module = getattr(factory, "__module__", None)
    path = getattr(sys.modules.get(module or ""), "__file__", None)
    if not module or not path:
        return ""
    return _plugin_fingerprint(module, None if module_file(module) else str(path))


@functools.lru_cache(maxsize=None)
def harness_fingerprint(stage: str) -> str:
    """Fingerprint of the harness modules that compute ``stage`` (:data:`HARNESS`)."""
    files: list[tuple[str, str]] = []
    for module, follow in HARNESS[stage]:
        files.extend(closure(module, None, follow))
    return fingerprint(tuple(files))


def clear_cache(parsed: bool = False) -> None:
    """Forget every fingerprint (after editing a module in the same process). The imports parsed
    from a source text are kept (an edited file is a new text); ``parsed=True`` forgets them too,
    as in a fresh process."""
    closure.cache_clear()
    _plugin_fingerprint.cache_clear()
    if parsed:
        _imported_modules.cache_clear()
    harness_fingerprint.cache_clear()
