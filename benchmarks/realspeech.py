"""The real speech in ../shared/data/realspeech, as benchmarks and tests use it."""

from __future__ import annotations

import csv
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REALSPEECH = Path(os.environ.get("ASR_REALSPEECH", ROOT.parent / "shared" / "data" / "realspeech"))
DIARIZATION = Path(
    os.environ.get("ASR_DIARIZATION", ROOT.parent / "shared" / "data" / "diarization")
)
"""Real multi-speaker speech with who-spoke-when references (AMI excerpts, a telephone call)."""


def write_catalogue(realspeech: Path, out: Path) -> Path:
    """Its catalogue.csv in our catalogue format: id, path, language, rights, text or transcript.

    Its `transcript` column holds the text of an utterance but the path of a long recording's
    text file; ours keeps the two apart (`text` inline, `transcript` a file).
    """
    with open(realspeech / "catalogue.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "language", "rights", "collection", "text", "transcript"])
        for r in rows:
            longform = r["kind"] == "longform"
            w.writerow(
                [
                    r["path"],
                    str(realspeech / r["path"]),
                    r["language"],
                    r["license"],
                    r["path"].split("/")[0],
                    "" if longform else r["transcript"],
                    str(realspeech / r["transcript"]) if longform else "",
                ]
            )
    return out


def whole_recording_segments(recordings: Path, max_duration: float | None = None) -> list:
    """One Segment per recording with a transcript: the whole recording, its text, and that
    text lower-cased with punctuation taken out (training text for the recipes)."""
    from asr.manifest import Segment, read_recordings

    return [
        Segment(
            id=f"{r.id}_all",
            recording_id=r.id,
            start=0.0,
            end=r.duration,
            text=r.text,
            text_normalized=" ".join(
                "".join(c if c.isalnum() or c == "'" else " " for c in r.text.lower()).split()
            ),
            text_source="reference",
            language=r.language,
        )
        for r in read_recordings(recordings)
        if r.text and (max_duration is None or r.duration <= max_duration)
    ]
