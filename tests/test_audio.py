"""Decoding every format the holdings bring, resampling, and clear errors for bad files."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from asr.audio import AudioError, SpanCutter, load, probe, stream


def _encode(path: Path, codec: str, rate: int, channels: int, seconds: float, video: bool = False):
    """Write a sine (440 Hz left, 880 Hz right when stereo) with PyAV's real encoders."""
    t = np.arange(int(seconds * rate)) / rate
    sig = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 880 * t)])
    sig = sig[:channels].astype(np.float32)
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w") as out:
        if video:
            v = out.add_stream("mpeg4", rate=5)
            v.width = v.height = 64
            v.pix_fmt = "yuv420p"
        a = out.add_stream(codec, rate=rate, layout=layout)
        fmt = a.codec_context.codec.audio_formats[0].name
        resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate)
        step = 1024
        for i in range(0, sig.shape[1], step):
            frame = av.AudioFrame.from_ndarray(sig[:, i : i + step].copy(), "fltp", layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, i, Fraction(1, rate)
            for f in resampler.resample(frame):
                out.mux(a.encode(f))
        if video:
            img = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), "rgb24")
            for k in range(int(seconds * 5)):
                frame = img.reformat(format="yuv420p")
                frame.pts = k
                out.mux(v.encode(frame))
            out.mux(v.encode(None))
        out.mux(a.encode(None))


FORMATS = [
    ("a.wav", "pcm_s16le", 44100, 2, 0.001),
    ("a.flac", "flac", 22050, 1, 0.001),
    ("a.mp3", "libmp3lame", 44100, 2, 0.06),
    ("a.opus", "libopus", 48000, 1, 0.03),
    ("a.m4a", "aac", 24000, 1, 0.06),
    ("a.mkv", "aac", 16000, 1, 0.1),
]


@pytest.mark.parametrize("name,codec,rate,channels,tolerance", FORMATS)
def test_probe_decodes_every_format(tmp_path, name, codec, rate, channels, tolerance):
    path = tmp_path / name
    _encode(path, codec, rate, channels, 3.0, video=name.endswith(".mkv"))
    info = probe(path)
    assert info.sample_rate == rate
    assert info.channels == channels
    assert abs(info.duration - 3.0) <= tolerance, info


def test_stream_resamples_stereo_to_16k_mono_keeping_pitch(tmp_path):
    path = tmp_path / "s.wav"
    _encode(path, "pcm_s16le", 44100, 2, 4.0)
    blocks = list(stream(path, 16000, block_seconds=1.0))
    assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    assert [b.size for b in blocks[:-1]] == [16000] * (len(blocks) - 1)
    audio = np.concatenate(blocks)
    assert abs(audio.size - 64000) <= 32
    spectrum = np.abs(np.fft.rfft(audio[:16000]))
    peaks = sorted(np.argsort(spectrum)[-2:])  # 1 Hz bins: both channels' tones survive the mix
    assert peaks == [440, 880]


def test_video_audio_track(tmp_path):
    path = tmp_path / "v.mp4"
    _encode(path, "aac", 22050, 1, 2.0, video=True)
    with av.open(str(path)) as c:
        assert c.streams.video and c.streams.audio
    assert abs(probe(path).duration - 2.0) < 0.1
    assert abs(load(path).size - 32000) < 1600


def test_bad_files_name_the_file_and_the_reason(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(np.random.default_rng(0).bytes(20000))
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 100)
    for path, reason in [
        (empty, "empty file"),
        (garbage, ""),
        (text, ""),
        (tmp_path / "missing.flac", "file not found"),
    ]:
        with pytest.raises(AudioError) as e:
            probe(path)
        assert str(path) in str(e.value) and reason in e.value.reason and e.value.reason


def test_load_and_span_cutter_agree(tmp_path):
    path = tmp_path / "a.flac"
    _encode(path, "flac", 16000, 1, 5.0)
    spans = [(0.0, 1.0), (0.5, 1.25), (2.0, 4.5), (4.9, 5.0)]
    cutter = SpanCutter(spans)
    got = {}
    for block in [*stream(path, 16000, block_seconds=0.3), None]:
        got.update(cutter.feed(block))
    assert sorted(got) == [0, 1, 2, 3]
    full = load(path)
    for i, (s, e) in enumerate(spans):
        np.testing.assert_array_equal(got[i], full[int(s * 16000) : int(e * 16000)])
        np.testing.assert_array_equal(load(path, start=s, end=e), got[i])
