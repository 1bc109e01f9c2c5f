"""The first-run wizard's Outbound network page, offscreen, against a real tinyproxy with basic authentication, a real
Azurite and a real embedded appliance:

- with the Azure target chosen, the Outbound network page (the Network and cloud page's allow-list and proxy
  widgets and validation) comes before the storage account's Test connection, in the 1000×700 window with no text
  squeezed;
- a wrong proxy password: Next tries the proxy first, LB_PROXY_AUTH is shown at the password field and Next stays
  off; the right one moves on;
- the Test connection goes out through those settings: a host off the allow-list is LB_EGRESS_REFUSED (shown back at
  the allow-list field), and once the Azurite address (as a private endpoint would be) is allowed, the test passes
  through the proxy (its log shows the CONNECT);
- after Finish the home's egress settings hold the allow-list and the proxy (as ``lifeboat egress show`` reads them),
  the password is in the keyring only, and the running appliance's own Azure traffic goes through the proxy;
- a Finish that fails after the settings were written, then Cancel: nothing stays in the keyring.
Screenshots in artifacts/screenshots (wizard-proxy-*)."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from PySide6.QtWidgets import QLabel, QWidget, QWizard

from console.context import ConsoleContext
from console.engine_facade import EngineFacade
from console.settings import ConsoleSettings
from engine.egress import proxy_password_name
from engine.secrets import get_secret
from tests.azurite import KEY, Azurite, azurite_missing
from tests.conftest import free_port
from tests.egress_servers import PROXY_PASSWORD, PROXY_USER, Tinyproxy, tinyproxy_fixture  # noqa: F401  (fixture)
from tests.ui.helpers import signal, until
from ui.wizard import FirstRunWizard
from ui.wizard_pages import AZURE_WINDOW

pytestmark = pytest.mark.blocking_threshold(3.0)


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):  # type: ignore[no-untyped-def]
    why = azurite_missing()
    if why:
        pytest.skip(why)
    az = Azurite(tmp_path_factory.mktemp("azurite"))
    az.start()
    yield az
    az.stop()


def squeezed(page: QWidget) -> list[str]:
    """Visible word-wrapped labels shorter than their text needs at their width, and a page taller than it is."""
    out = [f"{lab.text()[:60]!r}: {lab.height()} < {lab.heightForWidth(lab.width())}"
           for lab in page.findChildren(QLabel)
           if lab.isVisible() and lab.wordWrap() and lab.text() and lab.height() < lab.heightForWidth(lab.width())]
    lay = page.layout()
    need = lay.totalHeightForWidth(page.width()) if lay.hasHeightForWidth() else lay.totalMinimumSize().height()
    if need > page.height():
        out.append(f"page needs {need} px, has {page.height()}")
    return out


async def settle() -> None:
    await asyncio.sleep(0.2)   # the layout takes the new texts' heights


async def to_azure_pages(wiz: FirstRunWizard, screenshot=None) -> None:  # type: ignore[no-untyped-def]
    wiz.next()
    assert wiz.currentPage() is wiz.vault_page
    wiz.vault_page.azure.setChecked(True)
    assert wiz.vault_page.title().startswith("Step 2 of 9") and wiz.vault_page.azure_hint.isVisible()
    if screenshot is not None:
        await settle()
        assert not squeezed(wiz.vault_page), squeezed(wiz.vault_page)
        screenshot(wiz, "wizard-proxy-vault-azure")
    wiz.next()
    assert wiz.currentPage() is wiz.egress_page
    await settle()


async def through_kit(wiz: FirstRunWizard, tmp_path: Path) -> None:
    """Ports, passphrase, recovery kit, vCenter (skipped): to the summary."""
    assert wiz.currentPage() is wiz.ports_page
    wiz.ports_page.listen.setText("127.0.0.1")
    wiz.ports_page.control.setText(str(free_port()))
    wiz.ports_page.data.setText(str(free_port()))
    wiz.next()
    await until(lambda: wiz.pending.passphrase, 30, "the passphrase")
    wiz.passphrase_page.save_to(tmp_path / "passphrase.txt")
    wiz.passphrase_page.confirm.setChecked(True)
    wiz.next()
    wiz.kit_page.passphrase.setText("a kit passphrase for the test")
    wiz.kit_page.repeat.setText("a kit passphrase for the test")
    await wiz.kit_page.save_to(tmp_path / "recovery-kit.txt")
    wiz.next()
    wiz.next()
    assert wiz.currentPage() is wiz.summary_page


def egress_show(home: Path) -> dict:  # type: ignore[type-arg]
    """``lifeboat egress show --home HOME --json``, in this process (same keyring)."""
    from engine.cli import main
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["egress", "show", "--home", str(home), "--json"]) == 0
    return json.loads(buf.getvalue())


@pytest.mark.timeout(240)
async def test_wizard_outbound_network_through_proxy(qtbot, tmp_path: Path, screenshot, azurite: Azurite,
                                                     tinyproxy: Tinyproxy) -> None:
    container = f"wizproxy-{uuid.uuid4().hex[:10]}"
    azurite.create_container(container)
    azure_hop = f"127.0.0.1:{azurite.port}"
    home = tmp_path / "appliance"
    facade = EngineFacade(home, listen="127.0.0.1")
    ctx = ConsoleContext(facade, ConsoleSettings.load(tmp_path / "console.ini"))
    seen_at_start: list[int] = []

    async def start(_plan) -> None:  # type: ignore[no-untyped-def]
        seen_at_start.append(tinyproxy.connects(azure_hop))
        await ctx.start_appliance()

    wiz = FirstRunWizard(home, start)
    qtbot.addWidget(wiz)
    wiz.show()
    try:
        await to_azure_pages(wiz, screenshot)
        eg = wiz.egress_page
        assert (wiz.width(), wiz.height()) == AZURE_WINDOW and eg.title().startswith("Step 3 of 9")
        assert eg.isComplete(), "every field is optional: empty means direct"
        pb, ab = eg.proxy_box, eg.allow_box
        assert pb.proxy_password.echoMode() == pb.proxy_password.EchoMode.Password

        # the Network and cloud page's validation, at the field as typed
        ab.custom.setPlainText("a*.b.example.com")
        assert "wildcard" in eg.fields["custom"].error and not eg.isComplete()
        ab.presets["commercial"].setChecked(True)
        ab.custom.setPlainText("")
        pb.proxy_url.setText("ftp://proxy:21")
        assert "http://" in eg.fields["proxy_url"].error and not eg.isComplete()
        pb.proxy_url.setText(tinyproxy.url)
        pb.proxy_user.setText(PROXY_USER)
        assert "password" in eg.fields["proxy_password"].error and not eg.isComplete()

        # a wrong proxy password: Next tries the proxy, says so at the password field and stays
        pb.proxy_password.setText("wrong-password")
        assert eg.isComplete()
        wiz.next()
        assert eg.verifying is not None
        await eg.verifying
        assert wiz.currentPage() is eg and not eg.isComplete()
        assert eg.fields["proxy_password"].error.startswith("LB_PROXY_AUTH"), eg.fields["proxy_password"].error
        assert "LB_PROXY_AUTH" in pb.proxy_result.text()
        assert not wiz.button(QWizard.WizardButton.NextButton).isEnabled()
        await settle()
        assert not squeezed(eg), squeezed(eg)
        screenshot(wiz, "wizard-proxy-wrong-password")

        # the right one: Next moves on by itself once the proxy let it through
        pb.proxy_password.setText(PROXY_PASSWORD)
        assert eg.isComplete() and not eg.fields["proxy_password"].error
        wiz.next()
        await eg.verifying
        tp = wiz.target_page
        assert wiz.currentPage() is tp and "Proxy OK" in pb.proxy_result.text()
        assert tinyproxy.log.exists() and "Proxy OK" in pb.proxy_result.text()

        # the test goes out through these settings: Azurite's address is not on the allow-list (commercial only)
        await settle()
        assert tinyproxy.url in tp.route.text() and PROXY_PASSWORD not in tp.route.text()
        f = tp.form
        f.account_url.setText(azurite.url)
        f.container.setText(container)
        f.secret.setText(KEY)
        out = await f.test()
        assert not out.ok and out.message.startswith("LB_EGRESS_REFUSED") and "Outbound network" in out.message
        assert not tp.isComplete() and "LB_EGRESS_REFUSED" in f.result.text()
        await settle()
        assert not squeezed(tp), squeezed(tp)
        screenshot(wiz, "wizard-proxy-egress-refused")
        wiz.back()
        assert wiz.currentPage() is eg and eg.fields["custom"].error.startswith("LB_EGRESS_REFUSED")
        assert not eg.isComplete()
        ab.custom.setPlainText("127.0.0.1")     # the account's address, as a private endpoint's IP would be
        assert eg.isComplete() and not eg.fields["custom"].error
        await settle()
        assert not squeezed(eg), squeezed(eg)
        screenshot(wiz, "wizard-proxy-outbound-network")
        wiz.next()
        await eg.verifying
        assert wiz.currentPage() is tp and not tp.isComplete()   # the earlier test covered other settings
        assert "changed since the test" in f.result.text() and "127.0.0.1" in tp.route.text()

        before = tinyproxy.connects(azure_hop)
        out = await f.test()
        assert out.ok and "Through:" in out.message and tinyproxy.url in out.message, out.message
        assert tp.isComplete() and wiz.button(QWizard.WizardButton.NextButton).isEnabled()
        assert tinyproxy.connects(azure_hop) > before, "the test went through the proxy"
        await settle()
        assert not squeezed(tp), squeezed(tp)
        screenshot(wiz, "wizard-proxy-tested")
        assert get_secret(proxy_password_name(wiz.pending.appliance_id or "none")) is None   # nothing stored yet

        wiz.next()
        await through_kit(wiz, tmp_path)
        summary = wiz.summary_page.summary.text()
        assert "Outbound network" in summary and tinyproxy.url in summary and "127.0.0.1" in summary
        assert PROXY_PASSWORD not in summary and KEY not in summary
        screenshot(wiz, "wizard-proxy-summary")
        done = signal(wiz.setup_done, timeout=90, what="Finish")
        wiz.accept()
        await done

        # the home holds the settings (as `lifeboat egress show` reads them); the password in the keyring only
        shown = egress_show(home)
        assert shown["presets"] == ["commercial"] and shown["custom"] == ["127.0.0.1"]
        assert shown["proxy"]["url"] == tinyproxy.url and shown["proxy"]["user"] == PROXY_USER
        assert shown["proxy"]["password_set"] is True
        appliance_id = json.loads((home / "appliance.json").read_text())["appliance_id"]
        assert get_secret(proxy_password_name(appliance_id)) == PROXY_PASSWORD
        for p in home.rglob("*"):
            if p.is_file():
                assert PROXY_PASSWORD.encode() not in p.read_bytes(), p
        assert facade.egress_settings()["proxy"]["url"] == tinyproxy.url

        # the running appliance's own Azure traffic goes through the proxy (its log shows the Azure host)
        assert type(facade.app.vault).__name__ == "AzureVault"
        start_count = seen_at_start[0]
        assert start_count >= before + 2   # the wizard's test, then Finish's check through the home's settings
        assert await asyncio.to_thread(facade.app.vault.machines) == []
        assert tinyproxy.connects(azure_hop) > start_count, "the appliance's vault client went through the proxy"
        rep = await facade.egress_check()
        vault = [e for e in rep["endpoints"] if e["name"].lower().startswith(("vault", "azure"))
                 or e["host"] == "127.0.0.1"]
        assert vault and all(e["ok"] for e in vault) and all(tinyproxy.url.split("//")[1] in e["via"]
                                                              for e in vault), rep
    finally:
        if facade.running:
            await ctx.stop_appliance()


@pytest.mark.timeout(180)
async def test_wizard_cancel_after_failed_finish_leaves_no_proxy_password(qtbot, tmp_path: Path, azurite: Azurite,
                                                                           tinyproxy: Tinyproxy) -> None:
    container = f"wizcancel-{uuid.uuid4().hex[:10]}"
    azurite.create_container(container)
    home = tmp_path / "appliance"

    async def start(_plan) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("the appliance could not start (test)")

    wiz = FirstRunWizard(home, start)
    qtbot.addWidget(wiz)
    wiz.show()
    await to_azure_pages(wiz)
    eg = wiz.egress_page
    eg.allow_box.custom.setPlainText("127.0.0.1")
    eg.proxy_box.proxy_url.setText(tinyproxy.url)
    eg.proxy_box.proxy_user.setText(PROXY_USER)
    eg.proxy_box.proxy_password.setText(PROXY_PASSWORD)
    wiz.next()
    await eg.verifying
    f = wiz.target_page.form
    f.account_url.setText(azurite.url)
    f.container.setText(container)
    f.secret.setText(KEY)
    assert (await f.test()).ok
    wiz.next()
    await through_kit(wiz, tmp_path)
    wiz.accept()
    assert wiz.task is not None
    await wiz.task
    assert "could not start" in wiz.summary_page.state.error
    appliance_id = wiz.pending.appliance_id
    assert appliance_id and wiz.pending.path is not None
    # Finish wrote the settings into the (rolled back) pending home: the password is in the keyring now
    assert get_secret(proxy_password_name(appliance_id)) == PROXY_PASSWORD
    closed = signal(wiz.finished, timeout=30, what="the wizard closed")
    wiz.reject()
    await closed
    assert get_secret(proxy_password_name(appliance_id)) is None
    assert get_secret(f"vault-azure/{appliance_id}") is None
    assert not home.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".appliance.setup-")]
