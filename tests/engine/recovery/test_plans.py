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
