"""The stage file format: one ``.safetensors`` file per stored stage, no pickle anywhere.

A stage (a dict of models, tensors and numbers; a fitted defense; a ``Leak``) is split into

- its **tensors**, the body of a standard safetensors file, each named by its path in the stage
  (``model.backbone.conv1.weight``, ``leak.train_inputs``): a stored module's tensors are its
  ``state_dict`` under the attribute that holds it, readable by any safetensors tool;
- its **structure**, JSON in the file's ``__metadata__`` (key ``structure``): numbers, strings,
  lists and dicts as themselves, tensors as references to the body, and every object as the
  class that rebuilds it plus its attributes.

Why attributes and not constructor arguments: ``nn.Module`` records none (nor do timm's or
Opacus's modules), and every defense keeps fitted state that no constructor rebuilds. A module
node is therefore its class, its non-tensor attributes and its children — the module tree itself
— and loading creates each object with ``cls.__new__(cls)`` and sets its state, exactly what
unpickling does, but from JSON data: the only things a file can name are classes that the
``resolve`` callable admits (the store passes :func:`bench.store.safe_global`, the same allowlist
that guards the older pickle files); functions, ``__reduce__`` callables and constructors with
arguments are not representable, so no code chosen by the file runs. Empty hook dictionaries of
modules are left out of the JSON and filled back in on load, which keeps the structure small.

Objects met twice (a module shared by two stages' entries, a back-reference) are written once
and referenced by id, like pickle's memo, so sharing and cycles survive a round trip.
"""
from __future__ import annotations

import base64
import copyreg
import enum
import json
import math
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

#: ``__metadata__["format"]`` of every stage file
FORMAT = "faceprivbench.stage"
#: ``__metadata__["version"]``: raised when the structure's node kinds change incompatibly
VERSION = 1
#: safetensors' own bound on the JSON header (a larger one is not a safetensors file)
MAX_HEADER_BYTES = 100_000_000

Resolver = Callable[[str], Any]  # class name → the class, or None when not allowed


class StageFormatError(ValueError):
    """A file is not a well-formed stage file (truncated, wrong format, dangling reference) or
    names a class the resolver refuses."""


class UnstorableError(TypeError):
    """An object of a stage has no representation in the format (a function, a generator, a
    class outside the allowlist); the message names where in the stage it is."""


def class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _module_defaults() -> dict[str, Any]:
    """Fresh copies of the bookkeeping attributes ``nn.Module.__init__`` sets (hook dicts, …)."""
    return dict(nn.Module().__dict__)


#: where a module keeps what ``state_dict`` names without the attribute (its tensors' paths)
_TRANSPARENT = ("_parameters", "_buffers", "_modules")
_SCALAR_KINDS = "biufc"  # numpy dtype kinds the format stores (no objects, strings, voids)


# -- encoding ----------------------------------------------------------------------------------
class _Encoder:
    def __init__(self, allowed: Resolver | None) -> None:
        self.allowed = allowed
        self.tensors: dict[str, torch.Tensor] = {}
        self._tensor_names: dict[int, str] = {}
        self._storages: set[int] = set()
        self._objects: dict[int, int] = {}
        self._alive: list[Any] = []  # keeps encoded objects alive so their ids are not reused
        self._defaults = _module_defaults()

    # every node kind is a dict with one ``__kind__`` key; plain dicts never have ``__`` keys
    def enc(self, x: Any, path: str) -> Any:
        if x is None or isinstance(x, (bool, str)) or type(x) is int:
            return x
        if type(x) is float:
            return x if math.isfinite(x) else {"__float__": repr(x)}
        if isinstance(x, torch.Tensor):
            return self._tensor(x, path)
        if isinstance(x, np.ndarray):
            return self._ndarray(x, path)
        if isinstance(x, np.generic):
            if x.dtype.kind not in _SCALAR_KINDS:
                raise UnstorableError(f"{path or 'stage'}: numpy scalar of dtype {x.dtype}")
            return {"__np__": x.dtype.str, "value": self.enc(x.item(), path)}
        if isinstance(x, np.dtype):
            if x.kind not in _SCALAR_KINDS:
                raise UnstorableError(f"{path or 'stage'}: numpy dtype {x}")
            return {"__npdtype__": x.str}
        if isinstance(x, torch.dtype):
            return {"__dtype__": str(x).removeprefix("torch.")}
        if isinstance(x, torch.device):
            return {"__device__": str(x)}
        if type(x) is torch.Size:
            return {"__size__": list(x)}
        if type(x) is complex:
            return {"__complex__": [self.enc(x.real, path), self.enc(x.imag, path)]}
        if type(x) is bytes:
            return {"__bytes__": base64.b64encode(x).decode("ascii")}
        if type(x) is list:
            return [self.enc(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(x)]
        if type(x) is tuple:
            return {"__tuple__": [self.enc(v, f"{path}.{i}" if path else str(i))
                                  for i, v in enumerate(x)]}
        if type(x) in (set, frozenset):
            kind = "__set__" if type(x) is set else "__frozenset__"
            return {kind: [self.enc(v, path) for v in _sorted(x)]}
        if type(x) in (slice, range):
            kind = "__slice__" if type(x) is slice else "__range__"
            return {kind: [self.enc(v, path) for v in (x.start, x.stop, x.step)]}
        if type(x) is dict:
            return self._dict(x, path)
        if type(x) is OrderedDict:
            return {"__odict__": self._pairs(x, path)}
        if type(x) is Counter:
            return {"__counter__": self._pairs(x, path)}
        if type(x) is bytearray:
            return {"__bytearray__": base64.b64encode(x).decode("ascii")}
        if isinstance(x, type):
            return {"__type__": self._allowed_name(x, path)}
        if isinstance(x, enum.Enum):
            return {"__enum__": self._allowed_name(type(x), path), "value": self.enc(x.value, path)}
        return self._object(x, path)

    def _allowed_name(self, cls: type, path: str) -> str:
        name = class_name(cls)
        if self.allowed is not None and self.allowed(name) is not cls:
            raise UnstorableError(f"{path or 'stage'}: {name} is not a class stages may hold "
                                  f"(bench/store.py safe_global)")
        return name

    def _dict(self, d: dict, path: str) -> Any:
        if _plain_keys(d):
            return {k: self.enc(v, _join(path, k)) for k, v in d.items()}
        return {"__dict__": self._pairs(d, path)}

    def _pairs(self, d: dict, path: str) -> list[list[Any]]:
        return [[self.enc(k, path), self.enc(v, _join(path, str(k)))] for k, v in d.items()]

    def _tensor(self, x: torch.Tensor, path: str) -> dict[str, Any]:
        if type(x) not in (torch.Tensor, nn.Parameter) or x.layout != torch.strided \
                or x.is_quantized or x.is_meta:
            raise UnstorableError(f"{path or 'stage'}: {type(x).__name__} with layout {x.layout} "
                                  f"is not a plain dense tensor")
        node: dict[str, Any] = {"__tensor__": self._store_tensor(x, path)}
        if type(x) is nn.Parameter:
            node["parameter"] = True
        if x.requires_grad:
            node["requires_grad"] = True
        if _channels_last_strides(x):
            node["channels_last"] = True  # (a recognizer run with recognizer.channels_last)
        return node

    def _ndarray(self, x: np.ndarray, path: str) -> dict[str, Any]:
        if x.dtype.kind not in _SCALAR_KINDS or not x.dtype.isnative:
            raise UnstorableError(f"{path or 'stage'}: numpy array of dtype {x.dtype}")
        return {"__ndarray__": self._store_tensor(torch.from_numpy(np.array(x, copy=True)), path)}

    def _store_tensor(self, x: torch.Tensor, path: str) -> str:
        if id(x) in self._tensor_names:  # the same tensor object again: one copy, one name
            return self._tensor_names[id(x)]
        t = x.detach().resolve_conj().resolve_neg().cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else 0
        # safetensors stores each tensor's own bytes: views of one storage become copies
        if not t.is_contiguous() or (ptr and ptr in self._storages):
            t = t.clone(memory_format=torch.contiguous_format)
            ptr = t.untyped_storage().data_ptr() if t.numel() else 0
        if ptr:
            self._storages.add(ptr)
        name, n = path or "tensor", 1
        while name in self.tensors:
            n += 1
            name = f"{path or 'tensor'}#{n}"
        self.tensors[name] = t
        self._tensor_names[id(x)] = name
        self._alive.append(x)
        return name

    def _object(self, x: Any, path: str) -> dict[str, Any]:
        cls = type(x)
        name = self._allowed_name(cls, path)
        if id(x) in self._objects:
            return {"__ref__": self._objects[id(x)]}
        reduced = x.__reduce_ex__(2)
        if not (isinstance(reduced, tuple) and len(reduced) >= 2 and reduced[0] is copyreg.__newobj__
                and reduced[1][:1] == (cls,) and all(r is None for r in reduced[3:5])):
            raise UnstorableError(f"{path or 'stage'}: {name} pickles through a custom "
                                  f"__reduce__, which the stage format does not run")
        ident = len(self._objects)
        self._objects[id(x)] = ident
        self._alive.append(x)
        node: dict[str, Any] = {"__obj__": name, "id": ident}
        if len(reduced[1]) > 1:
            node["args"] = [self.enc(a, path) for a in reduced[1][1:]]
        state = reduced[2] if len(reduced) > 2 else None
        if isinstance(x, nn.Module) and type(state) is dict and _plain_keys(state):
            state = {k: v for k, v in state.items()  # bookkeeping left empty: filled in on load
                     if not (k in self._defaults and type(v) is type(self._defaults[k])
                             and isinstance(v, (dict, set)) and not v)}
            # parameters, buffers and children are named as state_dict names them
            node["state"] = {k: (self._dict(v, path) if k in _TRANSPARENT and type(v) is dict
                                 else self.enc(v, _join(path, k)))
                             for k, v in state.items()}
        elif state is not None:
            node["state"] = self.enc(state, path) if type(state) is not dict else \
                self._dict(state, path)
        return node


def _channels_last_strides(x: torch.Tensor) -> bool:
    """Whether ``x`` has exactly the strides ``Module.to(memory_format=channels_last)`` gives,
    and they differ from the default layout's. Comparing strides, not ``is_contiguous``: a
    one-channel stem or a 1×1 convolution is "contiguous" in both layouts (size-1 dimensions), yet
    the convolution kernel chosen, and so the output's last bits, follows the strides (measured:
    a reloaded channels-last recognizer differed by 3e-8 before)."""
    if x.dim() != 4:
        return False
    n, c, h, w = x.shape
    return x.stride() == (h * w * c, 1, w * c, c) and x.stride() != (c * h * w, h * w, w, 1)


def _join(path: str, key: str) -> str:
    """The path (tensor name) of entry ``key`` under ``path``."""
    return f"{path}.{key}" if path else key


def _plain_keys(d: dict) -> bool:
    """Whether ``d`` can be a JSON object as it is: string keys, none of them a node kind."""
    return all(isinstance(k, str) and not k.startswith("__") for k in d)


def _sorted(items: Any) -> list[Any]:
    """A set's members in a stable order (so equal stages give equal files)."""
    try:
        return sorted(items)
    except TypeError:
        return sorted(items, key=repr)


# -- decoding ----------------------------------------------------------------------------------
class _Decoder:
    def __init__(self, tensors: dict[str, torch.Tensor], resolve: Resolver) -> None:
        self.tensors = tensors
        self.resolve = resolve
        self.objects: dict[int, Any] = {}

    def cls(self, name: Any) -> type:
        obj = self.resolve(name) if isinstance(name, str) else None
        if not isinstance(obj, type):
            raise StageFormatError(f"class {name!r} is not allowed in a stage (bench/store.py "
                                   f"safe_global)")
        return obj

    def tensor(self, name: Any) -> torch.Tensor:
        if not isinstance(name, str) or name not in self.tensors:
            raise StageFormatError(f"reference to missing tensor {name!r}")
        return self.tensors[name]

    def dec(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.dec(v) for v in node]
        if not isinstance(node, dict):
            raise StageFormatError(f"unexpected JSON value {type(node).__name__}")
        kinds = [k for k in node if k.startswith("__")]
        if not kinds:
            return {k: self.dec(v) for k, v in node.items()}
        if len(kinds) != 1:
            raise StageFormatError(f"malformed node with keys {sorted(node)}")
        kind, value = kinds[0], node[kinds[0]]
        handler = getattr(self, f"_{kind.strip('_')}", None)
        if kind not in _NODE_KINDS or handler is None:
            raise StageFormatError(f"unknown node kind {kind!r}")
        return handler(value, node)

    def _float(self, value: Any, node: dict) -> float:
        if value not in ("nan", "inf", "-inf"):
            raise StageFormatError(f"bad float {value!r}")
        return float(value)

    def _tensor(self, value: Any, node: dict) -> torch.Tensor:
        t = self.tensor(value)
        if node.get("channels_last"):  # the strides the module had, not just an equivalent layout
            t = torch.empty_like(t, memory_format=torch.channels_last).copy_(t)
        if node.get("parameter"):
            return nn.Parameter(t, requires_grad=bool(node.get("requires_grad")))
        return t.requires_grad_(True) if node.get("requires_grad") else t

    def _ndarray(self, value: Any, node: dict) -> np.ndarray:
        return self.tensor(value).numpy()

    def _np(self, value: Any, node: dict) -> Any:
        dtype = self._npdtype(value, node)
        return dtype.type(self.dec(node.get("value")))

    def _npdtype(self, value: Any, node: dict) -> np.dtype:
        try:
            dtype = np.dtype(str(value))
        except TypeError as exc:
            raise StageFormatError(f"bad numpy dtype {value!r}") from exc
        if dtype.kind not in _SCALAR_KINDS:
            raise StageFormatError(f"numpy dtype {value!r} is not stored by the format")
        return dtype

    def _dtype(self, value: Any, node: dict) -> torch.dtype:
        dtype = getattr(torch, str(value), None)
        if not isinstance(dtype, torch.dtype):
            raise StageFormatError(f"bad torch dtype {value!r}")
        return dtype

    def _device(self, value: Any, node: dict) -> torch.device:
        try:
            return torch.device(str(value))
        except RuntimeError as exc:
            raise StageFormatError(f"bad device {value!r}") from exc

    def _size(self, value: Any, node: dict) -> torch.Size:
        return torch.Size(self._ints(value))

    def _complex(self, value: Any, node: dict) -> complex:
        re, im = self._items(value, 2)
        return complex(re, im)

    def _bytes(self, value: Any, node: dict) -> bytes:
        return base64.b64decode(str(value), validate=True)

    def _tuple(self, value: Any, node: dict) -> tuple:
        return tuple(self._items(value))

    def _set(self, value: Any, node: dict) -> set:
        return set(self._items(value))

    def _frozenset(self, value: Any, node: dict) -> frozenset:
        return frozenset(self._items(value))

    def _slice(self, value: Any, node: dict) -> slice:
        return slice(*self._items(value, 3))

    def _range(self, value: Any, node: dict) -> range:
        start, stop, step = self._items(value, 3)
        return range(start, stop, step)

    def _dict(self, value: Any, node: dict) -> dict:
        return dict(self._pairs(value))

    def _odict(self, value: Any, node: dict) -> OrderedDict:
        return OrderedDict(self._pairs(value))

    def _counter(self, value: Any, node: dict) -> Counter:
        return Counter(dict(self._pairs(value)))

    def _bytearray(self, value: Any, node: dict) -> bytearray:
        return bytearray(self._bytes(value, node))

    def _type(self, value: Any, node: dict) -> type:
        return self.cls(value)

    def _enum(self, value: Any, node: dict) -> enum.Enum:
        cls = self.cls(value)
        if not issubclass(cls, enum.Enum):
            raise StageFormatError(f"{value!r} is not an enum")
        return cls(self.dec(node.get("value")))

    def _ref(self, value: Any, node: dict) -> Any:
        if value not in self.objects:
            raise StageFormatError(f"reference to unknown object {value!r}")
        return self.objects[value]

    def _obj(self, value: Any, node: dict) -> Any:
        cls = self.cls(value)
        ident = node.get("id")
        if not isinstance(ident, int) or ident in self.objects:
            raise StageFormatError(f"object {value!r} has a bad id {ident!r}")
        args = self._items(node.get("args", []))
        obj = cls.__new__(cls, *args)
        self.objects[ident] = obj  # before its state: the state may refer back to it
        state = self.dec(node.get("state"))
        if isinstance(obj, nn.Module):
            if not isinstance(state, dict):
                raise StageFormatError(f"module {value!r} without a state dict")
            state = {**_module_defaults(), **state}
        if state is None:
            return obj
        if hasattr(obj, "__setstate__"):
            obj.__setstate__(state)
        elif isinstance(state, dict):
            obj.__dict__.update(state)
        elif isinstance(state, tuple) and len(state) == 2:  # (__dict__, __slots__) of a class
            own, slots = state
            obj.__dict__.update(own or {})
            for key, v in (slots or {}).items():
                object.__setattr__(obj, key, v)
        else:
            raise StageFormatError(f"object {value!r} has a state of type {type(state).__name__}")
        return obj

    def _items(self, value: Any, n: int | None = None) -> list[Any]:
        if not isinstance(value, list) or (n is not None and len(value) != n):
            raise StageFormatError(f"expected a list{'' if n is None else f' of {n}'}, got {value!r}"[:200])
        return [self.dec(v) for v in value]

    def _ints(self, value: Any) -> list[int]:
        if not isinstance(value, list) or not all(type(v) is int for v in value):
            raise StageFormatError(f"expected a list of ints, got {value!r}"[:200])
        return value

    def _pairs(self, value: Any) -> list[tuple[Any, Any]]:
        if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 for p in value):
            raise StageFormatError("malformed key/value pairs")
        return [(self.dec(k), self.dec(v)) for k, v in value]


_NODE_KINDS = frozenset({"__float__", "__tensor__", "__ndarray__", "__np__", "__npdtype__",
                         "__dtype__", "__device__", "__size__", "__complex__", "__bytes__",
                         "__tuple__", "__set__", "__frozenset__", "__slice__", "__range__",
                         "__dict__", "__odict__", "__counter__", "__bytearray__", "__type__", "__enum__", "__ref__", "__obj__"})


# -- files -------------------------------------------------------------------------------------
def encode(obj: Any, allowed: Resolver | None) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """``(metadata, tensors)`` of a stage: the safetensors ``__metadata__`` holding the JSON
    structure, and the named tensors. Raises :class:`UnstorableError` naming the first part of
    ``obj`` the format cannot hold: anything but data, tensors and instances of classes, and
    (unless ``allowed`` is None: any class, by name) a class ``allowed`` does not admit."""
    enc = _Encoder(allowed)
    structure = enc.enc(obj, "")
    meta = {"format": FORMAT, "version": str(VERSION),
            "structure": json.dumps(structure, separators=(",", ":"), allow_nan=False)}
    return meta, enc.tensors


def dumps(obj: Any, allowed: Resolver | None) -> bytes:
    """The bytes of a stage file for ``obj`` (see :func:`encode`)."""
    from safetensors.torch import save

    meta, tensors = encode(obj, allowed)
    return save(tensors, metadata=meta)


def parse_header(prefix: bytes, total: int) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensor entries, metadata)`` from a stage file's first bytes (``prefix``: at least its
    length field and JSON header) and its total size ``total``, checked without reading any
    tensor: a safetensors header whose metadata says it is a stage file of a known version, and
    whose tensors exactly fill the body. Raises :class:`StageFormatError`."""
    if len(prefix) < 8:
        raise StageFormatError("not a safetensors file (shorter than its header length)")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES or 8 + n > min(len(prefix), total):
        raise StageFormatError("not a safetensors file (header length out of range)")
    try:
        header = json.loads(prefix[8:8 + n])
    except (ValueError, UnicodeDecodeError) as exc:
        raise StageFormatError(f"not a safetensors file (header: {exc})") from None
    if not isinstance(header, dict):
        raise StageFormatError("not a safetensors file (header is not an object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StageFormatError(f"not a {FORMAT} file (metadata format {meta.get('format')!r})"
                               if isinstance(meta, dict) else "malformed metadata")
    if meta.get("version") != str(VERSION):
        raise StageFormatError(f"stage format version {meta.get('version')!r}; this harness "
                               f"reads version {VERSION}")
    body = total - 8 - n
    end = 0
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1] <= body):
            raise StageFormatError(f"tensor {name!r} lies outside the file")
        end = max(end, offsets[1])
    if end != body:
        raise StageFormatError(f"body of {body} bytes, tensors end at {end}: truncated or padded")
    return header, meta


def read_header(data: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """:func:`parse_header` of a whole stage file's bytes."""
    return parse_header(data, len(data))


def file_header(path: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """:func:`parse_header` of a stage file on disk, reading its header only."""
    import os

    with open(path, "rb") as fh:
        head = fh.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        prefix = head + fh.read(min(n, MAX_HEADER_BYTES))
    return parse_header(prefix, os.path.getsize(path))


def _structure(meta: dict[str, str]) -> Any:
    try:
        return json.loads(meta.get("structure", ""))
    except ValueError as exc:
        raise StageFormatError(f"malformed structure JSON: {exc}") from None


def loads(data: bytes, resolve: Resolver) -> Any:
    """The stage a file's bytes hold: header checked (:func:`read_header`), classes resolved
    through ``resolve`` only, tensors read by safetensors. Raises :class:`StageFormatError`."""
    from safetensors.torch import load

    _, meta = read_header(data)
    structure = _structure(meta)
    try:
        tensors = load(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise StageFormatError(f"unreadable tensors: {exc}") from None
    try:
        return _Decoder(tensors, resolve).dec(structure)
    except (StageFormatError, RecursionError):
        raise
    except Exception as exc:  # noqa: BLE001 - an allowed class given a state it rejects
        raise StageFormatError(f"malformed stage: {type(exc).__name__}: {exc}") from None


def referenced_classes(meta: dict[str, str]) -> set[str]:
    """Every class name a stage file's structure (its header's metadata) names, for checks
    before anything is loaded."""
    out: set[str] = set()
    todo = [_structure(meta)]
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo.extend(node)
        elif isinstance(node, dict):
            for key in ("__obj__", "__type__", "__enum__"):
                if isinstance(node.get(key), str):
                    out.add(node[key])
            todo.extend(node.values())
    return out
