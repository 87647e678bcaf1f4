"""Decoding audio (and the audio track of video) with FFmpeg through PyAV.

One decoder for every format the holdings bring (wav, flac, mp3, ogg/opus, m4a/aac, mp4, mkv,
...), any rate and channel count. Audio is streamed in blocks so that memory does not grow with a
recording's length; resampling to the models' 16 kHz mono happens in the same pass.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import av
import av.logging
import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
"""The rate every model and shard in this project works at."""

AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .mp3 .ogg .oga .opus .m4a .aac .wma .aif .aiff .au .mka .amr".split()
)
VIDEO_EXTENSIONS = frozenset(".mp4 .m4v .mkv .webm .mov .avi .mpg .mpeg .ts .wmv .flv".split())
MEDIA_EXTENSIONS = AUDIO_EXTENSIONS | VIDEO_EXTENSIONS


class AudioError(RuntimeError):
    """A file that cannot be decoded as audio; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


@dataclass
class AudioInfo:
    """What a full decode of a file tells: its true duration and native format."""

    duration: float
    sample_rate: int
    channels: int
    format: str
    codec: str
    declared_duration: float | None = None
    """Seconds the file's header claims (None when it claims none, or FFmpeg only estimated it
    from the bitrate); more than `duration` when the file is cut short."""
    warnings: list[str] = field(default_factory=list)
    """What went wrong while decoding: skipped packets, audio missing against the header's
    claim, FFmpeg's own warnings. Empty for a sound file."""


MAX_WARNINGS = 10
"""At most this many distinct FFmpeg messages are kept per file."""
SHORTFALL = (0.5, 0.01)
"""Decoded audio this much shorter than declared (seconds, or share of it) is reported."""
_ESTIMATED = "Estimating duration from bitrate"
"""FFmpeg's note that a duration is a guess (mp3 without a header, wav with a wrong size)."""


def _open(path: str | os.PathLike) -> tuple[av.container.InputContainer, av.audio.AudioStream]:
    path = str(path)
    if os.path.islink(path) and not os.path.exists(path):
        raise AudioError(path, f"broken symbolic link (to {os.readlink(path)})")
    if not os.path.exists(path):
        raise AudioError(path, "file not found")
    if os.path.isdir(path):
        raise AudioError(path, "a folder, not a media file")
    if os.path.getsize(path) == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        container = av.open(path, metadata_errors="ignore")
    except av.FFmpegError as e:
        raise AudioError(path, f"not a readable media file ({_reason(e)})") from None
    except OSError as e:
        raise AudioError(path, f"cannot read file ({e.strerror or e})") from None
    if not container.streams.audio:
        container.close()
        raise AudioError(path, "no audio stream")
    stream = container.streams.audio[0]
    stream.thread_type = "AUTO"
    return container, stream


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def _frames(
    path: str | os.PathLike,
    container: av.container.InputContainer,
    stream: av.audio.AudioStream,
    problems: list[str] | None = None,
) -> Iterator[av.AudioFrame]:
    """Decoded frames, skipping packets the decoder rejects (as ffmpeg does) but counting them
    (and, given a problems list, saying how many there were and why in it)."""
    errors = 0
    decoded = 0
    first = ""
    try:
        for packet in container.demux(stream):
            try:
                for frame in packet.decode():
                    decoded += frame.samples
                    yield frame
            except av.FFmpegError as e:
                errors += 1
                if errors == 1:
                    first = _reason(e)
                    log.debug("%s: skipping undecodable packet (%s)", path, first)
    except av.FFmpegError as e:
        raise AudioError(path, f"demuxing failed ({_reason(e)})") from None
    if decoded == 0:
        raise AudioError(path, "no audio samples could be decoded" + _errs(errors))
    if errors and problems is not None:  # the caller reports them
        problems.append(f"{errors} undecodable packet(s) skipped (first: {first})")
    elif errors:
        log.warning("%s: %d undecodable packet(s) skipped", path, errors)


def _errs(errors: int) -> str:
    return f" ({errors} corrupt packets)" if errors else ""


def probe(path: str | os.PathLike) -> AudioInfo:
    """Decode the whole file to learn its true duration; raise AudioError if it is not audio.

    What the decode ran into is in the result's `warnings`: skipped packets, FFmpeg's warnings
    and errors, and audio missing against what the header declares (a file cut short: the first
    half of an mp3 decodes without an error, but its header still claims the whole)."""
    problems: list[str] = []
    with _ffmpeg_messages() as messages:
        container, stream = _open(path)
        with container:
            # one decoding thread: FFmpeg's threads would log into Python from outside it
            stream.thread_type = "NONE"
            samples = 0
            rate = stream.codec_context.sample_rate or stream.sample_rate
            cc = stream.codec_context
            channels = cc.channels if hasattr(cc, "channels") else 0
            for frame in _frames(path, container, stream, problems):
                samples += frame.samples
                rate = frame.sample_rate or rate
                channels = frame.layout.nb_channels or channels
            declared = _declared_duration(container, stream)
            fmt, codec = container.format.name, stream.codec_context.name
    duration = samples / rate
    if any(_ESTIMATED in m for m in messages):
        declared = None  # a guess from the bitrate, not the file's claim
    if declared is not None and declared - duration > max(SHORTFALL[0], SHORTFALL[1] * declared):
        problems.insert(
            0,
            f"only {duration:.2f} s of the {declared:.2f} s the file declares could be decoded "
            f"({duration / declared:.0%}): the file is probably truncated",
        )
    problems.extend(m for m in messages if _ESTIMATED not in m)
    return AudioInfo(
        duration=duration,
        sample_rate=int(rate),
        channels=int(channels),
        format=fmt,
        codec=codec,
        declared_duration=None if declared is None else round(declared, 6),
        warnings=problems,
    )


def _declared_duration(
    container: av.container.InputContainer, stream: av.audio.AudioStream
) -> float | None:
    """Seconds of audio the stream's (or else the container's) header declares, if any."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and container.duration > 0:
        return container.duration / av.time_base
    return None


@contextlib.contextmanager
def _ffmpeg_messages() -> Iterator[list[str]]:
    """Collect FFmpeg's warnings and errors logged in the block, as distinct 'who: message'
    lines (at most MAX_WARNINGS, the last telling how many more), instead of losing them.

    FFmpeg logs through one global hook: the block captures what every thread logs meanwhile,
    so use it where one file is decoded at a time (as ingest's worker processes do)."""
    level, skip = av.logging.get_level(), av.logging.get_skip_repeated()
    av.logging.set_level(av.logging.WARNING if level is None else max(level, av.logging.WARNING))
    av.logging.set_skip_repeated(False)
    messages: list[str] = []
    try:
        with av.logging.Capture(local=False) as logs:
            yield messages
    finally:
        av.logging.set_skip_repeated(skip)
        av.logging.set_level(level)
        seen: dict[str, int] = {}
        for lib_level, name, message in logs:
            if lib_level > av.logging.WARNING:
                continue
            text = f"{name}: {message.strip()}" if name else message.strip()
            seen[text] = seen.get(text, 0) + 1
        for text, n in seen.items():
            messages.append(text if n == 1 else f"{text} ({n} times)")
        if len(messages) > MAX_WARNINGS:
            more = len(messages) - MAX_WARNINGS + 1
            messages[MAX_WARNINGS - 1 :] = [f"... and {more} other FFmpeg messages"]


def stream(
    path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, block_seconds: float = 30.0
) -> Iterator[np.ndarray]:
    """Yield the file's audio as float32 mono blocks of about block_seconds at sample_rate."""
    block = max(1, int(block_seconds * sample_rate))
    container, astream = _open(path)
    with container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        pending: list[np.ndarray] = []
        n_pending = 0
        frames = _frames(path, container, astream)
        for frame in _chain_none(frames):
            try:
                out = resampler.resample(frame)
            except (av.FFmpegError, ValueError) as e:
                raise AudioError(path, f"resampling failed ({_reason(e)})") from None
            for f in out:
                a = f.to_ndarray().reshape(-1)
                pending.append(a)
                n_pending += a.size
            while n_pending >= block:
                data = np.concatenate(pending)
                yield data[:block]
                rest = data[block:]
                pending, n_pending = ([rest] if rest.size else []), rest.size
        if n_pending:
            yield np.concatenate(pending)


def _chain_none(frames: Iterator[av.AudioFrame]) -> Iterator[av.AudioFrame | None]:
    """The frames, then None, which tells the resampler to flush."""
    yield from frames
    yield None


def load(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    start: float = 0.0,
    end: float | None = None,
) -> np.ndarray:
    """Decode [start, end) seconds of a file as float32 mono at sample_rate.

    Streams from the beginning (exact sample positions whatever the container's seeking
    precision), so prefer `stream` and cut as you go when reading many spans of one file.
    """
    first = int(round(start * sample_rate))
    last = None if end is None else int(round(end * sample_rate))
    parts, pos = [], 0
    for block in stream(path, sample_rate):
        lo, hi = pos, pos + block.size
        pos = hi
        if hi <= first:
            continue
        parts.append(block[max(0, first - lo) : (None if last is None else max(0, last - lo))])
        if last is not None and hi >= last:
            break
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def cut_spans(
    path: str | os.PathLike, spans: list[tuple[float, float]]
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode a recording once; yield (index, audio) of each [start, end) span (seconds, sorted
    by start) as the stream passes it: memory holds the longest span, not the recording."""
    cutter = SpanCutter(spans)
    for block in stream(path, SAMPLE_RATE, block_seconds=30.0):
        yield from cutter.feed(block)
    yield from cutter.feed(None)


class SpanCutter:
    """Cut [start, end) spans, sorted by start, out of a stream of blocks in one pass.

    Holds only the audio between the earliest open span and the stream's position, so memory is
    bounded by the longest span, not by the recording.
    """

    def __init__(self, spans: list[tuple[float, float]], sample_rate: int = SAMPLE_RATE):
        self.sr = sample_rate
        self.spans = [(int(round(s * sample_rate)), int(round(e * sample_rate))) for s, e in spans]
        self.next = 0  # index of the first span not yet emitted
        self.buf = np.zeros(0, dtype=np.float32)
        self.buf_start = 0  # sample position of buf[0]

    def feed(self, block: np.ndarray | None) -> Iterator[tuple[int, np.ndarray]]:
        """Add a block (None at the end of the stream); yield (span index, audio) as they end."""
        if block is not None:
            self.buf = np.concatenate([self.buf, block]) if self.buf.size else block
        buf_end = self.buf_start + self.buf.size
        while self.next < len(self.spans):
            s, e = self.spans[self.next]
            if e > buf_end and block is not None:
                break
            yield (
                self.next,
                self.buf[max(0, s - self.buf_start) : max(0, e - self.buf_start)].copy(),
            )
            self.next += 1
        keep_from = self.spans[self.next][0] if self.next < len(self.spans) else buf_end
        drop = min(max(0, keep_from - self.buf_start), self.buf.size)
        if drop:
            self.buf = self.buf[drop:]
            self.buf_start += drop
