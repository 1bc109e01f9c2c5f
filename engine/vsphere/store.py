"""vSphere tables in the appliance's state DB (HOME/state.db). No secrets here: passwords live in the OS keyring.

The tables are added with CREATE TABLE IF NOT EXISTS on the StateDB's own connection, so they share its WAL,
``synchronous=FULL`` and its thread (the loop thread; docs/CONTRACT.md §1). Adding tables is an additive schema
change: ``schema_version`` does not move.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from .connect import Target

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vsphere_endpoints (
    host TEXT PRIMARY KEY, port INTEGER NOT NULL, user TEXT NOT NULL, trust TEXT NOT NULL,
    ca_pem TEXT, thumbprint TEXT, seen_thumbprint TEXT, insecure INTEGER NOT NULL DEFAULT 0,
    kind TEXT, product TEXT, api_version TEXT, instance_uuid TEXT,
    added REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS vsphere_agent_identity (
    machine TEXT PRIMARY KEY, bios_uuid TEXT, hostname TEXT, ips TEXT NOT NULL DEFAULT '[]', seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS vsphere_links (
    machine TEXT PRIMARY KEY, vcenter TEXT NOT NULL, moref TEXT NOT NULL, instance_uuid TEXT, vm_name TEXT,
    matched_by TEXT NOT NULL, disks TEXT NOT NULL DEFAULT '{}', time REAL NOT NULL);
"""


def secret_name(host: str) -> str:
    """The keyring entry (service ``lifeboat``) holding an endpoint's password."""
    return f"vcenter/{host}"


class VSphereStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.db.executescript(_SCHEMA)

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cur = self.db.execute(sql, args)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    # endpoints ----------------------------------------------------------------------------------------------
    def endpoints(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM vsphere_endpoints ORDER BY host")

    def endpoint(self, host: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM vsphere_endpoints WHERE host=?", (host,))
        return rows[0] if rows else None

    def put_endpoint(self, t: Target, seen_thumbprint: str, about: dict[str, Any]) -> None:
        now = time.time()
        old = self.endpoint(t.host)
        self.db.execute(
            "INSERT OR REPLACE INTO vsphere_endpoints(host, port, user, trust, ca_pem, thumbprint, seen_thumbprint, "
            "insecure, kind, product, api_version, instance_uuid, added, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (t.host, t.port, t.user, t.trust, t.ca_pem, t.thumbprint, seen_thumbprint, int(t.trust == "insecure"),
             about.get("kind"), about.get("product"), about.get("api_version"), about.get("instance_uuid"),
             old["added"] if old else now, now))

    def delete_endpoint(self, host: str) -> None:
        self.db.execute("DELETE FROM vsphere_endpoints WHERE host=?", (host,))
        self.db.execute("DELETE FROM vsphere_links WHERE vcenter=?", (host,))

    @staticmethod
    def target(row: dict[str, Any]) -> Target:
        return Target(row["host"], int(row["port"]), row["user"], row["trust"], row["ca_pem"], row["thumbprint"])

    # agent identities ---------------------------------------------------------------------------------------
    def put_identity(self, machine: str, bios_uuid: str | None, hostname: str | None, ips: list[str]) -> None:
        self.db.execute("INSERT OR REPLACE INTO vsphere_agent_identity(machine, bios_uuid, hostname, ips, seen) "
                        "VALUES (?, ?, ?, ?, ?)", (machine, bios_uuid, hostname, json.dumps(ips), time.time()))

    def identities(self) -> dict[str, dict[str, Any]]:
        out = {}
        for r in self._rows("SELECT * FROM vsphere_agent_identity"):
            r["ips"] = json.loads(r["ips"])
            out[r["machine"]] = r
        return out

    # machine ↔ VM links --------------------------------------------------------------------------------------
    def links(self) -> dict[str, dict[str, Any]]:
        out = {}
        for r in self._rows("SELECT * FROM vsphere_links"):
            r["disks"] = {int(k): v for k, v in json.loads(r["disks"]).items()}
            out[r["machine"]] = r
        return out

    def put_link(self, machine: str, vm: dict[str, Any], by: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO vsphere_links(machine, vcenter, moref, instance_uuid, vm_name, "
                        "matched_by, disks, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (machine, vm["vcenter"], vm["moref"], vm.get("instance_uuid"), vm.get("name"), by,
                         json.dumps(disk_sizes(vm)), time.time()))

    def set_link_disks(self, machine: str, disks: dict[int, int]) -> None:
        self.db.execute("UPDATE vsphere_links SET disks=? WHERE machine=?", (json.dumps(disks), machine))


def disk_sizes(vm: dict[str, Any]) -> dict[int, int]:
    """Disk key → capacity in bytes: what a resize is detected against (kept in the DB, so it survives restarts)."""
    return {int(d["key"]): int(d["capacity_bytes"]) for d in vm.get("disks", [])}
