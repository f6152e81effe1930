"""The tasks' shared store: one SQLite database beside a folder of bodies and results.

Every worker of a server must answer status and get for any task, so a task lives where they
all see it: BentoML's workers are processes on one host, and the folder is theirs
(GENREG_TASK_DIR, default ``<BENTOML_HOME>/genreg-tasks``; `genreg serve` gives each server a
home of its own). The folder is for one host's workers: a worker's liveness is judged by its pid
and start time there, so replicas on other hosts must not share it (nor would SQLite's WAL
mode be safe on a network filesystem); each replica answers for its own tasks.

What is held, and for how long, is bounded: at most GENREG_TASK_QUEUE tasks are queued or
running at once (429 beyond); a finished task's result is kept GENREG_TASK_TTL seconds, and
the oldest results go first when they hold more than GENREG_TASK_BYTES on disk; then its id
answers 404. Results are files, streamed back: a held result costs a worker no memory.

A task's worker is recorded (pid and start time): one that is no longer running fails its
unfinished tasks, visibly, with the reason, when anyone asks or submits.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# BentoML's task states (bentoml's ResultStatus): its client parses these values.
PENDING, RUNNING, COMPLETED, FAILED, CANCELED = "pending", "in_progress", "completed", "failed", "canceled"
UNFINISHED = (PENDING, RUNNING)

QUEUE = int(os.environ.get("GENREG_TASK_QUEUE", "8"))
TTL_SECONDS = float(os.environ.get("GENREG_TASK_TTL", "3600"))
MAX_BYTES = int(os.environ.get("GENREG_TASK_BYTES", str(1 << 30)))

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    owner TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start TEXT NOT NULL,
    status TEXT NOT NULL,
    live INTEGER NOT NULL,
    created REAL NOT NULL,
    executed REAL,
    completed REAL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL,
    unit TEXT NOT NULL,
    per INTEGER NOT NULL,
    code INTEGER,
    error TEXT,
    size INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_live ON tasks (live);
"""


class QueueFull(Exception):
    """GENREG_TASK_QUEUE tasks are already queued or running."""


def default_folder() -> Path:
    home = Path(os.environ.get("BENTOML_HOME", "~/bentoml")).expanduser()
    return Path(os.environ.get("GENREG_TASK_DIR") or home / "genreg-tasks")


def owner_of(credentials: bytes | None) -> str:
    """Who may see a task: a digest of the bearer token it was submitted with ('' without auth)."""
    return hashlib.sha256(credentials).hexdigest() if credentials else ""


def process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, from /proc), so that a reused pid is
    not taken for the worker that died; '' where /proc has no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, started: str) -> bool:
    if Path("/proc").is_dir():
        return process_start(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def iso(seconds: float | None) -> str | None:
    return datetime.fromtimestamp(seconds, UTC).isoformat() if seconds is not None else None


@dataclass(frozen=True)
class TaskRow:
    id: str
    endpoint: str
    status: str
    created: float
    executed: float | None
    completed: float | None
    done: int
    total: int
    unit: str
    per: int
    code: int | None
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        """BentoML's task status (task_id, status, created_at, executed_at) and genreg's additions:
        when it finished, its progress, and why it failed."""
        return {
            "task_id": self.id,
            "status": self.status,
            "created_at": iso(self.created),
            "executed_at": iso(self.executed),
            "completed_at": iso(self.completed),
            "progress": {"unit": self.unit, "done": self.done // self.per, "total": self.total},
            "error": self.error,
        }


class TaskStore:
    """The shared store; every call opens its own connection (a worker's threads and event loop
    each use it; SQLite serialises the writers, WAL lets readers through)."""

    def __init__(
        self,
        folder: Path | None = None,
        queue: int = QUEUE,
        ttl: float = TTL_SECONDS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.folder = folder or default_folder()
        self.queue, self.ttl, self.max_bytes = queue, ttl, max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid()
        self.pid_start = process_start(self.pid)
        self._swept = 0.0
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextlib.contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.folder / "tasks.db", timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            if write:
                db.execute("BEGIN IMMEDIATE")
            yield db
            if write:
                db.execute("COMMIT")
        except BaseException:
            if write and db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def body_file(self, task_id: str) -> Path:
        return self.folder / f"{task_id}.body"

    def result_file(self, task_id: str) -> Path:
        return self.folder / f"{task_id}.result"

    # --- submitting and running (the owning worker) -------------------------------------------
    def submit(self, endpoint: str, owner: str, body: bytes, total: int, unit: str, per: int = 1) -> str:
        """A new pending task owned by this worker; QueueFull when the queue is full."""
        task_id = secrets.token_hex(16)  # 128 random bits: not guessable, and never reused
        self.sweep(force=True)
        with self._db(write=True) as db:
            (live,) = db.execute("SELECT COUNT(*) FROM tasks WHERE live = 1").fetchone()
            if live >= self.queue:
                raise QueueFull(f"{live} tasks are queued or running (GENREG_TASK_QUEUE={self.queue})")
            tmp = self.body_file(task_id).with_suffix(".tmp")
            tmp.write_bytes(body)
            tmp.rename(self.body_file(task_id))
            db.execute(
                "INSERT INTO tasks (id, endpoint, owner, pid, pid_start, status, live, created, total, unit, per)"
                " VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)",
                (task_id, endpoint, owner, self.pid, self.pid_start, PENDING, time.time(), total, unit, per),
            )
        return task_id

    def start(self, task_id: str) -> bool:
        """Mark the task running; False if it was canceled meanwhile."""
        with self._db(write=True) as db:
            cur = db.execute(
                "UPDATE tasks SET status = ?, executed = ? WHERE id = ? AND status = ?",
                (RUNNING, time.time(), task_id, PENDING),
            )
            return cur.rowcount == 1

    def progress(self, task_id: str, done: int) -> bool:
        """Record progress; whether the task is still wanted (not canceled, not expired)."""
        with self._db(write=True) as db:
            db.execute(
                "UPDATE tasks SET done = ? WHERE id = ? AND status IN (?, ?)", (done, task_id, *UNFINISHED)
            )
            row = db.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return row is not None and row[0] in UNFINISHED

    def wanted(self, task_id: str) -> bool:
        """Whether the task is still wanted (not canceled, not expired): a read, for the watch."""
        with self._db() as db:
            row = db.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return row is not None and row[0] in UNFINISHED

    def finish(self, task_id: str, code: int, result: bytes, error: str | None = None, done: int = 0) -> None:
        """Store the answer (its status code and body) and free the task's place in the queue; a
        task canceled meanwhile stays canceled."""
        path = self.result_file(task_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(result)
        tmp.rename(path)
        status = COMPLETED if code < 400 else FAILED
        with self._db(write=True) as db:
            db.execute(
                "UPDATE tasks SET status = ?, completed = ?, code = ?, error = ?, size = ?, done = ?"
                " WHERE id = ? AND status IN (?, ?)",
                (status, time.time(), code, error, len(result), done, task_id, *UNFINISHED),
            )
            db.execute("UPDATE tasks SET live = 0 WHERE id = ?", (task_id,))
        self.sweep()

    def fail(self, task_id: str, reason: str, code: int = 500) -> None:
        """The task failed without an answer of its own (the store or its files failed it): its
        status says why, and its place is free."""
        with self._db(write=True) as db:
            db.execute(
                "UPDATE tasks SET status = ?, completed = ?, code = ?, error = ? WHERE id = ? AND status IN (?, ?)",
                (FAILED, time.time(), code, reason, task_id, *UNFINISHED),
            )
            db.execute("UPDATE tasks SET live = 0 WHERE id = ?", (task_id,))

    def release(self, task_id: str) -> None:
        """The worker is done with a task it did not finish (canceled): its place is free."""
        with self._db(write=True) as db:
            db.execute("UPDATE tasks SET live = 0 WHERE id = ?", (task_id,))
        self.result_file(task_id).unlink(missing_ok=True)

    # --- what any worker answers ----------------------------------------------------------------
    def get(self, task_id: str, owner: str) -> TaskRow | None:
        """The task, or None: unknown, expired, or submitted by another client."""
        self.sweep()
        with self._db() as db:
            row = db.execute(
                "SELECT id, endpoint, status, created, executed, completed, done, total, unit, per, code, error,"
                " owner, pid, pid_start, live FROM tasks WHERE id = ?",
                (task_id,),
            ).fetchone()
        if row is None or not secrets.compare_digest(row[12], owner):
            return None
        if row[15] and not _alive(row[13], row[14]):
            self._orphaned([(task_id, row[13])])
            return self.get(task_id, owner)
        return TaskRow(*row[:12])

    def cancel(self, task_id: str, owner: str) -> TaskRow | None:
        """Cancel an unfinished task (its worker stops it at its next step); the task as it is
        now, or None as for get."""
        if self.get(task_id, owner) is None:
            return None
        with self._db(write=True) as db:
            # A task still queued frees its place at once (its worker's start() then refuses it);
            # a running one when its worker stops it.
            db.execute("UPDATE tasks SET live = 0 WHERE id = ? AND status = ?", (task_id, PENDING))
            db.execute(
                "UPDATE tasks SET status = ?, completed = ? WHERE id = ? AND status IN (?, ?)",
                (CANCELED, time.time(), task_id, *UNFINISHED),
            )
        return self.get(task_id, owner)

    # --- upkeep -------------------------------------------------------------------------------
    def _orphaned(self, dead: list[tuple[str, int]]) -> None:
        now = time.time()
        with self._db(write=True) as db:
            for task_id, pid in dead:
                db.execute(
                    "UPDATE tasks SET status = ?, completed = ?, code = 503, error = ? WHERE id = ? AND status IN (?, ?)",
                    (FAILED, now, f"the worker running it (pid {pid}) exited", task_id, *UNFINISHED),
                )
                db.execute("UPDATE tasks SET live = 0 WHERE id = ?", (task_id,))

    def sweep(self, force: bool = False) -> None:
        """Fail the tasks of workers that died, and forget expired results (at most once a second
        unless ``force``)."""
        now = time.time()
        if not force and now - self._swept < 1.0:
            return
        self._swept = now
        with self._db() as db:
            live = db.execute("SELECT id, pid, pid_start FROM tasks WHERE live = 1").fetchall()
            expired = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM tasks WHERE live = 0 AND completed IS NOT NULL AND completed < ?",
                    (now - self.ttl,),
                )
            ]
            held = db.execute(
                "SELECT id, size FROM tasks WHERE live = 0 AND completed IS NOT NULL ORDER BY completed DESC"
            ).fetchall()
        dead = [(task_id, pid) for task_id, pid, started in live if not _alive(pid, started)]
        if dead:
            self._orphaned(dead)
        total = 0
        for task_id, size in held:
            total += size
            if total > self.max_bytes and task_id not in expired:
                expired.append(task_id)
        if not expired:
            return
        with self._db(write=True) as db:
            db.executemany("DELETE FROM tasks WHERE id = ?", [(t,) for t in expired])
        for task_id in expired:
            self.body_file(task_id).unlink(missing_ok=True)
            self.result_file(task_id).unlink(missing_ok=True)

    def body(self, task_id: str) -> bytes:
        return self.body_file(task_id).read_bytes()
