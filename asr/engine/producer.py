"""The producers of `asr transcribe`: decode, resample, VAD and cut, in worker threads.

FFmpeg and onnxruntime release the GIL, so threads decode in parallel with the model without
the start-up and copying of processes. Each streams a recording's speech chunks (at most 30 s)
through a bounded queue, so memory does not grow with a recording's length.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator

import numpy as np

from asr.audio import SAMPLE_RATE, AudioError, stream
from asr.chunks import stream_chunks
from asr.vad import SegmentOptions, SileroVad


def _counted(blocks: Iterator[np.ndarray], samples: list[int]) -> Iterator[np.ndarray]:
    """The blocks, adding up their samples in samples[0] (the recording's exact length)."""
    for block in blocks:
        samples[0] += block.size
        yield block


class _Stopped(Exception):
    """The consumer has gone: a producer stops where it is."""


def producer(
    tasks: queue.Queue, out_q: queue.Queue, vad_opts: SegmentOptions, stop: threading.Event
) -> None:
    """Take (key, path) tasks; stream ('start'|'chunk'|'end'|'fail', ...) messages out."""

    class _Out:
        @staticmethod
        def put(msg: tuple) -> None:
            while True:
                if stop.is_set():
                    raise _Stopped
                try:
                    out_q.put(msg, timeout=0.2)
                    return
                except queue.Full:
                    continue

    out = _Out()
    vad = SileroVad(vad_opts.vad_model)
    while True:
        task = tasks.get()
        if task is None or stop.is_set():
            with contextlib.suppress(_Stopped):
                out.put(("exit",))
            return
        key, path = task
        try:
            samples = [0]
            out.put(("start", key))
            n_chunks = 0
            for chunk in stream_chunks(_counted(stream(path), samples), vad, vad_opts):
                start, _, audio = chunk
                out.put(("chunk", key, n_chunks, start, audio, chunk.lead))
                n_chunks += 1
            out.put(("end", key, n_chunks, samples[0] / SAMPLE_RATE))
        except _Stopped:
            return
        except AudioError as e:
            out.put(("fail", key, e.reason))
        except Exception as e:  # one bad file never stops the batch
            out.put(("fail", key, f"{type(e).__name__}: {e}"))
