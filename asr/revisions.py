"""Corrected transcripts: every edit a numbered revision, the machine's transcript kept as 0.

`asr serve` saves an archivist's corrections here (OUT_DIR/revisions.sqlite, beside the job
database: not a cache, back it up) and writes the transcript's files again from the latest
revision; `asr transcribe` never overwrites a corrected transcript (one with revisions here, or
whose JSON carries a review record). Edits are checked against the version they started from,
so two people correcting one transcript cannot overwrite each other unknowingly.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from asr.outputs import EXTENSIONS, Transcript, TranscriptSegment, Word, write_outputs
from asr.textnorm import map_words, match_key

DB_NAME = "revisions.sqlite"
STATES = ("machine", "partly reviewed", "reviewed")
"""A transcript's review state, as AAPB's human_review_level: untouched, some of it corrected
or checked, all of it checked."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS revisions (
    key TEXT NOT NULL,             -- the transcript: its path under OUT_DIR, no extension
    revision INTEGER NOT NULL,     -- 0: the machine's transcript, as it was before any edit
    author TEXT NOT NULL,
    created REAL NOT NULL,
    what TEXT NOT NULL,            -- what changed, in a few words
    transcript TEXT NOT NULL,      -- the whole transcript (JSON) as of this revision
    PRIMARY KEY (key, revision)
);
"""


MIN_WORD_S = 0.08
"""An inserted word gets at least this long, sharing a neighbour's time if need be."""


class Conflict(Exception):
    """The transcript changed since the edit began (another browser saved first)."""


@dataclass
class Revision:
    key: str
    revision: int
    author: str
    created: float
    what: str


def db_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / DB_NAME


def corrected_keys(out_dir: str | Path, keys: Iterable[str] | None = None) -> set[str]:
    """Transcripts of OUT_DIR with corrections: revisions in its database, or (for `keys`,
    whose JSON files are read) a review record in the transcript itself, so that a lost or
    moved database still protects them."""
    out_dir = Path(out_dir)
    found: set[str] = set()
    path = db_path(out_dir)
    if path.is_file():
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            found = {
                r[0] for r in db.execute("SELECT DISTINCT key FROM revisions WHERE revision > 0")
            }
    for key in keys or ():
        if key in found:
            continue
        try:
            with open(out_dir / (key + EXTENSIONS["json"]), encoding="utf-8") as f:
                if json.load(f).get("review"):
                    found.add(key)
        except (OSError, ValueError, AttributeError):
            continue
    return found


class CorrectedSince:
    """Whether a recording was corrected (asr serve) while a run transcribed it, asked once per
    finished recording: one read-only connection for the run, opened when the revisions
    database appears (the JSON's review record was read when the run was planned)."""

    def __init__(self, out_dir: str | Path):
        self.path = db_path(out_dir)
        self.db: sqlite3.Connection | None = None

    def __call__(self, key: str) -> bool:
        if self.db is None:
            if not self.path.is_file():
                return False
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        sql = "SELECT 1 FROM revisions WHERE key=? AND revision > 0 LIMIT 1"
        return self.db.execute(sql, (key,)).fetchone() is not None

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def file_version(out_dir: str | Path, key: str) -> str:
    """The version of an uncorrected transcript: its JSON file's time and size, so that an edit
    begun on it is refused if `asr transcribe` wrote it again meanwhile."""
    st = (Path(out_dir) / (key + EXTENSIONS["json"])).stat()
    return f"0.{st.st_mtime_ns}.{st.st_size}"


def retime(old: list[Word], text: str, start: float, end: float) -> list[Word]:
    """The words of an edited text, timed by aligning them to the machine's words (the word
    alignment of `asr align`): a kept or replaced word takes its old word's times, an inserted
    word shares the gap between its timed neighbours. Every word is marked certain (1.0):
    a person wrote it."""
    new = text.split()
    if not new:
        return []
    mapping, _ = map_words([match_key(w) for w in new], [match_key(w.word) for w in old])
    times: list[tuple[float, float] | None] = [
        (old[j].start, old[j].end) if j >= 0 else None for j in mapping.tolist()
    ]
    speaker = old[0].speaker if old else None
    i = 0
    while i < len(new):  # runs of untimed words share the time between their neighbours
        if times[i] is not None:
            i += 1
            continue
        k = i
        while k < len(new) and times[k] is None:
            k += 1
        first, last = i, k  # the words that share [lo, hi]
        lo = times[i - 1][1] if i > 0 else start  # type: ignore[index]
        hi = times[k][0] if k < len(new) else end  # type: ignore[index]
        if hi - lo < MIN_WORD_S * (k - i):  # no room between the neighbours: share one's time
            if k < len(new):
                hi, last = times[k][1], k + 1  # type: ignore[index]
            elif i > 0:
                lo, first = times[i - 1][0], i - 1  # type: ignore[index]
        hi = max(hi, lo)
        step = (hi - lo) / (last - first)
        for n in range(first, last):
            times[n] = (lo + (n - first) * step, lo + (n - first + 1) * step)
        i = k
    words = []
    for n, (w, t) in enumerate(zip(new, times)):
        s, e = t  # type: ignore[misc]
        if words and s < words[-1].end:  # kept words stay in order after a reordering edit
            s = words[-1].end
        words.append(Word(round(s, 3), round(max(e, s), 3), (" " if n or old else "") + w, 1.0))
        if speaker is not None:
            words[-1].speaker = speaker
    return words


class RevisionStore:
    """The revisions of one OUT_DIR's transcripts."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.path = path = db_path(out_dir)
        # autocommit; writes take the lock up front (BEGIN IMMEDIATE) so that two edits of one
        # revision cannot both pass the check
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def latest(self, key: str) -> tuple[int, Transcript]:
        """The newest revision's number and transcript; 0 and the transcript's JSON file when
        it was never corrected."""
        row = self.db.execute(
            "SELECT revision, transcript FROM revisions WHERE key=? ORDER BY revision DESC LIMIT 1",
            (key,),
        ).fetchone()
        if row is not None:
            return row[0], Transcript.from_dict(json.loads(row[1]))
        path = self.out_dir / (key + EXTENSIONS["json"])
        return 0, Transcript.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def history(self, key: str) -> list[Revision]:
        rows = self.db.execute(
            "SELECT key, revision, author, created, what FROM revisions WHERE key=? "
            "ORDER BY revision",
            (key,),
        )
        return [Revision(*r) for r in rows]

    def transcript(self, key: str, revision: int) -> Transcript:
        row = self.db.execute(
            "SELECT transcript FROM revisions WHERE key=? AND revision=?", (key, revision)
        ).fetchone()
        if row is None:
            raise KeyError(f"{key}: no revision {revision}")
        return Transcript.from_dict(json.loads(row[0]))

    def version(self, key: str, revision: int) -> str:
        """What an edit must start from: the revision's number, or for the machine's transcript
        (revision 0, never corrected) its file's version."""
        return str(revision) if revision else file_version(self.out_dir, key)

    def save(
        self, key: str, base: int | str, edit, author: str, what: str
    ) -> tuple[int, Transcript]:
        """Apply edit(transcript) -> transcript to `base` (a revision number, or the version
        `version` gave), which must be the newest (else Conflict), as a new revision; then
        write the transcript's files again."""
        if not self.path.is_file():
            raise OSError(f"{self.path}: the revisions database is gone; restart asr serve")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            current, transcript = self.latest(key)
            now_version = self.version(key, current)
            if str(base) not in (now_version, str(current) if current else "0"):
                raise Conflict(
                    f"{key}: this transcript was changed (revision {current}) after you opened "
                    "it; reload it to see the other change, then edit again"
                )
            now = time.time()
            if current == 0:  # the machine's transcript, kept as it was
                self._insert(key, 0, "machine", now, "machine transcript", transcript)
            transcript = edit(transcript)
            revision = current + 1
            review = dict(transcript.review)
            review["revision"] = revision
            if review.get("state") not in STATES[1:]:
                review["state"] = "partly reviewed"
            when = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds")
            change = {"revision": revision, "author": author, "when": when, "what": what}
            review["changes"] = [*review.get("changes", []), change]
            transcript = replace(transcript, review=review)
            self._insert(key, revision, author, now, what, transcript)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.write_files(key, transcript)
        return revision, transcript

    def _insert(self, key, revision, author, created, what, transcript: Transcript) -> None:
        self.db.execute(
            "INSERT INTO revisions VALUES (?, ?, ?, ?, ?, ?)",
            (key, revision, author, created, what, json.dumps(transcript.to_dict())),
        )

    def write_files(self, key: str, transcript: Transcript) -> None:
        """The JSON and every other format the transcript has in OUT_DIR, from `transcript`
        (each written to a temporary name and renamed)."""
        base = self.out_dir / key
        formats = ["json"] + [
            f
            for f, ext in EXTENSIONS.items()
            if f != "json" and base.with_name(base.name + ext).is_file()
        ]
        write_outputs(transcript, base, formats)


def edit_segment(segment_id: int, text: str):
    """An edit: segment `segment_id` says `text` (its words timed again by retime)."""

    def apply(t: Transcript) -> Transcript:
        segments = []
        found = False
        for s in t.segments:
            if s.id == segment_id:
                found = True
                text_ = " ".join(text.split())
                words = retime(s.words, text_, s.start, s.end)
                s = replace(s, text=(" " + text_) if text_ else "", words=words)
            segments.append(s)
        if not found:
            raise KeyError(f"{t.recording_id}: no segment {segment_id}")
        return replace(t, segments=segments)

    return apply


def rename_speaker(old: str, new: str):
    """An edit: speaker `old` is called `new` everywhere in the transcript."""
    new = " ".join(new.split())
    if not new:
        raise ValueError("a speaker's name cannot be empty")

    def apply(t: Transcript) -> Transcript:
        if old not in t.speakers:
            raise KeyError(f"{t.recording_id}: no speaker {old!r}")
        if new in t.speakers and new != old:
            raise ValueError(f"{t.recording_id}: there is already a speaker {new!r}")

        def seg(s: TranscriptSegment) -> TranscriptSegment:
            words = [replace(w, speaker=new) if w.speaker == old else w for w in s.words]
            return replace(s, speaker=new if s.speaker == old else s.speaker, words=words)

        speakers = [new if x == old else x for x in t.speakers]
        return replace(t, segments=[seg(s) for s in t.segments], speakers=speakers)

    return apply


def set_state(state: str):
    """An edit: the transcript's review state."""
    if state not in STATES[1:]:
        raise ValueError(f"review state must be one of {', '.join(STATES[1:])}, not {state!r}")

    def apply(t: Transcript) -> Transcript:
        return replace(t, review={**t.review, "state": state})

    return apply
