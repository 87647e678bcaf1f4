"""Where speech is cut into chunks a model hears: whole-recording and streaming planners.

`plan_segments` plans a recording's segments from all its speech probabilities at once (`asr
segment`); `ChunkPlanner` plans a stream in one pass with bounded memory (`asr transcribe`,
`asr align`). Both cut at pauses and keep chunks within `max_duration` seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from asr.audio import SAMPLE_RATE
from asr.vad import FRAME_S, WINDOW, SegmentOptions, SileroVad


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
    speech-like window in the second half of the limit. Chunks are disjoint and every speech frame
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
        least speech-like window in the second half of the limit and emit the first part.

        The second half, not from a quarter in: a chunk cut out of long speech is a window of
        its own, and one of 7-14 s costs a 30 s context half empty. Under a music bed, where
        VAD hears no pause for 85 s, the first cut fell at 15.3 s, mid-sentence; from half the
        limit on, tiny.en's WER there is 6.0 instead of 6.1% (benchmarks/hard_audio.py), the
        other sets unchanged."""
        s = self.start
        if self.group:
            yield from self._emit(s)
        margin = max(1, self.limit // 2)
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
