"""MXNet RecordIO reader/writer (bench.data.recordio): insightface train.rec/train.idx/property.

Files are built from the format description (dmlc-core recordio.h, mxnet recordio.py), either by
``write_records`` or byte by byte, and read back.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.core.errors import DatasetError
from bench.data import recordio
from bench.data.recordio import (MAGIC, IRHeader, RecordFile, encode_record,
                                 open_insightface_records, pack, unpack, write_records)

M = struct.pack("<I", MAGIC)


def _image(seed: int, fmt: str = "PNG", size: tuple[int, int] = (24, 20)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def _part(cflag: int, data: bytes) -> bytes:
    """One RecordIO part exactly as documented: magic, cflag<<29 | length, data, zero pad to 4."""
    return struct.pack("<II", MAGIC, cflag << 29 | len(data)) + data + b"\0" * (-len(data) % 4)


def _write_raw(prefix: Path, records: list[tuple[int, bytes]]) -> list[int]:
    """Hand-framed single-part records (no magic inside) + canonical .idx; returns the offsets."""
    offsets, blob = [], b""
    for _, payload in records:
        assert M not in payload
        offsets.append(len(blob))
        blob += _part(0, payload)
    Path(f"{prefix}.rec").write_bytes(blob)
    Path(f"{prefix}.idx").write_text("".join(f"{k}\t{o}\n" for (k, _), o in zip(records, offsets)))
    return offsets


def _one_line_error(exc: pytest.ExceptionInfo, name: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and name in msg and re.search(r"byte \d+", msg), msg
    return msg


@pytest.fixture
def faces() -> tuple[list[bytes], list[int]]:
    images = [_image(k, "PNG" if k % 2 else "JPEG") for k in range(9)]
    return images, [0, 0, 0, 1, 1, 2, 2, 2, 2]


# ---------------------------------------------------------------- round trips

def test_header_layout_round_trip(tmp_path: Path, faces) -> None:
    images, labels = faces
    write_records(tmp_path / "train", images, labels)
    ds = open_insightface_records(tmp_path)
    assert ds.has_header and len(ds) == 9 and ds.num_identities == 3
    assert ds.image_keys.dtype == np.int64 and ds.image_keys.tolist() == list(range(1, 10))
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == labels
    assert ds.identity_ranges.tolist() == [[0, 3], [3, 5], [5, 9]]
    assert [ds.read_image_bytes(i) for i in range(9)] == images
    assert ds.read_image_bytes(-1) == images[-1]
    with pytest.raises(IndexError):
        ds.read_image_bytes(9)
    assert ds.property == (3, 20, 24)
    # The insightface layout itself: header 0, images 1..9, identity records 10..12.
    rf = ds.records
    assert sorted(rf.keys.tolist()) == list(range(13))
    head, rest = unpack(rf.read_record(0))
    assert head.flag == 2 and head.label.tolist() == [10.0, 13.0] and rest == b""
    head, img = unpack(rf.read_record(4))
    assert (head.flag, head.label, img) == (0, 1.0, images[3])
    head, _ = unpack(rf.read_record(11))
    assert head.label.tolist() == [4.0, 6.0]
    # The same set through the other spellings of its location.
    for spec in (tmp_path / "train", tmp_path / "train.rec", str(tmp_path / "train.idx")):
        assert open_insightface_records(spec).labels.tolist() == labels


def test_headerless_layout_round_trip(tmp_path: Path, faces) -> None:
    images, labels = faces
    write_records(tmp_path / "train", images, labels, with_header=False)
    ds = open_insightface_records(tmp_path / "train.rec")
    assert not ds.has_header and len(ds.records) == 9  # no header or identity records
    assert ds.image_keys.tolist() == list(range(9))
    assert ds.labels.tolist() == labels and ds.num_identities == 3
    assert ds.identity_ranges.tolist() == [[0, 3], [3, 5], [5, 9]]
    assert [ds.read_image_bytes(i) for i in range(9)] == images


@pytest.mark.parametrize("with_header", [True, False])
def test_images_grouped_and_labels_renumbered(tmp_path: Path, with_header: bool) -> None:
    images = [_image(k) for k in range(6)]
    given = [7, 3, 7, 42, 3, 7]
    write_records(tmp_path / "train", images, given, with_header=with_header)
    ds = open_insightface_records(tmp_path)
    # Label 3 → 0, 7 → 1, 42 → 2; file order kept inside an identity.
    expect = [(1, 0), (4, 0), (0, 1), (2, 1), (5, 1), (3, 2)]
    assert [(ds.read_image_bytes(i), int(ds.labels[i])) for i in range(6)] == \
        [(images[src], lab) for src, lab in expect]
    assert ds.identity_ranges.tolist() == [[0, 2], [2, 5], [5, 6]]


def test_reading_labels_does_not_read_images(tmp_path: Path, monkeypatch) -> None:
    images = [_image(k, size=(64, 64)) for k in range(8)]  # ~12 KB of noise each
    labels = [0, 0, 1, 1, 2, 2, 3, 3]
    read = []
    real = recordio._pread
    monkeypatch.setattr(recordio, "_pread", lambda fh, n, off: read.append(n) or real(fh, n, off))
    for with_header in (True, False):
        write_records(tmp_path / "train", images, labels, with_header=with_header)
        read.clear()
        ds = open_insightface_records(tmp_path)
        assert ds.labels.tolist() == labels
        # Headerless: record 0 (detection) is read whole, the other 7 only as header + label.
        budget = 0 if with_header else len(images[0]) + 7 * (8 + recordio.IR_SIZE + 4)
        assert sum(read) <= budget + 200, (with_header, read)


def test_header_without_identity_records_and_label_arrays(tmp_path: Path) -> None:
    # Re-packed files: header label = (first identity key, identity COUNT), no identity records;
    # an image record may carry a label array (flag > 0): its first entry is the identity.
    imgs = [_image(k) for k in range(4)]
    records = [(0, pack(IRHeader(2, [5, 2], 0, 0), b""))]
    records += [(1, pack(IRHeader(0, 1.0, 1, 0), imgs[0])),
                (2, pack(IRHeader(0, [0.0, 9.0], 2, 0), imgs[1])),
                (3, pack(IRHeader(0, [1.0, 5.0, 5.0], 3, 0), imgs[2])),
                (4, pack(IRHeader(0, 0.0, 4, 0), imgs[3]))]
    _write_raw(tmp_path / "train", records)
    ds = open_insightface_records(tmp_path)
    assert ds.has_header and ds.property is None
    assert ds.image_keys.tolist() == [2, 4, 1, 3] and ds.labels.tolist() == [0, 0, 1, 1]
    assert [ds.read_image_bytes(i) for i in range(4)] == [imgs[1], imgs[3], imgs[0], imgs[2]]


def test_sparse_keys_and_unordered_index(tmp_path: Path) -> None:
    imgs = [_image(k) for k in range(3)]
    # An image with a label array at key 0 is an image, not a header (it has image bytes).
    records = [(30, pack(IRHeader(0, 1.0, 0, 0), imgs[0])), (0, pack(IRHeader(0, [0.0, 4.0], 0, 0), imgs[1])),
               (900, pack(IRHeader(0, 1.0, 0, 0), imgs[2]))]
    _write_raw(tmp_path / "train", records)
    ds = open_insightface_records(tmp_path)
    assert not ds.has_header
    assert ds.image_keys.tolist() == [0, 30, 900] and ds.labels.tolist() == [0, 1, 1]
    assert ds.read_image_bytes(2) == imgs[2]
    with pytest.raises(DatasetError, match="no record with key 31"):
        ds.records.read_record(31)
    # A header-layout index listed back to front (and with CRLF) reads the same.
    write_records(tmp_path / "b", imgs, [0, 1, 1])
    lines = (tmp_path / "b.idx").read_text().splitlines()
    (tmp_path / "b.idx").write_bytes("\r\n".join(reversed(lines)).encode() + b"\r\n\r\n")
    ds = open_insightface_records(tmp_path / "b")
    assert ds.labels.tolist() == [0, 1, 1] and ds.read_image_bytes(1) == imgs[1]


# ---------------------------------------------------------------- multi-part records

def test_multi_part_record_built_by_hand(tmp_path: Path) -> None:
    # A payload with the magic at aligned offsets 4 and 8: the writer cuts it there into a
    # start part (cflag 1), an empty middle part (cflag 2) and an end part (cflag 3, padded).
    payload = b"abcd" + M + M + b"efghi"
    framed = _part(1, b"abcd") + _part(2, b"") + _part(3, b"efghi")
    assert encode_record(payload) == framed
    after = pack(IRHeader(0, 0.0, 0, 0), b"next")
    (tmp_path / "m.rec").write_bytes(framed + _part(0, after))
    (tmp_path / "m.idx").write_text(f"7\t0\n8\t{len(framed)}\n")
    rf = RecordFile(tmp_path / "m.rec")
    assert rf.read_record(7) == payload
    assert rf.read_record(8) == after
    for n in (2, 4, 6, 8, 12, 13, 100):  # prefixes ending inside parts and inside restored magics
        assert rf.read_prefix(7, n) == payload[:n]
    # dmlc's reader also skips the padding of a non-final part (its writer never pads one).
    (tmp_path / "m.rec").write_bytes(_part(1, b"abc") + _part(2, b"d") + _part(3, b"ef") + _part(0, after))
    (tmp_path / "m.idx").write_text(f"7\t0\n8\t{3 * 8 + 4 + 4 + 4}\n")
    rf = RecordFile(tmp_path / "m.rec")
    assert rf.read_record(7) == b"abc" + M + b"d" + M + b"ef" and rf.read_record(8) == after
    # An unaligned magic is not a record boundary: a single part.
    assert encode_record(b"x" + M + b"yz") == _part(0, b"x" + M + b"yz")


def test_magic_inside_an_image_survives(tmp_path: Path) -> None:
    base = _image(1)
    pad = -(recordio.IR_SIZE + len(base)) % 4  # put the magic at an aligned payload offset
    tricky = base + b"\0" * pad + M + b"tail" + M
    write_records(tmp_path / "train", [tricky, _image(2)], [0, 1])
    blob = (tmp_path / "train.rec").read_bytes()
    assert blob.count(M) > 2 + 2 + 1  # records + an extra part: the image was split
    ds = open_insightface_records(tmp_path)
    assert ds.read_image_bytes(0) == tricky and ds.read_image_bytes(1) == _image(2)


@pytest.mark.parametrize("parts, why", [
    ([(2, b"abcd")], "continuation flag 2 at the start"),
    ([(1, b"abcd"), (0, b"efgh")], "continuation flag 0 inside"),
    ([(5, b"abcd")], "continuation flag 5"),
])
def test_bad_continuation_flags(tmp_path: Path, parts, why: str) -> None:
    (tmp_path / "c.rec").write_bytes(b"".join(_part(f, d) for f, d in parts))
    (tmp_path / "c.idx").write_text("0\t0\n")
    with pytest.raises(DatasetError, match=why) as exc:
        RecordFile(tmp_path / "c.rec").read_record(0)
    _one_line_error(exc, "c.rec")


# ---------------------------------------------------------------- processes

def test_pickle_round_trip(tmp_path: Path, faces) -> None:
    images, labels = faces
    write_records(tmp_path / "train", images, labels)
    ds = open_insightface_records(tmp_path)
    assert ds.read_image_bytes(2) == images[2]  # the handle is open now
    assert ds.records._fh is not None
    state = ds.records.__getstate__()
    assert state["_fh"] is None and state["_pid"] is None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.records._fh is None
    assert [clone.read_image_bytes(i) for i in range(9)] == images
    assert clone.labels.tolist() == labels and clone.identity_ranges.tolist() == ds.identity_ranges.tolist()


class _Bytes(torch.utils.data.Dataset):
    def __init__(self, ds) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        data = self.ds.read_image_bytes(i)
        return i, data, os.getpid(), self.ds.records._pid


def test_dataloader_workers_read_the_same_bytes(tmp_path: Path, faces) -> None:
    images, labels = faces
    write_records(tmp_path / "train", images, labels)
    ds = open_insightface_records(tmp_path)
    ds.read_image_bytes(0)  # open in the parent, so forked workers inherit a handle
    loader = torch.utils.data.DataLoader(_Bytes(ds), batch_size=None, num_workers=2,
                                         multiprocessing_context="fork")
    got = {}
    worker_pids = set()
    for i, data, pid, handle_pid in loader:
        got[i] = data
        assert pid != os.getpid() and handle_pid == pid  # each worker opened its own handle
        worker_pids.add(pid)
    assert [got[i] for i in range(9)] == images and len(worker_pids) == 2
    assert ds.records._pid == os.getpid()


# ---------------------------------------------------------------- broken files

def test_truncated_rec(tmp_path: Path) -> None:
    imgs = [_image(k) for k in range(3)]
    offsets = _write_raw(tmp_path / "t", [(k, pack(IRHeader(0, 0.0, k, 0), imgs[k])) for k in range(3)])
    rec = tmp_path / "t.rec"
    blob = rec.read_bytes()
    cut = (offsets[2] + len(blob)) // 2
    rec.write_bytes(blob[:cut])
    rf = RecordFile(rec)
    assert rf.read_record(1) == pack(IRHeader(0, 0.0, 1, 0), imgs[1])
    with pytest.raises(DatasetError) as exc:
        rf.read_record(2)
    msg = _one_line_error(exc, "t.rec")
    assert f"truncated at byte {cut}" in msg and f"at byte {offsets[2]}" in msg and "record 2" in msg
    # Found while reading labels too (only the part header is needed to see it).
    with pytest.raises(DatasetError, match=f"truncated at byte {cut}"):
        open_insightface_records(tmp_path / "t")


def test_truncated_rec_header_layout(tmp_path: Path, faces) -> None:
    images, labels = faces
    write_records(tmp_path / "train", images, labels)
    rec = tmp_path / "train.rec"
    blob = rec.read_bytes()
    rec.write_bytes(blob[: len(blob) - 6])  # in the middle of the last identity record
    with pytest.raises(DatasetError) as exc:
        open_insightface_records(tmp_path)
    assert f"truncated at byte {len(blob) - 6}" in _one_line_error(exc, "train.rec")


def test_wrong_magic(tmp_path: Path, faces) -> None:
    images, labels = faces
    write_records(tmp_path / "train", images, labels)
    ds = open_insightface_records(tmp_path)
    off = ds.records.offset_of(5)
    rec = tmp_path / "train.rec"
    blob = bytearray(rec.read_bytes())
    blob[off:off + 4] = b"\x0a\x23\xd7\x3e"  # dmlc's pre-2016 magic
    rec.write_bytes(bytes(blob))
    ds = open_insightface_records(tmp_path)  # record 5 is an image: not read until asked for
    with pytest.raises(DatasetError) as exc:
        ds.read_image_bytes(4)
    msg = _one_line_error(exc, "train.rec")
    assert f"at byte {off}" in msg and "0x3ed7230a" in msg
    blob[0:4] = b"JUNK"
    rec.write_bytes(bytes(blob))
    with pytest.raises(DatasetError, match="bad magic number .* at byte 0 "):
        open_insightface_records(tmp_path)


@pytest.mark.parametrize("bad", ["3 120", "x\t5", "4\t", "4\t5\t6", "-4\t5", "4\t1.5"])
def test_bad_index_line(tmp_path: Path, faces, bad: str) -> None:
    images, labels = faces
    write_records(tmp_path / "train", images, labels)
    idx = tmp_path / "train.idx"
    lines = idx.read_text().splitlines(keepends=True)
    lines[2] = bad + "\n"
    idx.write_text("".join(lines))
    with pytest.raises(DatasetError) as exc:
        open_insightface_records(tmp_path)
    msg = _one_line_error(exc, "train.idx")
    assert f"line 3 (byte {len(lines[0]) + len(lines[1])})" in msg


def test_index_offset_past_end_and_duplicate_key(tmp_path: Path, faces) -> None:
    images, labels = faces
    write_records(tmp_path / "train", images, labels)
    idx = tmp_path / "train.idx"
    good = idx.read_text().splitlines(keepends=True)
    size = (tmp_path / "train.rec").stat().st_size
    idx.write_text("".join(good[:4] + [f"4\t{size}\n"] + good[5:]))
    with pytest.raises(DatasetError) as exc:
        open_insightface_records(tmp_path)
    msg = _one_line_error(exc, "train.idx")
    assert f"line 5 (byte {sum(map(len, good[:4]))}) points at byte {size}, past the end" in msg
    assert "train.rec" in msg
    idx.write_text("".join(good + [good[3]]))
    with pytest.raises(DatasetError, match=f"line {len(good) + 1} .* repeats key 3") as exc:
        open_insightface_records(tmp_path)
    _one_line_error(exc, "train.idx")


def test_missing_files(tmp_path: Path, faces) -> None:
    with pytest.raises(DatasetError, match="train.rec does not exist"):
        open_insightface_records(tmp_path)
    images, labels = faces
    write_records(tmp_path / "train", images, labels)
    (tmp_path / "train.idx").unlink()
    with pytest.raises(DatasetError, match="index file .*train.idx does not exist"):
        open_insightface_records(tmp_path)
    write_records(tmp_path / "train", images, labels)
    (tmp_path / "property").write_text("3,112\n")
    with pytest.raises(DatasetError, match="num_classes,height,width"):
        open_insightface_records(tmp_path)
    (tmp_path / "property").unlink()  # optional
    assert open_insightface_records(tmp_path).property is None
