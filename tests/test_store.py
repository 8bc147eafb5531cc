import os

import pytest

from bench.store import ArtifactStore, atomic_write_text, stage_key


def test_keys_depend_on_every_part():
    a = stage_key("s", x=1, up="k")
    assert a == stage_key("s", up="k", x=1)
    assert a != stage_key("s", x=2, up="k") and a != stage_key("t", x=1, up="k")


def test_get_or_compute_computes_once(tmp_path):
    store, calls = ArtifactStore(tmp_path), []
    f = lambda: calls.append(1) or {"v": 3}  # noqa: E731
    assert store.get_or_compute("s", "k", f) == {"v": 3}
    assert store.get_or_compute("s", "k", f) == {"v": 3}
    assert calls == [1]


def test_a_failed_write_leaves_no_file(tmp_path):
    store = ArtifactStore(tmp_path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.save("s", "k", Boom())
    assert not store.has("s", "k")
    assert not (tmp_path / "s").exists() or os.listdir(tmp_path / "s") == []  # no temporary left


def test_a_damaged_artifact_is_recomputed(tmp_path):
    store = ArtifactStore(tmp_path)
    store.path("s", "k").parent.mkdir(parents=True)
    store.path("s", "k").write_bytes(b"half-written")
    with pytest.warns(UserWarning, match="unreadable"):
        assert store.get_or_compute("s", "k", lambda: 5) == 5
    assert store.load("s", "k") == 5


def test_atomic_text_replaces_whole_file(tmp_path):
    p = tmp_path / "a" / "b.json"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two" and len(os.listdir(p.parent)) == 1
