"""`asr ingest`: holdings (audio/video files and a catalogue CSV) to a recordings manifest.

Every file is decoded in full by a real decoder, so the manifest's durations are true and a
corrupt file is found here, once, rather than in the middle of a training run. A file that
cannot be used gets an error record and the run goes on. Re-running re-decodes only new or
changed files (by size and modification time); an interrupted run resumes from a journal.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from asr.audio import MEDIA_EXTENSIONS, AudioError, probe
from asr.manifest import (
    ErrorRecord,
    ManifestError,
    Recording,
    iter_json_lines,
    read_recordings,
    write_manifest,
)
from asr.progress import bar as progress_bar
from asr.rights import RightsPolicy

log = logging.getLogger(__name__)

CATALOGUE_FIELDS = ("id", "path", "title", "date", "collection", "language", "rights")
"""Catalogue columns with a meaning; `transcript`, `text` and `speakers` too. Others: metadata."""
TEXT_FIELDS = ("transcript", "text", "speakers")
JOURNAL = ".ingest-journal.jsonl"


@dataclass
class IngestOptions:
    """Options of `ingest`; see `asr ingest --help`."""

    catalogue: Path | None = None
    columns: dict[str, str] = field(default_factory=dict)
    """Our field name -> the catalogue's column name, for catalogues that name them otherwise."""
    policy: Path | None = None
    workers: int = 0
    """Decoding processes; 0 means one per CPU."""
    progress: bool | None = None
    """Show a progress bar: True, False, or None for 'when stderr is a terminal'."""


@dataclass
class IngestResult:
    """What a run did; `errors` lists every file it could not use."""

    recordings: int = 0
    decoded: int = 0
    unchanged: int = 0
    hours: float = 0.0
    errors: list[ErrorRecord] = field(default_factory=list)
    manifest: Path | None = None
    errors_manifest: Path | None = None


@dataclass
class _Item:
    """A file to ingest, with what the catalogue says of it."""

    id: str
    path: Path
    row: dict[str, str] = field(default_factory=dict)
    catalogue_dir: Path | None = None


def ingest(
    holdings: list[Path], out_dir: Path, options: IngestOptions | None = None
) -> IngestResult:
    """Decode the holdings and write out_dir/recordings.jsonl and out_dir/errors.jsonl."""
    options = options or IngestOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    policy = RightsPolicy.load(options.policy)
    result = IngestResult(
        manifest=out_dir / "recordings.jsonl", errors_manifest=out_dir / "errors.jsonl"
    )

    items, errors = _collect(holdings, options)
    result.errors.extend(errors)
    cache = _load_cache(result.manifest, out_dir / JOURNAL)

    todo: list[_Item] = []
    known: dict[str, dict] = {}
    for item in items:
        try:
            st = item.path.stat()
        except OSError as e:
            result.errors.append(_error(item, f"cannot read file ({e.strerror or e})"))
            continue
        hit = cache.get(str(item.path))
        if hit and hit["size"] == st.st_size and hit["mtime_ns"] == st.st_mtime_ns:
            known[str(item.path)] = hit
            result.unchanged += 1
        else:
            todo.append(item)

    if todo:
        for item, audio in _decode_all(todo, out_dir / JOURNAL, options):
            if isinstance(audio, str):
                result.errors.append(_error(item, audio))
            else:
                known[str(item.path)] = audio
                result.decoded += 1

    recordings = []
    for item in items:
        audio = known.get(str(item.path))
        if audio is None:
            continue
        rec, problems = _recording(item, audio, policy)
        recordings.append(rec)
        result.errors.extend(problems)
    result.recordings = len(recordings)
    result.hours = sum(r.duration for r in recordings) / 3600
    write_manifest(result.manifest, recordings)
    write_manifest(result.errors_manifest, result.errors)
    (out_dir / JOURNAL).unlink(missing_ok=True)
    return result


def _error(item: _Item, reason: str) -> ErrorRecord:
    return ErrorRecord(path=str(item.path), reason=reason, stage="ingest", id=item.id)


def _collect(holdings: list[Path], options: IngestOptions) -> tuple[list[_Item], list[ErrorRecord]]:
    """The files to ingest: the catalogue's rows, then media files under holdings not in it."""
    items: list[_Item] = []
    errors: list[ErrorRecord] = []
    seen_ids: set[str] = set()
    seen_paths: set[Path] = set()
    if options.catalogue is not None:
        for item in read_catalogue(options.catalogue, options.columns):
            if item.id in seen_ids:
                errors.append(_error(item, f"duplicate id '{item.id}' in {options.catalogue}"))
                continue
            seen_ids.add(item.id)
            seen_paths.add(item.path)
            items.append(item)
    uncatalogued = 0
    for root in holdings:
        root = Path(root).resolve()
        if not root.exists():
            errors.append(ErrorRecord(str(root), "file not found", "ingest"))
            continue
        for path in _media_files(root):
            if path in seen_paths:
                continue
            rel = path.name if root.is_file() else path.relative_to(root).as_posix()
            item_id = rel if rel not in seen_ids else path.as_posix()
            seen_ids.add(item_id)
            seen_paths.add(path)
            items.append(_Item(id=item_id, path=path))
            uncatalogued += 1
    if options.catalogue is not None and uncatalogued:
        log.info("%d media files not in the catalogue: ingested with path ids", uncatalogued)
    return items, errors


def _media_files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if Path(name).suffix.lower() in MEDIA_EXTENSIONS and not name.startswith("."):
                yield Path(dirpath) / name


def read_catalogue(path: Path, columns: dict[str, str] | None = None) -> Iterator[_Item]:
    """Rows of a catalogue CSV as items; paths relative to the CSV's folder."""
    path = Path(path).resolve()
    rename = {theirs: ours for ours, theirs in (columns or {}).items()}
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = [rename.get(c, c) for c in (reader.fieldnames or [])]
        if "path" not in header:
            raise ValueError(f"{path}: the catalogue has no 'path' column (columns: {header})")
        for lineno, raw in enumerate(reader, 2):
            row = {rename.get(k, k): (v or "").strip() for k, v in raw.items() if k is not None}
            if not row.get("path"):
                log.warning("%s:%d: row without a path, skipped", path, lineno)
                continue
            file = (path.parent / row["path"]).resolve()
            yield _Item(
                id=row.get("id") or row["path"], path=file, row=row, catalogue_dir=path.parent
            )


def _load_cache(manifest: Path, journal: Path) -> dict[str, dict]:
    """Audio facts from an earlier run's manifest and an interrupted run's journal, by path."""
    cache: dict[str, dict] = {}
    if manifest.exists():
        try:
            for rec in read_recordings(manifest):
                cache[rec.path] = _audio_fields(asdict(rec))
        except ManifestError as e:
            log.warning("ignoring the earlier manifest: %s", e)
    if journal.exists():
        try:
            for _, obj in iter_json_lines(journal):
                cache[obj["path"]] = obj
        except ManifestError:
            pass  # a line cut short by a kill: what came before it is still good
    return cache


_AUDIO_KEYS = ("path", "sha256", "size", "mtime_ns", "duration", "sample_rate", "channels")


def _audio_fields(d: dict) -> dict:
    return {k: d[k] for k in (*_AUDIO_KEYS, "format", "codec")}


def _decode_all(
    todo: list[_Item], journal: Path, options: IngestOptions
) -> Iterator[tuple[_Item, dict | str]]:
    """Decode files in parallel processes; yield (item, audio facts or error reason)."""
    workers = options.workers or os.cpu_count() or 1
    total_s = 0.0
    bar = progress_bar("ingest", len(todo), options.progress, unit="file")
    pool = None
    if workers > 1 and len(todo) > 1:
        pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))
        futures = {pool.submit(_decode_one, str(item.path)): item for item in todo}
        results: Iterator = ((futures[f], f.result()) for f in cf.as_completed(futures))
    else:
        results = ((item, _decode_one(str(item.path))) for item in todo)
    with open(journal, "a", encoding="utf-8") as jf:
        try:
            for item, audio in results:
                if isinstance(audio, dict):
                    jf.write(json.dumps(audio) + "\n")
                    jf.flush()
                    total_s += audio["duration"]
                bar.update(1)
                bar.set_postfix_str(f"{total_s / 3600:.2f} h audio")
                yield item, audio
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown(cancel_futures=True)


def _decode_one(path: str) -> dict | str:
    """Hash and fully decode one file: its audio facts, or the reason it cannot be used."""
    try:
        st = os.stat(path)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        info = probe(path)
    except AudioError as e:
        return e.reason
    except OSError as e:
        return f"cannot read file ({e.strerror or e})"
    except Exception as e:  # a decoder bug must not stop the batch
        return f"unexpected decoder error ({type(e).__name__}: {e})"
    if info.duration <= 0:
        return "no audio samples could be decoded"
    return {
        "path": path,
        "sha256": digest.hexdigest(),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "duration": round(info.duration, 6),
        "sample_rate": info.sample_rate,
        "channels": info.channels,
        "format": info.format,
        "codec": info.codec,
    }


def _recording(
    item: _Item, audio: dict, policy: RightsPolicy
) -> tuple[Recording, list[ErrorRecord]]:
    """The recording record: audio facts, then what the catalogue says of it."""
    row = item.row
    problems: list[ErrorRecord] = []
    transcript = None
    if row.get("transcript"):
        tpath = (item.catalogue_dir / row["transcript"]).resolve()
        if tpath.is_file():
            transcript = str(tpath)
        else:
            problems.append(_error(item, f"transcript file not found: {tpath}"))
    known = {*CATALOGUE_FIELDS, *TEXT_FIELDS}
    rights = row.get("rights") or None
    rec = Recording(
        id=item.id,
        **{k: audio[k] for k in _AUDIO_KEYS if k != "path"},
        path=str(item.path),
        format=audio.get("format"),
        codec=audio.get("codec"),
        title=row.get("title") or None,
        date=row.get("date") or None,
        collection=row.get("collection") or None,
        language=row.get("language") or None,
        speakers=[s.strip() for s in row.get("speakers", "").split(";") if s.strip()],
        rights=rights,
        uses=policy.uses(rights),
        transcript=transcript,
        text=row.get("text") or None,
        metadata={k: v for k, v in row.items() if k not in known and v},
    )
    return rec, problems
