"""What the runners of `ingest`, `segment` and `align` share: a resume journal and a worker pool.

`Journal`: each finished recording is appended to a JSONL file beside the stage's output, so a
killed run resumes where it stopped. Its first line holds a key of the options that change the
results: a run with other options starts afresh instead of mixing both. A line cut short by a
kill is cut off the file before anything is appended after it (appended to, it would glue the
next entry onto the torn one, and every entry after it would be lost to the next resume). The
journal is removed once the stage's output is written.

`process_map`: the work of one recording per call, in worker processes that die with the
process that started them (killed with -9, it leaves none behind: no worker, no forkserver, no
resource tracker), and that may crash (a decoder's segfault): the recordings in flight when a
worker crashed are tried again one at a time, and the one that crashes its worker again comes
back as `Crashed`, with the signal, while the rest go on.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

JOURNAL_VERSION = 1


def journal_path(out: str | os.PathLike) -> Path:
    """The journal of an output file: a hidden file beside it."""
    out = Path(out)
    return out.with_name(f".{out.name}.journal")


def options_key(options: dict) -> str:
    """Options as a canonical JSON string (paths as strings), for comparing runs."""
    return json.dumps(options, sort_keys=True, default=str, ensure_ascii=False)


class Journal:
    """An append-only JSONL record of finished recordings, keyed by id (see the module doc).

    `open()` reads what an interrupted run left (`entries`: id -> its last entry), cutting off
    a torn last line, or starting afresh when the options key differs; `add()` appends one
    entry and flushes it; `remove()` deletes the journal once the output is committed.
    """

    def __init__(self, path: str | os.PathLike, key: dict | str):
        self.path = Path(path)
        self.key = key if isinstance(key, str) else options_key(key)
        self.entries: dict[str, dict] = {}
        self._file: IO[bytes] | None = None

    def open(self) -> Journal:
        """Load the entries of an interrupted run with the same options; repair the file."""
        self.close()
        self.entries = {}
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return self
        keep = 0  # bytes of whole, readable lines
        header = False
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # cut short by a kill
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            if not isinstance(obj, dict):
                break
            if not header:
                if obj.get("journal") != JOURNAL_VERSION or obj.get("options") != self.key:
                    log.info(
                        "%s: other options (or an older version) than now: starting afresh",
                        self.path,
                    )
                    keep = 0
                    break
                header = True
            elif isinstance(obj.get("id"), str):
                self.entries[obj["id"]] = obj
            else:
                break
            keep += len(line)
        if keep < len(data):
            if keep and header:
                log.warning(
                    "%s: a line cut short by a kill was cut off (%d bytes)",
                    self.path,
                    len(data) - keep,
                )
            with open(self.path, "r+b") as f:
                f.truncate(keep)
            if not header:
                self.entries = {}
        return self

    def add(self, id: str, entry: dict) -> dict:
        """Append one recording's entry (`id` added) and flush it to the file."""
        line = {"id": id, **entry}
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")
            if self._file.tell() == 0:
                head = {"journal": JOURNAL_VERSION, "options": self.key}
                self._file.write(json.dumps(head, ensure_ascii=False).encode() + b"\n")
        # one write of one whole line: a kill leaves it whole or torn, never interleaved
        self._file.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
        self._file.flush()
        self.entries[id] = line
        return line

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        """The output is committed: the journal has served."""
        self.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Journal:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


# -- worker processes --------------------------------------------------------------------------


@dataclass
class Crashed:
    """A job whose worker process died under it twice (once among others, then alone)."""

    reason: str


WORKER_SETUP: list[tuple[Callable, tuple]] = []
"""(function, args) each worker process calls once it has started: module-level functions, as
they are pickled to the workers. Tests use it to make a real worker crash on a named file."""

_PR_SET_PDEATHSIG = 1


def _worker_init(parent: int, setup: list[tuple[Callable, tuple]]) -> None:
    """Worker start: die with the stage's process, then the setup functions."""
    # the worker's parent is the forkserver (which lives on as long as a worker does): ask the
    # kernel to kill us with it, and watch the stage's process itself
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="exit-with").start()
    for fn, args in setup:
        fn(*args)


def _exit_with(pid: int) -> None:
    """End this process as soon as process `pid` ends (killed or not)."""
    try:
        fd = os.pidfd_open(pid)  # readable when the process ends; no pid reuse race
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])
    else:
        while _alive(pid):
            time.sleep(0.2)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _new_pool(workers: int) -> cf.ProcessPoolExecutor:
    return cf.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=_worker_init,
        initargs=(os.getpid(), list(WORKER_SETUP)),
    )


def _processes(pool: cf.ProcessPoolExecutor) -> list:
    """The pool's worker processes (started with its first job), for their exit codes."""
    return list((getattr(pool, "_processes", None) or {}).values())


def _death(procs: list, what: str) -> str:
    """Why a pool's worker died, from the exit codes of its processes (after shutdown)."""
    codes = [p.exitcode for p in procs if p.exitcode not in (None, 0, -signal.SIGTERM)]
    for code in codes:
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return f"{what} crashed (signal {name})"
    if codes:
        return f"{what} process exited with code {codes[0]}"
    return f"{what} process died"


def process_map(
    fn: Callable[..., Any],
    jobs: list[tuple[Any, tuple]],
    workers: int,
    what: str = "the decoder",
) -> Iterator[tuple[Any, Any]]:
    """(key, fn(*args)) for each (key, args) of jobs, in the order they finish, computed in
    `workers` processes; a job that crashes its worker twice gives (key, Crashed(reason)).

    At most `workers` jobs are in flight at a time, so the ones a crash may be due to are
    known: they are tried again one at a time, each in a one-process pool (a fresh one after
    each crash); the jobs not yet started go on in a fresh pool. Exceptions fn raises are
    raised here, as from a function call.
    """
    queue = deque(range(len(jobs)))
    workers = max(1, workers)
    while queue:
        suspects = yield from _parallel(fn, jobs, queue, workers)
        if suspects:
            log.warning(
                "a worker process died: trying its %d recording(s) again, one at a time",
                len(suspects),
            )
            yield from _one_at_a_time(fn, jobs, suspects, what)


def _parallel(fn, jobs, queue: deque, workers: int):
    """Run queued jobs until done or the pool breaks; returns the jobs in flight at a break."""
    pool = _new_pool(workers)
    inflight: dict[cf.Future, int] = {}
    broken: list[int] = []
    try:
        while (queue or inflight) and not broken:
            while queue and len(inflight) < workers:
                i = queue.popleft()
                try:
                    inflight[pool.submit(fn, *jobs[i][1])] = i
                except BrokenProcessPool:
                    queue.appendleft(i)
                    break
            if not inflight:
                break
            done, _ = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
            for f in done:
                i = inflight.pop(f)
                try:
                    result = f.result()
                except BrokenProcessPool:
                    broken.append(i)
                    continue
                yield jobs[i][0], result
            if broken:
                broken += inflight.values()  # the others in flight broke with it
        return sorted(broken)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _one_at_a_time(fn, jobs, suspects: list[int], what: str):
    pool = None
    try:
        for i in suspects:
            pool = pool or _new_pool(1)
            future = pool.submit(fn, *jobs[i][1])
            procs = _processes(pool)
            try:
                result = future.result()
            except BrokenProcessPool:
                pool.shutdown(wait=True)
                pool = None
                reason = _death(procs, what)
                log.warning("%s: %s", jobs[i][0], reason)
                result = Crashed(reason)
            yield jobs[i][0], result
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
