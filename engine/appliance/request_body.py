"""Reading a control-API request body, and writing a response, without trusting either side to be well formed.

Every field is checked for its type and range before any handler acts on it; a bad one is refused with HTTP 400,
``LB_INVALID_INPUT`` (or ``LB_INVALID_NAME``) and ``details.field`` naming it. Numbers must be finite. Every JSON
the API emits is strict JSON (no bare ``NaN``/``Infinity``).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from aiohttp import web

from ..errors import InvalidInput
from ..names import check_name
from ..net import parse_address
from ..policy import parse_duration, parse_size

#: Largest request body the control API reads (a certificate request is ~1 KiB; nothing needs more).
MAX_BODY = 64 * 1024
#: Longest free-text field (paths, HOST:PORT, point specs).
MAX_TEXT = 4096


def _no_constants(name: str) -> Any:
    raise InvalidInput(f"the request body holds {name}, which is not a JSON number",
                       advice="Send finite numbers only.", field="body")


def parse_body(raw: bytes) -> dict[str, Any]:
    """Strict JSON object from a request body: UTF-8, no NaN/Infinity, an object (empty body: ``{}``)."""
    if len(raw) > MAX_BODY:
        raise InvalidInput(f"request body of {len(raw)} bytes is too large (at most {MAX_BODY})", field="body")
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("request body is not UTF-8", field="body") from None
    try:
        body = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not JSON ({exc.msg} at character {exc.pos})", field="body") from None
    except RecursionError:
        raise InvalidInput("request body is nested too deeply", field="body") from None
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object", field="body")
    return body


class Body:
    """Typed access to a parsed body: each getter checks one field and names it when refusing."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def _get(self, key: str, required: bool) -> Any:
        v = self.data.get(key)
        if v is None and required:
            raise InvalidInput(f"field {key!r} is required", field=key)
        return v

    def text(self, key: str, *, required: bool = False, default: str | None = None,
             max_len: int = MAX_TEXT, multiline: bool = False) -> str | None:
        v = self._get(key, required)
        if v is None:
            return default
        if not isinstance(v, str):
            raise InvalidInput(f"field {key!r} must be a string, got {type(v).__name__}", field=key)
        allowed = "\n\r\t" if multiline else ""
        if len(v) > max_len or any(ord(c) < 32 and c not in allowed for c in v):
            raise InvalidInput(f"field {key!r} must be at most {max_len} printable characters", field=key)
        return v

    def name(self, key: str, what: str, *, required: bool = False) -> str | None:
        v = self._get(key, required)
        if v is None:
            return None
        try:
            return check_name(v, what)
        except InvalidInput as exc:
            exc.details["field"] = key
            raise

    def boolean(self, key: str, default: bool) -> bool:
        v = self.data.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise InvalidInput(f"field {key!r} must be true or false, got {type(v).__name__}", field=key)
        return v

    def duration(self, key: str) -> float | None:
        v = self.data.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise InvalidInput(f"field {key!r} must be a duration such as \"30s\" or a number of seconds",
                               field=key)
        try:
            return parse_duration(v, what=key.replace("_", "-"))
        except InvalidInput as exc:
            exc.details["field"] = key
            raise

    def size(self, key: str) -> int | None:
        """A size in bytes: a number, or text such as "50G" (binary units)."""
        v = self.data.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise InvalidInput(f"field {key!r} must be a size such as \"50G\" or a number of bytes", field=key)
        try:
            return parse_size(v, what=key.replace("_", "-"))
        except InvalidInput as exc:
            exc.details["field"] = key
            raise

    def absolute_path(self, key: str) -> str | None:
        v = self.text(key)
        if v is None:
            return None
        if "\x00" in v or not os.path.isabs(v):
            raise InvalidInput(f"field {key!r} needs an absolute folder path", field=key)
        return v

    def host_port(self, key: str) -> tuple[str, int] | None:
        v = self.text(key, max_len=300)
        if v is None:
            return None
        return parse_address(v, any_port=True, what=key)


def query_params(request: web.Request, allowed: set[str], advice: str) -> dict[str, str]:
    """The request's query parameters: only ``allowed`` ones, each at most once."""
    q = request.query
    unknown = set(q) - allowed
    if unknown:
        raise InvalidInput(f"unknown query parameter(s): {', '.join(sorted(unknown))[:200]}", field="query",
                           advice=advice)
    if any(len(q.getall(k)) > 1 for k in q):
        raise InvalidInput("a query parameter is given twice", field="query")
    return dict(q)


def query_epoch(text: str | None, field: str) -> float | None:
    """A query parameter holding a time in epoch seconds (None when absent)."""
    if text is None:
        return None
    try:
        v = float(text[:40])
    except ValueError:
        v = float("nan")
    if not 0 <= v < 1e11:   # NaN fails too
        raise InvalidInput(f"{field}={text[:30]!r} is not a time in epoch seconds", field=field)
    return v


def query_count(text: str | None, field: str, default: int, most: int) -> int:
    """A query parameter holding a count from 1 to ``most`` (``default`` when absent)."""
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 12) or not 1 <= int(text) <= most:
        raise InvalidInput(f"{field}={text[:30]!r} is not a number from 1 to {most}", field=field)
    return int(text)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    """Strict JSON: a non-finite number (which no field should hold) is written as null, never as ``NaN``."""
    try:
        return json.dumps(obj, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(obj), allow_nan=False)


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status, dumps=dumps)
