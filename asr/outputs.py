"""The transcript data model of `asr transcribe` and its writers (JSON, WebVTT, SRT, text, TEI,
RTTM).

The transcription engine fills a Transcript (segments with word timings, the model, options and
software versions that made it, and the catalogue fields of the recording); the writers turn it
into the files an archive publishes: the full JSON record, subtitles for players, plain text for
search, and TEI P5 XML with a word-level timeline for library catalogues. Every file is written
atomically, so an interrupted run never leaves a half-written transcript behind.
"""

from __future__ import annotations

import json
import logging
import math
import re
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from asr.audio import MEDIA_EXTENSIONS
from asr.manifest import atomic_output

log = logging.getLogger(__name__)

LINE_WIDTH = 42  # characters per subtitle line (the usual broadcast guideline)
MAX_LINES = 2  # lines per subtitle cue

TEI_NS = "http://www.tei-c.org/ns/1.0"
XML_NS = "http://www.w3.org/XML/1998/namespace"


@dataclass
class Word:
    """One recognised word; `word` is as Whisper gives it, often with a leading space."""

    start: float
    end: float
    word: str
    probability: float
    speaker: str | None = None


@dataclass
class TranscriptSegment:
    """One decoded stretch of speech, in seconds from the start of the recording."""

    id: int
    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float | None = None
    words: list[Word] = field(default_factory=list)
    speaker: str | None = None
    language: str | None = None
    overlap: bool = False
    """Another speaker talks during most of this segment (diarized transcripts only)."""


@dataclass
class Transcript:
    """The transcript of one recording, with what is needed to reproduce and catalogue it."""

    recording_id: str
    path: str
    duration: float
    language: str | None
    language_probability: float | None
    segments: list[TranscriptSegment]
    model: dict[str, Any]
    options: dict[str, Any]
    software: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    speakers: list[str] = field(default_factory=list)
    """The speakers' labels in order of first appearance (diarized transcripts only)."""
    review: dict[str, Any] = field(default_factory=dict)
    """Corrected transcripts only (asr serve): {"state": "partly reviewed" or "reviewed",
    "revision": n, "changes": [{"revision", "author", "when", "what"}, ...]}."""

    @property
    def text(self) -> str:
        """The whole text: the segments' stripped texts joined by single spaces."""
        return " ".join(t for t in (s.text.strip() for s in self.segments) if t)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (words included) plus the joined `text`."""
        d = asdict(self)
        d["text"] = self.text
        if not self.review:  # never corrected: no review record
            del d["review"]
        if not self.speakers:  # not diarized: the record is as it always was
            del d["speakers"]
            for s in d["segments"]:
                del s["overlap"]
                for w in s["words"]:
                    del w["speaker"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Transcript:
        """The inverse of to_dict (the derived `text` is ignored)."""
        segments = []
        for s in d.get("segments", []):
            s = dict(s)
            s["words"] = [Word(**w) for w in s.get("words") or []]
            segments.append(TranscriptSegment(**s))
        return cls(
            recording_id=d["recording_id"],
            path=d["path"],
            duration=d["duration"],
            language=d.get("language"),
            language_probability=d.get("language_probability"),
            segments=segments,
            model=dict(d.get("model") or {}),
            options=dict(d.get("options") or {}),
            software=dict(d.get("software") or {}),
            metadata=dict(d.get("metadata") or {}),
            speakers=list(d.get("speakers") or []),
            review=dict(d.get("review") or {}),
        )


# ---------------------------------------------------------------------------------------------
# helpers


def _ms(seconds: float) -> int:
    """Seconds to whole milliseconds, clamped at 0; a non-finite time is an error."""
    if not math.isfinite(seconds):
        raise ValueError(f"time is not a finite number: {seconds!r}")
    return max(0, round(seconds * 1000))


def format_timestamp(seconds: float, sep: str = ".") -> str:
    """`HH:MM:SS.mmm` (sep="," gives SubRip's `HH:MM:SS,mmm`); negative times become 0."""
    ms = _ms(seconds)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{ms:03d}"


def _clean(text: str) -> str:
    """Text on one line: runs of whitespace (newlines included) collapsed to one space."""
    return " ".join(text.split())


def wrap_lines(text: str, width: int = LINE_WIDTH) -> list[str]:
    """Text as at most two lines: one if it fits in width, else two split at the best space.

    A text longer than two full lines still gets two lines (balanced, so both grow past width):
    one cue per segment keeps subtitles aligned with the segments' timing.
    """
    text = _clean(text)
    if len(text) <= width or " " not in text:
        return [text] if text else []
    best: tuple[int, int] | None = None  # (longer line's length, split index)
    for i, ch in enumerate(text):
        if ch == " ":
            cost = max(i, len(text) - i - 1)
            if best is None or cost < best[0]:
                best = (cost, i)
    assert best is not None
    i = best[1]
    return [text[:i], text[i + 1 :]]


def _cues(transcript: Transcript) -> list[tuple[int, int, str, str | None]]:
    """(start_ms, end_ms, text, speaker) of each segment with text, by start time, with
    end > start; speaker is None unless the transcript is diarized."""
    cues = []
    for seg in sorted(transcript.segments, key=lambda s: s.start):
        text = _clean(seg.text)
        if not text:
            continue
        start = _ms(seg.start)
        end = max(_ms(seg.end), start + 1)  # a zero or negative length becomes 1 ms
        cues.append((start, end, text, seg.speaker if transcript.speakers else None))
    return cues


def _turn_starts(cues: list[tuple[int, int, str, str | None]]) -> list[bool]:
    """Whether each cue starts a speaker's turn (its speaker differs from the cue before)."""
    return [c[3] is not None and (i == 0 or cues[i - 1][3] != c[3]) for i, c in enumerate(cues)]


def _escape_vtt(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------------------------------------
# writers


def write_json(transcript: Transcript, path: str | Path) -> None:
    """The full record (to_dict), UTF-8, indented."""
    with atomic_output(path) as f:
        json.dump(transcript.to_dict(), f, ensure_ascii=False, indent=2)
        f.write("\n")


def write_vtt(transcript: Transcript, path: str | Path) -> None:
    """WebVTT subtitles: one cue per segment with text, at most two lines, text escaped; in a
    diarized transcript each cue opens with its speaker's voice span (`<v SPEAKER_00>`, the
    W3C WebVTT cue voice, which OHMS and players show)."""
    cues = _cues(transcript)  # before opening, so that a bad time leaves nothing behind
    with atomic_output(path) as f:
        f.write("WEBVTT\n\n")
        note = [f"recording: {transcript.recording_id}"]
        if transcript.language:
            note.append(f"language: {transcript.language}")
        f.write("NOTE\n" + "\n".join(_clean(n).replace("-->", "->") for n in note) + "\n\n")
        for n, (start, end, text, speaker) in enumerate(cues, 1):
            lines = "\n".join(_escape_vtt(line) for line in wrap_lines(text))
            if speaker is not None:
                lines = f"<v {_escape_vtt(_clean(speaker))}>{lines}"
            f.write(
                f"{n}\n{format_timestamp(start / 1000)} --> {format_timestamp(end / 1000)}\n"
                f"{lines}\n\n"
            )


def write_srt(transcript: Transcript, path: str | Path) -> None:
    """SubRip subtitles: cues numbered from 1, one per segment with text, at most two lines;
    in a diarized transcript the cue that starts a speaker's turn has a line `[SPEAKER_00]`."""
    cues = _cues(transcript)
    with atomic_output(path) as f:
        for n, ((start, end, text, speaker), turn) in enumerate(zip(cues, _turn_starts(cues)), 1):
            lines = "\n".join(([f"[{_clean(speaker)}]"] if turn else []) + wrap_lines(text))
            f.write(
                f"{n}\n{format_timestamp(start / 1000, ',')} --> "
                f"{format_timestamp(end / 1000, ',')}\n{lines}\n\n"
            )


def write_txt(transcript: Transcript, path: str | Path) -> None:
    """Plain text, one segment with text per line; in a diarized transcript a line
    `SPEAKER_00:` opens each speaker's turn (after an empty line)."""
    lines = []
    if transcript.speakers:
        cues = _cues(transcript)
        for (_, _, text, speaker), turn in zip(cues, _turn_starts(cues)):
            if turn:
                lines += [""] if lines else []
                lines.append(f"{_clean(speaker)}:")
            lines.append(text)
    else:
        lines = [t for t in (_clean(s.text) for s in transcript.segments) if t]
    with atomic_output(path) as f:
        f.write("".join(line + "\n" for line in lines))


def _token(text: str) -> str:
    """A label as one RTTM field: whitespace becomes underscores."""
    return re.sub(r"\s+", "_", text)


def write_rttm(transcript: Transcript, path: str | Path) -> None:
    """RTTM (NIST's who-spoke-when lines, what diarization scorers read): a SPEAKER line per
    turn, in time order, a turn being a speaker's consecutive segments (less than 1 s apart);
    empty when the transcript is not diarized."""
    uri = transcript.recording_id
    if Path(uri).suffix.lower() in MEDIA_EXTENSIONS:  # as diarization tools name a recording
        uri = uri[: -len(Path(uri).suffix)]
    turns: list[list] = []  # [speaker, start ms, end ms]
    for seg in sorted(transcript.segments, key=lambda s: s.start):
        if seg.speaker is None or not _clean(seg.text):
            continue
        start, end = _ms(seg.start), _ms(seg.end)
        if turns and turns[-1][0] == seg.speaker and start - turns[-1][2] < 1000:
            turns[-1][2] = max(turns[-1][2], end)
        else:
            turns.append([seg.speaker, start, end])
    with atomic_output(path) as f:
        f.write(format_rttm(uri, ((who, a / 1000, b / 1000) for who, a, b in turns)))


def format_rttm(uri: str, turns: Iterable[tuple[str, float, float]]) -> str:
    """RTTM SPEAKER lines (`SPEAKER uri 1 onset duration <NA> <NA> speaker <NA> <NA>`) of
    (speaker, start, end) turns in seconds; empty turns left out; whitespace in the uri and the
    labels becomes underscores (a field holds none)."""
    uri = _token(uri) or "recording"
    return "".join(
        f"SPEAKER {uri} 1 {a:.3f} {b - a:.3f} <NA> <NA> {_token(who)} <NA> <NA>\n"
        for who, a, b in turns
        if round(b - a, 3) > 0
    )


# --- TEI ---------------------------------------------------------------------------------------

_XML_INVALID = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_NCNAME_BAD = re.compile(r"[^A-Za-z0-9._-]")
_VERSION = re.compile(r"\d+(\.\d+){0,2}")


def _x(value: Any) -> str:
    """A value as text XML 1.0 can hold (characters it forbids are dropped)."""
    return _XML_INVALID.sub("", str(value))


def _ncname(label: str, prefix: str) -> str:
    """A valid xml:id (NCName) made from a free label."""
    return prefix + _NCNAME_BAD.sub("_", label)


def _t(tag: str) -> str:
    # Unqualified names under a root xmlns="...TEI..." (ElementTree's default_namespace option
    # refuses unqualified attributes, and prefixed tei: elements would bother catalogue tools).
    return tag


def _sub(parent: ET.Element, tag: str, text: Any = None, **attrib: str) -> ET.Element:
    el = ET.SubElement(parent, _t(tag), {k: _x(v) for k, v in attrib.items()})
    if text is not None:
        el.text = _x(text)
    return el


def _seconds(ms: int) -> str:
    return f"{ms / 1000:.3f}"


def _media_target(path: str) -> str:
    p = Path(path)
    if "://" in path:
        return path
    return p.as_uri() if p.is_absolute() else urllib.parse.quote(path)


_MIXED = {_t(t) for t in ("u", "p", "desc", "title", "label", "language")}


def _indent(el: ET.Element, level: int = 0) -> None:
    """Pretty-print structure elements only: whitespace inside mixed content (u, p) is text."""
    if el.tag in _MIXED or not len(el):
        return
    pad = "\n" + "  " * (level + 1)
    el.text = pad
    for child in el:
        _indent(child, level + 1)
        child.tail = pad
    el[-1].tail = "\n" + "  " * level


def _application(parent: ET.Element, ident: str, version: Any, desc: str) -> None:
    m = _VERSION.match(str(version or ""))
    app = _sub(parent, "application", ident=_NCNAME_BAD.sub("_", ident), version=m[0] if m else "0")
    _sub(app, "label", ident)
    _sub(app, "desc", desc if m and m[0] == str(version) else f"{desc} (version {version})")


def _model_description(t: Transcript) -> str:
    model = t.model or {}
    name = model.get("name") or model.get("id") or "unknown"
    parts = [f"Automatic speech recognition with the model {name}"]
    if model.get("sha256"):
        parts.append(f" (sha256 {model['sha256']})")
    if t.software.get("ctranslate2"):
        parts.append(f" on CTranslate2 {t.software['ctranslate2']}")
    if t.options:
        opts = ", ".join(f"{k}={v}" for k, v in sorted(t.options.items()))
        parts.append(f"; options: {opts}")
    return "".join(parts) + "."


def tei_tree(transcript: Transcript) -> ET.Element:
    """The TEI P5 document of a transcript, with a timeline point for every segment and word."""
    t, meta = transcript, transcript.metadata or {}
    segs = sorted((s for s in t.segments if _clean(s.text)), key=lambda s: s.start)

    # Timeline points: one per distinct time (ms), numbered T1.. in time order after T0.
    times: set[int] = set()
    for s in segs:
        start = _ms(s.start)
        times.update((start, max(_ms(s.end), start + 1)))
        for w in s.words:
            if _clean(w.word):
                ws = _ms(w.start)
                times.update((ws, max(_ms(w.end), ws)))
    when_id = {ms: f"T{i}" for i, ms in enumerate(sorted(times), 1)}

    speakers: dict[str, str] = {}
    for s in segs:
        if s.speaker is not None and s.speaker not in speakers:
            xid = base = _ncname(s.speaker, "spk-")
            n = 2
            while xid in speakers.values():
                xid, n = f"{base}-{n}", n + 1
            speakers[s.speaker] = xid

    root = ET.Element(_t("TEI"), {"xmlns": TEI_NS})
    if t.language:
        root.set(f"{{{XML_NS}}}lang", _x(t.language))
    header = _sub(root, "teiHeader")
    file_desc = _sub(header, "fileDesc")
    _sub(_sub(file_desc, "titleStmt"), "title", meta.get("title") or t.recording_id)
    pub = _sub(file_desc, "publicationStmt")
    reviewed = t.review.get("state") in ("partly reviewed", "reviewed")
    kind = "Automatic transcript, corrected by hand," if reviewed else "Automatic transcript"
    p = _sub(pub, "p", f"{kind} of recording ")
    _sub(p, "idno", t.recording_id, type="recording").tail = "."
    if meta.get("rights"):
        _sub(pub, "p", f"Rights: {meta['rights']}")
    recording = _sub(
        _sub(_sub(file_desc, "sourceDesc"), "recordingStmt"),
        "recording",
        type="audio",
        dur=f"PT{_seconds(_ms(t.duration)).rstrip('0').rstrip('.')}S",
    )
    p = _sub(recording, "p", "Media file: ")
    _sub(p, "ref", t.path, target=_media_target(t.path))
    for key, label in (("collection", "Collection"), ("date", "Date")):
        if meta.get(key):
            _sub(recording, "p", f"{label}: {meta[key]}")

    apps = _sub(_sub(header, "encodingDesc"), "appInfo")
    _application(apps, "archive-asr", t.software.get("archive-asr", "0"), _model_description(t))
    for name, version in t.software.items():
        if name != "archive-asr":
            _application(apps, name, version, f"{name} {version}")

    profile = _sub(header, "profileDesc")
    if t.language:
        language = _sub(_sub(profile, "langUsage"), "language", t.language, ident=t.language)
        if t.language_probability is not None:
            language.set("usage", str(round(100 * t.language_probability)))
    if speakers:
        people = _sub(_sub(profile, "particDesc"), "listPerson")
        for label, xid in speakers.items():
            person = _sub(people, "person", n=label)
            person.set(f"{{{XML_NS}}}id", xid)

    if t.review:  # TEI's record of the corrections: who changed what, when
        changes = _sub(header, "revisionDesc", status=_x(t.review.get("state", "")))
        for c in reversed(t.review.get("changes", [])):  # most recent first, as TEI advises
            change = _sub(changes, "change", c.get("what", ""), when=_x(c.get("when", "")))
            change.set("who", _x(c.get("author", "")))
            change.set("n", str(c.get("revision", "")))

    body = _sub(_sub(root, "text"), "body")
    timeline = _sub(body, "timeline", unit="s", origin="#T0")
    _sub(timeline, "when", absolute="00:00:00").set(f"{{{XML_NS}}}id", "T0")
    for ms, xid in when_id.items():
        when = _sub(timeline, "when")
        when.set(f"{{{XML_NS}}}id", xid)
        when.set("interval", _seconds(ms))
        when.set("since", "#T0")

    for n, s in enumerate(segs, 1):
        start = _ms(s.start)
        end = max(_ms(s.end), start + 1)
        u = _sub(body, "u", n=str(s.id), start=f"#{when_id[start]}", end=f"#{when_id[end]}")
        u.set(f"{{{XML_NS}}}id", f"U{n}")
        if s.speaker is not None:
            u.set("who", f"#{speakers[s.speaker]}")
        if s.overlap:  # TEI's transition: this utterance overlaps another speaker's
            u.set("trans", "overlap")
        if s.language and s.language != t.language:  # a stretch in another language
            u.set(f"{{{XML_NS}}}lang", _x(s.language))
        words = [w for w in s.words if _clean(w.word)]
        if not words:
            u.text = _x(_clean(s.text))
            continue
        for i, w in enumerate(words):
            ws = _ms(w.start)
            we = max(_ms(w.end), ws)
            el = _sub(u, "w", _clean(w.word), synch=f"#{when_id[ws]} #{when_id[we]}")
            el.set("cert", f"{min(max(w.probability, 0.0), 1.0):.3f}")
            if i < len(words) - 1:
                el.tail = " "
    if not segs:
        _sub(body, "gap", reason="no-speech-recognised")
    _indent(root)
    return root


def write_tei(transcript: Transcript, path: str | Path) -> None:
    """TEI P5 XML: header for catalogues, a timeline and one <u> per segment, words as <w>."""
    xml = ET.tostring(tei_tree(transcript), encoding="unicode")
    with atomic_output(path) as f:
        f.write('<?xml version="1.0" encoding="UTF-8"?>\n')
        f.write(xml)
        f.write("\n")


# ---------------------------------------------------------------------------------------------

Writer = Callable[[Transcript, "str | Path"], None]

FORMATS: dict[str, Writer] = {
    "json": write_json,
    "vtt": write_vtt,
    "srt": write_srt,
    "txt": write_txt,
    "tei": write_tei,
    "rttm": write_rttm,
}

EXTENSIONS: dict[str, str] = {
    "json": ".json",
    "vtt": ".vtt",
    "srt": ".srt",
    "txt": ".txt",
    "tei": ".tei.xml",
    "rttm": ".rttm",
}


def write_outputs(
    transcript: Transcript, out_base: Path, formats: Iterable[str]
) -> dict[str, Path]:
    """Write each format to out_base + its extension; return {format: path}.

    Unknown formats raise ValueError before anything is written.
    """
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(
            f"unknown output format(s): {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(FORMATS)}"
        )
    out_base = Path(out_base)
    out_base.parent.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for fmt in formats:
        path = out_base.with_name(out_base.name + EXTENSIONS[fmt])
        FORMATS[fmt](transcript, path)
        log.debug("wrote %s transcript of %s to %s", fmt, transcript.recording_id, path)
        written[fmt] = path
    return written
