"""Hard audio: `asr transcribe` against faster-whisper on real speech made hard (issue 10).

Sets, built under --work from ../shared/data/realspeech and ../shared/data/diarization (cached):
  continuous        LJSpeech LJ001-0001..0032 joined without gaps (3.7 min), the other English
                    utterances looped 12 dB below underneath (not in the reference);
  continuous-music  the same speech over a music bed made with sox (chords, drums), -15 dB;
  pauses            20 LJSpeech utterances between 5-30 s stretches of digital silence, pink
                    noise, steady tones and clapping (seeded), true onsets known;
  multilingual      the non-English utterances (--per-language per language) and some English,
                    with the catalogue's languages and detected, base and the default
                    (asr without --model);
  longform          the LibriVox recordings (en, de, es; base, catalogue languages);
  ami, call         AMI meeting excerpts (words where the RTTM says nobody speaks, RTFx) and
                    the telephone call scored against the words of sample.stm.
Systems: asr (the Python API), fw-batched (BatchedInferencePipeline, batch 8), fw-sequential
(WhisperModel.transcribe); same model folder, int8 on the CPU, beam 5, word timestamps.
Figures: WER/CER after the project's normalisers with 95% bootstrap intervals, the paired
bootstrap of asr's WER minus the better peer's, sentences (and 8-grams) written twice, words
inside non-speech stretches over 2 s, word-start error, language identification, RTFx.

    python benchmarks/hard_audio.py [--sets continuous,pauses] [--json build/hard_audio.json]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from asr.audio import load, probe  # noqa: E402
from asr.engine.inputs import output_key  # noqa: E402
from asr.engine.transcribe import TranscribeOptions, transcribe  # noqa: E402
from asr.engine.types import DecodeOptions  # noqa: E402
from asr.manifest import Recording, write_manifest  # noqa: E402
from asr.metrics import (  # noqa: E402
    NormalizerSpec,
    UttScore,
    make_normalizer,
    paired_bootstrap,
    score_pairs,
    summarize,
)
from asr.models import resolve_model  # noqa: E402
from benchmarks.realspeech import DIARIZATION, REALSPEECH, ROOT  # noqa: E402

log = logging.getLogger("bench")

SR = 16000
SETS = ("continuous", "continuous-music", "pauses", "multilingual", "longform", "ami", "call")
SYSTEMS = ("asr", "fw-batched", "fw-sequential")
PEERS = ("fw-batched", "fw-sequential")
BEAM = 5
MIN_QUIET = 2.0  # non-speech stretches longer than this are checked for words
EDGE = 0.2  # allowance at a stretch's edges
NGRAM = 8
WER_SLACK = 0.005  # target: WER <= better peer + half a point
BUILD_VERSION = 1  # bump when a set's audio changes, so cached sets are rebuilt


@dataclass
class Item:
    """One recording: its reference texts in order (none: not scored) and known timings."""

    key: str
    path: str
    duration: float
    language: str | None
    units: list[str] = field(default_factory=list)
    spans: list[tuple[float, float]] = field(default_factory=list)
    """True speech span of each unit (seconds), where known."""
    quiet: list[tuple[float, float, str]] = field(default_factory=list)
    """Non-speech stretches (start, end, kind)."""


@dataclass
class Run:
    """One set transcribed by every system with one model and one language mode."""

    name: str
    group: str
    items: list[Item]
    model: str
    detect: bool
    normalizer: str  # whisper-english | multilingual | auto (English: whisper-english)


@dataclass
class Hyp:
    """A system's output for one recording."""

    text: str = ""
    words: list[tuple[float, float, str]] = field(default_factory=list)
    language: str | None = None
    error: str | None = None


# ---------------------------------------------------------------------------------------------
# sets


def catalogue() -> list[dict]:
    with open(REALSPEECH / "catalogue.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def ljspeech(rows: list[dict]) -> list[dict]:
    """The 32 LJSpeech utterances LJ001-0001..0032: one passage, read in order."""
    lj = [r for r in rows if r["path"].startswith("ljspeech_")]
    return sorted(lj, key=lambda r: Path(r["path"]).name)[:32]


def other_english(rows: list[dict]) -> list[dict]:
    return [
        r
        for r in rows
        if r["kind"] == "utterance" and r["language"] == "en" and not r["path"].startswith("lj")
    ]


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def speech_span(x: np.ndarray, floor_db: float = -35.0) -> tuple[float, float]:
    """First and last 10 ms frame louder than floor_db below the loudest (seconds)."""
    hop = SR // 100
    frames = x[: x.size // hop * hop].reshape(-1, hop)
    level = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(level > level.max() * 10 ** (floor_db / 20))
    return loud[0] * hop / SR, (loud[-1] + 1) * hop / SR


def write_wav(path: Path, audio: np.ndarray) -> None:
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > 0.98:
        audio = audio * (0.98 / peak)
    sf.write(path, audio.astype(np.float32), SR, subtype="PCM_16")


def cached(folder: Path, build: Callable[[Path], list[Item]]) -> list[Item]:
    """The set's items from folder/items.json when built by this version, else build it."""
    meta = folder / "items.json"
    if meta.is_file():
        d = json.loads(meta.read_text(encoding="utf-8"))
        items = [Item(**i) for i in d["items"]]
        if d.get("version") == BUILD_VERSION and all(Path(i.path).is_file() for i in items):
            return items
    folder.mkdir(parents=True, exist_ok=True)
    items = build(folder)
    meta.write_text(
        json.dumps({"version": BUILD_VERSION, "items": [asdict(i) for i in items]}, indent=1),
        encoding="utf-8",
    )
    return items


def sox(*args: object) -> None:
    # -R: sox's noise (drums, plucked strings) and dither from its default seed, so the music
    # bed is the same on every build (without it each build's bed, and WER, differ)
    subprocess.run(["sox", "-R", *map(str, args)], check=True, capture_output=True)


def music_bed(folder: Path, seconds: float) -> np.ndarray:
    """An 8 s loop of four plucked chords over kick, snare and hi-hats, made with sox."""
    if shutil.which("sox") is None:
        raise SystemExit("continuous-music needs sox: apt-get install -y sox")
    d = folder / "music"
    d.mkdir(exist_ok=True)
    r = ["-r", SR, "-c", 1]
    chords = [
        ("C3", "E3", "G3", "C4"),
        ("A2", "E3", "A3", "C4"),
        ("F2", "C3", "F3", "A3"),
        ("G2", "D3", "G3", "B3"),
    ]
    for i, notes in enumerate(chords):
        tones = [x for n in notes for x in ("pluck", n)]
        sox("-n", *r, d / f"chord{i}.wav", "synth", 2, *tones, "delay", 0, 0.02, 0.04, 0.06)
        sox(d / f"chord{i}.wav", d / f"chordn{i}.wav", "remix", "-", "fade", 0, 2, 0.1, "norm", -3)
    sox(*[d / f"chordn{i}.wav" for i in range(4)], d / "chords.wav")
    drums = {
        "kick": "synth 0.15 sine 100:40 fade 0 0.15 0.12 pad 0 0.35",
        "snare": "synth 0.12 whitenoise gain -6 lowpass 5000 fade 0 0.12 0.1 pad 0 0.38",
        "hat": "synth 0.04 whitenoise gain -18 highpass 6000 fade 0 0.04 0.035 pad 0 0.21 repeat 1",
    }
    for name, effects in drums.items():
        sox("-n", *r, d / f"{name}.wav", *effects.split())
    sox("-m", d / "kick.wav", d / "hat.wav", d / "beat_a.wav")
    sox("-m", d / "snare.wav", d / "hat.wav", d / "beat_b.wav")
    sox(d / "beat_a.wav", d / "beat_b.wav", d / "beat_a.wav", d / "beat_b.wav", d / "bar.wav")
    sox(d / "bar.wav", d / "drums.wav", "repeat", 3)
    sox("-m", d / "chords.wav", d / "drums.wav", d / "loop.wav", "norm", -3)
    repeats = int(seconds // 8) + 1
    sox(d / "loop.wav", d / "bed.wav", "repeat", repeats, "trim", 0, f"{seconds:.3f}")
    bed, sr = sf.read(d / "bed.wav", dtype="float32")
    assert sr == SR
    return bed


def build_continuous(folder: Path, music: bool) -> list[Item]:
    rows = catalogue()
    lj = ljspeech(rows)
    clips = [load(REALSPEECH / r["path"]) for r in lj]
    speech = np.concatenate(clips)
    if music:
        bed, gain_db = music_bed(folder, speech.size / SR), -15.0
        bed = np.pad(bed, (0, max(0, speech.size - bed.size)))[: speech.size]
    else:
        voices = np.concatenate([load(REALSPEECH / r["path"]) for r in other_english(rows)])
        bed, gain_db = np.resize(voices, speech.size), -12.0
    mix = speech + bed * (rms(speech) / rms(bed)) * 10 ** (gain_db / 20)
    path = folder / f"{folder.name}.wav"
    write_wav(path, mix)
    spans, t = [], 0
    for c in clips:
        spans.append((t / SR, (t + c.size) / SR))
        t += c.size
    units = [r["transcript"] for r in lj]
    return [Item(folder.name, str(path), speech.size / SR, "en", units, spans)]


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return x / (rms(x) or 1.0)


def nonspeech(kind: str, n: int, rng: np.random.Generator, speech_rms: float, i: int) -> np.ndarray:
    """n samples of one kind of non-speech, levelled against the speech."""
    t = np.arange(n) / SR
    if kind == "silence":
        return np.zeros(n, np.float32)
    if kind == "pink":  # 12 dB below the speech
        return (pink_noise(n, rng) * speech_rms * 10 ** (-12 / 20)).astype(np.float32)
    if kind == "tone":  # mains hum with harmonics, 440 Hz, 1 kHz in turn; 15 dB below
        freqs = [(50, 100, 150), (440,), (1000,)][(i // 4) % 3]
        x = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate(freqs))
        return (x / rms(x) * speech_rms * 10 ** (-15 / 20)).astype(np.float32)
    out = np.zeros(n, np.float64)  # claps: noise bursts with an exponential decay, ~3 a second
    burst = int(0.15 * SR)
    pos = int(rng.uniform(0.05, 0.6) * SR)
    while pos + burst < n:
        decay = np.exp(-np.arange(burst) / (rng.uniform(0.015, 0.04) * SR))
        out[pos : pos + burst] += rng.standard_normal(burst) * decay * rng.uniform(0.15, 0.4)
        pos += int(rng.uniform(0.15, 0.6) * SR)
    return out.astype(np.float32)


def build_pauses(folder: Path, seed: int = 0) -> list[Item]:
    rng = np.random.default_rng(seed)
    lj = ljspeech(catalogue())[:20]
    clips = [load(REALSPEECH / r["path"]) for r in lj]
    speech_rms = rms(np.concatenate(clips))
    kinds = ("silence", "pink", "tone", "claps")
    parts, spans, stretch_kinds, t = [], [], [], 0
    for i in range(len(clips) + 1):  # a stretch before every utterance and after the last
        n = int(rng.uniform(5, 30) * SR)
        parts.append(nonspeech(kinds[i % 4], n, rng, speech_rms, i))
        stretch_kinds.append(kinds[i % 4])
        t += n
        if i < len(clips):
            on, off = speech_span(clips[i])
            spans.append((t / SR + on, t / SR + off))
            parts.append(clips[i])
            t += clips[i].size
    edges = [0.0] + [x for s in spans for x in s] + [t / SR]
    quiet = [(edges[2 * k], edges[2 * k + 1], stretch_kinds[k]) for k in range(len(spans) + 1)]
    path = folder / "pauses.wav"
    write_wav(path, np.concatenate(parts))
    units = [r["transcript"] for r in lj]
    return [Item("pauses", str(path), t / SR, "en", units, spans, quiet)]


def multilingual_items(per_language: int, english: int) -> list[Item]:
    """Utterances in every language but English (per_language each; 0: all) and some English."""
    rows = catalogue()
    by_lang: dict[str, list[dict]] = {}
    for r in rows:
        if r["kind"] == "utterance" and r["language"] != "en":
            by_lang.setdefault(r["language"], []).append(r)
    chosen = [r for lang in sorted(by_lang) for r in by_lang[lang][: per_language or None]]
    en = other_english(rows)
    chosen += en[:: max(1, len(en) // english)][:english] if english else []
    return [
        Item(
            r["path"],
            str(REALSPEECH / r["path"]),
            float(r["duration_s"]),
            r["language"],
            [r["transcript"]],
        )
        for r in chosen
    ]


def longform_items() -> list[Item]:
    """The LibriVox recordings; their transcripts' lines are the scoring units."""
    items = []
    for r in catalogue():
        if r["kind"] == "longform":
            text = (REALSPEECH / r["transcript"]).read_text(encoding="utf-8")
            units = [line.strip() for line in text.splitlines() if line.strip()]
            items.append(
                Item(
                    r["path"],
                    str(REALSPEECH / r["path"]),
                    float(r["duration_s"]),
                    r["language"],
                    units,
                )
            )
    return items


def rttm_quiet(rttm: Path, name: str, end: float) -> list[tuple[float, float, str]]:
    """Stretches in [0, end] where the RTTM says nobody speaks."""
    turns = []
    for line in rttm.read_text(encoding="utf-8").splitlines():
        f = line.split()
        if len(f) > 4 and f[0] == "SPEAKER" and f[1] == name:
            turns.append((float(f[3]), float(f[3]) + float(f[4])))
    quiet, t = [], 0.0
    for a, b in sorted(turns):
        if a > t:
            quiet.append((t, a, "no speaker"))
        t = max(t, b)
    if end > t:
        quiet.append((t, end, "no speaker"))
    return quiet


def ami_items() -> list[Item]:
    items = []
    for p in sorted(DIARIZATION.glob("ami_trn*.flac")):
        d = probe(p).duration
        quiet = rttm_quiet(DIARIZATION / "ami_train.rttm", p.stem, d)
        items.append(Item(p.name, str(p), d, "en", [], [], quiet))
    return items


def call_items() -> list[Item]:
    """The telephone call; its reference is the words of sample.stm in time order."""
    p = DIARIZATION / "sample.wav"
    lines = [x.split() for x in (DIARIZATION / "sample.stm").read_text("utf-8").splitlines()]
    lines = sorted((x for x in lines if len(x) > 5), key=lambda x: float(x[3]))
    d = probe(p).duration
    units = [" ".join(x[5:]) for x in lines]
    spans = [(float(x[3]), float(x[4])) for x in lines]
    quiet = rttm_quiet(DIARIZATION / "sample.rttm", "sample", d)
    return [Item(p.name, str(p), d, "en", units, spans, quiet)]


def plan(args: argparse.Namespace) -> list[Run]:
    """The runs of the chosen sets, building (or reusing) their audio."""
    work = Path(args.work)
    english = args.model or "tiny.en"
    runs = []
    for name in args.sets:
        if name in ("continuous", "continuous-music"):
            music = name == "continuous-music"
            items = cached(work / name, lambda f, m=music: build_continuous(f, m))
            runs.append(Run(name, name, items, english, False, "whisper-english"))
        elif name == "pauses":
            items = cached(work / name, lambda f: build_pauses(f, args.seed))
            runs.append(Run(name, name, items, english, False, "whisper-english"))
        elif name == "multilingual":
            items = multilingual_items(args.per_language, args.english)
            # default: asr without --model (tiny.en, and base for other languages), the
            # peers on tiny.en
            for model in [args.model] if args.model else ["default", "base"]:
                for detect in [m == "detected" for m in args.modes]:
                    label = f"{name}/{model}/{'detected' if detect else 'given'}"
                    runs.append(Run(label, name, items, model, detect, "multilingual"))
        elif name == "longform":
            runs.append(Run(name, name, longform_items(), args.model or "base", False, "auto"))
        elif name == "ami":
            runs.append(Run(name, name, ami_items(), english, False, "whisper-english"))
        elif name == "call":
            runs.append(Run(name, name, call_items(), english, False, "whisper-english"))
    return runs


# ---------------------------------------------------------------------------------------------
# systems


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def run_asr(run: Run, out: Path) -> tuple[float, dict[str, Hyp], str | None]:
    """The project's API on a recordings manifest (languages per file, or none: detect)."""
    shutil.rmtree(out, ignore_errors=True)  # the job database would skip a rerun
    out.mkdir(parents=True)
    manifest = out.with_name(out.name + ".recordings.jsonl")
    recs = []
    for it in run.items:
        info = probe(it.path)
        recs.append(
            Recording(
                id=it.key,
                path=str(Path(it.path).resolve()),
                sha256=sha256(it.path),
                duration=info.duration,
                sample_rate=info.sample_rate,
                channels=info.channels,
                language=None if run.detect else it.language,
            )
        )
    write_manifest(manifest, recs)
    opts = TranscribeOptions(
        model=None if run.model == "default" else run.model,
        language=None,
        compute_type="int8",
        formats=("json",),
        decode=DecodeOptions(beam_size=BEAM, word_timestamps=True),
        progress=False,
    )
    t0 = time.perf_counter()
    try:
        result = transcribe([manifest], out, opts)
    except Exception:
        tb = traceback.format_exc()
        log.error("%s asr crashed:\n%s", run.name, tb)
        return time.perf_counter() - t0, {i.key: Hyp(error="crash") for i in run.items}, tb
    wall = time.perf_counter() - t0
    failed = {k: err for k, _, err in result.failures}
    hyps = {}
    for it in run.items:
        p = out / (output_key(it.key) + ".json")
        if not p.is_file():
            hyps[it.key] = Hyp(error=failed.get(output_key(it.key), "no output"))
            continue
        d = json.loads(p.read_text(encoding="utf-8"))
        words = [(w["start"], w["end"], w["word"]) for s in d["segments"] for w in s["words"]]
        hyps[it.key] = Hyp(d["text"], words, d.get("language"))
    return wall, hyps, None


class Peers:
    """faster-whisper on the same model folder, loaded once per model."""

    def __init__(self) -> None:
        self.models: dict[str, object] = {}
        self.audio: dict[str, np.ndarray] = {}
        self.english_only: dict[tuple, tuple[float, dict[str, Hyp]]] = {}

    def model(self, name: str):
        from faster_whisper import WhisperModel

        if name not in self.models:
            m = WhisperModel(str(resolve_model(name).path), device="cpu", compute_type="int8")
            list(m.transcribe(np.zeros(SR, np.float32), beam_size=BEAM, language="en")[0])
            self.models[name] = m
        return self.models[name]

    def run(self, run: Run, batched: bool, lid_only: bool = False) -> tuple[float, dict[str, Hyp]]:
        """lid_only: the detected language alone (faster-whisper detects it before it decodes
        a segment; the segments are never decoded)."""
        from faster_whisper import BatchedInferencePipeline

        model = self.model(run.model)
        # an English-only model decodes as English whether a language is given or not: the
        # detected run is the given one, so it is reused rather than run twice
        same = (run.group, run.model, batched)
        if not model.model.is_multilingual and same in self.english_only:
            log.info("%s: reusing the identical run with languages given", run.name)
            return self.english_only[same]
        runner = BatchedInferencePipeline(model) if batched else model
        kw = {"batch_size": 8} if batched else {}
        for it in run.items:  # decoded before the clock starts, as asr decodes on its own
            if it.path not in self.audio:
                self.audio[it.path] = load(it.path)
        hyps, t0 = {}, time.perf_counter()
        for it in run.items:
            lang = None if run.detect else it.language
            try:
                segs, info = runner.transcribe(
                    self.audio[it.path], beam_size=BEAM, word_timestamps=True, language=lang, **kw
                )
                segs = [] if lid_only else list(segs)
            except Exception as e:
                hyps[it.key] = Hyp(error=f"{type(e).__name__}: {e}")
                continue
            words = [(w.start, w.end, w.word) for s in segs for w in s.words or []]
            text = " ".join(s.text.strip() for s in segs if s.text.strip())
            hyps[it.key] = Hyp(text, words, info.language)
        result = time.perf_counter() - t0, hyps
        if not model.model.is_multilingual and not lid_only:
            self.english_only[same] = result
        return result


# ---------------------------------------------------------------------------------------------
# figures


class Norms:
    """The project's normalisers by name; `auto` is whisper-english for English."""

    def __init__(self) -> None:
        self.cache: dict[str, Callable[[str, str | None], str]] = {}

    def __call__(self, name: str, text: str, language: str | None) -> str:
        if name == "auto":
            name = "whisper-english" if language == "en" else "multilingual"
        if name not in self.cache:
            self.cache[name] = make_normalizer(NormalizerSpec(name))
        return self.cache[name](text, language)


def split_hyp(refs: list[str], hyp: str) -> list[str]:
    """The hypothesis cut at the reference units' borders along its alignment with the whole
    reference (insertions go with the word before), so per-unit errors add up to the whole's."""
    owner = [k for k, r in enumerate(refs) for _ in r.split()]
    words = hyp.split()
    if not refs:
        return []
    if len(refs) == 1 or not owner or not words:
        return [hyp] + [""] * (len(refs) - 1)
    out = jiwer.process_words(" ".join(refs), hyp)
    pieces: list[list[str]] = [[] for _ in refs]
    for c in out.alignments[0]:
        for j in range(c.hyp_start_idx, c.hyp_end_idx):
            if c.type == "insert":
                i = max(c.ref_start_idx - 1, 0)
            else:
                i = c.ref_start_idx + (j - c.hyp_start_idx)
            pieces[owner[min(i, len(owner) - 1)]].append(words[j])
    return [" ".join(p) for p in pieces]


def occurrences(seq: list[str], sub: list[str]) -> int:
    n = len(sub)
    return sum(seq[i : i + n] == sub for i in range(len(seq) - n + 1)) if n else 0


def written_twice(refs: list[str], hyp: str) -> tuple[int, int]:
    """Reference units (4+ words) found twice or more in the hypothesis while once in the
    reference; distinct hypothesis 8-grams that occur twice or more but at most once in it."""
    ref_words, hyp_words = " ".join(refs).split(), hyp.split()
    sentences = sum(
        1
        for r in refs
        if len(r.split()) >= 4
        and occurrences(ref_words, r.split()) == 1
        and occurrences(hyp_words, r.split()) >= 2
    )

    def grams(w: list[str]) -> Counter:
        return Counter(tuple(w[i : i + NGRAM]) for i in range(len(w) - NGRAM + 1))

    rg, hg = grams(ref_words), grams(hyp_words)
    return sentences, sum(1 for g, n in hg.items() if n >= 2 and rg[g] <= 1)


def words_in_quiet(item: Item, hyp: Hyp) -> dict[str, int]:
    """Words whose span lies inside a non-speech stretch over MIN_QUIET s (EDGE s allowed at
    its edges), by the stretch's kind."""
    out: Counter = Counter()
    for a, b, kind in item.quiet:
        if b - a > MIN_QUIET:
            out[kind] += sum(1 for s, e, _ in hyp.words if s >= a + EDGE and e <= b - EDGE)
    return dict(out)


def start_errors(item: Item, hyp: Hyp) -> tuple[list[float], int]:
    """|first word start - true onset| of each unit, over words whose middle lies within
    MIN_QUIET s of the unit's span; and how many units got no word there."""
    errs, missed = [], 0
    for on, off in item.spans:
        starts = [s for s, e, _ in hyp.words if on - MIN_QUIET <= (s + e) / 2 <= off + MIN_QUIET]
        if starts:
            errs.append(abs(min(starts) - on))
        else:
            missed += 1
    return errs, missed


def figures(run: Run, hyps: dict[str, Hyp], norms: Norms, boot: int) -> dict:
    """Every figure of one system on one run, plus its per-unit errors for the paired test."""
    rows, twice, quiet, errs, missed = [], [0, 0], Counter(), [], 0
    for it in run.items:
        h = hyps[it.key]
        hyp = norms(run.normalizer, h.text, it.language)
        refs = [norms(run.normalizer, u, it.language) for u in it.units]
        for k, piece in enumerate(split_hyp(refs, hyp) if refs else []):
            rows.append({"id": f"{it.key}#{k}", "ref": refs[k], "hyp": piece})
        s, g = written_twice(refs, hyp)
        twice[0] += s
        twice[1] += g
        quiet.update(words_in_quiet(it, h))
        if run.group == "pauses":
            e, m = start_errors(it, h)
            errs += e
            missed += m
    d = common_figures(run, hyps)
    d["twice_sentences"], d["twice_8grams"] = twice
    if any(it.quiet for it in run.items):
        d["words_in_quiet"] = sum(quiet.values())
        d["words_in_quiet_by_kind"] = dict(quiet)
    if rows:
        utts: list[UttScore] = score_pairs(rows, NormalizerSpec("none"))
        s = summarize(utts, n_boot=boot, seed=0, top=5)
        d.update(wer=s.wer, wer_ci=[s.ci_low, s.ci_high], cer=s.cer, words=s.words)
        d.update(sub=s.substitutions, dele=s.deletions, ins=s.insertions, units=s.n_utterances)
        d["confusions"] = s.confusions
        d["_units"] = {u.id: (u.errors, u.words) for u in utts}
    if run.group == "pauses":
        d["start_err_median"] = float(np.median(errs)) if errs else None
        d["start_err_p95"] = float(np.percentile(errs, 95)) if errs else None
        d["start_missed"] = missed
    return d


def common_figures(run: Run, hyps: dict[str, Hyp]) -> dict:
    """Failures and, where languages are detected, language identification: all there is of
    a --lid-only peer (nothing decoded, no WER)."""
    d: dict = {"failed": sum(1 for h in hyps.values() if h.error)}
    d["errors"] = sorted({h.error for h in hyps.values() if h.error})[:5]
    if run.detect:
        right = sum(1 for it in run.items if hyps[it.key].language == it.language)
        d["lid_accuracy"] = right / len(run.items)
        d["languages"] = dict(Counter(str(hyps[it.key].language) for it in run.items))
    return d


def targets(res: dict[str, dict], boot: int) -> dict:
    """asr against the best peer on each figure; the paired WER difference against the better
    peer by WER."""
    a, peers = res["asr"], [res[p] for p in PEERS if p in res]
    scored = [p for p in PEERS if p in res and "wer" in res[p]]
    t: dict = {}
    if "wer" in a and scored:
        better = min(scored, key=lambda p: res[p]["wer"])
        c = paired_bootstrap(res[better]["_units"], a["_units"], n=boot, seed=0)
        t["peer"] = better
        t["wer_diff"], t["wer_diff_ci"] = c.diff, [c.ci_low, c.ci_high]
        t["wer_ok"] = a["wer"] <= res[better]["wer"] + WER_SLACK
    t["twice_ok"] = a["twice_sentences"] == 0 and a["twice_8grams"] == 0
    if "words_in_quiet" in a:
        t["quiet_ok"] = a["words_in_quiet"] == 0
    if a.get("start_err_median") is not None:
        med = [p["start_err_median"] for p in peers if p.get("start_err_median") is not None]
        p95 = [p["start_err_p95"] for p in peers if p.get("start_err_p95") is not None]
        worst_ok = a["start_err_p95"] <= min(p95, default=np.inf)
        t["start_ok"] = a["start_err_median"] <= min(med, default=np.inf) and worst_ok
    if "lid_accuracy" in a:
        t["lid_ok"] = a["lid_accuracy"] >= max(p["lid_accuracy"] for p in peers)
    return t


def table(results: list[dict]) -> str:
    head = (
        "| set | system | model | audio min | WER % [95% CI] | CER % | asr − peer WER pp [95% CI]"
        " | twice (sent/8-gr) | words in silence | start err med/p95 s | LID % | RTFx | failed"
        " | targets |"
    )
    lines = [head, "|" + " --- |" * 14]

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    for r in results:
        for system, d in r["systems"].items():
            t = r.get("targets", {}) if system == "asr" else {}
            wer = (
                f"{pct(d['wer'])} [{pct(d['wer_ci'][0])}, {pct(d['wer_ci'][1])}]"
                if "wer" in d
                else "-"
            )
            diff = (
                f"{100 * t['wer_diff']:+.1f} [{100 * t['wer_diff_ci'][0]:+.1f}, "
                f"{100 * t['wer_diff_ci'][1]:+.1f}] vs {t['peer']}"
                if "wer_diff" in t
                else ""
            )
            start = (
                f"{d['start_err_median']:.2f}/{d['start_err_p95']:.2f}"
                if d.get("start_err_median") is not None
                else "-"
            )
            marks = " ".join(
                f"{k[:-3]} {'ok' if v else 'MISS'}" for k, v in t.items() if k.endswith("_ok")
            )
            if d.get("crash"):
                marks = "CRASHED " + marks
            twice = f"{d.get('twice_sentences', '-')}/{d.get('twice_8grams', '-')}"
            lines.append(
                f"| {r['name']} | {system} | {r['model']} | {r['audio_s'] / 60:.1f} | {wer} | "
                f"{pct(d.get('cer'))} | {diff} | {twice} | "
                f"{d.get('words_in_quiet', '-')} | {start} | {pct(d.get('lid_accuracy'))} | "
                f"{d['rtfx']:.1f} | {d['failed']} | {marks} |"
            )
    return "\n".join(lines) + "\n"


def engine_state() -> dict:
    """The checkout the figures come from: commit and whether asr/ has local changes."""

    def git(*a: str) -> str:
        p = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
        return p.stdout.strip()

    changed = git("status", "--porcelain", "--", "asr")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "asr_changed_files": len(changed.splitlines()),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sets",
        default=",".join(SETS),
        help=f"comma-separated sets to run, of {', '.join(SETS)} (default: all)",
    )
    parser.add_argument(
        "--model",
        help="one model for every set (default: tiny.en for the English sets, base for longform; "
        "for multilingual both base and the default: asr without --model, which hands other "
        "languages to base, against the peers on tiny.en)",
    )
    parser.add_argument(
        "--work",
        default=str(ROOT / "build" / "hard_audio"),
        help="folder for the built sets (kept and reused) and outputs (default: build/hard_audio)",
    )
    parser.add_argument("--json", help="write every figure and hypothesis to this JSON file")
    parser.add_argument(
        "--per-language",
        type=int,
        default=1,
        help="multilingual: utterances per non-English language (0: all, up to 6; default 1: "
        "2 take about 17 minutes on 2 cores, most of it faster-whisper on base)",
    )
    parser.add_argument(
        "--english", type=int, default=4, help="multilingual: English utterances (default 4)"
    )
    parser.add_argument(
        "--modes",
        default="given,detected",
        help="multilingual: with the catalogue's languages (given), without (detected), or both "
        "(default: given,detected)",
    )
    parser.add_argument(
        "--lid-only",
        action="store_true",
        help="multilingual detected: the peers only detect the language (faster-whisper "
        "sequential decodes the 147 utterances with wrong languages for over 50 min on 2 cores)",
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="comma-separated systems to run (default: all three; targets need asr and a peer)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the pauses set (default 0)")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    args = parser.parse_args()
    args.sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(args.modes) - {"given", "detected"}:
        parser.error(f"--modes: given and/or detected, not {args.modes}")
    bad = [s for s in args.sets if s not in SETS] + [s for s in systems if s not in SYSTEMS]
    if bad:
        parser.error(f"unknown set(s) or system(s): {bad}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("faster_whisper").setLevel(logging.ERROR)
    logging.getLogger("asr").setLevel(logging.ERROR)  # failures are counted and summarised here
    state = engine_state()
    log.info("engine: commit %s, %d changed file(s) under asr/, %s", *state.values())
    peers, norms = Peers(), Norms()
    results, set_wall = [], Counter()
    t_plan = time.perf_counter()
    runs = plan(args)
    log.info("sets ready in %.1f s", time.perf_counter() - t_plan)
    for run in runs:
        t_run = time.perf_counter()
        audio_s = sum(it.duration for it in run.items)
        r = {"name": run.name, "model": run.model, "detect": run.detect, "audio_s": audio_s}
        r.update(items=len(run.items), systems={})
        for system in systems:
            crash = None
            lid_only = system != "asr" and args.lid_only and run.detect
            if system == "asr":
                out = Path(args.work) / "out" / run.name.replace("/", "-")
                wall, hyps, crash = run_asr(run, out)
            else:
                wall, hyps = peers.run(run, batched=system == "fw-batched", lid_only=lid_only)
            d = common_figures(run, hyps) if lid_only else figures(run, hyps, norms, args.boot)
            d.update(wall_s=wall, rtfx=audio_s / wall if wall else 0.0, crash=crash)
            d["hypotheses"] = {k: asdict(h) for k, h in hyps.items()}
            r["systems"][system] = d
            log.info(
                "%s %s: WER %s, twice %s/%s, silence %s, RTFx %.1f, failed %d",
                run.name,
                system,
                f"{100 * d['wer']:.1f}%" if "wer" in d else "-",
                d.get("twice_sentences", "-"),
                d.get("twice_8grams", "-"),
                d.get("words_in_quiet", "-"),
                d["rtfx"],
                d["failed"],
            )
            if d["errors"]:
                log.info("  %s failed %d: e.g. %s", system, d["failed"], d["errors"][0])
        if "asr" in r["systems"] and any(p in r["systems"] for p in PEERS):
            r["targets"] = targets(r["systems"], args.boot)
        for d in r["systems"].values():
            d.pop("_units", None)
        set_wall[run.group] += time.perf_counter() - t_run
        results.append(r)
    log.info("wall per set (s): %s", {k: round(v) for k, v in set_wall.items()})
    log.info(
        "targets for asr: WER <= better peer + %.1f points; no sentence written twice; no word "
        "inside a non-speech stretch > %.0f s; word-start error (median, p95) no worse than the "
        "peers'; language identification >= the peers'",
        100 * WER_SLACK,
        MIN_QUIET,
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {"engine": state, "set_wall_s": set_wall, "runs": results},
                indent=1,
                ensure_ascii=False,
            ),
            encoding="utf-8",
        )
    sys.stdout.write("\n" + table(results))


if __name__ == "__main__":
    main()
