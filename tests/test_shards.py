"""`asr shard`: real tar shards read back through webdataset and tarfile, splits, rights, resume."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import resource
import shutil
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
from asr.shards import ShardOptions, read_raw, read_shards, sample_key, shard, shard_paths

_SHARD_NAME = re.compile(r"^(train|dev|test)-\d{6}\.tar$")
SPLITS = ("train", "dev", "test")


def _opts(**kw) -> ShardOptions:
    return ShardOptions(progress=False, **kw)


@pytest.fixture(scope="module")
def shards(sample_manifests, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    shard(sample_manifests / "segments.jsonl", out, _opts(max_count=3))
    return out


def _all_samples(shard_dir: Path) -> list[tuple[np.ndarray, dict]]:
    paths = [shard_paths(shard_dir, split) for split in ("train", "dev", "test")]
    return [x for p in paths if p for x in read_shards(p)]


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


def test_split_by_time_holds_out_the_end_of_each_recording(sample_manifests, tmp_path):
    """--split-by time: every recording in train and test, its train before dev before test."""
    recs = {r.id: r for r in read_recordings(sample_manifests / "recordings.jsonl")}
    policy = RightsPolicy.load()
    lines = []  # each trainable recording of 4 s or more cut into 1 s segments
    for r in recs.values():
        if r.duration >= 4 and policy.allows(r.rights, "train"):
            for k in range(int(r.duration)):
                seg = {"id": f"{r.id}_{k}", "recording_id": r.id, "start": k, "end": k + 1}
                lines.append(json.dumps({**seg, "text": f"part {k}"}))
    segs = tmp_path / "segments.jsonl"
    segs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "s"
    opts = _opts(recordings=sample_manifests / "recordings.jsonl", split_by="time")
    opts.dev_fraction, opts.test_fraction = 0.1, 0.3
    shard(segs, out, opts)
    spans: dict[str, dict[str, list]] = {}
    for _, meta in _all_samples(out):
        spans.setdefault(meta["recording_id"], {}).setdefault(meta["split"], []).append(
            (meta["start"], meta["end"])
        )
    assert len(spans) >= 3
    for rid, by_split in spans.items():
        assert {"train", "test"} <= set(by_split), (rid, by_split)
        order = [by_split[k] for k in ("train", "dev", "test") if k in by_split]
        for before, after in zip(order, order[1:]):
            assert max(e for _, e in before) <= min(s for s, _ in after), (rid, by_split)
        held_out = sum(e - s for s, e in by_split["test"])
        assert 0.2 * recs[rid].duration <= held_out <= 0.4 * recs[rid].duration + 1


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


# --- write errors (disk full, file size limit): nothing broken is kept, a re-run completes ---


def _all_policy(folder: Path) -> Path:
    policy = folder / "all.yaml"  # every segment: enough shards to fail in the middle
    policy.write_text("default: [train, transcribe]\n")
    return policy


@pytest.fixture(scope="module")
def all_shards(sample_manifests, tmp_path_factory) -> Path:
    """An uninterrupted run over every segment (3 samples a shard): what a re-run must equal."""
    folder = tmp_path_factory.mktemp("all_shards")
    out = folder / "out"
    opts = _opts(max_count=3, allow_empty_text=True, policy=_all_policy(folder))
    shard(sample_manifests / "segments.jsonl", out, opts)
    return out


def _shard_cmd(sample_manifests: Path, out: Path, policy: Path) -> list[str]:
    """The `asr shard` command line of `all_shards`."""
    cmd = [sys.executable, "-m", "asr", "shard", str(sample_manifests / "segments.jsonl")]
    cmd += ["--out", str(out), "--max-count", "3", "--allow-empty-text", "--no-progress"]
    return [*cmd, "--policy", str(policy)]


def _tar_contents(shard_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """Each tar's members in order, with the sha256 of each member's bytes."""
    contents = {}
    for path in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(path) as tar:
            contents[path.name] = [
                (m.name, hashlib.sha256(tar.extractfile(m).read()).hexdigest()) for m in tar
            ]
    return contents


def _assert_same_as_uninterrupted(out: Path, clean: Path) -> None:
    assert _tar_contents(out) == _tar_contents(clean)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in clean.iterdir())
    for p in clean.iterdir():  # tars, sidecars and shards.json, byte for byte
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name
    index = json.loads((out / "shards.json").read_text())
    members = {n: len(m) for n, m in _tar_contents(out).items()}
    for info in index["splits"].values():
        for s in info["shards"]:
            assert 2 * s["samples"] == members.pop(s["name"])
    assert not members, "every tar is in shards.json"
    keys = [m["__key__"] for _, m in _all_samples(out)]
    splits = index["splits"].values()
    assert len(keys) == len(set(keys)) == sum(s["samples"] for s in splits)


def _check_failed_run(
    proc: subprocess.CompletedProcess, out: Path, reason: str, ran_in: Path | None = None
) -> list[str]:
    """The failed run's exit code and message (naming the shard in ran_in, default out), and
    what it left in out: whole shards only; returns their names."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "WARNING" not in proc.stderr, "the run stops at the write error, not after"
    error = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert len(error) == 1 and reason in error[0], proc.stderr
    named = Path(error[0].split("ERROR asr: ", 1)[1].split(": cannot write the shard", 1)[0])
    assert named.parent == (ran_in or out) and _SHARD_NAME.match(named.name), error[0]
    assert not (out / named.name).exists(), "the shard that failed is not committed"
    assert not list(out.glob(".*")), "no temporary files are left"
    assert not (out / "shards.json").exists()
    committed = sorted(p.name for p in out.glob("*.tar"))
    for name in committed:  # each committed shard is whole: its sidecar lists its members
        sidecar = (out / name).with_suffix(".jsonl").read_text().splitlines()
        keys = [json.loads(line)["key"] for line in sidecar]
        assert [m for m, _ in _tar_contents(out)[name]] == [
            f"{k}.{ext}" for k in keys for ext in ("flac", "json")
        ]
        assert all(sf.read(io.BytesIO(a.flac))[1] == 16000 for a in read_raw([str(out / name)]))
    assert sorted({p.stem for p in out.glob("*.jsonl")}) == [n[:-4] for n in committed]
    return committed


def test_file_size_limit_fails_the_run_and_a_rerun_completes(
    sample_manifests, all_shards, tmp_path
):
    """A real write failure (EFBIG under RLIMIT_FSIZE) while `asr shard` writes a shard: exit 1
    naming the shard, nothing broken kept; the same command without the limit then writes
    exactly what an uninterrupted run writes."""
    index = json.loads((all_shards / "shards.json").read_text())
    sizes = {s["name"]: s["bytes"] for v in index["splits"].values() for s in v["shards"]}
    # no first shard of a split exceeds the limit, so the one that fails has a committed
    # predecessor (a split's next shard is opened only once the one before is committed)
    limit = max(size for name, size in sizes.items() if name.endswith("-000000.tar"))
    if not any(size > limit for size in sizes.values()):
        pytest.skip("no shard is larger than the first shards: nothing to fail")

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out, policy = tmp_path / "out", _all_policy(tmp_path)
    cmd = _shard_cmd(sample_manifests, out, policy)
    proc = subprocess.run(cmd, preexec_fn=limit_file_size, capture_output=True, text=True)
    committed = _check_failed_run(proc, out, "File too large")
    assert 1 <= len(committed) < len(sizes)
    assert all(sizes[n] <= limit for n in committed)
    _rerun(sample_manifests, out, policy)
    _assert_same_as_uninterrupted(out, all_shards)


def _rerun(sample_manifests: Path, out: Path, policy: Path) -> None:
    """The same command again, without the fault (in this process: it saves an import)."""
    opts = _opts(max_count=3, allow_empty_text=True, policy=policy)
    result = shard(sample_manifests / "segments.jsonl", out, opts)
    assert result.resumed_samples > 0 and not result.errors


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d && umount $d; rmdir $d"
    probed = subprocess.run(["unshare", "-rm", "sh", "-c", probe], capture_output=True)
    return probed.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="cannot mount a tmpfs (unshare -rm)")
def test_disk_full_on_tmpfs_fails_the_run_and_a_rerun_completes(
    sample_manifests, all_shards, tmp_path
):
    """`asr shard` onto a tmpfs half the size of the shards (ENOSPC midway, in a private mount
    namespace); its output copied to a disk with room, the same command completes it."""
    total = sum(p.stat().st_size for p in all_shards.iterdir())
    small = tmp_path / "small"
    small.mkdir()
    out, kept = small / "out", tmp_path / "out"
    policy = _all_policy(tmp_path)
    cmd = _shard_cmd(sample_manifests, out, policy)
    script = (
        f'mount -t tmpfs -o size={total // 2} tmpfs "{small}" && '
        f'{{ "$@" 2>"{tmp_path}/stderr"; echo $? >"{tmp_path}/rc"; }} && cp -a "{out}" "{kept}"'
    )
    subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *cmd], check=True)
    failed = subprocess.CompletedProcess(
        cmd, int((tmp_path / "rc").read_text()), "", (tmp_path / "stderr").read_text()
    )
    committed = _check_failed_run(failed, kept, "No space left on device", ran_in=out)
    assert len(committed) >= 1
    _rerun(sample_manifests, kept, policy)
    _assert_same_as_uninterrupted(kept, all_shards)


def test_rerun_after_a_crash_writes_the_shards_of_an_uninterrupted_run(sample_manifests, tmp_path):
    """Recordings interleaved in the manifest: a re-run after a crash (each split's last
    shards never committed) writes its remaining samples in an uninterrupted run's order."""
    lines = (sample_manifests / "segments.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    rows.sort(key=lambda r: (r["start"], r["recording_id"]))  # recordings interleaved
    segments = tmp_path / "segments.jsonl"
    segments.write_text("".join(json.dumps(r) + "\n" for r in rows))
    opts = _opts(
        max_count=2,
        allow_empty_text=True,
        policy=_all_policy(tmp_path),
        recordings=sample_manifests / "recordings.jsonl",
    )
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    shard(segments, clean, opts)
    shutil.copytree(clean, crashed)
    (crashed / "shards.json").unlink()
    for split in SPLITS:  # the state a crash leaves: each split's first shards committed
        tars = sorted(crashed.glob(f"{split}-*.tar"))
        for tar in tars[len(tars) // 3 :]:
            tar.unlink()
            tar.with_suffix(".jsonl").unlink()
    assert shard(segments, crashed, opts).resumed_samples > 0
    _assert_same_as_uninterrupted(crashed, clean)


def test_a_damaged_shard_of_an_earlier_run_is_refused(all_shards, sample_manifests, tmp_path):
    """A committed tar that disagrees with its sidecar (as an earlier version left them after
    a disk-full) is named, not built upon."""
    opts = _opts(max_count=3, allow_empty_text=True, policy=_all_policy(tmp_path))
    for damage in ("truncate", "sidecar"):
        out = tmp_path / damage
        shutil.copytree(all_shards, out)
        (out / "shards.json").unlink()
        tar = sorted(out.glob("train-*.tar"))[1]
        if damage == "truncate":
            data = tar.read_bytes()
            tar.write_bytes(data[: len(data) // 2])
        else:
            sidecar = tar.with_suffix(".jsonl")
            sidecar.write_text("".join(sidecar.read_text().splitlines(True)[:-1]))
        with pytest.raises(ValueError, match=f"{tar.name}: a damaged shard"):
            shard(sample_manifests / "segments.jsonl", out, opts)


def _tar_with(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    return path


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "kind, words",
    [(tarfile.SYMTYPE, "a symbolic link to '/etc/passwd'"), (tarfile.LNKTYPE, "a hard link")],
)
def test_reader_refuses_link_members(tmp_path, kind, words):
    buf = io.BytesIO()
    sf.write(buf, np.zeros(1600, np.float32), 16000, format="FLAC")
    meta = json.dumps({"duration": 0.1, "sample_rate": 16000}).encode()
    target = "/etc/passwd" if kind == tarfile.SYMTYPE else "good.flac"
    bad = _tar_with(
        tmp_path / "train-000000.tar",
        [("good.flac", buf.getvalue()), ("good.json", meta), _link("x.flac", target, kind)]
        + [("x.json", meta)],
    )
    message = re.escape(f"{bad}: refusing tar member 'x.flac' ({words}")
    with pytest.raises(ValueError, match=message):
        list(read_shards(str(bad)))
    with pytest.raises(ValueError, match=message):
        list(read_raw([str(bad)]))
    fifo = _tar_with(tmp_path / "fifo.tar", [_link("y.flac", "", tarfile.FIFOTYPE)])
    with pytest.raises(ValueError, match=r"fifo.tar: refusing tar member 'y.flac' \(a FIFO"):
        list(read_shards(str(fifo)))


@pytest.mark.parametrize("name", ["../../x.tar", "/tmp/x.tar", "sub/x.tar", "..", ""])
def test_shards_json_entries_stay_in_the_shard_folder(shards, tmp_path, name):
    index = json.loads((shards / "shards.json").read_text())
    index["splits"]["train"]["shards"][0]["name"] = name
    (tmp_path / "shards.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=f"refusing shard '{re.escape(name)}' .not a file name"):
        shard_paths(tmp_path, "train")
    assert shard_paths(tmp_path, "dev") == [
        str(tmp_path / s["name"]) for s in index["splits"]["dev"]["shards"]
    ]


def test_a_folder_of_another_runs_shards_is_not_resumed(sample_manifests, tmp_path):
    """Shards of one manifest and options are never resumed by another run: fewer segments,
    another split seed or another rights policy would mix two datasets (stale samples kept);
    the run is refused naming a sample, and the folder is left as it was."""
    out = tmp_path / "shards"
    shard(sample_manifests / "segments.jsonl", out, _opts(max_count=3))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    written = {meta["id"] for _, meta in _all_samples(out)}
    segs = (sample_manifests / "segments.jsonl").read_text(encoding="utf-8").splitlines()
    gone = sorted(written)[len(written) // 2]  # a segment cut differently this time
    fewer = tmp_path / "segments.jsonl"
    fewer.write_text(
        "".join(line + "\n" for line in segs if json.loads(line)["id"] != gone), encoding="utf-8"
    )
    rec = tmp_path / "recordings.jsonl"
    rec.write_bytes((sample_manifests / "recordings.jsonl").read_bytes())
    with pytest.raises(ValueError, match=r"come from another run: sample '.+' in .+ is not among"):
        shard(fewer, out, _opts(max_count=3))
    with pytest.raises(ValueError, match=r"come from another run: sample '.+' in .+ goes to"):
        shard(sample_manifests / "segments.jsonl", out, _opts(max_count=3, seed=7))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    r = shard(sample_manifests / "segments.jsonl", out, _opts(max_count=3))  # the same run
    assert r.resumed_samples == sum(1 for _ in _all_samples(out))
