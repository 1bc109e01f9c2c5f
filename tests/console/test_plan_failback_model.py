"""The plan failback stepper's model (console/failback.py ``build_plan_stepper``) from the engine's plan view
(``PlanFailbackView`` in its wire form, as ``plan_failback_state`` sends it): which step is done, running or next,
the prerequisites that hold it back (naming the machines), the rows per machine, the order fail back runs in
(groups reversed) and the confirmation text. Pure: no appliance, no Qt widgets. The same views on real boots:
tests/ui/test_plan_failback_stepper.py."""

from __future__ import annotations

from typing import Any

from console.failback import build_plan_stepper, build_stepper
from engine.api import PlanFailbackView

FO = {"host": "rh1", "point": "c-9", "state": "booted", "booted_at": 1.0, "kind": "unplanned"}


def fb(state: str, *, seeded: bool = True, connected: bool = True, **kw: Any) -> dict[str, Any]:
    return {"state": state, "target": {"kind": "original", "disks": {}}, "target_connected": connected,
            "seeded": seeded, "progress": 1.0 if seeded else 0.5, "eta_seconds": 0.0 if seeded else 12.0,
            "rpo_seconds": 1.5, "blocks_pending": 0 if seeded else 40, "bytes_compared": 64 << 20,
            "bytes_sent": (2 << 20) + 4096, "data_bytes_sent": 2 << 20, "error": None, **kw}


def view(web: dict[str, Any] | None, db: dict[str, Any] | None, *, fo: dict[str, Any] | None = FO,
         job: dict[str, Any] | None = None, state: str = "failed-over") -> PlanFailbackView:
    return PlanFailbackView.from_dict({"plan": "shop", "job": job, "machines": [
        {"group": 1, "machine": "web", "state": state, "failover": fo, "failback": web},
        {"group": 2, "machine": "db", "state": state, "failover": fo, "failback": db}]})


def job(kind: str, state: str, machines: list[str], jobs: dict[str, str] | None = None) -> dict[str, Any]:
    return {"id": "j1", "kind": kind, "machine": "plan:shop", "state": state, "title": f"{kind} shop",
            "finished": state not in ("queued", "running"), "result": {"plan": "shop", "machines": machines,
                                                                      "jobs": jobs or {}},
            "error": {"code": "LB_ORIGINAL_UNREACHABLE", "message": "db: gone"} if state == "failed" else None}


def statuses(st: Any) -> list[str]:
    return [s.status for s in st.steps]


def test_nothing_failed_over_is_not_applicable() -> None:
    st = build_plan_stepper(view(None, None, fo=None, state="protected"), None)
    assert not st.applicable and st.next_kind is None and "No machine of plan shop is failed over" in st.summary


def test_failed_over_offers_reprotect_of_every_machine() -> None:
    st = build_plan_stepper(view(None, None), None)
    assert st.applicable and st.plan and statuses(st) == ["next", "waiting", "waiting"]
    assert st.next_kind == "reprotect" and st.step("reprotect").ready
    assert [r.machine for r in st.step("reprotect").rows] == ["web", "db"]
    assert [r.machine for r in st.step("failback").rows] == ["db", "web"]   # the order it runs in
    assert "web, db" in st.confirm_text and st.button == "&Reprotect…"
    fbk = st.step("failback").prerequisites[0]
    assert not fbk.ok and fbk.text.endswith("not yet: db, web")
    assert "rh1" in st.summary


def test_an_unbooted_vm_holds_reprotect_back_by_name() -> None:
    v = PlanFailbackView.from_dict({"plan": "shop", "job": None, "machines": [
        {"group": 1, "machine": "web", "state": "failed-over", "failover": FO, "failback": None},
        {"group": 2, "machine": "db", "state": "failed-over", "failover": {**FO, "state": "booting"},
         "failback": None}]})
    st = build_plan_stepper(v, None)
    assert st.next_kind == "reprotect" and not st.step("reprotect").ready
    assert st.step("reprotect").prerequisites[1].text.endswith("not yet: db")


def test_one_machine_seeding_keeps_the_step_running() -> None:
    st = build_plan_stepper(view(fb("reprotected"), fb("reprotecting", seeded=False),
                                 job=job("plan-reprotect", "running", ["web", "db"])), None)
    assert statuses(st) == ["running", "waiting", "waiting"] and st.next_kind is None
    rows = {r.machine: r for r in st.step("reprotect").rows}
    assert rows["web"].status == "done" and rows["db"].status == "running"
    assert "40 blocks to send" in rows["db"].detail and "ETA 12s" in rows["db"].detail
    assert "2 of 2 machine(s) replicate back" in st.numbers and "compared 128.0 MiB" in st.numbers


def test_fail_back_waits_for_every_master_target_and_names_the_order() -> None:
    st = build_plan_stepper(view(fb("reprotected"), fb("reprotected", connected=False)), None)
    assert statuses(st) == ["done", "next", "waiting"] and not st.step("failback").ready
    seeded, site = st.step("failback").prerequisites
    assert seeded.ok and not site.ok and site.text.endswith("not yet: db")
    st = build_plan_stepper(view(fb("reprotected"), fb("reprotected")), None)
    assert st.step("failback").ready and st.button == "&Fail back…"
    assert st.confirm_text == "Fail plan shop back to the original disks: group 2 (db), then group 1 (web)?"
    assert "reverse order" in st.confirm_detail and "RPO 0" in st.confirm_detail


def test_a_running_plan_failback_and_a_failed_one() -> None:
    st = build_plan_stepper(view(fb("reprotected"), fb("failing-back"),
                                 job=job("plan-failback", "running", ["db", "web"])), None)
    assert statuses(st) == ["done", "running", "waiting"]
    assert {r.machine: r.status for r in st.step("failback").rows} == {"db": "running", "web": "running"}
    st = build_plan_stepper(view(fb("reprotected"), fb("failed-back"),
                                 job=job("plan-failback", "failed", ["db", "web"], {"db": "x"})), None)
    assert statuses(st) == ["done", "next", "waiting"]   # run it again: only web is left
    assert st.confirm_text.endswith("group 1 (web)?") and "LB_ORIGINAL_UNREACHABLE" in st.error


def test_failed_back_offers_reenable_then_protected_again() -> None:
    st = build_plan_stepper(view(fb("failed-back"), fb("failed-back"), state="failed-back"), None)
    assert statuses(st) == ["done", "done", "next"] and st.step("reenable").ready
    assert "web, db of plan shop" in st.confirm_text and "removed" in st.confirm_detail
    assert [r.detail for r in st.step("reenable").rows] == ["failed-back", "failed-back"]
    # re-enabled with the recovered VMs removed: the records went with them; the plan job says who it re-enabled
    st = build_plan_stepper(view(None, None, fo=None, state="protected",
                                 job=job("plan-reenable", "succeeded", ["web", "db"], {"web": "a", "db": "b"})), None)
    assert not st.applicable and "protected again" in st.summary


def test_a_step_runs_until_its_plan_job_ends() -> None:
    """Every machine reprotected but the plan job not ended yet: still running, nothing offered."""
    st = build_plan_stepper(view(fb("reprotected"), fb("reprotected"),
                                 job=job("plan-reprotect", "running", ["web", "db"])), None)
    assert statuses(st) == ["running", "waiting", "waiting"] and st.next_kind is None
    assert {r.status for r in st.step("reprotect").rows} == {"done"}


def test_this_consoles_request_shows_running_before_the_engine_job_exists() -> None:
    st = build_plan_stepper(view(None, None), "reprotect")
    assert statuses(st) == ["running", "waiting", "waiting"] and st.next_kind is None


def test_the_machine_stepper_is_unchanged() -> None:
    from engine.api import FailbackView
    st = build_stepper("web", FO, FailbackView.from_dict("web", fb("reprotected")), None, "reprotected")
    assert statuses(st) == ["done", "next", "waiting"] and st.button == "&Fail back…" and not st.plan
    assert st.confirm_title == "Fail back" and "RPO " in st.numbers and "compared 64.0 MiB" in st.numbers
