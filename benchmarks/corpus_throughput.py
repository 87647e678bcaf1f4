"""Corpus-building throughput and memory: ingest + segment + shard.

Runs each stage of `asr` as its own process (as users run it) and reports wall time and peak
RSS per stage, on two inputs:

1. the real speech in ../shared/data/realspeech (241 files, ~25 min, 22 languages);
2. one 3-hour recording built by concatenating that speech (16 kHz FLAC), sharded with
   --allow-empty-text so that every VAD segment is written.

Side by side on the 3-hour recording, the peer: faster-whisper's own VAD path
(`decode_audio` of the whole file, then `get_speech_timestamps`), same model, same machine.

    python benchmarks/corpus_throughput.py [--hours 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from asr.audio import load  # noqa: E402
from benchmarks.measure import run_measured  # noqa: E402
from benchmarks.realspeech import REALSPEECH, write_catalogue  # noqa: E402

log = logging.getLogger("bench")

PEER = """
import sys
from faster_whisper.audio import decode_audio
from faster_whisper.vad import VadOptions, get_speech_timestamps
audio = decode_audio(sys.argv[1], sampling_rate=16000)
chunks = get_speech_timestamps(audio, VadOptions(max_speech_duration_s=30))
print(len(chunks))
"""


def asr(*args: str) -> list[str]:
    return [sys.executable, "-m", "asr", *args, "--no-progress", "-q"]


def pipeline(name: str, work: Path, ingest_args: list[str], shard_args: list[str]) -> dict:
    """ingest + segment + shard as three processes; per-stage wall time and peak RSS."""
    stages = {
        "ingest": asr("ingest", *ingest_args, "--out", str(work)),
        "segment": asr("segment", str(work / "recordings.jsonl"), "--out", str(work / "seg.jsonl")),
        "shard": asr("shard", str(work / "seg.jsonl"), "--out", str(work / "shards"), *shard_args),
    }
    result: dict = {"input": name, "stages": {}}
    for stage, cmd in stages.items():
        wall, rss, _ = run_measured(cmd)
        result["stages"][stage] = {"wall_s": round(wall, 2), "peak_rss_mib": round(rss, 1)}
    recs = [json.loads(x) for x in (work / "recordings.jsonl").read_text().splitlines()]
    hours = sum(r["duration"] for r in recs) / 3600
    wall = sum(s["wall_s"] for s in result["stages"].values())
    index = json.loads((work / "shards" / "shards.json").read_text())
    result.update(
        audio_hours=round(hours, 3),
        recordings=len(recs),
        shard_samples=sum(v["samples"] for v in index["splits"].values()),
        wall_s=round(wall, 2),
        audio_hours_per_wall_minute=round(hours / (wall / 60), 3),
    )
    return result


def build_long_recording(path: Path, hours: float) -> float:
    """Concatenate the real speech (16 kHz mono, 0.5 s pauses) until `hours`; stream to FLAC."""
    target = int(hours * 3600 * 16000)
    files = sorted(
        p for p in REALSPEECH.rglob("*") if p.suffix.lower() in {".wav", ".mp3", ".flac"}
    )
    clips = [load(p) for p in files]
    pause = np.zeros(8000, np.float32)
    written = 0
    with sf.SoundFile(path, "w", samplerate=16000, channels=1, format="FLAC") as f:
        while written < target:
            for clip in clips:
                block = np.concatenate([clip, pause])[: target - written]
                f.write(block)
                written += block.size
                if written >= target:
                    break
    return written / 16000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=3.0, help="length of the long recording")
    parser.add_argument("--keep", type=Path, help="keep the work folder here (default: a temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = args.keep or Path(tempfile.mkdtemp(prefix="asr-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = []
        cat = write_catalogue(REALSPEECH, work / "realspeech" / "catalogue.csv")
        results.append(
            pipeline(
                "realspeech", work / "realspeech", ["--catalogue", str(cat), "--allow-outside"], []
            )
        )
        log.info(json.dumps(results[-1]))

        long_dir = work / "long" / "holdings"
        long_dir.mkdir(parents=True, exist_ok=True)
        long_path = long_dir / "long.flac"
        t0 = time.perf_counter()
        seconds = build_long_recording(long_path, args.hours)
        log.info("built %.2f h recording in %.0f s", seconds / 3600, time.perf_counter() - t0)
        policy = work / "long" / "all-rights.yaml"  # an uncatalogued file: allow it for the run
        policy.write_text("default: [train, transcribe]\nrules: []\n")
        shard_args = ["--allow-empty-text", "--policy", str(policy)]
        name = f"{args.hours:g} h recording"
        results.append(pipeline(name, work / "long", [str(long_dir)], shard_args))
        log.info(json.dumps(results[-1]))

        wall, rss, out = run_measured([sys.executable, "-c", PEER, str(long_path)])
        ours = results[-1]["stages"]["segment"]
        peer = {
            "peer": "faster-whisper decode_audio + get_speech_timestamps",
            "wall_s": round(wall, 2),
            "peak_rss_mib": round(rss, 1),
            "chunks": int(out.strip()),
            "asr_segment_wall_s": ours["wall_s"],
            "asr_segment_peak_rss_mib": ours["peak_rss_mib"],
            "speed_ratio": round(wall / ours["wall_s"], 2),
            "memory_ratio": round(rss / ours["peak_rss_mib"], 2),
        }
        results.append(peer)
        log.info(json.dumps(peer))

        print(
            "\n| input | audio h | ingest s | segment s | shard s | h audio / wall min "
            "| peak RSS MiB (ingest/segment/shard) |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for r in results[:2]:
            st = r["stages"]
            rss = "/".join(f"{st[s]['peak_rss_mib']:.0f}" for s in ("ingest", "segment", "shard"))
            print(
                f"| {r['input']} | {r['audio_hours']:.2f} | {st['ingest']['wall_s']:.1f} | "
                f"{st['segment']['wall_s']:.1f} | {st['shard']['wall_s']:.1f} | "
                f"{r['audio_hours_per_wall_minute']:.2f} | {rss} |"
            )
        print(
            f"\nVAD on the long recording: asr segment {ours['wall_s']:.1f} s, "
            f"{ours['peak_rss_mib']:.0f} MiB; faster-whisper {peer['wall_s']:.1f} s, "
            f"{peer['peak_rss_mib']:.0f} MiB (time ratio peer/ours {peer['speed_ratio']}, "
            f"memory ratio {peer['memory_ratio']})"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
