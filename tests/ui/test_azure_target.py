"""The Azure target in the console, offscreen, against a real Azurite (and a real HTTP fault proxy in front of it for
429/503), a real embedded appliance and a real agent written to through a real NBD client (qemu-io):

- the first-run wizard with an Azure target: a wrong key is refused at its field and Next stays off; the right one
  passes Test connection; Finish starts an appliance whose vault is the Azurite container (credential only in the
  keyring);
- the dashboard's target panel: idle before any machine, then the last upload advances after writes, the backlog
  drains, and 503s from the target show as throttled;
- Settings → Network and cloud → Add target on an unprotected appliance: wrong key, missing container and a host off
  the allow-list are each a clear LB_ error at the right field with nothing changed; the right key applies and a
  restart puts the appliance on Azure; once a machine is protected the dialog refuses plainly.
Screenshots in artifacts/screenshots (target-*)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest

from console.context import ConsoleContext
from console.engine_facade import EngineFacade
from console.settings import ConsoleSettings
from console.target import AzureTarget, TargetModel
from engine.api import init_home
from engine.secrets import get_secret
from tests.azurite import KEY, Azurite, HTTPFaultProxy, azurite_missing
from tests.conftest import free_port, need_tool
from tests.ui.helpers import signal, until
from ui.pages.dashboard import DashboardPage
from ui.pages.network import NetworkPage
from ui.target_dialog import AddTargetDialog
from ui.wizard import FirstRunWizard

pytestmark = pytest.mark.blocking_threshold(3.0)

MiB = 1 << 20
WRONG_KEY = "QUJD" * 22


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):  # type: ignore[no-untyped-def]
    why = azurite_missing()
    if why:
        pytest.skip(why)
    az = Azurite(tmp_path_factory.mktemp("azurite"))
    az.start()
    yield az
    az.stop()


def _container(azurite: Azurite, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    azurite.create_container(name)
    return name


def _secret_name(home: Path) -> str:
    return f"vault-azure/{json.loads((home / 'appliance.json').read_text())['appliance_id']}"


@pytest.mark.timeout(240)
async def test_wizard_azure_target_then_dashboard_health(qtbot, tmp_path: Path, screenshot, azurite: Azurite) -> None:
    need_tool("qemu-io")
    from engine.agent.agent import Agent
    from engine.agent.register import register
    from tests.engine.harness import make_disk, run_tool

    container = _container(azurite, "wiz")
    fault = HTTPFaultProxy(azurite.port)
    await fault.start()
    url = fault.url()
    home = tmp_path / "appliance"
    facade = EngineFacade(home, listen="127.0.0.1")
    ctx = ConsoleContext(facade, ConsoleSettings.load(tmp_path / "console.ini"))

    async def start(_plan) -> None:  # type: ignore[no-untyped-def]
        await ctx.start_appliance()

    wiz = FirstRunWizard(home, start)
    qtbot.addWidget(wiz)
    wiz.show()
    agent = None
    dash = page = None
    try:
        wiz.next()
        vp = wiz.vault_page
        assert wiz.currentPage() is vp and vp.azure.isEnabled() and not vp.azure_hint.isVisible()
        vp.azure.setChecked(True)
        wiz.next()
        assert wiz.currentPage() is wiz.egress_page and wiz.egress_page.isComplete()   # optional: direct
        wiz.next()
        tp = wiz.target_page
        f = tp.form
        assert wiz.currentPage() is tp and f.isVisible() and not tp.isComplete()
        assert f.secret.echoMode() == f.secret.EchoMode.Password and "direct" in tp.route.text()
        f.account_url.setText(url)
        f.container.setText(container)
        f.secret.setText(WRONG_KEY)
        out = await f.test()
        assert not out.ok and out.message.startswith("LB_CLOUD_AUTH_FAILED")
        assert f.fields["secret"].error and "LB_CLOUD_AUTH_FAILED" in f.result.text() and not tp.isComplete()
        await asyncio.sleep(0.2)   # the layout takes the messages' heights before the picture
        screenshot(wiz, "target-wizard-wrong-key")
        f.secret.setText(KEY)
        out = await f.test()
        assert out.ok and "Connection OK" in f.result.text() and not f.fields["secret"].error, out.message
        assert tp.isComplete()
        f.container.setText(container + "x")      # what is typed now was never tested: no Next
        assert not tp.isComplete() and "again" in f.result.text()
        f.container.setText(container)
        assert (await f.test()).ok and tp.isComplete()
        await asyncio.sleep(0.2)
        screenshot(wiz, "target-wizard-tested")
        wiz.next()
        wiz.ports_page.listen.setText("127.0.0.1")
        wiz.ports_page.control.setText(str(free_port()))
        wiz.ports_page.data.setText(str(free_port()))
        wiz.next()
        await until(lambda: wiz.pending.passphrase, 30, "the passphrase")
        passfile = tmp_path / "passphrase.txt"
        wiz.passphrase_page.save_to(passfile)
        wiz.passphrase_page.confirm.setChecked(True)
        wiz.next()
        wiz.kit_page.passphrase.setText("a kit passphrase for the test")
        wiz.kit_page.repeat.setText("a kit passphrase for the test")
        await wiz.kit_page.save_to(tmp_path / "recovery-kit.txt")
        wiz.next()
        wiz.next()
        summary = wiz.summary_page.summary.text()
        assert "Azure Blob" in summary and container in summary and KEY not in summary
        screenshot(wiz, "target-wizard-summary")
        done = signal(wiz.setup_done, timeout=90, what="Finish")
        wiz.accept()
        await done

        # the appliance runs on the Azurite container; the key is in the keyring only
        text = (home / "appliance.json").read_text()
        cfg = json.loads(text)["vault"]
        assert cfg["kind"] == "azure" and cfg["account_url"] == url and cfg["container"] == container
        assert KEY not in text and get_secret(_secret_name(home)) == KEY
        assert type(facade.app.vault).__name__ == "AzureVault"

        dash = DashboardPage(ctx)
        dash.resize(1100, 1000)
        dash.show()
        dash.refresh_target()
        h = dash.target_health
        assert h is not None and h.kind == "azure" and h.location == url and h.container == container
        assert h.state == "idle" and h.last_upload is None and h.throttled is False
        assert dash.target_labels["Last upload"].text().startswith("unknown")

        # a protected machine replicating into Azure: the last upload advances after writes
        control_port = int(facade.addresses["control"].rsplit(":", 1)[1])
        agent_home = tmp_path / "agent"
        await asyncio.to_thread(register, agent_home, f"127.0.0.1:{control_port}", passfile, "vm1")
        disk = tmp_path / "sys.img"
        make_disk(disk, 8 * MiB, seed=5)
        agent = Agent(agent_home, {"sys": disk}, ("127.0.0.1", 0))
        await agent.start()
        await facade.protect("vm1", None)

        def health():  # type: ignore[no-untyped-def]
            dash.refresh_target()
            return dash.target_health

        first = await until(lambda: (v := health()) and v.last_upload and v.state == "ok" and v, 60,
                            "the initial sync reached Azure")
        assert first.machines[0].name == "vm1" and "ago" in dash.target_labels["Last upload"].text()
        nbd = f"nbd://127.0.0.1:{agent.nbd_address[1]}/sys"
        await asyncio.sleep(1.1)
        t_write = time.time()
        await run_tool("qemu-io", "-f", "raw", nbd, "-c", "write -P 0x5a 1M 1M", "-c", "write -P 0x33 5M 64k")
        later = await until(lambda: (v := health()) and v.last_upload and v.last_upload >= t_write and v, 30,
                            "a newer upload after the writes")
        assert later.last_upload > first.last_upload
        await until(lambda: health().upload_backlog_records == 0, 30, "the upload backlog drained")
        ctx.bridge.flush()
        await asyncio.sleep(0.2)
        dash.refresh()
        dash.refresh_target()
        assert dash.target_labels["State"].text().startswith("OK") and "0 record(s)" in dash.target_labels["Backlog"].text()
        screenshot(dash, "target-dashboard-health")

        # 503s from the target: shown as throttled, and nothing is lost (the backlog drains again)
        fault.fail(0.5, status=503, retry_after="1")
        await run_tool("qemu-io", "-f", "raw", nbd, "-c", "write -P 0x77 2M 1M")
        thr = await until(lambda: (v := health()) and v.throttled and v, 60, "throttled shown")
        assert thr.state in ("throttled", "ok") and thr.throttle_events >= 1 and thr.last_throttle_status == 503
        assert dash.target_labels["Throttled"].text().startswith("yes")
        screenshot(dash, "target-dashboard-throttled")
        fault.fail(0.0)
        await until(lambda: health().upload_backlog_records == 0, 60, "the backlog drained after the 503s")

        # Add target once a machine is protected: refused plainly, before and by the engine
        page = NetworkPage(ctx)
        page.resize(900, 700)
        page.show()
        assert "Azure Blob" in page.target_text.text() and container in page.target_text.text()
        dlg = page.open_add_target()
        assert isinstance(dlg, AddTargetDialog)
        assert dlg.refused.isVisible() and "already protected" in dlg.refused.text() and "vm1" in dlg.refused.text()
        assert not dlg.apply_btn.isEnabled() and not dlg.form.isEnabled()
        screenshot(dlg, "target-settings-refused-protected")
        out = await TargetModel(facade).apply(AzureTarget(url, container, "key", KEY))
        assert not out.ok and out.message.startswith("LB_CONFLICT") and "protected" in out.message
        dlg.reject()
    finally:
        if agent is not None:
            await agent.stop()
        for w in (dash, page):
            if w is not None:
                w.close()
                w.deleteLater()
        if facade.running:
            await ctx.stop_appliance()
        await fault.stop()


@pytest.mark.timeout(180)
async def test_settings_add_target_refusals_then_apply(tmp_path: Path, screenshot, azurite: Azurite) -> None:
    container = _container(azurite, "set")
    home = tmp_path / "appliance"
    init_home(home, control_port=free_port(), data_port=free_port(), listen="127.0.0.1")
    facade = EngineFacade(home, listen="127.0.0.1")
    ctx = ConsoleContext(facade, ConsoleSettings.load(tmp_path / "console.ini"))
    await ctx.start_appliance()
    page = NetworkPage(ctx)
    page.resize(900, 700)
    page.show()
    try:
        assert page.add_target_btn.isEnabled() and "local folder" in page.target_text.text()
        dlg = page.open_add_target()
        assert "local folder" in dlg.current.text() and not dlg.refused.isVisible() and dlg.apply_btn.isEnabled()
        before = (home / "appliance.json").read_bytes()
        secret = _secret_name(home)
        f = dlg.form
        f.account_url.setText(azurite.url)
        f.container.setText(container)

        # wrong key: a clear error at the key, nothing changed (settings file, keyring, vault in use)
        f.secret.setText(WRONG_KEY)
        out = await dlg.apply()
        assert not out.ok and out.message.startswith("LB_CLOUD_AUTH_FAILED")
        assert "LB_CLOUD_AUTH_FAILED" in dlg.outcome.text() and f.fields["secret"].error
        assert (home / "appliance.json").read_bytes() == before and get_secret(secret) is None
        assert type(facade.app.vault).__name__ == "LocalVault"
        assert WRONG_KEY not in (home / "appliance.json").read_text()
        await asyncio.sleep(0.2)
        screenshot(dlg, "target-settings-wrong-key")

        # a container that does not exist: at the container field
        f.secret.setText(KEY)
        f.container.setText("no-such-container")
        out = await f.test()
        assert not out.ok and out.message.startswith("LB_CONTAINER_MISSING") and f.fields["container"].error
        assert not f.fields["secret"].error
        f.container.setText(container)

        # the account's host off the allow-list: refused before any packet leaves, with the setting to change
        facade.save_egress(presets=["commercial"], custom=[])
        out = await f.test()
        assert not out.ok and out.message.startswith("LB_EGRESS_REFUSED"), out.message
        assert "allow-list" in f.fields["account_url"].error
        assert (home / "appliance.json").read_bytes() == before
        facade.save_egress(presets=["commercial"], custom=["127.0.0.1"])
        out = await f.test()
        assert out.ok, out.message

        # the right key: applied (the engine checks again), then a restart puts the appliance on Azure
        out = await dlg.apply()
        assert out.ok, out.message
        assert f.secret.text() == "" and dlg.restart_btn.isVisible()
        cfg = json.loads((home / "appliance.json").read_text())["vault"]
        assert cfg["kind"] == "azure" and cfg["container"] == container and get_secret(secret) == KEY
        assert "until it restarts" in dlg.current.text()        # the running appliance still uses the local one
        await asyncio.sleep(0.2)   # let the layout take the new texts' heights before the picture
        screenshot(dlg, "target-settings-applied")
        stopped = signal(ctx.appliance_started, timeout=60, what="appliance restarted")
        await dlg.restart()
        await stopped
        assert type(facade.app.vault).__name__ == "AzureVault"
        assert "until it restarts" not in dlg.current.text() and "Azure Blob" in page.target_text.text()
        dlg.reject()
    finally:
        page.close()
        page.deleteLater()
        if facade.running:
            await ctx.stop_appliance()
