"""E-mail alerts (issue 15) against a real SMTP server (aiosmtpd): STARTTLS + AUTH, clear errors, digests that fold a
flapping machine, and the appliance's bus feeding them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from engine.appliance.appliance import Appliance
from engine.appliance.mail_alerts import MailAlerts
from engine.appliance.new_home import init_home
from engine.errors import MailError
from engine.events import Alert, EventBus
from engine.mailer import SmtpSettings, probe, send_mail
from tests.conftest import free_port
from tests.egress_servers import (  # noqa: F401  (fixtures)
    SMTP_PASSWORD,
    SMTP_USER,
    SmtpServer,
    egress_pki_fixture,
    smtp_server_fixture,
    smtp_tls_server_fixture)


def _tls_settings(srv: SmtpServer, **kw: object) -> SmtpSettings:
    return SmtpSettings.parse(f"127.0.0.1:{srv.port}", "ops@example.com,dr@example.com", starttls=True,
                              user=SMTP_USER, sender="lifeboat@example.com", **kw)  # type: ignore[arg-type]


def test_starttls_auth_and_clear_errors(smtp_tls_server: SmtpServer) -> None:
    s = _tls_settings(smtp_tls_server)
    mid = send_mail(s, SMTP_PASSWORD, "hello", "body text")
    msgs = smtp_tls_server.wait_messages(1)
    assert len(msgs) == 1 and msgs[0]["Message-ID"] == mid and msgs[0]["To"] == "ops@example.com, dr@example.com"
    assert smtp_tls_server.logins == [SMTP_USER]
    with pytest.raises(MailError) as ei:
        send_mail(s, "wrong", "x", "y")
    assert ei.value.code == "LB_SMTP_AUTH" and "--password-stdin" in ei.value.advice and "wrong" not in str(ei.value)
    with pytest.raises(MailError) as ei:   # the server requires STARTTLS: without it, it refuses the message
        send_mail(SmtpSettings(s.host, s.port, False, None, s.recipients, s.sender), None, "x", "y")
    assert ei.value.code in ("LB_SMTP_REFUSED", "LB_SMTP_FAILED")
    dead = free_port()
    with pytest.raises(MailError) as ei:
        probe(SmtpSettings.parse(f"127.0.0.1:{dead}", "ops@example.com"), None)
    assert ei.value.code == "LB_SMTP_UNREACHABLE" and f"127.0.0.1:{dead}" in ei.value.message
    assert isinstance(ei.value, ConnectionError)
    assert len(smtp_tls_server.messages) == 1


def test_settings_validation() -> None:
    from engine.errors import InvalidInput
    for kw, field in (({"server": "h:0", "to": "a@b.co"}, "server"), ({"server": "h:25", "to": ""}, "to"),
                      ({"server": "h:25", "to": "not-an-address"}, "to"),
                      ({"server": "h:25", "to": "a@b.co", "user": "u"}, "starttls")):
        with pytest.raises(InvalidInput) as ei:
            SmtpSettings.parse(str(kw.pop("server")), str(kw.pop("to")), **kw)  # type: ignore[arg-type]
        assert ei.value.details.get("field") == field


async def test_digest_folds_a_flapping_machine(smtp_server: SmtpServer) -> None:
    bus = EventBus()
    s = SmtpSettings.parse(f"127.0.0.1:{smtp_server.port}", "ops@example.com", digest_seconds=2)
    mail = MailAlerts(bus, lambda: (s, None), gather=0.3)
    t0 = time.time()
    for i in range(12):   # vm1's RPO flaps across its threshold twelve times
        bus.emit(Alert("vm1", "LB_RPO_BREACH", f"RPO of vm1 is {60 + i} s, over its 30 s threshold", "Check the agent.",
                       "critical", {}, id="LB_RPO_BREACH:vm1", state="raised", time=t0 + i * 0.01))
        bus.emit(Alert("vm1", "LB_RPO_BREACH", "back under", "", "info", {}, id="LB_RPO_BREACH:vm1",
                       state="cleared", time=t0 + i * 0.01 + 0.005))
    bus.emit(Alert("vm2", "LB_RESYNC_REQUIRED", "vm2 needs a resync: journal overflow", "It runs in the window.",
                   "warning", {}, id="LB_RESYNC_REQUIRED:vm2"))
    bus.emit(Alert(None, "LB_JOB_FAILED", "job j-7 (drill) failed: LB_STORAGE: disk full", "See the job.", "warning",
                   {}, id="LB_JOB_FAILED:j-7"))
    bus.emit(Alert("vm3", "LB_AGENT_SILENT", "not mailed", "", "warning", {}, id="LB_AGENT_SILENT:vm3"))
    assert not await mail.tick()          # gathering
    await asyncio.sleep(0.4)
    assert await mail.tick()
    msgs = await asyncio.to_thread(smtp_server.wait_messages, 1)
    assert len(msgs) == 1
    body = msgs[0].get_payload(decode=True).decode()
    assert "3 alerts" in msgs[0]["Subject"]
    assert "RPO over threshold 12 times; RPO back under threshold 12 times; now cleared" in body
    assert "vm2 — LB_RESYNC_REQUIRED: needs a resync" in body and "LB_JOB_FAILED" in body
    assert "vm3" not in body and body.count("vm1 —") == 1
    # the next alert waits for the digest interval, then goes out alone
    bus.emit(Alert("vm1", "LB_RPO_BREACH", "RPO of vm1 is 90 s", "Check the agent.", "critical", {},
                   id="LB_RPO_BREACH:vm1"))
    await asyncio.sleep(0.4)
    assert not await mail.tick()
    await asyncio.sleep(1.8)
    assert await mail.tick()
    msgs = await asyncio.to_thread(smtp_server.wait_messages, 2)
    assert len(msgs) == 2 and msgs[1]["Subject"].endswith("vm1: RPO over threshold")
    mail.close()


async def test_failed_send_is_kept_and_retried(smtp_server: SmtpServer) -> None:
    bus = EventBus()
    dead = SmtpSettings.parse(f"127.0.0.1:{free_port()}", "ops@example.com", digest_seconds=1)
    live = SmtpSettings.parse(f"127.0.0.1:{smtp_server.port}", "ops@example.com", digest_seconds=1)
    current = [dead]
    events: list[tuple[str, dict[str, object]]] = []
    mail = MailAlerts(bus, lambda: (current[0], None), gather=0.0, record=lambda k, m, **d: events.append((k, d)))
    bus.emit(Alert(None, "LB_JOB_FAILED", "job j-1 failed", "", "warning", {}, id="LB_JOB_FAILED:j-1"))
    assert not await mail.tick()
    assert events[-1][0] == "mail-failed" and events[-1][1]["code"] == "LB_SMTP_UNREACHABLE"
    current[0] = live
    mail.next_try = 0.0   # skip the back-off minute
    assert await mail.tick()
    msgs = await asyncio.to_thread(smtp_server.wait_messages, 1)
    assert "job j-1 failed" in msgs[0].get_payload(decode=True).decode() and events[-1][0] == "mail-sent"
    mail.close()


async def test_the_appliance_mails_its_alerts(tmp_path: Path, smtp_server: SmtpServer) -> None:
    """Settings saved in the appliance's state reach the running appliance; an alert on its bus is e-mailed."""
    home = tmp_path / "appliance"
    init_home(home, control_port=free_port(), data_port=free_port(), listen="127.0.0.1")
    app = Appliance(home)
    await app.start()
    try:
        assert app.network is not None and app.network.mail is not None
        app.network.save_smtp(SmtpSettings.parse(f"127.0.0.1:{smtp_server.port}", "ops@example.com",
                                                 digest_seconds=1))
        app.network.mail.gather = 0.2
        app.bus.emit(Alert(None, "LB_JOB_FAILED", "job j-9 (drill) failed: LB_STORAGE: no space", "Free space.",
                           "warning", {}, id="LB_JOB_FAILED:j-9", component="job"))
        msgs = await asyncio.to_thread(smtp_server.wait_messages, 1, 15.0)
        assert len(msgs) == 1 and "job j-9 (drill) failed" in msgs[0].get_payload(decode=True).decode()
        assert any(e["kind"] == "mail-sent" for e in app.events())
    finally:
        await app.stop()
