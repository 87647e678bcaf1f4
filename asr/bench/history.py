"""The benchmark history: an embedded SQLite database, one row per run and per result.

runs: run id, time, git commit, config. results: per model and test set the metrics, model
and dataset hashes, normaliser version, options. utterances: per result each utterance's
errors and reference words, so that any two runs can be compared utterance by utterance.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started TEXT NOT NULL,
    git_commit TEXT,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    model TEXT NOT NULL,
    testset TEXT NOT NULL,
    model_sha256 TEXT,
    dataset_sha256 TEXT,
    normalizer TEXT NOT NULL,
    options TEXT NOT NULL,
    wer REAL, cer REAL, ci_low REAL, ci_high REAL,
    substitutions INTEGER, deletions INTEGER, insertions INTEGER,
    words INTEGER, n_utterances INTEGER,
    audio_seconds REAL, wall_seconds REAL, rtfx REAL, peak_rss_mib REAL,
    breakdown TEXT, confusions TEXT, predictions TEXT,
    PRIMARY KEY (run_id, model, testset)
);
CREATE TABLE IF NOT EXISTS utterances (
    run_id TEXT NOT NULL, model TEXT NOT NULL, testset TEXT NOT NULL,
    utt_id TEXT NOT NULL, errors INTEGER NOT NULL, words INTEGER NOT NULL,
    PRIMARY KEY (run_id, model, testset, utt_id)
);
"""

METRICS = (
    "wer",
    "cer",
    "ci_low",
    "ci_high",
    "substitutions",
    "deletions",
    "insertions",
    "words",
    "n_utterances",
    "audio_seconds",
    "wall_seconds",
    "rtfx",
    "peak_rss_mib",
)


class History:
    """Open (or create) the database; every write is one transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def add_run(self, run_id: str, started: str, commit: str | None, config: dict) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?)",
                (run_id, started, commit, json.dumps(config, default=str)),
            )

    def add_result(self, run_id: str, row: dict, utts: list[tuple[str, int, int]]) -> None:
        cols = ["run_id", "model", "testset", "model_sha256", "dataset_sha256", "normalizer"]
        cols += ["options", *METRICS, "breakdown", "confusions", "predictions"]
        values = {**row, "run_id": run_id}
        for k in ("options", "breakdown", "confusions"):
            values[k] = json.dumps(values.get(k), ensure_ascii=False)
        with self.db:
            self.db.execute(
                f"INSERT INTO results ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [values.get(c) for c in cols],
            )
            self.db.executemany(
                "INSERT INTO utterances VALUES (?, ?, ?, ?, ?, ?)",
                [(run_id, row["model"], row["testset"], u, e, w) for u, e, w in utts],
            )

    def runs(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM runs ORDER BY started, run_id").fetchall()

    def results(self, run_id: str | None = None) -> list[dict]:
        q = "SELECT r.*, runs.started, runs.git_commit FROM results r JOIN runs USING (run_id)"
        args: tuple = ()
        if run_id:
            q += " WHERE run_id = ?"
            args = (run_id,)
        rows = self.db.execute(q + " ORDER BY runs.started, r.model, r.testset", args).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            for k in ("options", "breakdown", "confusions"):
                d[k] = json.loads(d[k]) if d[k] else None
            out.append(d)
        return out

    def previous(self, run_id: str, model: str, testset: str, normalizer: str) -> dict | None:
        """The latest earlier result of the same model name on the same test set and scale."""
        row = self.db.execute(
            "SELECT r.run_id FROM results r JOIN runs USING (run_id) WHERE r.model = ? AND "
            "r.testset = ? AND r.normalizer = ? AND r.run_id != ? AND runs.started <= "
            "(SELECT started FROM runs WHERE run_id = ?) ORDER BY runs.started DESC LIMIT 1",
            (model, testset, normalizer, run_id, run_id),
        ).fetchone()
        return dict(row) if row else None

    def utterance_errors(self, run_id: str, model: str, testset: str) -> dict[str, tuple]:
        rows = self.db.execute(
            "SELECT utt_id, errors, words FROM utterances WHERE run_id=? AND model=? AND testset=?",
            (run_id, model, testset),
        ).fetchall()
        return {r["utt_id"]: (r["errors"], r["words"]) for r in rows}

    def resolve(self, ref: str) -> str:
        """A run id from a full id, a unique prefix, or 'latest' / 'previous'."""
        ids = [r["run_id"] for r in self.runs()]
        if ref in ("latest", "previous"):
            k = 1 if ref == "latest" else 2
            if len(ids) < k:
                raise ValueError(f"{self.path}: fewer than {k} runs")
            return ids[-k]
        found = [i for i in ids if i.startswith(ref)]
        if len(found) != 1:
            raise ValueError(f"{self.path}: run {ref!r} matches {len(found)} runs")
        return found[0]
