"""The house rules of ARCHITECTURE "What grows next (v3)", read from the imports (every ``import`` /
``from`` statement of every project file, those inside functions included):

- ``bench/core`` imports nothing of the project outside itself: defenses and attacks both stand on
  it and neither owns it;
- a defense never imports an attack; an attack imports a defense module only when it is a white-box
  or structural attack on that defense (listed below, so a new one is a visible decision);
- reporting reads cell records: no training code, no plugins, no pipeline;
- only ``bench.plugins`` walks the plugin packages (one place that loads plugins);
- no import cycles among the harness's modules (``bench``), reporting included.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "defenses", "attacks", "metrics")

#: attack module → the defense modules it may import (the defenses it attacks with their mechanism).
WHITE_BOX_TARGETS = {
    "attacks.ppfr_whitebox": {"defenses.ppfr_fd", "defenses.bdct"},
    "attacks.carlini": {"defenses.mixup", "defenses.bdct"},
    "attacks.xnn_attacks": {"defenses.xnn"},
}
#: what reporting may import besides itself: storage, errors, the environment key and pure scores.
REPORTING_MAY_IMPORT = {"bench.core.errors", "bench.store", "bench.environment", "metrics.scores"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = project_modules()


def resolve(name: str) -> str | None:
    """The project module ``name`` refers to (``a.b.c`` → ``a.b`` when ``c`` is an attribute)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    """Project modules that ``module``'s statements import (resolved; relative imports too)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for n in names:
            target = resolve(n)
            if target and target != module:
                out.add(target)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_graph_sees_the_known_edges():
    """The reader itself: a rule over an empty graph would pass vacuously."""
    assert "bench.core.contract" in GRAPH["defenses.base"]
    assert "attacks.base" in GRAPH["attacks.cgan"]
    assert "bench.reporting.stats" in GRAPH["bench.reporting.tables"]


def test_core_imports_nothing_outside_core():
    bad = {m: sorted(t for t in GRAPH[m] if not under(t, "bench.core"))
           for m in MODULES if under(m, "bench.core")}
    assert not {m: t for m, t in bad.items() if t}


def test_defenses_never_import_attacks():
    bad = {m: sorted(t for t in GRAPH[m] if under(t, "attacks"))
           for m in MODULES if under(m, "defenses")}
    assert not {m: t for m, t in bad.items() if t}


def test_attacks_import_only_the_defenses_they_target():
    bad = {}
    for m in MODULES:
        if under(m, "attacks"):
            extra = {t for t in GRAPH[m] if under(t, "defenses")} - WHITE_BOX_TARGETS.get(m, set())
            if extra:
                bad[m] = sorted(extra)
    assert not bad, f"add a white-box target to WHITE_BOX_TARGETS only if the attack needs it: {bad}"


def test_reporting_reads_records_only():
    bad = {}
    for m in MODULES:
        if under(m, "bench.reporting"):
            extra = {t for t in GRAPH[m]
                     if not under(t, "bench.reporting") and t not in REPORTING_MAY_IMPORT}
            if extra:
                bad[m] = sorted(extra)
    assert not bad


def test_only_bench_plugins_walks_the_plugin_packages():
    walkers = sorted(m for m, p in MODULES.items() if "iter_modules" in p.read_text())
    assert walkers == ["bench.plugins"]
    for pkg in ("defenses", "attacks"):  # importing a plugin package registers nothing by itself
        assert not GRAPH[pkg]


def cycles(graph: dict[str, set[str]], nodes: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), restricted to ``nodes``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v] & nodes:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("prefix", ["bench", "bench.reporting", "defenses", "attacks"])
def test_no_import_cycles(prefix):
    nodes = {m for m in MODULES if under(m, prefix) and m != prefix}
    assert cycles(GRAPH, nodes) == []


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph, set(graph)) == [["a", "b", "c"]]
