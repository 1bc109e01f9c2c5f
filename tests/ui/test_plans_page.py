"""The Recovery plans page on the real engine in-process (no boot): a plan built with buttons and with drag and drop
(a real QDropEvent carrying the machines the available list itself encodes), groups reordered, actions added and
removed, and every engine refusal shown by the field it names (group 2's machines, the action's script, the plan
name). The run form refuses a run without a recovery host by the host field; the run view stays empty."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent
from PySide6.QtWidgets import QApplication, QListWidget

from console.context import ConsoleContext
from console.engine_facade import EngineFacade
from console.settings import ConsoleSettings
from engine.agent.register import register
from engine.api import init_home
from tests.conftest import free_port
from tests.ui.helpers import until
from ui.main_window import MainWindow
from ui.pages.plans import PlansPage
from ui.recovery_dialogs import ActionDialog

pytestmark = pytest.mark.blocking_threshold(3.0)


def drop(source: QListWidget, names: list[str], target: QListWidget) -> None:
    """Drag ``names`` from ``source`` onto ``target``: the enter, move and drop events a real drag delivers."""
    items = [source.findItems(n, Qt.MatchFlag.MatchExactly)[0] for n in names]
    data = source.mimeData(items)
    pos = target.viewport().rect().center()
    actions = Qt.DropAction.CopyAction | Qt.DropAction.MoveAction
    enter = QDragEnterEvent(pos, actions, data, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(target.viewport(), enter)
    assert enter.isAccepted(), "the group list refuses the drag"
    move = QDragMoveEvent(pos, actions, data, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(target.viewport(), move)
    ev = QDropEvent(QPoint(pos).toPointF(), actions, data, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(target.viewport(), ev)
    assert ev.isAccepted(), "the drop was not taken"


async def test_plan_builder_buttons_drag_and_drop_reorder_actions_and_field_messages(tmp_path: Path,
                                                                                     screenshot) -> None:
    home = tmp_path / "appliance"
    init_home(home, control_port=free_port(), data_port=free_port(), listen="127.0.0.1")
    ctx = ConsoleContext(EngineFacade(home, listen="127.0.0.1"), ConsoleSettings.load(tmp_path / "console.ini"))
    await ctx.start_appliance()
    win = MainWindow(ctx)
    win.resize(1280, 860)
    win.show()
    try:
        control = ctx.facade.addresses["control"]
        for m in ("web1", "web2", "db1", "new1"):
            await asyncio.to_thread(register, tmp_path / f"agent-{m}", control, home / "passphrase.txt", m)
        for m in ("web1", "web2", "db1"):   # new1 stays registered, not protected
            await ctx.facade.protect(m, None)
        ctx.refresh_inventory()
        page = win.show_page("plans")
        assert isinstance(page, PlansPage) and not page.tabs.isVisible() and page.empty.isVisible()

        # a plan name the engine refuses is shown by the name field
        page.new_name.setText("bad name!")
        page.new_btn.click()
        assert "LB_INVALID_NAME" in page.f_name.error
        page.new_name.setText("dr")
        page.new_btn.click()
        assert page.f_name.error == "" and ctx.recovery.plan is not None and ctx.recovery.plan.name == "dr"
        await until(lambda: page.available.names() == ["db1", "web1", "web2"], 10, "the protected machines")

        # buttons: db1 into a new group 1
        page.available.findItems("db1", Qt.MatchFlag.MatchExactly)[0].setSelected(True)
        assert page.target_group.currentText() == "New group 1"
        page.add_btn.click()
        assert [g.machines for g in ctx.recovery.plan.groups] == [("db1",)]
        assert page.available.names() == ["web1", "web2"] and page.group_box(1).machines.names() == ["db1"]
        # buttons again: web1 into a new group 2
        page.available.findItems("web1", Qt.MatchFlag.MatchExactly)[0].setSelected(True)
        page.target_group.setCurrentIndex(page.target_group.findData(2))
        page.add_btn.click()
        # drag and drop: web2 onto group 2
        drop(page.available, ["web2"], page.group_box(2).machines)
        assert [g.machines for g in ctx.recovery.plan.groups] == [("db1",), ("web1", "web2")]
        assert page.available.names() == [] and ctx.recovery.plan.valid
        assert "Ready to run: 3 machine(s) in 2 group(s)" in page.valid_label.text()

        # a machine dropped onto a second group: refused by the engine, shown under that group
        drop(page.group_box(2).machines, ["web1"], page.group_box(1).machines)
        err = page.group_box(1).field.error
        assert "LB_PLAN_INVALID" in err and "group 2 already" in err and "at most one group" in err
        assert page.group_box(2).field.error == ""
        assert [g.machines for g in ctx.recovery.plan.groups] == [("db1",), ("web1", "web2")]

        # reorder: the web group first
        assert not page.group_box(1).up.isEnabled() and not page.group_box(2).down.isEnabled()
        page.group_box(2).up.click()
        assert [g.machines for g in ctx.recovery.plan.groups] == [("web1", "web2"), ("db1",)]
        assert page.group_box(1).field.error == ""   # an accepted edit clears the old message

        # an unprotected machine makes the plan not runnable: the message is by group 2's machines
        page.add_to_group(2, ["new1"])
        plan = ctx.recovery.plan
        assert not plan.valid and plan.problem_field == "groups[2].machines"
        assert "'new1' of group 2 is not protected" in page.group_box(2).field.error
        assert "Not runnable" in page.valid_label.text()
        screenshot(win, "plans-1-builder-not-runnable")
        page.group_box(2).machines.findItems("new1", Qt.MatchFlag.MatchExactly)[0].setSelected(True)
        page.group_box(2).remove_machines.click()
        assert ctx.recovery.plan.valid and page.group_box(2).field.error == ""

        # actions: a relative script is refused by the script field, the dialog stays open; a manual one is added
        dlg = page.open_action_dialog(1)
        assert isinstance(dlg, ActionDialog) and page.dialog is dlg
        dlg.script_kind.setChecked(True)
        dlg.script.setText("relative.sh")
        dlg.timeout.setText("soon")
        dlg.buttons.button(dlg.buttons.StandardButton.Ok).click()
        assert "LB_INVALID_INPUT" in dlg.fields["timeout"].error and page.dialog is dlg
        dlg.timeout.setText("30s")
        dlg.buttons.button(dlg.buttons.StandardButton.Ok).click()
        assert "LB_PLAN_INVALID" in dlg.fields["script"].error and "absolute path" in dlg.fields["script"].error
        assert dlg.fields["timeout"].error == "" and page.dialog is dlg
        screenshot(dlg, "plans-2-action-refused-by-field")
        dlg.manual_kind.setChecked(True)
        dlg.manual.setPlainText("Call the DBA: the database must be up before the web tier")
        dlg.buttons.button(dlg.buttons.StandardButton.Ok).click()
        await until(lambda: page.dialog is None, 5, "the dialog to close")
        g1 = ctx.recovery.plan.groups[0]
        assert [a.text for a in g1.before] == ["Call the DBA: the database must be up before the web tier"]
        dlg = page.open_action_dialog(2)
        dlg.after.setChecked(True)
        dlg.manual.setPlainText("Tell the service desk")
        dlg.buttons.button(dlg.buttons.StandardButton.Ok).click()
        await until(lambda: page.dialog is None, 5, "the dialog to close")
        assert [a.text for a in ctx.recovery.plan.groups[1].after] == ["Tell the service desk"]
        assert page.group_box(1).action_list.item(0).text().startswith("before: Manual: Call the DBA")
        screenshot(win, "plans-3-builder")
        page.group_box(2).action_list.setCurrentRow(0)
        page.group_box(2).remove_action.click()
        assert ctx.recovery.plan.groups[1].after == ()

        # a third, empty group is named by its field; removing it makes the plan runnable again
        page.available.clear()
        page.move_group(2, 1)
        assert [g.machines for g in ctx.recovery.plan.groups] == [("db1",), ("web1", "web2")]
        page.group_box(1).machines.selectAll()
        page.group_box(1).remove_machines.click()
        assert ctx.recovery.plan.problem_field == "groups[1].machines"
        assert "group 1 has no machine" in page.group_box(1).field.error
        page.group_box(1).remove_group.click()
        assert [g.machines for g in ctx.recovery.plan.groups] == [("web1", "web2")] and ctx.recovery.plan.valid
        assert page.available.names() == ["db1"]

        # the run form: no recovery host yet, said by the host field; nothing runs
        page.tabs.setCurrentIndex(1)
        assert "No recovery host" in page.run_fields["host"].error
        page.run_btn.click()
        assert "Choose a recovery host" in page.run_fields["host"].error
        assert page.run_title.text() == "No run yet" and page.run_tree.topLevelItemCount() == 0
        assert [p.name for p in ctx.recovery.plans] == ["dr"]
        screenshot(win, "plans-4-run-form-no-host")
        assert not ctx.notes.crashes
    finally:
        await ctx.stop_appliance()
        win.close()
        win.deleteLater()
