"""Egress (issue 15): the allow-list refuses before any packet, the authenticated proxy (a real tinyproxy) carries
the traffic and says clearly when the password is wrong or it is down, traffic resumes when it is back, the upload
limit holds and changes without a restart, and the settings are validated field by field."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from engine import net
from engine.appliance.network import NetworkSettings
from engine.appliance.new_home import init_home
from engine.appliance.state import StateDB
from engine.egress import PRESETS, BandwidthSchedule, EgressSettings, ProxySettings, parse_rate
from engine.errors import EgressRefused, InvalidInput, ProxyAuthFailed, ProxyError
from engine.home import ApplianceHome
from tests.conftest import free_port
from tests.egress_servers import (  # noqa: F401  (fixtures)
    PROXY_PASSWORD,
    PROXY_USER,
    HttpsServer,
    Tinyproxy,
    block_body,
    egress_pki_fixture,
    https_server_fixture,
    tinyproxy_fixture)


@pytest.fixture
def policy_restored() -> Iterator[None]:
    old = net.egress_policy()
    yield
    net.set_egress_policy(old)


@pytest.fixture
def network(tmp_path: Path, policy_restored: None) -> Iterator[NetworkSettings]:
    """An initialised appliance home's network settings, in force in this process (as a running appliance's are)."""
    home = tmp_path / "appliance"
    init_home(home, control_port=free_port(), data_port=free_port(), listen="127.0.0.1")
    cfg = ApplianceHome(home).load_config()
    db = StateDB(ApplianceHome(home).db)
    n = NetworkSettings(db, cfg["appliance_id"], cfg["vault"])
    n.start()
    yield n
    n.stop()
    db.close()


def _get(srv: HttpsServer, purpose: str = "vault") -> int:
    ctx = net.system_context(srv.ca.read_text())
    return net.https_request("127.0.0.1", srv.port, "GET", "/", context=ctx, timeout=10, purpose=purpose).status


# allow-list ----------------------------------------------------------------------------------------------------------
def test_entries_names_wildcards_addresses() -> None:
    m = net.entry_matches
    assert m("*.blob.core.windows.net", "acct1.blob.core.windows.net", 443)
    assert not m("*.blob.core.windows.net", "blob.core.windows.net", 443)          # the wildcard needs a label
    assert not m("*.blob.core.windows.net", "a.b.blob.core.windows.net", 443)      # one label only
    assert not m("*.blob.core.windows.net", "evilblob.core.windows.net", 443)
    assert m("login.microsoftonline.com", "LOGIN.microsoftonline.com.", 443)
    assert m("127.0.0.1", "127.0.0.1", 10000) and not m("127.0.0.1", "localhost", 10000)   # nothing resolved
    assert m("10.0.0.0/8", "10.2.3.4", 443) and not m("10.0.0.0/8", "11.0.0.1", 443)
    assert m("vc.corp:443", "vc.corp", 443) and not m("vc.corp:443", "vc.corp", 8443)
    assert m("[2001:db8::1]:443", "2001:db8::1", 443) and m("2001:db8::1", "2001:db8::1", 1)
    for bad in ("*", "*.com", "a*.b.com", "x.*.b.com", "exa mple.com", "host:0", "10.0.0.0/99", "-x.com", ""):
        with pytest.raises(InvalidInput) as ei:
            net.check_allow_entry(bad)
        assert ei.value.code == "LB_INVALID_INPUT" and ei.value.details["field"] == "allow-list entry"
    assert net.check_allow_entry(" *.Blob.Core.Windows.Net. ") == "*.blob.core.windows.net"
    assert set(PRESETS["commercial"]) == {"*.blob.core.windows.net", "login.microsoftonline.com",
                                         "*.hypervrecoverymanager.windowsazure.com", "*.servicebus.windows.net"}
    assert set(PRESETS["government"]) == {"*.blob.core.usgovcloudapi.net", "login.microsoftonline.us",
                                         "*.hypervrecoverymanager.windowsazure.com",
                                         "*.servicebus.usgovcloudapi.net"}


def test_refused_before_any_packet(network: NetworkSettings, https_server: HttpsServer,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Off the list: EgressRefused naming the host and the command, no DNS lookup, no socket, no request."""
    network.save(network.settings().with_preset("commercial"))
    calls: list[str] = []
    real_gai, real_cc = socket.getaddrinfo, socket.create_connection
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: calls.append("dns") or real_gai(*a, **k))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: calls.append("tcp") or real_cc(*a, **k))
    with pytest.raises(EgressRefused) as ei:
        _get(https_server)
    with pytest.raises(EgressRefused):
        net.open_connection("vcenter.example.org", 443, timeout=5, purpose="vsphere")
    assert calls == [] and https_server.requests == []
    e = ei.value
    assert e.code == "LB_EGRESS_REFUSED" and "127.0.0.1" in e.message and "allow-list" in e.message
    assert "lifeboat egress allow --home DIR --add 127.0.0.1" in e.advice and isinstance(e, PermissionError)
    # the links on the site (agents, the admin CLI) are not egress: never refused by the allow-list
    assert net.route("127.0.0.1", https_server.port, "replication").proxy is None
    assert _get(https_server, purpose="admin") == 200
    # allowed once the operator adds it (applied at once, no restart)
    network.save(network.settings().adding("127.0.0.1"))
    assert _get(https_server) == 200


# proxy ---------------------------------------------------------------------------------------------------------------
def _use_proxy(network: NetworkSettings, tp: Tinyproxy, password: str | None, *, bypass: tuple[str, ...] = ()) -> None:
    s = network.settings().adding("127.0.0.1")
    from dataclasses import replace
    network.save(replace(s, proxy=ProxySettings.parse(tp.url, user=PROXY_USER, bypass=bypass)),
                 proxy_password=password)


def test_traffic_goes_through_the_authenticated_proxy(network: NetworkSettings, https_server: HttpsServer,
                                                      tinyproxy: Tinyproxy) -> None:
    target = f"127.0.0.1:{https_server.port}"
    _use_proxy(network, tinyproxy, PROXY_PASSWORD)
    assert network.has_proxy_password()
    stored = network.db.get_meta("egress") or ""
    assert PROXY_PASSWORD not in stored and PROXY_USER in stored          # the password is only in the keyring
    assert repr(net.egress_policy()).count(PROXY_PASSWORD) == 0
    assert _get(https_server) == 200
    assert tinyproxy.connects(target) == 1                                  # the proxy's own log says so
    assert _get(https_server, purpose="smtp") == 200 and tinyproxy.connects(target) == 2
    assert _get(https_server, purpose="replication") == 200 and tinyproxy.connects(target) == 2   # on-site: direct
    # the bypass list: reached directly
    _use_proxy(network, tinyproxy, None, bypass=("127.0.0.1",))
    assert _get(https_server) == 200 and tinyproxy.connects(target) == 2


def test_wrong_proxy_password_is_clear_and_sends_nothing(network: NetworkSettings, https_server: HttpsServer,
                                                         tinyproxy: Tinyproxy) -> None:
    _use_proxy(network, tinyproxy, "wrong-password")
    with pytest.raises(ProxyAuthFailed) as ei:
        _get(https_server)
    e = ei.value
    assert e.code == "LB_PROXY_AUTH" and tinyproxy.url.removeprefix("http://") in e.message
    assert PROXY_USER in e.message and "wrong-password" not in str(e.to_dict())
    assert "--password-stdin" in e.advice and https_server.requests == []
    # the Test button / `egress proxy` check: the same verdict, before anything is stored
    rev = network.egress.revision()
    res = network.test_proxy(tinyproxy.url, PROXY_USER, "still-wrong")
    assert not res["ok"] and res["code"] == "LB_PROXY_AUTH" and network.egress.revision() == rev
    assert network.test_proxy(tinyproxy.url, PROXY_USER, PROXY_PASSWORD)["ok"]
    # no credentials at all: 407, said as such
    from dataclasses import replace
    network.save(replace(network.settings(), proxy=ProxySettings.parse(tinyproxy.url)))
    with pytest.raises(ProxyAuthFailed, match="asks for a user and password"):
        _get(https_server)


def test_uploads_resume_when_the_proxy_comes_back(network: NetworkSettings, https_server: HttpsServer,
                                                  tinyproxy: Tinyproxy) -> None:
    """A writer that retries each block until the target acknowledges it loses nothing and duplicates nothing while
    the proxy is down; it resumes by itself when the proxy is back."""
    _use_proxy(network, tinyproxy, PROXY_PASSWORD)
    ctx = net.system_context(https_server.ca.read_text())
    errors: list[str] = []
    done = threading.Event()
    n_blocks = 60

    def writer() -> None:
        i = 0
        while i < n_blocks:
            try:
                conn = net.HTTPSConnection("127.0.0.1", https_server.port, context=ctx, timeout=10, purpose="vault")
                try:
                    while i < n_blocks:
                        conn.request("PUT", f"/block/{i}", body=block_body(i))
                        r = conn.getresponse()
                        r.read()
                        assert r.status == 201, r.status
                        i += 1
                        time.sleep(0.05)
                finally:
                    conn.close()
            except (ProxyError, OSError) as exc:
                errors.append(getattr(exc, "code", type(exc).__name__))
                time.sleep(0.2)
        done.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while len(https_server.blocks) < 15 and time.monotonic() < deadline:
        time.sleep(0.05)
    tinyproxy.stop()
    time.sleep(1.5)
    stalled = len(https_server.blocks)
    time.sleep(1.0)
    assert len(https_server.blocks) == stalled < n_blocks          # nothing gets out while the proxy is down
    assert "LB_PROXY_UNREACHABLE" in errors
    tinyproxy.start()
    assert done.wait(60), "the writer did not finish after the proxy came back"
    t.join(5)
    assert sorted(https_server.blocks) == list(range(n_blocks))
    assert set(https_server.blocks.values()) == {1}                  # each block exactly once


def test_azure_sdk_transport_goes_through_the_proxy(network: NetworkSettings, https_server: HttpsServer,
                                                    tinyproxy: Tinyproxy) -> None:
    """The hook the Azure backend uses: azure-core's pipeline over net.azure_transport()."""
    pytest.importorskip("azure.core", reason="azure-core comes with azure-storage-blob (the Azure backend's dependency)")
    from azure.core import PipelineClient
    from azure.core.exceptions import ServiceRequestError
    from azure.core.rest import HttpRequest
    _use_proxy(network, tinyproxy, PROXY_PASSWORD)
    transport = net.azure_transport(context=net.system_context(https_server.ca.read_text()), timeout=10)
    with PipelineClient(https_server.url, transport=transport) as client:
        body = b"z" * (3 << 20)
        resp = client.send_request(HttpRequest("PUT", f"{https_server.url}/upload", content=body))
        assert resp.status_code == 200 and resp.json() == {"bytes": len(body)}
    assert tinyproxy.connects(f"127.0.0.1:{https_server.port}") == 1
    # a host off the list: the SDK's connection error carries the LB_ error (lifeboat_cause finds it)
    network.save(network.settings().with_preset("commercial").removing("127.0.0.1"))
    transport = net.azure_transport(context=net.system_context(https_server.ca.read_text()), timeout=10)
    with PipelineClient(https_server.url, transport=transport) as client:
        with pytest.raises(ServiceRequestError) as ei:
            client.send_request(HttpRequest("GET", f"{https_server.url}/"))
    cause = net.lifeboat_cause(ei.value)
    assert isinstance(cause, EgressRefused) and "127.0.0.1" in cause.message


# bandwidth -----------------------------------------------------------------------------------------------------------
def test_schedule_and_rates() -> None:
    assert parse_rate("10MB/s") == 10e6 and parse_rate("8MiB/s") == 8 << 20 and parse_rate("100Mbit/s") == 12.5e6
    assert parse_rate("unlimited") is None
    for bad in ("fast", "10 parsecs", "0.5KB/s"):
        with pytest.raises(InvalidInput):
            parse_rate(bad, what="work_rate")
    s = BandwidthSchedule("08:00-18:00", 10e6, None)
    assert s.rate_at(dt.datetime(2026, 1, 5, 9, 0)) == 10e6 and s.rate_at(dt.datetime(2026, 1, 5, 18, 0)) is None
    night = BandwidthSchedule("22:00-06:00", 1e6, 50e6)
    assert night.rate_at(dt.datetime(2026, 1, 5, 23, 30)) == 1e6 and night.rate_at(dt.datetime(2026, 1, 5, 5, 59)) == 1e6
    assert night.rate_at(dt.datetime(2026, 1, 5, 12, 0)) == 50e6
    with pytest.raises(InvalidInput) as ei:
        EgressSettings(bandwidth=BandwidthSchedule("8-18", None, None)).validate()
    assert ei.value.details["field"] == "work_hours"


def test_upload_limit_holds_and_changes_without_restart(network: NetworkSettings, https_server: HttpsServer) -> None:
    """Uploads to the target through net, paced by the limiter: within ±10 % of the limit over 30 s; a new limit
    saved while the upload runs holds within ±10 % over the next 8 s (same connection, no restart)."""
    from dataclasses import replace
    now = dt.datetime.now()
    hours = f"{(now - dt.timedelta(hours=2)):%H}:00-{(now + dt.timedelta(hours=2)):%H}:00"   # now is in work hours
    first, second = 3e6, 1e6
    s = network.settings().adding("127.0.0.1")
    network.save(replace(s, bandwidth=BandwidthSchedule(hours, first, None)))
    assert net.upload_limiter().current_rate() == first
    ctx = net.system_context(https_server.ca.read_text())
    stop = threading.Event()

    def upload() -> None:
        conn = net.HTTPSConnection("127.0.0.1", https_server.port, context=ctx, timeout=30, purpose="vault")
        chunk = b"\xa5" * (1 << 20)
        try:
            while not stop.is_set():
                conn.request("PUT", "/upload", body=chunk * 4)
                conn.getresponse().read()
        finally:
            conn.close()
    t = threading.Thread(target=upload, daemon=True)
    t.start()
    try:
        time.sleep(2.0)   # warm-up: TLS handshake and the first slices
        t0 = time.monotonic()
        time.sleep(30.0)
        t1 = time.monotonic()
        rate1 = https_server.upload_rate(t0, t1)
        network.save(replace(network.settings(), bandwidth=BandwidthSchedule(hours, second, None)))
        time.sleep(1.0)
        t2 = time.monotonic()
        time.sleep(8.0)
        rate2 = https_server.upload_rate(t2, time.monotonic())
    finally:
        stop.set()
        t.join(30)
    print(f"measured upload rates: {rate1 / 1e6:.3f} MB/s (limit {first / 1e6:g}), "
          f"{rate2 / 1e6:.3f} MB/s after the change (limit {second / 1e6:g})")
    assert abs(rate1 - first) <= 0.10 * first, rate1
    assert abs(rate2 - second) <= 0.10 * second, rate2
    # an upload to a non-limited purpose (an on-site link) is not paced
    assert network.settings().bandwidth.rate_now() == second


def test_settings_validate_by_field(network: NetworkSettings) -> None:
    cases = [(lambda: ProxySettings.parse("https://p:3128"), "proxy_url"),
             (lambda: ProxySettings.parse("http://u:pw@p:3128"), "proxy_url"),
             (lambda: ProxySettings.parse("http://p"), "proxy_url"),
             (lambda: ProxySettings.parse("http://p:3128", user="a:b"), "proxy_user"),
             (lambda: ProxySettings.parse("http://p:3128", bypass=["*.*.x"]), "bypass entry"),
             (lambda: network.settings().with_preset("moon"), "preset"),
             (lambda: network.settings().removing("not.there.example"), "remove")]
    rev = network.egress.revision()
    for fn, field in cases:
        with pytest.raises(InvalidInput) as ei:
            fn()
        assert ei.value.details.get("field") == field, (field, ei.value)
    assert network.egress.revision() == rev
    saved = network.save(network.settings().with_preset("government").adding("*.corp.example"))
    again = NetworkSettings(network.db, network.appliance_id, {}).settings()
    assert again == saved and json.loads(network.db.get_meta("egress") or "{}")["schema"] == 1
    assert again.allow_list() == (*PRESETS["government"], "*.corp.example")
