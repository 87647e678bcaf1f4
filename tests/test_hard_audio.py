"""`asr transcribe` on what archives hold: continuous talk with voices underneath, long
stretches of non-speech, recordings in other languages or changing language, and runs of many
recordings at once. Real speech (../shared/data/realspeech) and real Whisper weights."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
from lxml import etree
from whisper_normalizer.english import EnglishTextNormalizer

from asr.audio import SAMPLE_RATE, load
from asr.engine.transcribe import TranscribeOptions, transcribe
from asr.manifest import Recording, write_manifest

NORM = EnglishTextNormalizer()


@pytest.fixture(scope="module")
def clips(realspeech: Path) -> dict[str, list[tuple[np.ndarray, str]]]:
    """Utterances by language ('lj' for LJSpeech, one voice): (audio, reference text)."""
    with open(realspeech / "catalogue.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "utterance"]
    out: dict[str, list[tuple[np.ndarray, str]]] = {}
    for r in rows:
        lang = "lj" if r["path"].startswith("ljspeech_coqui/") else r["language"]
        if lang in ("lj", "en", "es", "pl"):
            out.setdefault(lang, []).append((load(realspeech / r["path"]), r["transcript"]))
    return out


def _opts(**kw) -> TranscribeOptions:
    kw.setdefault("progress", False)
    kw.setdefault("formats", ("json", "tei"))
    return TranscribeOptions(**kw)


def _json(out: Path, key: str) -> dict:
    return json.loads((out / f"{key}.json").read_text(encoding="utf-8"))


def _words(t: dict) -> list[dict]:
    return [w for s in t["segments"] for w in s["words"]]


def _join(parts: list[np.ndarray], gap: float = 0.5) -> np.ndarray:
    pause = np.zeros(int(gap * SAMPLE_RATE), np.float32)
    return np.concatenate([np.concatenate([p, pause]) for p in parts])


def _ngrams(text: str, n: int = 8) -> list[tuple[str, ...]]:
    w = NORM(text).split()
    return [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]


def test_continuous_speech_is_transcribed_once(clips, tmp_path):
    """Read speech without pauses, another voice 12 dB below: every sentence once."""
    lj = clips["lj"]  # 32 utterances, 3.6 min
    speech = np.concatenate([a for a, _ in lj])
    under = np.resize(np.concatenate([a for a, _ in clips["en"][:30]]), speech.size)
    rms = lambda x: float(np.sqrt(np.mean(x**2)))  # noqa: E731
    sf.write(
        tmp_path / "talk.wav",
        speech + under * rms(speech) / rms(under) * 10 ** (-12 / 20),
        SAMPLE_RATE,
    )
    ref = " ".join(t for _, t in lj)
    transcribe([tmp_path / "talk.wav"], tmp_path / "out", _opts(language="en"))
    hyp = _json(tmp_path / "out", "talk")["text"]
    assert len(NORM(hyp).split()) <= 1.1 * len(NORM(ref).split())
    said, written = _ngrams(ref), _ngrams(hyp)
    twice = {g for g in written if written.count(g) > max(1, said.count(g))}
    assert not twice, f"written twice: {sorted(twice)[:3]}"
    assert jiwer.wer(NORM(ref), NORM(hyp)) < 0.2


def test_no_word_is_placed_in_a_long_stretch_without_speech(clips, tmp_path):
    """Utterances between 8-12 s of silence, pink noise, a tone and bursts: every utterance is
    heard, and no word starts inside a stretch without speech."""
    rng = np.random.default_rng(0)
    parts, spans, t = [], [], 0.0
    for i, (audio, _) in enumerate(clips["lj"][:8]):
        parts.append(audio)
        spans.append((t, t + audio.size / SAMPLE_RATE))
        t += audio.size / SAMPLE_RATE
        n = int(rng.uniform(8, 12) * SAMPLE_RATE)
        kind = i % 4
        if kind == 0:
            gap = np.zeros(n)
        elif kind == 1:  # pink noise
            f = np.fft.rfft(rng.standard_normal(n))
            gap = np.fft.irfft(f / np.sqrt(np.arange(1, f.size + 1)), n)
            gap *= 0.03 / np.sqrt(np.mean(gap**2))
        elif kind == 2:
            gap = 0.1 * np.sin(2 * np.pi * 440 * np.arange(n) / SAMPLE_RATE)
        else:  # hand-clap-like bursts
            gap = np.zeros(n)
            for s in rng.integers(0, n - 1600, 30):
                gap[s : s + 1600] += (
                    0.3 * rng.standard_normal(1600) * np.exp(-np.arange(1600) / 200)
                )
        parts.append(gap.astype(np.float32))
        t += n / SAMPLE_RATE
    sf.write(tmp_path / "pauses.wav", np.concatenate(parts), SAMPLE_RATE)
    transcribe([tmp_path / "pauses.wav"], tmp_path / "out", _opts(language="en"))
    words = _words(_json(tmp_path / "out", "pauses"))
    stretches = [(a[1], b[0]) for a, b in zip(spans, spans[1:])]
    inside = [w for w in words if any(lo + 0.2 < w["start"] < hi - 0.2 for lo, hi in stretches)]
    assert not inside, inside
    for lo, hi in spans:
        assert any(lo - 0.5 <= w["start"] < hi for w in words), f"nothing heard in {lo}-{hi}"


def test_a_transcript_depends_only_on_its_recording(clips, tmp_path):
    """The same file alone, among ten others, and in a resumed run: the same words, times and
    probabilities (word probabilities to 0.01: on AVX-512 CPUs CTranslate2's int8 kernels
    round differently with the batch's size, 0.5973 alone against 0.5979 among others); and
    the TEI header names the model."""

    def probabilities(segments):  # taken out of the segments, which keep the rest
        return [w.pop("probability") for seg in segments for w in seg["words"]]

    folder = tmp_path / "many"
    folder.mkdir()
    for i, (audio, _) in enumerate(clips["en"][:10] + clips["lj"][:2]):
        sf.write(folder / f"u{i:02d}.wav", audio, SAMPLE_RATE)
    transcribe([folder], tmp_path / "all", _opts(language="en"))
    for name in ("u03", "u10"):
        transcribe([folder / f"{name}.wav"], tmp_path / name, _opts(language="en"))
        alone, among = _json(tmp_path / name, name), _json(tmp_path / "all", name)
        assert alone["text"].strip(), name
        p, q = probabilities(alone["segments"]), probabilities(among["segments"])
        assert alone["segments"] == among["segments"], name
        assert p == pytest.approx(q, abs=0.01), name
    tei = etree.parse(str(tmp_path / "all" / "u03.tei.xml"))
    desc = " ".join(tei.xpath("//*[local-name()='application']//*[local-name()='desc']/text()"))
    assert "tiny.en" in desc and "unknown" not in desc, desc


def _manifest(path: Path, items: list[tuple[str, Path, str | None]]) -> Path:
    write_manifest(
        path,
        [
            Recording(
                id=i,
                path=str(p),
                sha256="0" * 64,
                duration=sf.info(p).duration,
                sample_rate=SAMPLE_RATE,
                channels=1,
                language=lang,
            )
            for i, p, lang in items
        ],
    )
    return path


def test_an_english_only_model_never_hears_another_language(clips, tmp_path):
    """A Spanish recording fails under tiny.en with what to do; the default model hands it to
    the multilingual one, which writes Spanish."""
    sf.write(tmp_path / "es.wav", _join([a for a, _ in clips["es"][:3]]), SAMPLE_RATE)
    sf.write(tmp_path / "en.wav", _join([a for a, _ in clips["lj"][:2]]), SAMPLE_RATE)
    m = _manifest(
        tmp_path / "recs.jsonl",
        [("es", tmp_path / "es.wav", "es"), ("en", tmp_path / "en.wav", "en")],
    )
    r = transcribe([m], tmp_path / "tiny", _opts(model="tiny.en"))
    assert (r.done, r.failed) == (1, 1)
    ((key, _, reason),) = r.failures
    assert key == "es" and "English-only" in reason and "--model base" in reason
    assert not (tmp_path / "tiny" / "es.json").exists()
    # no language given: the multilingual model listens first, and tiny.en hears English only
    unknown = _manifest(
        tmp_path / "unknown.jsonl",
        [("es", tmp_path / "es.wav", None), ("en", tmp_path / "en.wav", None)],
    )
    r = transcribe([unknown], tmp_path / "tiny-unknown", _opts(model="tiny.en"))
    assert (r.done, r.failed) == (1, 1)
    ((key, _, reason),) = r.failures
    assert key == "es" and "detected language '" in reason and "English-only" in reason
    en = _json(tmp_path / "tiny-unknown", "en")
    assert en["language"] == "en" and en["language_probability"] > 0.5

    r = transcribe([m], tmp_path / "default", _opts())
    assert (r.done, r.failed) == (2, 0)
    es, en = _json(tmp_path / "default", "es"), _json(tmp_path / "default", "en")
    assert es["language"] == "es" and "base" in es["model"]["name"]
    assert en["language"] == "en" and "tiny.en" in en["model"]["name"]
    ref = " ".join(t for _, t in clips["es"][:3])
    assert jiwer.cer(ref.lower(), es["text"].lower()) < 0.35, es["text"]


def test_language_is_detected_over_many_chunks_and_per_stretch(clips, tmp_path):
    """A short English ident does not make a Spanish recording English; a recording that
    turns from Polish to English has segments in each, and is called by its main language."""
    ident = clips["lj"][1][0][: int(1.9 * SAMPLE_RATE)]
    sf.write(
        tmp_path / "ident.wav", _join([ident] + [a for a, _ in clips["es"][:5]], 1.0), SAMPLE_RATE
    )
    polish = [a for a, _ in clips["pl"][:4]]
    english = [a for a, _ in clips["lj"][2:6]]
    sf.write(tmp_path / "switch.wav", _join(polish + english), SAMPLE_RATE)
    switch_at = sum(a.size for a in polish) / SAMPLE_RATE + 0.5 * len(polish)
    transcribe([tmp_path], tmp_path / "out", _opts(model="base"))
    assert _json(tmp_path / "out", "ident")["language"] == "es"
    t = _json(tmp_path / "out", "switch")
    assert t["language"] == "pl"
    late = [s for s in t["segments"] if s["start"] > switch_at + 10]
    assert late and all(s["language"] == "en" for s in late), late
    early = [s for s in t["segments"] if s["end"] < switch_at - 5]
    assert early and all(s["language"] == "pl" for s in early)
    tei = (tmp_path / "out" / "switch.tei.xml").read_text(encoding="utf-8")
    assert re.search(r'<u [^>]*xml:lang="en"', tei)


def test_a_chunks_first_word_starts_where_vad_heard_its_speech_begin():
    """Whisper's alignment puts a chunk's first word off its onset: one that spans the onset,
    or starts up to 0.2 s after it, starts at the onset; one further on keeps its time (a
    breath or a sound the model did not write may come first); later words never move."""
    from asr.engine.inputs import Job
    from asr.engine.stitch import SNAP_S, stitch
    from asr.engine.types import PartResult
    from asr.models import ModelInfo

    def part(first: float) -> PartResult:
        words = [
            {"word": " one", "start": first, "end": 1.0, "probability": 0.9},
            {"word": " two", "start": 1.1, "end": 1.5, "probability": 0.9},
        ]
        seg = {"start": first, "end": 1.5, "text": "one two", "words": words}
        return PartResult(("k", 0), [seg], -0.1, 0.0, 1.0, 0.0, "en")

    onset = 0.2  # the chunk's padding before VAD's first speech frame
    chunks = [
        (10.0, onset, part(0.0)),  # spans the onset
        (20.0, onset, part(onset + SNAP_S / 2)),  # just after it
        (30.0, onset, part(onset + SNAP_S + 0.2)),  # well after it
    ]
    model = ModelInfo(Path("m"), "whisper", "m", "0")
    t = stitch(Job("k", "k.wav", "k"), model, chunks, 40.0, "en", 1.0, False, {})
    firsts = [s.words[0].start for s in t.segments]
    assert firsts == pytest.approx([10.2, 20.2, 30.0 + onset + SNAP_S + 0.2])
    assert [s.start for s in t.segments] == firsts
    assert [s.words[1].start for s in t.segments] == pytest.approx([11.1, 21.1, 31.1])
