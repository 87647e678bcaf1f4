"""The recording a transcript page plays: the file itself when a browser plays it, else a copy
transcoded once (FFmpeg through PyAV) to Opus in Ogg, kept under OUT_DIR/.workbench/media."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path

from asr.manifest import current_umask

log = logging.getLogger(__name__)

PLAYABLE_AUDIO = {".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".weba"}
"""Containers every current browser plays (Chromium, Firefox, Safari) without licensed codecs."""
PLAYABLE_VIDEO = {".webm", ".mp4"}
"""Shown in a <video> element: WebM (VP8/VP9/AV1, Opus/Vorbis) and MP4, which browsers play when
its codecs are ones they have (H.264/AAC in Chrome, Safari, Edge; Debian's Chromium may not)."""
MIME = {
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".weba": "audio/webm",
    ".webm": "video/webm",
    ".mp4": "video/mp4",
}
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class MediaError(Exception):
    """The recording cannot be played or transcoded (missing, unreadable, no audio)."""


def kind(path: str | Path) -> str:
    """'video' for a file shown in a <video> element, else 'audio'."""
    return "video" if Path(path).suffix.lower() in PLAYABLE_VIDEO else "audio"


def playable(path: str | Path, cache: Path) -> tuple[Path, str]:
    """The file to send for `path` and its MIME type: the recording itself, or its transcoded
    copy (made now if missing; one transcoding per recording at a time)."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: the recording is not there (moved or deleted?)")
    ext = path.suffix.lower()
    if ext in PLAYABLE_AUDIO or ext in PLAYABLE_VIDEO:
        return path, MIME[ext]
    st = path.stat()
    tag = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    out = cache / f"{tag[:32]}.ogg"
    with _locks_guard:
        lock = _locks.setdefault(tag, threading.Lock())
    with lock:
        if not out.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            transcode(path, out)
    return out, "audio/ogg"


def transcode(src: Path, dst: Path, bitrate: int = 64000) -> None:
    """src's first audio stream as Opus in Ogg (48 kHz, its channels up to stereo), written to
    a temporary name and renamed."""
    import av

    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        with av.open(str(src)) as inp, av.open(tmp, "w", format="ogg") as out:
            if not inp.streams.audio:
                raise MediaError(f"{src}: no audio stream to play")
            a = inp.streams.audio[0]
            layout = "stereo" if (a.codec_context.channels or 1) > 1 else "mono"
            stream = out.add_stream("libopus", rate=48000, layout=layout)
            stream.bit_rate = bitrate
            resampler = av.AudioResampler(format="s16", layout=layout, rate=48000)
            for frame in inp.decode(a):
                for f in resampler.resample(frame):
                    out.mux(stream.encode(f))
            for f in resampler.resample(None):
                out.mux(stream.encode(f))
            out.mux(stream.encode(None))
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, dst)
        log.info("transcoded %s for the browser -> %s", src, dst)
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MediaError(f"{src}: cannot transcode it for the browser: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
