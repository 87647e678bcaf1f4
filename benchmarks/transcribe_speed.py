"""`asr transcribe` against faster-whisper, same model, same audio, same machine, one script.

Three ways to transcribe each collection:
  1. faster-whisper WhisperModel.transcribe, one file after another (sequential);
  2. faster-whisper BatchedInferencePipeline, batch 8 (VAD chunks of one file batched);
  3. `asr transcribe` (the API call behind the command, decoding workers included).
Collections: the English utterances of ../shared/data/realspeech as many short files, and longer
recordings built by joining those utterances (0.5 s pauses). Prints RTFx (audio seconds per wall
second) and corpus WER after Whisper's English normalizer, and the ratios against (2).
With --long-hours H, also the peak RSS of `asr transcribe` on one H-hour recording.

    python benchmarks/transcribe_speed.py [--device cpu] [--compute-type int8] [--beam-size 5]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from asr.audio import load  # noqa: E402
from asr.engine.transcribe import TranscribeOptions, transcribe  # noqa: E402
from asr.engine.types import DecodeOptions  # noqa: E402
from asr.models import resolve_model  # noqa: E402
from benchmarks.measure import run_measured  # noqa: E402
from benchmarks.realspeech import REALSPEECH  # noqa: E402

log = logging.getLogger("bench")


def english_utterances() -> list[tuple[Path, str]]:
    with open(REALSPEECH / "catalogue.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["language"] == "en" and r["kind"] == "utterance"]
    return [(REALSPEECH / r["path"], r["transcript"]) for r in rows]


def long_recordings(utts, out: Path, n: int, minutes: float = 0) -> list[tuple[Path, str]]:
    """n recordings, each the concatenation of every n-th utterance with 0.5 s pauses, taken
    again in turn until the recording lasts `minutes` (0: each utterance once)."""
    out.mkdir(parents=True, exist_ok=True)
    clips = [(np.concatenate([load(p), np.zeros(8000, np.float32)]), t) for p, t in utts]
    recs = []
    for k in range(n):
        part, total, i = [], 0, 0
        share = clips[k::n]
        while i < len(share) or total < minutes * 60 * 16000:
            part.append(share[i % len(share)])
            total += part[-1][0].size
            i += 1
        audio = np.concatenate([a for a, _ in part])
        path = out / f"long{k}.flac"
        sf.write(path, audio, 16000)
        recs.append((path, " ".join(t for _, t in part)))
    return recs


def wer(refs: list[str], hyps: list[str]) -> float:
    from whisper_normalizer.english import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    pairs = [(norm(r), norm(h)) for r, h in zip(refs, hyps)]
    pairs = [(r, h) for r, h in pairs if r.strip()]
    return 100 * jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])


def run_faster_whisper(items, model_path, args, batched: bool) -> tuple[float, list[str]]:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    model = WhisperModel(
        model_path, device=args.device, compute_type=args.compute_type, cpu_threads=args.threads
    )
    runner = BatchedInferencePipeline(model) if batched else model
    kw = {"batch_size": 8} if batched else {}
    kw["word_timestamps"] = args.peer_words
    runner.transcribe(str(items[0][0]), beam_size=args.beam_size, language="en", **kw)  # warm-up
    t0 = time.perf_counter()
    hyps = []
    for path, _ in items:
        segs, _ = runner.transcribe(str(path), beam_size=args.beam_size, language="en", **kw)
        hyps.append(" ".join(s.text for s in segs))
    return time.perf_counter() - t0, hyps


def run_asr(items, args, out: Path) -> tuple[float, list[str]]:
    opts = TranscribeOptions(
        language="en",
        formats=("json",),
        batch_size=8,
        device=args.device,
        compute_type=args.compute_type,
        cpu_threads=args.threads,
        decode=DecodeOptions(beam_size=args.beam_size, word_timestamps=not args.no_words),
        progress=False,
    )
    t0 = time.perf_counter()
    r = transcribe([str(p) for p, _ in items], out, opts)
    wall = time.perf_counter() - t0
    assert r.failed == 0, r.failures
    hyps = [json.loads((out / f"{p.stem}.json").read_text())["text"] for p, _ in items]
    return wall, hyps


def peak_rss_long(hours: float, args, work: Path) -> dict:
    """Peak RSS (largest process) of `asr transcribe` on one recording of `hours` hours."""
    utts = english_utterances()
    clips = [np.concatenate([load(p), np.zeros(8000, np.float32)]) for p, _ in utts]
    path = work / "very_long.flac"
    target, written = int(hours * 3600 * 16000), 0
    with sf.SoundFile(path, "w", samplerate=16000, channels=1, format="FLAC") as f:
        while written < target:
            for c in clips:
                c = c[: target - written]
                f.write(c)
                written += c.size
                if written >= target:
                    break
    cmd = [sys.executable, "-m", "asr", "transcribe", str(path), "--out", str(work / "vl_out")]
    cmd += ["--language", "en", "--formats", "json,vtt", "--no-progress", "-q"]
    cmd += ["--compute-type", args.compute_type, "--device", args.device]
    wall, rss, _ = run_measured(cmd)
    return {
        "hours": hours,
        "wall_s": round(wall, 1),
        "rtfx": round(hours * 3600 / wall, 1),
        "peak_rss_mib": round(rss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="CTranslate2 Whisper folder (default: tiny.en)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: all)")
    parser.add_argument("--long", type=int, default=4, help="how many long recordings (default 4)")
    parser.add_argument(
        "--long-minutes",
        type=float,
        default=10,
        help="each long recording repeats its utterances up to this length (default 10; 0: "
        "each once, about 1.5 min)",
    )
    parser.add_argument(
        "--systems",
        default="fw-sequential,fw-batched,asr",
        help="comma-separated systems (default: fw-sequential,fw-batched,asr; fw-batched is "
        "the one ratios are taken against)",
    )
    parser.add_argument("--long-hours", type=float, default=0, help="peak RSS run; 0: skip")
    parser.add_argument("--no-words", action="store_true", help="asr without word timestamps")
    parser.add_argument(
        "--peer-words",
        action="store_true",
        help="faster-whisper with word timestamps too (the same work as asr's default)",
    )
    parser.add_argument("--only", choices=["short", "long"], help="one collection only")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every system this many times, the order reversed each round, and report the "
        "median RTFx (default 1): one pair of runs on a shared machine can be off by 0.3x",
    )
    args = parser.parse_args()
    if "fw-batched" not in args.systems.split(","):
        parser.error("--systems: fw-batched is needed (the ratios are against it)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    model_path = str(resolve_model(args.model).path)
    utts = english_utterances()
    rows = []
    with tempfile.TemporaryDirectory(prefix="asr-tbench-") as tmp:
        work = Path(tmp)
        collections = {
            "short": utts,
            "long": long_recordings(utts, work / "long", args.long, args.long_minutes),
        }
        for name, items in collections.items():
            if args.only and name != args.only:
                continue
            audio_s = sum(sf.info(p).duration for p, _ in items)
            refs = [t for _, t in items]
            systems = args.systems.split(",")
            runs: dict[str, list[dict]] = {s: [] for s in systems}
            for round_ in range(args.repeat):
                for system in systems if round_ % 2 == 0 else systems[::-1]:
                    if system == "asr":
                        out = work / f"out-{name}-{round_}"
                        wall, hyps = run_asr(items, args, out)
                    else:
                        batched = system == "fw-batched"
                        wall, hyps = run_faster_whisper(items, model_path, args, batched)
                    r = {"rtfx": audio_s / wall, "wer": wer(refs, hyps), "wall": wall}
                    runs[system].append(r)
                    log.info("%s %s: %s", name, system, json.dumps(r))
            res = {
                s: {
                    "rtfx": float(np.median([r["rtfx"] for r in rs])),
                    "wer": float(np.median([r["wer"] for r in rs])),
                }
                for s, rs in runs.items()
            }
            base = res["fw-batched"]
            for system, r in res.items():
                rows.append(
                    f"| {name} ({len(items)} files, {audio_s / 60:.1f} min) | {system} | "
                    f"{r['rtfx']:.1f} | {r['wer']:.2f} | {r['rtfx'] / base['rtfx']:.2f}x |"
                )
        print("\n| collection | system | RTFx | WER % | RTFx vs fw-batched |")
        print("| --- | --- | --- | --- | --- |")
        print("\n".join(rows))
        if args.long_hours:
            print(
                "\npeak RSS of asr transcribe:",
                json.dumps(peak_rss_long(args.long_hours, args, work)),
            )


if __name__ == "__main__":
    main()
