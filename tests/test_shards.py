"""`asr shard`: real tar shards read back through webdataset and tarfile, splits, rights, resume."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.manifest import read_recordings, read_segments
from asr.rights import RightsPolicy
from asr.shards import ShardOptions, read_shards, sample_key, shard, shard_paths


def _opts(**kw) -> ShardOptions:
    return ShardOptions(progress=False, **kw)


@pytest.fixture(scope="module")
def shards(sample_manifests, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    shard(sample_manifests / "segments.jsonl", out, _opts(max_count=3))
    return out


def _all_samples(shard_dir: Path) -> list[tuple[np.ndarray, dict]]:
    return [
        x for split in ("train", "dev", "test") for x in read_shards(shard_paths(shard_dir, split))
    ]


def test_shards_read_back_with_webdataset_and_tar(shards, sample_manifests):
    index = json.loads((shards / "shards.json").read_text())
    recs = {r.id: r for r in read_recordings(sample_manifests / "recordings.jsonl")}
    segs = {s.id: s for s in read_segments(sample_manifests / "segments.jsonl")}
    samples = _all_samples(shards)
    assert len(samples) == sum(index["splits"][s]["samples"] for s in ("train", "dev", "test"))
    assert len(samples) >= 6
    for audio, meta in samples:
        seg, rec = segs[meta["id"]], recs[meta["recording_id"]]
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert abs(audio.size / 16000 - (seg.end - seg.start)) < 0.01
        assert meta["text"] == seg.text and meta["text"].strip()
        assert meta["source_sha256"] == rec.sha256 and meta["rights"] == rec.rights
        assert meta["collection"] == rec.collection and meta["split"] in ("train", "dev", "test")
        assert meta["__key__"] == sample_key(seg.id)
    for split, info in index["splits"].items():
        for s in info["shards"]:
            path = shards / s["name"]
            assert s["name"].startswith(split + "-") and s["samples"] <= 3
            assert hashlib.sha256(path.read_bytes()).hexdigest() == s["sha256"]
            with tarfile.open(path) as tar:
                names = tar.getnames()
                assert len(names) == 2 * s["samples"]
                flac = next(n for n in names if n.endswith(".flac"))
                audio, sr = sf.read(io.BytesIO(tar.extractfile(flac).read()))
                assert sr == 16000 and audio.ndim == 1
            sidecar = path.with_suffix(".jsonl").read_text().splitlines()
            assert len(sidecar) == s["samples"]
    assert not list(shards.glob(".*"))


def test_splits_are_disjoint_by_recording_and_deterministic(shards, sample_manifests, tmp_path):
    split_of: dict[str, set] = {}
    for _, meta in _all_samples(shards):
        split_of.setdefault(meta["recording_id"], set()).add(meta["split"])
    assert all(len(v) == 1 for v in split_of.values())
    used = {next(iter(v)) for v in split_of.values()}
    assert used == {"train", "dev", "test"}
    again = tmp_path / "again"
    shard(sample_manifests / "segments.jsonl", again, _opts(max_count=3))
    a = json.loads((shards / "shards.json").read_text())
    b = json.loads((again / "shards.json").read_text())
    assert a == b, "same input and seed give byte-identical shards"
    other = tmp_path / "seed7"
    shard(sample_manifests / "segments.jsonl", other, _opts(max_count=3, seed=7))
    c = json.loads((other / "shards.json").read_text())
    assert sum(c["splits"][s]["samples"] for s in c["splits"]) == len(_all_samples(shards))


def test_split_by_speaker(sample_manifests, tmp_path):
    lines = []
    for line in (sample_manifests / "segments.jsonl").read_text().splitlines():
        seg = json.loads(line)
        seg["speaker"] = "spk" + str(
            int(hashlib.md5(seg["recording_id"].encode()).hexdigest(), 16) % 3
        )
        lines.append(json.dumps(seg))
    segs = tmp_path / "segments.jsonl"
    segs.write_text("\n".join(lines) + "\n")
    shard(
        segs,
        tmp_path / "s",
        _opts(recordings=sample_manifests / "recordings.jsonl", split_by="speaker"),
    )
    split_of: dict[str, set] = {}
    for _, meta in _all_samples(tmp_path / "s"):
        split_of.setdefault(meta["speaker"], set()).add(meta["split"])
    assert all(len(v) == 1 for v in split_of.values()) and len(split_of) == 3


def test_only_training_rights_are_written(shards, sample_manifests):
    recs = {r.id: r for r in read_recordings(sample_manifests / "recordings.jsonl")}
    segs = list(read_segments(sample_manifests / "segments.jsonl"))
    policy = RightsPolicy.load()
    samples = _all_samples(shards)
    assert all(policy.allows(m["rights"], "train") for _, m in samples)
    texted = [s for s in segs if s.text.strip()]
    barred = [s for s in segs if not policy.allows(recs[s.recording_id].rights, "train")]
    index = json.loads((shards / "shards.json").read_text())
    assert index["skipped"]["rights"] == len(barred) > 0
    assert any(s.text.strip() for s in barred), "a transcribed but in-copyright item was kept out"
    allowed_texted = [s for s in texted if s not in barred]
    assert {m["id"] for _, m in samples} == {s.id for s in allowed_texted}


def test_killed_run_resumes_without_duplicates(sample_manifests, tmp_path):
    """SIGKILL mid-run, then the same command: no duplicates, no partial shards, nothing lost."""
    policy = tmp_path / "all.yaml"  # every segment, so that the run is long enough to kill
    policy.write_text("default: [train, transcribe]\n")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "asr", "shard", str(sample_manifests / "segments.jsonl")]
    cmd += ["--max-count", "1", "--allow-empty-text", "--policy", str(policy), "--no-progress"]
    proc = subprocess.Popen([*cmd, "--out", str(out), "-q"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out.glob("*.tar"))) < 2:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = sorted(p.name for p in out.glob("*.tar"))
    assert len(before) >= 2 and not (out / "shards.json").exists()
    assert subprocess.run([*cmd, "--out", str(out), "-q"]).returncode == 0
    clean = tmp_path / "clean"
    assert subprocess.run([*cmd, "--out", str(clean), "-q"]).returncode == 0
    keys = [m["__key__"] for _, m in _all_samples(out)]
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted(m["__key__"] for _, m in _all_samples(clean))
    assert len(keys) > len(before) + 10
    assert set(before) <= {p.name for p in out.glob("*.tar")}
    assert not list(out.glob(".*"))
    # a re-run of a finished job writes nothing new
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert subprocess.run([*cmd, "--out", str(out), "-q"]).returncode == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == mtimes


def test_max_size_caps_shards(sample_manifests, tmp_path):
    shard(sample_manifests / "segments.jsonl", tmp_path, _opts(max_size=300_000))
    index = json.loads((tmp_path / "shards.json").read_text())
    shards = [s for v in index["splits"].values() for s in v["shards"]]
    assert len(shards) > 3
    assert all(s["bytes"] <= 300_000 + 10_240 or s["samples"] == 1 for s in shards)


def test_reader_refuses_unsafe_member_names(tmp_path):
    bad = tmp_path / "bad.tar"
    buf = io.BytesIO()
    sf.write(buf, np.zeros(1600, np.float32), 16000, format="FLAC")
    with tarfile.open(bad, "w") as tar:
        for name, data in [("../evil.flac", buf.getvalue()), ("../evil.json", b"{}")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="unsafe"):
        list(read_shards(str(bad)))
