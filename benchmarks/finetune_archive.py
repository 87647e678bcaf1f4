"""The archive loop, end to end (issue 14): does fine-tuning on an archive's own speech help?

The long LibriVox recordings of ../shared/data/realspeech (ASR_REALSPEECH; English x3, German,
Spanish, 52-70 s each, untimed whole-recording texts) go through the stages as an archivist's
holdings would: `ingest` -> `align` (with the starting model) -> `shard --split-by time` (the
first 60% of each recording train, the next 10% dev, the last 30% test: the same voices,
unheard sentences) -> `train` (recipes/whisper-finetune-cpu.yaml, model.name = the starting
model's CTranslate2 folder) -> `export` (CTranslate2, float16) -> `bench`, before and after,
on the held-out parts and on the general set (the real speech's utterances, 22 languages):
WER with the paired bootstrap interval of the change (asr.bench compare). Then word timestamps,
before and after: the first-word start error of `asr transcribe` on benchmarks/hard_audio.py's
pauses set (real utterances at onsets known by construction; the aligned segments carry no word
times of their own). Also the time of each stage and the peak memory.

    python benchmarks/finetune_archive.py                  # base, about 15 minutes on 2 cores
    python benchmarks/finetune_archive.py --model tiny.en  # English recordings only
    python benchmarks/finetune_archive.py --set optim.lr=3e-5 --set optim.max_steps=80

Writes build/finetune_archive/<model>/results.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.realspeech import REALSPEECH, write_catalogue  # noqa: E402

log = logging.getLogger("finetune_archive")
BUILD = ROOT / "build" / "finetune_archive"


def longform_catalogue(out: Path, languages: set[str] | None) -> Path:
    """Our catalogue of the real speech's long recordings (those in the given languages)."""
    full = write_catalogue(REALSPEECH, out.with_name("all.csv"))
    with open(full, encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["transcript"]]
    rows = [r for r in rows if languages is None or r["language"] in languages]
    with open(out, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def bench_config(path: Path, model_path: Path, shards: Path, general: bool, db: Path) -> Path:
    """An `asr bench` file: the model on the held-out split and (optionally) the general set."""
    testsets = [
        {"name": "held-out", "manifest": str(shards), "split": "test", "normalizer": "multilingual"}
    ]
    if general:
        testsets.append(
            {
                "name": "general",
                "manifest": str(REALSPEECH / "catalogue.csv"),
                "where": {"kind": "utterance"},
                "normalizer": "multilingual",
            }
        )
    cfg = {
        "db": str(db),
        "bootstrap": {"samples": 1000, "seed": 0},
        "testsets": testsets,
        # one name before and after, so that `compare` pairs the two runs
        "models": [{"name": "model", "path": str(model_path), "options": {"beam_size": 5}}],
    }
    path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")  # JSON is YAML
    return path


def timestamps_kept(model_dir: Path, shards: Path) -> dict:
    """Whether a model still writes timestamps: each held-out sample decoded (beam 5) with a
    prompt that asks for them, as packed windows are decoded: the share whose text comes
    between timestamp tokens, and how far the last one is from the sample's end."""
    import ctranslate2
    import numpy as np
    from faster_whisper.feature_extractor import FeatureExtractor
    from faster_whisper.tokenizer import Tokenizer
    from tokenizers import Tokenizer as HFTokenizer

    from asr.shards import read_raw, shard_paths

    model = ctranslate2.models.Whisper(str(model_dir), compute_type="int8")
    hf = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
    fe = FeatureExtractor(feature_size=model.n_mels)
    with_ts, gaps = 0, []
    samples = list(read_raw(shard_paths(shards, "test")))
    for s in samples:
        tok = Tokenizer(hf, model.is_multilingual, task="transcribe", language=s.meta["language"])
        feats = fe(s.audio())[:, :3000]
        feats = np.pad(feats, ((0, 0), (0, 3000 - feats.shape[1])))[None]
        feats = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats))
        prompt = tok.sot_sequence  # no <|notimestamps|>
        r = model.generate(feats, [list(prompt)], beam_size=5, max_length=448)[0]
        ts = [t - tok.timestamp_begin for t in r.sequences_ids[0] if t >= tok.timestamp_begin]
        if len(ts) >= 2:
            with_ts += 1
            gaps.append(abs(ts[-1] * 0.02 - min(s.duration, 30.0)))
    return {
        "samples": len(samples),
        "with_timestamps": with_ts,
        "mean_end_error_s": round(sum(gaps) / len(gaps), 2) if gaps else None,
    }


def word_starts(model_dir: Path, work: Path) -> dict:
    """First-word start error of `asr transcribe` with the model on benchmarks/hard_audio.py's
    pauses set (20 real English utterances between 5-30 s of non-speech, onsets known by
    construction, not by any model's alignment): median and p95 seconds, utterances with no
    word, words inside the non-speech, WER."""
    from benchmarks.hard_audio import Norms, Run, build_pauses, cached, figures, run_asr

    items = cached(ROOT / "build" / "hard_audio" / "pauses", build_pauses)
    run = Run("pauses", "pauses", items, str(model_dir), False, "whisper-english")
    shutil.rmtree(work, ignore_errors=True)
    _, hyps, crash = run_asr(run, work)
    if crash:
        raise RuntimeError(crash)
    f = figures(run, hyps, Norms(), 200)
    return {
        "median_s": round(f["start_err_median"], 3),
        "p95_s": round(f["start_err_p95"], 3),
        "utterances_without_words": f["start_missed"],
        "words_in_nonspeech": f.get("words_in_quiet"),
        "wer": round(f["wer"], 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="base", help="starting model: base or tiny.en")
    ap.add_argument("--set", action="append", default=[], help="recipe override key=value")
    ap.add_argument("--no-general", action="store_true", help="skip the general set")
    ap.add_argument("--dev-fraction", type=float, default=0.1, help="dev share of each recording")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default under build/)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    from asr.align import AlignOptions, align
    from asr.bench.config import load_config
    from asr.bench.run import compare, run_bench
    from asr.export import ExportOptions, export
    from asr.ingest import IngestOptions, ingest
    from asr.models import resolve_model
    from asr.shards import ShardOptions, shard
    from asr.train.recipe import load_recipe
    from asr.train.trainer import TrainOptions, train

    start = resolve_model(args.model).path
    out = (args.out or BUILD / args.model.replace("/", "_")).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    times: dict[str, float] = {}

    def stage(name):
        t = time.perf_counter()
        times[name] = -t
        log.info("--- %s", name)

    def done(name):
        times[name] += time.perf_counter()

    english_only = args.model.endswith(".en")
    cat = longform_catalogue(out / "catalogue.csv", {"en"} if english_only else None)
    stage("ingest")
    ingest(
        [],
        out / "manifests",
        IngestOptions(catalogue=cat, workers=2, allow_outside=True, progress=False),
    )
    done("ingest")
    stage("align")
    recs, aligned = out / "manifests" / "recordings.jsonl", out / "manifests" / "aligned.jsonl"
    align(recs, aligned, AlignOptions(model=str(start), progress=False))
    done("align")
    stage("shard")
    shards = out / "shards"
    opts = ShardOptions(
        split_by="time", dev_fraction=args.dev_fraction, test_fraction=0.3, progress=False
    )
    result = shard(aligned, shards, opts)
    done("shard")
    log.info("samples %s, seconds %s", dict(result.samples), dict(result.seconds))
    if not (result.samples["train"] and result.samples["test"]):
        sys.exit(f"nothing to train or test on: see {out}/manifests/errors.jsonl")
    if not result.samples["dev"]:
        sys.exit("no dev segment: the recordings are too short for --dev-fraction; raise it")

    db = out / "bench.sqlite"
    stage("bench before")
    before = run_bench(
        load_config(bench_config(out / "before.yaml", start, shards, not args.no_general, db))
    )
    done("bench before")

    stage("train")
    recipe = load_recipe(
        ROOT / "recipes/whisper-finetune-cpu.yaml", [f"model.name={start}", *args.set]
    )
    res = train(recipe, shards, out / "run", TrainOptions(progress=False))
    done("train")
    stage("export")
    tuned = out / "exported"
    export(out / "run" / "final", tuned, ExportOptions(quantization="float16"))
    done("export")
    stage("bench after")
    after = run_bench(
        load_config(bench_config(out / "after.yaml", tuned, shards, not args.no_general, db))
    )
    done("bench after")

    stage("timestamps")
    stamps = {"before": timestamps_kept(start, shards), "after": timestamps_kept(tuned, shards)}
    log.info("timestamps written on held-out samples: %s", stamps)
    done("timestamps")
    stage("word starts")
    starts = {
        "before": word_starts(start, out / "starts-before"),
        "after": word_starts(tuned, out / "starts-after"),
    }
    log.info("first-word start error on the pauses set: %s", starts)
    done("word starts")

    changes = compare(db, before.run_id, after.run_id)
    peak = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    report = {
        "model": args.model,
        "samples": dict(result.samples),
        "seconds": dict(result.seconds),
        "before": before.results,
        "after": after.results,
        "changes": changes,
        "curve": res.evaluations,
        "timestamps": stamps,
        "word_starts": starts,
        "best": {"step": res.best_step, "dev_wer": res.best_wer},
        "times_s": times,
        "total_s": sum(times.values()),
        "peak_rss_mib": peak / 1024,
    }
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    print(
        json.dumps(
            {
                k: report[k]
                for k in ("samples", "times_s", "total_s", "peak_rss_mib", "word_starts")
            },
            indent=1,
        )
    )
    for c in changes:
        print(c)


if __name__ == "__main__":
    main()
