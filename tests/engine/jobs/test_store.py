"""The jobs table in state.db: created by StateDB (schema 4) on a new file and on an older file."""

from __future__ import annotations

import sqlite3

from engine.appliance.state import SCHEMA_VERSION, StateDB
from engine.jobs import Job, JobState, JobStore, Step, StepState


def test_statedb_migrates_a_schema_2_file_to_hold_jobs(tmp_path):
    path = tmp_path / "state.db"
    db = sqlite3.connect(str(path), isolation_level=None)
    db.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                     "INSERT INTO meta VALUES ('schema_version', '2');")
    db.close()
    s = StateDB(path)
    assert SCHEMA_VERSION == 8 and s.get_meta("schema_version") == "8"   # 6: history_limit; 7: issue 13's recovery tables; 8: recovery plans
    assert {"recovery_hosts", "recovery_settings", "failovers"} <= {
        r[0] for r in s.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    store = JobStore(s.db)
    job = Job("abc123abc123", "test-failover", "vm", "Drill", JobState.RUNNING,
              steps=[Step("export", "Export disks", 1, state=StepState.RUNNING, started=1.0)], result={"point": {}})
    store.save(job)
    s.db.execute("INSERT INTO machines(name, cert_serial, registered) VALUES ('vm', '1', 0)")
    assert s.machine("vm")["recoverable_at"] is None and s.machine("vm")["last_heard"] is None
    s.close()
    s2 = StateDB(path)   # opening again is idempotent
    again = JobStore(s2.db).get(job.id)
    assert again is not None and again.to_dict() == job.to_dict()
    assert [j.id for j in JobStore(s2.db).unfinished()] == [job.id]
    s2.close()
