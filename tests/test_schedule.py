"""The suite's own schedule (tests/conftest.py): where an `alone` test may live, and the order a
parallel run starts its tests in."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import BENCHMARKS, pytest_collection_modifyitems

HERE = Path(__file__).resolve().parent


class FakeItem:
    """What the hook reads of a collected test: its id, file, markers and fixtures."""

    def __init__(self, nodeid: str, path: Path, *markers: str) -> None:
        self.nodeid, self.path, self.markers = nodeid, path, set(markers)
        self.module = SimpleNamespace(__name__=path.stem)
        self._fixtureinfo = None  # no module fixture of its own

    def get_closest_marker(self, name: str):
        return getattr(pytest.mark, name) if name in self.markers else None

    def add_marker(self, marker) -> None:
        self.markers.add(marker.name)


def test_an_alone_test_outside_the_benchmarks_is_a_usage_error():
    """The README's `pytest -m alone` collects only tests/benchmarks/: anywhere else it would
    silently never run."""
    stray = FakeItem("tests/test_x.py::test_timing", HERE / "test_x.py", "alone")
    with pytest.raises(pytest.UsageError, match=r"tests/test_x.py::test_timing is marked `alone`"):
        pytest_collection_modifyitems(None, [stray])
    pytest_collection_modifyitems(None, [FakeItem("b::t", BENCHMARKS / "test_b.py", "alone")])


def test_slow_tests_start_first_then_grouped_modules():
    items = [FakeItem("a", HERE / "test_a.py"), FakeItem("g", HERE / "test_g.py", "xdist_group"),
             FakeItem("s", HERE / "test_s.py", "slow")]
    pytest_collection_modifyitems(None, items)
    assert [it.nodeid for it in items] == ["s", "g", "a"]
