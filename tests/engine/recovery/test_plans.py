"""Recovery plans without a boot: the pure validation of a plan's groups, and the DR report rendered from a run's
job (self-contained HTML + JSON, listed and found by id)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import InvalidInput, NotFound
from engine.recovery.plans import validate_groups
from engine.recovery.report import list_reports, report_path, write_report


def _g(*machines: str) -> dict:
    return {"machines": list(machines), "before": [], "after": []}


def test_validation_names_the_field() -> None:
    ok = lambda m: None if m.startswith("p") else ("is not protected" if m == "u1" else "is not a registered machine")  # noqa: E731
    validate_groups([_g("p1", "p2"), _g("p3")], ok)
    cases = [([], "groups", "no group"), ([_g("p1"), _g()], "groups[2].machines", "group 2 has no machine"),
             ([_g("p1"), _g("p1")], "groups[2].machines", "at most one group"),
             ([_g("p1", "u1")], "groups[1].machines", "'u1' of group 1 is not protected"),
             ([_g("x9")], "groups[1].machines", "not a registered machine"),
             ([_g(*[f"p{i}" for i in range(101)])], "groups", "at most 100")]
    for groups, field, text in cases:
        with pytest.raises(InvalidInput) as ei:
            validate_groups(groups, ok)
        e = ei.value
        assert e.code == "LB_PLAN_INVALID" and e.details["field"] == field and text in e.message and e.advice


def test_report_is_self_contained_and_listed(tmp_path: Path) -> None:
    run = {"id": "r1", "plan": "web<tier>", "test": True, "host": "rh", "point": "latest", "started": 100.0}
    job = {"id": "j1", "state": "succeeded", "started": 100.0, "ended": 130.0, "error": None,
           "steps": [{"name": "g1-failover-a", "title": "Fail over a", "state": "succeeded", "started": 100.0,
                      "ended": 110.0}],
           "result": {"groups": [_g("a"), _g("b")],
                      "machines": {"a": {"state": "booted", "point": "c-5", "point_kind": "crash-consistent",
                                         "point_time": 95.0, "point_age_seconds": 5.0, "boot_seconds": 9.5},
                                   "b": {"state": "booted", "point": "a-6", "point_time": 90.0,
                                         "point_age_seconds": 20.0, "boot_seconds": 7.25}},
                      "actions": {"g2-before-1": {"kind": "manual", "text": "check <db>", "resumed_by": "ops (al)"},
                                  "g1-after-1": {"kind": "script", "exit": 0, "output": "hello & bye"}}}}
    html_path = Path(write_report(tmp_path, run, job))
    text = html_path.read_text()
    assert "<script" not in text and "http" not in text.split("<body>")[1]   # nothing fetched, nothing run
    assert "web&lt;tier&gt;" in text and "check &lt;db&gt;" in text and "hello &amp; bye" in text
    assert "resumed by ops (al)" in text and "9.5 s" in text and "20.0 s" in text
    doc = json.loads(html_path.with_suffix(".json").read_text())
    assert doc["rto_seconds"] == 30.0 and doc["max_boot_seconds"] == 9.5
    [r] = list_reports(tmp_path)
    assert [(m["machine"], m["point_age_seconds"], m["boot_seconds"]) for m in r["machines"]] == [
        ("a", 5.0, 9.5), ("b", 20.0, 7.25)]
    assert report_path(tmp_path, "r1") == html_path
    with pytest.raises(NotFound) as ei:
        report_path(tmp_path, "nope")
    assert ei.value.code == "LB_UNKNOWN_REPORT"


async def test_plans_survive_a_restart_and_left_runs_are_settled(tmp_path: Path) -> None:
    """In-process appliance, no boot: a plan with an unregistered-for-protection machine is shown not runnable with
    the field; a relative script is refused; after a restart a run left `running` reads as the state of its job
    (interrupted), and a test run's automatic cleanup that fell due while the appliance was down is carried out."""
    import time

    from engine.recovery.plans import PlanStore
    from tests.engine.harness import Site

    site = Site(tmp_path)
    app = await site.start_appliance()
    try:
        await site.register("vm1")
        assert app.plans is not None and app.db is not None
        app.plans.create("p")
        s = app.plans.add("p", 1, ["vm1"])
        assert not s["valid"] and s["problem"]["code"] == "LB_PLAN_INVALID"
        assert s["problem"]["details"]["field"] == "groups[1].machines" and "not protected" in s["problem"]["message"]
        with pytest.raises(InvalidInput) as ei:
            app.plans.action("p", 1, "before", script="relative.sh")
        assert ei.value.code == "LB_PLAN_INVALID" and ei.value.details["field"] == "script"
        with pytest.raises(InvalidInput) as ei:
            app.plans.add("p", 3, ["vm1"])
        assert ei.value.details["field"] == "group"
        app.plans.action("p", 1, "after", manual="tell the DBA")
        with pytest.raises(InvalidInput) as ei:
            await app.plans.run("p", "nohost", test=True)
        assert ei.value.code == "LB_PLAN_INVALID"
        now = time.time()
        store = PlanStore(app.db.db)
        for rid, state, test in (("r1", "running", False), ("r2", "succeeded", True)):
            store.put_run({"id": rid, "plan": "p", "job": f"job-{rid}", "host": "h", "test": test, "point": "latest",
                           "state": state, "machines": [], "started": now - 10, "ended": None,
                           "cleanup_at": now - 1 if test else None, "cleaned_at": None, "report": None})
    finally:
        await site.stop()
    app = await site.start_appliance()
    try:
        assert app.plans is not None
        await site.wait_for(lambda: app.plans.show("p")["runs"][-1]["cleaned_at"], 10, "the due cleanup")
        runs = {r["id"]: r for r in app.plans.show("p")["runs"]}
        assert runs["r1"]["state"] == "interrupted" and runs["r1"]["ended"]
        assert app.plans.show("p")["groups"][0]["after"] == [{"kind": "manual", "text": "tell the DBA"}]
        assert [p["name"] for p in app.plans.plans()] == ["p"]
    finally:
        await site.stop()
