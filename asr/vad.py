"""Voice activity detection: Silero VAD on onnxruntime, and speech regions from its probabilities.

Every stage that needs to know where speech is uses this: `asr segment` (asr.segment), and the
streaming chunk planner of `asr transcribe` and `asr align` (asr.chunks). Audio is streamed
block by block and the model's recurrent state is carried across blocks, so a multi-hour
recording costs the memory of one block plus 4 bytes of speech probability per 32 ms.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asr.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

WINDOW = 512
"""Silero VAD's window at 16 kHz: one speech probability per 32 ms."""
CONTEXT = 64
"""Samples of the previous window the model sees with each window."""
FRAME_S = WINDOW / SAMPLE_RATE


@dataclass
class SegmentOptions:
    """Options of `segment`: each field but `fill`, `max_pause` and `progress` is an
    `asr segment` option (see asr/cliopts.py)."""

    max_duration: float = field(default=30.0, metadata={"help": "longest segment, seconds"})
    min_duration: float = field(
        default=0.5, metadata={"help": "shorter segments are dropped, seconds"}
    )
    threshold: float = field(default=0.5, metadata={"help": "speech probability for speech"})
    neg_threshold: float | None = field(
        default=None, metadata={"help": "below this, speech ends (default: threshold - 0.15)"}
    )
    min_speech: float = field(
        default=0.25, metadata={"help": "shorter speech bursts are ignored, seconds"}
    )
    min_silence: float = field(
        default=0.3,
        metadata={"help": "a pause at least this long separates speech regions, seconds"},
    )
    pad: float = field(default=0.2, metadata={"help": "padding around speech, seconds"})
    vad_model: str | None = field(
        default=None,
        metadata={
            "help": "Silero VAD ONNX file (default: the silero-vad wheel's when installed, else "
            "the copy in faster-whisper)"
        },
    )
    fill: bool = False
    """Fill segments up to max_duration (cut at the last pause that fits) instead of cutting
    at the longest pauses: what transcription wants, where a segment is one model window."""
    max_pause: float | None = None
    """A pause longer than this (s) always ends a segment of the streaming planner
    (`ChunkPlanner`): stretches of non-speech stay out of what the model hears."""
    diarization: str | None = field(
        default=None,
        metadata={
            "metavar": "DIR",
            "help": "RTTM files of `asr diarize`: segments are cut where the speaker changes "
            "and get their speaker (a recording without one fails, saying so)",
        },
    )
    workers: int = field(default=0, metadata={"help": "VAD processes; 0: one per CPU"})
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
