"""``lifeboat``: the command line. Errors print their code, message and advice (no traceback unless --debug)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import socket
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from . import platform
from .errors import InvalidInput, LifeboatError
from .net import parse_address
from .policy import format_duration, format_size, parse_duration, parse_size


def _progress(fraction: float, label: str) -> None:
    if not sys.stderr.isatty():
        return
    width = 40
    fill = int(width * max(0.0, min(fraction, 1.0)))
    sys.stderr.write(f"\r{label} [{'#' * fill}{'.' * (width - fill)}] {fraction * 100:5.1f}%")
    sys.stderr.flush()
    if fraction >= 1.0:
        sys.stderr.write("\n")


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        json.dump(obj, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(obj)


def _q(name: str) -> str:
    """A name as one URL path segment (the appliance checks it by the name rule; a '/' must not add segments)."""
    return urllib.parse.quote(name, safe="")


# appliance ---------------------------------------------------------------------------------------------------
def cmd_appliance_init(a: argparse.Namespace) -> int:
    os.umask(0o077)   # keys, certificates, database: the appliance's own only
    from .appliance.appliance import init_home
    cfg = init_home(Path(a.home), control_port=a.control_port, data_port=a.data_port,
                    vault=Path(a.vault) if a.vault else None, listen=a.listen)
    print(f"appliance initialised in {a.home}")
    print(f"  control API  https://{socket.gethostname()}:{cfg['control_port']}")
    print(f"  data port    {cfg['data_port']}")
    print(f"  vault        {cfg['vault']['path']} (key in the OS keyring)")
    print(f"  passphrase   {Path(a.home) / 'passphrase.txt'} (mode 0600; give it to agents at registration)")
    return 0


def cmd_appliance_run(a: argparse.Namespace) -> int:
    from .home import ApplianceHome
    from .service.core import ServiceCore, setup_logging

    os.umask(0o077)   # the appliance role runs as root: every file and folder it creates is its own only
    home = ApplianceHome(Path(a.home))
    home.load_config()
    setup_logging(home, debug=a.debug)

    async def main() -> None:
        stop = asyncio.Event()
        platform.on_terminate(asyncio.get_running_loop(), stop.set)
        await ServiceCore(home.root, listen=a.listen, on_ready=lambda line: print(line, flush=True)).run(stop)
    asyncio.run(main())
    return 0


# agent -----------------------------------------------------------------------------------------------------
def cmd_agent_register(a: argparse.Namespace) -> int:
    from .agent.register import register
    cfg = register(Path(a.home), a.appliance, Path(a.passphrase_file), a.name)
    print(f"registered {cfg['name']} with {cfg['appliance'][0]}:{cfg['appliance'][1]} (CA sha256 {cfg['ca_sha256']})")
    return 0


def cmd_agent_run(a: argparse.Namespace) -> int:
    from .agent.agent import Agent
    disks: dict[str, Path] = {}
    for spec in a.disk:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise InvalidInput(f"--disk {spec!r} is not NAME=PATH")
        if name in disks:
            raise InvalidInput(f"disk name {name!r} given twice")
        disks[name] = Path(path)

    async def main() -> None:
        agent = Agent(Path(a.home), disks, parse_address(a.nbd, any_port=True, what="--nbd"), pre_bookmark=a.pre_bookmark,
                      post_bookmark=a.post_bookmark)
        await agent.start()
        assert agent.nbd_address
        print(f"agent {agent.name} serving {', '.join(disks)} on nbd://{agent.nbd_address[0]}:{agent.nbd_address[1]}",
              flush=True)
        stop = asyncio.Event()
        platform.on_terminate(asyncio.get_running_loop(), stop.set)
        await stop.wait()
        await agent.stop()
    asyncio.run(main())
    return 0


def _agent_call(home: Path, req: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    from .home import AgentHome
    h = AgentHome(home)
    h.load_config()
    try:
        s = platform.connect_control(h.socket, timeout)
    except OSError:
        raise LifeboatError("the agent is not running", code="LB_AGENT_NOT_RUNNING",
                            advice=f"Start it: `lifeboat agent run --home {home} --disk NAME=PATH --nbd HOST:PORT`.") from None
    with s:
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    resp = json.loads(buf or b"{}")
    if not resp.get("ok"):
        err = resp.get("error", {})
        raise LifeboatError(err.get("message", "agent refused"), code=err.get("code"), advice=err.get("advice"))
    return resp


def cmd_agent_bookmark(a: argparse.Namespace) -> int:
    resp = _agent_call(Path(a.home), {"op": "bookmark", "tag": a.tag})
    _print(resp if a.json else f"bookmark {resp['point_id']} tag={resp['tag']}", a.json)
    return 0


def cmd_agent_status(a: argparse.Namespace) -> int:
    resp = _agent_call(Path(a.home), {"op": "status"})
    _print(resp if a.json else f"agent {resp['name']}: {'connected' if resp['connected'] else 'not connected'}, "
           f"seq {resp['seq']}, acked {resp['acked_seq']}, sent {resp.get('bytes_sent', 0)} B"
           + (", master target (failback)" if resp.get("reverse") else ""), a.json)
    return 0


# admin -----------------------------------------------------------------------------------------------------
def _client(a: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .client import AdminClient
    return AdminClient(Path(a.home))


def cmd_bookmark(a: argparse.Namespace) -> int:
    """An app-consistent bookmark asked by the appliance of the machine's agent; waits until its point is in the
    vault (``--wait``, default 60 s) and prints it."""
    tag = a.tag or "bookmark-" + time.strftime("%Y%m%d-%H%M%S")
    c = _client(a)
    c.call("POST", f"/v1/machines/{_q(a.machine)}/bookmark", {"tag": tag})
    deadline = time.monotonic() + a.wait
    while True:
        pts = [p for p in c.call("GET", f"/v1/machines/{_q(a.machine)}/points") if p.get("tag") == tag]
        if pts:
            p = pts[-1]
            _print({"machine": a.machine, "point_id": p["id"], "tag": tag, "seq": p.get("seq"), "time": p["time"]}
                   if a.json else f"{a.machine}: bookmark {p['id']} tag={tag} is in the vault", a.json)
            return 0
        if time.monotonic() >= deadline:
            raise LifeboatError(f"the agent of {a.machine!r} was asked for bookmark {tag!r}, but its point did not "
                                f"reach the vault within {a.wait:g} s", code="LB_BOOKMARK_TIMEOUT",
                                advice="Check the machine's state and RPO (`lifeboat status`); the point appears "
                                       "in `lifeboat points` once the backlog is in the vault.")
        time.sleep(0.2)


def cmd_protect(a: argparse.Namespace) -> int:
    st = _client(a).call("POST", f"/v1/machines/{_q(a.machine)}/protect", {"policy": a.policy})
    _print(st if a.json else f"{a.machine}: protection enabled (policy {st['policy']}), state {st['state']}", a.json)
    return 0


def _policy_line(p: dict[str, Any]) -> str:
    limit = p.get("history_limit") or 0
    return (f"policy {p['name']}: rpo-threshold {format_duration(p['rpo_threshold'])}, "
            f"retention {format_duration(p['retention'])}, app-consistent {format_duration(p['app_consistent'])}, "
            f"crash-interval {format_duration(p['crash_interval'])}, resync-window {p['resync_window']}, "
            f"history-limit {format_size(limit) if limit else 'none'}")


def cmd_policy_set(a: argparse.Namespace) -> int:
    body: dict[str, Any] = {k: (parse_duration(v, what=k) if v is not None else None) for k, v in
                            (("rpo_threshold", a.rpo_threshold), ("retention", a.retention),
                             ("app_consistent", a.app_consistent), ("crash_interval", a.crash_interval))}
    body["resync_window"] = a.resync_window
    if a.history_limit is not None:
        body["history_limit"] = parse_size(a.history_limit, what="history-limit")
    p = _client(a).call("PUT", f"/v1/policies/{_q(a.name)}", body)
    _print(p if a.json else _policy_line(p), a.json)
    return 0


def cmd_policy_list(a: argparse.Namespace) -> int:
    ps = _client(a).call("GET", "/v1/policies")
    _print(ps if a.json else "\n".join(_policy_line(p) for p in ps), a.json)
    return 0


def cmd_appliance_set(a: argparse.Namespace) -> int:
    """Appliance-wide settings in appliance.json; a running appliance picks them up at its next round."""
    from .home import ApplianceHome
    from .policy import DEFAULT_VAULT_RESERVE, parse_reserve
    h = ApplianceHome(Path(a.home))
    cfg = h.load_config()
    from .policy import format_duration, parse_duration
    from .recovery.pins import DEFAULT_PIN_ALERT_AFTER
    if a.vault_reserve is not None:
        cfg.setdefault("vault", {})["reserve"] = parse_reserve(a.vault_reserve)
    if a.pin_alert_after is not None:
        cfg.setdefault("recovery", {})["pin_alert_after"] = parse_duration(a.pin_alert_after,
                                                                           what="--pin-alert-after")
    if a.vault_reserve is not None or a.pin_alert_after is not None:
        h.save_config(cfg)
    reserve = (cfg.get("vault") or {}).get("reserve", DEFAULT_VAULT_RESERVE)
    pin_after = float((cfg.get("recovery") or {}).get("pin_alert_after", DEFAULT_PIN_ALERT_AFTER))
    shown = reserve if str(reserve).endswith("%") else format_size(int(reserve))
    _print({"vault_reserve": reserve, "pin_alert_after": pin_after} if a.json else
           f"vault reserve {shown} (free space kept on the vault's filesystem: below it the oldest history is "
           f"folded)\npin alert after {format_duration(pin_after)} (a drill or unfinished failover that long holds "
           "history from being folded: alert)", a.json)
    return 0


def cmd_vault_set(a: argparse.Namespace) -> int:
    """Choose the vault (Azure Blob); the key or SAS token comes on standard input, never on the command line."""
    from .appliance.vault_settings import set_azure_vault
    if a.kind != "azure":
        raise InvalidInput(f"vault kind {a.kind!r}: only 'azure' can be set (a new home's vault is local)")
    secret = sys.stdin.readline().strip()
    out = set_azure_vault(Path(a.home), a.account_url, a.container, key=secret if a.key_stdin else None,
                          sas=secret if a.sas_stdin else None)
    _print(out if a.json else f"vault: azure {out['account_url']} container {out['container']} "
           f"(checked in {out['check']['latency_ms']} ms; credential in the OS keyring)", a.json)
    return 0


def cmd_vault_show(a: argparse.Namespace) -> int:
    from .appliance.vault_settings import show_vault
    out = show_vault(Path(a.home))
    _print(out if a.json else "\n".join(f"{k}: {v}" for k, v in out.items()), a.json)
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    st = _client(a).call("GET", "/v1/status")
    if a.json:
        _print(st, True)
        return 0
    if st.get("state") == "locked":   # engine/appliance/locked.py: no vault key in the appliance's keyring
        err = st.get("error") or {}
        print(f"appliance locked: {err.get('code', 'LB_KEYRING')}: {err.get('message', '')}\n  {err.get('advice', '')}")
        return 3
    if not st["machines"] and not st["registered"] and not st.get("revoked"):
        print("no machines registered")
    for m in st["machines"]:
        extra = ""
        if m["state"] == "initial-sync":
            eta = m.get("sync_eta_seconds")
            extra = f" {m['sync_progress'] * 100:.1f}%" + (f" ETA {eta / 60:.0f} min" if eta is not None and eta >= 90 else
                                                     f" ETA {eta:.0f}s" if eta is not None else "")
        rs = m.get("resync") or {}
        if m["state"] == "resyncing":
            extra = f" {rs['progress'] * 100:.1f}%" + (f" ETA {rs['eta_seconds']:.0f}s" if rs.get("eta_seconds") else "")
        print(f"{m['name']:<24} {m['state'] + extra:<22} RPO {m['rpo_seconds']:>8.1f}s  {m['health']:<8} "
              f"points {m['points']}")
        if rs.get("required"):
            when = (dt.datetime.fromtimestamp(rs["scheduled_for"]).astimezone().isoformat(timespec="minutes")
                    if rs.get("scheduled_for") else "now")
            print(f"{'':<24} resync: {rs.get('reason')}; {'running' if rs.get('running') else 'scheduled ' + when}"
                  + (f"; error {rs['error']['code']}: {rs['error']['message']}" if rs.get("error") else ""))
        if m.get("error"):
            print(f"{'':<24} error: {m['error']}")
        if m.get("failover"):
            fo = m["failover"]
            if m["state"] == "failover-test":
                print(f"{'':<24} test failover on {fo['host']} at point {fo['point']} (VM {fo['state']}); "
                      "replication goes on")
            else:
                print(f"{'':<24} failed over to {fo['host']} at point {fo['point']} (VM {fo['state']}); replication "
                      "stopped")
        if m.get("direction") == "reverse":
            print(f"{'':<24} reverse replication: {m['progress'] * 100:.1f}%, compared {m['bytes_compared']} B, "
                  f"sent {m['bytes_sent']} B" + (f", ETA {m['eta']:.0f}s" if m.get("eta") else ""))
    for m in st["registered"]:
        print(f"{m['name']:<24} registered, not protected")
    for m in st.get("revoked", []):
        when = dt.datetime.fromtimestamp(m["revoked_at"]).astimezone().isoformat(timespec="seconds") \
            if m.get("revoked_at") else "earlier"
        print(f"{m['name']:<24} revoked {when} by {m.get('revoked_by') or 'an operator'}")
    return 0


def cmd_points(a: argparse.Namespace) -> int:
    pts = _client(a).call("GET", f"/v1/machines/{_q(a.machine)}/points")
    if a.json:
        _print(pts, True)
        return 0
    for p in pts:
        t = dt.datetime.fromtimestamp(p["time"], dt.timezone.utc).isoformat(timespec="milliseconds")
        print(f"{p['id']:<14} {t}  {p['kind']:<17} {p['tag'] or ''}")
    return 0


def cmd_failover(a: argparse.Namespace) -> int:
    if a.planned and (a.test or a.point is not None):
        raise InvalidInput("a planned failover takes no --test and no --point: it fails over to the final point "
                           "taken after the source is quiesced", field="planned",
                           advice="Drop --point (planned), or drop --planned and choose the point.")
    a.point = a.point or "latest"
    if not a.test:
        if a.export or a.nbd or not a.host:
            raise InvalidInput("a failover (without --test) needs --host NAME and takes no --export/--nbd",
                               advice="Fail over with `lifeboat failover --home DIR MACHINE --host NAME --point P`, "
                                      "or run a drill with --test --export DIR | --nbd HOST:PORT.")
        from .recovery.cli import cmd_failover_host
        return cmd_failover_host(a)
    if bool(a.export) == bool(a.nbd):
        raise InvalidInput("a drill (--test) needs one of --export DIR or --nbd HOST:PORT")
    export = os.path.abspath(a.export) if a.export else None   # not resolve(): a link is refused, not followed
    c = _client(a)
    job = c.call("POST", f"/v1/machines/{_q(a.machine)}/failover", {"point": a.point, "export_dir": export, "nbd": a.nbd})
    while not job["finished"]:
        _progress(job["progress"], f"drill {a.machine}")
        time.sleep(0.2)
        job = c.call("GET", f"/v1/jobs/{job['id']}")
    _progress(1.0, f"drill {a.machine}")
    if job["error"]:
        e = job["error"]
        raise LifeboatError(e["message"], code=e["code"], advice=e.get("advice"))
    if a.json:
        _print(job["result"] | {"job": job["id"]}, True)
    else:
        p = job["result"]["point"]
        where = (f"served on nbd://{job['result']['nbd']}/<disk> ({', '.join(job['result']['exports'])})"
                 if a.nbd else f"exported to {', '.join(job['result']['files'])}")
        print(f"drill of {a.machine} at point {p['id']} ({p['kind']}) {where}")
    return 0


def cmd_resync(a: argparse.Namespace) -> int:
    c = _client(a)
    rs = c.call("POST", f"/v1/machines/{_q(a.machine)}/resync", {"now": a.now})
    if a.json:
        _print(rs, True)
        return 0
    if rs.get("scheduled_for") and not a.now:
        when = dt.datetime.fromtimestamp(rs["scheduled_for"]).astimezone().isoformat(timespec="minutes")
        print(f"resync of {a.machine} scheduled for {when} (policy resync window); use --now to start it now")
        return 0
    while True:  # show progress until done
        st = c.call("GET", "/v1/status")
        m = next((x for x in st["machines"] if x["name"] == a.machine), None)
        if m is None or not m["resync"]["required"]:
            _progress(1.0, f"resync {a.machine}")
            break
        _progress(m["resync"]["progress"], f"resync {a.machine}")
        if not sys.stderr.isatty():
            print(f"resync of {a.machine} started ({m['resync']['reason']})")
            break
        time.sleep(0.5)
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    r = _client(a).call("POST", f"/v1/machines/{_q(a.machine)}/verify", {"heal": not a.no_heal})
    if a.json:
        _print(r, True)
    else:
        print(f"{a.machine}: {r['records_checked']} records and {r['blocks_checked']} replica blocks checked, "
              f"{'all intact' if r['ok'] else str(len(r['problems'])) + ' problem(s)'}")
        for p in r["problems"]:
            print(f"  {p['what']}: {p['error']}")
        if r["healing"]:
            print("  a resync of the affected range was started to heal it")
    return 0 if r["ok"] else 3


def cmd_failover_cleanup(a: argparse.Namespace) -> int:
    r = _client(a).call("POST", f"/v1/machines/{_q(a.machine)}/failover-cleanup")
    _print(r if a.json else f"drill of {a.machine} cleaned up", a.json)
    return 0


def cmd_machine_revoke(a: argparse.Namespace) -> int:
    r = _client(a).call("POST", f"/v1/machines/{_q(a.machine)}/revoke")
    _print(r if a.json else f"{a.machine} revoked: its certificate is refused and its name cannot register again "
           f"until `lifeboat machine restore-access --home {a.home} {a.machine}`", a.json)
    return 0


def cmd_machine_restore_access(a: argparse.Namespace) -> int:
    r = _client(a).call("POST", f"/v1/machines/{_q(a.machine)}/restore-access")
    _print(r if a.json else f"{a.machine} may register again (its vault and points are kept); next: {r['next']}",
           a.json)
    return 0


def _when(t: float | None) -> str:
    return dt.datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _job_line(j: dict[str, Any]) -> str:
    note = f"{j['error']['code']}: {j['error']['message']}" if j.get("error") else j.get("message", "")
    return (f"{j['id']:<13} {j.get('kind', j['operation']):<17} {j['machine'] or '-':<18} "
            f"{j.get('state', 'succeeded' if j['finished'] else 'running'):<20} {j['progress'] * 100:5.1f}%  "
            f"{_when(j.get('created'))}  {note}")


def cmd_jobs(a: argparse.Namespace) -> int:
    jobs = _client(a).jobs(a.machine, active=a.active)
    if a.json:
        _print(jobs, True)
        return 0
    if not jobs:
        print("no jobs")
        return 0
    print(f"{'ID':<13} {'KIND':<17} {'MACHINE':<18} {'STATE':<20} {'PROGRESS':>6}  {'CREATED':<19}  MESSAGE")
    for j in jobs:
        print(_job_line(j))
    return 0


def cmd_job_show(a: argparse.Namespace) -> int:
    j = _client(a).job(a.id)
    if a.json:
        _print(j, True)
        return 0
    print(f"job {j['id']}: {j.get('title') or j['operation']}")
    print(f"  kind {j['operation']}, machine {j['machine'] or '-'}, state {j.get('state')}, "
          f"progress {j['progress'] * 100:.1f}%")
    print(f"  created {_when(j.get('created'))}, started {_when(j.get('started'))}, ended {_when(j.get('ended'))}")
    if j.get("error"):
        e = j["error"]
        print(f"  error {e['code']}: {e['message']}\n    what to do: {e.get('advice', '')}")
    elif j.get("message"):
        print(f"  {j['message']}")
    if j.get("steps"):
        print(f"  {'#':<3} {'STEP':<16} {'STATE':<20} {'PROGRESS':>8}  {'STARTED':<19}  {'ENDED':<19}  TITLE")
        for st in j["steps"]:
            note = f" ({st['error']['code']}: {st['error']['message']})" if st.get("error") else (
                f" ({st['message']})" if st.get("message") else "")
            print(f"  {st['group']:<3} {st['name']:<16} {st['state']:<20} {st['progress'] * 100:7.1f}%  "
                  f"{_when(st.get('started')):<19}  {_when(st.get('ended')):<19}  {st['title']}{note}")
    if j.get("result"):
        print(f"  result {json.dumps(j['result'])}")
    return 0


def cmd_job_cancel(a: argparse.Namespace) -> int:
    j = _client(a).cancel_job(a.id)
    _print(j if a.json else f"job {j['id']} ({j['operation']}): {j.get('state')}", a.json)
    return 0


def cmd_job_resume(a: argparse.Namespace) -> int:
    j = _client(a).resume_job(a.id)
    _print(j if a.json else f"job {j['id']} ({j['operation']}) resumed: {j.get('state')}", a.json)
    return 0


# alerts and events ---------------------------------------------------------------------------------------------
def _since(text: str | None) -> float | None:
    """--since: epoch seconds, a duration ago ("15m", "2h", "1d") or an ISO date/time (local unless it says)."""
    if text is None:
        return None
    try:
        v = float(text)
        if v >= 0:
            return v
    except ValueError:
        pass
    try:
        return time.time() - parse_duration(text, what="--since")
    except InvalidInput:
        pass
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise InvalidInput(f"--since {text!r} is not a time", field="since",
                           advice="Give a duration ago (15m, 2h, 1d), an ISO time (2026-12-04T15:25) or epoch "
                                  "seconds.") from None


def cmd_alerts_list(a: argparse.Namespace) -> int:
    alerts = _client(a).alerts(active=not a.all)
    if a.json:
        _print(alerts, True)
        return 0
    if not alerts:
        print("no active alerts" if not a.all else "no alerts")
        return 0
    print(f"{'SEVERITY':<9} {'ID':<40} {'RAISED':<19}  {'STATE':<12} {'COUNT':>5}  MESSAGE")
    for al in alerts:
        state = "cleared" if al.get("cleared_at") else ("acknowledged" if al.get("acknowledged_at") else "active")
        print(f"{al['severity']:<9} {al['id']:<40} {_when(al.get('raised_at')):<19}  {state:<12} "
              f"{al.get('count', 1):>5}  {al['message']}")
        if al.get("advice") and not al.get("cleared_at"):
            print(f"{'':<9} what to do: {al['advice']}")
        if al.get("acknowledged_at"):
            print(f"{'':<9} acknowledged {_when(al['acknowledged_at'])} by {al.get('acknowledged_by')}")
    return 0


def cmd_alerts_ack(a: argparse.Namespace) -> int:
    al = _client(a).acknowledge_alert(a.id)
    _print(al if a.json else f"alert {al['id']} acknowledged by {al['acknowledged_by']} at "
           f"{_when(al['acknowledged_at'])}", a.json)
    return 0


def _event_text(e: dict[str, Any]) -> str:
    d = e.get("data") or {}
    if e["kind"] in ("state", "health"):
        text = f"{d.get('from') or '-'} -> {d.get('to')}"
        return text + (f" ({d['reason']})" if d.get("reason") else "")
    if e["kind"] == "alert":
        return f"{d.get('state')} {d.get('severity')} {d.get('id')}: {d.get('message')}"
    return " ".join(f"{k}={v}" for k, v in d.items())


def cmd_events(a: argparse.Namespace) -> int:
    events = _client(a).events(_since(a.since), a.limit)
    if a.json:
        _print(events, True)
        return 0
    if not events:
        print("no events")
        return 0
    for e in events:
        print(f"{_when(e['time'])}  {e['machine'] or '-':<18} {e['kind']:<18} {_event_text(e)}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo
    return asyncio.run(run_demo(Path(a.home), a.size_mib))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lifeboat", description="Lifeboat disaster-recovery appliance")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="cmd", required=True)

    def home(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--home", required=True, help="the role's home folder")
        sp.add_argument("--json", action="store_true", help="one JSON document on stdout")

    ap = sub.add_parser("appliance", help="configuration server + process server").add_subparsers(dest="sub", required=True)
    s = ap.add_parser("init"); home(s)
    s.add_argument("--control-port", type=int, default=443); s.add_argument("--data-port", type=int, default=9443)
    s.add_argument("--vault", help="local vault folder (default HOME/vault)")
    s.add_argument("--listen", default="0.0.0.0", help="address to listen on")
    s.set_defaults(fn=cmd_appliance_init)
    s = ap.add_parser("run"); home(s); s.add_argument("--listen", default=None); s.set_defaults(fn=cmd_appliance_run)
    s = ap.add_parser("set", help="appliance-wide settings (shown when given none)"); home(s)
    s.add_argument("--vault-reserve", metavar="SIZE|PCT",
                   help="free space kept on the vault's filesystem, e.g. 10G or 5%% (default 5%%)")
    s.add_argument("--pin-alert-after", metavar="DURATION",
                   help="alert when a drill or unfinished failover has held history from being folded this long "
                        "(default 24h)")
    s.set_defaults(fn=cmd_appliance_set)
    from .backup.cli import add_subcommands as add_backup  # export-kit, import-kit, backup [list], restore
    add_backup(ap)
    from .service.cli import add_subcommands as add_service  # install-service, uninstall-service, service-status
    add_service(ap)

    ag = sub.add_parser("agent", help="mobility agent").add_subparsers(dest="sub", required=True)
    s = ag.add_parser("register"); home(s)
    s.add_argument("--appliance", required=True, metavar="HOST:PORT"); s.add_argument("--passphrase-file", required=True)
    s.add_argument("--name", required=True); s.set_defaults(fn=cmd_agent_register)
    s = ag.add_parser("run"); home(s)
    s.add_argument("--disk", action="append", required=True, metavar="NAME=PATH")
    s.add_argument("--nbd", required=True, metavar="HOST:PORT")
    s.add_argument("--pre-bookmark", help="command run before a bookmark (e.g. 'fsfreeze -f /mnt')")
    s.add_argument("--post-bookmark", help="command run after a bookmark, always (e.g. 'fsfreeze -u /mnt')")
    s.set_defaults(fn=cmd_agent_run)
    s = ag.add_parser("bookmark"); home(s); s.add_argument("--tag"); s.set_defaults(fn=cmd_agent_bookmark)
    s = ag.add_parser("status", help="the running agent's own view (link, seq, bytes sent, failback reverse mode)")
    home(s); s.set_defaults(fn=cmd_agent_status)

    s = sub.add_parser("bookmark", help="ask a machine's agent for an app-consistent point now (from the appliance)")
    home(s); s.add_argument("machine"); s.add_argument("--tag", help="the point's tag (default bookmark-DATE-TIME)")
    s.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the point to reach the vault")
    s.set_defaults(fn=cmd_bookmark)
    s = sub.add_parser("protect"); home(s); s.add_argument("machine"); s.add_argument("--policy")
    s.set_defaults(fn=cmd_protect)
    pol = sub.add_parser("policy").add_subparsers(dest="sub", required=True)
    s = pol.add_parser("set"); home(s); s.add_argument("name")
    for o in ("--rpo-threshold", "--retention", "--app-consistent", "--crash-interval"):
        s.add_argument(o)
    s.add_argument("--resync-window", help="HH:MM-HH:MM local time for scheduled resyncs, or 'always'")
    s.add_argument("--history-limit", metavar="SIZE",
                   help="most vault history per machine, e.g. 50G (0: no limit); beyond it the oldest is folded")
    s.set_defaults(fn=cmd_policy_set)
    s = pol.add_parser("list"); home(s); s.set_defaults(fn=cmd_policy_list)
    s = sub.add_parser("status"); home(s); s.set_defaults(fn=cmd_status)
    s = sub.add_parser("points"); home(s); s.add_argument("machine"); s.set_defaults(fn=cmd_points)
    s = sub.add_parser("failover"); home(s); s.add_argument("machine")
    s.add_argument("--test", action="store_true")
    s.add_argument("--point", help="latest (default) | latest-app | ID | tag:TAG | TIME")
    s.add_argument("--planned", action="store_true",
                   help="the source runs: quiesce it, wait until all it wrote is in the vault, fail over to that "
                        "final point (zero data loss; needs --host)")
    g = s.add_mutually_exclusive_group(); g.add_argument("--export", metavar="DIR")
    g.add_argument("--nbd", metavar="HOST:PORT")
    s.add_argument("--host", help="fail over to this recovery host (not a drill)"); s.set_defaults(fn=cmd_failover)
    s = sub.add_parser("resync", help="compare checksums and send only differing blocks")
    home(s); s.add_argument("machine"); s.add_argument("--now", action="store_true", help="do not wait for the window")
    s.set_defaults(fn=cmd_resync)
    s = sub.add_parser("verify", help="re-read the vault and check it against the source's checksums")
    home(s); s.add_argument("machine"); s.add_argument("--no-heal", action="store_true")
    s.set_defaults(fn=cmd_verify)
    s = sub.add_parser("failover-cleanup"); home(s); s.add_argument("machine"); s.set_defaults(fn=cmd_failover_cleanup)
    s = sub.add_parser("jobs", help="engine jobs, oldest first (drills, cleanups, recovery plans)"); home(s)
    s.add_argument("--machine", help="only this machine's jobs")
    s.add_argument("--active", action="store_true", help="only queued, running or paused jobs")
    s.set_defaults(fn=cmd_jobs)
    jb = sub.add_parser("job", help="one engine job: show, cancel, resume").add_subparsers(dest="sub", required=True)
    s = jb.add_parser("show", help="a job with its steps"); home(s); s.add_argument("id"); s.set_defaults(fn=cmd_job_show)
    s = jb.add_parser("cancel", help="cancel a queued, running or paused job"); home(s); s.add_argument("id")
    s.set_defaults(fn=cmd_job_cancel)
    s = jb.add_parser("resume", help="resume a job paused for an operator"); home(s); s.add_argument("id")
    s.set_defaults(fn=cmd_job_resume)
    al = sub.add_parser("alerts", help="the appliance's alerts: list, acknowledge").add_subparsers(dest="sub",
                                                                                                  required=True)
    s = al.add_parser("list", help="active alerts, newest first"); home(s)
    s.add_argument("--all", action="store_true", help="cleared alerts too")
    s.set_defaults(fn=cmd_alerts_list)
    s = al.add_parser("ack", help="record that you have seen an alert"); home(s); s.add_argument("id")
    s.set_defaults(fn=cmd_alerts_ack)
    s = sub.add_parser("events", help="the event log: state and health transitions with reasons, alerts, "
                                      "operations"); home(s)
    s.add_argument("--since", metavar="TIME", help="a duration ago (15m, 2h), an ISO time or epoch seconds")
    s.add_argument("--limit", type=int, default=1000, help="at most this many (the newest)")
    s.set_defaults(fn=cmd_events)
    s = sub.add_parser("demo", help="protect a sample disk, write to it, run test failovers (embedded defaults)")
    s.add_argument("--home", default="demo-home"); s.add_argument("--size-mib", type=int, default=256)
    s.set_defaults(fn=cmd_demo)
    m = sub.add_parser("machine").add_subparsers(dest="sub", required=True)
    s = m.add_parser("revoke"); home(s); s.add_argument("machine"); s.set_defaults(fn=cmd_machine_revoke)
    s = m.add_parser("restore-access", help="let a revoked machine register again (it keeps its vault and points)")
    home(s); s.add_argument("machine"); s.set_defaults(fn=cmd_machine_restore_access)
    vt = sub.add_parser("vault", help="the vault: where replicated data rests").add_subparsers(dest="sub",
                                                                                                required=True)
    s = vt.add_parser("set", help="use an Azure Blob container (checked first; before any machine is protected)")
    home(s); s.add_argument("--kind", required=True, choices=["azure"]); s.add_argument("--account-url", required=True)
    s.add_argument("--container", required=True)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--key-stdin", action="store_true"); g.add_argument("--sas-stdin", action="store_true")
    s.set_defaults(fn=cmd_vault_set)
    s = vt.add_parser("show", help="the vault's settings (never the credential)"); home(s)
    s.set_defaults(fn=cmd_vault_show)
    from .recovery.cli import add_subcommands as add_recovery  # host add/list, machine settings, vm list, cancel
    add_recovery(sub, m)
    from .recovery.plan_cli import add_subcommands as add_plans  # plan …, report list/show
    add_plans(sub)
    from .recovery.failback_cli import add_subcommands as add_failback  # reprotect, failback, reenable
    add_failback(sub)
    from .vsphere.cli import add_subcommands as add_vsphere  # vcenter add/list/update/remove, inventory
    add_vsphere(sub)
    from .egress_cli import add_alert_subcommands, add_subcommands as add_egress  # egress …, alerts smtp/test
    add_egress(sub)
    add_alert_subcommands(al)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return a.fn(a)
    except LifeboatError as exc:
        if getattr(a, "json", False):
            json.dump({"error": exc.to_dict()}, sys.stdout)
            sys.stdout.write("\n")
        print(f"error {exc.code}: {exc.message}\n  what to do: {exc.advice}", file=sys.stderr)
        if a.debug:
            raise
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
