"""A recovery plan's failback (issue 14) as three plan-level jobs over the per-machine steps of ``FailbackService``:
reprotect every machine of the plan, fail the plan back (its groups in reverse order, a group's machines in
parallel), re-enable protection of every machine.

Each is one job on the plan's queue (target ``plan:NAME``, kinds ``plan-reprotect``, ``plan-failback``,
``plan-reenable``) whose steps are the machines (``reprotect-M``, ``gN-failback-M``, ``reenable-M``); each step runs
that machine's own job (``reprotect``, ``failback``, ``reenable``) and waits for it. The prerequisites are checked
for the whole plan before anything starts (``check_*``: pure reads of the persisted records), so a refusal names
every machine that is not ready and nothing half-runs. A machine already past a step is left out of it: after a
failure, an interruption or an appliance restart the operator runs the same step again and only the rest runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import Conflict, LifeboatError, NotFound, NotReady, SourceUnreachable
from ..jobs import Job, JobKind, JobState, Plan, StepContext, StepSpec
from ..names import check_name

if TYPE_CHECKING:
    from .failback import FailbackService

PLAN_STEPS = ("reprotect", "failback", "reenable")
KINDS = {"reprotect": JobKind.PLAN_REPROTECT.value, "failback": JobKind.PLAN_FAILBACK.value,
         "reenable": JobKind.PLAN_REENABLE.value}
#: failback states after which a machine needs no reprotect / failback / re-enable any more
_PAST = {"reprotect": ("reprotected", "failing-back", "failed-back", "reenabled"),
         "failback": ("failed-back", "reenabled"), "reenable": ("reenabled",)}


def _names(machines: list[str]) -> str:
    return ", ".join(machines)


class PlanFailback:
    """The plan-level steps over one ``FailbackService`` (its plans, job manager, failover records)."""

    def __init__(self, service: FailbackService) -> None:
        self.service = service

    # what the plan holds and where each machine is ------------------------------------------------------------
    def members(self, plan: str) -> list[tuple[int, str]]:
        """(group number, machine) of every machine of ``plan``, in the plan's order."""
        p = self.service.plans.plan(check_name(plan, "plan name"))
        return [(n, str(m)) for n, g in enumerate(p["groups"], start=1) for m in g.get("machines", [])]

    def _fb_state(self, machine: str) -> str:
        return str((self.service.failback_of(machine) or {}).get("state") or "")

    def view(self, plan: str) -> dict[str, Any]:
        """Every machine of the plan with its failover record, its failback record (``failback_of``) and its
        machine state, and the newest plan-level failback job (wire form) or None."""
        rows = []
        for n, m in self.members(plan):
            try:
                state = str(self.service.state.row(m)["state"])
            except LifeboatError:   # removed from the appliance since it joined the plan
                state = "unknown"
            rows.append({"group": n, "machine": m, "state": state,
                         "failover": self.service.failover.failover_of(m), "failback": self.service.failback_of(m)})
        jobs = [j for j in self.service.manager.list(f"plan:{plan}") if j.kind in KINDS.values()]
        return {"plan": plan, "machines": rows, "job": jobs[-1].to_dict() if jobs else None}

    # prerequisites (pure: what each step would do, or why not) -------------------------------------------------
    def check_reprotect(self, plan: str) -> list[str]:
        """The machines a plan reprotect would start (every one not reprotected yet)."""
        members = [m for _, m in self.members(plan)]
        if not members:
            raise NotReady(f"recovery plan {plan!r} has no machines", code="LB_PLAN_INVALID",
                           advice="Add the machines to the plan first.")
        todo = [m for m in members if self._fb_state(m) not in _PAST["reprotect"]]
        if not todo:
            raise Conflict(f"every machine of plan {plan} is reprotected already", code="LB_ALREADY_REPROTECTED",
                           advice="Fail the plan back (`lifeboat plan failback`) when the original site should "
                                  "take over.")
        fo = {m: self.service.failover.failover_of(m) for m in todo}
        missing = [m for m in todo if fo[m] is None]
        if missing:
            raise NotFound(f"not failed over: {_names(missing)}", code="LB_NOT_FAILED_OVER",
                           advice=f"Fail plan {plan} over first (a real run), or remove these machines from it.")
        early = [m for m in todo if (fo[m] or {}).get("state") not in ("booted", "committed")]
        if early:
            raise NotReady(f"the recovered VM has not booted: {_names(early)}", code="LB_NOT_READY",
                           advice="Wait until the plan's run has booted them (`lifeboat vm list`).")
        return todo

    def check_failback(self, plan: str) -> list[tuple[int, str]]:
        """The (group, machine) pairs a plan failback would fail back: every machine must be reprotected (its
        seed done) with its original site connected, or failed back already."""
        members = self.members(plan)
        todo = [(n, m) for n, m in members if self._fb_state(m) not in _PAST["failback"]]
        if not todo:
            raise Conflict(f"every machine of plan {plan} is failed back already", code="LB_FAILED_BACK",
                           advice="Re-enable protection of the plan's machines.")
        views = {m: self.service.failback_of(m) or {} for _, m in todo}
        unready = [m for _, m in todo if views[m].get("state") != "reprotected" or not views[m].get("seeded")]
        if unready:
            raise NotReady(f"not reprotected yet: {_names(unready)}", code="LB_NOT_REPROTECTED",
                           advice="Reprotect every machine of the plan and wait until each is reprotected.")
        away = [m for _, m in todo if not views[m].get("target_connected")]
        if away:
            raise SourceUnreachable(f"the original site is not connected for: {_names(away)}",
                                    code="LB_ORIGINAL_UNREACHABLE",
                                    advice="Start the agents on the original site; fail back once each shows its "
                                           "target connected.")
        return todo

    def check_reenable(self, plan: str) -> list[str]:
        """The machines a plan re-enable would protect again: every one must be failed back (or re-enabled)."""
        members = [m for _, m in self.members(plan)]
        states = {m: self._fb_state(m) for m in members}
        todo = [m for m in members if states[m] not in _PAST["reenable"]]
        early = [m for m in todo if states[m] != "failed-back"]
        if early:
            raise NotReady(f"not failed back yet: {_names(early)}", code="LB_NOT_FAILED_BACK",
                           advice="Fail the plan back first.")
        if not todo:
            raise Conflict(f"every machine of plan {plan} is protected again", code="LB_ALREADY_PROTECTED",
                           advice="Nothing to do.")
        return todo

    # the jobs -----------------------------------------------------------------------------------------------------
    async def reprotect(self, plan: str, *, wait: bool = True) -> Job:
        """Reprotect every machine of the plan not reprotected yet, all in parallel (the recovered VMs keep
        running: order does not matter); returns once every seed is done (``wait``)."""
        todo = self.check_reprotect(plan)
        svc = self.service

        def step(m: str) -> StepSpec:
            async def run(ctx: StepContext) -> None:
                job = await svc.reprotect(m)
                res = job.result or {}
                ctx.result.setdefault("jobs", {})[m] = job.id
                ctx.note(f"{m} reprotected: compared {int(res.get('bytes_compared', 0)) >> 20} MiB, sent "
                         f"{int(res.get('data_bytes_sent', 0)) >> 20} MiB of data")
            return StepSpec(f"reprotect-{m}", f"Reprotect {m}", run, error_code="LB_ORIGINAL_UNREACHABLE")
        return await self._submit("reprotect", plan, Plan([[step(m) for m in todo]]), todo, wait)

    async def failback(self, plan: str, *, shutdown_timeout: float = 120.0, wait: bool = True) -> Job:
        """Fail back every machine of the plan not failed back yet: the plan's groups in reverse order (the last
        group to fail over is the first to come home), a group's machines in parallel."""
        todo = self.check_failback(plan)
        svc = self.service
        groups = sorted({n for n, _ in todo}, reverse=True)

        def step(n: int, m: str) -> StepSpec:
            async def run(ctx: StepContext) -> None:
                job = await svc.failback(m, shutdown_timeout=shutdown_timeout)
                ctx.result.setdefault("jobs", {})[m] = job.id
                ctx.note(f"{m} failed back (recovered VM shut down {(job.result or {}).get('shutdown', '?')}, "
                         "RPO 0)")
            return StepSpec(f"g{n}-failback-{m}", f"Group {n}: fail back {m}", run,
                            error_code="LB_ORIGINAL_UNREACHABLE")
        jp = Plan([[step(n, m) for g, m in todo if g == n] for n in groups])
        return await self._submit("failback", plan, jp, [m for _, m in todo], wait,
                                  {"groups": groups, "shutdown_timeout": shutdown_timeout})

    async def reenable(self, plan: str, *, remove_recovered: bool = False, wait: bool = True) -> Job:
        """Protect every failed-back machine of the plan again (differences only), in parallel;
        ``remove_recovered``: their recovered VMs, overlays and images go too."""
        todo = self.check_reenable(plan)
        svc = self.service

        def step(m: str) -> StepSpec:
            async def run(ctx: StepContext) -> None:
                r = await svc.reenable(m, remove_recovered=remove_recovered)
                ctx.result.setdefault("jobs", {})[m] = (r.get("job") or {}).get("id")
                ctx.note(f"{m} is {r.get('state')} again")
            return StepSpec(f"reenable-{m}", f"Re-enable protection of {m}", run, error_code="LB_SOURCE_UNREACHABLE")
        return await self._submit("reenable", plan, Plan([[step(m) for m in todo]]), todo, wait,
                                  {"remove_recovered": remove_recovered})

    async def _submit(self, what: str, plan: str, jp: Plan, machines: list[str], wait: bool,
                      extra: dict[str, Any] | None = None) -> Job:
        titles = {"reprotect": f"Reprotect plan {plan}", "failback": f"Fail back plan {plan}",
                  "reenable": f"Re-enable protection of plan {plan}"}
        mgr = self.service.manager
        job = mgr.submit(KINDS[what], f"plan:{plan}", jp, title=titles[what],
                         result={"plan": plan, "machines": machines, **(extra or {})})
        if not wait:
            return job
        await mgr.wait(job.id)
        if job.state != JobState.SUCCEEDED:
            raise self._error(job, what, plan)
        return job

    def _error(self, job: Job, what: str, plan: str) -> LifeboatError:
        exc = self.service.manager.exception(job.id)
        if isinstance(exc, LifeboatError):
            return exc
        err = job.error or {}
        return LifeboatError(err.get("message", f"{what} of plan {plan}: job {job.id} {job.state.value}"),
                             code=err.get("code"), advice=err.get("advice") or f"Run the plan's {what} again: "
                             "machines already past it are left out.")

