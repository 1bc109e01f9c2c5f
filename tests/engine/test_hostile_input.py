"""Hostile input (issue 10): a compromised protected machine, a careless script or a stranger on the network cannot
make the appliance write outside its folders, overwrite or delete a file it did not create, store malformed values,
or grow its database. Each finding of the probe is reproduced with real clients and now meets a clean refusal."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine import pki
from engine.appliance.export_target import ExportTarget
from engine.errors import ExportRefused
from engine.home import AgentHome
from engine.wire import Frame, parse_json, read_frame, write_json
from tests.conftest import free_port, need_tool
from tests.engine.harness import Site, make_disk, sha256_file

LIFEBOAT = [sys.executable, "-m", "engine.cli"]


async def lb(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*LIFEBOAT, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


def strict_json(raw: bytes) -> Any:
    def no_constants(name: str) -> Any:
        raise AssertionError(f"the appliance emitted bare {name}: not JSON")
    return json.loads(raw, parse_constant=no_constants)


async def protected_site(tmp_path: Path, disk_names: tuple[str, ...] = ("d0",)) -> tuple[Site, dict[str, Path]]:
    site = Site(tmp_path)
    await site.start_appliance(crash_interval=0.2)
    await site.register("vm1")
    disks = {}
    for i, n in enumerate(disk_names):
        disks[n] = tmp_path / f"{n}.img"
        make_disk(disks[n], 2 << 20, seed=i + 3)
    await site.start_agent(disks)
    app = site.app
    assert app is not None
    await app.protect("vm1")
    await site.wait_for(lambda: app.machine_status("vm1")["points"] > 0, 60, "a first point")
    return site, disks


# --- a protected machine names its disks ----------------------------------------------------------------------------

async def test_hostile_disk_names_refused_at_agent_and_at_appliance(tmp_path: Path) -> None:
    site = Site(tmp_path)
    app = await site.start_appliance()
    try:
        await site.register("vm2")
        disk = tmp_path / "disk2.img"
        make_disk(disk, 1 << 20)
        # The agent CLI refuses the probe's name before anything starts.
        rc, out, err = await lb("agent", "run", "--home", str(site.agent_home), "--disk", f"../../escaped={disk}",
                                "--nbd", f"127.0.0.1:{free_port()}")
        assert rc != 0 and "LB_INVALID_NAME" in err and "disk name" in err, err
        # A compromised agent skips its CLI and sends the HELLO itself: the data port refuses it with the code.
        h = AgentHome(site.agent_home)
        ctx = pki.client_context(h.ca_cert, h.cert, h.key)
        assert app.data_address
        hostile: list[Any] = ["../../escaped", "..", "a/b", "CON", "x" * 65, "ok\n", "", 5, {"x": 1}]
        for name in hostile:
            r, w = await asyncio.open_connection("127.0.0.1", app.data_address[1], ssl=ctx)
            write_json(w, Frame.HELLO, {"machine": "vm2", "disks": [{"index": 0, "name": name, "size": 4096}]})
            kind, body = await read_frame(r)
            w.close()
            assert kind == Frame.ERROR and parse_json(body)["code"] == "LB_INVALID_NAME", (name, body)
        for disks in ([{"index": 0, "name": "d0", "size": 4096}, {"index": 1, "name": "D0", "size": 4096}],
                      [{"index": 0, "name": "d0", "size": -1}], [{"index": "0", "name": "d0", "size": 4096}], [], 7):
            r, w = await asyncio.open_connection("127.0.0.1", app.data_address[1], ssl=ctx)
            write_json(w, Frame.HELLO, {"machine": "vm2", "disks": disks})
            kind, body = await read_frame(r)
            w.close()
            assert kind == Frame.ERROR and parse_json(body)["code"] in ("LB_INVALID_NAME", "LB_INVALID_INPUT"), disks
        # Nothing changed: no disks recorded, no folder made anywhere near the hostile path.
        assert app.machine_row("vm2")["disks"] == []
        assert not (tmp_path.parent / "escaped.img").exists() and not (tmp_path / "escaped.img").exists()
    finally:
        await site.stop()


# --- exports: never overwrite, never follow a link, delete only what was made ---------------------------------------

async def test_export_refuses_existing_files_and_links_and_cleanup_removes_only_its_own(tmp_path: Path) -> None:
    site, disks = await protected_site(tmp_path)
    app = site.app
    assert app is not None
    home = str(site.ahome)
    try:
        # An existing file of the operator's, named like an export: refused, untouched, not deleted by cleanup.
        folder = tmp_path / "shared"
        folder.mkdir(mode=0o777)
        precious = folder / "d0.img"
        precious.write_bytes(b"the operator's file")
        os.chmod(precious, 0o644)
        rc, out, err = await lb("failover", "--home", home, "vm1", "--test", "--export", str(folder))
        assert rc != 0 and "LB_EXPORT_REFUSED" in err and "not empty" in err, err
        rc, out, err = await lb("failover-cleanup", "--home", home, "vm1")
        assert rc != 0 and "LB_NOT_FOUND" in err
        assert precious.read_bytes() == b"the operator's file" and stat.S_IMODE(precious.stat().st_mode) == 0o644

        # A symbolic link planted where the image will go (the /tmp attack): refused, its target untouched.
        victim = tmp_path / "victim.conf"
        victim.write_bytes(b"root's config")
        trap = tmp_path / "trap"
        trap.mkdir()
        os.symlink(victim, trap / "d0.img")
        rc, out, err = await lb("failover", "--home", home, "vm1", "--test", "--export", str(trap))
        assert rc != 0 and "LB_EXPORT_REFUSED" in err, err
        # ... and the export folder itself a link to elsewhere: refused too.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        os.symlink(elsewhere, tmp_path / "dirlink")
        rc, out, err = await lb("failover", "--home", home, "vm1", "--test", "--export", str(tmp_path / "dirlink"))
        assert rc != 0 and "LB_EXPORT_REFUSED" in err and "symbolic link" in err, err
        assert victim.read_bytes() == b"root's config" and list(elsewhere.iterdir()) == []

        # A new folder (and its missing parents) is created 0700, the image 0600, byte-exact to the point.
        new = tmp_path / "exports" / "drill1"
        rc, out, err = await lb("failover", "--home", home, "vm1", "--test", "--export", str(new), "--json")
        assert rc == 0, err
        image = new / "d0.img"
        assert stat.S_IMODE(new.stat().st_mode) == 0o700 and stat.S_IMODE(new.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(image.stat().st_mode) == 0o600
        assert sha256_file(image) == sha256_file(disks["d0"])   # the agent wrote nothing since the point
        # The operator drops a file of their own into it: cleanup removes only the image, keeps folder and file.
        (new / "notes.txt").write_text("drill notes")
        rc, out, err = await lb("failover-cleanup", "--home", home, "vm1", "--json")
        assert rc == 0, err
        assert json.loads(out)["removed"] == [str(image)]
        assert not image.exists() and (new / "notes.txt").read_text() == "drill notes"

        # An existing empty folder the operator named: used, and kept by cleanup.
        empty = tmp_path / "empty"
        empty.mkdir()
        rc, out, err = await lb("failover", "--home", home, "vm1", "--test", "--export", str(empty))
        assert rc == 0, err
        rc, out, err = await lb("failover-cleanup", "--home", home, "vm1")
        assert rc == 0 and empty.is_dir() and list(empty.iterdir()) == []
        # A folder the export created and nothing else uses is removed with the images.
        fresh = tmp_path / "fresh" / "deep"
        rc, out, err = await lb("failover", "--home", home, "vm1", "--test", "--export", str(fresh))
        assert rc == 0, err
        rc, out, err = await lb("failover-cleanup", "--home", home, "vm1")
        assert rc == 0 and not (tmp_path / "fresh").exists()
    finally:
        await site.stop()


def test_export_target_never_writes_through_a_link_planted_after_the_check(tmp_path: Path) -> None:
    """The check and the write are apart in time: a link planted in between is still refused (O_EXCL|O_NOFOLLOW
    relative to the folder's descriptor), and an image replaced by someone else is not deleted by cleanup."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    folder = tmp_path / "exp"
    target = ExportTarget.prepare(folder)
    os.symlink(victim, folder / "d0.img")
    with pytest.raises(ExportRefused):
        target.create("d0")
    assert victim.read_bytes() == b"keep me"
    fd, path = target.create("d1")
    os.write(fd, b"image")
    target.finish(fd, path)
    os.unlink(path)                       # someone replaces our image by their own file of the same name
    Path(path).write_bytes(b"theirs")
    assert target.cleanup() == []
    assert Path(path).read_bytes() == b"theirs" and (folder / "d0.img").is_symlink()
    # The folder is not empty, so although the export made it, cleanup leaves it.
    assert folder.is_dir()


# --- the control API: types and ranges checked before acting; strict JSON out ---------------------------------------

def _curl(site: Site, method: str, path: str, data: bytes | None) -> tuple[int, Any]:
    h = site.ahome / "pki"
    assert site.app and site.app.control_address
    cmd = ["curl", "-sS", "--max-time", "20", "--cacert", str(h / "ca.crt"), "--cert", str(h / "admin.crt"),
           "--key", str(h / "admin.key"), "-X", method, "-H", "Content-Type: application/json",
           "-o", "-", "-w", "\n%{http_code}", f"https://127.0.0.1:{site.app.control_address[1]}{path}"]
    if data is not None:
        cmd[1:1] = ["--data-binary", "@-"]
    p = subprocess.run(cmd, input=data, capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    body, _, status = p.stdout.rpartition(b"\n")
    return int(status), strict_json(body) if body else None


ISSUE_FINDINGS = [
    # (method, path, raw body, status, code, field): each line is a finding of the probe, now refused
    ("POST", "/v1/machines/vm1/failover", b"\xff\xfe{not utf-8}", 400, "LB_INVALID_INPUT", "body"),
    ("POST", "/v1/machines/vm1/failover", b'{"export_dir": 5}', 400, "LB_INVALID_INPUT", "export_dir"),
    ("POST", "/v1/machines/vm1/failover", b'{"nbd": 5}', 400, "LB_INVALID_INPUT", "nbd"),
    ("POST", "/v1/machines/vm1/failover", b'{"nbd": "no-such-host.invalid:10809"}', 409, "LB_LISTEN_FAILED", "nbd"),
    ("POST", "/v1/machines/vm1/failover", b'{"point": "nan", "export_dir": "/nonexistent-lb/x"}', 404, "LB_UNKNOWN_POINT", None),
    ("POST", "/v1/machines/vm1/failover", b'{"point": "inf", "export_dir": "/nonexistent-lb/x"}', 404, "LB_UNKNOWN_POINT", None),
    ("POST", "/v1/machines/vm1/failover", b'{"point": "-1e300", "export_dir": "/nonexistent-lb/x"}', 404, "LB_UNKNOWN_POINT",
     None),
    ("PUT", "/v1/policies/default", b'{"crash_interval": NaN}', 400, "LB_INVALID_INPUT", "body"),
    ("PUT", "/v1/policies/default", b'{"rpo_threshold": Infinity}', 400, "LB_INVALID_INPUT", "body"),
    ("PUT", "/v1/policies/default", b'{"rpo_threshold": 1e309}', 400, "LB_INVALID_INPUT", "rpo_threshold"),
    ("PUT", "/v1/policies/default", b'{"retention": "1e400s"}', 400, "LB_INVALID_INPUT", "retention"),
    ("PUT", "/v1/policies/default", b'{"history_limit": "lots"}', 400, "LB_INVALID_INPUT", "history_limit"),
    ("PUT", "/v1/policies/default", b'{"history_limit": true}', 400, "LB_INVALID_INPUT", "history_limit"),
    ("PUT", "/v1/policies/default", b'{"history_limit": 1e30}', 400, "LB_INVALID_INPUT", "history_limit"),
    ("POST", "/v1/machines/vm1/bookmark", b'{"tag": {"a": 1}}', 400, "LB_INVALID_NAME", "tag"),
    ("POST", "/v1/machines/vm1/bookmark", json.dumps({"tag": "x" * 1_000_000}).encode(), 400, "LB_INVALID_INPUT",
     "body"),
    ("POST", "/v1/machines/..%2F..%2Fescaped/protect", b"{}", 400, "LB_INVALID_NAME", "machine name"),
    ("PUT", "/v1/policies/..%2Fx", b"{}", 400, "LB_INVALID_NAME", "policy name"),
    ("POST", "/v1/machines/vm1/resync", b'{"now": "yes"}', 400, "LB_INVALID_INPUT", "now"),
    ("POST", "/v1/machines/vm1/verify", b'{"heal": 1}', 400, "LB_INVALID_INPUT", "heal"),
    ("POST", "/v1/machines/vm1/protect", b'{"policy": ["default"]}', 400, "LB_INVALID_NAME", "policy"),
    ("POST", "/v1/machines/vm1/failover", b"[1, 2]", 400, "LB_INVALID_INPUT", "body"),
    ("POST", "/v1/vcenters", b'{"host": "127.0.0.1", "port": "443", "user": "u", "password": "p"}', 400,
     "LB_INVALID_INPUT", "port"),
    ("POST", "/v1/vcenters", b'{"host": "127.0.0.1", "port": 1, "user": "u", "password": "p", "insecure": "no"}',
     400, "LB_INVALID_INPUT", "insecure"),
]


async def test_control_api_refuses_the_probes_findings_with_400_and_the_field(tmp_path: Path) -> None:
    need_tool("curl")
    site, _ = await protected_site(tmp_path)
    try:
        for method, path, raw, status, code, field in ISSUE_FINDINGS:
            got, body = await asyncio.to_thread(_curl, site, method, path, raw)
            err = (body or {}).get("error", {})
            assert (got, err.get("code")) == (status, code), (path, raw[:80], got, body)
            if field:
                assert err.get("details", {}).get("field") == field, (path, raw[:80], body)
            assert err.get("advice"), body
        # Nothing was stored: the policies read back as strict JSON with their old, finite values.
        got, policies = await asyncio.to_thread(_curl, site, "GET", "/v1/policies", None)
        assert got == 200 and policies[0]["rpo_threshold"] == 30.0 and policies[0]["crash_interval"] == 0.2
        assert not Path("/nonexistent-lb").exists()   # refused before any folder was made
    finally:
        await site.stop()


HOSTILE_VALUES: list[Any] = [5, -1, 1e308, True, "", "x" * 5000, "../../x", "a\u0000b", {"a": 1}, [1], "nan"]
# Every endpoint that reads a body, with a base body and its fields (each replaced in turn by each hostile value).
ENDPOINTS: list[tuple[str, str, dict[str, Any]]] = [
    ("PUT", "/v1/policies/fuzz", {"rpo_threshold": "30s", "retention": "1h", "app_consistent": "1h",
                                  "crash_interval": "5s", "resync_window": "always"}),
    ("POST", "/v1/machines/vm1/protect", {"policy": "default"}),
    ("POST", "/v1/machines/vm1/bookmark", {"tag": "t1"}),
    ("POST", "/v1/machines/vm1/resync", {"now": False}),
    ("POST", "/v1/machines/vm1/verify", {"heal": False}),
    ("POST", "/v1/machines/vm1/failover", {"point": "latest", "export_dir": "/nonexistent-lb/a", "nbd": "x:1"}),
    ("POST", "/v1/register", {"name": "fz", "csr": "-----", "nonce": "n", "proof": "p"}),
    ("POST", "/v1/vcenters", {"host": "127.0.0.1", "port": 1, "user": "u", "password": "p", "ca_pem": None,
                              "thumbprint": None, "insecure": False}),
    ("PUT", "/v1/vcenters/127.0.0.1/credentials", {"user": "u", "password": "p", "thumbprint": None}),
    # recovery hosts (a URI no hypervisor answers: refused before any virsh call), settings, failover
    ("POST", "/v1/hosts", {"name": "fz", "kind": "qemu", "uri": "qemu:///nowhere", "accel": "tcg",
                           "networks": ["lan=isolated"]}),
    ("PUT", "/v1/machines/vm1/recovery-settings", {"cpus": 1, "memory_mib": 256, "nics": {"eth0": "lan"},
                                                   "ips": {"eth0": "10.0.0.2/24"}, "gateway": "10.0.0.1",
                                                   "dns": ["10.0.0.53"], "boot_pattern": "login:", "boot_timeout": 60}),
    ("POST", "/v1/machines/vm1/failover-vm", {"host": "nohost", "point": "latest"}),
    # recovery plans (the plan "fzp" exists with vm1 in group 1; its run is refused: no such host)
    ("POST", "/v1/plans", {"name": "fzq"}),
    ("POST", "/v1/plans/fzp/machines", {"group": 2, "machines": ["vm1"]}),
    ("POST", "/v1/plans/fzp/actions", {"group": 1, "when": "after", "manual": "check"}),
    ("POST", "/v1/plans/fzp/actions", {"group": 1, "when": "before", "script": "/bin/true", "timeout": "30s"}),
    ("POST", "/v1/plans/fzp/run", {"host": "nohost", "test": True, "point": "latest", "cleanup_after": "1h",
                                   "wait": True}),
    # the appliance's own keyring (a kit that is not one: refused before anything is written)
    ("POST", "/v1/recovery-kit", {"passphrase": "p" * 11}),
    ("POST", "/v1/recovery-kit/import", {"kit": "AAAA", "passphrase": "p" * 12}),
]


def _call(site: Site, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    assert site.app and site.app.control_address
    h = site.ahome / "pki"
    ctx = pki.client_context(h / "ca.crt", h / "admin.crt", h / "admin.key")
    conn = http.client.HTTPSConnection("127.0.0.1", site.app.control_address[1], context=ctx, timeout=30)
    try:
        conn.request(method, path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, strict_json(resp.read() or b"null")
    finally:
        conn.close()


async def test_every_endpoint_field_against_hostile_values(tmp_path: Path) -> None:
    """Table-driven over every endpoint's fields: never a 500, always strict JSON, a 4xx names its code."""
    site, _ = await protected_site(tmp_path)
    try:
        assert site.app is not None
        site.app.control.register_guard.max_failures = 10_000   # this test probes fields, not the rate limit
        tried = 0
        assert site.app.plans is not None
        site.app.plans.create("fzp")
        site.app.plans.add("fzp", 1, ["vm1"])
        for method, path, base in ENDPOINTS:
            for field in base:
                for value in HOSTILE_VALUES:
                    body = {k: v for k, v in base.items() if k not in ("export_dir", "nbd") or k == field}
                    if path.endswith("/failover") and field not in ("export_dir", "nbd"):
                        body["export_dir"] = str(tmp_path / f"fz{tried}")
                    body[field] = value
                    status, out = await asyncio.to_thread(_call, site, method, path, body)
                    tried += 1
                    assert status < 500, (path, field, value, out)
                    if status >= 400:
                        assert out["error"]["code"].startswith("LB_") and out["error"]["advice"], out
                    if path.endswith("/failover") and status == 200:
                        await asyncio.to_thread(_call, site, "POST", "/v1/machines/vm1/failover-cleanup", {})
        assert tried == sum(len(b) for _, _, b in ENDPOINTS) * len(HOSTILE_VALUES)
        # The appliance is still whole: status answers, every number in it is finite.
        status, st = await asyncio.to_thread(_call, site, "GET", "/v1/status", {})
        assert status == 200 and st["machines"][0]["name"] == "vm1"
    finally:
        await site.stop()


# --- strangers: registration attempts cost nothing that grows --------------------------------------------------------

async def test_registration_flood_is_rate_limited_and_recorded_once(tmp_path: Path) -> None:
    site = Site(tmp_path)
    app = await site.start_appliance()
    try:
        assert app.control_address and app.db
        port = app.control_address[1]
        db_files = [site.ahome / "state.db", site.ahome / "state.db-wal"]
        size_before = sum(f.stat().st_size for f in db_files if f.exists())

        def attempt(i: int) -> tuple[int, str]:
            ctx = ssl.create_default_context(cafile=str(site.ahome / "pki" / "ca.crt"))
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=20)
            body = json.dumps({"name": f"intruder{i % 7}", "csr": "x", "nonce": str(i), "proof": "00" * 32})
            try:
                conn.request("POST", "/v1/register", body=body, headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                return r.status, strict_json(r.read())["error"]["code"]
            finally:
                conn.close()

        results = [await asyncio.to_thread(attempt, i) for i in range(300)]
        codes = [c for _, c in results]
        assert codes[:10] == ["LB_WRONG_PASSPHRASE"] * 10
        assert set(results[10:]) == {(429, "LB_RATE_LIMITED")}
        # The real agent CLI meets the same limit, with advice.
        bad = tmp_path / "wrong.txt"
        bad.write_text("guess")
        rc, out, err = await lb("agent", "register", "--home", str(tmp_path / "a9"), "--appliance",
                                f"127.0.0.1:{port}", "--passphrase-file", str(bad), "--name", "vm9")
        assert rc != 0 and "LB_RATE_LIMITED" in err and "wait" in err, err
        refused = app.db.events("register-refused")
        assert len(refused) == 1 and refused[0]["data"]["source"] == "127.0.0.1"
        app.control.register_guard.close()         # the window's count is written when it ends (or at a stop)
        data = app.db.events("register-refused")[0]["data"]
        assert data["attempts"] == 10 and data["rate_limited"] == 291 and len(data["names"]) <= 5
        size_after = sum(f.stat().st_size for f in db_files if f.exists())
        assert size_after - size_before < 64 * 1024, (size_before, size_after)
        assert app.db.machines() == []
    finally:
        await site.stop()


# --- revocation is final and visible; the home is private ------------------------------------------------------------

async def test_revocation_is_final_until_restored_and_visible_in_status(tmp_path: Path) -> None:
    home, ahome = tmp_path / "appliance", tmp_path / "agent"
    cport, dport = free_port(), free_port()
    rc, out, err = await lb("appliance", "init", "--home", str(home), "--control-port", str(cport), "--data-port",
                            str(dport), "--listen", "127.0.0.1")
    assert rc == 0, err
    proc = await asyncio.create_subprocess_exec(*LIFEBOAT, "appliance", "run", "--home", str(home),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout
        await asyncio.wait_for(proc.stdout.readline(), 30)
        pw = str(home / "passphrase.txt")
        reg = ("agent", "register", "--appliance", f"127.0.0.1:{cport}", "--passphrase-file", pw)
        rc, out, err = await lb(*reg, "--home", str(ahome), "--name", "vm1")
        assert rc == 0, err
        # A name that differs only in case is the same name.
        rc, out, err = await lb(*reg, "--home", str(tmp_path / "a-case"), "--name", "VM1")
        assert rc != 0 and "LB_ALREADY_EXISTS" in err, err
        rc, out, err = await lb("machine", "revoke", "--home", str(home), "vm1")
        assert rc == 0, err
        # The passphrase alone no longer brings the name back, and says what to do.
        rc, out, err = await lb(*reg, "--home", str(tmp_path / "a2"), "--name", "vm1")
        assert rc != 0 and "LB_MACHINE_REVOKED" in err and "restore-access" in err, err
        # Revoked machines stay listed, with when and by whom.
        rc, out, err = await lb("status", "--home", str(home), "--json")
        st = json.loads(out)
        assert [m["name"] for m in st["revoked"]] == ["vm1"] and st["registered"] == []
        assert st["revoked"][0]["revoked_at"] > 0 and st["revoked"][0]["revoked_by"].startswith("lifeboat-admin (")
        rc, out, err = await lb("status", "--home", str(home))
        assert "vm1" in out and "revoked" in out
        # An explicit operator action restores it; the machine registers again with a new certificate.
        rc, out, err = await lb("machine", "restore-access", "--home", str(home), "vm1", "--json")
        assert rc == 0 and json.loads(out)["restored"] is True, err
        rc, out, err = await lb(*reg, "--home", str(tmp_path / "a3"), "--name", "vm1")
        assert rc == 0, err
        rc, out, err = await lb("status", "--home", str(home), "--json")
        st = json.loads(out)
        assert st["revoked"] == [] and [m["name"] for m in st["registered"]] == ["vm1"]
        # The old certificate (first agent home) stays refused on the data port.
        h = AgentHome(ahome)
        r, w = await asyncio.open_connection("127.0.0.1", dport, ssl=pki.client_context(h.ca_cert, h.cert, h.key))
        write_json(w, Frame.HELLO, {"machine": "vm1", "disks": [{"index": 0, "name": "d0", "size": 4096}]})
        kind, body = await read_frame(r)
        w.close()
        assert kind == Frame.ERROR and parse_json(body)["code"] == "LB_CERTIFICATE_REFUSED"
        # Least privilege: every folder of the home 0700, every file 0600 (the role runs with umask 077).
        for root, dirs, files in os.walk(home):
            for d in dirs:
                assert stat.S_IMODE(os.stat(Path(root) / d).st_mode) == 0o700, Path(root) / d
            for f in files:
                mode = stat.S_IMODE(os.lstat(Path(root) / f).st_mode)
                assert mode & 0o077 == 0, (Path(root) / f, oct(mode))
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


async def test_home_folders_are_private_even_if_an_older_version_left_them_open(tmp_path: Path) -> None:
    site = Site(tmp_path)
    await site.start_appliance()
    await site.stop()
    for d in ("cache", "drills"):
        os.chmod(site.ahome / d, 0o755)
    site2, _ = await protected_site(tmp_path)
    try:
        await site2.wait_for(lambda: (site2.ahome / "cache" / "vm1").exists(), 10, "the machine's cache")
        for root, dirs, _ in os.walk(site2.ahome):
            for d in dirs:
                assert stat.S_IMODE(os.stat(Path(root) / d).st_mode) == 0o700, Path(root) / d
    finally:
        await site2.stop()
