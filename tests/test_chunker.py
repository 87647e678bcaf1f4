"""Properties of the streaming chunk planner that `asr transcribe` and `asr align` hear through.

Fed speech probabilities of known shape (the planner's input besides the audio), so that every
property is checked against the exact speech frames `speech_regions` finds in the whole stream.
"""

from __future__ import annotations

import numpy as np
import pytest

from asr.audio import SAMPLE_RATE
from asr.chunks import ChunkPlanner
from asr.vad import FRAME_S, WINDOW, SegmentOptions, speech_regions

OPTS = SegmentOptions(max_duration=29.0, min_duration=0.0, max_pause=1.0, fill=True)


def _probabilities(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds / FRAME_S)
    if kind == "constant":
        return np.full(n, 0.9, np.float32)
    if kind == "alternating":  # 2 s of speech, 1 s of silence
        t = np.arange(n) * FRAME_S
        return np.where(t % 3.0 < 2.0, 0.9, 0.05).astype(np.float32)
    if kind == "pauses":  # speech of 0.2-12 s, pauses of 0.1-20 s
        out, speech = [], True
        while sum(map(len, out)) < n:
            d = rng.uniform(0.2, 12.0) if speech else rng.choice([rng.uniform(0.1, 1.5), 20.0])
            out.append(np.full(int(d / FRAME_S) + 1, 0.9 if speech else 0.02, np.float32))
            speech = not speech
        return np.concatenate(out)[:n]
    return rng.random(n).astype(np.float32)  # random


def _plan(probs: np.ndarray, rng: np.random.Generator, size: int | None = None):
    """Chunks of a stream whose sample k holds the value k (so cut audio shows where it came
    from), fed in blocks of random size (or `size` windows); and the largest buffer held."""
    audio = np.arange(probs.size * WINDOW, dtype=np.float64)  # float32 is exact to 2**24 only
    planner = ChunkPlanner(OPTS)
    chunks, held, i = [], 0, 0
    while i < probs.size:
        n = size or int(rng.integers(1, 2000))
        block = audio[i * WINDOW : (i + n) * WINDOW]
        chunks += planner.feed(block, probs[i : i + n])
        held = max(held, planner.audio.size)
        i += n
    chunks += planner.finish()
    return chunks, held


@pytest.mark.parametrize("kind", ["constant", "alternating", "pauses", "random"])
def test_chunks_are_disjoint_and_hold_every_speech_frame_once(kind):
    rng = np.random.default_rng(7)
    probs = _probabilities(kind, 600.0, rng)
    chunks, held = _plan(probs, rng)
    starts = [s for s, _, _ in chunks]
    assert starts == sorted(starts)
    for (_, e1, _), (s2, _, _) in zip(chunks, chunks[1:]):
        assert e1 <= s2 + 1e-9, "chunks overlap"
    for s, e, a in chunks:
        assert e - s <= OPTS.max_duration + 1e-6
        assert a.size == round((e - s) * SAMPLE_RATE)
        assert a[0] == round(s * SAMPLE_RATE), "the audio is not the chunk's own"
    bounds = np.array([(s, e) for s, e, _ in chunks])
    speech = [f for r in speech_regions(probs, OPTS) for f in range(*r)]
    assert speech, "the test stream has speech"
    mids = (np.array(speech) + 0.5) * FRAME_S
    holders = ((mids[:, None] >= bounds[:, 0]) & (mids[:, None] < bounds[:, 1])).sum(axis=1)
    assert (holders == 1).all(), f"{(holders != 1).sum()} speech frames not in exactly one chunk"
    # no stretch without speech longer than max_pause inside a chunk
    regions = speech_regions(probs, OPTS)
    for (_, e), (s, _) in zip(regions, regions[1:]):
        if (s - e) * FRAME_S > OPTS.max_pause:
            assert not ((bounds[:, 0] <= e * FRAME_S) & (bounds[:, 1] >= s * FRAME_S)).any()
    # one pass: no audio emitted twice, and the buffer does not grow with the stream
    assert sum(e - s for s, e, _ in chunks) <= probs.size * FRAME_S + 1e-6
    assert held <= (OPTS.max_duration + 2 * 2000 * FRAME_S) * SAMPLE_RATE


def test_the_planner_holds_the_same_audio_for_a_long_stream():
    """Memory and work do not grow with length: 40 min of steady speech hold what 5 min hold
    (within a second: where the cuts fall against the blocks differs)."""
    rng = np.random.default_rng(1)
    held = [_plan(_probabilities("constant", m * 60, rng), rng, 1000)[1] for m in (5, 40)]
    assert held[1] <= held[0] + SAMPLE_RATE


def test_long_speech_is_cut_in_the_second_half_of_the_limit():
    """One region of 60 s (VAD hears no pause, as under a music bed) with two dips that stay
    speech: a deeper one 10 s in and a shallower one 20 s in. The cut takes the one in the
    second half of the 28 s limit, so the first chunk fills most of its window."""
    probs = np.full(int(60 / FRAME_S), 0.9, np.float32)
    for at, p in ((10.0, 0.55), (20.0, 0.6)):
        probs[int(at / FRAME_S)] = p
    chunks, _ = _plan(probs, np.random.default_rng(0), 500)
    assert abs(chunks[0][1] - 20.0) < 2 * FRAME_S, [(s, e) for s, e, _ in chunks]
    assert sum(e - s for s, e, _ in chunks) == pytest.approx(60.0, abs=0.1)


class _CountingNumpy:
    """numpy as asr.chunks sees it, adding up the elements its array scans and copies touch."""

    def __init__(self):
        self.touched = 0

    def __getattr__(self, name):
        return getattr(np, name)

    def argmin(self, a, *args, **kw):
        self.touched += a.size
        return np.argmin(a, *args, **kw)

    def concatenate(self, arrays, *args, **kw):
        self.touched += sum(x.size for x in arrays)
        return np.concatenate(arrays, *args, **kw)


@pytest.mark.parametrize("kind", ["constant", "pauses"])
def test_the_planners_work_is_linear_in_the_stream_length(kind, monkeypatch):
    """Counted, not timed: the elements scanned and copied per frame are the same for 40 min as
    for 5 min (a quadratic planner, as the first one was, touches 8x more per frame)."""
    from asr import chunks

    per_frame = []
    for minutes in (5, 40):
        counter = _CountingNumpy()
        monkeypatch.setattr(chunks, "np", counter)
        rng = np.random.default_rng(2)
        probs = _probabilities(kind, minutes * 60, rng)
        _plan(probs, rng, 1000)
        per_frame.append(counter.touched / probs.size)
    assert per_frame[0] > 0 and per_frame[1] <= 1.1 * per_frame[0], per_frame


def test_continuous_speech_is_cut_below_the_limit_without_loss():
    rng = np.random.default_rng(3)
    probs = _probabilities("constant", 300.0, rng)
    chunks, _ = _plan(probs, rng)
    total = sum(e - s for s, e, _ in chunks)
    assert abs(total - 300.0) < 0.5, total
    assert len(chunks) >= 300 / OPTS.max_duration
