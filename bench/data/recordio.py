"""MXNet RecordIO (``train.rec`` + ``train.idx`` + ``property``), read and written without MXNet.

insightface distributes its training sets (faces_webface_112x112, MS1M-ArcFace, Glint360K) in this
format. MXNet is unmaintained, and the PyPI readers checked (``mx-recordio`` 0.2: MXNet's Python
wrapper that still needs ``libmxnet`` through ctypes and pins ``numpy<2``; ``recordio-py``: a
different, varint-framed format) do not fit, so this is a small reader/writer of the format as
documented in:

* [CODE dmlc/dmlc-core:include/dmlc/recordio.h] and [CODE dmlc/dmlc-core:src/recordio.cc] — the
  framing. Each part is ``uint32 magic (0xced7230a) | uint32 lrecord | data | zero pad to 4 bytes``
  with ``lrecord = cflag << 29 | length``. The writer splits a payload at every 4-byte-aligned
  occurrence of the magic inside it (the magic is dropped; cflag 1 = first part, 2 = middle,
  3 = last, 0 = whole record); the reader joins the parts, putting the magic back between them.
  Integers are native-endian, i.e. little-endian on every platform MXNet shipped for.
* [CODE apache/mxnet:python/mxnet/recordio.py] — ``MXIndexedRecordIO``: the ``.idx`` is text,
  one ``key<TAB>offset`` line per record (offset of the record's first part in the ``.rec``);
  ``IRHeader`` ``struct 'IfQQ'`` = flag uint32, label float32, id uint64, id2 uint64 (24 bytes);
  when ``flag > 0`` the header is followed by ``flag`` float32 labels and the label is that array.
* [CODE deepinsight/insightface:recognition/arcface_torch/dataset.py] (``MXFaceDataset``) and the
  older insightface ``FaceImageIter.build_idx`` — the face layout: record 0 is a header whose
  label array is ``(first_identity_key, end_identity_key)`` with no image bytes; images are keys
  ``1 .. first_identity_key-1``; each identity record ``first_identity_key .. end_identity_key-1``
  has label ``(start, end)``, the key range of its images. Files without that header (im2rec
  style) hold only image records, whose label is the identity (the first one of a label array).
  Some re-packed files keep the header but no identity records (label[1] is then an identity
  count); their labels are read from the image headers.
"""
from __future__ import annotations

import os
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from bench.core.errors import DatasetError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_PART_HEAD = struct.Struct("<II")  # magic, lrecord
_CFLAG_SHIFT = 29
_LENGTH_MASK = (1 << _CFLAG_SHIFT) - 1
_IR = struct.Struct("<IfQQ")  # flag, label, id, id2: 24 bytes, same layout as mxnet's native 'IfQQ'
IR_SIZE = _IR.size
_MAX_INDEX_DIGITS = 18  # keeps every key/offset inside int64

# Only used where os.pread is missing (Windows): seek+read must not interleave between threads.
_SEEK_LOCK = threading.Lock()


class IRHeader(NamedTuple):
    """mxnet's image-record header; ``label`` is a float, or a float32 array when ``flag > 0``."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def unpack(payload: bytes, what: str = "record") -> tuple[IRHeader, bytes]:
    """Split a record payload into its :class:`IRHeader` and the image bytes after it."""
    if len(payload) < IR_SIZE:
        raise DatasetError(f"{what} is too short for an image-record header ({len(payload)} bytes, need {IR_SIZE})")
    flag, label, id_, id2 = _IR.unpack_from(payload)
    start = IR_SIZE
    if flag > 0:
        start += 4 * flag
        if len(payload) < start:
            raise DatasetError(f"{what} declares {flag} labels but holds {len(payload) - IR_SIZE} label bytes")
        label = np.frombuffer(payload, dtype="<f4", count=flag, offset=IR_SIZE).astype(np.float32)
    return IRHeader(flag, label, id_, id2), bytes(payload[start:])


def pack(header: IRHeader | tuple, data: bytes) -> bytes:
    """Inverse of :func:`unpack` (like mxnet's ``pack``: a scalar label forces ``flag = 0``, an array
    label sets ``flag`` to its size and is stored after the header)."""
    flag, label, id_, id2 = header
    if isinstance(label, (int, float, np.integer, np.floating)):
        return _IR.pack(0, float(label), id_, id2) + bytes(data)
    arr = np.asarray(label, dtype="<f4").ravel()
    return _IR.pack(arr.size, 0.0, id_, id2) + arr.tobytes() + bytes(data)


def encode_record(payload: bytes) -> bytes:
    """Frame one payload as dmlc's ``RecordIOWriter::WriteRecord`` does (split at aligned magics)."""
    if len(payload) > _LENGTH_MASK:
        raise DatasetError(f"a RecordIO record holds at most {_LENGTH_MASK} bytes, got {len(payload)}")
    lower_align = len(payload) & ~3
    out: list[bytes] = []
    start = 0  # where the current part begins
    hit = payload.find(_MAGIC_BYTES)
    while 0 <= hit < lower_align:
        if hit % 4 == 0:  # only aligned occurrences are split out, as dmlc scans in 4-byte steps
            out += [_PART_HEAD.pack(MAGIC, (1 if start == 0 else 2) << _CFLAG_SHIFT | (hit - start)),
                    payload[start:hit]]
            start = hit + 4
            hit = payload.find(_MAGIC_BYTES, start)
        else:
            hit = payload.find(_MAGIC_BYTES, hit + 1)
    tail = len(payload) - start
    out += [_PART_HEAD.pack(MAGIC, (3 if start else 0) << _CFLAG_SHIFT | tail), payload[start:],
            b"\0" * (-tail % 4)]
    return b"".join(out)


# ---------------------------------------------------------------- the .idx file

def _index_entry_position(raw: bytes, entry: int) -> tuple[int, int]:
    """(1-based line, byte offset) of the ``entry``-th non-blank line: only used for error messages."""
    pos, seen = 0, -1
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if line.strip():
            seen += 1
            if seen == entry:
                return lineno, pos
        pos += len(line) + 1
    return 0, len(raw)


def _canonical_chunk(b: np.ndarray) -> int:
    """Lines in ``b`` (whole lines) if every one is ``digits TAB digits NEWLINE``, else -1."""
    is_sep = (b == 9) | (b == 10)
    if not np.all(is_sep | ((b >= 48) & (b <= 57))):
        return -1
    sep_at = np.flatnonzero(is_sep)
    seps = b[sep_at]
    # Separators alternate tab, newline, and enclose non-empty, not-too-long digit runs.
    if seps.size % 2 or np.any(seps[0::2] != 9) or np.any(seps[1::2] != 10):
        return -1
    run = np.diff(sep_at, prepend=-1) - 1
    if np.any(run < 1) or np.any(run > _MAX_INDEX_DIGITS):
        return -1
    return seps.size // 2


def _parse_canonical(raw: bytes) -> np.ndarray | None:
    """Fast path for what mxnet writes (``%d\\t%d\\n`` per line): [n, 2] int64, or None if the file
    is not exactly that (the slow path then parses it and locates any bad line). Checked in
    chunks of whole lines so a Glint360K-sized index (~250 MB) needs no GB-sized temporaries."""
    if not raw.endswith(b"\n"):
        return None
    b = np.frombuffer(raw, dtype=np.uint8)
    lines, start = 0, 0
    while start < len(raw):
        stop = raw.find(b"\n", min(start + (1 << 24), len(raw)) - 1) + 1
        count = _canonical_chunk(b[start:stop])
        if count < 0:
            return None
        lines, start = lines + count, stop
    values = np.fromstring(raw, dtype=np.int64, sep=" ")  # any whitespace separates numbers
    return values.reshape(-1, 2) if values.size == 2 * lines else None


def _parse_index(raw: bytes, idx_name: str) -> np.ndarray:
    """``key<TAB>offset`` lines → [n, 2] int64 (blank lines and surrounding spaces tolerated)."""
    fast = _parse_canonical(raw)
    if fast is not None:
        return fast
    rows: list[tuple[int, int]] = []
    pos = 0
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        text = line.strip()
        if text:
            fields = text.split(b"\t")
            if len(fields) != 2 or not all(f.isdigit() and len(f) <= _MAX_INDEX_DIGITS for f in fields):
                raise DatasetError(
                    f"{idx_name} line {lineno} (byte {pos}) is not 'key<TAB>offset': {text[:40]!r}; "
                    "re-download the .idx or rebuild it")
            rows.append((int(fields[0]), int(fields[1])))
        pos += len(line) + 1
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def _pread(fileobj: BinaryIO, size: int, offset: int) -> bytes:
    if hasattr(os, "pread"):  # positional read: no shared file position, so thread-safe
        return os.pread(fileobj.fileno(), size, offset)
    with _SEEK_LOCK:
        fileobj.seek(offset)
        return fileobj.read(size)


class RecordFile:
    """Random access to the records of ``<prefix>.rec`` through ``<prefix>.idx``.

    The index is read in the constructor; the ``.rec`` is opened lazily, once per process (a
    handle inherited through ``fork`` is dropped and reopened), and never pickled, so instances
    can be handed to DataLoader workers. Reads use ``os.pread``, so threads may share one.
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        try:
            self.size = self.rec_path.stat().st_size
        except FileNotFoundError:
            raise DatasetError(f"record file {self.rec_path} does not exist") from None
        try:
            raw = self.idx_path.read_bytes()
        except FileNotFoundError:
            raise DatasetError(
                f"index file {self.idx_path} does not exist (it lists 'key<TAB>offset' for each record "
                f"of {self.rec_path.name})") from None
        except OSError as exc:
            raise DatasetError(f"index file {self.idx_path} is unreadable ({type(exc).__name__})") from None
        table = _parse_index(raw, self.idx_path.name)
        #: Record keys in index order.
        self.keys: np.ndarray = table[:, 0].copy()
        offsets = table[:, 1]
        bad = np.flatnonzero(offsets >= self.size)
        if bad.size:
            j = int(bad[0])
            line, byte = _index_entry_position(raw, j)
            raise DatasetError(
                f"{self.idx_path.name} line {line} (byte {byte}) points at byte {int(offsets[j])}, past the "
                f"end of {self.rec_path.name} ({self.size} bytes); the .rec is truncated or the .idx is not its index")
        order = np.argsort(self.keys, kind="stable")
        self._sorted_keys = self.keys[order]
        self._sorted_offsets = offsets[order]
        dup = np.flatnonzero(self._sorted_keys[1:] == self._sorted_keys[:-1])
        if dup.size:
            j = int(order[dup[0] + 1])
            line, byte = _index_entry_position(raw, j)
            raise DatasetError(f"{self.idx_path.name} line {line} (byte {byte}) repeats key {int(self.keys[j])}; "
                               "re-download the .idx or rebuild it")
        n = self._sorted_keys.size
        # Keys are usually 0..N-1: then a key's row is key - first, no search needed.
        self._first_key = int(self._sorted_keys[0]) if n else 0
        self._dense = n == 0 or int(self._sorted_keys[-1]) - self._first_key == n - 1
        if self._dense:  # not needed for lookups: keep worker pickles small
            self._sorted_keys = None
        self._fh = None
        self._pid: int | None = None

    def tail_key(self) -> int | None:
        """The key of the record stored last in the file (where a cut-short download breaks)."""
        if self._sorted_offsets.size == 0:
            return None
        j = int(np.argmax(self._sorted_offsets))
        return self._first_key + j if self._sorted_keys is None else int(self._sorted_keys[j])

    # -- pickling / per-process handle
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fh"], state["_pid"] = None, None  # a handle belongs to one process
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def _file(self):
        if self._fh is None or self._pid != os.getpid():
            if self._fh is not None:  # inherited through fork: close our copy, open our own
                self._fh.close()
                self._fh = None
            try:
                self._fh = open(self.rec_path, "rb", buffering=0)
            except FileNotFoundError:
                raise DatasetError(f"record file {self.rec_path} does not exist") from None
            except OSError as exc:
                raise DatasetError(f"record file {self.rec_path} is unreadable ({type(exc).__name__})") from None
            self._pid = os.getpid()
            self.size = os.fstat(self._fh.fileno()).st_size
        return self._fh

    def close(self) -> None:
        """Close this process's handle (a later read reopens it)."""
        if self._fh is not None:  # in a forked child this closes only the child's copy
            self._fh.close()
        self._fh, self._pid = None, None

    def __enter__(self) -> RecordFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- lookup
    def __len__(self) -> int:
        return int(self.keys.size)

    def _row(self, key: int) -> int:
        n = self._sorted_offsets.size
        if self._dense:
            row = key - self._first_key
            return row if 0 <= row < n else -1
        row = int(np.searchsorted(self._sorted_keys, key))
        return row if row < n and int(self._sorted_keys[row]) == key else -1

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (int, np.integer)) and self._row(int(key)) >= 0

    def offset_of(self, key: int) -> int:
        """Byte offset of record ``key`` in the ``.rec``."""
        row = self._row(int(key))
        if row < 0:
            raise DatasetError(f"{self.idx_path.name} has no record with key {int(key)}")
        return int(self._sorted_offsets[row])

    # -- reading
    def read_record(self, key: int) -> bytes:
        """The payload of record ``key`` (a multi-part record joined as dmlc does)."""
        return self._read(int(key), None)

    def read_prefix(self, key: int, size: int) -> bytes:
        """The first ``size`` payload bytes of record ``key`` (fewer if it is shorter): reads a
        record's header and labels without reading its image."""
        return self._read(int(key), max(0, int(size)))

    def _read(self, key: int, limit: int | None) -> bytes:
        fh = self._file()
        pos = self.offset_of(key)
        name = self.rec_path.name
        parts: list[bytes] = []
        got = 0
        first = True
        while True:
            # One read for the part header plus, for a prefix read, the bytes still wanted.
            buf = _pread(fh, _PART_HEAD.size + (0 if limit is None else max(0, limit - got)), pos)
            if len(buf) < _PART_HEAD.size:
                raise DatasetError(f"{name} is truncated at byte {self.size} (record {key} needs a part header "
                                   f"at byte {pos}); re-download or re-pack it")
            magic, lrec = _PART_HEAD.unpack_from(buf)
            if magic != MAGIC:
                raise DatasetError(f"{name} has a bad magic number 0x{magic:08x} at byte {pos} (record {key}; "
                                   f"expected 0x{MAGIC:08x}); the .idx does not match the .rec or the file is corrupt")
            cflag, length = lrec >> _CFLAG_SHIFT, lrec & _LENGTH_MASK
            if cflag > 3 or (cflag in (0, 1)) != first:
                raise DatasetError(f"{name} is corrupt at byte {pos} (record {key}: continuation flag {cflag} "
                                   f"{'at the start of a record' if first else 'inside a multi-part record'})")
            end = pos + _PART_HEAD.size + length
            if end > self.size:
                raise DatasetError(f"{name} is truncated at byte {self.size} (record {key} at byte {pos} needs "
                                   f"{_PART_HEAD.size + length} bytes); re-download or re-pack it")
            need = length if limit is None else min(length, limit - got)
            data = buf[_PART_HEAD.size:_PART_HEAD.size + need]
            if len(data) < need:
                data += _pread(fh, need - len(data), pos + _PART_HEAD.size + len(data))
                if len(data) < need:  # the file shrank after we measured it
                    raise DatasetError(f"{name} is truncated at byte {pos + _PART_HEAD.size + len(data)} "
                                       f"(record {key} at byte {pos} needs {_PART_HEAD.size + length} bytes); "
                                       "re-download or re-pack it")
            parts.append(data)
            got += len(data)
            if cflag in (0, 3) or (limit is not None and got >= limit):
                break
            parts.append(_MAGIC_BYTES)  # the writer cut the magic out here
            got += 4
            pos = end + (-length % 4)
            first = False
        out = b"".join(parts)
        return out if limit is None else out[:limit]


# ---------------------------------------------------------------- insightface layout

def _prefix_of(root_or_prefix: str | Path) -> Path:
    path = Path(root_or_prefix).expanduser()
    if path.is_dir():
        return path / "train"
    if path.suffix in (".rec", ".idx"):
        return path.with_suffix("")
    return path


def _read_property(path: Path) -> tuple[int, int, int]:
    text = path.read_text(errors="replace").strip()
    fields = [f.strip() for f in text.split(",")]
    if len(fields) != 3 or not all(f.isdigit() for f in fields):
        raise DatasetError(f"{path} should read 'num_classes,height,width', got {text[:40]!r}")
    n, h, w = (int(f) for f in fields)
    return n, h, w


class InsightfaceRecords:
    """An insightface training set in RecordIO form: image keys, identity labels, encoded images.

    Only the index and the header/identity records are read up front (or, for files without a
    header, each image record's 24-byte header and first label, never its image bytes).

    Attributes:
        image_keys: int64 record key of each image, grouped by identity.
        labels: int64 identity of each image, ``0 .. num_identities-1``.
        identity_ranges: ``[num_identities, 2]`` int64 ``[start, stop)`` *positions* into this
            dataset (the ``i`` of :meth:`read_image_bytes`) of each identity's images. With a
            header they come from the identity records (their key ranges, in identity order);
            without one, from the image labels (distinct labels in ascending order).
        has_header: whether the file has insightface's header record 0.
        property: ``(num_classes, height, width)`` from the ``property`` file, if there is one.
    """

    def __init__(self, records: RecordFile, property_path: Path | None = None) -> None:
        self.records = records
        self.property: tuple[int, int, int] | None = (
            _read_property(property_path) if property_path is not None and property_path.is_file() else None)
        self.has_header = False
        header = self._header()
        if header is not None:
            self.has_header = True
            first_id, end_id = header
            if first_id - 1 < 1:
                raise DatasetError(f"{records.rec_path.name} header (record 0) lists no images "
                                   f"(first identity key {first_id})")
            if end_id > first_id and first_id in records:
                self._from_identity_records(first_id, end_id)
            else:  # header without identity records: label[1] is a count, not a key
                self._from_image_labels(np.arange(1, first_id, dtype=np.int64))
        else:
            self._from_image_labels(records.keys.copy())
        if self.image_keys.size == 0:
            raise DatasetError(f"{records.rec_path.name} holds no images")
        self.num_identities = int(self.identity_ranges.shape[0])

    def _what(self, key: int) -> str:
        return f"record {key} of {self.records.rec_path.name} (byte {self.records.offset_of(key)})"

    def _header(self) -> tuple[int, int] | None:
        """(first_identity_key, end_identity_key) if record 0 is insightface's header."""
        if 0 not in self.records:
            return None
        head, rest = unpack(self.records.read_record(0), self._what(0))
        # A header has a label pair and no image; an image record with a label array has an image.
        if head.flag < 2 or rest:
            return None
        first_id, end_id = float(head.label[0]), float(head.label[1])
        if not (first_id.is_integer() and end_id.is_integer()):
            raise DatasetError(f"{self._what(0)} is a header with non-integer keys ({first_id}, {end_id})")
        return int(first_id), int(end_id)

    def _from_identity_records(self, first_id: int, end_id: int) -> None:
        rec = self.records
        ranges = np.empty((end_id - first_id, 2), dtype=np.int64)
        for row, key in enumerate(range(first_id, end_id)):
            if key not in rec:
                raise DatasetError(f"{rec.idx_path.name} has no identity record {key} (the header of "
                                   f"{rec.rec_path.name} lists identities at keys {first_id}..{end_id - 1})")
            head, _ = unpack(rec.read_record(key), self._what(key))
            lab = head.label
            if head.flag < 2 or not all(float(x).is_integer() for x in lab[:2]):
                raise DatasetError(f"{self._what(key)} is not an identity record (label {lab!r}, "
                                   "expected a (start, end) key range)")
            a, b = int(lab[0]), int(lab[1])
            if not 1 <= a <= b <= first_id:
                raise DatasetError(f"{self._what(key)} has image range [{a}, {b}) outside the image keys "
                                   f"1..{first_id - 1}")
            ranges[row] = a, b
        by_start = ranges[np.argsort(ranges[:, 0], kind="stable")]
        if np.any(by_start[1:, 0] < by_start[:-1, 1]):
            raise DatasetError(f"{rec.rec_path.name} has identity records with overlapping image ranges")
        counts = ranges[:, 1] - ranges[:, 0]
        keys = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges] + [np.empty(0, np.int64)])
        missing = keys[~np.isin(keys, rec.keys)]
        if missing.size:
            raise DatasetError(f"{rec.idx_path.name} has no image record {int(missing[0])}, which an identity "
                               f"record of {rec.rec_path.name} lists")
        self.image_keys = keys
        self.labels = np.repeat(np.arange(ranges.shape[0], dtype=np.int64), counts)
        stops = np.cumsum(counts)
        self.identity_ranges = np.stack([stops - counts, stops], axis=1).astype(np.int64)

    def _from_image_labels(self, keys: np.ndarray) -> None:
        rec = self.records
        raw = np.empty(keys.size, dtype=np.float64)
        for i, key in enumerate(keys.tolist()):
            payload = rec.read_prefix(key, IR_SIZE + 4)  # header + first label of an array, no image
            if len(payload) < IR_SIZE:
                raise DatasetError(f"{self._what(key)} is too short for an image-record header "
                                   f"({len(payload)} bytes, need {IR_SIZE})")
            flag, label, _, _ = _IR.unpack_from(payload)
            if flag > 0:
                if len(payload) < IR_SIZE + 4:
                    raise DatasetError(f"{self._what(key)} declares {flag} labels but holds none")
                (label,) = struct.unpack_from("<f", payload, IR_SIZE)
            raw[i] = label
        bad = np.flatnonzero(~np.isfinite(raw) | (raw < 0) | (raw != np.floor(raw)))
        if bad.size:
            key = int(keys[bad[0]])
            raise DatasetError(f"{self._what(key)} has label {raw[bad[0]]}, not an identity number")
        _, inverse = np.unique(raw, return_inverse=True)
        inverse = inverse.reshape(-1).astype(np.int64)
        order = np.argsort(inverse, kind="stable")  # group by identity, keep file order inside one
        self.image_keys = keys[order].astype(np.int64)
        self.labels = inverse[order]
        counts = np.bincount(self.labels) if self.labels.size else np.empty(0, dtype=np.int64)
        stops = np.cumsum(counts)
        self.identity_ranges = np.stack([stops - counts, stops], axis=1).astype(np.int64)

    def __len__(self) -> int:
        return int(self.image_keys.size)

    def read_image_bytes(self, i: int) -> bytes:
        """The encoded JPEG/PNG of the ``i``-th image."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"image {i} out of range for {n} images")
        key = int(self.image_keys[i])
        _, image = unpack(self.records.read_record(key), self._what(key))
        return image

    def close(self) -> None:
        self.records.close()


def open_insightface_records(root_or_prefix: str | Path) -> InsightfaceRecords:
    """A folder holding ``train.rec``/``train.idx`` (and optionally ``property``), a ``.rec`` path,
    or a path prefix (``/data/ms1m/train``)."""
    prefix = _prefix_of(root_or_prefix)
    rec = Path(f"{prefix}.rec")
    if not rec.is_file():
        raise DatasetError(
            f"{rec} does not exist; give an insightface training folder (train.rec, train.idx, property) "
            "or the path of a .rec file")
    return InsightfaceRecords(RecordFile(rec, Path(f"{prefix}.idx")), prefix.parent / "property")


# ---------------------------------------------------------------- writer

def _image_size(data: bytes) -> tuple[int, int]:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            return img.size
    except Exception as exc:  # noqa: BLE001 - any PIL failure means "not an image"
        raise DatasetError(f"image 0 is not a readable image ({type(exc).__name__}); cannot write property") from None


def write_records(prefix: str | Path, images: Sequence[bytes], labels: Sequence[int],
                  with_header: bool = True) -> None:
    """Pack encoded images into ``<prefix>.rec``/``<prefix>.idx`` plus ``property`` beside them.

    Images are stored grouped by label (stable order) and labels renumbered ``0..n-1`` in
    ascending order of the given labels, as the identity ranges require. With ``with_header``:
    insightface's layout (header record 0 with label ``(first_identity_key, end_identity_key)``,
    images at keys ``1..N``, one identity record per identity with its ``(start, end)`` image key
    range); without: image records at keys ``0..N-1`` only.
    """
    if len(images) != len(labels):
        raise DatasetError(f"{len(images)} images but {len(labels)} labels")
    if not images:
        raise DatasetError("no images to write")
    prefix = Path(prefix)
    uniq, inverse = np.unique(np.asarray(labels, dtype=np.int64), return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=uniq.size)
    width, height = _image_size(images[int(order[0])])
    n, n_ids = len(images), int(uniq.size)

    payloads: list[tuple[int, bytes]] = []
    first_image = 1 if with_header else 0
    if with_header:
        first_id = first_image + n
        payloads.append((0, pack(IRHeader(2, [first_id, first_id + n_ids], 0, 0), b"")))
    for j, src in enumerate(order.tolist()):
        key = first_image + j
        payloads.append((key, pack(IRHeader(0, float(inverse[src]), key, 0), images[src])))
    if with_header:
        stops = first_image + np.cumsum(counts)
        for ident in range(n_ids):
            key = first_id + ident
            start, stop = int(stops[ident] - counts[ident]), int(stops[ident])
            payloads.append((key, pack(IRHeader(2, [start, stop], key, 0), b"")))

    offset = 0
    index_lines = []
    with open(f"{prefix}.rec", "wb") as rec:
        for key, payload in payloads:
            framed = encode_record(payload)
            rec.write(framed)
            index_lines.append(f"{key}\t{offset}\n")
            offset += len(framed)
    Path(f"{prefix}.idx").write_text("".join(index_lines))
    (prefix.parent / "property").write_text(f"{n_ids},{height},{width}")
