"""A recovery plan's failback steps without a boot (engine/recovery/plan_failback.py through engine.api): the plan
view in one read, and each step refused for the whole plan before anything starts, naming every machine that
holds it back (no plan job is submitted). The steps on real boots: tests/ui/test_plan_failback_stepper.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine import rpc_codec
from engine.agent.register import register
from engine.api import EmbeddedAppliance, FailbackView, PlanFailbackView, console_types
from engine.errors import LifeboatError
from tests.engine.harness import Site


async def test_plan_steps_are_refused_by_name_before_any_job(tmp_path: Path) -> None:
    site = Site(tmp_path)
    app = await site.start_appliance()
    try:
        assert app.control_address is not None and app.plans is not None
        for m in ("web", "db"):
            await asyncio.to_thread(register, tmp_path / f"agent-{m}", f"127.0.0.1:{app.control_address[1]}",
                                    site.ahome / "passphrase.txt", m)
        app.plans.create("shop")
        app.plans.add("shop", 1, ["web"])
        app.plans.add("shop", 2, ["db"])
        app.plans.create("empty")
        emb = EmbeddedAppliance.over(app)

        v = emb.plan_failback_state("shop")
        assert isinstance(v, PlanFailbackView) and v.job is None
        assert [(m.machine, m.group, m.failover, m.failback) for m in v.machines] == [("web", 1, None, None),
                                                                                       ("db", 2, None, None)]
        cases = [(emb.plan_reprotect("shop"), "LB_NOT_FAILED_OVER", "not failed over: web, db"),
                 (emb.plan_failback("shop"), "LB_NOT_REPROTECTED", "not reprotected yet: web, db"),
                 (emb.plan_reenable("shop"), "LB_NOT_FAILED_BACK", "not failed back yet: web, db"),
                 (emb.plan_reprotect("empty"), "LB_PLAN_INVALID", "has no machines"),
                 (emb.plan_failback("nope"), "LB_UNKNOWN_PLAN", "no recovery plan named 'nope'")]
        for call, code, text in cases:
            with pytest.raises(LifeboatError) as ei:
                await call
            assert ei.value.code == code and text in ei.value.message and ei.value.advice, ei.value.to_dict()
        assert not [j for j in app.jobs.list() if j.kind.startswith("plan-")]
        with pytest.raises(LifeboatError) as ei:
            emb.plan_failback_state("nope")
        assert ei.value.code == "LB_UNKNOWN_PLAN"
    finally:
        await site.stop()


def test_the_plan_view_crosses_the_console_link() -> None:
    """What an attached console receives: the nested views come back as the same classes."""
    fb = {"state": "reprotected", "target": {"kind": "original", "disks": {}}, "target_connected": True,
          "seeded": True, "bytes_compared": 1 << 26, "bytes_sent": 1 << 21, "rpo_seconds": 1.0}
    v = PlanFailbackView.from_dict({"plan": "shop", "machines": [
        {"group": 2, "machine": "db", "state": "failed-over", "failover": {"host": "rh", "state": "booted"},
         "failback": fb}],
        "job": {"id": "j", "kind": "plan-reprotect", "machine": "plan:shop", "state": "succeeded",
                "result": {"jobs": {"db": "k"}}}})
    back = rpc_codec.loads(rpc_codec.dumps(v), console_types())
    assert back == v and isinstance(back.machines[0].failback, FailbackView)
    assert back.machines[0].failback.seeded and back.job is not None and back.job.kind == "plan-reprotect"
