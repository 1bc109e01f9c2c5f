"""The issue's command-line contract for egress and e-mail (real tinyproxy, HTTPS server and aiosmtpd): `egress
check` probes hop by hop through the authenticated proxy and exits 0 only when every endpoint answers; a wrong proxy
password and an unreachable SMTP server are clear LB_ errors that change nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.appliance.new_home import init_home
from engine.home import ApplianceHome
from tests.conftest import free_port
from tests.egress_servers import (  # noqa: F401  (fixtures)
    PROXY_PASSWORD,
    PROXY_USER,
    HttpsServer,
    SmtpServer,
    Tinyproxy,
    egress_pki_fixture,
    https_server_fixture,
    smtp_server_fixture,
    tinyproxy_fixture)

ROOT = Path(__file__).resolve().parents[2]


def lb(home: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args[:2], "--home", str(home), *args[2:]], cwd=ROOT,
                          input=stdin, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "appliance"
    init_home(h, control_port=free_port(), data_port=free_port(), listen="127.0.0.1")
    return h


def test_egress_cli_contract(home: Path, https_server: HttpsServer, tinyproxy: Tinyproxy,
                             smtp_server: SmtpServer) -> None:
    env = {"SSL_CERT_FILE": str(https_server.ca)}
    # the vault endpoint in use (what the Azure backend's `vault set` writes: an account URL)
    ah = ApplianceHome(home)
    cfg = ah.load_config()
    cfg["vault"] = {**cfg["vault"], "account_url": https_server.url}
    ah.save_config(cfg)
    r = lb(home, "egress", "allow", "--preset", "commercial", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["restricted"]
    r = lb(home, "egress", "check", "--json", env=env)
    assert r.returncode == 1
    rep = json.loads(r.stdout)
    assert rep["endpoints"][0]["hops"][0]["hop"] == "allow-list" and not rep["endpoints"][0]["hops"][0]["ok"]
    assert "egress allow" in rep["endpoints"][0]["hops"][0]["advice"]
    assert lb(home, "egress", "allow", "--add", "127.0.0.1").returncode == 0
    r = lb(home, "alerts", "smtp", "--server", f"127.0.0.1:{smtp_server.port}", "--to", "ops@example.com", "--json")
    assert r.returncode == 0, r.stderr
    # a wrong proxy password: refused, nothing stored
    before = lb(home, "egress", "show", "--json").stdout
    r = lb(home, "egress", "proxy", "--url", tinyproxy.url, "--user", PROXY_USER, "--password-stdin",
           "--bypass", "localhost", stdin="not-it\n")
    assert r.returncode != 0 and "LB_PROXY_AUTH" in r.stderr and "Nothing was changed" in r.stderr
    assert lb(home, "egress", "show", "--json").stdout == before
    r = lb(home, "egress", "proxy", "--url", tinyproxy.url, "--user", PROXY_USER, "--password-stdin", "--json",
           stdin=PROXY_PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    shown = json.loads(lb(home, "egress", "show", "--json").stdout)
    assert shown["proxy"]["user"] == PROXY_USER and shown["proxy"]["password_set"] and PROXY_PASSWORD not in r.stdout
    r = lb(home, "egress", "bandwidth", "--work-hours", "07:30-19:00", "--work-rate", "10MB/s", "--off-rate",
           "unlimited", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["work_rate"] == 10e6
    # every endpoint answers through the proxy: vault (HTTPS) and SMTP, hop by hop
    r = lb(home, "egress", "check", "--json", env=env)
    rep = json.loads(r.stdout)
    assert r.returncode == 0 and rep["ok"], r.stdout + r.stderr
    vault = rep["endpoints"][0]
    assert vault["via"] == f"proxy 127.0.0.1:{tinyproxy.port}"
    assert [h["hop"] for h in vault["hops"]] == ["allow-list", "dns", "tcp", "proxy", "tls", "http"]
    assert all(h["ms"] >= 0 for h in vault["hops"]) and vault["hops"][-1]["detail"].startswith("HTTP/1.1 200")
    assert [h["hop"] for h in rep["endpoints"][1]["hops"]] == ["allow-list", "dns", "tcp", "proxy", "smtp"]
    assert tinyproxy.connects(f"127.0.0.1:{https_server.port}") >= 1
    text = lb(home, "egress", "check", env=env)
    assert text.returncode == 0 and "all endpoints answer" in text.stdout
    # the endpoint goes away: exit 1, the failing hop and what to fix
    https_server.stop()
    r = lb(home, "egress", "check", "--json", env=env)
    rep = json.loads(r.stdout)
    assert r.returncode == 1 and not rep["endpoints"][0]["ok"] and rep["endpoints"][1]["ok"]
    bad = [h for h in rep["endpoints"][0]["hops"] if not h["ok"]][0]
    assert bad["hop"] == "proxy" and bad["advice"]
    # the proxy down: the TCP hop to it fails
    tinyproxy.stop()
    rep = json.loads(lb(home, "egress", "check", "--json", env=env).stdout)
    assert [h for h in rep["endpoints"][1]["hops"] if not h["ok"]][0]["hop"] == "tcp"
    assert lb(home, "egress", "proxy", "--none").returncode == 0


def test_alerts_smtp_and_test_cli(home: Path, smtp_server: SmtpServer) -> None:
    dead = free_port()
    r = lb(home, "alerts", "smtp", "--server", f"127.0.0.1:{dead}", "--to", "ops@example.com")
    assert r.returncode != 0 and "LB_SMTP_UNREACHABLE" in r.stderr and "Traceback" not in r.stderr
    r = lb(home, "alerts", "test")
    assert r.returncode != 0 and "not set up" in r.stderr                      # nothing was stored
    r = lb(home, "alerts", "smtp", "--server", f"127.0.0.1:{dead}", "--to", "ops@example.com", "--user", "u")
    assert r.returncode != 0 and "STARTTLS" in r.stderr
    r = lb(home, "alerts", "smtp", "--server", f"127.0.0.1:{smtp_server.port}", "--to", "ops@example.com,dr@example.com",
           "--from", "lifeboat@example.com", "--digest", "5m", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["digest_seconds"] == 300
    r = lb(home, "alerts", "test", "--json")
    assert r.returncode == 0, r.stderr
    msgs = smtp_server.wait_messages(1)
    assert msgs[0]["Message-ID"] == json.loads(r.stdout)["message_id"] and msgs[0]["Subject"] == "[Lifeboat] test e-mail"
