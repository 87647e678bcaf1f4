"""Running one model on one test set, in a process of its own.

Each (model, test set) pair runs in a fresh Python process (`python -m asr.bench.runner
REQUEST.json`), so its peak memory is its own and one model's crash does not end the night's
run. The process writes the raw predictions (JSONL, one utterance per line, not normalised)
and a result (RTFx after a warm-up, peak RSS, model hash, dataset hash).
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from asr.audio import SAMPLE_RATE
from asr.bench.config import ModelSpec, TestSetSpec
from asr.bench.normalize import NormalizerSpec
from asr.bench.testsets import Utterance, dataset_hash, utterances

log = logging.getLogger(__name__)


def transcribe_all(model: ModelSpec, items: list[Utterance]) -> tuple[list[str], float, dict]:
    """Hypotheses for the utterances, the wall time after a warm-up batch, and model info."""
    from asr.engine.models import load_engine, resolve_model
    from asr.engine.whisper import DecodeOptions, Window

    o = model.options
    info = resolve_model(model.path)
    engine = load_engine(
        info,
        device=o.get("device", "cpu"),
        compute_type=o.get("compute_type"),
        cpu_threads=o.get("cpu_threads", 0),
    )
    decode = DecodeOptions(
        beam_size=o.get("beam_size", 5),
        word_timestamps=False,
        min_context=float(o.get("min_context", DecodeOptions.min_context)),
    )
    batch_size = o.get("batch_size", 8)

    def language(u: Utterance) -> str | None:
        lang = o.get("language") or u.language
        if not getattr(engine, "multilingual", False):
            return lang or "en"
        if lang in engine.fw.supported_languages:
            return lang
        return engine.detect_language(u.audio)[0]

    def run(batch: list[Utterance]) -> list[str]:
        windows = []
        for u in batch:
            w = Window(language(u) or "en")
            w.add(u.id, u.audio[: int(30 * SAMPLE_RATE)], 0.0)
            windows.append(w)
        out = engine.transcribe(windows, decode)
        return [" ".join(s["text"].strip() for pr in res for s in pr.segments) for res in out]

    if items:
        run(items[:1])  # warm-up: first-call allocations are not the model's speed
    t0 = time.perf_counter()
    hyps: list[str] = []
    for i in range(0, len(items), batch_size):
        hyps += run(items[i : i + batch_size])
    wall = time.perf_counter() - t0
    return hyps, wall, {"name": model.name, "path": str(info.path), "sha256": info.sha256}


def run_pair(ts: TestSetSpec, model: ModelSpec, predictions: Path) -> dict:
    """Transcribe the test set with the model here; write predictions; return the result."""
    items = list(utterances(ts))
    hyps, wall, info = transcribe_all(model, items)
    predictions.parent.mkdir(parents=True, exist_ok=True)
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
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    req = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    t = req["testset"]
    t["normalizer"] = NormalizerSpec(**t["normalizer"])
    result = run_pair(TestSetSpec(**t), ModelSpec(**req["model"]), Path(req["predictions"]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
