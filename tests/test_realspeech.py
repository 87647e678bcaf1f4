"""The whole chain on real recorded speech (../shared/data/realspeech): 241 files, 22 languages."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from asr.ingest import IngestOptions, ingest
from asr.manifest import read_recordings, read_segments
from asr.rights import RightsPolicy
from asr.segment import segment
from asr.shards import ShardOptions, read_shards, shard, shard_paths
from asr.vad import SegmentOptions


@pytest.fixture(scope="module")
def corpus(realspeech_catalogue, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("realspeech_out")
    ingest(
        [],
        out,
        IngestOptions(
            catalogue=realspeech_catalogue, workers=2, progress=False, allow_outside=True
        ),
    )
    segment(out / "recordings.jsonl", out / "segments.jsonl", SegmentOptions(progress=False))
    shard(out / "segments.jsonl", out / "shards", ShardOptions(progress=False))
    return out


def test_ingest_measures_every_real_recording(corpus, realspeech):
    with open(realspeech / "catalogue.csv", encoding="utf-8") as f:
        truth = {r["path"]: r for r in csv.DictReader(f)}
    recs = {r.id: r for r in read_recordings(corpus / "recordings.jsonl")}
    assert set(recs) == set(truth)
    assert (corpus / "errors.jsonl").read_text() == ""
    for rid, rec in recs.items():
        t = truth[rid]
        # Opus always decodes at 48 kHz; its header's "input rate" is what the catalogue gives
        rate = 48000 if rec.codec == "opus" else int(t["sample_rate"])
        assert rec.sample_rate == rate and rec.channels == int(t["channels"])
        assert abs(rec.duration - float(t["duration_s"])) < 0.06, rid
        assert rec.sha256 == t["sha256"]
        assert rec.language == t["language"]


def test_segments_of_real_speech(corpus):
    recs = {r.id: r for r in read_recordings(corpus / "recordings.jsonl")}
    segs = list(read_segments(corpus / "segments.jsonl"))
    ref = [s for s in segs if s.text_source == "reference"]
    assert len(ref) == 236, "every utterance is one segment with its reference text"
    longform = [r for r in recs.values() if r.transcript]
    assert len(longform) == 5
    for rec in longform:
        mine = [s for s in segs if s.recording_id == rec.id]
        assert len(mine) >= 2 and all(s.end - s.start <= 30 for s in mine)
        assert sum(s.end - s.start for s in mine) > 0.8 * rec.duration
        assert all(s.text == "" for s in mine), "long transcripts wait for `asr align`"


def test_shards_of_real_speech(corpus):
    recs = {r.id: r for r in read_recordings(corpus / "recordings.jsonl")}
    policy = RightsPolicy.load()
    trainable = {rid for rid, r in recs.items() if policy.allows(r.rights, "train")}
    an4 = {rid for rid in recs if rid.startswith("an4_nemo/")}
    assert an4 and not (an4 & trainable), "AN4's own licence terms are not in the default policy"
    samples = [
        x
        for sp in ("train", "dev", "test")
        for x in read_shards(shard_paths(corpus / "shards", sp))
    ]
    ids = {m["recording_id"] for _, m in samples}
    assert ids == {rid for rid in trainable if recs[rid].text}
    languages = {m["language"] for _, m in samples}
    assert len(languages) >= 20
    index = json.loads((corpus / "shards" / "shards.json").read_text())
    assert index["skipped"]["rights"] == len(an4)
    assert index["splits"]["dev"]["samples"] > 0 and index["splits"]["test"]["samples"] > 0
    for audio, meta in samples:
        assert abs(audio.size / 16000 - meta["duration"]) < 0.01
