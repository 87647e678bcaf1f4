"""asr/stage.py: the resume journal every stage keeps, and the worker pool that survives a crash."""

from __future__ import annotations

import ctypes
import json
import os
import resource
from pathlib import Path

from asr.stage import Crashed, Journal, journal_path, process_map


def crash_on(name: str) -> None:
    """Worker setup (see asr.stage.WORKER_SETUP): decoding the file called `name` makes the
    worker process crash with a real segmentation fault (a read of address 0 in native code),
    as a decoder's bug would. No file at hand crashes FFmpeg itself (it reports corrupt input),
    so the tests make one file do it; the crash goes through the real pool all the same."""
    import resource

    import asr.ingest
    import asr.segment

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the working folder

    def wrap(fn):
        def decode(path, *args, **kwargs):
            if Path(path).name == name:
                ctypes.string_at(0)  # SIGSEGV
            return fn(path, *args, **kwargs)

        return decode

    asr.ingest.probe = wrap(asr.ingest.probe)
    asr.segment.stream = wrap(asr.segment.stream)


def test_a_torn_last_line_is_cut_off_and_appends_stay_readable(tmp_path):
    path = journal_path(tmp_path / "out.jsonl")
    assert path == tmp_path / ".out.jsonl.journal"
    j = Journal(path, {"a": 1}).open()
    j.add("r1", {"x": 1})
    j.add("r2", {"x": 2})
    j.close()
    with open(path, "ab") as f:
        f.write(b'{"id": "r3", "x":')  # killed in the middle of a write
    j = Journal(path, {"a": 1}).open()
    assert set(j.entries) == {"r1", "r2"}
    assert path.read_bytes().endswith(b"\n")  # the torn line is gone from the file
    j.add("r3", {"x": 3})
    j.add("r1", {"x": 10})  # a later entry for the same id wins
    j.close()
    again = Journal(path, {"a": 1}).open()
    assert {k: v["x"] for k, v in again.entries.items()} == {"r1": 10, "r2": 2, "r3": 3}
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"journal": 1, "options": json.dumps({"a": 1})}
    assert all(json.loads(line) for line in lines)


def test_other_options_start_afresh_and_remove_ends_it(tmp_path):
    path = tmp_path / ".j"
    j = Journal(path, {"max_cer": 0.25, "model": "base"}).open()
    j.add("r1", {"x": 1})
    j.close()
    assert set(Journal(path, {"model": "base", "max_cer": 0.25}).open().entries) == {"r1"}
    other = Journal(path, {"max_cer": 0.5, "model": "base"}).open()
    assert other.entries == {} and path.read_bytes() == b""
    other.add("r2", {"x": 2})
    other.close()
    assert set(Journal(path, {"max_cer": 0.5, "model": "base"}).open().entries) == {"r2"}
    # a journal of the former format (no key line) is not taken for this run's
    path.write_text(json.dumps({"id": "r1", "sha256": "0"}) + "\n")
    assert Journal(path, {"max_cer": 0.5, "model": "base"}).open().entries == {}
    other.remove()
    assert not path.exists()


def _square_or_die(x: int) -> int:
    if x == 3:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.abort()  # SIGABRT, as a failed assertion in a C library
    return x * x


def test_process_map_fails_only_the_job_that_crashes_its_worker():
    jobs = [(f"job{x}", (x,)) for x in range(8)]
    got = dict(process_map(_square_or_die, jobs, workers=2, what="the worker"))
    assert set(got) == {f"job{x}" for x in range(8)}
    assert isinstance(got["job3"], Crashed)
    assert got["job3"].reason == "the worker crashed (signal SIGABRT)"
    assert {k: v for k, v in got.items() if k != "job3"} == {
        f"job{x}": x * x for x in range(8) if x != 3
    }
