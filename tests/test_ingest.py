"""`asr ingest` on the sample archive: decoding, catalogue fields, errors, re-runs, resume."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from asr.cli import main
from asr.ingest import JOURNAL, IngestOptions, ingest
from asr.manifest import read_recordings


def _recs(out: Path) -> dict:
    return {r.id: r for r in read_recordings(out / "recordings.jsonl")}


def test_ingest_sample_archive(sample_archive, sample_manifests):
    recs = _recs(sample_manifests)
    errors = [json.loads(x) for x in (sample_manifests / "errors.jsonl").read_text().splitlines()]
    assert len(recs) == 20
    assert {Path(e["path"]).name: e["id"] for e in errors} == {
        "broken.mp3": "sa-0021",
        "empty.wav": "sa-0022",
    }
    assert all(e["reason"] for e in errors)
    assert any("empty" in e["reason"] for e in errors)

    by_ext = {Path(r.path).suffix for r in recs.values()}
    assert {".wav", ".flac", ".mp3", ".opus", ".ogg", ".m4a", ".mp4"} <= by_ext
    stereo = [r for r in recs.values() if r.channels == 2]
    assert len(stereo) == 1 and stereo[0].sample_rate == 44100
    assert all(5 <= r.duration <= 200 for r in recs.values())
    assert any(r.duration > 120 for r in recs.values())
    video = next(r for r in recs.values() if r.path.endswith(".mp4"))
    assert "mp4" in video.format and video.codec == "aac"

    r1 = recs["sa-0001"]
    assert r1.collection == "oral_history" and r1.language == "en" and r1.title
    assert r1.metadata["shelfmark"].startswith("SA-")
    assert r1.text and r1.transcript is None
    assert r1.uses == ["train", "transcribe"]
    r2 = recs["sa-0002"]
    assert r2.transcript and Path(r2.transcript).is_file() and r2.reference_text().strip()
    nc = [r for r in recs.values() if r.rights == "CC BY-NC 4.0"]
    assert nc and all(r.uses == ["transcribe"] for r in nc)
    assert all(r.uses == ["transcribe"] for r in recs.values() if not r.rights)
    assert len({r.sha256 for r in recs.values()}) == 20


def test_rerun_decodes_only_new_or_changed_files(sample_archive, tmp_path):
    holdings = tmp_path / "holdings"
    holdings.mkdir()
    for name in ("oral_history/harbour_master_1957.wav", "radio/wetterbericht.ogg"):
        (holdings / Path(name).name).write_bytes((sample_archive.parent / name).read_bytes())
    out = tmp_path / "out"
    first = ingest([holdings], out, IngestOptions(workers=1, progress=False))
    assert (first.decoded, first.unchanged, first.recordings) == (2, 0, 2)
    again = ingest([holdings], out, IngestOptions(workers=1, progress=False))
    assert (again.decoded, again.unchanged) == (0, 2)
    # a changed file and a new one are decoded; the other is not
    wav = holdings / "harbour_master_1957.wav"
    before = _recs(out)["harbour_master_1957.wav"]
    wav.write_bytes(wav.read_bytes()[: wav.stat().st_size // 2])
    (holdings / "copy.ogg").write_bytes((holdings / "wetterbericht.ogg").read_bytes())
    third = ingest([holdings], out, IngestOptions(workers=1, progress=False))
    assert (third.decoded, third.unchanged, third.recordings) == (2, 1, 3)
    recs = _recs(out)
    assert set(recs) == {"harbour_master_1957.wav", "wetterbericht.ogg", "copy.ogg"}
    assert recs["copy.ogg"].sha256 == recs["wetterbericht.ogg"].sha256
    changed = recs["harbour_master_1957.wav"]
    assert changed.sha256 != before.sha256
    assert abs(changed.duration - before.duration / 2) < 0.05  # re-measured: half the bytes


def test_without_catalogue_every_media_file_is_a_recording(sample_archive, tmp_path):
    out = tmp_path / "out"
    r = ingest([sample_archive.parent], out, IngestOptions(workers=2, progress=False))
    recs = _recs(out)
    assert r.recordings == 20 and len(r.errors) == 2
    assert "radio/wetterbericht.ogg" in recs and recs["radio/wetterbericht.ogg"].rights is None
    assert not any(p.endswith((".txt", ".csv", ".md")) for p in (x.path for x in recs.values()))


def test_strict_exit_code_and_summary(sample_archive, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    args = ["ingest", "--catalogue", str(sample_archive), "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    assert main([*args, "--strict"]) == 2
    assert "20 recordings" in caplog.text and "2 failed" in caplog.text
    assert main(["ingest", "--out", str(tmp_path)]) == 1


def test_killed_run_resumes_from_journal(sample_archive, tmp_path):
    """SIGKILL mid-run, then the same command: finished files are not decoded again."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "asr", "ingest", "--catalogue", str(sample_archive)]
    cmd += ["--out", str(out), "--workers", "1", "--no-progress", "-q"]
    proc = subprocess.Popen(cmd)
    journal = out / JOURNAL
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_text().count("\n") >= 3:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "recordings.jsonl").exists()
    done_before = journal.read_text().count("\n")
    assert 3 <= done_before < 20
    r = ingest([], out, IngestOptions(catalogue=sample_archive, workers=1, progress=False))
    assert r.unchanged >= done_before and r.decoded == 20 - r.unchanged
    assert r.recordings == 20 and not journal.exists()
