"""`asr align`: untimed transcripts and their recordings to segments of at most 30 s.

How national libraries built their speech corpora: transcribe the recording with Whisper (word
timestamps), align the transcript's words to the recognised words globally (rapidfuzz's
Levenshtein alignment, bit-parallel, fit for hours of text), and keep stretches that match.
Segments are cut at sentence ends (and at pauses inside sentences too long for one segment);
each one's text is the transcript's own, in its own spelling, with the normalised form beside
it. Boundaries are moved onto the nearest speech onset and offset that Silero VAD finds.

Transcripts are rarely verbatim. Text with no audio (an inserted paragraph) and audio with no
text (music, a preamble) are expected: they are skipped and reported, never glued to the wrong
audio, because a segment is kept only when its text and what the model heard in its exact time
span agree (character error rate at most `max_cer`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import jiwer
import numpy as np

from asr.audio import cut_spans, stream
from asr.diarize import NoTurnsError, speaker_turns_for
from asr.engine.inputs import Job
from asr.engine.transcriber import Transcriber
from asr.engine.types import DecodeOptions, TranscribeOptions
from asr.manifest import (
    ErrorRecord,
    Recording,
    Segment,
    TranscriptError,
    atomic_output,
    output_key,
    read_recordings,
    write_manifest,
)
from asr.models import ModelNotFoundError, resolve_model
from asr.outputs import Transcript
from asr.progress import bar as progress_bar
from asr.segment import segment_id
from asr.speakers import Turns, speaker_at
from asr.stage import Journal, journal_path
from asr.textnorm import NormText, Rules, map_words, normalise, normalise_word
from asr.vad import FRAME_S, SegmentOptions, SileroVad, speech_regions

log = logging.getLogger(__name__)


@dataclass
class AlignOptions:
    """Options of `align`: each field but `progress` is an `asr align` option (see
    asr/cliopts.py)."""

    model: str | None = field(
        default=None,
        metadata={
            "help": "Whisper model for anchoring (default: the offline multilingual base when "
            "installed, else tiny.en); a CTranslate2 folder or a hub id"
        },
    )
    max_duration: float = field(default=30.0, metadata={"help": "longest segment, seconds"})
    min_duration: float = field(default=1.0, metadata={"help": "shortest segment, seconds"})
    max_cer: float = field(
        default=0.25,
        metadata={
            "help": "drop a segment whose text and what was heard in its span differ more (CER)"
        },
    )
    min_match: float = field(
        default=0.6,
        metadata={
            "help": "a sentence is anchored when at least this share of its words match exactly"
        },
    )
    max_unheard: float = field(
        default=1.0,
        metadata={
            "help": "drop a segment holding a longer stretch of speech (VAD) in which no word "
            "was heard, seconds: audio the model skipped, which the text may not cover"
        },
    )
    snap: float = field(
        default=0.3,
        metadata={"help": "how far an edge may move onto a VAD speech onset or offset, seconds"},
    )
    pad: float = field(default=0.05, metadata={"help": "silence kept around each segment, seconds"})
    rules: Path | None = field(
        default=None,
        metadata={
            "help": "YAML of text that is not spoken (speaker labels, headings, annotations); "
            "default: asr/data/align_rules.yaml"
        },
    )
    beam_size: int = field(default=5, metadata={"help": "beam search width"})
    batch_size: int = field(default=8, metadata={"help": "windows in the model at once"})
    ctc_model: str | None = field(
        default=None,
        metadata={
            "help": "wav2vec2 CTC model (Hugging Face hub id or folder, e.g. RUN_DIR/final of "
            "`asr train`): force-align each kept segment's text for exact boundaries and a ctc "
            "score (needs the train extra); default: Whisper's word times only"
        },
    )
    """See asr/forced_align.py."""
    ctc_window: float = field(
        default=1.0,
        metadata={"help": "seconds beyond the anchored edges the CTC alignment may move them"},
    )
    min_ctc_score: float | None = field(
        default=None,
        metadata={
            "help": "drop segments whose mean CTC log-probability per character is lower "
            "(e.g. -1.5); default: keep all that align"
        },
    )
    device: str = field(
        default="cpu", metadata={"choices": ("cpu", "cuda"), "help": "where the model runs"}
    )
    compute_type: str | None = field(
        default=None, metadata={"help": "CTranslate2 compute type (default: int8 / float16)"}
    )
    diarization: str | None = field(
        default=None,
        metadata={
            "metavar": "DIR",
            "help": "RTTM files of `asr diarize`: each segment gets the speaker who talks most "
            "in it (a recording without one fails, saying so)",
        },
    )
    progress: bool | None = None


@dataclass
class AlignResult:
    """What `align` kept and dropped."""

    recordings: int = 0
    segments: int = 0
    ref_words: int = 0
    kept_words: int = 0
    kept_seconds: float = 0.0
    dropped: int = 0
    errors: list[ErrorRecord] = field(default_factory=list)
    manifest: Path | None = None
    report: Path | None = None

    @property
    def word_yield(self) -> float:
        return self.kept_words / self.ref_words if self.ref_words else 0.0


def default_align_model() -> str | None:
    """The offline multilingual base when installed (transcripts come in many languages)."""
    try:
        resolve_model("base")
        return "base"
    except ModelNotFoundError:
        return None


@dataclass
class _Candidate:
    first: int  # ref word range [first, last]
    last: int
    start: float
    end: float


def _hyp_words(transcript: Transcript, language: str | None) -> tuple[list[str], np.ndarray]:
    """The recognised words, normalised like the transcript's, with (start, end) each."""
    words, times = [], []
    for seg in transcript.segments:
        for w in seg.words:
            parts = normalise_word(w.word, language)
            for k, p in enumerate(parts):  # a number spelled out shares its word's time
                step = (w.end - w.start) / len(parts)
                words.append(p)
                times.append((w.start + k * step, w.start + (k + 1) * step))
    return words, np.array(times, dtype=np.float64).reshape(-1, 2)


def _sentences(ref: NormText) -> list[tuple[int, int]]:
    """Ref word ranges [first, last] of each sentence."""
    out: list[tuple[int, int]] = []
    for i, t in enumerate(ref.word_token):
        s = ref.tokens[t].sentence
        if out and ref.tokens[ref.word_token[out[-1][0]]].sentence == s:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def align_recording(
    rec: Recording,
    transcript: Transcript,
    ref_text: str,
    opts: AlignOptions,
    rules: Rules,
    regions: list[tuple[float, float]],
) -> tuple[list[Segment], dict]:
    """Segments of one recording whose transcript and audio agree, and a report of the rest."""
    lang = rec.language or transcript.language
    ref = normalise(ref_text, lang, rules)
    hyp, times = _hyp_words(transcript, lang)
    report: dict = {"id": rec.id, "ref_words": len(ref.words), "kept_words": 0, "dropped": []}
    if not ref.words or not hyp:
        report["dropped"].append({"text": ref_text[:80], "reason": "nothing recognised"})
        return [], report
    mapping, equal = map_words(ref.words, hyp)

    def drop(first: int, last: int, reason: str) -> None:
        report["dropped"].append({"text": ref.original_span(first, last)[:120], "reason": reason})

    # 1. sentences whose edges are heard and most of whose words match
    anchored: list[_Candidate | None] = []
    for first, last in _sentences(ref):
        m = mapping[first : last + 1]
        share = float(equal[first : last + 1].mean())
        if m[0] < 0 or m[-1] < 0 or share < opts.min_match:
            anchored.append(None)
            drop(first, last, f"not heard in the recording ({share:.0%} of its words matched)")
            continue
        anchored.append(_Candidate(first, last, times[m[0], 0], times[m[-1], 1]))

    # 2. consecutive sentences joined while the audio runs on with them (no unmatched speech
    #    between) and the segment fits; a sentence too long alone is cut at its longest pauses
    groups: list[list[_Candidate]] = []
    for cand in anchored:
        if cand is None:
            groups.append([])
            continue
        prev = groups[-1][-1] if groups and groups[-1] else None
        if (
            prev is not None
            and 0 <= mapping[cand.first] - mapping[prev.last] <= 2
            and cand.end - groups[-1][0].start <= opts.max_duration - 2 * opts.pad
        ):
            groups[-1].append(cand)
        else:
            groups.append([cand])
    candidates: list[_Candidate] = []
    for g in groups:
        if not g:
            continue
        joined = _Candidate(g[0].first, g[-1].last, g[0].start, g[-1].end)
        candidates.extend(_split_long(joined, mapping, times, opts.max_duration - 2 * opts.pad))

    # 3. each candidate kept only if what was heard in its span is its text
    segments: list[Segment] = []
    spans = []
    for c in candidates:
        start, end = _edges(mapping[c.first], mapping[c.last], times, regions, opts)
        inside = (times[:, 0] + times[:, 1]) / 2
        in_span = (start <= inside) & (inside <= end)
        heard = " ".join(h for h, keep in zip(hyp, in_span) if keep)
        said = " ".join(ref.words[c.first : c.last + 1])
        cer = jiwer.cer(said, heard) if heard else 1.0
        silent_text = _unheard_speech(start, end, times[in_span], regions)
        if cer > opts.max_cer:
            drop(c.first, c.last, f"text and audio disagree (CER {cer:.2f} > {opts.max_cer})")
            continue
        if silent_text > opts.max_unheard:
            drop(c.first, c.last, f"{silent_text:.1f} s of speech in its span with no words")
            continue
        if end - start < opts.min_duration:
            drop(c.first, c.last, f"shorter than {opts.min_duration} s")
            continue
        spans.append((c, start, end, cer, float(equal[c.first : c.last + 1].mean())))
    for k, (c, start, end, cer, share) in enumerate(spans):
        lo = max(0.0, start - opts.pad, spans[k - 1][2] if k else 0.0)
        hi = min(rec.duration, end + opts.pad, spans[k + 1][1] if k + 1 < len(spans) else 1e12)
        segments.append(
            Segment(
                id=segment_id(rec.id, round(lo, 3), round(hi, 3)),
                recording_id=rec.id,
                start=round(lo, 3),
                end=round(hi, 3),
                text=ref.original_span(c.first, c.last),
                text_normalized=" ".join(ref.words[c.first : c.last + 1]),
                text_source="aligned",
                language=lang,
                speaker=rec.speakers[0] if len(rec.speakers) == 1 else None,
                scores={"cer": round(cer, 4), "match": round(share, 4)},
            )
        )
        report["kept_words"] += c.last - c.first + 1
    report["unmatched_audio"] = _unmatched_audio(mapping, times)
    report["segments"] = len(segments)
    report["yield"] = round(report["kept_words"] / max(1, report["ref_words"]), 4)
    return segments, report


def _split_long(
    c: _Candidate, mapping: np.ndarray, times: np.ndarray, limit: float
) -> list[_Candidate]:
    """A stretch longer than limit, cut at the longest pause between its words, recursively."""
    if c.end - c.start <= limit or c.last <= c.first:
        return [c] if c.end - c.start <= limit else []
    best, best_gap = None, -1.0
    for i in range(c.first, c.last):
        a, b = mapping[i], mapping[i + 1]
        if a < 0 or b < 0:
            continue
        gap = times[b, 0] - times[a, 1]
        if gap > best_gap:
            best, best_gap = i, gap
    if best is None:
        return []
    left = _Candidate(c.first, best, c.start, times[mapping[best], 1])
    right = _Candidate(best + 1, c.last, times[mapping[best + 1], 0], c.end)
    return _split_long(left, mapping, times, limit) + _split_long(right, mapping, times, limit)


MAX_WORD = 1.2
"""Seconds a word can last; a longer one has absorbed a pause or speech the model skipped."""


def _edges(
    first: int, last: int, times: np.ndarray, regions: list[tuple[float, float]], opts: AlignOptions
) -> tuple[float, float]:
    """Segment edges from its first and last word, moved onto the VAD speech onset / offset.

    Whisper's word timings are least sure at the outer edge of a word after a pause (that is
    where a skipped stretch of audio ends up), so the start is found from the first word's end:
    the onset of the speech region holding it; the end, likewise, from the last word's start.
    """
    w0, w1 = times[first]
    v0, v1 = times[last]
    onsets = [r0 for r0, _ in regions]
    offsets = [r1 for _, r1 in regions]
    if w1 - w0 > MAX_WORD:  # stretched over a pause or skipped speech: the word ends it
        near = [r0 for r0 in onsets if w1 - MAX_WORD <= r0 <= w1 + MAX_WORD]
        start = near[0] if near else w1 - MAX_WORD
    else:
        start = w0
        for r0, r1 in regions:
            if r0 <= w1 - 0.02 <= r1 and w0 - opts.snap <= r0 <= w1:
                start = r0
    if v1 - v0 > MAX_WORD:
        near = [r1 for r1 in offsets if v0 - MAX_WORD <= r1 <= v0 + MAX_WORD]
        end = near[-1] if near else v0 + MAX_WORD
    else:
        end = v1
        for r0, r1 in regions:
            if r0 <= v0 + 0.02 <= r1 and v0 <= r1 <= v1 + opts.snap:
                end = r1
    return start, max(end, start)


def _unheard_speech(
    start: float, end: float, words: np.ndarray, regions: list[tuple[float, float]]
) -> float:
    """The longest stretch (s) inside [start, end] where VAD hears speech but no word lies:
    audio the model skipped, which a segment must not carry under the wrong text."""
    if end <= start:
        return 0.0
    n = int((end - start) * 100) + 1
    speech = np.zeros(n, dtype=bool)
    for r0, r1 in regions:
        a, b = int((max(r0, start) - start) * 100), int((min(r1, end) - start) * 100)
        if b > a:
            speech[a:b] = True
    for w0, w1 in words:
        w1 = min(w1, w0 + MAX_WORD)  # a stretched word does not vouch for the audio it spans
        a, b = int((w0 - start) * 100) - 20, int((w1 - start) * 100) + 20
        speech[max(0, a) : max(0, b)] = False
    longest = run = 0
    for x in speech:
        run = run + 1 if x else 0
        longest = max(longest, run)
    return longest / 100


def _unmatched_audio(mapping: np.ndarray, times: np.ndarray, min_words: int = 5) -> list[dict]:
    """Stretches of recognised speech that no transcript word matched: audio without text."""
    used = np.zeros(len(times), dtype=bool)
    used[mapping[mapping >= 0]] = True
    out, run = [], []
    for j in range(len(times)):
        if not used[j]:
            run.append(j)
            continue
        if len(run) >= min_words:
            out.append({"start": round(times[run[0], 0], 2), "end": round(times[run[-1], 1], 2)})
        run = []
    if len(run) >= min_words:
        out.append({"start": round(times[run[0], 0], 2), "end": round(times[run[-1], 1], 2)})
    return out


def refine(
    rec: Recording, segs: list[Segment], aligner, opts: AlignOptions, report: dict
) -> list[Segment]:
    """Move each segment's edges onto its CTC forced alignment inside a window around its
    anchored span (never into a neighbour's); drop the ones whose text cannot be aligned."""
    windows = []
    for k, s in enumerate(segs):
        lo = max(0.0, s.start - opts.ctc_window, segs[k - 1].end if k else 0.0)
        hi = min(rec.duration, s.end + opts.ctc_window)
        if k + 1 < len(segs):
            hi = min(hi, segs[k + 1].start)
        windows.append((lo, hi))
    kept: list[Segment] = []
    prev_end = 0.0

    def drop(s: Segment, reason: str) -> None:
        report["dropped"].append({"text": s.text[:120], "reason": reason})
        report["kept_words"] -= len((s.text_normalized or "").split())

    # each window is cut with the aligner's context on both sides, for the model to hear
    outer = [
        (max(0.0, lo - aligner.context), min(rec.duration, hi + aligner.context))
        for lo, hi in windows
    ]
    for i, audio in cut_spans(rec.path, outer):
        s, (lo, hi) = segs[i], windows[i]
        context = (lo - outer[i][0], outer[i][1] - hi)
        al = aligner.align(audio, (s.text_normalized or "").split(), context)
        if al is None:
            drop(s, "CTC alignment failed (more characters than the audio holds)")
            continue
        if opts.min_ctc_score is not None and al.score < opts.min_ctc_score:
            drop(s, f"CTC score {al.score:.2f} < {opts.min_ctc_score}")
            continue
        # an edge moves where the model heard its character; else the anchor stays
        start = s.start if al.start is None else max(lo, prev_end, lo + al.start - opts.pad)
        end = s.end if al.end is None else min(hi, lo + al.end + opts.pad)
        if end - start < opts.min_duration:
            drop(s, f"shorter than {opts.min_duration} s after CTC alignment")
            continue
        s.start, s.end = round(start, 3), round(end, 3)
        s.id = segment_id(rec.id, s.start, s.end)
        s.scores = {**s.scores, "ctc": round(al.score, 4)}
        prev_end = s.end
        kept.append(s)
    report["segments"] = len(kept)
    report["yield"] = round(report["kept_words"] / max(1, report["ref_words"]), 4)
    return kept


def _regions(path: str, vad: SileroVad) -> list[tuple[float, float]]:
    probs = vad.probabilities(stream(path))
    opts = SegmentOptions(min_silence=0.2, min_speech=0.1)
    return [(s * FRAME_S, e * FRAME_S) for s, e in speech_regions(probs, opts)]


def align(recordings: Path, out: Path, options: AlignOptions | None = None) -> AlignResult:
    """Align every recording of a manifest that has a transcript; write segments and a report.

    Each finished recording goes to a journal beside `out` first, so an interrupted run resumes.
    """
    opts = options or AlignOptions()
    rules = Rules.load(opts.rules)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    recs = [r for r in read_recordings(recordings) if r.text or r.transcript]
    result = AlignResult(
        manifest=out, report=out.with_name(out.name.split(".")[0] + ".report.json")
    )
    model = opts.model or default_align_model()
    journal = Journal(journal_path(out), _journal_key(opts, model, rules))
    entries = journal.open().entries
    done = {r.id: entries[r.id] for r in recs if entries.get(r.id, {}).get("sha256") == r.sha256}
    todo = [r for r in recs if r.id not in done]
    if todo:
        topts = TranscribeOptions(
            model=model,
            formats=(),
            batch_size=opts.batch_size,
            device=opts.device,
            compute_type=opts.compute_type,
            decode=DecodeOptions(beam_size=opts.beam_size, word_timestamps=True),
            progress=False,
        )
        transcriber = Transcriber(topts)
        vad = SileroVad()
        aligner = None
        if opts.ctc_model:
            from asr.forced_align import CtcAligner

            aligner = CtcAligner(opts.ctc_model, device=opts.device)
        texts: dict[str, str] = {}
        turns: dict[str, Turns] = {}  # with --diarization: each recording's speaker turns
        bar = progress_bar("align", sum(r.duration for r in todo) / 3600, opts.progress)
        try:
            for rec in todo:  # an unreadable transcript fails its recording, before the model
                try:
                    texts[rec.id] = rec.reference_text() or ""
                    if opts.diarization:
                        turns[rec.id] = Turns(speaker_turns_for(opts.diarization, rec.id))
                except (TranscriptError, NoTurnsError) as e:
                    texts.pop(rec.id, None)
                    done[rec.id] = journal.add(rec.id, {"sha256": rec.sha256, "error": str(e)})
                    bar.update(rec.duration / 3600)
            by_key = {output_key(r.id): r for r in todo if r.id in texts}
            jobs = [Job(k, r.path, r.id, r.language) for k, r in by_key.items()]
            for fin in transcriber.run(jobs):
                rec = by_key[fin.key]
                if fin.error is not None:
                    entry = {"sha256": rec.sha256, "error": fin.error}
                else:
                    segs, report = align_recording(
                        rec,
                        fin.transcript,
                        texts[rec.id],
                        opts,
                        rules,
                        _regions(rec.path, vad),
                    )
                    if aligner is not None and segs:
                        segs = refine(rec, segs, aligner, opts, report)
                    if rec.id in turns:
                        segs = [
                            replace(s, speaker=speaker_at(turns[rec.id], s.start, s.end))
                            for s in segs
                        ]
                    entry = {
                        "sha256": rec.sha256,
                        "segments": [asdict(s) for s in segs],
                        "report": report,
                    }
                done[rec.id] = journal.add(rec.id, entry)
                bar.update(rec.duration / 3600)
        finally:
            bar.close()
            journal.close()

    reports = []
    segments: list[Segment] = []
    for rec in recs:
        entry = done.get(rec.id)
        if entry is None:
            continue
        if "error" in entry:
            result.errors.append(ErrorRecord(rec.path, entry["error"], "align", rec.id))
            continue
        result.recordings += 1
        segs = [Segment(**s) for s in entry["segments"]]
        segments.extend(segs)
        rep = entry["report"]
        reports.append(rep)
        result.ref_words += rep["ref_words"]
        result.kept_words += rep["kept_words"]
        result.dropped += len(rep["dropped"])
        result.kept_seconds += sum(s.duration for s in segs)
    result.segments = len(segments)
    write_manifest(out, segments)
    summary = {
        "recordings": result.recordings,
        "segments": result.segments,
        "ref_words": result.ref_words,
        "kept_words": result.kept_words,
        "word_yield": round(result.word_yield, 4),
        "kept_hours": round(result.kept_seconds / 3600, 4),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "errors": [asdict(e) for e in result.errors],
        "per_recording": reports,
    }
    with atomic_output(result.report) as f:
        json.dump(summary, f, ensure_ascii=False, indent=2)
    journal.remove()
    return result


def _journal_key(opts: AlignOptions, model: str | None, rules: Rules) -> dict:
    """What changes the segments of a recording: every option but the progress bar and the
    batch size (a recording's transcript does not depend on its batch), with the model as
    resolved and the rules as loaded."""
    key = {k: v for k, v in asdict(opts).items() if k not in ("progress", "batch_size")}
    key.update(model=model, rules=[[name, pat.pattern] for name, pat in rules.remove])
    return {"stage": "align", **key}
