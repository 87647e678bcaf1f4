"""`asr segment`: Silero VAD on onnxruntime, streaming, and cutting at the longest pauses."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.audio import stream
from asr.chunks import plan_segments
from asr.ingest import IngestOptions, ingest
from asr.manifest import read_recordings, read_segments
from asr.segment import segment
from asr.vad import FRAME_S, SegmentOptions, SileroVad, find_vad_model, speech_regions
from tests.conftest import espeak

SENTENCES = [
    "The harbour master kept a record of every ship.",
    "In winter the water sometimes freezes along the banks.",
    "The library opened its doors in the spring.",
    "Children waited on the pier to see the boats come home.",
    "The reading room was quiet all afternoon.",
    "Every morning the weather report was read on the radio.",
]
PAUSES = [0.6, 2.0, 0.8, 1.5, 0.7]


@pytest.fixture(scope="module")
def speech_file(tmp_path_factory, have_espeak) -> tuple[Path, list[tuple[float, float]]]:
    """espeak-ng sentences with known pauses; returns the file and each sentence's span."""
    d = tmp_path_factory.mktemp("vad")
    parts, spans, t = [np.zeros(8000, np.float32)], [], 0.5
    for i, text in enumerate(SENTENCES):
        audio = espeak(text, d / f"{i}.wav")
        nz = np.flatnonzero(np.abs(audio) > 1e-3)
        audio = audio[nz[0] : nz[-1] + 1]  # exact speech bounds
        parts.append(audio)
        spans.append((t, t + audio.size / 16000))
        t += audio.size / 16000
        if i < len(PAUSES):
            parts.append(np.zeros(int(PAUSES[i] * 16000), np.float32))
            t += PAUSES[i]
    parts.append(np.zeros(16000, np.float32))
    path = d / "speech.flac"
    sf.write(path, np.concatenate(parts), 16000)
    return path, spans


def test_probabilities_do_not_depend_on_block_size(speech_file):
    vad = SileroVad()
    whole = vad.probabilities(stream(speech_file[0], block_seconds=1000))
    small = vad.probabilities(stream(speech_file[0], block_seconds=0.77))
    assert whole.size == small.size > 0
    np.testing.assert_allclose(whole, small, atol=1e-5)


@pytest.mark.parametrize("model", ["silero-vad", "faster-whisper"])
def test_speech_regions_match_the_sentences(speech_file, model):
    path, spans = speech_file
    if model == "faster-whisper":
        import faster_whisper

        vad_path = Path(faster_whisper.__file__).parent / "assets" / "silero_vad_v6.onnx"
    else:
        vad_path = find_vad_model()
        assert "silero_vad" in str(vad_path), "make test installs the silero-vad wheel's model"
    probs = SileroVad(vad_path).probabilities(stream(path))
    regions = [(s * FRAME_S, e * FRAME_S) for s, e in speech_regions(probs, SegmentOptions())]
    assert len(regions) == len(spans)
    for (s, e), (ts, te) in zip(regions, spans):
        assert abs(s - ts) < 0.15 and abs(e - te) < 0.3


def test_segments_are_cut_at_the_longest_pauses(speech_file, tmp_path):
    path, spans = speech_file
    duration = sf.info(path).duration
    opts = SegmentOptions(max_duration=9.0)
    probs = SileroVad().probabilities(stream(path))
    segs = plan_segments(speech_regions(probs, opts), probs, duration, opts)
    assert all(e - s <= 9.0 for s, e in segs)
    assert all(a[1] <= b[0] for a, b in zip(segs, segs[1:])), "segments overlap"
    # every sentence lies wholly inside one segment: cuts fall in pauses only
    for ts, te in spans:
        assert any(s <= ts and te <= e for s, e in segs), (ts, te, segs)
    # the 2.0 s pause (the longest) is a cut
    gap_start, gap_end = spans[1][1], spans[2][0]
    assert not any(s < gap_start and gap_end < e for s, e in segs)


def test_a_long_unbroken_region_is_split_below_the_limit():
    probs = np.full(2000, 0.9, np.float32)  # 64 s of speech without a pause
    probs[1000] = 0.2
    opts = SegmentOptions(max_duration=30)
    segs = plan_segments(speech_regions(probs, opts), probs, 2000 * FRAME_S, opts)
    assert len(segs) >= 3 and all(e - s <= 30 for s, e in segs)
    assert segs[0][0] == 0 and abs(segs[-1][1] - 64) < 0.1
    assert any(abs(e - 1000 * FRAME_S) < 0.25 for _, e in segs), "cut at the least speech-like"


def test_silence_gives_no_segments(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000 * 40, np.float32), 16000)
    rng = np.random.default_rng(0)
    noise = tmp_path / "hiss.wav"
    sf.write(noise, (rng.standard_normal(16000 * 40) * 1e-3).astype(np.float32), 16000)
    out = tmp_path / "out"
    ingest([tmp_path], out, IngestOptions(workers=1, progress=False))
    r = segment(out / "recordings.jsonl", out / "segments.jsonl", SegmentOptions(progress=False))
    assert r.recordings == 2 and r.segments == 0 and not r.errors


def test_segment_sample_archive(sample_manifests):
    recs = {r.id: r for r in read_recordings(sample_manifests / "recordings.jsonl")}
    segs = list(read_segments(sample_manifests / "segments.jsonl"))
    assert len({s.id for s in segs}) == len(segs)
    by_rec: dict[str, list] = {}
    for s in segs:
        by_rec.setdefault(s.recording_id, []).append(s)
    assert set(by_rec) == set(recs), "every recording of the archive has speech"
    for rid, ss in by_rec.items():
        rec = recs[rid]
        assert all(0 <= s.start < s.end <= rec.duration + 1e-3 for s in ss)
        assert all(s.end - s.start <= 30.0 for s in ss)
        assert all(a.end <= b.start for a, b in zip(ss, ss[1:]))
        text = rec.reference_text()
        if text and rec.duration <= 30:
            assert len(ss) == 1 and ss[0].text_source == "reference"
            assert ss[0].text == " ".join(text.split()) and ss[0].language == rec.language
        else:
            assert all(s.text == "" and s.text_source is None for s in ss)
            assert all(s.scores["speech_prob"] > 0.5 for s in ss)
    long = max(recs.values(), key=lambda r: r.duration)
    covered = sum(s.end - s.start for s in by_rec[long.id])
    assert len(by_rec[long.id]) >= long.duration / 30 and covered > 0.7 * long.duration
    assert (sample_manifests / "segments.errors.jsonl").read_text() == ""


def test_segment_reports_a_file_gone_since_ingest(sample_manifests, tmp_path):
    lines = (sample_manifests / "recordings.jsonl").read_text().splitlines()[:3]
    rec = json.loads(lines[1])
    rec["path"] = str(tmp_path / "gone.wav")
    rec["text"] = None
    rec["transcript"] = None
    lines[1] = json.dumps(rec)
    (tmp_path / "recordings.jsonl").write_text("\n".join(lines) + "\n")
    r = segment(
        tmp_path / "recordings.jsonl", tmp_path / "segments.jsonl", SegmentOptions(workers=1)
    )
    assert [e.id for e in r.errors] == [rec["id"]] and "not found" in r.errors[0].reason
    errors = (tmp_path / "segments.errors.jsonl").read_text()
    assert "gone.wav" in errors
    assert {s.recording_id for s in read_segments(tmp_path / "segments.jsonl")} == {
        json.loads(lines[0])["id"],
        json.loads(lines[2])["id"],
    }


def test_stream_chunks_plans_while_streaming(speech_file):
    """One pass, in small blocks: the chunks still hold every sentence whole, in order."""
    from asr.chunks import stream_chunks

    path, spans = speech_file
    opts = SegmentOptions(max_duration=9.0, fill=True)
    full = np.concatenate(list(stream(path)))
    for block_seconds in (1.0, 7.0):
        chunks = list(stream_chunks(stream(path, block_seconds=block_seconds), SileroVad(), opts))
        assert all(e - s <= 9.0 + 1e-6 for s, e, _ in chunks)
        assert all(a[1] <= b[0] for a, b in zip(chunks, chunks[1:])), "chunks overlap"
        for s, e, audio in chunks:
            assert abs(audio.size - (e - s) * 16000) <= 2
            np.testing.assert_array_equal(audio[:100], full[round(s * 16000) :][:100])
        for ts, te in spans:
            assert any(s <= ts and te <= e for s, e, _ in chunks), (block_seconds, ts, te, chunks)


def _with_latin1_transcript(sample_manifests, tmp_path, n: int = 3) -> tuple[Path, dict]:
    """The first n recordings of the sample archive, the second with a Latin-1 transcript."""
    lines = (sample_manifests / "recordings.jsonl").read_text().splitlines()[:n]
    rec = json.loads(lines[1])
    bad = tmp_path / "café.txt"
    bad.write_bytes("Le café était fermé.".encode("latin-1"))
    rec["text"], rec["transcript"] = None, str(bad)
    lines[1] = json.dumps(rec)
    (tmp_path / "recordings.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "recordings.jsonl", rec


def test_a_transcript_that_is_not_utf8_fails_only_its_recording(sample_manifests, tmp_path):
    recs, bad = _with_latin1_transcript(sample_manifests, tmp_path)
    r = segment(recs, tmp_path / "segments.jsonl", SegmentOptions(workers=1, progress=False))
    assert [e.id for e in r.errors] == [bad["id"]], r.errors
    assert "café.txt" in r.errors[0].reason and "not UTF-8" in r.errors[0].reason
    got = {s.recording_id for s in read_segments(tmp_path / "segments.jsonl")}
    assert len(got) == 2 and bad["id"] not in got


def test_segment_ids_name_their_spans(sample_manifests):
    for s in read_segments(sample_manifests / "segments.jsonl"):
        assert s.id == f"{s.recording_id}_{round(s.start * 1000)}_{round(s.end * 1000)}"


def test_segmenting_again_leaves_no_stale_sample_under_an_id(sample_manifests, tmp_path):
    """Segments of other options get other ids (ids by position made `rec_00001` of the new
    segmentation look like the old one's); `asr shard` into the folder of the old ones refuses
    to mix the two, and writes the new spans into a fresh folder."""
    from asr.shards import ShardOptions, sample_key, shard

    rec = max(read_recordings(sample_manifests / "recordings.jsonl"), key=lambda r: r.duration)
    (tmp_path / "recordings.jsonl").write_text(json.dumps(dataclasses.asdict(rec)) + "\n")
    opts = ShardOptions(allow_empty_text=True, progress=False)
    spans = {}
    for max_duration in (30.0, 9.0):
        segs = tmp_path / f"segments-{max_duration:.0f}.jsonl"
        segment(tmp_path / "recordings.jsonl", segs, SegmentOptions(max_duration=max_duration))
        spans[max_duration] = {s.id: (s.start, s.end) for s in read_segments(segs)}
    assert spans[30.0] != spans[9.0] and len(spans[9.0]) > len(spans[30.0])
    for sid in set(spans[30.0]) & set(spans[9.0]):
        assert spans[30.0][sid] == spans[9.0][sid], sid  # one id, one span
    shard(tmp_path / "segments-30.jsonl", tmp_path / "shards", opts)
    with pytest.raises(ValueError, match="come from another run: sample"):
        shard(tmp_path / "segments-9.jsonl", tmp_path / "shards", opts)
    shard(tmp_path / "segments-9.jsonl", tmp_path / "fresh", opts)
    written = {}
    for sidecar in (tmp_path / "fresh").glob("*.jsonl"):
        for line in sidecar.read_text().splitlines():
            meta = json.loads(line)
            written[meta["key"]] = (meta["start"], meta["end"])
    assert written == {sample_key(sid): span for sid, span in spans[9.0].items()}


def test_a_crashing_decoder_fails_its_recording_and_the_rest_go_on(
    sample_archive, tmp_path, monkeypatch
):
    """A worker that segfaults decoding one recording (tests/test_journal.crash_on) fails that
    recording with the reason; the others are segmented (it used to stop the whole run)."""
    from asr import stage
    from tests.test_journal import crash_on

    holdings = tmp_path / "holdings"
    holdings.mkdir()
    for src, name in [
        ("radio/wetterbericht.ogg", "a.ogg"),
        ("radio/noticias_breves.ogg", "crash.ogg"),
        ("radio/news_bulletin_river.mp3", "b.mp3"),
    ]:
        (holdings / name).write_bytes((sample_archive.parent / src).read_bytes())
    out = tmp_path / "out"
    ingest([holdings], out, IngestOptions(workers=1, progress=False))
    monkeypatch.setattr(stage, "WORKER_SETUP", [(crash_on, ("crash.ogg",))])
    r = segment(out / "recordings.jsonl", out / "segments.jsonl", SegmentOptions(workers=2))
    assert [(e.id, e.reason) for e in r.errors] == [
        ("crash.ogg", "the decoder crashed (signal SIGSEGV)")
    ]
    got = {s.recording_id for s in read_segments(out / "segments.jsonl")}
    assert got == {"a.ogg", "b.mp3"}


def test_a_killed_run_resumes_to_what_an_uninterrupted_run_writes(sample_manifests, tmp_path):
    """`asr segment` killed with -9, its journal's last line torn: the rerun writes exactly
    the segments (ids included) of the uninterrupted run."""
    from asr.stage import Journal, journal_path

    out = tmp_path / "segments.jsonl"
    journal = journal_path(out)
    cmd = [sys.executable, "-m", "asr", "segment", str(sample_manifests / "recordings.jsonl")]
    cmd += ["--out", str(out), "--workers", "1", "--no-progress", "-q"]
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 4:  # the key and 3 entries
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    with open(journal, "ab") as f:
        f.write(b'{"id": "sa-0019", "sha256": "')
    key = json.loads(journal.read_text().splitlines()[0])["options"]
    assert 3 <= len(Journal(journal, key).open().entries) < 20
    r = segment(sample_manifests / "recordings.jsonl", out, SegmentOptions(progress=False))
    assert r.recordings == 20 and not r.errors and not journal.exists()
    assert out.read_text() == (sample_manifests / "segments.jsonl").read_text()
