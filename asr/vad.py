"""`asr segment`: voice activity detection (Silero VAD on onnxruntime) and cutting into segments.

Speech regions found by Silero VAD are merged into segments of at most `max_duration` seconds,
cut at the longest pauses, with padding. Audio is streamed block by block and the model's
recurrent state is carried across blocks, so a multi-hour recording costs the memory of one
block plus 4 bytes of speech probability per 32 ms.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from asr.audio import SAMPLE_RATE, AudioError, stream
from asr.manifest import (
    ErrorRecord,
    Recording,
    Segment,
    TranscriptError,
    read_recordings,
    write_manifest,
)
from asr.progress import bar as progress_bar
from asr.stage import Crashed, Journal, journal_path, process_map

log = logging.getLogger(__name__)

WINDOW = 512
"""Silero VAD's window at 16 kHz: one speech probability per 32 ms."""
CONTEXT = 64
"""Samples of the previous window the model sees with each window."""
FRAME_S = WINDOW / SAMPLE_RATE


@dataclass
class SegmentOptions:
    """Options of `segment`; see `asr segment --help` for each one's meaning."""

    max_duration: float = 30.0
    min_duration: float = 0.5
    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech: float = 0.25
    min_silence: float = 0.3
    pad: float = 0.2
    vad_model: str | None = None
    fill: bool = False
    """Fill segments up to max_duration (cut at the last pause that fits) instead of cutting
    at the longest pauses: what transcription wants, where a segment is one model window."""
    max_pause: float | None = None
    """A pause longer than this (s) always ends a segment of the streaming planner
    (`ChunkPlanner`): stretches of non-speech stay out of what the model hears."""
    workers: int = 0
    progress: bool | None = None


def find_vad_model() -> Path:
    """The Silero VAD ONNX model: the silero-vad wheel's, else the copy in faster-whisper's.

    Neither package is imported (silero-vad imports torch); only its files are read.
    """
    for package, name in (
        ("silero_vad", "data/silero_vad_16k_sequence.onnx"),
        ("faster_whisper", "assets/silero_vad_v6.onnx"),
    ):
        spec = importlib.util.find_spec(package)
        for root in (spec.submodule_search_locations or []) if spec else []:
            if (Path(root) / name).is_file():
                return Path(root) / name
    raise FileNotFoundError(
        "no Silero VAD model found: install faster-whisper (pip install faster-whisper) or "
        "silero-vad (pip install --no-deps silero-vad), or pass --vad-model PATH.onnx"
    )


class SileroVad:
    """Silero VAD on onnxruntime, fed a stream of 16 kHz blocks.

    Takes both ONNX exports: the sequence model (inputs input[n, 576], h, c: a whole block per
    call) and the per-window model (inputs input, state, sr: one window per call).
    """

    def __init__(self, path: str | os.PathLike | None = None):
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        self.path = Path(path) if path else find_vad_model()
        self.session = onnxruntime.InferenceSession(
            str(self.path), providers=["CPUExecutionProvider"], sess_options=opts
        )
        self.inputs = {i.name for i in self.session.get_inputs()}
        if not ({"input", "h", "c"} <= self.inputs or {"input", "state", "sr"} <= self.inputs):
            raise ValueError(f"{self.path}: not a Silero VAD model (inputs {sorted(self.inputs)})")

    def probabilities(self, blocks: Iterable[np.ndarray]) -> np.ndarray:
        """Speech probability of each 512-sample window of the concatenated blocks."""
        probs = [p for _, p in self.iter_probabilities(blocks)]
        return np.concatenate(probs) if probs else np.zeros(0, dtype=np.float32)

    def iter_probabilities(
        self, blocks: Iterable[np.ndarray]
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(audio, probabilities) block by block: audio is a whole number of windows (the last
        one zero-padded), with one probability per window; the model's state runs on."""
        carry = np.zeros(0, dtype=np.float32)
        context = np.zeros(CONTEXT, dtype=np.float32)
        state: dict[str, np.ndarray] = {}
        for block in _then_none(blocks):
            if block is None:
                if not carry.size:
                    break
                block, carry = np.pad(carry, (0, WINDOW - carry.size)), np.zeros(0, np.float32)
            else:
                block = np.concatenate([carry, block]) if carry.size else block
                n = block.size // WINDOW * WINDOW
                block, carry = block[:n], block[n:]
                if not n:
                    continue
            windows = block.astype(np.float32, copy=False).reshape(-1, WINDOW)
            ctx = np.concatenate([context[None], windows[:-1, -CONTEXT:]])
            context = windows[-1, -CONTEXT:].copy()
            yield block, self._run(np.concatenate([ctx, windows], axis=1), state)

    def _run(self, x: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
        if "h" in self.inputs:
            h = state.get("h", np.zeros((1, 1, 128), np.float32))
            c = state.get("c", np.zeros((1, 1, 128), np.float32))
            probs, state["h"], state["c"] = self.session.run(None, {"input": x, "h": h, "c": c})
            return np.asarray(probs, dtype=np.float32).reshape(-1)
        sr = np.array(SAMPLE_RATE, dtype=np.int64)
        res = np.empty(len(x), dtype=np.float32)
        for i, row in enumerate(x):
            st = state.get("state", np.zeros((2, 1, 128), np.float32))
            p, state["state"] = self.session.run(None, {"input": row[None], "state": st, "sr": sr})
            res[i] = float(np.asarray(p).reshape(-1)[0])
        return res


def _then_none(blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray | None]:
    yield from blocks
    yield None


def speech_regions(probs: np.ndarray, opts: SegmentOptions) -> list[tuple[int, int]]:
    """Speech as [first, last) window index ranges, with hysteresis between two thresholds.

    Speech starts at a window at or above `threshold` and ends where probability stays below
    `neg_threshold` for `min_silence` seconds; regions shorter than `min_speech` are dropped.
    """
    neg = opts.neg_threshold if opts.neg_threshold is not None else max(opts.threshold - 0.15, 0.01)
    min_silence = max(1, round(opts.min_silence / FRAME_S))
    min_speech = round(opts.min_speech / FRAME_S)
    regions: list[tuple[int, int]] = []
    start, silent_since = None, None
    for i, p in enumerate(probs):
        if start is None:
            if p >= opts.threshold:
                start, silent_since = i, None
        elif p < neg:
            if silent_since is None:
                silent_since = i
            elif i - silent_since + 1 >= min_silence:
                regions.append((start, silent_since))
                start, silent_since = None, None
        elif p >= opts.threshold:
            silent_since = None
    if start is not None:
        regions.append((start, silent_since if silent_since is not None else len(probs)))
    return [(s, e) for s, e in regions if e - s >= min_speech]


def plan_segments(
    regions: list[tuple[int, int]], probs: np.ndarray, duration: float, opts: SegmentOptions
) -> list[tuple[float, float]]:
    """Merge speech regions into padded segments of at most max_duration seconds.

    A group of regions too long for one segment is split at its longest pause, recursively, so
    cuts fall where the speaker paused longest; a single region too long is split at its least
    speech-like window.
    """
    limit = max(1, int((opts.max_duration - 2 * opts.pad) / FRAME_S))
    groups: list[tuple[int, int]] = []

    def split(rs: list[tuple[int, int]]) -> None:
        if rs[-1][1] - rs[0][0] <= limit:
            groups.append((rs[0][0], rs[-1][1]))
        elif len(rs) == 1:
            s, e = rs[0]
            # cut at the lowest probability away from the edges (at least 1/4 of the limit in)
            margin = max(1, min(limit // 4, (e - s) // 4))
            cut = s + margin + int(np.argmin(probs[s + margin : e - margin]))
            split([(s, cut)])
            split([(cut, e)])
        else:
            gaps = [rs[i + 1][0] - rs[i][1] for i in range(len(rs) - 1)]
            k = int(np.argmax(gaps)) + 1
            split(rs[:k])
            split(rs[k:])

    if regions and opts.fill:
        # fill each segment as far as the limit allows, cutting at the last pause that fits
        group = [regions[0]]
        for r in regions[1:]:
            if r[1] - group[0][0] <= limit:
                group.append(r)
            else:
                split(group)
                group = [r]
        split(group)
    elif regions:
        split(regions)
    segments = []
    for i, (s, e) in enumerate(groups):
        lo = s * FRAME_S - opts.pad
        hi = e * FRAME_S + opts.pad
        if i > 0:  # never overlap the neighbour: meet it halfway across the pause
            lo = max(lo, (groups[i - 1][1] + s) / 2 * FRAME_S)
        if i + 1 < len(groups):
            hi = min(hi, (e + groups[i + 1][0]) / 2 * FRAME_S)
        lo, hi = max(0.0, lo), min(duration, hi)
        if hi - lo >= opts.min_duration:
            segments.append((round(lo, 3), round(hi, 3)))
    return segments


class Chunk(tuple):
    """A speech chunk: (start s, end s, audio), and `lead`/`tail`: the seconds of padding
    before its first and after its last speech frame (what VAD did not call speech)."""

    def __new__(cls, start: float, end: float, audio: np.ndarray, lead: float, tail: float):
        chunk = tuple.__new__(cls, (start, end, audio))
        chunk.lead, chunk.tail = lead, tail
        return chunk


class ChunkPlanner:
    """Speech chunks of a stream, planned in one pass: linear time, bounded memory.

    Speech regions are found with the same hysteresis as `speech_regions` and grouped, in order,
    into chunks of at most `max_duration` seconds: a group closes at the last pause that keeps
    it within the limit, or at any pause longer than `max_pause` (so a long stretch of
    non-speech is never inside a chunk). A region longer than the limit is cut at its least
    speech-like window, as `plan_segments` cuts it. Chunks are disjoint and every speech frame
    lies in exactly one; only the audio of the group being planned is held.
    """

    def __init__(self, opts: SegmentOptions):
        self.opts = opts
        self.neg = (
            opts.neg_threshold
            if opts.neg_threshold is not None
            else max(opts.threshold - 0.15, 0.01)
        )
        self.min_silence = max(1, round(opts.min_silence / FRAME_S))
        self.min_speech = round(opts.min_speech / FRAME_S)
        self.limit = max(2, int((opts.max_duration - 2 * opts.pad) / FRAME_S))
        self.max_pause = None if opts.max_pause is None else round(opts.max_pause / FRAME_S)
        self.pad = int(round(opts.pad * SAMPLE_RATE))
        self.frame = 0  # frames seen
        self.start: int | None = None  # the open region's first frame
        self.silent_since: int | None = None
        self.cut_at: int | None = None  # the open region continues a region cut at this frame
        self.group: list[tuple[int, int, bool, bool]] = []  # (start, end, cut before, cut after)
        self.last_hi = 0  # end of the last chunk, in samples
        self.audio = np.zeros(0, np.float32)  # samples from buf_start on
        self.probs = np.zeros(0, np.float32)  # one per frame from buf_start // WINDOW on
        self.buf_start = 0

    def feed(self, block: np.ndarray, probs: np.ndarray) -> Iterator[Chunk]:
        """Add a block (a whole number of windows) and its probabilities; yield finished chunks."""
        self.audio = np.concatenate([self.audio, block]) if self.audio.size else block
        self.probs = np.concatenate([self.probs, probs]) if self.probs.size else probs
        thr, neg = self.opts.threshold, self.neg
        for p in probs.tolist():
            i = self.frame
            self.frame += 1
            if self.start is None:
                if p >= thr:
                    self.start, self.silent_since = i, None
                    yield from self._close_group_before(i)
            elif p < neg:
                if self.silent_since is None:
                    self.silent_since = i
                elif i - self.silent_since + 1 >= self.min_silence:
                    yield from self._region(self.start, self.silent_since)
            elif p >= thr:
                self.silent_since = None
            if self.start is not None and self.frame - self.start > self.limit:
                yield from self._cut_open_region()
            elif self.group and self.start is None and self._group_is_closed(self.frame):
                yield from self._emit(self.frame)
        self._trim()

    def finish(self) -> Iterator[Chunk]:
        """The end of the stream: the open region and the last group."""
        if self.start is not None:
            end = self.silent_since if self.silent_since is not None else self.frame
            yield from self._region(self.start, end)
        if self.group:
            yield from self._emit()

    # -- internals ---------------------------------------------------------------------------

    def _group_is_closed(self, frame: int) -> bool:
        """Whether no region starting at `frame` could join the group."""
        pause = frame - self.group[-1][1]
        too_long = frame - self.group[0][0] >= self.limit
        return too_long or (self.max_pause is not None and pause > self.max_pause)

    def _close_group_before(self, frame: int) -> Iterator[Chunk]:
        if self.group and self._group_is_closed(frame):
            yield from self._emit(frame)

    def _region(self, s: int, e: int) -> Iterator[Chunk]:
        """A finished region [s, e) frames: joins the group, or closes it and starts the next."""
        continued = self.cut_at is not None
        self.start = self.silent_since = self.cut_at = None
        if e - s < self.min_speech and not continued:
            return
        if self.group and e - self.group[0][0] > self.limit:
            yield from self._emit(s)
        self.group.append((s, e, continued, False))

    def _cut_open_region(self) -> Iterator[Chunk]:
        """The open region outgrew the limit: close the group before it, then cut it at its
        least speech-like window (at least a quarter of the limit in) and emit the first part."""
        s = self.start
        if self.group:
            yield from self._emit(s)
        margin = max(1, self.limit // 4)
        lo = s + margin - self.buf_start // WINDOW
        hi = s + self.limit - self.buf_start // WINDOW
        cut = s + margin + int(np.argmin(self.probs[lo:hi]))
        self.group.append((s, cut, self.cut_at is not None, True))
        yield from self._emit(cut)
        self.start, self.cut_at = cut, cut
        if self.silent_since is not None and self.silent_since < cut:
            self.silent_since = cut

    def _emit(self, next_start: int | None = None) -> Iterator[Chunk]:
        """The group as one chunk: padded (not at a cut inside speech), never overlapping the
        chunk before it, nor reaching the next speech (`next_start`) or past the stream."""
        s, _, cut_before, _ = self.group[0]
        _, e, _, cut_after = self.group[-1]
        self.group = []
        lo = s * WINDOW - (0 if cut_before else self.pad)
        hi = e * WINDOW + (0 if cut_after else self.pad)
        lo = max(lo, self.last_hi, 0)
        hi = min(hi, self.buf_start + self.audio.size)
        if next_start is not None:
            hi = min(hi, next_start * WINDOW)
        self.last_hi = hi
        if hi - lo >= self.opts.min_duration * SAMPLE_RATE:
            audio = self.audio[lo - self.buf_start : hi - self.buf_start].copy()
            lead = max(0, s * WINDOW - lo) / SAMPLE_RATE
            tail = max(0, hi - e * WINDOW) / SAMPLE_RATE
            yield Chunk(lo / SAMPLE_RATE, hi / SAMPLE_RATE, audio, lead, tail)

    def _trim(self) -> None:
        """Drop the audio no chunk can need any more (before the group, open region or pad)."""
        firsts = [self.frame]
        if self.group:
            firsts.append(self.group[0][0])
        if self.start is not None:
            firsts.append(self.start)
        keep = max(min(firsts) * WINDOW - self.pad, self.last_hi, self.buf_start)
        keep = keep // WINDOW * WINDOW
        drop = keep - self.buf_start
        if drop > 0:
            self.audio = self.audio[drop:]
            self.probs = self.probs[drop // WINDOW :]
            self.buf_start = keep


def stream_chunks(
    blocks: Iterable[np.ndarray], vad: SileroVad, opts: SegmentOptions
) -> Iterator[Chunk]:
    """Speech chunks (start s, end s, audio) of a stream of 16 kHz blocks: see ChunkPlanner."""
    planner = ChunkPlanner(opts)
    for block, probs in vad.iter_probabilities(blocks):
        yield from planner.feed(block, probs)
    yield from planner.finish()


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
    text = rec.reference_text()
    if text is not None and rec.duration <= opts.max_duration:
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
    segments = []
    for start, end in spans:
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
    except TranscriptError as e:
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
