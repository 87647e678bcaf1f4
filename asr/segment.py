"""`asr segment`: a recordings manifest to a segments manifest, cut at pauses VAD hears.

Each recording's speech (asr.vad) is planned into segments of at most `max_duration` seconds
(asr.chunks); a recording short enough and with a reference text is one segment. The run
resumes from its journal and isolates a crashing decoder to its file (asr.stage).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from asr.audio import SAMPLE_RATE, AudioError, stream
from asr.chunks import plan_segments
from asr.diarize import NoTurnsError, speaker_turns_for
from asr.manifest import (
    ErrorRecord,
    Recording,
    Segment,
    TranscriptError,
    read_recordings,
    write_manifest,
)
from asr.progress import bar as progress_bar
from asr.speakers import cut_at_turns, speaker_at
from asr.stage import Crashed, Journal, journal_path, process_map
from asr.vad import FRAME_S, SegmentOptions, SileroVad, speech_regions

log = logging.getLogger(__name__)


@dataclass
class SegmentResult:
    """What `segment` did."""

    recordings: int = 0
    segments: int = 0
    reference_segments: int = 0
    speech_hours: float = 0.0
    audio_hours: float = 0.0
    errors: list[ErrorRecord] = field(default_factory=list)
    manifest: Path | None = None


def segment_id(recording_id: str, start: float, end: float) -> str:
    """A segment's id: its recording's id and its span in milliseconds, `<id>_<start>_<end>`.

    It names the content, not a position: segmenting again with other options gives the spans
    that changed new ids, so nothing keyed by id (`asr shard`'s resume) takes an old sample for
    a new one; the spans of one recording never overlap, so its ids are unique."""
    return f"{recording_id}_{round(start * 1000)}_{round(end * 1000)}"


def segment_recording(rec: Recording, opts: SegmentOptions, vad: SileroVad | None) -> list[Segment]:
    """The segments of one recording: its whole reference text when short enough, else VAD's."""
    speaker = rec.speakers[0] if len(rec.speakers) == 1 else None
    turns = speaker_turns_for(opts.diarization, rec.id) if opts.diarization else None
    text = rec.reference_text()
    if text is not None and rec.duration <= opts.max_duration:
        if turns is not None:
            speaker = speaker_at(turns, 0.0, rec.duration)
        return [
            Segment(
                id=segment_id(rec.id, 0.0, round(rec.duration, 3)),
                recording_id=rec.id,
                start=0.0,
                end=round(rec.duration, 3),
                text=" ".join(text.split()),
                text_source="reference",
                language=rec.language,
                speaker=speaker,
            )
        ]
    vad = vad or SileroVad(opts.vad_model)
    probs = vad.probabilities(stream(rec.path, SAMPLE_RATE, block_seconds=32.768))
    spans = plan_segments(speech_regions(probs, opts), probs, rec.duration, opts)
    pieces = [(a, b, speaker) for a, b in spans]
    if turns is not None:  # cut where the speaker changes; each piece has its speaker
        pieces = cut_at_turns(spans, turns, opts.min_duration)
    segments = []
    for start, end, speaker in pieces:
        window = probs[int(start / FRAME_S) : max(int(start / FRAME_S) + 1, int(end / FRAME_S))]
        segments.append(
            Segment(
                id=segment_id(rec.id, start, end),
                recording_id=rec.id,
                start=start,
                end=end,
                language=rec.language,
                speaker=speaker,
                scores={"speech_prob": round(float(window.mean()), 4) if window.size else None},
            )
        )
    return segments


_worker_vad: SileroVad | None = None


def _segment_worker(rec: Recording, opts: SegmentOptions) -> list[Segment] | str:
    """Process-pool entry: one VAD session per process, errors returned as reasons."""
    global _worker_vad
    try:
        if _worker_vad is None and not (rec.reference_text() and rec.duration <= opts.max_duration):
            _worker_vad = SileroVad(opts.vad_model)
        return segment_recording(rec, opts, _worker_vad)
    except AudioError as e:
        return e.reason
    except (TranscriptError, NoTurnsError) as e:
        return str(e)
    except OSError as e:
        return f"cannot read file ({e.strerror or e})"


def segment(recordings: Path, out: Path, options: SegmentOptions | None = None) -> SegmentResult:
    """Segment every recording of a manifest; write the segments manifest and its error file.

    Finished recordings go to a journal beside `out` first, so an interrupted run resumes (one
    with other options starts afresh). Recordings are segmented in worker processes: one whose
    decoder crashes fails with the reason, and the rest go on.
    """
    opts = options or SegmentOptions()
    vad_path = SileroVad(opts.vad_model).path  # fail early, in this process, on a bad model
    out = Path(out)
    key = {k: v for k, v in asdict(opts).items() if k not in ("workers", "progress")}
    journal = Journal(journal_path(out), {"stage": "segment", **key, "vad_model": str(vad_path)})
    recs = list(read_recordings(recordings))
    entries = journal.open().entries
    done: dict[str, list[Segment]] = {}  # by recording id: what the journal holds of it
    for rec in recs:
        entry = entries.get(rec.id)
        if entry is not None and entry["sha256"] == rec.sha256:
            done[rec.id] = [Segment(**s) for s in entry["segments"]]
    result = SegmentResult(manifest=out, recordings=len(recs))
    todo = [r for r in recs if r.id not in done]
    workers = min(opts.workers or os.cpu_count() or 1, max(1, len(todo)))
    bar = progress_bar("segment", sum(r.duration for r in todo) / 3600, opts.progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(rec, (rec, opts)) for rec in todo]
    try:
        for rec, res in process_map(_segment_worker, jobs, workers):
            if isinstance(res, Crashed):
                res = res.reason
            if isinstance(res, str):
                result.errors.append(ErrorRecord(rec.path, res, "segment", rec.id))
            else:
                done[rec.id] = res
                journal.add(rec.id, {"sha256": rec.sha256, "segments": [asdict(s) for s in res]})
            bar.update(rec.duration / 3600)
    finally:
        bar.close()
        journal.close()

    def ordered() -> Iterator[Segment]:
        for rec in recs:
            for s in done.get(rec.id, []):
                result.segments += 1
                result.reference_segments += s.text_source == "reference"
                result.speech_hours += s.duration / 3600
                yield s

    write_manifest(out, ordered())
    write_manifest(out.with_name(out.name.split(".")[0] + ".errors.jsonl"), result.errors)
    result.audio_hours = sum(r.duration for r in recs) / 3600
    journal.remove()
    return result
