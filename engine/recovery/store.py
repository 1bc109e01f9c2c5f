"""The recovery tables of state.db (schema 6, created by engine/appliance/state.py): registered recovery hosts,
per-machine recovery settings and failovers (one row per machine while it is failed over)."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from ..errors import AlreadyExists, NotFound
from .hosts.base import NetworkSpec


class RecoveryStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cur = self.db.execute(sql, args)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    # hosts ---------------------------------------------------------------------------------------------------
    def add_host(self, name: str, kind: str, uri: str, accel: str, networks: list[NetworkSpec]) -> None:
        if self._rows("SELECT name FROM recovery_hosts WHERE name = ? COLLATE NOCASE", (name,)):
            raise AlreadyExists(f"a recovery host named {name!r} is registered already",
                                advice="Choose another name (`lifeboat host list` shows the registered ones).")
        self.db.execute("INSERT INTO recovery_hosts(name, kind, uri, accel, networks, added) VALUES (?, ?, ?, ?, ?, ?)",
                        (name, kind, uri, accel, json.dumps([[n.name, n.kind, n.bridge] for n in networks]),
                         time.time()))

    def hosts(self) -> list[dict[str, Any]]:
        out = self._rows("SELECT * FROM recovery_hosts ORDER BY name")
        for r in out:
            r["networks"] = [NetworkSpec(*n) for n in json.loads(r["networks"])]
        return out

    def host(self, name: str) -> dict[str, Any]:
        for r in self.hosts():
            if r["name"] == name:
                return r
        raise NotFound(f"no recovery host named {name!r}",
                       advice="Register it with `lifeboat host add --home DIR NAME --kind qemu`; "
                              "`lifeboat host list` shows the registered ones.", code="LB_UNKNOWN_HOST")

    # settings ------------------------------------------------------------------------------------------------
    def settings(self, machine: str) -> dict[str, Any]:
        rows = self._rows("SELECT settings FROM recovery_settings WHERE machine=?", (machine,))
        return json.loads(rows[0]["settings"]) if rows else {}

    def put_settings(self, machine: str, settings: dict[str, Any]) -> None:
        self.db.execute("INSERT OR REPLACE INTO recovery_settings(machine, settings, updated) VALUES (?, ?, ?)",
                        (machine, json.dumps(settings), time.time()))

    # failovers -----------------------------------------------------------------------------------------------
    def failovers(self) -> list[dict[str, Any]]:
        out = self._rows("SELECT * FROM failovers ORDER BY machine")
        for r in out:
            r["point"] = json.loads(r["point"])
            r["error"] = json.loads(r["error"]) if r["error"] else None
        return out

    def failover(self, machine: str) -> dict[str, Any] | None:
        return next((r for r in self.failovers() if r["machine"] == machine), None)

    def put_failover(self, row: dict[str, Any]) -> None:
        r = dict(row)
        r["point"] = json.dumps(r["point"])
        r["error"] = json.dumps(r["error"]) if r.get("error") else None
        cols = ", ".join(r)
        self.db.execute(f"INSERT OR REPLACE INTO failovers({cols}) VALUES ({', '.join('?' * len(r))})",
                        tuple(r.values()))

    def update_failover(self, machine: str, **fields: Any) -> None:
        if "error" in fields:
            fields["error"] = json.dumps(fields["error"]) if fields["error"] else None
        if "point" in fields:
            fields["point"] = json.dumps(fields["point"])
        cols = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE failovers SET {cols} WHERE machine=?", (*fields.values(), machine))

    def drop_failover(self, machine: str) -> None:
        self.db.execute("DELETE FROM failovers WHERE machine=?", (machine,))
