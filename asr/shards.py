"""`asr shard`: segments to webdataset tar shards for training, and a reader for them.

Each sample is `<key>.flac` (16 kHz mono) and `<key>.json` (the segment and its provenance).
Shards are `<split>-%06d.tar`, with a JSONL sidecar each and `shards.json` describing them all.
Splits are by recording (or speaker) from a hash of the seed and the group, so a group keeps its
split when the archive grows. Only segments whose rights allow training are written. A shard is
written under a temporary name and renamed when complete; a re-run skips samples already in
complete shards, so an interrupted run continues without duplicates or partial shards. A write
error (disk full, quota, I/O error) abandons the open shards, removes their temporary files and
fails the run with `ShardWriteError`; the same command run again then writes the shards an
uninterrupted run would have written.

Readers refuse what a shard written here never holds: shards.json entries that are not a file
name in the shard folder, tar members whose names could escape a folder, and members that are
not regular files (symbolic or hard links, devices, FIFOs).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import tarfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from asr.audio import SAMPLE_RATE, AudioError, cut_spans
from asr.manifest import ErrorRecord, Recording, Segment, read_recordings, read_segments
from asr.progress import bar as progress_bar
from asr.rights import RightsPolicy

if TYPE_CHECKING:  # imported where used: webdataset imports torch when it is installed
    import webdataset

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
_SHARD_RE = re.compile(r"^(train|dev|test)-(\d{6})\.tar$")


@dataclass
class ShardOptions:
    """Options of `shard`: each field but `progress` is an `asr shard` option (see
    asr/cliopts.py)."""

    recordings: Path | None = field(
        default=None,
        metadata={"help": "recordings manifest (default: recordings.jsonl beside SEGMENTS)"},
    )
    max_size: int = field(default=1_000_000_000, metadata={"help": "bytes per shard at most"})
    max_count: int = field(default=10_000, metadata={"help": "samples per shard at most"})
    dev_fraction: float = field(default=0.05, metadata={"help": "share of groups for dev"})
    test_fraction: float = field(default=0.05, metadata={"help": "share of groups for test"})
    split_by: str = field(
        default="recording",
        metadata={
            "choices": ("recording", "speaker", "time"),
            "help": "what may not appear in two splits; time: every recording in all three, "
            "cut in time (its first part train, then dev, its last part test: the same voices, "
            "unheard sentences, to measure adapting a model to a collection)",
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the split assignment"})
    policy: Path | None = field(
        default=None, metadata={"help": "rights policy YAML (default: the built-in one)"}
    )
    allow_empty_text: bool = field(
        default=False, metadata={"help": "also write segments without text"}
    )
    progress: bool | None = None


@dataclass
class ShardResult:
    """What `shard` wrote and what it left out, and why."""

    samples: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)
    resumed_samples: int = 0
    skipped_rights: int = 0
    skipped_no_text: int = 0
    errors: list[ErrorRecord] = field(default_factory=list)
    index: Path | None = None


class ShardWriteError(OSError):
    """A shard (or shards.json) could not be written; nothing partial of it was kept."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


def sample_key(segment_id: str) -> str:
    """A webdataset key for a segment id: no dots or slashes (webdataset splits keys on them)."""
    key = re.sub(r"[^A-Za-z0-9_-]", "_", segment_id)
    if key != segment_id:
        key += "-" + hashlib.sha1(segment_id.encode()).hexdigest()[:8]
    return key


def assign_splits(
    segments: list[Segment], recordings: dict[str, Recording], opts: ShardOptions
) -> None:
    """Set each segment's split (unless already set) so that no group is in two splits.

    A group (a recording, or a speaker with --split-by speaker) goes to test when a hash of the
    seed and its name falls below test_fraction, to dev below test+dev, else to train. Small
    corpora where the hash leaves dev or test empty get the lowest-hashing groups there.
    With --split-by time, a segment's split is where its middle lies in its recording: the
    last test_fraction of the recording's time is test, the dev_fraction before it dev.
    """
    if opts.split_by == "time":
        for s in segments:
            if s.split is None:
                rec = recordings.get(s.recording_id)
                length = rec.duration if rec and rec.duration > 0 else s.end
                at = (s.start + s.end) / 2 / max(length, 1e-9)
                test_from = 1 - opts.test_fraction
                dev_from = test_from - opts.dev_fraction
                s.split = "test" if at >= test_from else "dev" if at >= dev_from else "train"
        return

    def group(s: Segment) -> str:
        if opts.split_by == "speaker":
            speakers = recordings[s.recording_id].speakers
            return "speaker:" + (s.speaker or (speakers[0] if speakers else s.recording_id))
        return "recording:" + s.recording_id

    def u(g: str) -> float:
        h = hashlib.sha256(f"{opts.seed}:{g}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    groups = sorted({group(s) for s in segments if s.split is None}, key=u)
    chosen: dict[str, str] = {}
    for g in groups:
        x = u(g)
        chosen[g] = (
            "test"
            if x < opts.test_fraction
            else "dev"
            if x < opts.test_fraction + opts.dev_fraction
            else "train"
        )
    if len(groups) >= 3:  # make sure dev and test are not empty when asked for
        for split, frac in (("test", opts.test_fraction), ("dev", opts.dev_fraction)):
            if frac > 0 and split not in chosen.values():
                candidates = [g for g in groups if chosen[g] == "train"]
                if len(candidates) > 1:
                    chosen[candidates[0]] = split
    for s in segments:
        if s.split is None:
            s.split = chosen[group(s)]


class _ShardWriter:
    """Writes `<split>-%06d.tar` shards of one split, each under a temporary name until full.

    Not `wds.ShardWriter` (read in webdataset 1.0.2): it opens each shard under its final name
    (an `opener` can give a temporary file, but its `post(fname)` hook only gets the name, the
    stream it did not open is never closed, so it cannot be fsynced and renamed as the commit);
    it has no abort (`close()` finishes, and `post` would commit, a half-written shard after an
    OSError); it opens a first shard in `__init__` (an empty tar for a split with no sample);
    it cuts a shard after it passes `maxsize`, not before (other shard boundaries); and it
    writes no sidecar. So only its `TarWriter` is used.
    """

    def __init__(self, out_dir: Path, split: str, first_index: int, opts: ShardOptions):
        self.out_dir, self.split, self.index, self.opts = out_dir, split, first_index, opts
        self.tar: webdataset.TarWriter | None = None
        self.file = self.sidecar = None
        self.written: dict[str, dict] = {}  # shard name -> info, for shards finished this run

    def write(self, key: str, flac: bytes, meta: dict) -> None:
        """Add a sample; ShardWriteError (the open shard abandoned) where writing fails."""
        size = len(flac) + 2048
        if self.tar is not None and (
            self.count >= self.opts.max_count or self.size + size > self.opts.max_size
        ):
            self.close()
        meta_bytes = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")
        try:
            if self.tar is None:
                self._open()
            self.tar.write({"__key__": key, "flac": flac, "json": meta_bytes})
            self.sidecar.write(json.dumps({"key": key, **meta}, ensure_ascii=False) + "\n")
        except OSError as e:
            raise self._fail(e) from e
        self.count += 1
        self.size += size + len(meta_bytes)
        self.seconds += meta["duration"]

    def _open(self) -> None:
        self.name = f"{self.split}-{self.index:06d}.tar"
        self.tmp_tar = self.out_dir / f".{self.name}.tmp"
        self.tmp_sidecar = self.out_dir / f".{self.name[:-4]}.jsonl.tmp"
        self.count, self.size, self.seconds = 0, 0, 0.0
        self.file = open(self.tmp_tar, "wb")
        import webdataset as wds

        self.tar = wds.TarWriter(self.file, mtime=0)  # mtime 0: same input, same bytes
        self.sidecar = open(self.tmp_sidecar, "w", encoding="utf-8")

    def close(self) -> None:
        """Finish the open shard: sidecar renamed first, the tar last (the commit point).
        ShardWriteError (the shard abandoned, its sidecar too) where writing fails."""
        if self.tar is None:
            return
        sidecar = self.out_dir / f"{self.name[:-4]}.jsonl"
        try:
            self.tar.close()
            self.file.close()
            self.sidecar.close()
            for f in (self.tmp_sidecar, self.tmp_tar):
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            os.replace(self.tmp_sidecar, sidecar)
            os.replace(self.tmp_tar, self.out_dir / self.name)
        except OSError as e:
            if not (self.out_dir / self.name).exists():
                sidecar.unlink(missing_ok=True)  # a sidecar without its tar is no shard
            raise self._fail(e) from e
        self.written[self.name] = {"samples": self.count, "seconds": self.seconds}
        self.tar = self.file = self.sidecar = None
        self.index += 1

    def abort(self) -> None:
        """Abandon the open shard, if any: close its files, remove them (nothing is renamed)."""
        if self.tar is None and self.file is None:
            return
        # close the tar first (it marks its stream closed, which would else write at exit),
        # then the files; writing what is buffered may fail again (the disk still full)
        for f in (self.tar, self.file, self.sidecar):
            if f is not None:
                with contextlib.suppress(OSError, ValueError):
                    f.close()
        self.tar = self.file = self.sidecar = None
        for p in (self.tmp_tar, self.tmp_sidecar):
            try:
                p.unlink(missing_ok=True)
            except OSError as e:
                log.warning("%s: could not remove (%s)", p, e)

    def _fail(self, e: OSError) -> ShardWriteError:
        """Abandon the open shard; the error to raise, naming the shard and the reason."""
        self.abort()
        reason = e.strerror or str(e)
        return ShardWriteError(
            f"{self.out_dir / self.name}: cannot write the shard ({reason}); it was not kept. "
            "Free space (or fix the error) and run the same command again to continue",
            e.errno,
        )


def _existing_shards(out_dir: Path) -> dict[str, list[str]]:
    """Complete shards of an earlier run, by split, with the keys in each; clears leftovers."""
    for leftover in out_dir.glob(".*.tmp"):
        leftover.unlink()
    for sidecar in out_dir.glob("*.jsonl"):
        if _SHARD_RE.match(sidecar.stem + ".tar") and not sidecar.with_suffix(".tar").exists():
            sidecar.unlink()  # killed between the two renames: the tar was never committed
    shards: dict[str, list[str]] = {}
    for tar in sorted(out_dir.glob("*.tar")):
        if _SHARD_RE.match(tar.name):
            shards[tar.name] = _committed_keys(tar)
    return shards


def _committed_keys(tar: Path) -> list[str]:
    """The keys of a complete shard from its sidecar, checked against the tar's member names
    (a header scan, no audio read); ValueError where the two disagree or either is damaged."""
    sidecar = tar.with_suffix(".jsonl")
    try:
        with open(sidecar, encoding="utf-8") as f:
            keys = [json.loads(line)["key"] for line in f if line.strip()]
        members: list[tuple[str, str]] = []
        with tarfile.open(tar) as tf:
            for m in tf:
                check_member(str(tar), m)
                key, _, ext = m.name.partition(".")
                members.append((key, ext))
        expected = [(k, ext) for k in keys for ext in ("flac", "json")]
        problem = None if members == expected else "its members are not those the sidecar lists"
    except (OSError, ValueError, KeyError, TypeError, tarfile.TarError) as e:
        problem = f"{type(e).__name__}: {e}"
    if problem:
        raise ValueError(
            f"{tar}: a damaged shard from an earlier run ({problem}); delete {tar.name} and "
            f"{sidecar.name} and run the same command again to write their samples anew"
        )
    return keys


def _check_resumable(
    out_dir: Path, segments_path: Path, existing: dict[str, list[str]], keep: list[Segment]
) -> None:
    """A folder's committed shards must be the start of this run: every sample in them one
    this manifest writes, in the split it now goes to. Otherwise (another manifest, segments
    cut again, another split seed or rights policy) resuming would mix two datasets: refuse,
    naming a sample, rather than keep stale samples or delete the user's shards."""
    split_of = {sample_key(s.id): s.split for s in keep}
    for name, keys in existing.items():
        split = _SHARD_RE.match(name).group(1)
        for k in keys:
            if split_of.get(k) != split:
                why = (
                    f"goes to '{split_of[k]}' now"
                    if k in split_of
                    else f"is not among the samples of {segments_path} with these options"
                )
                raise ValueError(
                    f"{out_dir}: its shards come from another run: sample '{k}' in {name} {why}; "
                    "write to an empty folder, or delete its shards to write them anew"
                )


def shard(segments_path: Path, out_dir: Path, options: ShardOptions | None = None) -> ShardResult:
    """Write the training shards of a segments manifest to out_dir; see the module docstring."""
    opts = options or ShardOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    segments_path = Path(segments_path)
    rec_path = opts.recordings or segments_path.with_name("recordings.jsonl")
    recordings = {r.id: r for r in read_recordings(rec_path)}
    policy = RightsPolicy.load(opts.policy)
    result = ShardResult(index=out_dir / "shards.json")

    keep: list[Segment] = []
    for s in read_segments(segments_path):
        rec = recordings.get(s.recording_id)
        if rec is None:
            result.errors.append(
                ErrorRecord(
                    str(segments_path), f"unknown recording '{s.recording_id}'", "shard", s.id
                )
            )
        elif not policy.allows(rec.rights, "train"):
            result.skipped_rights += 1
        elif not s.text.strip() and not opts.allow_empty_text:
            result.skipped_no_text += 1
        else:
            keep.append(s)
    assign_splits(keep, recordings, opts)

    existing = _existing_shards(out_dir)
    done = {k for keys in existing.values() for k in keys}
    _check_resumable(out_dir, segments_path, existing, keep)
    next_index = Counter()
    for name in existing:
        split, idx = _SHARD_RE.match(name).groups()
        next_index[split] = max(next_index[split], int(idx) + 1)
    writers = {sp: _ShardWriter(out_dir, sp, next_index[sp], opts) for sp in SPLITS}

    # recordings in the order of their first segment in the manifest, done ones included: a
    # re-run then writes the rest in the order of an uninterrupted run, so the same shards
    by_rec: dict[str, list[Segment]] = defaultdict(list)
    for s in keep:
        todo = by_rec[s.recording_id]
        if sample_key(s.id) in done:
            result.resumed_samples += 1
        else:
            todo.append(s)
    total_s = sum(s.duration for segs in by_rec.values() for s in segs)
    bar = progress_bar("shard", total_s / 3600, opts.progress)
    try:
        for rid, segs in by_rec.items():
            if not segs:
                continue
            rec = recordings[rid]
            try:
                for seg, audio in _cut(rec, segs):
                    meta = _metadata(seg, rec)
                    writers[seg.split].write(sample_key(seg.id), _flac(audio), meta)
                    bar.update(seg.duration / 3600)
            except ShardWriteError:
                raise  # the output failed, not this recording: stop the run
            except (AudioError, OSError) as e:
                reason = e.reason if isinstance(e, AudioError) else str(e)
                result.errors.append(ErrorRecord(rec.path, reason, "shard", rec.id))
        for w in writers.values():
            w.close()
        _write_index(out_dir, existing, writers, result)
    except BaseException:
        for w in writers.values():  # shards still open are not kept (a re-run writes them)
            w.abort()
        raise
    finally:
        bar.close()
    return result


def _cut(rec: Recording, segs: list[Segment]) -> Iterator[tuple[Segment, np.ndarray]]:
    """Decode a recording once and yield each segment's audio as the stream passes it."""
    segs = sorted(segs, key=lambda s: (s.start, s.end))
    for i, audio in cut_spans(rec.path, [(s.start, s.end) for s in segs]):
        yield segs[i], audio


def _flac(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _metadata(seg: Segment, rec: Recording) -> dict:
    """The sample's JSON: every segment field, plus provenance from its recording."""
    meta = asdict(seg)
    meta.update(
        duration=round(seg.duration, 3),
        sample_rate=SAMPLE_RATE,
        collection=rec.collection,
        rights=rec.rights,
        source_sha256=rec.sha256,
        source_path=rec.path,
        title=rec.title,
        date=rec.date,
    )
    if not meta.get("language"):
        meta["language"] = rec.language
    return meta


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_index(
    out_dir: Path, existing: dict[str, list[str]], writers: dict, result: ShardResult
) -> None:
    """shards.json: per split its shards (samples, hours, bytes, sha256) and totals."""
    info: dict[str, dict] = {}
    for name in sorted({*existing, *(n for w in writers.values() for n in w.written)}):
        sidecar = out_dir / (name[:-4] + ".jsonl")
        with open(sidecar, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        tar = out_dir / name
        info[name] = {
            "name": name,
            "samples": len(rows),
            "seconds": round(sum(r["duration"] for r in rows), 3),
            "bytes": tar.stat().st_size,
            "sha256": _sha256(tar),
        }
    index: dict = {"version": 1, "sample_rate": SAMPLE_RATE, "splits": {}}
    for split in SPLITS:
        shards = [v for k, v in info.items() if k.startswith(split + "-")]
        n = sum(s["samples"] for s in shards)
        secs = sum(s["seconds"] for s in shards)
        result.samples[split], result.seconds[split] = n, secs
        index["splits"][split] = {
            "shards": shards,
            "samples": n,
            "hours": round(secs / 3600, 4),
        }
    index["skipped"] = {"rights": result.skipped_rights, "no_text": result.skipped_no_text}
    tmp = out_dir / ".shards.json.tmp"
    try:
        tmp.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out_dir / "shards.json")
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ShardWriteError(
            f"{out_dir / 'shards.json'}: cannot write the index ({e.strerror or e}); the shards "
            "are complete: free space and run the same command again to write it",
            e.errno,
        ) from e


def shard_paths(shard_dir: str | os.PathLike, split: str) -> list[str]:
    """Paths of a split's shards, as listed in SHARD_DIR/shards.json; ValueError for an entry
    that is not a file name in SHARD_DIR (an absolute path, `..`, a folder)."""
    shard_dir = Path(shard_dir)
    index_path = shard_dir / "shards.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    try:
        shards = index["splits"][split]["shards"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{index_path}: no '{split}' split") from e
    paths = []
    for s in shards:
        name = s.get("name") if isinstance(s, dict) else None
        if (
            not isinstance(name, str)
            or name in ("", ".", "..")
            or "/" in name
            or "\\" in name
            or "\0" in name
            or os.path.isabs(name)
        ):
            raise ValueError(
                f"{index_path}: refusing shard {name!r} (not a file name in the shard folder)"
            )
        paths.append(str(shard_dir / name))
    return paths


def _unsafe_name(name: str) -> bool:
    return os.path.isabs(name) or ".." in Path(name).parts


def safe_key(sample: dict) -> str:
    """A sample's key; ValueError for a tar member name that could escape a folder."""
    key = sample["__key__"]
    if _unsafe_name(key):
        raise ValueError(f"{sample.get('__url__')}: refusing tar member '{key}' (unsafe path)")
    return key


def check_member(tar: str, member: tarfile.TarInfo) -> None:
    """ValueError naming the tar and the member for one a shard never holds: a name that could
    escape a folder, or a member that is not a regular file (folders pass: they hold nothing)."""
    if _unsafe_name(member.name):
        raise ValueError(f"{tar}: refusing tar member '{member.name}' (unsafe path)")
    if member.isreg() or member.isdir():
        return
    if member.issym():
        kind = f"a symbolic link to '{member.linkname}'"
    elif member.islnk():
        kind = f"a hard link to '{member.linkname}'"
    elif member.ischr() or member.isblk():
        kind = "a device"
    elif member.isfifo():
        kind = "a FIFO"
    else:
        kind = f"of tar type {member.type!r}"
    raise ValueError(f"{tar}: refusing tar member '{member.name}' ({kind}, not a regular file)")


def check_tar(path: str | os.PathLike) -> None:
    """Check every member of a local tar with `check_member` (a scan of the headers only)."""
    with tarfile.open(path) as tf:
        for member in tf:
            check_member(str(path), member)


def _local_tar(url: str) -> str | None:
    """The file path of a shard URL that names a local file; None for pipe:, http: and such."""
    if url.startswith("file:"):
        url = url[len("file:") :]
    elif "://" in url or url.startswith("pipe:"):
        return None
    return url if os.path.isfile(url) else None


def _checked_tars(src: Iterator[dict]) -> Iterator[dict]:
    """Pipeline stage before webdataset opens each shard: `check_tar` on the local ones
    (webdataset itself skips non-regular members without a word)."""
    for item in src:
        path = _local_tar(item["url"]) if isinstance(item, dict) and "url" in item else None
        if path is not None:
            check_tar(path)
        yield item


def _webdataset(urls, **kwargs) -> webdataset.WebDataset:
    """wds.WebDataset with `_checked_tars` just before the stage that opens the shards."""
    import webdataset as wds

    ds = wds.WebDataset(urls, **kwargs)
    stages = ds.pipeline
    at = next(
        (i for i, st in enumerate(stages) if type(st).__name__ in ("StreamingOpen", "FileCache")),
        1,  # another webdataset: right after the URL source
    )
    stages.insert(at, _checked_tars)
    return ds


@dataclass
class RawSample:
    """A sample as read from its tar: audio still FLAC-encoded, metadata parsed."""

    key: str
    shard: str
    flac: bytes
    meta: dict

    @property
    def duration(self) -> float:
        return float(self.meta.get("duration") or 0.0)

    def text(self, field: str) -> str:
        value = self.meta.get(field)
        if field == "text_normalized" and not value:
            value = self.meta.get("text")
        return value or ""

    def audio(self) -> np.ndarray:
        audio, sr = sf.read(io.BytesIO(self.flac), dtype="float32")
        if sr != SAMPLE_RATE:
            raise ValueError(f"{self.shard}: {self.key}: sample rate {sr}, expected {SAMPLE_RATE}")
        return audio if audio.ndim == 1 else audio.mean(axis=1)


def read_raw(urls: list[str]) -> Iterator[RawSample]:
    """Samples of the tars in order, audio not decoded (training plans batches from the
    durations first); refuses unsafe and non-regular members, skips samples lacking flac or
    json."""
    ds = _webdataset(
        urls, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False
    )
    for s in ds:
        key = safe_key(s)
        if "flac" not in s or "json" not in s:
            log.warning("%s: %s has no flac or json member; skipped", s.get("__url__"), key)
            continue
        yield RawSample(key, os.path.basename(s["__url__"]), s["flac"], json.loads(s["json"]))


def _decode_sample(sample: dict) -> tuple[np.ndarray, dict]:
    key = safe_key(sample)
    for ext in ("flac", "json"):
        if ext not in sample:
            raise ValueError(f"{sample.get('__url__')}: sample '{key}' has no {ext} member")
    audio, sr = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
    meta = json.loads(sample["json"])
    meta["__key__"] = sample["__key__"]
    if sr != meta.get("sample_rate", sr):
        raise ValueError(f"{sample['__key__']}: sample rate {sr} != {meta['sample_rate']}")
    return audio, meta


def read_shards(urls: str | list[str], shuffle: int = 0, **kwargs) -> webdataset.WebDataset:
    """A webdataset pipeline over shards that yields (audio float32 16 kHz mono, metadata).

    urls: shard paths or a brace pattern; shuffle: sample shuffle buffer (0: file order);
    other keyword arguments go to `webdataset.WebDataset` (e.g. nodesplitter, resampled).
    """
    if not urls:
        raise ValueError("no shards to read (an empty split?)")
    kwargs.setdefault("shardshuffle", False)
    kwargs.setdefault("empty_check", False)
    ds = _webdataset(urls, **kwargs)
    if shuffle:
        ds = ds.shuffle(shuffle)
    return ds.map(_decode_sample)
