"""A small wav2vec2 CTC model trained here on espeak-ng speech, for `asr align --ctc-model`.

No wav2vec2 CTC weights for real speech can be loaded offline, so this trains one on synthetic
speech instead: random English sentences (the real transcripts' vocabulary, six voices, 140-200
words a minute) spoken by espeak-ng, ingested, sharded and trained with `asr train` and
recipes/wav2vec2-tiny-cpu.yaml scaled up by --set overrides (about 10 minutes on 2 cores).
Then measure what CTC refinement gains on espeak-ng speech (held-out sentences):

    python benchmarks/ctc_espeak.py --out build/ctc-espeak
    python benchmarks/align_accuracy.py --speech espeak
    python benchmarks/align_accuracy.py --speech espeak --ctc-model build/ctc-espeak/run/final
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.align_accuracy import espeak, espeak_sentences  # noqa: E402
from benchmarks.realspeech import whole_recording_segments  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = [
    "model.config.hidden_size=96",
    "model.config.num_hidden_layers=3",
    "model.config.intermediate_size=192",
    "data.epoch_steps=200",
    "optim.lr=2.0e-3",
    "optim.warmup_steps=150",
    "train.eval_every=500",
    "train.save_every=500",
    "train.log_every=50",
]


def espeak_shards(work: Path, n: int) -> Path:
    """n espeak-ng sentences (seed 0; the benchmark's recordings use other seeds), sharded."""
    from asr.ingest import IngestOptions, ingest
    from asr.manifest import write_manifest
    from asr.shards import ShardOptions, shard

    (work / "wav").mkdir(parents=True, exist_ok=True)
    rows = [(f"s{i:05d}", *s) for i, s in enumerate(espeak_sentences(n, seed=0))]
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(lambda r: espeak(r[1], r[2], r[3], work / "wav" / f"{r[0]}.wav"), rows))
    with open(work / "catalogue.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "language", "rights", "text"])
        for sid, text, _, _ in rows:
            w.writerow([sid, f"wav/{sid}.wav", "en", "public domain", text])
    ingest([], work, IngestOptions(catalogue=work / "catalogue.csv", workers=2, progress=False))
    segments = whole_recording_segments(work / "recordings.jsonl")
    write_manifest(work / "segments.jsonl", segments)
    opts = ShardOptions(max_count=200, dev_fraction=0.03, test_fraction=0.0, progress=False)
    shard(work / "segments.jsonl", work / "shards", opts)
    return work / "shards"


def main() -> None:
    from asr.train.recipe import load_recipe
    from asr.train.trainer import TrainOptions, train

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "build/ctc-espeak")
    ap.add_argument("--sentences", type=int, default=1600, help="training sentences (~1.7 h)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    shards = args.out / "data" / "shards"
    if not (shards / "shards.json").exists():
        shards = espeak_shards(args.out / "data", args.sentences)
    recipe = load_recipe(
        ROOT / "recipes/wav2vec2-tiny-cpu.yaml",
        [*OVERRIDES, f"optim.max_steps={args.steps}", *args.sets],
    )
    result = train(recipe, shards, args.out / "run", TrainOptions(progress=False))
    log.info("model: %s", args.out / "run" / "final")
    print(json.dumps({"final": str(args.out / "run" / "final"), **vars(result)}, default=str))


log = logging.getLogger("bench")

if __name__ == "__main__":
    main()
