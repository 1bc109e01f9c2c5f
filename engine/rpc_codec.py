"""JSON for the console link (docs/CONTRACT.md §7): typed views and events cross the control API and come back as
the same classes.

A dataclass becomes ``{"__type__": "ClassName", field: value, ...}`` (fields by name, recursively); a tuple
``{"__tuple__": [...]}`` (views are frozen and hold tuples); a float that is not finite
``{"__float__": "inf"}``; an Enum its value; a Path its string; bytes are refused.
Decoding builds only the classes in the ``types`` registry it is given (``ClassName → class``): anything else named
in ``__type__`` is an error, never an import. Unknown fields of a known class are dropped (an older console reads a
newer appliance's views).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from pathlib import PurePath
from typing import Any, Mapping

__all__ = ["encode", "decode", "dumps", "loads", "CodecError"]


class CodecError(ValueError):
    pass


def encode(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}     # inf, -inf, nan: strict JSON has no spelling for them
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return encode(obj.value)
    if isinstance(obj, PurePath):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {"__type__": type(obj).__name__}
        for f in dataclasses.fields(obj):
            out[f.name] = encode(getattr(obj, f.name))
        return out
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v) for v in obj]}
    if isinstance(obj, (list, set, frozenset)):
        return [encode(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): encode(v) for k, v in obj.items()}
    raise CodecError(f"cannot send a {type(obj).__name__} over the console link")


def decode(obj: Any, types: Mapping[str, type]) -> Any:
    if isinstance(obj, list):
        return [decode(v, types) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__tuple__" in obj:
        return tuple(decode(v, types) for v in obj["__tuple__"])
    name = obj.get("__type__")
    if name is None:
        return {k: decode(v, types) for k, v in obj.items()}
    cls = types.get(name)
    if cls is None or not dataclasses.is_dataclass(cls):
        raise CodecError(f"the console link does not carry {name!r}")
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {k: decode(v, types) for k, v in obj.items() if k in known}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise CodecError(f"{name}: {exc}") from None


def dumps(obj: Any) -> str:
    return json.dumps(encode(obj), allow_nan=False, separators=(",", ":"))


def loads(text: str | bytes, types: Mapping[str, type]) -> Any:
    return decode(json.loads(text), types)
