"""Plugin registries (timm-style): variants, wildcard listing, `all`, entry points.

``@DEFENSES.register("masking_mixup", k=3)`` registers the variant ``masking_mixup.k3``: the same
class built with option ``k=3``. ``names("masking_*")`` filters with shell wildcards, ``all``
expands to every registered name, and an unknown name fails with the nearest matches.
Third-party packages add plugins through the entry-point groups ``faceprivbench.defenses``,
``faceprivbench.attacks`` and ``faceprivbench.datasets``; each entry point is imported once.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

from bench.errors import UnknownPluginError


@dataclass(frozen=True)
class Entry:
    """A registered name: the factory plus the options its variant fixes."""

    name: str
    factory: Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)

    def create(self, **overrides: Any) -> Any:
        return self.factory(**{**self.options, **overrides})


class Registry:
    """Name → factory mapping for one plugin kind."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry] = {}
        self._entry_points_loaded = False

    def register(self, name: str, variant: str | None = None,
                 **variant_options: Any) -> Callable[[Any], Any]:
        """Decorator: register ``factory`` as ``name``, or a variant fixing some options:
        ``name.<k><v>`` for ``register(name, k=v)``, ``name.<variant>`` when ``variant`` is given."""

        def decorator(factory: Any) -> Any:
            suffix = "".join(f".{k}{v}" for k, v in variant_options.items())
            full = f"{name}.{variant}" if variant else name + suffix
            if full in self._entries:
                raise ValueError(f"{self.kind} {full!r} is registered twice")
            self._entries[full] = Entry(full, factory, dict(variant_options))
            return factory

        return decorator

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or not self.entry_point_group:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            ep.load()  # the plugin module registers itself on import

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell wildcard, sorted."""
        self._load_entry_points()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def get(self, name: str) -> Entry:
        self._load_entry_points()
        try:
            return self._entries[name]
        except KeyError:
            near = difflib.get_close_matches(name, list(self._entries), n=4, cutoff=0.4)
            hint = f"did you mean {', '.join(near)}?" if near else f"known: {', '.join(self.names())}"
            raise UnknownPluginError(
                f"unknown {self.kind} {name!r}; {hint} (run `python -m bench list`)"
            ) from None

    def expand(self, spec: str | list[str]) -> list[str]:
        """Turn ``"all"``, ``"a,b"``, ``"masking_*"`` into concrete names, in the given order."""
        parts = spec.split(",") if isinstance(spec, str) else list(spec)
        out: list[str] = []
        for raw in (p.strip() for p in parts):
            if not raw:
                continue
            if raw == "all":
                found = self.names()
            elif any(ch in raw for ch in "*?["):
                found = self.names(raw)
                if not found:
                    raise UnknownPluginError(
                        f"no {self.kind} matches {raw!r} (run `python -m bench list`)"
                    )
            else:
                self.get(raw)
                found = [raw]
            out.extend(n for n in found if n not in out)
        if not out:
            raise UnknownPluginError(f"no {self.kind} given (run `python -m bench list`)")
        return out

    def create(self, name: str, **overrides: Any) -> Any:
        return self.get(name).create(**overrides)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries


DEFENSES = Registry("defense", "faceprivbench.defenses")
ATTACKS = Registry("attack", "faceprivbench.attacks")
DATASETS = Registry("dataset", "faceprivbench.datasets")


def load_builtin_plugins() -> None:
    """Import the built-in plugin packages so their registrations run. Every module of the
    ``defenses`` and ``attacks`` packages is imported, listed in its ``__init__`` or not, so a new
    file there (``python -m bench new-defense NAME``) is registered with no other edit."""
    import attacks
    import bench.data  # noqa: F401
    import defenses

    for package in (defenses, attacks):
        for module in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
            importlib.import_module(module.name)
