"""`asr transcribe`: whole archives to timestamped transcripts, and the job database that
makes a run resumable.

The runner collects the inputs as jobs (asr.engine.inputs), plans them against the job
database (asr.engine.jobs: what is done, what failed, what changed), hands what is to do to a
Transcriber (asr.engine.transcriber, here; asr.engine.ray_backend on a cluster), and writes each
transcript it gets back in every format, under a temporary name then renamed, before recording
it as done. One run at a time holds OUT_DIR; a full disk stops the run, and the same command
continues it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from asr.engine.inputs import Job, collect_jobs
from asr.engine.jobs import DB_NAME, DISK_FULL, DiskFullError, JobDB, RunLock
from asr.engine.types import Finished, TranscribeOptions
from asr.manifest import remove_stale_temps
from asr.outputs import EXTENSIONS, write_outputs
from asr.progress import bar as progress_bar
from asr.revisions import CorrectedSince, corrected_keys

log = logging.getLogger(__name__)


@dataclass
class TranscribeResult:
    """The summary of a run."""

    done: int = 0
    failed: int = 0
    skipped_done: int = 0
    skipped_failed: int = 0
    skipped_corrected: int = 0
    recovered: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    db: Path | None = None

    @property
    def rtfx(self) -> float:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0


def transcribe(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    options: TranscribeOptions | None = None,
) -> TranscribeResult:
    """Transcribe every recording of inputs into out_dir, here; see the module docstring."""
    opts = options or TranscribeOptions()

    def local(todo: list[Job]) -> Iterator[Finished]:
        from asr.engine.transcriber import Transcriber

        yield from Transcriber(opts).run(todo)

    return run_jobs(inputs, out_dir, opts, local)


REQUEST_IGNORES = ("formats", "progress", "retry_failed", "workers", "parallel", "cpu_threads")
"""Options that do not change what a transcript says (formats are checked file by file)."""


def job_request(job: Job, opts: TranscribeOptions) -> str:
    """What a job's transcript depends on: its file (size and modification time: a file moved
    with its folder is the same) and the options that shape it; a finished job whose request
    changed is transcribed again."""
    try:
        st = os.stat(job.path)
        file = [st.st_size, st.st_mtime_ns]
    except OSError:
        file = [None, None]
    options = {k: v for k, v in opts.record().items() if k not in REQUEST_IGNORES}
    blob = json.dumps([file, job.language, options], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def run_jobs(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    opts: TranscribeOptions,
    runner: Callable[[list[Job]], Iterator[Finished]],
) -> TranscribeResult:
    """The job-database side of a run, whatever runs the jobs (here, or on a Ray cluster).

    Every job to do is marked running, with its outputs, before any is transcribed: a job
    whose outputs all exist after a kill is then done, and is not transcribed again.
    """
    if opts.diarize and "rttm" not in opts.formats:  # who spoke when, as diarization tools give it
        opts = replace(opts, formats=(*opts.formats, "rttm"))
    bad = [f for f in opts.formats if f not in EXTENSIONS]
    if bad:
        raise ValueError(f"unknown output format(s) {bad}; choose from {sorted(EXTENSIONS)}")
    out_dir = Path(out_dir)
    jobs = collect_jobs(inputs)
    with RunLock(out_dir):
        removed = remove_stale_temps(out_dir)
        if removed:
            log.info("removed %d temporary file(s) an interrupted run left in %s", removed, out_dir)
        db_path = out_dir / DB_NAME
        db = None
        try:
            db = JobDB(db_path)
            return _run_planned(jobs, out_dir, opts, runner, db)
        except sqlite3.Error as e:
            full = getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            if full or _disk_is_full(out_dir):
                raise DiskFullError(db_path, str(e)) from e  # SQLite says "disk I/O error" too
            raise OSError(f"{db_path}: the job database failed: {e}") from e
        finally:
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()


def _disk_is_full(folder: Path) -> bool:
    """Less than 1 MiB left where folder is (SQLite reports a full disk as an I/O error when
    its shared-memory file cannot grow)."""
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def _run_planned(
    jobs: list[Job],
    out_dir: Path,
    opts: TranscribeOptions,
    runner: Callable[[list[Job]], Iterator[Finished]],
    db: JobDB,
) -> TranscribeResult:
    """Plan the jobs against the database, run what is to do and record every result."""
    result = TranscribeResult(db=db.path)
    db.register([(j.key, j.path, j.recording_id) for j in jobs])
    outputs = {j.key: [out_dir / (j.key + EXTENSIONS[f]) for f in opts.formats] for j in jobs}
    requests = {j.key: job_request(j, opts) for j in jobs}
    plan = db.plan(requests, outputs, opts.retry_failed)
    result.skipped_done, result.skipped_failed = plan.done, plan.failed
    result.recovered = plan.recovered
    # a transcript an archivist corrected (asr serve) is never written over
    kept = corrected_keys(out_dir, plan.todo) & set(plan.todo)
    for key in sorted(kept):
        log.info("kept: %s has corrections (asr serve); it is not transcribed again", key)
    result.skipped_corrected = len(kept)
    wanted = set(plan.todo) - kept
    todo = [j for j in jobs if j.key in wanted]
    for job in todo:
        db.start(job.key, outputs[job.key], requests[job.key])
    run_id = db.begin_run(opts.record())
    t0 = time.perf_counter()
    finished: set[str] = set()
    with contextlib.closing(CorrectedSince(out_dir)) as corrected_since:
        if todo:
            bar = progress_bar("transcribe", len(todo), opts.progress, unit="rec")
            for fin in runner(todo):
                finished.add(fin.key)
                if fin.error is None and corrected_since(fin.key):
                    # corrected in asr serve while this run transcribed it: the person's text stays
                    log.info("kept: %s was corrected during this run; not overwritten", fin.key)
                    db.done(fin.key, fin.audio_seconds, fin.wall_seconds, fin.language)
                    result.skipped_corrected += 1
                    bar.update(1)
                    continue
                if fin.error is None:
                    fin = _write(fin, out_dir, opts.formats)
                if fin.error is None:
                    db.done(fin.key, fin.audio_seconds, fin.wall_seconds, fin.language)
                    result.done += 1
                    result.audio_seconds += fin.audio_seconds
                else:
                    db.fail(fin.key, fin.error)
                    result.failed += 1
                    log.warning("failed: %s: %s", fin.key, fin.error)
                elapsed = time.perf_counter() - t0
                bar.update(1)
                bar.set_postfix_str(
                    f"{result.audio_seconds / 3600:.2f} h audio, "
                    f"RTFx {result.audio_seconds / max(elapsed, 1e-9):.1f}"
                )
            bar.close()
            # the runner ended normally: every job it was given is done or failed
            for job in todo:
                if job.key not in finished:
                    reason = (
                        "the run ended without finishing it (an internal error: please report it)"
                    )
                    db.fail(job.key, reason)
                    result.failed += 1
                    log.error("failed: %s: %s", job.key, reason)
    result.wall_seconds = time.perf_counter() - t0
    result.failures = db.failures()
    db.end_run(
        run_id,
        {
            "done": result.done,
            "failed": result.failed,
            "audio_seconds": result.audio_seconds,
            "wall_seconds": result.wall_seconds,
        },
    )
    return result


def _write(fin: Finished, out_dir: Path, formats: tuple[str, ...]) -> Finished:
    """Write a finished recording's transcript in every format; a failure fails the recording,
    except a full disk, which is the disk's state, not the recording's: it stops the run."""
    try:
        write_outputs(fin.transcript, out_dir / fin.key, formats)
    except OSError as e:
        if e.errno in DISK_FULL:
            raise DiskFullError(e.filename or out_dir / fin.key, e.strerror) from e
        log.debug("%s: writing outputs failed", fin.key, exc_info=True)
        return replace(fin, error=f"writing outputs failed ({type(e).__name__}: {e})")
    except Exception as e:  # one recording's bad output never ends the run
        log.debug("%s: writing outputs failed", fin.key, exc_info=True)
        return replace(fin, error=f"writing outputs failed ({type(e).__name__}: {e})")
    return fin
