"""What `asr transcribe` is given, as jobs: folders, media files and recordings manifests.

Each recording becomes a Job whose key (its outputs' path under OUT_DIR) depends on the
recording alone, never on the order or company of the inputs.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from asr.audio import MEDIA_EXTENSIONS
from asr.manifest import output_key, read_recordings

MANIFEST_SUFFIXES = (".jsonl", ".jsonl.gz")


@dataclass
class Job:
    """One recording to transcribe; key is its output path under OUT_DIR, without extension."""

    key: str
    path: str
    recording_id: str
    language: str | None = None
    metadata: dict = field(default_factory=dict)


def collect_jobs(inputs: list[str | os.PathLike]) -> list[Job]:
    """Recordings from folders (every media file), files, or recordings manifests."""
    jobs: list[Job] = []
    many = len(inputs) > 1
    for item in inputs:
        p = Path(item)
        if p.is_file() and p.name.endswith(MANIFEST_SUFFIXES):
            for rec in read_recordings(p):
                meta = {
                    k: v
                    for k, v in asdict(rec).items()
                    if k in ("title", "date", "collection", "rights", "speakers") and v
                }
                meta["id"] = rec.id
                meta.update(rec.metadata)
                jobs.append(Job(output_key(rec.id), rec.path, rec.id, rec.language, meta))
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                # a broken link or a folder named like media is a job that fails, with why
                if f.suffix.lower() in MEDIA_EXTENSIONS and (
                    f.is_file() or f.is_dir() or f.is_symlink()
                ):
                    if any(part.startswith(".") for part in f.relative_to(p).parts):
                        continue
                    rel = f.relative_to(p).as_posix()
                    key = output_key(f"{p.name}/{rel}" if many else rel)
                    jobs.append(Job(key, str(f.resolve() if f.exists() else f.absolute()), rel))
        elif p.is_file():
            jobs.append(Job(output_key(p.name), str(p.resolve()), p.name))
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    _distinct_keys(jobs)
    return jobs


def _distinct_keys(jobs: list[Job]) -> None:
    """Inputs that would write the same outputs get names that depend on themselves alone, not
    on the order or company they came in: the file's extension (talk.mp3, talk.wav), then a
    short hash of its path."""
    for rename in (_with_extension, _with_path_hash):
        by_key: dict[str, list[Job]] = {}
        for job in jobs:
            by_key.setdefault(job.key, []).append(job)
        for same in by_key.values():
            if len(same) > 1:
                for job in same:
                    job.key = rename(job)


def _with_extension(job: Job) -> str:
    ext = os.path.splitext(job.path)[1].lower().lstrip(".")
    return f"{job.key}.{ext}" if ext and not job.key.endswith(f".{ext}") else job.key


def _with_path_hash(job: Job) -> str:
    return f"{job.key}-{hashlib.sha1(job.path.encode()).hexdigest()[:8]}"
