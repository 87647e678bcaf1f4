"""The transcript writers, checked by reading their files back with independent parsers."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
import srt
import webvtt
from lxml import etree

from asr.outputs import (
    EXTENSIONS,
    FORMATS,
    Transcript,
    TranscriptSegment,
    Word,
    format_timestamp,
    write_json,
    write_outputs,
    write_srt,
    write_tei,
    write_txt,
    write_vtt,
)

TEI = "{http://www.tei-c.org/ns/1.0}"
XML_ID = "{http://www.w3.org/XML/1998/namespace}id"
NCNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]*$")

LONG = (
    " Im zweiten Teil des Interviews erzählt die Zeitzeugin ausführlich von der Arbeit im "
    "Rundfunkarchiv und den Bändern aus den Fünfzigerjahren."
)


def words(text: str, start: float, end: float) -> list[Word]:
    """Whisper-like words (leading spaces) spread evenly over [start, end]."""
    tokens = [" " + t for t in text.split()]
    step = (end - start) / len(tokens)
    return [
        Word(round(start + i * step, 3), round(start + (i + 1) * step, 3), tok, 0.9 - 0.01 * i)
        for i, tok in enumerate(tokens)
    ]


def make_transcript() -> Transcript:
    segments = [
        TranscriptSegment(
            0, 0.0, 2.48, " Grüße & <Überblick> zum Archiv.", -0.21, 0.01, 1.2,
            words(" Grüße & <Überblick> zum Archiv.", 0.0, 2.48), "SPEAKER_00",
        ),
        TranscriptSegment(1, 2.48, 9.9, LONG, -0.35, 0.02, 1.6, [], "SPEAKER 01"),
        TranscriptSegment(2, 9.9, 10.4, "  ", -1.2, 0.8, None, [], None),
        TranscriptSegment(
            3, 3725.5, 3731.25, " Das Gespräch endet um 1 Uhr 2 — »danke«.", -0.18, 0.0, 1.1,
            words(" Das Gespräch endet um 1 Uhr 2 — »danke«.", 3725.5, 3731.25),
        ),
    ]  # fmt: skip
    return Transcript(
        recording_id="rec-0042",
        path="/archive/tapes/Band 42 (1957).flac",
        duration=3731.9,
        language="de",
        language_probability=0.97,
        segments=segments,
        model={"id": "whisper-large-v3-ct2", "sha256": "ab" * 32},
        options={"beam_size": 5, "vad_filter": True},
        software={"archive-asr": "0.1.0", "ctranslate2": "4.5.0", "faster-whisper": "1.1.0"},
        metadata={
            "title": "Gespräch über das Rundfunkarchiv",
            "date": "1957-03-01",
            "collection": "Zeitzeugen",
            "rights": "CC BY 4.0",
        },
    )


def empty_transcript() -> Transcript:
    return Transcript("rec-empty", "empty.wav", 0.0, None, None, [], {}, {}, {})


@pytest.fixture
def transcript() -> Transcript:
    return make_transcript()


def spoken(t: Transcript) -> list[TranscriptSegment]:
    return [s for s in t.segments if s.text.strip()]


def seconds(ts: str) -> float:
    h, m, s = ts.replace(",", ".").split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_format_timestamp() -> None:
    assert format_timestamp(3725.5) == "01:02:05.500"
    assert format_timestamp(3725.5, ",") == "01:02:05,500"
    assert format_timestamp(0) == "00:00:00.000"
    assert format_timestamp(59.9996) == "00:01:00.000"
    assert format_timestamp(-1.0) == "00:00:00.000"
    assert format_timestamp(360000.25) == "100:00:00.250"
    with pytest.raises(ValueError):
        format_timestamp(float("nan"))


def test_text_joins_segments(transcript: Transcript) -> None:
    assert transcript.text == " ".join(s.text.strip() for s in spoken(transcript))
    assert empty_transcript().text == ""


def test_json_round_trip(transcript: Transcript, tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    write_json(transcript, path)
    raw = path.read_text(encoding="utf-8")
    assert "Grüße & <Überblick>" in raw  # not \u-escaped
    data = json.loads(raw)
    assert data["text"] == transcript.text
    assert data["segments"][0]["words"][0] == {
        "start": 0.0, "end": 0.496, "word": " Grüße", "probability": 0.9,
    }  # fmt: skip
    back = Transcript.from_dict(data)
    assert back == transcript
    assert isinstance(back.segments[0].words[0], Word)
    assert Transcript.from_dict(empty_transcript().to_dict()) == empty_transcript()


def test_vtt_reads_back(transcript: Transcript, tmp_path: Path) -> None:
    path = tmp_path / "t.vtt"
    write_vtt(transcript, path)
    raw = path.read_text(encoding="utf-8")
    assert raw.startswith("WEBVTT\n\n")
    assert "&amp; &lt;Überblick&gt;" in raw
    captions = list(webvtt.read(str(path)))
    segs = spoken(transcript)
    assert len(captions) == len(segs) == 3
    for cap, seg in zip(captions, segs):
        assert abs(seconds(cap.start) - seg.start) <= 0.001
        assert abs(seconds(cap.end) - seg.end) <= 0.001
        lines = cap.raw_text.split("\n")
        assert 1 <= len(lines) <= 2
        assert html.unescape(" ".join(lines)) == seg.text.strip()
        if len(seg.text.strip()) <= 84:
            assert all(len(html.unescape(line)) <= 42 for line in lines)
    assert len(captions[1].raw_text.split("\n")) == 2  # the long segment is wrapped
    assert seconds(captions[2].start) == 3725.5


def test_srt_reads_back(transcript: Transcript, tmp_path: Path) -> None:
    path = tmp_path / "t.srt"
    write_srt(transcript, path)
    subs = list(srt.parse(path.read_text(encoding="utf-8")))
    segs = spoken(transcript)
    assert [s.index for s in subs] == [1, 2, 3]
    for sub, seg in zip(subs, segs):
        assert abs(sub.start.total_seconds() - seg.start) <= 0.001
        assert abs(sub.end.total_seconds() - seg.end) <= 0.001
        lines = sub.content.split("\n")
        assert 1 <= len(lines) <= 2
        assert " ".join(lines) == seg.text.strip()
    assert "01:02:05,500 --> 01:02:11,250" in path.read_text(encoding="utf-8")


def test_subtitles_fix_bad_times(tmp_path: Path) -> None:
    t = empty_transcript()
    t.segments = [
        TranscriptSegment(0, 5.0, 5.0, " zero length", -0.1, 0.0),
        TranscriptSegment(1, 7.0, 6.5, " ends before it starts", -0.1, 0.0),
        TranscriptSegment(2, 6.0, 6.8, " out of order", -0.1, 0.0),
    ]
    write_srt(t, tmp_path / "t.srt")
    write_vtt(t, tmp_path / "t.vtt")
    subs = list(srt.parse((tmp_path / "t.srt").read_text(encoding="utf-8")))
    caps = list(webvtt.read(str(tmp_path / "t.vtt")))
    for starts, ends in (
        ([s.start.total_seconds() for s in subs], [s.end.total_seconds() for s in subs]),
        ([seconds(c.start) for c in caps], [seconds(c.end) for c in caps]),
    ):
        assert starts == sorted(starts) == [5.0, 6.0, 7.0]
        assert all(e > s for s, e in zip(starts, ends))


def test_txt_lines(transcript: Transcript, tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    write_txt(transcript, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines == [s.text.strip() for s in spoken(transcript)]
    write_txt(empty_transcript(), path)
    assert path.read_text(encoding="utf-8") == ""


def test_tei(transcript: Transcript, tmp_path: Path) -> None:
    path = tmp_path / "t.tei.xml"
    write_tei(transcript, path)
    root = etree.parse(str(path)).getroot()
    assert root.tag == f"{TEI}TEI"
    ns = {"tei": TEI[1:-1]}

    assert root.findtext("tei:teiHeader//tei:titleStmt/tei:title", namespaces=ns) == (
        "Gespräch über das Rundfunkarchiv"
    )
    assert "CC BY 4.0" in "".join(root.find("tei:teiHeader//tei:publicationStmt", ns).itertext())
    rec = root.find("tei:teiHeader//tei:sourceDesc/tei:recordingStmt/tei:recording", ns)
    assert rec.get("type") == "audio" and rec.get("dur") == "PT3731.9S"
    assert rec.find(".//tei:ref", ns).text == transcript.path
    assert root.find("tei:teiHeader//tei:langUsage/tei:language", ns).get("ident") == "de"
    app = root.find("tei:teiHeader//tei:appInfo/tei:application[@ident='archive-asr']", ns)
    assert app.get("version") == "0.1.0"
    assert "whisper-large-v3-ct2" in app.findtext("tei:desc", namespaces=ns)

    ids = [el.get(XML_ID) for el in root.iter() if el.get(XML_ID) is not None]
    assert len(ids) == len(set(ids)) and all(NCNAME.match(i) for i in ids)
    timeline = root.find("tei:text/tei:body/tei:timeline", ns)
    assert timeline.get("unit") == "s" and timeline.get("origin") == "#T0"
    whens = {w.get(XML_ID): w for w in timeline.findall("tei:when", ns)}
    assert whens["T0"].get("absolute") == "00:00:00"

    def at(ref: str) -> float:
        assert ref.startswith("#") and ref[1:] in whens, ref
        when = whens[ref[1:]]
        assert when.get("since") == "#T0"
        return float(when.get("interval"))

    people = {p.get(XML_ID): p.get("n") for p in root.iterfind(".//tei:person", ns)}
    us = root.findall("tei:text/tei:body/tei:u", ns)
    segs = spoken(transcript)
    assert len(us) == len(segs)
    for u, seg in zip(us, segs):
        assert abs(at(u.get("start")) - seg.start) <= 0.001
        assert abs(at(u.get("end")) - seg.end) <= 0.001
        assert "".join(u.itertext()) == seg.text.strip()
        if seg.speaker is None:
            assert u.get("who") is None
        else:
            assert people[u.get("who")[1:]] == seg.speaker
        ws = u.findall("tei:w", ns)
        assert [w.text for w in ws] == [w.word.strip() for w in seg.words]
        for w_el, word in zip(ws, seg.words):
            start, end = w_el.get("synch").split()
            assert abs(at(start) - word.start) <= 0.001
            assert abs(at(end) - word.end) <= 0.001
    assert len(us[0].findall("tei:w", ns)) == 5 and not us[1].findall("tei:w", ns)


def test_tei_empty_transcript(tmp_path: Path) -> None:
    path = tmp_path / "e.tei.xml"
    write_tei(empty_transcript(), path)
    root = etree.parse(str(path)).getroot()  # raises if not well-formed
    ns = {"tei": TEI[1:-1]}
    assert root.tag == f"{TEI}TEI"
    assert root.findtext(".//tei:titleStmt/tei:title", namespaces=ns) == "rec-empty"
    assert root.findall(".//tei:u", ns) == []
    assert [w.get(XML_ID) for w in root.iterfind(".//tei:when", ns)] == ["T0"]


def test_write_outputs(transcript: Transcript, tmp_path: Path) -> None:
    base = tmp_path / "out" / "sub" / "rec-0042.v1"
    written = write_outputs(transcript, base, ["tei", "srt", "json"])
    assert written == {
        "tei": tmp_path / "out/sub/rec-0042.v1.tei.xml",
        "srt": tmp_path / "out/sub/rec-0042.v1.srt",
        "json": tmp_path / "out/sub/rec-0042.v1.json",
    }
    assert sorted(p.name for p in base.parent.iterdir()) == [
        "rec-0042.v1.json", "rec-0042.v1.srt", "rec-0042.v1.tei.xml",
    ]  # fmt: skip
    assert set(FORMATS) == set(EXTENSIONS)
    all_written = write_outputs(transcript, tmp_path / "all" / "r", list(FORMATS))
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == sorted(
        "r" + ext for ext in EXTENSIONS.values()
    )
    assert all(p.stat().st_size > 0 for p in all_written.values())


def test_write_outputs_unknown_format(transcript: Transcript, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'docx'"):
        write_outputs(transcript, tmp_path / "x" / "r", ["json", "docx"])
    assert not (tmp_path / "x" / "r.json").exists()


def test_failed_write_keeps_old_file(transcript: Transcript, tmp_path: Path) -> None:
    path = tmp_path / "t.srt"
    write_srt(transcript, path)
    before = path.read_bytes()
    transcript.segments[0].end = float("nan")
    for writer, name in ((write_srt, "t.srt"), (write_vtt, "t.vtt"), (write_tei, "t.tei.xml")):
        with pytest.raises(ValueError):
            writer(transcript, tmp_path / name)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.srt"]
