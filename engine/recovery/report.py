"""The DR report of a recovery-plan run (issue 13): what auditors ask for, as JSON and as one self-contained HTML
page (inline CSS, no scripts, nothing fetched), both in HOME/reports/ named by the run id.

Per machine: the point used, its age when the machine's failover started (the data-loss window), the time to boot
(RTO: from the start of its failover to the guest's boot line) and its failover steps; per action: start, end,
result, a script's output, and the operator who resumed a manual step; the job's steps with start, end and result.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
from pathlib import Path
from typing import Any

from ..errors import NotFound
from ..names import check_name, inside

REPORT_FORMAT = 1


def _when(t: float | None) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "-"


def _secs(v: float | None) -> str:
    return f"{v:.1f} s" if isinstance(v, (int, float)) else "-"


def build_report(run: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """The report document (the JSON file's content) of a run and its job's wire form."""
    res = job.get("result") or {}
    machines = []
    for g, group in enumerate(res.get("groups", []), start=1):
        for m in group["machines"]:
            e = res.get("machines", {}).get(m, {})
            skipped = f"g{g}-failover-{m}" in res.get("skipped", [])
            machines.append({"machine": m, "group": g, "state": "skipped" if skipped else e.get("state", "not started"),
                             "point": e.get("point"), "point_kind": e.get("point_kind"),
                             "point_time": e.get("point_time"), "point_age_seconds": e.get("point_age_seconds"),
                             "boot_seconds": e.get("boot_seconds"), "started": e.get("started"),
                             "ended": e.get("ended"), "address": e.get("address"), "networks": e.get("networks"),
                             "failover_job": e.get("failover_job"), "error": e.get("error"),
                             "steps": e.get("steps", [])})
    booted = [m["boot_seconds"] for m in machines if m["boot_seconds"] is not None]
    return {"format": REPORT_FORMAT, "id": run["id"], "plan": run["plan"], "test": run["test"], "host": run["host"],
            "point": run["point"], "state": job.get("state"), "error": job.get("error"), "job": job.get("id"),
            "started": job.get("started") or run["started"], "ended": job.get("ended"),
            "rto_seconds": round(job["ended"] - job["started"], 3) if job.get("ended") and job.get("started")
            else None, "max_boot_seconds": max(booted) if booted else None,
            "machines": machines, "actions": res.get("actions", {}), "resumed": res.get("resumed", []),
            "failures": res.get("failures", []), "skipped": res.get("skipped", []),
            "steps": job.get("steps", [])}


_CSS = """body{font:14px/1.4 sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #bbb;padding:4px 8px;text-align:left;vertical-align:top}th{background:#eee}
.succeeded,.booted{color:#176d17}.failed{color:#b00}pre{background:#f6f6f6;padding:6px;margin:0;white-space:pre-wrap}"""


def render_html(r: dict[str, Any]) -> str:
    e = html.escape
    kind = "Test failover" if r["test"] else "Failover"
    rows = "".join(
        f"<tr><td>{e(m['machine'])}</td><td>{m['group']}</td><td class='{e(m['state'])}'>{e(m['state'])}</td>"
        f"<td>{e(str(m['point'] or '-'))} ({e(str(m['point_kind'] or '-'))})<br>{_when(m['point_time'])}</td>"
        f"<td>{_secs(m['point_age_seconds'])}</td><td>{_secs(m['boot_seconds'])}</td>"
        f"<td>{e(m['address'] or '-')}</td><td>{e((m['error'] or {}).get('message', ''))}</td></tr>"
        for m in r["machines"])
    steps = "".join(
        f"<tr><td>{e(s['name'])}</td><td>{e(s['title'])}</td><td>{_when(s.get('started'))}</td>"
        f"<td>{_when(s.get('ended'))}</td><td class='{e(s['state'])}'>{e(s['state'])}</td>"
        f"<td>{e((s.get('error') or {}).get('message', '') or s.get('message', ''))}</td></tr>" for s in r["steps"])
    acts = ""
    for name, a in r["actions"].items():
        detail = (f"resumed by {e(str(a.get('resumed_by') or '-'))}<br>{e(a.get('text', ''))}" if a["kind"] == "manual"
                  else f"exit {e(str(a.get('exit')))}<pre>{e(a.get('output', ''))}</pre>")
        acts += (f"<tr><td>{e(name)}</td><td>{e(a['kind'])}</td><td>{_when(a.get('started'))}</td>"
                 f"<td>{_when(a.get('ended'))}</td><td>{detail}</td></tr>")
    fails = "".join(f"<tr><td>{e(f['step'])}</td><td>{_when(f['at'])}</td><td>{e(f['error'].get('code', ''))}: "
                    f"{e(f['error'].get('message', ''))}</td></tr>" for f in r.get("failures", []))
    who = "".join(f"<tr><td>{_when(x['at'])}</td><td>{e(str(x['by']))}</td><td>{e(' '.join(x['steps']))}</td></tr>"
                  for x in r.get("resumed", []))
    err = r.get("error") or {}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>DR report {e(r['plan'])} {e(r['id'])}</title>
<style>{_CSS}</style></head><body>
<h1>{kind} of recovery plan {e(r['plan'])}</h1>
<p>Run {e(r['id'])} (job {e(str(r['job']))}) on recovery host {e(r['host'])}, point {e(r['point'])}:
<b class="{e(str(r['state']))}">{e(str(r['state']))}</b>{(' — ' + e(err.get('code', '')) + ': ' + e(err.get('message', ''))) if err else ''}.
Started {_when(r['started'])}, ended {_when(r['ended'])}; plan RTO {_secs(r['rto_seconds'])}.</p>
<h2>Machines</h2>
<table><tr><th>Machine</th><th>Group</th><th>Result</th><th>Point used</th><th>Point age (data-loss window)</th>
<th>Time to boot (RTO)</th><th>Address</th><th>Error</th></tr>{rows}</table>
<h2>Actions</h2>
<table><tr><th>Step</th><th>Kind</th><th>Start</th><th>End</th><th>Result</th></tr>{acts}</table>
<h2>Failed attempts</h2>
<table><tr><th>Step</th><th>When</th><th>Error</th></tr>{fails}</table>
<p>Skipped by the operator: {e(', '.join(r.get('skipped', [])) or 'nothing')}.</p>
<h2>Operator actions</h2>
<table><tr><th>When</th><th>Operator (resume, retry or skip)</th><th>Steps</th></tr>{who}</table>
<h2>Steps</h2>
<table><tr><th>Step</th><th>What</th><th>Start</th><th>End</th><th>Result</th><th>Detail</th></tr>{steps}</table>
</body></html>
"""


def write_report(folder: Path, run: dict[str, Any], job: dict[str, Any]) -> str:
    """Write ``ID.json`` and ``ID.html`` into ``folder`` (atomically); returns the HTML file's path."""
    folder.mkdir(mode=0o700, exist_ok=True)
    r = build_report(run, job)
    out = {}
    for ext, text in (("json", json.dumps(r, indent=1)), ("html", render_html(r))):
        path = inside(folder, f"{check_name(run['id'], 'run id')}.{ext}")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        out[ext] = str(path)
    return out["html"]


def list_reports(folder: Path) -> list[dict[str, Any]]:
    """Every report in ``folder``, oldest first: id, plan, test, state, times, machines and the files."""
    out = []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            r = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        out.append({"id": r["id"], "plan": r["plan"], "test": r["test"], "host": r["host"], "state": r["state"],
                    "started": r["started"], "ended": r["ended"], "rto_seconds": r.get("rto_seconds"),
                    "machines": [{"machine": m["machine"], "point": m["point"],
                                  "point_age_seconds": m["point_age_seconds"], "boot_seconds": m["boot_seconds"]}
                                 for m in r["machines"]],
                    "json": str(p), "html": str(p.with_suffix(".html"))})
    out.sort(key=lambda r: r["started"] or 0)
    return out


def report_path(folder: Path, report_id: str) -> Path:
    """The HTML file of report ``report_id``; ``LB_UNKNOWN_REPORT`` when there is none."""
    path = inside(folder, f"{check_name(report_id, 'report id')}.html")
    if not path.is_file():
        raise NotFound(f"no DR report {report_id!r}", code="LB_UNKNOWN_REPORT",
                       advice="`lifeboat report list --home DIR` lists the reports.")
    return path
