"""The "Network and cloud" page over a real embedded appliance, a real tinyproxy (basic auth) and a real SMTP server:
field-by-field validation, the proxy's Test button (wrong then right password), saving, the connectivity check
through the proxy, and Send test e-mail. Screenshots in artifacts/screenshots."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from console.context import ConsoleContext
from console.engine_facade import EngineFacade
from console.settings import ConsoleSettings
from engine.api import init_home
from tests.conftest import free_port
from tests.egress_servers import (  # noqa: F401  (fixtures)
    PROXY_PASSWORD,
    PROXY_USER,
    SmtpServer,
    Tinyproxy,
    smtp_server_fixture,
    tinyproxy_fixture)
from ui.pages.network import NetworkPage

pytestmark = pytest.mark.blocking_threshold(3.0)


@pytest.mark.timeout(120)
async def test_network_page(tmp_path: Path, screenshot, tinyproxy: Tinyproxy, smtp_server: SmtpServer) -> None:
    home = tmp_path / "appliance"
    init_home(home, control_port=free_port(), data_port=free_port(), listen="127.0.0.1")
    facade = EngineFacade(home, listen="127.0.0.1")
    ctx = ConsoleContext(facade, ConsoleSettings.load(tmp_path / "console.ini"))
    await ctx.start_appliance()
    page = NetworkPage(ctx)
    page.resize(900, 1300)
    page.show()
    try:
        assert page.save_btn.isEnabled() and not page.unavailable.isVisible()
        assert page.work_rate.text() == "unlimited" and not any(cb.isChecked() for cb in page.presets.values())

        # validation by field: nothing stored
        page.custom.setPlainText("*.blob.core.windows.net\na*.b.example.com")
        page.work_rate.setText("fast")
        out = page.save()
        assert not out.ok and "wildcard" in page.fields["custom"].error
        assert facade.egress_settings()["revision"] == 0
        page.custom.setPlainText("127.0.0.1")
        out = page.save()
        assert not out.ok and "not a rate" in page.fields["work_rate"].error and not page.fields["custom"].error
        page.work_rate.setText("10MB/s")

        # the proxy's Test button: a wrong password is said at the password field; the right one passes
        page.presets["commercial"].setChecked(True)
        page.proxy_url.setText(tinyproxy.url)
        page.proxy_user.setText(PROXY_USER)
        page.proxy_password.setText("wrong")
        out = await page.test_proxy()
        assert not out.ok and "LB_PROXY_AUTH" in page.proxy_result.text() and page.fields["proxy_password"].error
        page.proxy_password.setText(PROXY_PASSWORD)
        out = await page.test_proxy()
        assert out.ok and page.proxy_result.text().startswith("Proxy OK") and not page.fields["proxy_password"].error
        out = page.save()
        assert out.ok, out.message
        e = facade.egress_settings()
        assert e["presets"] == ["commercial"] and e["custom"] == ["127.0.0.1"] and e["proxy"]["password_set"]
        assert e["bandwidth"]["work_rate"] == 10e6 and page.proxy_password.text() == ""   # not kept in the form

        # e-mail: saved after the server answered, a test e-mail through the proxy
        page.smtp_server.setText(f"127.0.0.1:{smtp_server.port}")
        page.smtp_to.setText("not-an-address")
        out = await page.save_smtp()
        assert not out.ok and page.fields["smtp_to"].error and facade.smtp_settings() is None
        page.smtp_to.setText("ops@example.com")
        page.smtp_from.setText("lifeboat@example.com")
        out = await page.save_smtp()
        assert out.ok, out.message
        out = await page.send_test()
        assert out.ok, out.message
        msgs = smtp_server.wait_messages(1, 10)
        assert msgs[0]["Subject"] == "[Lifeboat] test e-mail"
        assert tinyproxy.connects(f"127.0.0.1:{smtp_server.port}") >= 2      # the probe and the test e-mail

        out = await page.check()
        assert out.ok, page.check_report.text()
        assert "SMTP server" in page.check_report.text() and f"proxy 127.0.0.1:{tinyproxy.port}" in page.check_report.text()
        assert "proxy: ok" in page.check_report.text() and "smtp: ok" in page.check_report.text()
        await asyncio.sleep(0.2)   # let the layout take the report's new height before the picture
        screenshot(page, "network-and-cloud")
    finally:
        page.close()
        page.deleteLater()
        await ctx.stop_appliance()
