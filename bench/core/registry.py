"""Plugin registries (timm-style): variants, wildcard listing, `all`.

``@DEFENSES.register("masking_mixup", k=3)`` registers the variant ``masking_mixup.k3``: the same
class built with option ``k=3``. ``names("masking_*")`` filters with shell wildcards, ``all``
expands to every registered name, and an unknown name fails with the nearest matches.
A registry only maps names to factories; importing the plugins that fill it (built-in packages
and the entry-point group each registry names) is :mod:`bench.plugins`' job.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable

from bench.core.errors import UnknownPluginError


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

    def register(self, name: str, variant: str | None = None,
                 **variant_options: Any) -> Callable[[Any], Any]:
        """Decorator: register ``factory`` as ``name``, or a variant fixing some options:
        ``name.<k><v>`` for ``register(name, k=v)``, ``name.<variant>`` when ``variant`` is given.
        A class gets ``name`` as its ``name`` attribute (the one its stages and seeds use)."""

        def decorator(factory: Any) -> Any:
            suffix = "".join(f".{k}{v}" for k, v in variant_options.items())
            full = f"{name}.{variant}" if variant else name + suffix
            if full in self._entries:
                raise ValueError(f"{self.kind} {full!r} is registered twice")
            if isinstance(factory, type) and factory.__module__ != "builtins":  # named once: here
                own = factory.__dict__.get("name")
                if own is None:
                    factory.name = name
                elif own != name:
                    raise ValueError(f"{self.kind} class {factory.__qualname__} is named {own!r}, "
                                     f"registered as {name!r}")
            self._entries[full] = Entry(full, factory, dict(variant_options))
            return factory

        return decorator

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell wildcard, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def get(self, name: str) -> Entry:
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
        return name in self._entries


DEFENSES = Registry("defense", "faceprivbench.defenses")
ATTACKS = Registry("attack", "faceprivbench.attacks")
DATASETS = Registry("dataset", "faceprivbench.datasets")
