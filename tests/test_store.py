import dataclasses
import os
import warnings

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


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path)

    def boom(fd):  # the disk fails while the stage is being written
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        store.save("s", "k", {"w": torch.ones(3)})
    assert not store.has("s", "k")
    assert not (tmp_path / "s").exists() or os.listdir(tmp_path / "s") == []  # no temporary left


def test_a_class_outside_the_allowlist_is_written_but_never_loaded(tmp_path):
    store = ArtifactStore(tmp_path)

    class Outside:  # a class outside the allowlist (defined in a test)
        pass

    with pytest.warns(UserWarning, match="safe loading refuses"):
        assert store.save("s", "k", {"x": Outside()}) is True
    with pytest.warns(UserWarning, match="unreadable or unsafe"):
        assert store.get_or_compute("s", "k", lambda: {"x": 1}) == {"x": 1}


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


# -- safe loading: a stage file never runs code (bench/store.py) ---------------------------------
import functools  # noqa: E402
import io  # noqa: E402
import pickle  # noqa: E402
import threading  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.store import UnsafeArtifactError, safe_global, safe_load  # noqa: E402


def _stage_like(channels_last: bool = False) -> dict:
    """What stored stages hold: harness modules, a defense with its nested Options dataclass,
    Leak / Reconstruction dataclasses, tensors, numpy values, floats."""
    from bench.config import RecognizerConfig
    from bench.core.contract import Leak, Reconstruction
    from bench.recognition import Recognizer
    from defenses.none import NoDefense

    torch.manual_seed(0)
    cfg = RecognizerConfig(widths=[8, 8, 16, 16], embedding_dim=16, channels_last=channels_last)
    images = torch.rand(4, 1, 32, 32)
    return {"model": Recognizer(cfg, (1, 32, 32), 5).eval(), "defense": NoDefense(),
            "leak": Leak(train_inputs=images, train_targets=images, inputs=images, targets=images),
            "recon": Reconstruction(images=images, info={"loss": [0.5, 0.25]}),
            "array": np.arange(3.0), "scalar": np.float32(1.5), "accuracy": {"orl": 0.75},
            "size": torch.Size([2, 3]), "slice": slice(1, 3)}


@pytest.mark.parametrize("channels_last", [False, True])
def test_stage_objects_round_trip_through_the_safe_loader(tmp_path, channels_last):
    store, obj = ArtifactStore(tmp_path), _stage_like(channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # saving warns when a stage could not be loaded safely
        store.save("s", "k", obj)
    back = store.load("s", "k")
    # the exact strides come back (a one-channel stem and the 1×1 convolutions are "contiguous"
    # in both layouts, yet the kernel follows the strides), so the outputs are bit-identical
    tensors = lambda m: {**dict(m.named_parameters()), **dict(m.named_buffers())}  # noqa: E731
    assert {k: t.stride() for k, t in tensors(back["model"]).items()} == \
        {k: t.stride() for k, t in tensors(obj["model"]).items()}
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(back["model"](x), obj["model"](x))
    assert type(back["defense"]) is type(obj["defense"])
    assert dataclasses.asdict(back["defense"].options) == dataclasses.asdict(obj["defense"].options)
    assert torch.equal(back["leak"].targets, obj["leak"].targets)
    assert back["recon"].info == obj["recon"].info and back["accuracy"] == obj["accuracy"]
    assert np.array_equal(back["array"], obj["array"]) and back["scalar"] == obj["scalar"]
    assert back["size"] == obj["size"] and back["slice"] == obj["slice"]


class _Shell:
    """``__reduce__`` runs ``command`` through os.system when unpickled by plain pickle."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Exec:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


class _HarnessFunction:
    """A call of a harness *function* (writes a file): the module is allowed, functions never."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return atomic_write_text, (self.path, "pwned")


class _Partial:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return functools.partial, (os.system, f"touch {self.path}")


class _Getattr:
    """getattr on an allowed class reaching for a method (then called by a second REDUCE)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return getattr, (ArtifactStore, "save")


def _payloads(marker):
    m = str(marker)
    return {
        "os.system": _Shell(f"touch {m}"),
        "exec": _Exec(f"open({m!r}, 'w').write('pwned')"),
        "harness function": _HarnessFunction(m),
        "functools.partial": _Partial(m),
        "getattr": {"model": _Getattr(m)},
        "class from an untrusted module": {"x": _Shell(f"touch {m}"), "y": threading.Lock},
    }


@pytest.mark.parametrize("kind", list(_payloads("x")))
def test_a_malicious_stage_is_refused_recomputed_and_never_run(tmp_path, kind):
    store, marker = ArtifactStore(tmp_path / "cache"), tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save(_payloads(marker)[kind], buf)  # what an attacker would place in a shared store
    store.legacy_path("measure", "k").parent.mkdir(parents=True)
    store.legacy_path("measure", "k").write_bytes(buf.getvalue())
    with pytest.raises(Exception):
        store.load("measure", "k")
    with pytest.warns(UserWarning, match="unreadable or unsafe"):
        assert store.get_or_compute("measure", "k", lambda: {"ok": 1}) == {"ok": 1}
    assert not marker.exists(), "the stage file ran code"
    assert store.load("measure", "k") == {"ok": 1}  # the recomputed stage replaced it


def test_a_plain_pickle_is_refused_and_never_run(tmp_path):
    store, marker = ArtifactStore(tmp_path), tmp_path / "pwned"
    store.legacy_path("s", "k").parent.mkdir(parents=True)
    store.legacy_path("s", "k").write_bytes(pickle.dumps(_Shell(f"touch {marker}"), protocol=2))
    with pytest.warns(UserWarning, match="unreadable or unsafe"):
        assert store.get_or_compute("s", "k", lambda: 7) == 7
    assert not marker.exists()


def test_the_allowlist_admits_classes_only_from_trusted_code():
    from bench.recognition import Recognizer

    assert safe_global("bench.recognition.Recognizer") is Recognizer
    assert safe_global("torch.nn.modules.conv.Conv2d") is torch.nn.Conv2d
    for name in ("posix.system", "builtins.exec", "builtins.eval", "functools.partial",
                 "bench.store.atomic_write_text", "bench.cli.main", "subprocess.Popen",
                 "torch.nn.Conv2d",  # an alias, not where the class is defined
                 "timm.create_model", "bench.store.os", "test_store._Shell",
                 "bench.__main__.main"):  # importing bench.__main__ would run the CLI
        assert safe_global(name) is None, name
    with pytest.raises(UnsafeArtifactError):
        safe_global("builtins.getattr")(ArtifactStore, "save")


def test_saving_warns_when_a_stage_could_not_be_loaded_safely(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.warns(UserWarning, match="cannot be stored"):
        store.save("s", "k", {"f": functools.partial(int, base=2)})
    with pytest.warns(UserWarning, match="cannot be stored"):  # a function: never representable
        store.save("s", "k", {"f": os.system})
    assert not store.has("s", "k")


def test_concurrent_writers_of_one_stage_leave_one_valid_file(tmp_path):
    """Two workers finishing the same stage at once: both succeed, the file is whole."""
    store = ArtifactStore(tmp_path)
    payloads = [torch.full((256, 1024), float(i)) for i in range(2)]
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for _ in range(10):
                store.save("s", "k", {"w": payloads[i]})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    w = store.load("s", "k")["w"]
    assert any(torch.equal(w, p) for p in payloads)
    assert os.listdir(tmp_path / "s") == ["k.safetensors"]  # no temporary left
