"""The alert centre over the synthetic appliance (its alert store has the contract's shapes): listed at start,
updated from Alert events, one row per cause however often it repeats, acknowledged as the OS user, a badge of the
active unacknowledged alerts, desktop notifications (tray or the in-app banner) for new warnings and critical ones."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from console.context import ConsoleContext
from console.settings import ConsoleSettings
from console.synthetic import SyntheticFacade
from ui.main_window import MainWindow
from ui.notifications import DesktopNotifier

pytestmark = pytest.mark.blocking_threshold(3.0)


async def _window(tmp_path: Path, facade: SyntheticFacade) -> tuple[MainWindow, ConsoleContext]:
    ctx = ConsoleContext(facade, ConsoleSettings.load(tmp_path / "console.ini"))
    await ctx.start_appliance()
    win = MainWindow(ctx)
    win.resize(1200, 700)
    win.show()
    return win, ctx


async def _close(win: MainWindow, ctx: ConsoleContext) -> None:
    await ctx.stop_appliance()
    win.close()
    win.deleteLater()


def _badge(win: MainWindow) -> str:
    """The Alerts entry of the navigation, found by its name (pages are added around it)."""
    items = [win.nav.item(i).text() for i in range(win.nav.count())]
    return next(t for t in items if t.startswith("Alerts"))


async def test_alert_centre_lists_folds_acknowledges_and_notifies(tmp_path: Path, screenshot) -> None:
    facade = SyntheticFacade(3, ticker=False)
    old = facade.raise_alert("LB_VCENTER_UNREACHABLE", "vc1.example", "vCenter vc1.example does not answer",
                             "Check the network path to vCenter.", "warning", "vcenter")
    facade.clear_alert(old.id)
    facade.raise_alert("LB_VAULT_KEY_NOT_BACKED_UP", "vault", "the vault key has no backup",
                       "Export the vault key with `lifeboat vault export-key`.", "warning", "keyring")
    win, ctx = await _window(tmp_path, facade)
    try:
        page = win.show_page("alerts")
        # listed at start from the appliance's store: the cleared one too, active first
        assert [r.id for r in ctx.alerts.rows()] == ["LB_VAULT_KEY_NOT_BACKED_UP:vault",
                                                     "LB_VCENTER_UNREACHABLE:vc1.example"]
        assert _badge(win) == "Alerts (1)" and win.desktop.sent == []  # what was there before is no news

        # a new critical alert: a row, the badge, one desktop notification (offscreen: no tray → the banner)
        facade.raise_alert("LB_RPO_BREACH", "vm-0001", "RPO 45 s is over the 30 s threshold",
                           "Check the agent and the network.", "critical")
        assert _badge(win) == "Alerts (2)" and win.alerts_label.text() == "2 alerts to acknowledge"
        assert win.desktop.sent == [("banner", "Critical: vm-0001")]
        assert win.banner.isVisible() and win.banner.code.text() == "LB_RPO_BREACH"
        top = ctx.alerts.rows()[0]
        assert (top.id, top.severity, top.subject, top.count) == ("LB_RPO_BREACH:vm-0001", "critical", "vm-0001", 1)
        # flapping: repeats fold into the row, no new notification
        for _ in range(50):
            facade.raise_alert("LB_RPO_BREACH", "vm-0001", "RPO 46 s is over the 30 s threshold", "", "critical")
        assert ctx.alerts.rowCount() == 3 and ctx.alerts.rows()[0].count == 51 and len(win.desktop.sent) == 1
        texts = [page.table.model().index(0, c).data() for c in range(8)]
        assert texts[0] == "Critical" and texts[1] == "vm-0001" and texts[2].startswith("LB_RPO_BREACH: RPO 46 s")
        assert texts[3] == "Check the agent and the network." and texts[5] == "active" and texts[6] == "51"
        assert texts[7] == "no"
        page.select("LB_RPO_BREACH:vm-0001")
        assert page.ack_btn.isEnabled() and "What to do:" in page.detail.text()
        screenshot(win, "alerts-centre")

        # acknowledge: the OS user, kept by the appliance; the badge drops
        page.ack_btn.click()
        stored = {a.id: a for a in facade.alerts()}["LB_RPO_BREACH:vm-0001"]
        assert stored.acknowledged_by == getpass.getuser() and stored.acknowledged_at
        assert _badge(win) == "Alerts (1)" and not page.ack_btn.isEnabled()
        assert page.table.model().index(page.table.currentIndex().row(), 7).data().startswith(getpass.getuser())

        # cleared: stays listed as cleared; raised again later: a new occurrence, notified again
        facade.clear_alert("LB_RPO_BREACH:vm-0001")
        row = ctx.alerts.get("LB_RPO_BREACH:vm-0001")
        assert row is not None and not row.active and _badge(win) == "Alerts (1)"
        page.active_only.setChecked(True)
        assert page.proxy.rowCount() == 1
        facade.raise_alert("LB_RPO_BREACH", "vm-0001", "RPO 40 s", "", "critical")
        assert len(win.desktop.sent) == 2 and _badge(win) == "Alerts (2)" and page.proxy.rowCount() == 2
        kinds = [e.kind for e in ctx.log.entries()]
        assert kinds.count("alert") == 3  # raised, cleared, raised: repeats are not logged one by one
    finally:
        await _close(win, ctx)


async def test_rpo_breach_from_the_ticker_raises_one_alert_and_recovery_clears_it(tmp_path: Path) -> None:
    facade = SyntheticFacade(2, ticker=False)
    win, ctx = await _window(tmp_path, facade)
    try:
        facade._state["vm-0001"]["base"] = 100      # RPO 40..161 s: over the 30 s threshold at any phase
        for _ in range(5):
            facade.tick()
        rows = [r for r in ctx.alerts.rows() if r.code == "LB_RPO_BREACH"]
        assert len(rows) == 1 and rows[0].subject == "vm-0001" and rows[0].active
        assert len(win.desktop.sent) == 1
        facade._state["vm-0001"]["base"] = 1
        facade.tick()
        assert not ctx.alerts.get("LB_RPO_BREACH:vm-0001").active and _badge(win) == "Alerts"
    finally:
        await _close(win, ctx)


def test_desktop_notification_goes_to_the_tray_when_there_is_one(qapp) -> None:
    from console.alerts import AlertRow
    from console.errors import NotificationCenter
    notes = NotificationCenter()
    seen: list[object] = []
    notes.notified.connect(seen.append)
    n = DesktopNotifier(notes, tray=True)
    n.notify(AlertRow("LB_X:vm1", "LB_X", "critical", "machine", "vm1", "broken", "fix it", 1.0))
    assert n.sent == [("tray", "Critical: vm1")] and seen == []
    n.tray.hide()
    n.deleteLater()
