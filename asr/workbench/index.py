"""The search index of a transcripts folder: SQLite with FTS5, kept in step with the files.

OUT_DIR/.workbench/index.sqlite holds a row per recording (catalogue fields, duration, status,
mean word confidence, speakers, review state) and per segment, and an FTS5 table over segment
text that folds case and accents (`unicode61 remove_diacritics 2`). It is a cache: `refresh`
reads only transcripts whose file changed since the last look, so a folder a run is still
writing is searchable as it grows, and deleting the index only costs one rebuild.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from asr.outputs import EXTENSIONS
from asr.textnorm import fold

log = logging.getLogger(__name__)

INDEX_NAME = "index.sqlite"
JOBS_DB = "jobs.sqlite"  # asr transcribe's job database (asr.engine.jobs.DB_NAME)
SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    key TEXT PRIMARY KEY,           -- transcript path under OUT_DIR, without extension
    recording_id TEXT, title TEXT, date TEXT, collection TEXT, language TEXT, rights TEXT,
    duration REAL, status TEXT, confidence REAL, speakers TEXT, review TEXT, revision INTEGER,
    words INTEGER, error TEXT,
    mtime_ns INTEGER, size INTEGER  -- of the JSON file, to see that it changed
);
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL, seg INTEGER NOT NULL, start REAL, "end" REAL, text TEXT,
    speaker TEXT, confidence REAL, words TEXT  -- JSON [[start, end, word], ...]
);
CREATE INDEX IF NOT EXISTS segments_key ON segments(key);
CREATE INDEX IF NOT EXISTS segments_confidence ON segments(confidence);
CREATE VIRTUAL TABLE IF NOT EXISTS segments_fts USING fts5(
    text, content='segments', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS segments_ai AFTER INSERT ON segments BEGIN
    INSERT INTO segments_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS segments_ad AFTER DELETE ON segments BEGIN
    INSERT INTO segments_fts(segments_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
"""
SORTS = {
    "title": "coalesce(title, recording_id) COLLATE NOCASE",
    "date": "date",
    "duration": "duration",
    "confidence": "confidence",
    "collection": "collection COLLATE NOCASE",
    "language": "language",
    "status": "status",
}
BATCH = 200
"""Transcripts read per index transaction."""
RANKED = 5000
"""Searches matching more segments than this come in index order, not ranked: ranking all of
a word said every few seconds (100,000s of segments) takes seconds and tells nothing."""
MARK = ("\x02", "\x03")  # snippet highlight markers: no transcript holds them (escaped later)


@dataclass
class Filters:
    """What a collection listing or a search is narrowed to (empty: everything)."""

    collection: str = ""
    language: str = ""
    speaker: str = ""
    date_from: str = ""
    date_to: str = ""
    status: str = ""
    review: str = ""

    def where(self, table: str = "r") -> tuple[str, list]:
        clauses, args = [], []
        for column in ("collection", "language", "status", "review"):
            value = getattr(self, column)
            if value:
                clauses.append(f"{table}.{column} = ?")
                args.append(value)
        if self.date_from:
            clauses.append(f"{table}.date >= ?")
            args.append(self.date_from)
        if self.date_to:  # a date "1957" or "1957-06" is within a range ending 1957
            clauses.append(f"substr({table}.date, 1, length(?)) <= ?")
            args += [self.date_to, self.date_to]
        return " AND ".join(clauses) or "1", args


def mark(text: str, terms: set[str]) -> str:
    """text with each word that folds to one of terms between MARK characters."""
    text = unicodedata.normalize("NFC", text)
    return "".join(
        f"{MARK[0]}{piece}{MARK[1]}" if piece and fold(piece) in terms else piece
        for piece in re.split(r"(\w+)", text)
    )


def fts_query(q: str) -> str:
    """A user's search as an FTS5 query: "quoted phrases" and words, all required; every term
    quoted, so FTS5's operators and syntax in the input are only text."""
    terms = []
    q = unicodedata.normalize("NFC", q)  # "e" + combining accent is one letter, as indexed
    for phrase, word in re.findall(r'"([^"]*)"|(\S+)', q):
        text = phrase if phrase else word
        tokens = re.findall(r"\w+", text)
        if tokens:
            terms.append('"' + " ".join(tokens) + '"')
    return " AND ".join(terms)


def transcript_files(out_dir: Path) -> dict[str, os.stat_result]:
    """Every transcript JSON under OUT_DIR (not in hidden folders, not through a link that
    leaves OUT_DIR): {key: its stat}. The workbench's index and `asr publish` both walk this."""
    found = {}
    ext = EXTENSIONS["json"]
    for folder, dirs, files in os.walk(out_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.endswith(ext) or name.startswith("."):
                continue
            path = Path(folder) / name
            if path.is_symlink() and not path.resolve().is_relative_to(out_dir):
                continue
            key = path.relative_to(out_dir).as_posix()[: -len(ext)]
            try:
                found[key] = path.stat()
            except OSError:
                continue
    return found


def read_jobs(out_dir: Path, key: str | None = None) -> dict[str, tuple[str, str | None, str]]:
    """{key: (status, error, recording path)} from asr transcribe's job database (all jobs, or
    only `key`); empty when there is none or it cannot be read."""
    path = out_dir / JOBS_DB
    if not path.is_file():
        return {}
    sql, args = "SELECT key, status, error, path FROM jobs", ()
    if key is not None:
        sql, args = sql + " WHERE key=?", (key,)
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute(sql, args).fetchall()
        finally:
            con.close()
    except sqlite3.Error as e:
        log.warning("%s: cannot read the job database: %s", path, e)
        return {}
    return {k: (status, err, p) for k, status, err, p in rows}


class Index:
    """The index of one transcripts folder. Thread-safe: one connection, one lock."""

    def __init__(self, out_dir: str | Path, refresh_every: float = 2.0):
        self.out_dir = Path(out_dir).resolve()
        folder = self.out_dir / ".workbench"
        folder.mkdir(exist_ok=True)
        self.path = folder / INDEX_NAME
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.lock = threading.RLock()
        self._refreshing = threading.Lock()
        self._watching = False
        self._not_transcripts: dict[str, tuple[int, int]] = {}
        self.refresh_every = refresh_every
        self._last = 0.0

    def close(self) -> None:
        self.db.close()

    # -- keeping in step with the folder ------------------------------------------------------

    def _transcripts(self) -> dict[str, os.stat_result]:
        return transcript_files(self.out_dir)

    def _jobs(self) -> dict[str, tuple[str, str | None]]:
        return {k: (status, err) for k, (status, err, _) in read_jobs(self.out_dir).items()}

    def audio_path(self, key: str) -> str | None:
        """The recording of `key` as asr transcribe's job database has it (None: no such job):
        the only media the workbench serves."""
        job = read_jobs(self.out_dir, key).get(key)
        return job[2] if job else None

    def refresh(self, force: bool = False) -> int:
        """Read transcripts that are new or changed since the last look, drop those gone;
        returns how many were read. At most every `refresh_every` seconds unless forced. The
        folder is scanned and the files read without holding the index: searches go on."""
        now = time.monotonic()
        if not force and now - self._last < self.refresh_every:
            return 0
        self._last = now
        with self._refreshing:  # one refresh at a time
            files = self._transcripts()
            jobs = self._jobs()
            with self.lock:
                known = {
                    k: (m, s, st)
                    for k, m, s, st in self.db.execute(
                        "SELECT key, mtime_ns, size, status FROM recordings"
                    )
                }
            changed = [
                key
                for key, st in files.items()
                if known.get(key, (None, None, None))[:2] != (st.st_mtime_ns, st.st_size)
                and self._not_transcripts.get(key) != (st.st_mtime_ns, st.st_size)
            ]
            n = 0
            # in batches: memory stays that of a batch, and searches go on in between
            for i in range(0, len(changed), BATCH):
                parsed = [
                    (key, self._parse(key, files[key], jobs.get(key, ("done", None))[0]))
                    for key in changed[i : i + BATCH]
                ]
                with self.lock, self.db:
                    for key, rows in parsed:
                        if rows is not None:
                            self._store(key, *rows)
                            n += 1
                        else:  # not read again until it changes
                            st = files[key]
                            self._not_transcripts[key] = (st.st_mtime_ns, st.st_size)
            for key in set(self._not_transcripts) - set(files):
                del self._not_transcripts[key]
            not_ours = set(self._not_transcripts)
            with self.lock, self.db:
                for key in (set(known) - set(files) - set(jobs)) | (not_ours & set(known)):
                    self._drop(key)
                for key in set(files) - set(changed) - not_ours:
                    status = jobs.get(key, ("done", None))[0]
                    if known[key][2] != status:
                        self.db.execute("UPDATE recordings SET status=? WHERE key=?", (status, key))
                for key, (status, error) in jobs.items():  # not transcribed (yet): listed too
                    before = known.get(key)
                    if key in files or (before and before[0] is None and before[2] == status):
                        continue  # its transcript is indexed, or its row is as it was
                    self._drop(key)
                    self.db.execute(
                        "INSERT INTO recordings (key, recording_id, status, error) "
                        "VALUES (?, ?, ?, ?)",
                        (key, key, status, error),
                    )
            return n

    def update(self, key: str) -> None:
        """Read one transcript again now (after a correction), whatever its file's time."""
        path = self.out_dir / (key + EXTENSIONS["json"])
        status = self._jobs().get(key, ("done", None))[0]
        rows = self._parse(key, path.stat(), status)
        if rows is not None:
            with self.lock, self.db:
                self._store(key, *rows)

    def _fresh(self) -> None:
        """Before an answer: refresh here, unless a watcher thread does it."""
        if not self._watching:
            self.refresh()

    def watch(self, interval: float = 2.0) -> threading.Event:
        """Refresh every `interval` seconds in a daemon thread (a folder a run is still
        writing); set the returned event to stop it."""
        stop = threading.Event()
        self._watching = True

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.refresh(force=True)
                except Exception as e:  # noqa: BLE001 - the watcher must outlive any one file
                    log.warning("index refresh: %s", e)

        threading.Thread(target=loop, name="index-refresh", daemon=True).start()
        return stop

    def _drop(self, key: str) -> None:
        self.db.execute("DELETE FROM segments WHERE key=?", (key,))
        self.db.execute("DELETE FROM recordings WHERE key=?", (key,))

    def _parse(self, key: str, st: os.stat_result, status: str):
        """The rows of one transcript file (None: not a transcript)."""
        path = self.out_dir / (key + EXTENSIONS["json"])
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            segments = d["segments"]
            recording_id = d["recording_id"]
            meta = d.get("metadata") or {}
            review = d.get("review") or {}
            probs, rows = [], []
            for s in segments:
                words = s.get("words") or []
                p = [float(w.get("probability", 0.0)) for w in words]
                probs += p
                rows.append(
                    (
                        key,
                        int(s.get("id", len(rows))),
                        float(s["start"]),
                        float(s["end"]),
                        unicodedata.normalize("NFC", s.get("text") or "").strip(),
                        s.get("speaker"),
                        sum(p) / len(p) if p else None,
                        json.dumps([[w["start"], w["end"], w["word"]] for w in words]),
                    )
                )
            recording = (
                key,
                recording_id,
                _str(meta.get("title")),
                _str(meta.get("date")),
                _str(meta.get("collection")),
                d.get("language"),
                _str(meta.get("rights")),
                float(d.get("duration") or 0.0),
                status,
                sum(probs) / len(probs) if probs else None,
                json.dumps(d.get("speakers") or []),
                review.get("state", "machine"),
                int(review.get("revision", 0)),
                len(probs),
                None,
                st.st_mtime_ns,
                st.st_size,
            )
        except Exception as e:  # noqa: BLE001 - any JSON file may sit in OUT_DIR: not ours
            log.debug("%s: not a transcript (%s)", path, e)
            return None
        return recording, rows

    def _store(self, key: str, recording: tuple, rows: list[tuple]) -> None:
        self._drop(key)
        self.db.execute(
            "INSERT INTO recordings VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", recording
        )
        self.db.executemany(
            'INSERT INTO segments (key, seg, start, "end", text, speaker, confidence, words) '
            "VALUES (?,?,?,?,?,?,?,?)",
            rows,
        )

    # -- asking -------------------------------------------------------------------------------

    def recordings(
        self,
        filters: Filters | None = None,
        sort: str = "title",
        desc: bool = False,
        limit: int = -1,
        offset: int = 0,
    ) -> list[dict]:
        """The collection: one dict per recording, filtered and sorted (limit -1: all)."""
        self._fresh()
        where, args = self._where(filters)
        order = SORTS.get(sort, SORTS["title"]) + (" DESC" if desc else "") + ", key"
        with self.lock:
            cur = self.db.execute(
                f"SELECT * FROM recordings r WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
                [*args, limit, offset],
            )
            names = [c[0] for c in cur.description]
            out = [dict(zip(names, row)) for row in cur]
        for r in out:
            r["speakers"] = json.loads(r["speakers"] or "[]")
        return out

    def totals(self, filters: Filters | None = None) -> tuple[int, float]:
        """How many recordings and seconds of audio the filters keep."""
        where, args = self._where(filters)
        with self.lock:
            n, seconds = self.db.execute(
                f"SELECT count(*), coalesce(sum(duration), 0) FROM recordings r WHERE {where}",
                args,
            ).fetchone()
        return n, seconds

    def _where(self, filters: Filters | None) -> tuple[str, list]:
        where, args = (filters or Filters()).where()
        if filters and filters.speaker:
            where += " AND EXISTS (SELECT 1 FROM segments s WHERE s.key = r.key AND s.speaker = ?)"
            args.append(filters.speaker)
        return where, args

    def recording(self, key: str) -> dict | None:
        self._fresh()
        with self.lock:
            cur = self.db.execute("SELECT * FROM recordings WHERE key=?", (key,))
            row = cur.fetchone()
            if row is None:
                return None
            r = dict(zip([c[0] for c in cur.description], row))
        r["speakers"] = json.loads(r["speakers"] or "[]")
        return r

    def facets(self) -> dict[str, list[str]]:
        """The values to filter by: collections, languages, speakers, statuses."""
        self._fresh()
        with self.lock:
            out = {
                c: [
                    v
                    for (v,) in self.db.execute(
                        f"SELECT DISTINCT {c} FROM recordings WHERE {c} IS NOT NULL ORDER BY {c}"
                    )
                ]
                for c in ("collection", "language", "status", "review")
            }
            out["speaker"] = [  # from the recordings' speaker lists, not every segment
                v
                for (v,) in self.db.execute(
                    "SELECT DISTINCT j.value FROM recordings r, json_each(r.speakers) j ORDER BY 1"
                )
            ]
        return out

    def search(self, q: str, filters: Filters | None = None, limit: int = 50, offset: int = 0):
        """Segments that hold every word and phrase of q (case and accents folded), best
        first (BM25) when there are at most RANKED of them, else in the index's order (a word
        in every other segment has no best); each hit with its recording, time (the first
        matching word's), and its text with the matches between MARK characters."""
        self._fresh()
        match = fts_query(q)
        if not match:
            return []
        where, args = (filters or Filters()).where()
        if filters and filters.speaker:
            where += " AND s.speaker = ?"
            args.append(filters.speaker)
        with self.lock:
            (many,) = self.db.execute(
                "SELECT count(*) > ? FROM (SELECT 1 FROM segments_fts WHERE segments_fts "
                "MATCH ? LIMIT ?)",
                (RANKED, match, RANKED + 1),
            ).fetchone()
            order = "" if many else "ORDER BY rank"
            sql = (
                'SELECT s.key, s.seg, s.start, s."end", s.text, s.speaker, s.words, '
                "r.recording_id, r.title FROM segments_fts "
                "JOIN segments s ON s.id = segments_fts.rowid JOIN recordings r ON r.key = s.key "
                f"WHERE segments_fts MATCH ? AND {where} {order} LIMIT ? OFFSET ?"
            )
            rows = self.db.execute(sql, [match, *args, limit, offset]).fetchall()
        q = unicodedata.normalize("NFC", q)
        terms = {fold(t) for t in re.findall(r"\w+", q)}
        first = [fold(t) for t in re.findall(r"\w+", q)][:1]
        hits = []
        for key, seg, start, end, text, speaker, words, rid, title in rows:
            at = start
            for ws, _, w in json.loads(words or "[]"):
                if first and fold(w).strip(" .,;:!?\"'()").startswith(first[0]):
                    at = ws
                    break
            hits.append(
                dict(
                    key=key,
                    recording_id=rid,
                    title=title,
                    segment=seg,
                    start=round(at, 3),
                    end=round(end, 3),
                    segment_start=start,
                    text=text,
                    speaker=speaker,
                    snippet=mark(text, terms),
                )
            )
        return hits

    def review_queue(self, filters: Filters | None = None, limit: int = 50, offset: int = 0):
        """Segments with words, least confident first (those a person already corrected, all
        of whose words are certain, come last)."""
        self._fresh()
        where, args = (filters or Filters()).where()
        if filters and filters.speaker:
            where += " AND s.speaker = ?"
            args.append(filters.speaker)
        sql = (
            'SELECT s.key, s.seg, s.start, s."end", s.text, s.speaker, s.confidence, '
            "r.recording_id, r.title FROM segments s JOIN recordings r ON r.key = s.key "
            f"WHERE s.confidence IS NOT NULL AND {where} ORDER BY s.confidence, s.key, s.seg "
            "LIMIT ? OFFSET ?"
        )
        with self.lock:
            rows = self.db.execute(sql, [*args, limit, offset]).fetchall()
        names = ("key", "segment", "start", "end", "text", "speaker", "confidence")
        return [dict(zip(names + ("recording_id", "title"), r)) for r in rows]


def _str(value) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, list):
        return "; ".join(map(str, value))
    return str(value)
