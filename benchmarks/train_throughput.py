"""Training throughput of the recipes: `asr train` against a bare training loop, side by side.

Data: the real utterances in ../shared/data/realspeech (every utterance of 30 s or less, with
its reference text, one Segment each), sharded by `asr shard`. For each recipe:

- `asr train` for --steps steps (evaluation off): samples/s, audio seconds/s, label tokens/s,
  from train_log.jsonl, the first log window (warm-up) left out;
- the peer: the same model, optimizer and batches (taken from the same data stream beforehand
  and held in memory) in a plain PyTorch loop of forward, backward and AdamW step. It has no
  data loading, no logging and no checkpoints, so asr/peer is the share of the bare step's
  speed that the whole training pipeline keeps.

    python benchmarks/train_throughput.py [--recipes recipes/whisper-tiny-cpu.yaml ...]
        [--steps 40] [--set train.cpu=false ...]

On a GPU, pass a GPU recipe and --set train.cpu=false; the script then also prints the peak
GPU memory of the bare loop.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from asr.ingest import IngestOptions, ingest  # noqa: E402
from asr.manifest import write_manifest  # noqa: E402
from asr.shards import ShardOptions, shard  # noqa: E402
from benchmarks.realspeech import (  # noqa: E402
    REALSPEECH,
    whole_recording_segments,
    write_catalogue,
)

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]


def realspeech_shards(work: Path) -> Path:
    """The real utterances as one text segment each, sharded (train/dev split by recording)."""
    cat = write_catalogue(REALSPEECH, work / "catalogue.csv")
    ingest([], work, IngestOptions(catalogue=cat, workers=2, progress=False, allow_outside=True))
    segments = whole_recording_segments(work / "recordings.jsonl", max_duration=30.0)
    write_manifest(work / "segments.jsonl", segments)
    shard(
        work / "segments.jsonl",
        work / "shards",
        ShardOptions(max_count=25, dev_fraction=0.1, test_fraction=0.0, progress=False),
    )
    return work / "shards"


def run_asr(recipe: Path, shards: Path, run: Path, steps: int, sets: list[str]) -> dict:
    from asr.train.recipe import load_recipe
    from asr.train.trainer import TrainOptions, train

    log_every = max(1, steps // 4)
    r = load_recipe(
        recipe,
        [
            f"optim.max_steps={steps}",
            f"train.eval_every={10 * steps}",
            f"train.save_every={10 * steps}",
            f"train.log_every={log_every}",
            *sets,
        ],
    )
    t0 = time.perf_counter()
    train(r, shards, run, TrainOptions(progress=False))
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    rows = [x for x in rows if "samples_per_s" in x][1:]  # the first window is warm-up
    mean = lambda k: sum(x[k] for x in rows) / len(rows)  # noqa: E731
    return {
        "samples_per_s": mean("samples_per_s"),
        "audio_s_per_s": mean("audio_s_per_s"),
        "tokens_per_s": mean("tokens_per_s"),
        "wall_s": wall,
    }


def run_peer(recipe: Path, shards: Path, work: Path, steps: int, sets: list[str]) -> dict:
    """The bare loop on the same batches, held in memory (taken from the same stream)."""
    import torch

    from asr.train.data import ShardStream, split_shards, to_device
    from asr.train.recipe import load_recipe
    from asr.train.tasks import TASKS

    r = load_recipe(recipe, sets)
    work.mkdir(parents=True, exist_ok=True)
    task = TASKS[r.model.kind].build(r, work, shards, True)
    stream = ShardStream(
        split_shards(shards, "train"), r.data, task.prepare, task.collate, seed=r.train.seed
    )
    it = iter(stream)
    batches = [next(it) for _ in range(steps)]
    use_cuda = torch.cuda.is_available() and not r.train.cpu
    device = torch.device("cuda" if use_cuda else "cpu")
    model = task.model.to(device).train()
    if r.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=r.optim.lr, betas=r.optim.betas
    )
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(r.train.mixed_precision)
    warm = max(1, steps // 4)
    samples = seconds = tokens = 0.0
    for i, b in enumerate(batches):
        if i == warm:
            if use_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            samples = seconds = tokens = 0.0
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(**to_device(b, device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.optim.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        samples += len(b["_keys"])
        seconds += b["_seconds"]
        tokens += task.tokens_in(b)
    if use_cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    out = {
        "samples_per_s": samples / wall,
        "audio_s_per_s": seconds / wall,
        "tokens_per_s": tokens / wall,
    }
    if use_cuda:
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--recipes",
        nargs="+",
        type=Path,
        default=[ROOT / "recipes/whisper-tiny-cpu.yaml", ROOT / "recipes/wav2vec2-tiny-cpu.yaml"],
    )
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--shards", type=Path, help="use these shards instead of the real speech")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shards = args.shards or realspeech_shards(work / "data")
        index = json.loads((shards / "shards.json").read_text())
        print(
            f"training data: {index['splits']['train']['samples']} samples, "
            f"{index['splits']['train']['hours']:.3f} h"
        )
        print("| recipe | system | samples/s | audio s/s | tokens/s | asr/peer |")
        print("| --- | --- | --- | --- | --- | --- |")
        for recipe in args.recipes:
            name = recipe.stem
            a = run_asr(recipe, shards, work / f"run-{name}", args.steps, args.sets)
            p = run_peer(recipe, shards, work / f"peer-{name}", args.steps, args.sets)
            for system, m in (("bare loop (peer)", p), ("asr train", a)):
                ratio = a["samples_per_s"] / p["samples_per_s"] if system == "asr train" else 1.0
                print(
                    f"| {name} | {system} | {m['samples_per_s']:.2f} | {m['audio_s_per_s']:.1f}"
                    f" | {m['tokens_per_s']:.0f} | {ratio:.2f} |"
                )
            if "peak_gpu_gib" in p:
                print(f"peak GPU memory (bare loop, {name}): {p['peak_gpu_gib']:.1f} GiB")


if __name__ == "__main__":
    main()
