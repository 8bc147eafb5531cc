"""insightface verification ``.bin`` files (lfw.bin, cfp_fp.bin, agedb_30.bin, calfw.bin ...).

A ``.bin`` is a pickle of ``(bins, issame_list)``: ``bins`` holds encoded JPEG/PNG bytes and
images ``2i`` and ``2i+1`` form pair ``i``. The files are downloaded from third parties, so they
are untrusted: a plain ``pickle.load`` would run any callable the file names.

How the load is made safe: :class:`_SafeUnpickler.find_class` is the only way a pickle can obtain
a callable (GLOBAL, STACK_GLOBAL, INST, OBJ and EXT all go through it) and it refuses every
global except a handful the format needs, for which it returns *our own* inert stand-ins instead
of the real objects:

* ``_codecs.encode`` — how Python 3 pickles ``bytes`` with protocol ≤ 2; the stand-in only
  accepts the ``latin1`` text→bytes conversion (no zlib/bz2 codecs, no codec lookup by name).
* numpy ``_reconstruct`` / ``ndarray`` / ``dtype`` / ``scalar`` / ``_frombuffer`` — some
  files store ``issame_list`` (or images) as numpy arrays. The stand-ins only record their
  arguments and ``__setstate__`` payload; nothing of numpy runs while unpickling. Afterwards
  :func:`_materialise` rebuilds arrays with ``np.frombuffer`` for a fixed list of plain numeric
  dtypes (never object dtypes, which could smuggle pickled objects).

Py2-era files store images as ``str``; ``encoding="bytes"`` reads them as ``bytes``.
"""
from __future__ import annotations

import io
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.core.errors import DatasetError
from bench.data.facedata import VerificationSet
from bench.data.images import decode_image_bytes

# Plain, fixed-size dtypes a verification file may use (bool labels, uint8 images, ints, floats).
_ALLOWED_DTYPES = {"b1", "?", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8"}
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                  "numpy._core.numeric", "numpy")


class _Refused(Exception):
    """Internal: the file is not a plain verification file (turned into a DatasetError)."""


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _latin1_encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    if not isinstance(obj, str) or _text(encoding).lower().replace("-", "").replace("_", "") != "latin1":
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return obj.encode("latin1")


class _Dtype:
    """Stand-in for ``numpy.dtype(spec, align, copy)`` (+ BUILD state carrying the byte order)."""

    __slots__ = ("spec", "state")  # no __dict__: a pickle cannot attach attributes

    def __init__(self, spec: Any = None, *_: Any) -> None:
        self.spec, self.state = spec, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def real(self) -> np.dtype:
        spec = _text(self.spec)
        if spec not in _ALLOWED_DTYPES:
            raise _Refused(f"numpy dtype {spec!r}")
        order = "|"
        if isinstance(self.state, tuple) and len(self.state) >= 2:
            order = _text(self.state[1])
            if order not in ("<", ">", "|", "="):
                raise _Refused(f"numpy byte order {order!r}")
            # Structured/sub-array dtypes put names/fields in the state: not plain, refuse.
            if any(x is not None for x in self.state[2:5]):
                raise _Refused("structured numpy dtype")
        dt = np.dtype(spec)
        return dt.newbyteorder(order) if order in ("<", ">") else dt


class _Array:
    """Stand-in for an ndarray built by ``_reconstruct`` + BUILD, or by ``_frombuffer``."""

    __slots__ = ("args", "state")

    def __init__(self, *args: Any) -> None:
        self.args, self.state = args, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def real(self) -> np.ndarray:
        if self.state is None:  # _frombuffer(buf, dtype, shape, order)
            if len(self.args) != 4:
                raise _Refused("numpy array with unexpected arguments")
            data, dtype, shape, order = self.args
            fortran = _text(order) == "F"
        else:  # _reconstruct(ndarray, (0,), b'b') then state (version, shape, dtype, fortran, data)
            st = self.state
            if not isinstance(st, tuple) or len(st) not in (4, 5):
                raise _Refused("numpy array with unexpected state")
            shape, dtype, fortran, data = st[-4:]
        if not isinstance(dtype, _Dtype):
            raise _Refused("numpy array without a plain dtype")
        if not isinstance(data, (bytes, bytearray)):
            raise _Refused("numpy array whose data is not raw bytes (object array?)")
        if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise _Refused("numpy array with a bad shape")
        dt = _Dtype.real(dtype)
        if math.prod(shape) * dt.itemsize != len(data):
            raise _Refused("numpy array whose data does not match its shape")
        return np.frombuffer(bytes(data), dtype=dt).reshape(shape, order="F" if fortran else "C").copy()


class _Scalar:
    """Stand-in for ``numpy.core.multiarray.scalar(dtype, raw bytes)`` (e.g. a ``np.bool_``)."""

    __slots__ = ("dtype", "data")

    def __init__(self, dtype: Any = None, data: Any = None) -> None:
        self.dtype, self.data = dtype, data

    def real(self) -> Any:
        if not isinstance(self.dtype, _Dtype) or not isinstance(self.data, (bytes, bytearray)):
            raise _Refused("numpy scalar that is not plain")
        dt = _Dtype.real(self.dtype)
        if len(self.data) != dt.itemsize:
            raise _Refused("numpy scalar with wrong size")
        return np.frombuffer(bytes(self.data), dtype=dt)[0].item()


def _reconstruct(cls: Any, *_: Any) -> _Array:
    if cls is not _NDARRAY:
        raise _Refused("numpy _reconstruct of something other than ndarray")
    return _Array()


class _Factory:
    """What ``find_class`` hands out: an immutable callable wrapping one stand-in. Handing out our
    functions or classes directly would let a pickle's BUILD opcode set attributes on them
    (module-wide state shared by later loads); this wrapper has no ``__dict__`` and refuses
    ``setattr``."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Any) -> None:
        object.__setattr__(self, "_fn", fn)

    def __setattr__(self, name: str, value: Any) -> None:
        raise _Refused("it tries to modify a global, refused")

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)


def _no_ndarray(*_: Any) -> Any:
    raise _Refused("it instantiates numpy.ndarray directly, refused")


_NDARRAY = _Factory(_no_ndarray)  # only valid as the class argument of _reconstruct

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {("_codecs", "encode"): _Factory(_latin1_encode)}
for _mod in _NUMPY_MODULES:
    _ALLOWED_GLOBALS.update({
        (_mod, "_reconstruct"): _Factory(_reconstruct),
        (_mod, "ndarray"): _NDARRAY,
        (_mod, "dtype"): _Factory(_Dtype),
        (_mod, "scalar"): _Factory(_Scalar),
        (_mod, "_frombuffer"): _Factory(_Array),
    })


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the stand-ins above; every other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"it references {module}.{name}, refused") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("it uses persistent ids, refused")


def _materialise(obj: Any) -> Any:
    if type(obj) in (_Array, _Scalar):  # exact types, unbound call: nothing the pickle could override
        return type(obj).real(obj)
    if isinstance(obj, (list, tuple)):
        return [_materialise(x) for x in obj]
    return obj


def read_bin(path: str | Path) -> tuple[list[bytes], list[bool]]:
    """Safely unpickle a ``.bin`` into (encoded images, issame flags), checking its structure."""
    path = Path(path)
    bad = f"{path.name} is not a valid verification file"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"verification file {path} does not exist") from None
    except OSError as exc:
        raise DatasetError(f"verification file {path} is unreadable ({type(exc).__name__})") from None
    try:
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
        if not isinstance(obj, (tuple, list)) or len(obj) != 2:
            raise _Refused("expected a pickled (bins, issame_list) pair")
        bins, issame = _materialise(obj[0]), _materialise(obj[1])
    except _Refused as exc:
        raise DatasetError(f"{bad}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a broken file
        raise DatasetError(f"{bad}: {type(exc).__name__}: {str(exc)[:200]}") from None
    if isinstance(bins, np.ndarray):
        bins = list(bins)
    if isinstance(issame, np.ndarray):
        issame = issame.reshape(-1).tolist()
    if not isinstance(bins, list) or not isinstance(issame, list):
        raise DatasetError(f"{bad}: expected lists of images and of same/different flags")
    images: list[bytes] = []
    for k, b in enumerate(bins):
        if isinstance(b, np.ndarray) and b.dtype == np.uint8:
            b = b.tobytes()
        if not isinstance(b, (bytes, bytearray)):
            raise DatasetError(f"{bad}: image {k} is {type(b).__name__}, not encoded bytes")
        images.append(bytes(b))
    flags: list[bool] = []
    for k, s in enumerate(issame):
        if isinstance(s, bool) or (isinstance(s, int) and s in (0, 1)):
            flags.append(bool(s))
        else:
            raise DatasetError(f"{bad}: pair flag {k} is {s!r}, not a boolean")
    if len(images) != 2 * len(flags) or not flags:
        raise DatasetError(f"{bad}: {len(images)} images for {len(flags)} pairs (need two per pair)")
    return images, flags


def load_bin(path: str | Path, size: int, channels: int) -> VerificationSet:
    """A ``.bin`` verification set, decoded to ``[2P, C, size, size]``; named after the file stem."""
    path = Path(path)
    images, flags = read_bin(path)
    decoded = [decode_image_bytes(b, size, channels, f"{k} of {path.name}") for k, b in enumerate(images)]
    return VerificationSet(path.stem, torch.stack(decoded), torch.tensor(flags, dtype=torch.bool))


def load_verification(spec: str | Path, size: int, channels: int) -> VerificationSet:
    """A ``.bin`` file, or a folder with LFW's ``pairs.txt`` (images in the folder or its ``lfw/``)."""
    from bench.data.lfw import load_lfw_pairs

    path = Path(spec).expanduser()
    if not path.exists():
        raise DatasetError(f"verification set {path} does not exist; give a .bin file or an LFW folder")
    if path.is_file() and path.suffix.lower() == ".bin":
        return load_bin(path, size, channels)
    if path.is_dir() and (path / "pairs.txt").is_file():
        root = path / "lfw" if (path / "lfw").is_dir() else path
        return load_lfw_pairs(path / "pairs.txt", root, size, channels)
    raise DatasetError(
        f"verification set {path} is neither a .bin file nor a folder containing pairs.txt"
    )
