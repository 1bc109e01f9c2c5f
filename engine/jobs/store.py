"""Jobs in the state database: one row per job, its wire form as JSON beside the columns queries need.

The table lives in ``state.db`` (``StateDB`` creates it with the rest of its schema, schema version 4); the store
also creates it on a bare connection, so it works on any SQLite file (tests). Writes are rare — a state change, a
step change, progress at most every ``PROGRESS_SECONDS`` — because every one is an fsync (``synchronous=FULL``).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Iterable

from .model import FINAL_JOB_STATES, Job

JOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, target TEXT, state TEXT NOT NULL,
    created REAL NOT NULL, ended REAL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created);
"""

KEEP_FINISHED = 500   # newest finished jobs kept as history; older ones are deleted at start-up


class JobStore:
    """Persistence of jobs on an open SQLite connection (autocommit, as ``StateDB`` opens it)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.db.executescript(JOBS_SCHEMA)

    def save(self, job: Job) -> None:
        self.db.execute("INSERT OR REPLACE INTO jobs(id, kind, target, state, created, ended, data) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (job.id, job.kind, job.target, job.state.value, job.created, job.ended,
                         json.dumps(job.to_dict())))

    def load(self) -> list[Job]:
        """Every stored job, oldest first."""
        return [Job.from_dict(json.loads(r[0])) for r in self.db.execute("SELECT data FROM jobs ORDER BY created, id")]

    def get(self, job_id: str) -> Job | None:
        row = self.db.execute("SELECT data FROM jobs WHERE id=?", (job_id,)).fetchone()
        return Job.from_dict(json.loads(row[0])) if row else None

    def unfinished(self) -> list[Job]:
        finals = tuple(s.value for s in FINAL_JOB_STATES)
        marks = ",".join("?" * len(finals))
        return [Job.from_dict(json.loads(r[0])) for r in
                self.db.execute(f"SELECT data FROM jobs WHERE state NOT IN ({marks}) ORDER BY created", finals)]

    def save_many(self, jobs: Iterable[Job]) -> None:
        self.db.execute("BEGIN")
        try:
            for j in jobs:
                self.save(j)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def prune(self, keep: int = KEEP_FINISHED) -> int:
        """Delete finished jobs beyond the newest ``keep``; returns how many went."""
        finals = tuple(s.value for s in FINAL_JOB_STATES)
        marks = ",".join("?" * len(finals))
        cur = self.db.execute(
            f"DELETE FROM jobs WHERE state IN ({marks}) AND id NOT IN "
            f"(SELECT id FROM jobs WHERE state IN ({marks}) ORDER BY created DESC LIMIT ?)",
            (*finals, *finals, keep))
        return cur.rowcount
