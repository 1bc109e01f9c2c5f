"""The configuration server's state database (SQLite). Holds no secrets: keys live in the keyring or 0600 files."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..errors import AlreadyExists, MachineRevoked, UnknownMachine, UnknownPolicy
from ..jobs.store import JOBS_SCHEMA
from ..policy import DEFAULT_POLICY, Policy

SCHEMA_VERSION = 8   # 3: who revoked a machine, and when; 4: the jobs table (engine/jobs/store.py);
#                      5: when each machine was last known recoverable and last heard from, the alerts and
#                         rpo_history tables (engine/appliance/alerts.py, rpo.py);
#                      6: policies.history_limit (the vault's capacity policy);
#                      7: recovery hosts, per-machine recovery settings and failovers (engine/recovery/store.py)
#                      8: recovery plans and their runs (engine/recovery/plans.py)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS policies (
    name TEXT PRIMARY KEY, rpo_threshold REAL NOT NULL, retention REAL NOT NULL,
    app_consistent REAL NOT NULL, crash_interval REAL NOT NULL, resync_window TEXT NOT NULL DEFAULT '22:00-06:00',
    history_limit INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS machines (
    name TEXT PRIMARY KEY, cert_serial TEXT NOT NULL, registered REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0, protected INTEGER NOT NULL DEFAULT 0,
    policy TEXT, state TEXT NOT NULL DEFAULT 'unprotected', error TEXT,
    disks TEXT NOT NULL DEFAULT '[]', resync TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, machine TEXT, kind TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE TABLE IF NOT EXISTS alerts (
    row INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, code TEXT NOT NULL, severity TEXT NOT NULL,
    component TEXT NOT NULL, subject TEXT NOT NULL, message TEXT NOT NULL, advice TEXT NOT NULL,
    raised_at REAL NOT NULL, cleared_at REAL, acknowledged_at REAL, acknowledged_by TEXT,
    count INTEGER NOT NULL DEFAULT 1, last_time REAL NOT NULL, details TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS alerts_id ON alerts(id);
CREATE TABLE IF NOT EXISTS rpo_history (
    machine TEXT NOT NULL, tier INTEGER NOT NULL, time REAL NOT NULL, rpo REAL NOT NULL);
CREATE INDEX IF NOT EXISTS rpo_history_machine ON rpo_history(machine, time);
CREATE TABLE IF NOT EXISTS recovery_hosts (
    name TEXT PRIMARY KEY, kind TEXT NOT NULL, uri TEXT NOT NULL, accel TEXT NOT NULL DEFAULT 'tcg',
    networks TEXT NOT NULL DEFAULT '[]', added REAL NOT NULL);
CREATE TABLE IF NOT EXISTS recovery_settings (
    machine TEXT PRIMARY KEY, settings TEXT NOT NULL DEFAULT '{}', updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS failovers (
    machine TEXT PRIMARY KEY, host TEXT NOT NULL, kind TEXT NOT NULL, state TEXT NOT NULL, point TEXT NOT NULL,
    job TEXT, vm TEXT NOT NULL, serial_log TEXT NOT NULL, scratch TEXT NOT NULL, nbd TEXT,
    started_at REAL NOT NULL, booted_at REAL, boot_seconds REAL, error TEXT);
CREATE TABLE IF NOT EXISTS recovery_plans (
    name TEXT PRIMARY KEY, groups TEXT NOT NULL DEFAULT '[]', created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS plan_runs (
    id TEXT PRIMARY KEY, plan TEXT NOT NULL, job TEXT, host TEXT NOT NULL, test INTEGER NOT NULL,
    point TEXT NOT NULL, state TEXT NOT NULL, machines TEXT NOT NULL DEFAULT '[]', started REAL NOT NULL,
    ended REAL, cleanup_at REAL, cleaned_at REAL, report TEXT);
"""

#: The policies columns in Policy's field order (an older database has them in another order after migrations)
_POLICY_COLS = "name, rpo_threshold, retention, app_consistent, crash_interval, resync_window, history_limit"


class StateDB:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        self.db.executescript(JOBS_SCHEMA)   # schema 3 → 4: CREATE IF NOT EXISTS, idempotent
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(machines)")}
        if "resync" not in cols:  # schema 1 → 2: resync bookkeeping
            self.db.execute("ALTER TABLE machines ADD COLUMN resync TEXT NOT NULL DEFAULT '{}'")
        if "revoked_at" not in cols:  # schema 2 → 3: who revoked a machine, and when
            self.db.execute("ALTER TABLE machines ADD COLUMN revoked_at REAL")
            self.db.execute("ALTER TABLE machines ADD COLUMN revoked_by TEXT")
        if "recoverable_at" not in cols:  # schema 4 → 5: RPO survives restarts (engine/appliance/rpo.py)
            self.db.execute("ALTER TABLE machines ADD COLUMN recoverable_at REAL")
            self.db.execute("ALTER TABLE machines ADD COLUMN last_heard REAL")
        pcols = {r[1] for r in self.db.execute("PRAGMA table_info(policies)")}
        if "resync_window" not in pcols:
            self.db.execute("ALTER TABLE policies ADD COLUMN resync_window TEXT NOT NULL DEFAULT '22:00-06:00'")
        if "history_limit" not in pcols:  # schema 5 → 6: the history size limit (0 = none, as before)
            self.db.execute("ALTER TABLE policies ADD COLUMN history_limit INTEGER NOT NULL DEFAULT 0")
        if self.get_meta("schema_version") != str(SCHEMA_VERSION):
            self.set_meta("schema_version", str(SCHEMA_VERSION))   # migrations above are idempotent
        if not self.db.execute("SELECT 1 FROM policies WHERE name=?", (DEFAULT_POLICY,)).fetchone():
            self.put_policy(Policy(DEFAULT_POLICY))

    def close(self) -> None:
        self.db.close()

    # meta
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # policies
    def put_policy(self, p: Policy) -> None:
        p.validate()
        self.db.execute("INSERT OR REPLACE INTO policies(name, rpo_threshold, retention, app_consistent, "
                        "crash_interval, resync_window, history_limit) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (p.name, p.rpo_threshold, p.retention, p.app_consistent, p.crash_interval, p.resync_window,
                         p.history_limit))

    def policy(self, name: str) -> Policy:
        row = self.db.execute(f"SELECT {_POLICY_COLS} FROM policies WHERE name=?", (name,)).fetchone()
        if not row:
            raise UnknownPolicy(f"no policy named {name!r}")
        return Policy(*row)

    def policies(self) -> list[Policy]:
        return [Policy(*r) for r in self.db.execute(f"SELECT {_POLICY_COLS} FROM policies ORDER BY name")]

    # machines
    def add_machine(self, name: str, cert_serial: int) -> None:
        """Register ``name`` (or give a restored machine its new certificate).

        Names are unique regardless of case (they name folders). A revoked name stays refused until an operator
        restores its access (:meth:`restore_access`); a restored machine keeps its row, vault and points.
        """
        row = self.db.execute("SELECT name, revoked, cert_serial, revoked_at, revoked_by FROM machines "
                              "WHERE name = ? COLLATE NOCASE", (name,)).fetchone()
        if row is None:
            self.db.execute("INSERT INTO machines(name, cert_serial, registered) VALUES (?, ?, ?)",
                            (name, str(cert_serial), time.time()))
            return
        existing, revoked, serial, revoked_at, revoked_by = row
        if existing != name:
            raise AlreadyExists(f"machine name {name!r} is taken by {existing!r} (names differ only in case)",
                                advice="Register the machine under another name.")
        if revoked:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(revoked_at)) if revoked_at else "earlier"
            raise MachineRevoked(f"machine {name!r} was revoked ({when}, by {revoked_by or 'an operator'}); "
                                 "its name cannot be registered again without an operator's decision")
        if serial:
            raise AlreadyExists(f"machine {name!r} is already registered",
                                advice="Revoke it first (`lifeboat machine revoke`) to register it again.")
        self.db.execute("UPDATE machines SET cert_serial=?, registered=? WHERE name=?",
                        (str(cert_serial), time.time(), name))

    def revoke(self, name: str, by: str) -> None:
        self.machine(name)
        self.db.execute("UPDATE machines SET revoked=1, revoked_at=?, revoked_by=? WHERE name=?",
                        (time.time(), by, name))

    def restore_access(self, name: str) -> None:
        """Undo a revocation: the old certificate stays refused (its serial is forgotten); the machine must
        register again with the passphrase, and then continues with its vault and points."""
        self.machine(name)
        self.db.execute("UPDATE machines SET revoked=0, cert_serial='', revoked_at=NULL, revoked_by=NULL "
                        "WHERE name=?", (name,))

    def machine(self, name: str) -> dict[str, Any]:
        cur = self.db.execute("SELECT * FROM machines WHERE name=?", (name,))
        row = cur.fetchone()
        if not row:
            raise UnknownMachine(f"no machine named {name!r} is registered")
        d = dict(zip([c[0] for c in cur.description], row))
        d["disks"] = json.loads(d["disks"])
        d["resync"] = json.loads(d.get("resync") or "{}")
        return d

    def machines(self) -> list[dict[str, Any]]:
        names = [r[0] for r in self.db.execute("SELECT name FROM machines ORDER BY name")]
        return [self.machine(n) for n in names]

    def update_machine(self, name: str, **fields: Any) -> None:
        self.machine(name)
        for k in ("disks", "resync"):
            if k in fields:
                fields[k] = json.dumps(fields[k])
        cols = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE machines SET {cols} WHERE name=?", (*fields.values(), name))

    def add_event(self, kind: str, machine: str | None, **data: Any) -> int:
        cur = self.db.execute("INSERT INTO events(time, machine, kind, data) VALUES (?, ?, ?, ?)",
                              (time.time(), machine, kind, json.dumps(data)))
        return int(cur.lastrowid or 0)

    def update_event(self, event_id: int, **data: Any) -> None:
        self.db.execute("UPDATE events SET data=? WHERE id=?", (json.dumps(data), event_id))

    def events(self, kind: str | None = None, *, since: float | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
        """Events oldest first: of one ``kind``, from ``since`` (epoch) on; with ``limit``, the newest that many."""
        where: list[str] = []
        args: list[Any] = []
        if kind:
            where.append("kind=?")
            args.append(kind)
        if since is not None:
            where.append("time>=?")
            args.append(since)
        sql = "SELECT id, time, machine, kind, data FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT ?) ORDER BY id"
            args.append(limit)
        else:
            sql += " ORDER BY id"
        rows = self.db.execute(sql, args)
        return [{"id": i, "time": t, "machine": m, "kind": k, "data": json.loads(d)} for i, t, m, k, d in rows]

    def last_events(self, kind: str) -> dict[str, dict[str, Any]]:
        """The newest event of ``kind`` per machine."""
        rows = self.db.execute("SELECT e.machine, e.data FROM events e JOIN (SELECT machine, MAX(id) AS id FROM "
                               "events WHERE kind=? AND machine IS NOT NULL GROUP BY machine) m ON e.id = m.id",
                               (kind,))
        return {m: json.loads(d) for m, d in rows}
