"""``lifeboat plan create|add|action|show|list|run|skip|commit|cancel|cleanup`` (the running appliance's control API, admin
certificate) and ``lifeboat report list|show`` (the report files in the appliance home; no appliance needed)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from ..policy import parse_duration
from .cli import client_for, emit, url_name

#: ``plan run`` waits until the run ends or pauses for an operator: as long as the plan's boots take.
RUN_TIMEOUT = 3600.0


def _when(t: float | None) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _plan_text(p: dict[str, Any]) -> str:
    lines = [f"recovery plan {p['name']}: {len(p['groups'])} group(s)"
             + ("" if p["valid"] else f"; NOT RUNNABLE: {p['problem']['code']}: {p['problem']['message']}")]
    for n, g in enumerate(p["groups"], start=1):
        lines.append(f"  group {n}: {' '.join(g['machines']) or '(no machine)'}")
        for side in ("before", "after"):
            for act in g[side]:
                what = (f"script {act['path']} (timeout {act['timeout']:g} s)" if act["kind"] == "script"
                        else f"manual: {act['text']}")
                lines.append(f"    {side}: {what}")
    for r in p.get("runs", [])[-3:]:
        lines.append(f"  run {r['id']} ({'test' if r['test'] else 'real'}, job {r['job']}): {r['state']} "
                     f"{_when(r['started'])}" + (f", cleaned up {_when(r['cleaned_at'])}" if r.get("cleaned_at") else "")
                     + (f"; report {r['report']}" if r.get("report") else ""))
    return "\n".join(lines)


def cmd_plan_create(a: argparse.Namespace) -> int:
    p = client_for(a).call("POST", "/v1/plans", {"name": a.plan})
    emit(p, a, f"recovery plan {p['name']} created")
    return 0


def cmd_plan_add(a: argparse.Namespace) -> int:
    p = client_for(a).call("POST", f"/v1/plans/{url_name(a.plan)}/machines", {"group": a.group, "machines": a.machines})
    emit(p, a, _plan_text(p))
    return 0


def cmd_plan_action(a: argparse.Namespace) -> int:
    body: dict[str, Any] = {"group": a.group, "when": "before" if a.before else "after"}
    if a.script is not None:
        body["script"] = str(Path(a.script).absolute())
        if a.timeout is not None:
            body["timeout"] = parse_duration(a.timeout, what="timeout")
    else:
        body["manual"] = a.manual
    p = client_for(a).call("POST", f"/v1/plans/{url_name(a.plan)}/actions", body)
    emit(p, a, _plan_text(p))
    return 0


def cmd_plan_show(a: argparse.Namespace) -> int:
    p = client_for(a).call("GET", f"/v1/plans/{url_name(a.plan)}")
    emit(p, a, _plan_text(p))
    return 0


def cmd_plan_list(a: argparse.Namespace) -> int:
    ps = client_for(a).call("GET", "/v1/plans")
    lines = [f"{p['name']:<24} {p['groups']} group(s), {p['machines']} machine(s); last run: "
             + (f"{p['last_run']['state']} {_when(p['last_run']['started'])}" if p["last_run"] else "never")
             for p in ps]
    emit(ps, a, "\n".join(lines) if lines else "no recovery plans")
    return 0


def cmd_plan_run(a: argparse.Namespace) -> int:
    if a.cleanup_after is not None and not a.test:
        from ..errors import InvalidInput
        raise InvalidInput("--cleanup-after is for test runs only", field="cleanup-after", code="LB_PLAN_INVALID",
                           advice="Add --test, or leave out --cleanup-after.")
    body: dict[str, Any] = {"host": a.host, "test": a.test, "point": a.point}
    if a.point_of:
        points: dict[str, str] = {}
        for item in a.point_of:
            machine, sep, spec = item.partition("=")
            if not sep or not machine.strip() or not spec.strip():
                from ..errors import InvalidInput
                raise InvalidInput(f"--point-of {item!r} is not MACHINE=POINT", field="point-of", code="LB_PLAN_INVALID",
                                   advice="Give e.g. --point-of web1=tag:before-upgrade (latest, latest-app, an id, "
                                          "tag:TAG or a time).")
            points[machine.strip()] = spec.strip()
        body["points"] = points
    if a.cleanup_after is not None:
        body["cleanup_after"] = parse_duration(a.cleanup_after, what="cleanup-after")
    r = client_for(a, RUN_TIMEOUT).call("POST", f"/v1/plans/{url_name(a.plan)}/run", body)
    job = r["job"]
    stopped = job["result"].get("stopped") or {}
    if job["state"] == "paused-for-operator" and stopped:
        for step, err in stopped.items():
            print(f"{err.get('code', 'LB_JOB_FAILED')}: plan {a.plan} (run {r['id']}, job {job['id']}) stopped at step "
                  f"{step}: {err.get('message', '')}\nwhat to do: {err.get('advice', '')} Then retry the step "
                  f"(lifeboat job resume --home {a.home} {job['id']}), skip it (lifeboat plan skip --home {a.home} "
                  f"{a.plan}) or cancel the plan (lifeboat plan cancel --home {a.home} {a.plan}).", file=sys.stderr)
        if a.json:
            emit(r, a, "")
        return 2
    if job["state"] == "paused-for-operator":
        text = (f"plan {a.plan} (run {r['id']}, job {job['id']}) waits for an operator: {job['message']}\n"
                f"When done, resume it: lifeboat job resume --home {a.home} {job['id']}")
    elif job["state"] == "succeeded":
        ms = job["result"]["machines"]
        text = "\n".join([f"plan {a.plan} ({'test' if a.test else 'real'} run {r['id']}) succeeded: "
                          f"{len(ms)} machine(s) booted; DR report: {r['report']}"]
                         + [f"  {m:<20} group {e['group']} point {e.get('point')} (age "
                            f"{e.get('point_age_seconds') or 0:.1f} s) booted in {e.get('boot_seconds') or 0:.1f} s"
                            for m, e in ms.items()])
    else:
        err = job.get("error") or {}
        print(f"{err.get('code', 'LB_JOB_FAILED')}: plan {a.plan} (run {r['id']}) {job['state']}: "
              f"{err.get('message', '')}\nwhat to do: {err.get('advice', 'See the DR report.')}\nDR report: "
              f"{r['report']}", file=sys.stderr)
        if a.json:
            emit(r, a, "")
        return 2
    emit(r, a, text)
    return 0


def cmd_plan_cancel(a: argparse.Namespace) -> int:
    r = client_for(a, 600.0).call("POST", f"/v1/plans/{url_name(a.plan)}/cancel", {})
    emit(r, a, f"run {r['run']} of plan {a.plan} cancelled; removed: {' '.join(r['removed']) or 'nothing'}")
    return 0


def cmd_plan_commit(a: argparse.Namespace) -> int:
    body = {"stop_timeout": a.stop_timeout} if a.stop_timeout else {}
    r = client_for(a, 3600.0).call("POST", f"/v1/plans/{url_name(a.plan)}/commit", body)
    emit(r, a, f"plan {a.plan} (run {r['run']}): committed {' '.join(r['committed']) or 'nothing'}")
    return 0


def cmd_plan_skip(a: argparse.Namespace) -> int:
    r = client_for(a).call("POST", f"/v1/plans/{url_name(a.plan)}/skip", {})
    emit(r, a, f"plan {a.plan}: skipped {' '.join(r['skipped'])}; the run goes on (job {r['job']})")
    return 0


def cmd_plan_cleanup(a: argparse.Namespace) -> int:
    r = client_for(a, 600.0).call("POST", f"/v1/plans/{url_name(a.plan)}/cleanup", {})
    emit(r, a, f"test run {r['run']} of plan {a.plan} cleaned up; removed: {' '.join(r['removed']) or 'nothing'}")
    return 0


def cmd_report_list(a: argparse.Namespace) -> int:
    from ..home import ApplianceHome
    from .report import list_reports
    rs = list_reports(ApplianceHome(Path(a.home)).reports)
    lines = [f"{r['id']:<14} {r['plan']:<20} {'test' if r['test'] else 'real'} {r['state']:<10} "
             f"{_when(r['started'])}  " + ", ".join(f"{m['machine']} (point age {m['point_age_seconds'] or 0:.0f} s, "
                                                   f"boot {m['boot_seconds'] or 0:.1f} s)" for m in r["machines"])
             for r in rs]
    emit(rs, a, "\n".join(lines) if lines else "no DR reports")
    return 0


def cmd_report_show(a: argparse.Namespace) -> int:
    from ..home import ApplianceHome
    from .report import report_path
    p = report_path(ApplianceHome(Path(a.home)).reports, a.id)
    emit({"id": a.id, "html": str(p), "json": str(p.with_suffix(".json"))}, a, str(p))
    return 0


def add_subcommands(sub: Any) -> None:
    def home(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--home", required=True, help="the appliance's home folder")
        sp.add_argument("--json", action="store_true", help="one JSON document on stdout")

    ps = sub.add_parser("plan", help="recovery plans: create, add, action, show, list, run, cancel, cleanup"
                        ).add_subparsers(dest="sub", required=True)
    s = ps.add_parser("create", help="a new, empty recovery plan"); home(s); s.add_argument("plan")
    s.set_defaults(fn=cmd_plan_create)
    s = ps.add_parser("add", help="add machines to a group (the next number adds a group)"); home(s)
    s.add_argument("plan"); s.add_argument("--group", type=int, required=True); s.add_argument("machines", nargs="+")
    s.set_defaults(fn=cmd_plan_add)
    s = ps.add_parser("action", help="a script or manual action before or after a group"); home(s)
    s.add_argument("plan"); s.add_argument("--group", type=int, required=True)
    w = s.add_mutually_exclusive_group(required=True)
    w.add_argument("--before", action="store_true"); w.add_argument("--after", action="store_true")
    k = s.add_mutually_exclusive_group(required=True)
    k.add_argument("--script", metavar="PATH", help="run on the appliance; env LIFEBOAT_PLAN, LIFEBOAT_GROUP, "
                   "LIFEBOAT_MACHINES, LIFEBOAT_ADDRESSES, LIFEBOAT_ADDRESS_<MACHINE>, LIFEBOAT_TEST")
    k.add_argument("--manual", metavar="TEXT", help="the instruction the run pauses with until `job resume`")
    s.add_argument("--timeout", help="a script's time limit (default 5m)")
    s.set_defaults(fn=cmd_plan_action)
    s = ps.add_parser("show", help="a plan's groups and actions"); home(s); s.add_argument("plan")
    s.set_defaults(fn=cmd_plan_show)
    s = ps.add_parser("list", help="the recovery plans"); home(s); s.set_defaults(fn=cmd_plan_list)
    s = ps.add_parser("run", help="run a plan (waits until it ends or pauses for an operator)"); home(s)
    s.add_argument("plan"); s.add_argument("--host", required=True)
    s.add_argument("--test", action="store_true", help="a test failover: every NIC on the host's isolated network")
    s.add_argument("--cleanup-after", metavar="DURATION", help="remove a test run's VMs after this long (e.g. 2h)")
    s.add_argument("--point", default="latest", choices=["latest", "latest-app"])
    s.add_argument("--point-of", action="append", metavar="MACHINE=POINT",
                   help="a machine's own point (latest, latest-app, ID, tag:TAG or TIME); repeatable")
    s.set_defaults(fn=cmd_plan_run)
    s = ps.add_parser("cancel", help="cancel the plan's last run and remove its VMs"); home(s); s.add_argument("plan")
    s.set_defaults(fn=cmd_plan_cancel)
    s = ps.add_parser("commit", help="keep the machines of the plan's last real run (standalone images)"); home(s)
    s.add_argument("plan")
    s.add_argument("--stop-timeout", metavar="DURATION",
                   help="how long each guest may take to shut down before it is powered off (default 60s)")
    s.set_defaults(fn=cmd_plan_commit)
    s = ps.add_parser("skip", help="skip the failed step the plan's run is stopped at"); home(s)
    s.add_argument("plan"); s.set_defaults(fn=cmd_plan_skip)
    s = ps.add_parser("cleanup", help="remove what the plan's last test run made"); home(s); s.add_argument("plan")
    s.set_defaults(fn=cmd_plan_cleanup)
    from .failback_cli import add_plan_subcommand   # plan failback (issue 14)
    add_plan_subcommand(ps)

    rs = sub.add_parser("report", help="DR reports of plan runs").add_subparsers(dest="sub", required=True)
    s = rs.add_parser("list", help="the DR reports in the appliance home"); home(s); s.set_defaults(fn=cmd_report_list)
    s = rs.add_parser("show", help="print the HTML report's path"); home(s); s.add_argument("id")
    s.set_defaults(fn=cmd_report_show)
