"""Running one model on one test set, in a process of its own, through `asr transcribe`'s path.

Each (model, test set) pair runs in a fresh Python process (`python -m asr.bench.runner
REQUEST.json`), so its peak memory is its own and one model's crash does not end the night's
run. Its items go through the same `Transcriber` as `asr transcribe` (decoding, VAD, chunking,
packing, the fallback, word timestamps: its defaults, with the model's options), so the WER
measured is the WER of what `asr transcribe` ships. Items that are files (CSV rows) are
transcribed as they are; items that exist only in memory (shard samples, segments cut from
recordings) are written to 16 kHz FLAC files first. The process writes the raw predictions
(JSONL, one item per line, not normalised) and a result (RTFx after a warm-up, peak RSS, model
hash, dataset hash).
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from asr.audio import SAMPLE_RATE
from asr.bench.config import ModelSpec, TestSetSpec
from asr.bench.testsets import Utterance, dataset_hash, utterances
from asr.metrics import NormalizerSpec

if TYPE_CHECKING:  # the engine is imported in the child process only
    from asr.engine.inputs import Job
    from asr.engine.types import TranscribeOptions

log = logging.getLogger(__name__)


def transcribe_options(model: ModelSpec) -> TranscribeOptions:
    """The model's options as `asr transcribe` options (its defaults for everything else)."""
    from asr.engine.types import DecodeOptions, TranscribeOptions

    o = model.options
    return TranscribeOptions(
        model=model.path,
        formats=("json",),
        language=o.get("language"),
        batch_size=int(o.get("batch_size", TranscribeOptions.batch_size)),
        device=o.get("device", TranscribeOptions.device),
        compute_type=o.get("compute_type"),
        cpu_threads=int(o.get("cpu_threads", 0)),
        decode=DecodeOptions(
            beam_size=int(o.get("beam_size", DecodeOptions.beam_size)),
            min_context=float(o.get("min_context", DecodeOptions.min_context)),
        ),
        progress=False,
    )


def prepare(items: Iterable[Utterance], audio_dir: Path) -> tuple[list[Utterance], list[Job]]:
    """The items and one `asr transcribe` job for each, in order: its file, or its audio
    written to a 16 kHz FLAC file in audio_dir (dropped from memory once written, so a large
    set never sits in memory whole)."""
    import soundfile as sf

    from asr.engine.inputs import Job

    audio_dir.mkdir(parents=True, exist_ok=True)
    kept, jobs = [], []
    for i, u in enumerate(items):
        key = f"{i:06d}"
        path = u.path
        if path is None:
            if u.audio is None:
                raise ValueError(f"{u.id}: an item needs a file or its audio")
            path = str(audio_dir / f"{key}.flac")
            sf.write(path, u.audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        u.audio = None
        kept.append(u)
        jobs.append(Job(key, path, u.id, u.language))
    return kept, jobs


def transcribe_all(
    model: ModelSpec, items: list[Utterance], jobs: list[Job], out_dir: Path
) -> tuple[list[str], float, dict]:
    """Run the jobs as `asr transcribe` does (outputs in out_dir): the hypotheses (each item's
    transcript text: its segments' texts joined), the wall time after a warm-up, model info."""
    from asr.engine.inputs import Job
    from asr.engine.transcriber import Transcriber

    tr = Transcriber(transcribe_options(model))
    if jobs:
        # warm-up on the shortest item, under a key of its own (nothing it leaves in the
        # Transcriber touches the real run): first-call allocations are not the model's speed
        w = jobs[min(range(len(items)), key=lambda k: items[k].duration)]
        for fin in tr.run([Job(f"warmup/{w.key}", w.path, "warmup", w.language)]):
            if fin.error is not None:
                raise RuntimeError(f"warm-up on {w.recording_id} failed: {fin.error}")
    t0 = time.perf_counter()
    texts: dict[str, str] = {}
    failures = []
    for fin in tr.run(jobs):
        if fin.error is not None or fin.transcript is None:
            failures.append(f"{fin.key}: {fin.error}")
        else:
            texts[fin.key] = fin.transcript.text
    wall = time.perf_counter() - t0
    if failures:  # every item decoded when the test set was read: this is the model failing
        raise RuntimeError(f"{len(failures)} item(s) failed: " + "; ".join(failures[:10]))
    info = {"name": model.name, "path": str(tr.model.path), "sha256": tr.model.sha256}
    return [texts[j.key] for j in jobs], wall, info


def run_pair(ts: TestSetSpec, model: ModelSpec, predictions: Path) -> dict:
    """Transcribe the test set with the model here; write predictions; return the result."""
    predictions.parent.mkdir(parents=True, exist_ok=True)
    # audio and transcripts in a folder of their own beside the predictions, removed after
    with tempfile.TemporaryDirectory(prefix=f".{predictions.stem}.", dir=predictions.parent) as d:
        items, jobs = prepare(utterances(ts), Path(d) / "audio")
        hyps, wall, info = transcribe_all(model, items, jobs, Path(d) / "out")
    tmp = predictions.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for u, h in zip(items, hyps):
            fields = {k: v for k, v in u.fields.items() if isinstance(v, str | int | float)}
            row = {"id": u.id, "ref": u.ref, "hyp": h, "language": u.language}
            row.update(duration=round(u.duration, 3), fields=fields)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(predictions)
    audio = sum(u.duration for u in items)
    return {
        "model": info,
        "dataset_sha256": dataset_hash(items),
        "n_utterances": len(items),
        "audio_seconds": audio,
        "wall_seconds": wall,
        "rtfx": audio / wall if wall > 0 else 0.0,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "predictions": str(predictions),
    }


def run_in_process(ts: TestSetSpec, model: ModelSpec, predictions: Path) -> dict:
    """run_pair in a child process (its own memory peak); RuntimeError with its log if it fails."""
    request = predictions.with_suffix(".request.json")
    request.parent.mkdir(parents=True, exist_ok=True)
    ts_dict = asdict(ts)
    request.write_text(
        json.dumps({"testset": ts_dict, "model": asdict(model), "predictions": str(predictions)}),
        encoding="utf-8",
    )
    p = subprocess.run(
        [sys.executable, "-m", "asr.bench.runner", str(request)], capture_output=True, text=True
    )
    request.unlink(missing_ok=True)
    if p.returncode != 0:
        raise RuntimeError(f"{model.name} on {ts.name} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _main(argv: list[str]) -> int:
    from asr.engine.memory import limit_malloc_arenas

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    limit_malloc_arenas()  # as the `asr transcribe` CLI does: this process is ours alone
    req = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    t = req["testset"]
    t["normalizer"] = NormalizerSpec(**t["normalizer"])
    result = run_pair(TestSetSpec(**t), ModelSpec(**req["model"]), Path(req["predictions"]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
