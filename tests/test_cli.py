"""The `asr` command as users and scripts run it: help, the chain of stages, exit codes."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

# the console script installed beside this interpreter (make test does not activate the venv)
ASR = str(Path(sys.executable).parent / "asr")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ASR, *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("command", ["ingest", "segment", "shard", "manifest"])
def test_help_explains_options_and_defaults(command):
    r = run(command, "--help")
    assert r.returncode == 0
    assert "exit codes" in r.stdout and "--out" in r.stdout or command == "manifest"
    if command == "segment":
        assert "(default: 30.0)" in r.stdout and "(default: 0.2)" in r.stdout
    if command == "shard":
        assert "(default: 10000)" in r.stdout and "(default: recording)" in r.stdout


def test_chain_of_stages(sample_archive, tmp_path):
    out = tmp_path / "work"
    r = run("ingest", "--catalogue", str(sample_archive), "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "20 recordings" in r.stderr and "2 failed" in r.stderr and "broken.mp3" in r.stderr
    r = run("segment", str(out / "recordings.jsonl"), "--out", str(out / "segments.jsonl"))
    assert r.returncode == 0, r.stderr
    assert "segments" in r.stderr
    r = run("shard", str(out / "segments.jsonl"), "--out", str(out / "shards"), "--no-progress")
    assert r.returncode == 0, r.stderr
    index = json.loads((out / "shards" / "shards.json").read_text())
    assert f"train {index['splits']['train']['samples']:6d} samples" in r.stderr
    assert "whose rights do not allow training" in r.stderr

    r = run("manifest", "validate", str(out / "segments.jsonl"))
    assert r.returncode == 0 and "valid segment records" in r.stderr
    r = run(
        "manifest",
        "export",
        str(out / "segments.jsonl"),
        "--to",
        "nemo",
        "--out",
        str(out / "n.json"),
    )
    assert r.returncode == 0
    nemo = [json.loads(x) for x in (out / "n.json").read_text().splitlines()]
    assert all(row["audio_filepath"].startswith(str(sample_archive.parent)) for row in nemo)
    r = run(
        "manifest", "export", str(out / "segments.jsonl"), "--to", "lhotse", "--out", str(out / "l")
    )
    assert r.returncode == 0
    sups = gzip.open(out / "l" / "supervisions.lhotse.jsonl.gz", "rt").read().splitlines()
    assert len(sups) == len(nemo)


def test_errors_exit_1_with_a_clear_message(tmp_path):
    r = run("segment", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "s.jsonl"))
    assert r.returncode == 1 and "nope.jsonl" in r.stderr
    bad = tmp_path / "recordings.jsonl"
    bad.write_text('{"id": "x"}\n')
    r = run("segment", str(bad), "--out", str(tmp_path / "s.jsonl"))
    assert r.returncode == 1 and "recordings.jsonl:1: field 'path'" in r.stderr
    r = subprocess.run([sys.executable, "-m", "asr", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "archive-asr" in r.stdout
