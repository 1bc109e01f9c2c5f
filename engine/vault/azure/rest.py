"""A small Azure Blob Storage REST client: exactly the operations the Azure vault uses, over ``engine/net.py``.

Why not the SDK: every request must leave through ``net.http_connection`` (the egress policy: allow-list, proxy,
bandwidth), every put-page must be checked against the service's 4 MiB limit before it is sent (the emulator does
not enforce it), and retries must honour ``Retry-After`` without ever sending a write whose outcome is unknown in a
way that could duplicate data. All the vault's writes are idempotent by construction (fixed block ids, absolute page
writes, whole-blob puts), so a retry after a lost answer is always safe.

Authentication: Shared Key (account key, HMAC-SHA256 over the canonical request) or a SAS token (query string). The
credential is handed in by the caller (from the OS keyring) and never logged.

Blocking; one ``AzureBlobClient`` is shared by threads (one keep-alive connection per thread).
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import hashlib
import hmac
import http.client
import logging
import random
import ssl
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ... import net
from ...errors import CloudAuthFailed, CloudUnreachable, ContainerMissing, InvalidInput, LifeboatError, StorageError

log = logging.getLogger(__name__)

API_VERSION = "2021-12-02"
PAGE = 512
#: The service's largest Put Page (and Get range we ask for): enforced here, before a request is sent.
MAX_PUT_PAGE = 4 * 1024 * 1024
#: Largest Put Block the vault sends (the service allows far more; smaller blocks retry cheaper).
MAX_BLOCK = 4 * 1024 * 1024
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
PURPOSE = "vault"   # engine/net.py: an egress purpose (allow-list, proxy, upload pacing)


class HTTPError(StorageError):
    """A request the service answered with an error status (after retries when it was a transient one)."""

    def __init__(self, status: int, error_code: str, message: str, **details: Any) -> None:
        super().__init__(message, status=status, error_code=error_code, **details)
        self.status = status
        self.error_code = error_code


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    @property
    def metadata(self) -> dict[str, str]:
        return {k[len("x-ms-meta-"):]: v for k, v in self.headers.items() if k.startswith("x-ms-meta-")}


@dataclass(slots=True)
class BlobItem:
    name: str
    snapshot: str | None
    size: int
    blob_type: str
    metadata: dict[str, str] = field(default_factory=dict)
    etag: str = ""


@dataclass(frozen=True, slots=True)
class Credential:
    """An account key (base64) or a SAS token (``sv=...&sig=...``, with or without a leading ``?``)."""

    key: str | None = None
    sas: str | None = None

    def __post_init__(self) -> None:
        if (self.key is None) == (self.sas is None):
            raise InvalidInput("give exactly one of an account key and a SAS token")
        if self.key is not None:
            try:
                if not base64.b64decode(self.key, validate=True):
                    raise ValueError
            except ValueError:
                raise InvalidInput("the account key is not base64 (copy it from the storage account's Access "
                                   "keys)", field="key") from None

    def __repr__(self) -> str:   # never show the secret
        return f"Credential({'key' if self.key else 'sas'})"


def parse_account_url(url: str) -> tuple[str, str, int, str, str]:
    """``https://ACCOUNT.blob.core.windows.net`` or a path-style emulator/private URL
    ``http://127.0.0.1:10000/ACCOUNT`` → (scheme, host, port, path prefix, account name)."""
    u = urllib.parse.urlsplit(url.strip())
    if u.scheme not in ("http", "https") or not u.hostname or u.query or u.fragment:
        raise InvalidInput(f"account URL {url!r} is not http(s)://HOST[:PORT][/ACCOUNT]", field="account_url",
                           advice="Give the blob endpoint, e.g. https://myaccount.blob.core.windows.net")
    try:
        port = u.port or (443 if u.scheme == "https" else 80)
    except ValueError:
        raise InvalidInput(f"account URL {url!r} has a bad port", field="account_url") from None
    path = u.path.rstrip("/")
    if path:
        if path.count("/") != 1:
            raise InvalidInput(f"account URL {url!r}: only one path segment (the account) may follow the host",
                               field="account_url")
        account = path[1:]
    else:
        account = u.hostname.split(".")[0]
    if not account:
        raise InvalidInput(f"account URL {url!r} names no account", field="account_url")
    return u.scheme, u.hostname, port, path, account


def check_container_name(name: str) -> None:
    """Azure's container name rule: 3-63 of lowercase letters, digits and single hyphens, starting with a letter
    or digit."""
    ok = 3 <= len(name) <= 63 and all(c.islower() or c.isdigit() or c == "-" for c in name) \
        and name[0] != "-" and name[-1] != "-" and "--" not in name and name.isascii()
    if not ok:
        raise InvalidInput(f"container name {name!r} is not valid: 3-63 lowercase letters, digits and single "
                           "hyphens", field="container")


class AzureBlobClient:
    """One container of one storage account.

    ``retry_for``: how long a request is retried on transient failures (connection errors, timeouts, 408, 429,
    5xx) before CloudUnreachable is raised; waits double from ``backoff`` up to 10 s, or follow ``Retry-After``.
    ``on_throttle`` is called with (status, delay) on each 429/503 (the vault counts them for its health).
    """

    def __init__(self, account_url: str, container: str, credential: Credential, *, timeout: float = 30.0,
                 retry_for: float = 120.0, backoff: float = 0.2, tls: ssl.SSLContext | None = None,
                 on_throttle: Callable[[int, float], None] | None = None) -> None:
        self.scheme, self.host, self.port, self.prefix, self.account = parse_account_url(account_url)
        check_container_name(container)
        self.account_url = account_url.rstrip("/")
        self.container = container
        self.credential = credential
        self.timeout = timeout
        self.retry_for = retry_for
        self.backoff = backoff
        self.tls = tls
        self.on_throttle = on_throttle
        self._key = base64.b64decode(credential.key) if credential.key else b""
        self._sas = dict(urllib.parse.parse_qsl(credential.sas.lstrip("?"), keep_blank_values=True)) \
            if credential.sas else {}
        self._local = threading.local()
        self._conns: list[http.client.HTTPConnection] = []
        self._conns_lock = threading.Lock()
        self.requests = 0
        self.retries = 0

    # -- transport ------------------------------------------------------------------------------------------

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        policy = net.egress_policy()
        if c is not None and getattr(self._local, "policy", None) is not policy:
            # The egress settings changed since this kept-alive connection was made (a running appliance puts a
            # `lifeboat egress ...` change in force within 2 s: another proxy, proxy password or allow-list). Going
            # on through it would send the uploads by the old route with the old credentials (they went on
            # "fine" while the settings in force were refused), so it is dropped and the next one asks the policy.
            self._drop_conn()
            c = None
        if c is None:
            c = net.http_connection(self.scheme, self.host, self.port, timeout=self.timeout, purpose=PURPOSE,
                                    context=self.tls)
            self._local.conn = c
            self._local.policy = policy
            with self._conns_lock:
                self._conns.append(c)
        return c

    def _drop_conn(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None
            with self._conns_lock:   # a long outage drops one per retry: do not keep them all
                if c in self._conns:
                    self._conns.remove(c)

    def close(self) -> None:
        with self._conns_lock:
            for c in self._conns:
                c.close()
            self._conns.clear()

    def _path(self, blob: str | None) -> str:
        p = f"{self.prefix}/{self.container}"
        if blob is not None:
            p += "/" + urllib.parse.quote(blob, safe="/-_.~")
        return p

    def _sign(self, method: str, path: str, query: dict[str, str], headers: dict[str, str]) -> str:
        h = {k.lower(): v for k, v in headers.items()}
        length = h.get("content-length", "")
        if length == "0":
            length = ""
        canon_headers = "".join(f"{k}:{h[k].strip()}\n" for k in sorted(h) if k.startswith("x-ms-"))
        canon_res = f"/{self.account}{path}"
        for k in sorted(query, key=str.lower):
            canon_res += f"\n{k.lower()}:{query[k]}"
        sts = "\n".join([method, h.get("content-encoding", ""), h.get("content-language", ""), length,
                         h.get("content-md5", ""), h.get("content-type", ""), "", h.get("if-modified-since", ""),
                         h.get("if-match", ""), h.get("if-none-match", ""), h.get("if-unmodified-since", ""),
                         h.get("range", "")]) + "\n" + canon_headers + canon_res
        sig = base64.b64encode(hmac.new(self._key, sts.encode(), hashlib.sha256).digest()).decode()
        return f"SharedKey {self.account}:{sig}"

    def request(self, method: str, blob: str | None, *, query: dict[str, str] | None = None,
                headers: dict[str, str] | None = None,
                body: bytes | bytearray | memoryview | list[memoryview] = b"",
                ok: tuple[int, ...] = (200, 201, 202), idempotent: bool = True) -> Response:
        """One request, retried on transient failures. An answer outside ``ok`` raises (HTTPError and its
        meaningful forms: CloudAuthFailed, ContainerMissing)."""
        query = dict(query or {})
        path = self._path(blob)
        deadline = time.monotonic() + self.retry_for
        delay = self.backoff
        attempt = 0
        while True:
            attempt += 1
            hdrs = dict(headers or {})
            hdrs["x-ms-version"] = API_VERSION
            hdrs["x-ms-date"] = dt.datetime.now(dt.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")
            hdrs["Content-Length"] = str(sum(len(p) for p in body) if isinstance(body, list) else len(body))
            q = dict(query)
            if self._sas:
                q.update(self._sas)
            else:
                hdrs["Authorization"] = self._sign(method, path, query, hdrs)
            url = path + ("?" + urllib.parse.urlencode(q) if q else "")
            wait: float | None = None
            why = ""
            try:
                conn = self._conn()
                # a memoryview goes out as it is (http.client sends any buffer): no copy of a 4 MiB page write
                conn.request(method, url, headers=hdrs,
                             body=[p.cast("B") for p in body] if isinstance(body, list)
                             else body.cast("B") if isinstance(body, memoryview) else body)
                resp = conn.getresponse()
                data = resp.read()
                self.requests += 1
                rh = {k.lower(): v for k, v in resp.getheaders()}
                if resp.getheader("connection", "").lower() == "close":
                    self._drop_conn()
                if resp.status in ok:
                    return Response(resp.status, rh, data)
                if resp.status in RETRY_STATUS:
                    why = f"HTTP {resp.status}"
                    wait = _retry_after(rh.get("retry-after"))
                    if resp.status in (429, 503) and self.on_throttle:
                        self.on_throttle(resp.status, wait if wait is not None else delay)
                else:
                    raise self._error(method, blob, resp.status, rh, data)
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, LifeboatError):
                    raise
                self._drop_conn()
                why = f"{type(exc).__name__}: {exc}"
            if not idempotent and attempt > 1:
                raise CloudUnreachable(f"{method} {blob or self.container}: {why}")
            now = time.monotonic()
            pause = min(wait if wait is not None else delay * (0.5 + random.random()), 30.0)
            if now + pause > deadline:
                raise CloudUnreachable(f"storage account {self.account_url} did not answer {method} "
                                       f"{blob or self.container} for {self.retry_for:.0f} s ({why})",
                                       account_url=self.account_url)
            self.retries += 1
            log.debug("azure %s %s: %s; retry in %.2f s", method, blob, why, pause)
            time.sleep(pause)
            delay = min(delay * 2, 10.0)

    def _error(self, method: str, blob: str | None, status: int, headers: dict[str, str], body: bytes) -> HTTPError:
        code = headers.get("x-ms-error-code", "")
        if not code and body:
            try:
                code = ET.fromstring(body).findtext("Code") or ""
            except ET.ParseError:
                pass
        what = f"{method} {self.container}/{blob}" if blob else f"{method} container {self.container}"
        if status == 403 or code in ("AuthenticationFailed", "AuthorizationFailure",
                                     "AuthorizationPermissionMismatch"):
            raise CloudAuthFailed(f"storage account {self.account_url} refused the credentials ({code or status})",
                                  account_url=self.account_url)
        if code == "ContainerNotFound":
            raise ContainerMissing(f"container {self.container!r} does not exist in {self.account_url}",
                                   container=self.container)
        return HTTPError(status, code, f"{what}: HTTP {status} {code}".rstrip(), blob=blob or "")

    # -- container --------------------------------------------------------------------------------------------

    def container_properties(self) -> Response:
        return self.request("GET", None, query={"restype": "container"})

    def create_container(self) -> None:
        self.request("PUT", None, query={"restype": "container"}, ok=(201, 409))

    def list_blobs(self, prefix: str, *, snapshots: bool = False, metadata: bool = True) -> Iterator[BlobItem]:
        marker = ""
        inc = ",".join(x for x, on in (("snapshots", snapshots), ("metadata", metadata)) if on)
        while True:
            q = {"restype": "container", "comp": "list", "prefix": prefix}
            if inc:
                q["include"] = inc
            if marker:
                q["marker"] = marker
            root = ET.fromstring(self.request("GET", None, query=q).body)
            for b in root.iter("Blob"):
                props = b.find("Properties")
                meta = b.find("Metadata")
                yield BlobItem(name=b.findtext("Name") or "", snapshot=b.findtext("Snapshot") or None,
                               size=int(props.findtext("Content-Length") or 0) if props is not None else 0,
                               blob_type=(props.findtext("BlobType") or "") if props is not None else "",
                               metadata={m.tag.lower(): m.text or "" for m in meta} if meta is not None else {},
                               etag=(props.findtext("Etag") or "") if props is not None else "")
            marker = root.findtext("NextMarker") or ""
            if not marker:
                return

    # -- blobs ----------------------------------------------------------------------------------------------

    def put_blob(self, blob: str, data: bytes, *, metadata: dict[str, str] | None = None,
                 lease: str | None = None, if_none_match: bool = False) -> Response:
        h = {"x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream"}
        h.update(_meta_headers(metadata))
        if lease:
            h["x-ms-lease-id"] = lease
        if if_none_match:
            h["If-None-Match"] = "*"
        return self.request("PUT", blob, headers=h, body=data, ok=(201,))

    def get_blob(self, blob: str, *, offset: int = 0, length: int | None = None,
                 snapshot: str | None = None) -> bytes:
        """Bytes of a blob (a range of it). Ranges longer than 4 MiB are fetched in 4 MiB requests."""
        q = {"snapshot": snapshot} if snapshot else {}
        if length is None:
            return self.request("GET", blob, query=q).body
        out = bytearray()
        pos, end = offset, offset + length
        while pos < end:
            n = min(MAX_PUT_PAGE, end - pos)
            r = self.request("GET", blob, query=q, headers={"x-ms-range": f"bytes={pos}-{pos + n - 1}"},
                             ok=(200, 206))
            if len(r.body) != n:
                raise StorageError(f"short read of {blob}: {len(r.body)} of {n} bytes at {pos}", blob=blob)
            out += r.body
            pos += n
        return bytes(out)

    def get_properties(self, blob: str, *, snapshot: str | None = None) -> Response | None:
        """HEAD of a blob; None when it does not exist."""
        q = {"snapshot": snapshot} if snapshot else {}
        r = self.request("HEAD", blob, query=q, ok=(200, 404))
        return None if r.status == 404 else r

    def delete_blob(self, blob: str, *, snapshot: str | None = None, include_snapshots: bool = False) -> None:
        q = {"snapshot": snapshot} if snapshot else {}
        h = {"x-ms-delete-snapshots": "include"} if include_snapshots and not snapshot else {}
        self.request("DELETE", blob, query=q, headers=h, ok=(202, 404))

    def set_metadata(self, blob: str, metadata: dict[str, str], *, lease: str | None = None) -> Response:
        h = _meta_headers(metadata)
        if lease:
            h["x-ms-lease-id"] = lease
        return self.request("PUT", blob, query={"comp": "metadata"}, headers=h)

    def snapshot(self, blob: str, metadata: dict[str, str]) -> str:
        r = self.request("PUT", blob, query={"comp": "snapshot"}, headers=_meta_headers(metadata), ok=(201,))
        snap = r.header("x-ms-snapshot")
        if not snap:
            raise StorageError(f"snapshot of {blob}: the service returned no snapshot id", blob=blob)
        return snap

    def lease(self, blob: str, action: str, lease_id: str, *, duration: int = 15) -> Response:
        """acquire (``lease_id`` proposed), renew, release. Acquire/renew conflicts (409) come back as HTTPError."""
        h = {"x-ms-lease-action": action, "x-ms-lease-id" if action != "acquire" else "x-ms-proposed-lease-id":
             lease_id}
        if action == "acquire":
            h["x-ms-lease-duration"] = str(duration)
        return self.request("PUT", blob, query={"comp": "lease"}, headers=h, ok=(200, 201))

    # -- block blobs (the cache logs) -------------------------------------------------------------------------

    def put_block(self, blob: str, block_id: str, data: bytes | bytearray | memoryview) -> None:
        if len(data) > MAX_BLOCK:
            raise InvalidInput(f"block of {len(data)} bytes is over the {MAX_BLOCK}-byte limit")
        self.request("PUT", blob, query={"comp": "block", "blockid": block_id}, body=data, ok=(201,))

    def put_block_list(self, blob: str, block_ids: list[str], metadata: dict[str, str]) -> Response:
        xml = "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>" + \
            "".join(f"<Latest>{b}</Latest>" for b in block_ids) + "</BlockList>"
        h = {"Content-Type": "application/xml"}
        h.update(_meta_headers(metadata))
        return self.request("PUT", blob, query={"comp": "blocklist"}, headers=h, body=xml.encode(), ok=(201,))

    # -- page blobs (the replicas) --------------------------------------------------------------------------

    def create_page_blob(self, blob: str, size: int, metadata: dict[str, str] | None = None) -> None:
        _check_pages(0, size, what="page blob size")
        h = {"x-ms-blob-type": "PageBlob", "x-ms-blob-content-length": str(size)}
        h.update(_meta_headers(metadata))
        self.request("PUT", blob, headers=h, ok=(201,))

    def resize_page_blob(self, blob: str, size: int) -> None:
        _check_pages(0, size, what="page blob size")
        self.request("PUT", blob, query={"comp": "properties"}, headers={"x-ms-blob-content-length": str(size)})

    def put_pages(self, blob: str, offset: int, data: bytes | bytearray | memoryview | list[memoryview]) -> None:
        """Write pages: ``offset`` and length 512-aligned and at most 4 MiB (refused here, before sending).
        ``data`` may be a list of buffers: the body is their concatenation, sent without joining them."""
        n = sum(len(p) for p in data) if isinstance(data, list) else len(data)
        _check_pages(offset, n)
        if n > MAX_PUT_PAGE:
            raise InvalidInput(f"put-page of {n} bytes is over the service's {MAX_PUT_PAGE}-byte limit")
        if not n:
            return
        self.request("PUT", blob, query={"comp": "page"}, body=data, ok=(201,),
                     headers={"x-ms-page-write": "update", "x-ms-range": f"bytes={offset}-{offset + n - 1}"})

    def clear_pages(self, blob: str, offset: int, length: int) -> None:
        _check_pages(offset, length)
        if not length:
            return
        self.request("PUT", blob, query={"comp": "page"}, ok=(201,),
                     headers={"x-ms-page-write": "clear", "x-ms-range": f"bytes={offset}-{offset + length - 1}"})


def _check_pages(offset: int, length: int, what: str = "page range") -> None:
    if offset % PAGE or length % PAGE or offset < 0 or length < 0:
        raise InvalidInput(f"{what} [{offset}, +{length}) is not 512-byte aligned")


def _meta_headers(metadata: dict[str, str] | None) -> dict[str, str]:
    return {f"x-ms-meta-{k}": str(v) for k, v in (metadata or {}).items()}


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


__all__ = ["API_VERSION", "AzureBlobClient", "BlobItem", "Credential", "HTTPError", "MAX_PUT_PAGE", "PAGE",
           "Response", "check_container_name", "parse_account_url"]



def wait_all(futs: list[concurrent.futures.Future]) -> None:
    """Wait for every request, then raise the first failure: none is left in flight when the caller goes on."""
    err = None
    for f in futs:
        try:
            f.result()
        except BaseException as exc:
            err = err or exc
    if err is not None:
        raise err


def wait_quiet(futs: list[concurrent.futures.Future]) -> None:
    """Wait for every request, ignoring their outcome (the caller is failing for another reason)."""
    concurrent.futures.wait(futs)
