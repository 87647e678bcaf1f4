"""Speaker-attributed transcripts (issue 13): who said what, how fast, in how much memory.

`asr transcribe --diarize` is scored on what it ships (words with their speakers), beyond the
DER of benchmarks/diarization.py:

1. cpWER (concatenated minimum-permutation WER, CHiME-6; computed by `meeteval`): each
   speaker's words in time order, scored against each reference speaker's, under the mapping of
   hypothesis speakers to reference speakers that gives the fewest errors; the words of a
   speaker left unmatched (too many or too few speakers found) are all insertions or
   deletions. Beside it the plain WER of the same transcript (all words in time order, speakers
   ignored): cpWER - WER is what the speaker attribution costs. Text is normalised with
   Whisper's English normaliser (asr.metrics, NormalizerSpec("whisper-english")).
   Sets: `call`, the two-party telephone call of ../shared/data/diarization (ASR_DIARIZATION;
   reference words sample.stm) and `conversations`, four conversations of 2 to 3 minutes
   between 2 or 3 English voices of ../shared/data/realspeech (ASR_REALSPEECH) built here
   (build/speakers): turns of 1-2 whole utterances with their catalogue text, 0.3-1.5 s pauses,
   some turns starting 0.3-1 s before the last ends. The voices have little text each, so
   utterances come back (cycled) within a conversation.
   The peer, run in the same process: faster-whisper (BatchedInferencePipeline, batch 8, the same
   model folder, --model, default tiny.en; int8, beam 5, word timestamps) + senko's own
   Diarizer, each word given the speaker whose turns overlap it most (WhisperX's
   assign_word_speakers, with fill_nearest: the nearest turn's speaker when none overlaps).
   Nobody is told the number of speakers (senko cannot be).
2. Speed: RTFx (audio seconds per wall second) of `asr transcribe` (the Python API, a fresh
   output folder each time, model loading included) on all files of both sets, with and without
   --diarize, in --pairs alternating pairs (after one unmeasured run of each, so models are
   loaded and traced); RTFx from the median walls, the ratio (the share of transcribe's speed
   that --diarize keeps; target >= 0.7) the median of the pairs' ratios. The peer's RTFx (models
   loaded and warmed first) beside it.
3. Memory: peak RSS of `python -m asr transcribe FILE --diarize` (getrusage of the child, as
   benchmarks/measure.py) on recordings of 10 and 60 minutes made by repeating a conversation
   (target: the hour within 100 MB of ten minutes); --long-minutes changes the lengths.

Prints a markdown table, writes everything to build/speakers/results.json (--json). Needs the
diarize extra and meeteval (`pip install -e '.[diarize,cpwer]'`).

    python benchmarks/speakers.py                # about 25 minutes on 2 cores
    python benchmarks/speakers.py --quick        # the call and one conversation, 2 vs 4 min
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.diarization import repeat_to  # noqa: E402
from benchmarks.measure import run_measured  # noqa: E402
from benchmarks.realspeech import DIARIZATION, REALSPEECH  # noqa: E402

BUILD = ROOT / "build" / "speakers"
SR = 16000
log = logging.getLogger("bench.speakers")

# English voices of the realspeech catalogue, one speaker each: path prefixes
VOICES = {
    "lj": ["ljspeech_coqui/"],  # a woman reading (32 utterances)
    "austen": ["pocketsphinx_librivox/"],  # a LibriVox reader (5)
    "jfk": ["whisper_jfk/"],  # a man speaking (1)
    "libri": ["lhotse_librispeech/"],  # a LibriSpeech reader (1)
    "p225": ["vctk_hfds/p225_"],  # VCTK p225 (2)
    "s61": ["mfa_tests/61-"],  # LibriSpeech speaker 61 (1)
}
CONVERSATIONS = {  # name: (voices, seconds, seed)
    "conv2a": (["lj", "austen"], 150, 1),
    "conv2b": (["austen", "s61"], 120, 2),
    "conv3a": (["lj", "austen", "jfk"], 180, 3),
    "conv3b": (["lj", "libri", "p225"], 150, 4),
}
LONG_SOURCE = "conv3a"


# --- the sets: audio and who said what ---------------------------------------------------------


def _trim(x: np.ndarray) -> np.ndarray:
    """An utterance without its leading and trailing silence (20 ms frames 40 dB below its
    loudest), so that an overlap of turns overlaps speech."""
    hop = SR // 50
    n = len(x) // hop
    db = 20 * np.log10(np.sqrt((x[: n * hop].reshape(n, hop) ** 2).mean(1)) + 1e-9)
    loud = np.flatnonzero(db > db.max() - 40)
    return x[max(0, (loud[0] - 5) * hop) : (loud[-1] + 6) * hop] if len(loud) else x


def voice_utterances(voice: str) -> list[tuple[np.ndarray, str]]:
    """A voice's utterances (16 kHz, trimmed, same loudness) with their text, in catalogue
    order."""
    from asr import audio

    with open(REALSPEECH / "catalogue.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "utterance"]
    out = []
    for r in sorted(rows, key=lambda r: r["path"]):
        if any(r["path"].startswith(p) for p in VOICES[voice]):
            x = _trim(audio.load(REALSPEECH / r["path"]))
            out.append((x / max(np.sqrt((x**2).mean()), 1e-6) * 0.05, r["transcript"]))
    return out


def build_conversation(voices: list[str], seconds: float, seed: int, overlap_p: float = 0.15):
    """Turns of the voices (never the same twice in a row), each 1 or 2 utterances 0.3-0.6 s
    apart; 0.3-1.5 s between turns, or with probability overlap_p a turn that starts 0.3-1 s
    before the last ends. Returns (16 kHz samples, [(start, end, voice, text)] per utterance)."""
    rng = np.random.default_rng(seed)
    pools = {v: voice_utterances(v) for v in voices}
    cursor = dict.fromkeys(voices, 0)
    placed, ref, t, prev = [], [], 0.5, None
    while t < seconds:
        v = str(rng.choice([u for u in voices if u != prev]))
        start = t + rng.uniform(0.3, 1.5)
        if prev is not None and rng.random() < overlap_p:
            start = t - rng.uniform(0.3, 1.0)
        prev = v
        for k in range(int(rng.integers(1, 3))):
            x, text = pools[v][cursor[v] % len(pools[v])]
            cursor[v] += 1
            if k:
                start += rng.uniform(0.3, 0.6)
            placed.append((start, x))
            ref.append((round(start, 3), round(start + len(x) / SR, 3), v, text))
            start += len(x) / SR
        t = max(t, start)
    audio = np.zeros(int((t + 0.5) * SR), dtype=np.float32)
    for s, x in placed:
        audio[int(s * SR) : int(s * SR) + len(x)] += x
    return np.clip(audio, -1, 1), ref


def call_reference() -> list[tuple[float, float, str, str]]:
    """The call's reference words: sample.stm (uri channel speaker start end words...)."""
    rows = [line.split() for line in (DIARIZATION / "sample.stm").read_text().splitlines()]
    return [(float(r[3]), float(r[4]), r[2], " ".join(r[5:])) for r in rows if len(r) > 5]


def prepare_sets(quick: bool) -> dict[str, list[dict]]:
    """{set: [{uri, wav, duration, ref}]}: 16-bit 16 kHz mono WAVs (senko reads only those)."""
    BUILD.mkdir(parents=True, exist_ok=True)
    call = DIARIZATION / "sample.wav"
    sets = {"call": [{"uri": "call", "wav": str(call), "ref": call_reference()}]}
    sets["conversations"] = []
    chosen = [(k, v) for k, v in CONVERSATIONS.items() if not quick or k == LONG_SOURCE]
    for name, (voices, seconds, seed) in chosen:  # quick: the one the long recordings repeat
        wav, ref = BUILD / f"{name}.wav", BUILD / f"{name}.ref.json"
        if not wav.exists() or not ref.exists():
            x, turns = build_conversation(voices, seconds, seed)
            sf.write(wav, x, SR, subtype="PCM_16")
            ref.write_text(json.dumps(turns, indent=0))
        rows = [tuple(r) for r in json.loads(ref.read_text())]
        sets["conversations"].append({"uri": name, "wav": str(wav), "ref": rows})
    for items in sets.values():
        for it in items:
            it["duration"] = sf.info(it["wav"]).duration
    return sets


def long_recording(minutes: float) -> Path:
    """A conversation repeated to the given length (a WAV under build/speakers)."""
    return repeat_to(BUILD / f"{LONG_SOURCE}.wav", minutes, BUILD / f"long_{minutes:g}min.wav")


# --- scoring -----------------------------------------------------------------------------------


def score(ref: list[tuple], words: list[tuple[float, float, str, str | None]]) -> dict:
    """cpWER and plain WER of words [(start, end, text, speaker)] against the reference
    [(start, end, speaker, text)], after Whisper's English normaliser."""
    from meeteval.wer.wer.cp import cp_word_error_rate
    from meeteval.wer.wer.siso import siso_word_error_rate

    from asr.metrics import NormalizerSpec, make_normalizer

    norm = make_normalizer(NormalizerSpec("whisper-english"))

    def by_speaker(items):  # {speaker: normalised text of its items in time order}
        out: dict[str, list[str]] = {}
        for _, who, text in sorted(items, key=lambda i: i[0]):
            out.setdefault(str(who), []).append(text)
        return {k: norm(" ".join(v)) for k, v in out.items()}

    r = by_speaker([(s, who, text) for s, _, who, text in ref])
    h = by_speaker([(s, who, text) for s, _, text, who in words])
    cp = cp_word_error_rate(r, h, reference_sort=False, hypothesis_sort=False)
    plain = siso_word_error_rate(  # one stream each, already in time order
        norm(" ".join(t for *_, t in sorted(ref))),
        norm(" ".join(w[2] for w in sorted(words, key=lambda w: w[0]))),
    )
    return {
        "cp_errors": cp.errors,
        "errors": plain.errors,
        "length": cp.length,
        "speakers": [len(r), len(h)],
        "missed_speakers": cp.missed_speaker,
        "extra_speakers": cp.falarm_speaker,
    }


def total(per_file: dict[str, dict]) -> dict:
    """cpWER and WER over a set (errors over reference words of all its files)."""
    n = sum(f["length"] for f in per_file.values())
    return {
        "cpwer": sum(f["cp_errors"] for f in per_file.values()) / n,
        "wer": sum(f["errors"] for f in per_file.values()) / n,
        "speaker_count_right": sum(f["speakers"][0] == f["speakers"][1] for f in per_file.values()),
        "files": len(per_file),
        "per_file": per_file,
    }


# --- asr ----------------------------------------------------------------------------------------


def asr_words(json_path: Path) -> list[tuple[float, float, str, str | None]]:
    doc = json.loads(json_path.read_text(encoding="utf-8"))
    return [
        (w["start"], w["end"], w["word"], w.get("speaker"))
        for s in doc["segments"]
        for w in s["words"]
    ]


def run_asr(items: list[dict], diarize: bool, model: str = "tiny.en") -> tuple[float, dict]:
    """`asr transcribe` (the API) on all items into a fresh folder: its wall time, and each
    item's words."""
    from asr.engine.transcribe import TranscribeOptions, transcribe

    opts = TranscribeOptions(
        model=model, language="en", formats=("json",), diarize=diarize, progress=False
    )
    out = Path(tempfile.mkdtemp(prefix="asr-", dir=BUILD))
    t = time.perf_counter()
    res = transcribe([it["wav"] for it in items], out, opts)
    wall = time.perf_counter() - t
    if res.failed:
        raise RuntimeError(f"asr transcribe failed: {res.failures}")
    log.info("asr transcribe diarize=%s: %.1f s", diarize, wall)
    words = {it["uri"]: asr_words(out / f"{Path(it['wav']).stem}.json") for it in items}
    shutil.rmtree(out)
    return wall, words


def speed_pairs(items: list[dict], pairs: int, model: str) -> tuple[list[tuple], dict]:
    """`pairs` runs of transcribe alone and with --diarize, in alternating order (the machine's
    load drifts over minutes): [(plain wall, diarize wall)], and the words of the last
    --diarize run. One run of each goes first, unmeasured: models loaded and traced."""
    run_asr(items[:1], False, model)
    run_asr(items[:1], True, model)
    walls, words = [], {}
    for i in range(pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        w = {}
        for diarize in order:
            w[diarize], got = run_asr(items, diarize, model)
            if diarize:
                words = got
        walls.append((w[False], w[True]))
    return walls, words


# --- the peer: faster-whisper + senko, WhisperX-style assignment -------------------------------


def _kaldi_fbanks(waves):
    import torchaudio.compliance.kaldi as kaldi

    return [kaldi.fbank(w.unsqueeze(0), num_mel_bins=80, dither=0.0) for w in waves]


def assign_word_speakers(words, turns):
    """WhisperX's assign_word_speakers (fill_nearest=True): each word to the speaker whose turns
    overlap it most; when none does, the speaker of the turn nearest to it."""
    out = []
    for a, b, text in words:
        share: dict[str, float] = {}
        for s, e, who in turns:
            share[who] = share.get(who, 0.0) + max(0.0, min(b, e) - max(a, s))
        if share and max(share.values()) > 0:
            who = max(share, key=share.get)
        elif turns:
            who = min(turns, key=lambda t: min(abs(t[0] - b), abs(t[1] - a)))[2]
        else:
            who = None
        out.append((a, b, text, who))
    return out


def run_peer(items: list[dict], threads: int, model: str = "tiny.en") -> tuple[dict, dict]:
    """faster-whisper then senko on each item (models loaded and warmed on the call first):
    the wall time of each over all items, and each item's words with speakers."""
    import torch
    from faster_whisper import BatchedInferencePipeline, WhisperModel
    from senko import Diarizer

    from asr.models import resolve_model

    model = WhisperModel(
        str(resolve_model(model).path), device="cpu", compute_type="int8", cpu_threads=threads
    )
    pipe = BatchedInferencePipeline(model)
    diarizer = Diarizer(device="cpu", warmup=True, quiet=True)
    torch.set_num_threads(threads)
    # senko's C++ filterbanks die with SIGILL on CPUs without the instructions they were built
    # for: the same Kaldi filterbanks through its kaldifeat code path (as benchmarks/diarization)
    diarizer.use_gpu_fbank = True
    diarizer.kaldifeat_fbank = _kaldi_fbanks

    walls = {"transcribe": 0.0, "diarize": 0.0}

    def one(wav: str):
        t = time.perf_counter()
        segs, _ = pipe.transcribe(
            wav, batch_size=8, beam_size=5, language="en", word_timestamps=True
        )
        words = [(w.start, w.end, w.word) for s in segs for w in (s.words or [])]
        walls["transcribe"] += time.perf_counter() - t
        t = time.perf_counter()
        out = diarizer.diarize(wav) or {}
        turns = [(s["start"], s["end"], str(s["speaker"])) for s in out.get("merged_segments", [])]
        walls["diarize"] += time.perf_counter() - t
        return assign_word_speakers(words, turns)

    one(str(DIARIZATION / "sample.wav"))  # warm-up
    walls.update(transcribe=0.0, diarize=0.0)
    words = {it["uri"]: one(it["wav"]) for it in items}
    return walls, words


# --- memory ------------------------------------------------------------------------------------


def peak_rss(minutes: float) -> dict:
    """Peak RSS (MiB) and wall time of `python -m asr transcribe LONG --diarize`."""
    path = long_recording(minutes)
    out = BUILD / f"long-out-{minutes:g}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "asr", "transcribe", str(path), "--out", str(out)]
    cmd += ["--model", "tiny.en", "--language", "en", "--formats", "json", "--diarize", "-q"]
    wall, rss, _ = run_measured(cmd)
    doc = json.loads((out / f"{path.stem}.json").read_text(encoding="utf-8"))
    shutil.rmtree(out)
    log.info("%g min: peak RSS %.0f MiB, %.0f s", minutes, rss, wall)
    return {"peak_rss_mib": rss, "wall_s": wall, "speakers": len(doc.get("speakers", []))}


# --- the run -----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the call and one conversation, one run")
    ap.add_argument("--long-minutes", nargs="*", type=float, default=None)
    ap.add_argument("--threads", type=int, default=2, help="the peer's model and torch threads")
    ap.add_argument(
        "--pairs",
        type=int,
        default=None,
        help="runs of transcribe alone and with --diarize, alternating (default 3; --quick 1)",
    )
    ap.add_argument("--model", default="tiny.en", help="asr's model (default tiny.en)")
    ap.add_argument("--json", type=Path, default=BUILD / "results.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    long_minutes = args.long_minutes
    if long_minutes is None:
        long_minutes = [2, 4] if args.quick else [10, 60]
    pairs = args.pairs or (1 if args.quick else 3)

    sets = prepare_sets(args.quick)
    items = [it for s in sets.values() for it in s]
    audio_s = sum(it["duration"] for it in items)
    log.info("%d files, %.0f s of audio", len(items), audio_s)

    walls, asr_out = speed_pairs(items, pairs, args.model)
    plain_wall = float(np.median([p for p, _ in walls]))
    diar_wall = float(np.median([d for _, d in walls]))
    log.info("peer: faster-whisper + senko")
    peer_walls, peer_out = run_peer(items, args.threads, args.model)

    report: dict = {"sets": {}, "speed": {}, "memory": {}}
    for name, s in sets.items():
        report["sets"][name] = {
            "audio_s": sum(it["duration"] for it in s),
            "asr": total({it["uri"]: score(it["ref"], asr_out[it["uri"]]) for it in s}),
            "peer": total({it["uri"]: score(it["ref"], peer_out[it["uri"]]) for it in s}),
        }
    report["speed"] = {
        "audio_s": audio_s,
        "rtfx_transcribe": audio_s / plain_wall,
        "rtfx_transcribe_diarize": audio_s / diar_wall,
        "ratio": float(np.median([p / d for p, d in walls])),
        "pair_ratios": [p / d for p, d in walls],
        "pair_walls": walls,
        "model": args.model,
        "rtfx_peer": audio_s / sum(peer_walls.values()),
        "rtfx_peer_transcribe": audio_s / peer_walls["transcribe"],
        "rtfx_peer_diarize": audio_s / peer_walls["diarize"],
    }
    for minutes in long_minutes:
        report["memory"][f"{minutes:g}"] = peak_rss(minutes)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [
        "| set | system | cpWER | WER | cpWER - WER | speakers right |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, s in report["sets"].items():
        for system, label in (("asr", "asr --diarize"), ("peer", "faster-whisper + senko")):
            r = s[system]
            lines.append(
                f"| {name} ({s['audio_s']:.0f} s) | {label} | {100 * r['cpwer']:.1f}% | "
                f"{100 * r['wer']:.1f}% | {100 * (r['cpwer'] - r['wer']):+.1f} | "
                f"{r['speaker_count_right']}/{r['files']} |"
            )
    sp = report["speed"]
    lines += [
        "",
        f"| RTFx ({sp['audio_s']:.0f} s of audio) | alone | with speakers | ratio |",
        "|---|---:|---:|---:|",
        f"| asr transcribe, {sp['model']} (--diarize; target ratio >= 0.7; median of "
        f"{' '.join(f'{r:.2f}' for r in sp['pair_ratios'])}) | {sp['rtfx_transcribe']:.1f} | "
        f"{sp['rtfx_transcribe_diarize']:.1f} | {sp['ratio']:.2f} |",
        f"| faster-whisper + senko (senko alone: {sp['rtfx_peer_diarize']:.1f}) | "
        f"{sp['rtfx_peer_transcribe']:.1f} | {sp['rtfx_peer']:.1f} | "
        f"{sp['rtfx_peer'] / sp['rtfx_peer_transcribe']:.2f} |",
    ]
    if report["memory"]:
        mem = report["memory"]
        lines += [
            "",
            "| transcribe --diarize | " + " | ".join(f"{m} min" for m in mem) + " |",
            "|---|" + "---:|" * len(mem),
            "| peak RSS (MiB) | "
            + " | ".join(f"{v['peak_rss_mib']:.0f}" for v in mem.values())
            + " |",
            "| wall (s) | " + " | ".join(f"{v['wall_s']:.0f}" for v in mem.values()) + " |",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
