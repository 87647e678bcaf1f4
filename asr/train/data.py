"""Training batches from the webdataset shards of `asr shard`.

webdataset reads the tars; the order is planned here. Why by hand: webdataset's resampled
shards (`resampled=True`, `with_epoch`) give each worker an independent random stream, which
neither resumes at an exact step nor guarantees distinct shards per process. Here the stream is
a pure function of (seed, epoch, process, worker, batch index):

- each epoch has a fixed number of batches per process (`data.epoch_steps`), the same on every
  process, so distributed steps never wait for a process that ran out of data;
- per epoch the shard list is shuffled with the seed and dealt out to processes (and within a
  process to data-loader workers), so processes read different shards; a worker cycles over
  its shards as long as its share of the epoch needs (resampling);
- samples are bucketed by duration (a read-ahead buffer sorted by length, cut into batches
  holding at most `max_batch_seconds` of padded audio, the batches shuffled);
- resuming at batch N rebuilds the same stream and skips the first N batches without decoding
  their audio (durations are in the samples' JSON), so the data order after a resume is the
  order of an uninterrupted run.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.data import IterableDataset, get_worker_info

from asr.shards import RawSample, read_raw, shard_paths
from asr.train.recipe import DataSpec

log = logging.getLogger(__name__)


def split_shards(shard_dir: str | os.PathLike, split: str) -> list[str]:
    """A split's shard paths from SHARD_DIR/shards.json; a clear error if it has none."""
    index = Path(shard_dir) / "shards.json"
    if not index.is_file():
        raise FileNotFoundError(f"{index}: no shards.json (make shards with `asr shard`)")
    urls = shard_paths(shard_dir, split)
    if not urls:
        raise ValueError(f"{index}: the '{split}' split has no shards")
    return urls


def bucket(
    samples: Iterator[RawSample | None], spec: DataSpec, rng: random.Random
) -> Iterator[list[RawSample]]:
    """Batches of similar-length samples from a read-ahead buffer, in shuffled order.

    None in `samples` marks the end of a pass over the shards: the buffer is cut there, so a
    small data set never puts one sample twice in a batch.
    """
    buf: list[RawSample] = []
    for s in samples:
        if s is not None:
            buf.append(s)
        if buf and (s is None or len(buf) >= spec.bucket_buffer):
            yield from _cut(buf, spec, rng)
            buf = []
    if buf:
        yield from _cut(buf, spec, rng)


def _cut(buf: list[RawSample], spec: DataSpec, rng: random.Random) -> list[list[RawSample]]:
    buf.sort(key=lambda s: (s.duration, s.key))
    batches: list[list[RawSample]] = []
    cur: list[RawSample] = []
    for s in buf:
        longest = max(s.duration, cur[-1].duration if cur else 0.0)
        if cur and (
            longest * (len(cur) + 1) > spec.max_batch_seconds or len(cur) >= spec.max_batch_size
        ):
            batches.append(cur)
            cur = []
        cur.append(s)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


class ShardStream(IterableDataset):
    """Endless, resumable training batches for one process; see the module docstring.

    prepare: RawSample -> features dict (runs in the data-loader workers);
    collate: list of features -> batch dict of tensors.
    Each yielded batch also carries "_keys", "_shards", "_epoch" and "_index" for the logs.
    """

    def __init__(
        self,
        urls: list[str],
        spec: DataSpec,
        prepare: Callable[[RawSample], dict | None],
        collate: Callable[[list[dict]], dict],
        *,
        seed: int,
        rank: int = 0,
        world: int = 1,
        start: int = 0,
    ):
        super().__init__()
        if not urls:
            raise ValueError("no training shards")
        self.urls, self.spec, self.prepare, self.collate = list(urls), spec, prepare, collate
        self.seed, self.rank, self.world, self.start = seed, rank, world, start

    def shards_for(self, epoch: int, worker: int, workers: int) -> list[str]:
        """This process's and worker's shards in an epoch (never empty: too few are reused)."""
        order = list(self.urls)
        random.Random(f"{self.seed}-shards-{epoch}").shuffle(order)
        slots = self.world * workers
        slot = self.rank * workers + worker
        mine = order[slot::slots]
        if not mine:  # fewer shards than slots: reuse, distinct per slot as far as they go
            mine = [order[slot % len(order)]]
        return mine

    def _epoch_batches(self, epoch: int, worker: int, workers: int) -> Iterator[list[RawSample]]:
        shards = self.shards_for(epoch, worker, workers)
        rng = random.Random(f"{self.seed}-batches-{epoch}-{self.rank}-{worker}")

        def samples() -> Iterator[RawSample | None]:
            spec = self.spec
            while True:  # resampling: cycle over the shards as long as the epoch needs
                order = list(shards)
                rng.shuffle(order)
                usable = 0
                for s in read_raw(order):
                    if spec.min_seconds <= s.duration <= spec.max_seconds:
                        usable += 1
                        yield s
                yield None  # end of a pass
                if usable == 0:
                    raise ValueError(
                        f"shards {', '.join(order)} hold no samples of {spec.min_seconds} to "
                        f"{spec.max_seconds} s (data.min_seconds, data.max_seconds)"
                    )

        return bucket(samples(), self.spec, rng)

    def _prepared(self, raw: list[RawSample]) -> dict | None:
        """The batch of model inputs, or None when no sample in it could be prepared: then the
        next batch takes its place (shards from `asr shard` hold audio that decoded once, so
        this is rare; a resume past such a batch is off by one batch)."""
        items, kept = [], []
        for s in raw:
            try:
                item = self.prepare(s)
            except Exception as e:  # a bad sample never stops training
                log.warning("%s: %s: skipped (%s)", s.shard, s.key, e)
                continue
            if item is not None:
                items.append(item)
                kept.append(s)
        if not items:
            return None
        batch = self.collate(items)
        batch["_keys"] = [s.key for s in kept]
        batch["_shards"] = sorted({s.shard for s in kept})
        batch["_seconds"] = sum(s.duration for s in kept)
        return batch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, phys = (info.num_workers, info.id) if info else (1, 0)
        # the data loader takes batches from its workers in turn, starting at worker 0: after a
        # resume at batch `start`, worker 0 must produce batch `start`, so ids are rotated
        worker = (phys + self.start) % workers
        e_len = self.spec.epoch_steps
        j = self.start + phys  # the global index of this worker's next batch
        while True:
            epoch = j // e_len
            stream = self._epoch_batches(epoch, worker, workers)
            first = epoch * e_len
            # batches of this epoch that belong to this worker and come before j: skip them
            skip = sum(1 for i in range(first, j) if i % workers == worker)
            for _ in range(skip):
                next(stream)
            while j < first + e_len:
                batch = None
                while batch is None:
                    batch = self._prepared(next(stream))
                batch["_epoch"], batch["_index"] = epoch, j
                yield batch
                j += workers


def dev_batches(
    urls: list[str],
    prepare: Callable[[RawSample], dict | None],
    collate: Callable[[list[dict]], dict],
    batch_size: int,
    max_samples: int = 0,
    text_field: str = "text",
) -> Iterator[tuple[dict, list[str]]]:
    """(batch, reference texts) over the dev shards in order: the same samples every time."""
    items: list[dict] = []
    refs: list[str] = []
    n = 0
    for s in read_raw(urls):
        if max_samples and n >= max_samples:
            break
        try:
            item = prepare(s)
        except Exception as e:
            log.warning("%s: %s: skipped in evaluation (%s)", s.shard, s.key, e)
            continue
        if item is None:
            continue
        n += 1
        items.append(item)
        refs.append(s.text(text_field))
        if len(items) == batch_size:
            yield collate(items), refs
            items, refs = [], []
    if items:
        yield collate(items), refs


def to_device(batch: dict, device: torch.device) -> dict:
    """The model's inputs of a batch on `device` (the bookkeeping entries left out)."""
    return {k: v.to(device) for k, v in batch.items() if not k.startswith("_")}
