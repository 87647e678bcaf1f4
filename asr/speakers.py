"""Who said what: speaker turns (from diarization) laid onto a transcript's words and segments.

Diarization says who spoke when; the transcript says what was said when. Each word goes to the
speaker whose turn overlaps it most (the nearest turn when none does, as WhisperX's
`assign_word_speakers` fills gaps), a segment is split wherever the speaker changes (so no
segment straddles a turn), and a stretch where another speaker's turn runs at the same time
is marked as overlapped. Speakers are labelled SPEAKER_00, SPEAKER_01, ... in order of first
appearance, or with names given in that order (a catalogue's `speakers` column).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Protocol

from asr.outputs import Transcript, TranscriptSegment, Word


class TurnLike(Protocol):
    """A diarization turn: a speaker label and a span in seconds."""

    start: float
    end: float
    speaker: str


def label(index: int, names: Sequence[str] | None = None) -> str:
    """The label of the index-th speaker to appear: its name when given, else SPEAKER_NN."""
    if names and index < len(names) and names[index].strip():
        return names[index].strip()
    return f"SPEAKER_{index:02d}"


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


class Turns:
    """Turns sorted by start, indexed so that the turns near a moment are found by bisection:
    looking up every word of an hour's transcript stays linear, not words x turns."""

    def __init__(self, turns: Iterable[TurnLike]):
        self.turns = sorted(turns, key=lambda t: (t.start, t.end, t.speaker))
        self.starts = [t.start for t in self.turns]
        self.longest = max((t.end - t.start for t in self.turns), default=0.0)
        # latest[i]: the turn ending last among turns[: i + 1]
        self.latest: list[TurnLike] = []
        for t in self.turns:
            last = self.latest[-1] if self.latest else None
            self.latest.append(t if last is None or t.end > last.end else last)

    def __bool__(self) -> bool:
        return bool(self.turns)

    def overlapping(self, start: float, end: float) -> list[TurnLike]:
        """The turns that overlap [start, end] (by a positive length)."""
        lo = bisect.bisect_left(self.starts, start - self.longest)
        hi = bisect.bisect_left(self.starts, end)
        return [t for t in self.turns[lo:hi] if _overlap(start, end, t.start, t.end) > 0]

    def nearest(self, moment: float) -> TurnLike:
        """The turn with an edge nearest to moment (ties: the speaker label first); a turn
        holding moment is at distance 0."""
        i = bisect.bisect_right(self.starts, moment)
        candidates = []
        if i > 0:
            candidates.append(self.latest[i - 1])  # started before: the one reaching furthest
        if i < len(self.turns):
            candidates += [t for t in self.turns[i:] if t.start == self.turns[i].start]

        def distance(t: TurnLike) -> float:
            return (
                0.0
                if t.start <= moment <= t.end
                else min(abs(moment - t.start), abs(moment - t.end))
            )

        return min(candidates, key=lambda t: (distance(t), t.speaker))


def speaker_at(turns: Sequence[TurnLike] | Turns, start: float, end: float) -> str | None:
    """The speaker whose turns overlap [start, end] most; else the nearest turn's; None when
    there are no turns."""
    index = turns if isinstance(turns, Turns) else Turns(turns)
    if not index:
        return None
    share: dict[str, float] = {}
    since: dict[str, float] = {}
    for t in index.overlapping(start, end):
        share[t.speaker] = share.get(t.speaker, 0.0) + _overlap(start, end, t.start, t.end)
        since[t.speaker] = min(since.get(t.speaker, t.start), t.start)
    if share:  # a tie goes to the speaker already talking (whose turn began first)
        return max(share, key=lambda s: (round(share[s], 6), -since[s], s))
    return index.nearest((start + end) / 2).speaker


def _overlapped(turns: Turns, speaker: str | None, start: float, end: float) -> bool:
    """Whether another speaker's turn runs during most of [start, end] (overlapped speech)."""
    length = max(end - start, 1e-3)
    return any(
        t.speaker != speaker and _overlap(start, end, t.start, t.end) >= 0.5 * length
        for t in turns.overlapping(start, end)
    )


def assign_speakers(
    transcript: Transcript, turns: Iterable[TurnLike], names: Sequence[str] | None = None
) -> Transcript:
    """A copy of transcript with speakers on every word and segment; segments split at every
    change of speaker; `overlap` set where another speaker talks at the same time."""
    turns = Turns(turns)
    pieces: list[tuple[TranscriptSegment, str | None, list[Word], bool]] = []
    for seg in transcript.segments:
        words = [
            replace(w, speaker=speaker_at(turns, w.start, max(w.end, w.start + 1e-3)))
            for w in seg.words
        ]
        if not words:
            who = speaker_at(turns, seg.start, seg.end)
            pieces.append((seg, who, [], _overlapped(turns, who, seg.start, seg.end)))
            continue
        runs: list[list[Word]] = [[]]
        for w in words:
            if runs[-1] and w.speaker != runs[-1][-1].speaker:
                runs.append([])
            runs[-1].append(w)
        for i, run in enumerate(runs):
            piece = seg
            if len(runs) > 1:  # a turn changes inside: cut at the words where it does
                piece = replace(
                    seg,
                    start=seg.start if i == 0 else run[0].start,
                    end=seg.end if i == len(runs) - 1 else run[-1].end,
                    text="".join(w.word for w in run),
                )
            who = run[0].speaker
            pieces.append((piece, who, run, _overlapped(turns, who, run[0].start, run[-1].end)))

    order: dict[str, str] = {}  # diarization's label -> published label, by first appearance
    for _, who, _, _ in sorted(pieces, key=lambda p: p[0].start):
        if who is not None and who not in order:
            order[who] = label(len(order), names)
    segments = []
    for seg, who, words, overlap in pieces:
        words = [replace(w, speaker=order.get(w.speaker)) for w in words]
        segments.append(
            replace(seg, id=len(segments), speaker=order.get(who), overlap=overlap, words=words)
        )
    return replace(transcript, segments=segments, speakers=list(order.values()))


def cut_at_turns(
    spans: list[tuple[float, float]], turns: Sequence[TurnLike], min_duration: float = 0.5
) -> list[tuple[float, float, str | None]]:
    """Spans cut where the speaker changes, each with its speaker: (start, end, speaker).

    A cut goes at a turn's edge inside the span where the speaker of the second before it
    differs from the speaker of the second after it; a piece shorter than min_duration stays
    with its neighbour, so no piece too short to keep is made."""
    index = Turns(turns)
    edges = sorted({t.start for t in index.turns} | {t.end for t in index.turns})
    out: list[tuple[float, float, str | None]] = []
    for start, end in spans:
        cuts = [start]
        for t in edges[bisect.bisect_left(edges, start) : bisect.bisect_right(edges, end)]:
            if cuts[-1] + min_duration <= t <= end - min_duration:
                before = speaker_at(index, max(cuts[-1], t - 1.0), t)
                after = speaker_at(index, t, min(end, t + 1.0))
                if before != after:
                    cuts.append(t)
        cuts.append(end)
        for a, b in zip(cuts, cuts[1:]):
            out.append((round(a, 3), round(b, 3), speaker_at(index, a, b)))
    return out
