"""Speaker turns laid onto transcripts, and every output format carrying them."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import srt
import webvtt
from lxml import etree

from asr.outputs import Transcript, TranscriptSegment, Word, write_outputs
from asr.speakers import Turns, assign_speakers, speaker_at

TEI = "{http://www.tei-c.org/ns/1.0}"
XML_ID = "{http://www.w3.org/XML/1998/namespace}id"


@dataclass
class Turn:
    start: float
    end: float
    speaker: str


def _transcript() -> Transcript:
    """Two segments: the first spoken by two people (the turn changes after 'you'), the second
    by the first of them again; 'yes' is said while the other still talks."""

    def words(spec):
        return [Word(s, e, w, 0.9) for s, e, w in spec]

    first = words([(0.5, 0.9, " How"), (0.9, 1.2, " are"), (1.2, 1.6, " you?")])
    first += words([(2.1, 2.5, " Fine,"), (2.5, 2.9, " thanks.")])
    second = words(
        [(4.0, 4.3, " Good"), (4.3, 4.6, " to"), (4.6, 5.0, " hear."), (5.2, 5.5, " Yes")]
    )
    segs = [
        TranscriptSegment(0, 0.4, 3.0, "".join(w.word for w in first), -0.2, 0.01, 1.1, first),
        TranscriptSegment(1, 3.9, 5.6, "".join(w.word for w in second), -0.3, 0.02, 1.2, second),
    ]
    return Transcript("talk", "/a/talk.wav", 6.0, "en", 0.99, segs, {"name": "m"}, {}, {})


TURNS = [
    Turn(0.3, 1.8, "spk7"),
    Turn(2.0, 3.0, "spk2"),
    Turn(3.8, 5.6, "spk7"),
    Turn(5.1, 5.9, "spk2"),
]


def test_words_take_the_speaker_whose_turn_covers_them_most():
    assert speaker_at(TURNS, 0.5, 0.9) == "spk7"
    assert speaker_at(TURNS, 2.1, 2.5) == "spk2"
    assert speaker_at(TURNS, 1.92, 1.98) == "spk2"  # in no turn: the nearest one
    assert speaker_at(TURNS, 1.82, 1.88) == "spk7"
    assert speaker_at([], 0, 1) is None


def _speaker_by_scanning(turns, start, end):
    """speaker_at's rule read plainly, every turn looked at: what the bisecting index must give."""
    share, since = {}, {}
    for t in turns:
        o = max(0.0, min(end, t.end) - max(start, t.start))
        if o > 0:
            share[t.speaker] = share.get(t.speaker, 0.0) + o
            since[t.speaker] = min(since.get(t.speaker, t.start), t.start)
    if share:
        return max(share, key=lambda s: (round(share[s], 6), -since[s], s))
    mid = (start + end) / 2

    def distance(t):
        return 0.0 if t.start <= mid <= t.end else min(abs(mid - t.start), abs(mid - t.end))

    return min(turns, key=lambda t: (distance(t), t.speaker)).speaker


def test_speaker_lookup_by_bisection_equals_scanning_every_turn():
    rng = random.Random(13)
    for _ in range(200):
        turns, t = [], 0.0
        for _ in range(rng.randint(1, 30)):  # turns with gaps, overlaps and one long turn
            t += rng.uniform(-1.0, 3.0)
            turns.append(
                Turn(
                    round(max(0.0, t), 2),
                    round(max(0.0, t) + rng.uniform(0.1, 8), 2),
                    rng.choice("abc"),
                )
            )
        index = Turns(turns)
        for _ in range(30):
            a = rng.uniform(-2, t + 10)
            b = a + rng.uniform(0.001, 2)
            assert speaker_at(index, a, b) == _speaker_by_scanning(turns, a, b), (turns, a, b)


def test_segments_are_cut_where_the_speaker_changes_and_labelled_by_first_appearance():
    t = assign_speakers(_transcript(), TURNS)
    assert t.speakers == ["SPEAKER_00", "SPEAKER_01"]
    got = [(s.id, s.speaker, s.text.strip(), s.start, s.end) for s in t.segments]
    assert got == [
        (0, "SPEAKER_00", "How are you?", 0.4, 1.6),
        (1, "SPEAKER_01", "Fine, thanks.", 2.1, 3.0),
        (2, "SPEAKER_00", "Good to hear. Yes", 3.9, 5.6),
    ]
    for s in t.segments:  # no segment straddles a change of speaker
        assert {w.speaker for w in s.words} == {s.speaker}
    assert [s.overlap for s in t.segments] == [False, False, False]
    # 'Yes' (5.2-5.5) lies in both turns alike: it stays with the speaker already talking
    t2 = assign_speakers(_transcript(), [Turn(0, 6, "a"), Turn(5.0, 6.0, "b")])
    assert t2.speakers == ["SPEAKER_00"] and [s.overlap for s in t2.segments] == [False, False]
    t3 = assign_speakers(_transcript(), [Turn(0, 6, "a"), Turn(0.3, 3.0, "b")])
    assert t3.segments[0].overlap  # another speaker during the whole first stretch


def test_catalogue_names_label_speakers_in_order_of_first_appearance():
    t = assign_speakers(_transcript(), TURNS, names=["Ingrid Berg", "Per Lund"])
    assert t.speakers == ["Ingrid Berg", "Per Lund"]
    assert [s.speaker for s in t.segments] == ["Ingrid Berg", "Per Lund", "Ingrid Berg"]
    short = assign_speakers(_transcript(), TURNS, names=["Ingrid Berg"])
    assert short.speakers == ["Ingrid Berg", "SPEAKER_01"]


def test_every_format_carries_the_speakers(tmp_path):
    t = assign_speakers(_transcript(), TURNS, names=["Ingrid <Berg>", "Per Lund"])
    formats = ("json", "vtt", "srt", "txt", "tei", "rttm")
    paths = write_outputs(t, tmp_path / "talk", formats)
    doc = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert doc["speakers"] == ["Ingrid <Berg>", "Per Lund"]
    assert [s["speaker"] for s in doc["segments"]] == ["Ingrid <Berg>", "Per Lund", "Ingrid <Berg>"]
    assert doc["segments"][1]["words"][0]["speaker"] == "Per Lund"
    assert Transcript.from_dict(doc) == t

    captions = webvtt.read(str(paths["vtt"]))
    assert [c.voice for c in captions] == ["Ingrid &lt;Berg&gt;", "Per Lund", "Ingrid &lt;Berg&gt;"]
    assert captions[1].text.endswith("Fine, thanks.")

    subs = list(srt.parse(paths["srt"].read_text(encoding="utf-8")))
    assert subs[0].content.splitlines()[0] == "[Ingrid <Berg>]"
    assert subs[1].content.splitlines() == ["[Per Lund]", "Fine, thanks."]

    lines = paths["txt"].read_text(encoding="utf-8").splitlines()
    assert lines == [
        "Ingrid <Berg>:",
        "How are you?",
        "",
        "Per Lund:",
        "Fine, thanks.",
        "",
        "Ingrid <Berg>:",
        "Good to hear. Yes",
    ]

    tei = etree.parse(str(paths["tei"]))
    people = {p.get(XML_ID): p.get("n") for p in tei.iter(f"{TEI}person")}
    assert sorted(people.values()) == ["Ingrid <Berg>", "Per Lund"]
    whos = [u.get("who") for u in tei.iter(f"{TEI}u")]
    assert all(w[1:] in people for w in whos)  # every who points to a person of the header
    assert [people[w[1:]] for w in whos] == ["Ingrid <Berg>", "Per Lund", "Ingrid <Berg>"]

    rttm = [line.split() for line in paths["rttm"].read_text().splitlines()]
    assert [(r[0], r[1], r[7]) for r in rttm] == [
        ("SPEAKER", "talk", "Ingrid_<Berg>"),
        ("SPEAKER", "talk", "Per_Lund"),
        ("SPEAKER", "talk", "Ingrid_<Berg>"),
    ]
    assert [(float(r[3]), float(r[4])) for r in rttm] == [(0.4, 1.2), (2.1, 0.9), (3.9, 1.7)]


def test_a_transcript_without_speakers_is_written_as_before(tmp_path):
    t = _transcript()
    paths = write_outputs(t, tmp_path / "plain", ("json", "vtt", "txt", "rttm"))
    doc = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert "speakers" not in doc
    assert all("speaker" not in w for s in doc["segments"] for w in s["words"])
    assert all("overlap" not in s for s in doc["segments"])
    assert [c.voice for c in webvtt.read(str(paths["vtt"]))] == [None, None]
    assert paths["txt"].read_text(encoding="utf-8").splitlines() == [
        "How are you? Fine, thanks.",
        "Good to hear. Yes",
    ]
    assert paths["rttm"].read_text() == ""


def test_rttm_holds_turns_not_segments(tmp_path):
    """A speaker's consecutive segments less than 1 s apart are one RTTM turn (a zero-length
    segment at 5.9 s only extends it)."""
    t = assign_speakers(_transcript(), [Turn(0.0, 6.0, "a")])
    t.segments.append(TranscriptSegment(2, 5.9, 5.9, " Mr.", -0.1, 0.0, 1.0, speaker="SPEAKER_00"))
    path = write_outputs(t, tmp_path / "one", ("rttm",))["rttm"]
    rows = [line.split() for line in path.read_text().splitlines()]
    assert [(float(r[3]), float(r[4]), r[7]) for r in rows] == [(0.4, 5.5, "SPEAKER_00")]
