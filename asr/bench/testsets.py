"""Test sets: utterances with reference text and audio, from a segments manifest (audio cut
from its recordings), a shard folder (`asr shard`), or a CSV catalogue of audio files (short
utterances, or whole recordings whose reference is a text file beside them)."""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asr.audio import SAMPLE_RATE, cut_spans, load
from asr.bench.config import TestSetSpec

log = logging.getLogger(__name__)


@dataclass
class Utterance:
    """One scored item: its id, reference, language, duration and fields for breakdowns."""

    id: str
    ref: str
    language: str | None
    duration: float
    fields: dict = field(default_factory=dict)
    audio: np.ndarray | None = None
    path: str | None = None
    """The audio file when the item is a whole file (a CSV row): the benchmark transcribes the
    file itself, as `asr transcribe` would; items without one exist only as `audio`."""


DEFAULT_MAX_SECONDS = 30.0
"""Longest utterance of a set of utterances, unless max_seconds says otherwise."""


def max_seconds(ts: TestSetSpec) -> float:
    """The set's duration limit in seconds, 0 for none: its max_seconds if given, else none for
    whole recordings (text_file sets) and DEFAULT_MAX_SECONDS for utterances."""
    if ts.max_seconds is not None:
        return float(ts.max_seconds)
    return 0.0 if ts.text_file else DEFAULT_MAX_SECONDS


def utterances(ts: TestSetSpec, with_audio: bool = True) -> Iterator[Utterance]:
    """The test set's utterances in a fixed order (audio decoded only if asked)."""
    src = Path(ts.manifest)
    if (src / "shards.json").is_file():
        items = _from_shards(ts, src, with_audio)
    elif src.suffix.lower() == ".csv":
        items = _from_csv(ts, src, with_audio)
    elif src.name.endswith((".jsonl", ".jsonl.gz")):
        items = _from_segments(ts, src, with_audio)
    else:
        raise ValueError(f"{src}: a test set is a segments .jsonl, a shard folder or a .csv")
    limit = max_seconds(ts)
    n = 0
    for u in items:
        if limit and u.duration > limit:
            log.warning("%s: %s is %.1f s (> %.0f s); left out", ts.name, u.id, u.duration, limit)
            continue
        if not u.language:
            u.language = ts.language
        yield u
        n += 1
        if ts.max_utterances and n >= ts.max_utterances:
            break


def dataset_hash(items: list[Utterance]) -> str:
    """sha256 of ids, references and durations: what makes two runs comparable."""
    h = hashlib.sha256()
    for u in items:
        h.update(f"{u.id}\t{u.ref}\t{u.duration:.3f}\n".encode())
    return h.hexdigest()


def _from_shards(ts: TestSetSpec, src: Path, with_audio: bool) -> Iterator[Utterance]:
    from asr.shards import read_raw, shard_paths

    urls = shard_paths(src, ts.split)
    if not urls:
        raise ValueError(f"{src}/shards.json: the '{ts.split}' split has no shards")
    for s in read_raw(urls):
        m = s.meta
        audio = s.audio() if with_audio else None
        yield Utterance(m.get("id", s.key), s.text("text"), m.get("language"), s.duration, m, audio)


def _from_csv(ts: TestSetSpec, src: Path, with_audio: bool) -> Iterator[Utterance]:
    with open(src, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and ("path" not in rows[0] or ts.text_column not in rows[0]):
        raise ValueError(f"{src}: needs columns path and {ts.text_column}")
    for i, row in enumerate(rows, start=2):
        if any(str(row.get(k)) != str(v) for k, v in ts.where.items()):
            continue
        path = src.parent / row["path"]
        ref = row[ts.text_column] or ""
        if ts.text_file:  # the column names a text file: the whole recording's reference
            try:
                ref = " ".join((src.parent / ref).read_text(encoding="utf-8").split())
            except (OSError, UnicodeDecodeError) as e:
                log.warning("%s:%d: reference %s: left out (%s)", src, i, ref, e)
                continue
        duration = float(row.get("duration_s") or row.get("duration") or 0.0)
        audio = None
        if with_audio:
            try:
                audio = load(path)
            except Exception as e:  # one unreadable file does not stop the benchmark
                log.warning("%s:%d: %s: left out (%s)", src, i, path, e)
                continue
            duration = audio.size / SAMPLE_RATE
        yield Utterance(row["path"], ref, row.get("language"), duration, row, audio, str(path))


def _from_segments(ts: TestSetSpec, src: Path, with_audio: bool) -> Iterator[Utterance]:
    from asr.manifest import read_recordings, read_segments

    segs = list(read_segments(src))
    if not with_audio:
        for s in segs:
            yield Utterance(s.id, s.text, s.language, s.duration, _seg_fields(s, None))
        return
    recs = {r.id: r for r in read_recordings(src.with_name("recordings.jsonl"))}
    by_rec: dict[str, list] = defaultdict(list)
    for s in segs:
        by_rec[s.recording_id].append(s)
    # recording by recording, each decoded once in one pass: memory holds one segment at most
    for rid, group in by_rec.items():
        rec = recs.get(rid)
        if rec is None:
            raise ValueError(f"{src}: recording {rid} is not in recordings.jsonl beside it")
        group.sort(key=lambda s: s.start)
        for i, audio in cut_spans(rec.path, [(s.start, s.end) for s in group]):
            s = group[i]
            yield Utterance(s.id, s.text, s.language, s.duration, _seg_fields(s, rec), audio)


def _seg_fields(s, rec) -> dict:
    fields = {"speaker": s.speaker, "language": s.language, **(s.metadata or {})}
    if rec is not None:
        fields.update(collection=rec.collection, date=rec.date, title=rec.title)
    return fields
