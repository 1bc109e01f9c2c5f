"""Link faults toward the Azure vault through the authenticated proxy, in the middle of real replication (issue 15).

A real appliance and agent replicate a machine into the Azure vault on Azurite through tinyproxy with basic
authentication, the egress settings made with the CLI as an operator does (allow-list + proxy + `vault set`), while
data is written and bookmarks are taken:

1. the proxy is stopped mid-stream: writes go on (the appliance acknowledges them into its cache), nothing gets out;
   `status --json`, the target health and the alerts say so with the proxy's LB_ code and a growing RPO. The proxy
   is started again on the same port: replication resumes by itself and the status recovers. Then the proxy dies
   right between the append that carries a bookmark and that bookmark's point: the point is made once it is back;
2. the proxy password is changed to a wrong one with `lifeboat egress proxy ... --password-stdin`: without
   `--no-check` the change is refused (nothing changes, replication goes on); with it, the appliance puts it in
   force and every upload is refused with LB_PROXY_AUTH, shown the same way; the right password set again:
   replication resumes;
3. at the end every bookmark (the ones taken during the faults too), the crash-consistent points of known states and
   the latest point recover byte-identical, and the proxy's log shows the tunnels.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

from engine import net
from engine.appliance.vault_settings import target_health
from tests.azurite import KEY
from tests.conftest import need_tool
from tests.egress_servers import PROXY_PASSWORD, PROXY_USER, Tinyproxy, tinyproxy_fixture  # noqa: F401 (fixture)
from tests.engine.harness import Site, make_disk, sha256_file
from tests.engine.test_replication_e2e import _step
from tests.engine.vault.test_azure_e2e import _cli, _init, azurite_fixture  # noqa: F401 (fixture)
from tests.engine.torture import LB

MiB = 1 << 20
#: Low, so that the outages below (a few seconds) breach it: the alert must be raised, then cleared.
RPO_THRESHOLD = 3.0


async def _lb(*args: str, stdin: str = "", timeout: float = 60) -> tuple[int, str, str]:
    """The CLI as a separate process, without blocking the loop the appliance runs on."""
    p = await asyncio.create_subprocess_exec(*LB, *args, stdin=asyncio.subprocess.PIPE,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(stdin.encode()), timeout)
    return p.returncode or 0, out.decode(), err.decode()


async def _status(home: Path) -> dict[str, Any]:
    rc, out, err = await _lb("status", "--home", str(home), "--json")
    assert rc == 0, err
    return dict(json.loads(out)["machines"][0])


async def _alerts(home: Path) -> dict[str, dict[str, Any]]:
    rc, out, err = await _lb("alerts", "list", "--home", str(home), "--json")
    assert rc == 0, err
    return {a["id"]: a for a in json.loads(out)}


async def test_replication_resumes_after_proxy_faults(azurite, tinyproxy: Tinyproxy, tmp_path: Path) -> None:
    need_tool("qemu-io")
    t_start = time.monotonic()
    timings: dict[str, float] = {}
    container = "pf" + uuid.uuid4().hex[:10]
    azurite.create_container(container)
    target = f"127.0.0.1:{azurite.port}"
    old_policy = net.egress_policy()
    rnd = random.Random(1515)
    src = {"sys": tmp_path / "sys.img", "data": tmp_path / "data.img"}
    make_disk(src["sys"], 8 * MiB, seed=1)
    make_disk(src["data"], 4 * MiB, seed=2)
    site = Site(tmp_path)
    _init(site)
    home = str(site.ahome)
    for args, stdin in ((("egress", "allow", "--home", home, "--preset", "commercial"), ""),
                        (("egress", "allow", "--home", home, "--add", "127.0.0.1"), ""),
                        (("egress", "proxy", "--home", home, "--url", tinyproxy.url, "--user", PROXY_USER,
                          "--password-stdin"), PROXY_PASSWORD + "\n"),
                        (("vault", "set", "--home", home, "--kind", "azure", "--account-url", azurite.url,
                          "--container", container, "--key-stdin"), KEY + "\n")):
        r = _cli(*args, stdin=stdin)
        assert r.returncode == 0, r.stderr
    timings["setup (CLI)"] = time.monotonic() - t_start

    def hashes() -> dict[str, str]:
        return {n: sha256_file(p) for n, p in src.items()}

    async def write(n: int = 1) -> None:
        for _ in range(n):
            disk = rnd.choice(list(src))
            await _step(site, rnd, disk, src[disk].stat().st_size)

    history: dict[int, dict[str, str]] = {}     # seq → every disk right after it (states a crash point may show)
    bookmarks: dict[str, dict[str, str]] = {}   # tag → every disk when it was taken

    async def bookmark(tag: str) -> None:
        bookmarks[tag] = hashes()               # no write between this and the marker
        await agent.bookmark(tag)

    async def settle() -> int:
        """Caught up; a crash-consistent point lands exactly at the last write."""
        seq = await site.wait_caught_up(timeout=30)
        history[seq] = hashes()
        await site.wait_for(lambda: any(p.seq == seq for p in rt.vault.points()), 10, "crash point")
        return seq

    def alerts() -> dict[str, dict[str, Any]]:
        return {a["id"]: a for a in app.alerts_list()}

    try:
        t0 = time.monotonic()
        app = await site.start_appliance(crash_interval=0.5, rpo_threshold=RPO_THRESHOLD)
        await site.register("vm1")
        agent = await site.start_agent(src)
        await app.protect("vm1")
        await site.wait_for(lambda: app.machine_status("vm1")["state"] == "protected", 60, "initial sync")
        rt = app.runtimes["vm1"]
        await write(2)
        await bookmark("before")
        await write(1)
        await settle()
        timings["initial sync + first writes"] = time.monotonic() - t0

        # 1. the proxy goes away mid-stream ---------------------------------------------------------------------
        t0 = time.monotonic()
        in_vault = rt.vault.last_seq
        tunnels = tinyproxy.connects(target)
        assert tunnels >= 1, "the vault's traffic did not go through the proxy"
        tinyproxy.stop()
        await write(2)
        await bookmark("proxy-down")
        await write(1)
        # the appliance acknowledged every write into its cache (the agent dropped them from its journal) ...
        await site.wait_for(lambda: agent.acked_seq >= agent.capture.seq, 10, "the appliance to acknowledge")
        acked = agent.acked_seq
        # ... and says that they do not reach the vault, with the proxy's code, while the RPO grows
        await site.wait_for(lambda: "LB_PROXY_UNREACHABLE" in (rt.error or ""), 10, "the upload error")
        await site.wait_for(lambda: "LB_RPO_BREACH:vm1" in alerts(), 15, "the RPO alert")
        st = await _status(site.ahome)
        assert st["state"] == "error" and st["health"] == "critical", st
        assert "LB_PROXY_UNREACHABLE" in st["error"] and "LB_PROXY_UNREACHABLE" in st["health_reason"], st
        assert st["rpo_seconds"] > RPO_THRESHOLD, st
        th = target_health(app)
        assert th["state"] == "error" and "LB_PROXY_UNREACHABLE" in th["error"], th
        assert th["upload_backlog_records"] > 0, th
        active = await _alerts(site.ahome)
        assert active["LB_PROXY_UNREACHABLE:vm1"]["severity"] == "critical", active
        assert "LB_RPO_BREACH:vm1" in active, active
        assert rt.vault.last_seq == in_vault < acked, "something reached the vault without the proxy"
        timings["proxy down (status checked)"] = time.monotonic() - t0

        t0 = time.monotonic()
        tinyproxy.start()                                   # the same port
        await site.wait_for(lambda: rt.vault.last_seq >= acked, 30, "replication to resume")
        timings["resume after the proxy is back"] = time.monotonic() - t0
        assert tinyproxy.connects(target) > tunnels, "the upload resumed, but not through the proxy"
        tunnels = tinyproxy.connects(target)
        await settle()
        await site.wait_for(lambda: rt.error is None and app.machine_status("vm1")["state"] == "protected", 10,
                            "the status to recover")
        st = await _status(site.ahome)
        assert st["state"] == "protected" and st["error"] is None, st
        th = target_health(app)
        assert th["state"] == "ok" and th["error"] is None and th["upload_backlog_records"] == 0, th

        # 1b. the proxy dies between the append that carries a bookmark and the bookmark's point (its snapshots):
        # the records are in the vault, the point is not; it must be made once the proxy is back
        t0 = time.monotonic()
        real_add_point = rt.vault.add_point
        cuts: list[str] = []

        async def proxy_dies_first(p: Any) -> None:   # the real add_point, right after the proxy stops (once)
            if p.tag == "cut" and not cuts:
                cuts.append(p.id)
                await asyncio.to_thread(tinyproxy.stop)
            await real_add_point(p)
        rt.vault.add_point = proxy_dies_first          # type: ignore[method-assign]
        try:
            await write(1)
            await bookmark("cut")
            await site.wait_for(lambda: "LB_PROXY_UNREACHABLE" in (rt.error or ""), 10, "the point's failure")
            assert cuts and rt.vault.last_seq >= int(cuts[0][2:]), "the bookmark's records are in the vault"
            assert not any(p.tag == "cut" for p in rt.vault.points())
            tinyproxy.start()
            await site.wait_for(lambda: any(p.tag == "cut" for p in rt.vault.points()), 15, "the bookmark's point")
        finally:
            del rt.vault.add_point
        await write(1)
        await settle()
        timings["proxy dies before a bookmark's point"] = time.monotonic() - t0

        # 2. a wrong proxy password -----------------------------------------------------------------------------
        t0 = time.monotonic()
        proxy_args = ("egress", "proxy", "--home", home, "--url", tinyproxy.url, "--user", PROXY_USER,
                      "--password-stdin")
        rev = json.loads((await _lb("egress", "show", "--home", home, "--json"))[1])["revision"]
        rc, out, err = await _lb(*proxy_args, stdin="wrong-horse\n")
        assert rc != 0 and "LB_PROXY_AUTH" in err and "Nothing was changed" in err and "Traceback" not in err, err
        assert json.loads((await _lb("egress", "show", "--home", home, "--json"))[1])["revision"] == rev
        await write(1)
        await settle()                                      # the refused change changed nothing
        in_force = net.egress_policy()
        rc, out, err = await _lb(*proxy_args, "--no-check", stdin="wrong-horse\n")
        assert rc == 0, err
        assert "wrong-horse" not in out + err
        # the running appliance puts the stored change in force within 2 s
        await site.wait_for(lambda: net.egress_policy() is not in_force, 5, "the new egress settings in force")
        await write(1)
        await bookmark("wrong-password")
        await write(1)
        await site.wait_for(lambda: agent.acked_seq >= agent.capture.seq, 10, "the appliance to acknowledge")
        acked = agent.acked_seq
        await site.wait_for(lambda: "LB_PROXY_AUTH" in (rt.error or ""), 15, "the proxy's refusal")
        st = await _status(site.ahome)
        assert st["state"] == "error" and "LB_PROXY_AUTH" in st["error"], st
        assert "wrong user or password" in st["error"], st
        th = target_health(app)
        assert th["state"] == "error" and "LB_PROXY_AUTH" in th["error"], th
        assert "LB_PROXY_AUTH:vm1" in await _alerts(site.ahome)
        assert rt.vault.last_seq < acked
        timings["wrong password (status checked)"] = time.monotonic() - t0

        t0 = time.monotonic()
        rc, out, err = await _lb(*proxy_args, stdin=PROXY_PASSWORD + "\n")
        assert rc == 0, err
        tunnels = tinyproxy.connects(target)
        await site.wait_for(lambda: rt.vault.last_seq >= acked, 30, "replication to resume")
        timings["resume after the right password"] = time.monotonic() - t0
        assert tinyproxy.connects(target) > tunnels, "the upload resumed, but not through the proxy"
        await write(1)
        await bookmark("after")
        await write(1)
        await settle()
        await site.wait_for(lambda: rt.error is None and app.machine_status("vm1")["state"] == "protected", 10,
                            "the status to recover")
        th = target_health(app)
        assert th["state"] == "ok" and th["error"] is None, th

        # 3. every point recovers byte-identical -----------------------------------------------------------------
        t0 = time.monotonic()
        points = rt.vault.points()
        app_points = {p.tag: p for p in points if p.kind == "app-consistent"}
        assert set(app_points) == set(bookmarks), (set(app_points), set(bookmarks))
        chosen: list[tuple[str, dict[str, str]]] = [(f"tag:{t}", want) for t, want in bookmarks.items()]
        chosen += [(p.id, history[p.seq]) for p in points if p.kind == "crash-consistent" and p.seq in history]
        assert len(chosen) >= len(bookmarks) + 4
        chosen.append(("latest", hashes()))
        for spec, want in chosen:
            out_dir = tmp_path / "export"
            job = await app.recovery.test_failover("vm1", spec, export_dir=str(out_dir), nbd=None)
            await site.wait_for(lambda: app.recovery.job(job.id).finished, 60, "export")
            assert app.recovery.job(job.id).error is None
            got = {n: sha256_file(out_dir / f"{n}.img") for n in src}
            assert got == want, f"export of point {spec} differs from the source"
            await app.recovery.cleanup("vm1")
        timings["recovery checks"] = time.monotonic() - t0

        # the status is clean again: the RPO alert and the upload errors are cleared
        await site.wait_for(lambda: not {"LB_RPO_BREACH:vm1", "LB_PROXY_UNREACHABLE:vm1", "LB_PROXY_AUTH:vm1"}
                            & set(alerts()), 15, "the alerts to clear")
        active = await _alerts(site.ahome)
        assert not any(k.endswith(":vm1") for k in active), active
    finally:
        await site.stop()
        net.set_egress_policy(old_policy)
    tunnels = tinyproxy.connects(target)
    timings["total"] = time.monotonic() - t_start
    print(f"{tunnels} CONNECT tunnels to {target} in tinyproxy's log; "
          + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
