"""The job database of `asr transcribe`: one SQLite file in OUT_DIR, a row per recording.

It makes a run something an archivist can stop and start: re-running the same command skips
what is done, a run killed with SIGKILL loses nothing (each change is committed at once, in
WAL mode) and writes nothing twice (a recording whose outputs were all renamed into place before
the kill is marked done without being transcribed again), and failures keep their reason until
`--retry-failed` retries them.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY,          -- output path relative to OUT_DIR, without extension
    path TEXT NOT NULL,            -- the recording's file
    recording_id TEXT,
    status TEXT NOT NULL,          -- pending | running | done | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    audio_seconds REAL,
    wall_seconds REAL,
    started REAL,
    finished REAL,
    language TEXT,
    outputs TEXT,                  -- JSON list of the output files
    request TEXT                   -- what the transcript depends on (file, options): a hash
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL,
    finished REAL,
    options TEXT,
    summary TEXT
);
"""

DB_NAME = "jobs.sqlite"
LOCK_NAME = ".transcribe.lock"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""Write errors that are the disk's state, not a recording's fault: the run stops, and the
recordings it was writing are transcribed again by the next run."""


class DiskFullError(OSError):
    """The disk (or a quota, or a file-size limit) refused a write: stop the run, keep nothing
    half-written, and let the same command continue once there is room."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(
            f"{path}: {reason}: the run stopped and kept nothing half-written; free some space "
            "and re-run the same command to continue where it stopped"
        )


class RunLockedError(OSError):
    """Another `asr transcribe` run holds OUT_DIR."""


class RunLock:
    """One `asr transcribe` run per OUT_DIR at a time: an exclusive flock on OUT_DIR/LOCK_NAME.

    The kernel drops the lock when the holder exits, however it ends (a SIGKILL too), so a
    stale lock never blocks a rerun; on a shared disk, NFS carries flock as a POSIX lock, so
    two machines exclude each other as two processes do. A second run is refused with the
    holder's host, process and start time rather than transcribing everything twice.
    """

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(
                f"{self.path.parent}: another asr transcribe run is writing here ({holder}); "
                "wait for it to end or pass another --out"
            ) from None
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {stamp}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


@dataclass
class Plan:
    """What a run will do: the keys to transcribe and what it skips."""

    todo: list[str]
    done: int = 0
    failed: int = 0
    recovered: int = 0


class JobDB:
    """A SQLite job table; every method commits before it returns."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(jobs)")}
        if "request" not in columns:  # a database from before requests were recorded
            self.db.execute("ALTER TABLE jobs ADD COLUMN request TEXT")

    def close(self) -> None:
        self.db.close()

    def register(self, jobs: list[tuple[str, str, str | None]]) -> None:
        """Add (key, path, recording id) rows not yet known; known rows keep their status."""
        with self.db:
            self.db.executemany(
                "INSERT INTO jobs (key, path, recording_id, status) VALUES (?, ?, ?, 'pending') "
                "ON CONFLICT(key) DO UPDATE SET path = excluded.path",
                jobs,
            )

    def plan(
        self, requests: dict[str, str], outputs: dict[str, list[Path]], retry_failed: bool = False
    ) -> Plan:
        """Which keys to transcribe now: new ones, interrupted ones, those whose request
        (file, options) changed or whose asked-for outputs are missing, failed ones if asked."""
        plan = Plan(todo=[])
        rows = {
            r[0]: r[1:] for r in self.db.execute("SELECT key, status, request FROM jobs").fetchall()
        }
        for key, request in requests.items():
            status, before = rows.get(key, ("pending", None))
            same = before == request
            present = all(Path(p).is_file() for p in outputs[key])
            if status == "done" and same and present:
                plan.done += 1
            elif status == "failed" and same and not retry_failed:
                plan.failed += 1
            elif status == "running" and same and present:
                # killed after its outputs were renamed into place but before this row said so
                self.db.execute(
                    "UPDATE jobs SET status='done', finished=? WHERE key=?", (time.time(), key)
                )
                plan.recovered += 1
            else:
                plan.todo.append(key)
        return plan

    def start(self, key: str, outputs: list[Path], request: str) -> None:
        self.db.execute(
            "UPDATE jobs SET status='running', attempts=attempts+1, started=?, error=NULL, "
            "outputs=?, request=? WHERE key=?",
            (time.time(), json.dumps([str(p) for p in outputs]), request, key),
        )

    def done(self, key: str, audio_seconds: float, wall_seconds: float, language: str | None):
        self.db.execute(
            "UPDATE jobs SET status='done', finished=?, audio_seconds=?, wall_seconds=?, "
            "language=? WHERE key=?",
            (time.time(), audio_seconds, wall_seconds, language, key),
        )

    def fail(self, key: str, error: str) -> None:
        self.db.execute(
            "UPDATE jobs SET status='failed', finished=?, error=? WHERE key=?",
            (time.time(), error, key),
        )

    def begin_run(self, options: dict) -> int:
        cur = self.db.execute(
            "INSERT INTO runs (started, options) VALUES (?, ?)",
            (time.time(), json.dumps(options, default=str)),
        )
        return int(cur.lastrowid)

    def end_run(self, run_id: int, summary: dict) -> None:
        self.db.execute(
            "UPDATE runs SET finished=?, summary=? WHERE id=?",
            (time.time(), json.dumps(summary), run_id),
        )

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())

    def row(self, key: str) -> dict | None:
        cur = self.db.execute("SELECT * FROM jobs WHERE key=?", (key,))
        r = cur.fetchone()
        return dict(zip([d[0] for d in cur.description], r)) if r else None

    def failures(self) -> list[tuple[str, str, str]]:
        """(key, path, error) of every failed recording."""
        return self.db.execute(
            "SELECT key, path, error FROM jobs WHERE status='failed' ORDER BY key"
        ).fetchall()
