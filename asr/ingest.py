"""`asr ingest`: holdings (audio/video files and a catalogue CSV) to a recordings manifest.

Every file is decoded in full by a real decoder, so the manifest's durations are true and a
corrupt file is found here, once, rather than in the middle of a training run. A file that
cannot be used gets an error record and the run goes on. Re-running re-decodes only new or
changed files (by size and modification time); an interrupted run resumes from a journal.
"""

from __future__ import annotations

import csv
import hashlib
import logging
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
from asr.stage import Crashed, Journal, process_map

log = logging.getLogger(__name__)

CATALOGUE_FIELDS = ("id", "path", "title", "date", "collection", "language", "rights")
"""Catalogue columns with a meaning; `transcript`, `text` and `speakers` too. Others: metadata."""
TEXT_FIELDS = ("transcript", "text", "speakers")
JOURNAL = ".ingest-journal.jsonl"
_JOURNAL_KEY = {"stage": "ingest", "facts": 2}
"""The journal's options key: no option changes a file's audio facts; bump `facts` when
`_decode_one` changes what it measures, so that an interrupted run's facts are not reused."""


@dataclass
class IngestOptions:
    """Options of `ingest`: each field is an `asr ingest` option (see asr/cliopts.py)."""

    catalogue: Path | None = field(
        default=None,
        metadata={
            "help": "catalogue CSV: id, path (relative to the CSV), title, date, collection, "
            "language, rights, speakers (';'-separated), transcript (text file) or text; "
            "other columns are kept as metadata"
        },
    )
    columns: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "flag": "--column",
            "metavar": "FIELD=COLUMN",
            "help": "read FIELD from the catalogue's COLUMN (e.g. rights=license); repeatable",
        },
    )
    """Our field name -> the catalogue's column name, for catalogues that name them otherwise."""
    policy: Path | None = field(
        default=None,
        metadata={
            "help": "rights policy YAML (default: public domain, CC0, CC BY, CC BY-SA may "
            "train; anything else only transcribe)"
        },
    )
    allow_outside: bool = field(
        default=False,
        metadata={
            "help": "accept catalogue paths and transcripts (and symbolic links) that lead "
            "outside the holdings: the catalogue's folder and the HOLDINGS given. Without it "
            "such a row is refused (a failed item naming the row, the column and why) and the "
            "rest are ingested"
        },
    )
    workers: int = field(default=0, metadata={"help": "decoding processes; 0: one per CPU"})
    progress: bool | None = None
    """Show a progress bar: True, False, or None for 'when stderr is a terminal'."""


@dataclass
class IngestResult:
    """What a run did; `errors` lists every file it could not use."""

    recordings: int = 0
    decoded: int = 0
    unchanged: int = 0
    hours: float = 0.0
    warned: int = 0
    """Recordings whose decode reported problems (their `warnings`): usable, but check them."""
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
    transcript: Path | None = None
    refused: str | None = None
    """Why the catalogue row is not ingested (a path outside the holdings), or None."""


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
    journal = Journal(out_dir / JOURNAL, _JOURNAL_KEY).open()
    cache = _load_cache(result.manifest, journal)

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
        for item, audio in _decode_all(todo, journal, options):
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
        if rec.warnings:
            result.warned += 1
            log.warning("%s: decoded with warnings: %s", rec.path, "; ".join(rec.warnings))
    result.recordings = len(recordings)
    result.hours = sum(r.duration for r in recordings) / 3600
    write_manifest(result.manifest, recordings)
    write_manifest(result.errors_manifest, result.errors)
    journal.remove()
    return result


def _error(item: _Item, reason: str) -> ErrorRecord:
    return ErrorRecord(path=str(item.path), reason=reason, stage="ingest", id=item.id)


def _collect(holdings: list[Path], options: IngestOptions) -> tuple[list[_Item], list[ErrorRecord]]:
    """The files to ingest: the catalogue's rows, then media files under holdings not in it."""
    items: list[_Item] = []
    errors: list[ErrorRecord] = []
    seen_ids: set[str] = set()
    seen_paths: set[Path] = set()
    roots = None if options.allow_outside else _roots(holdings, options.catalogue)
    if options.catalogue is not None:
        for item in read_catalogue(options.catalogue, options.columns, roots):
            if item.refused:
                errors.append(_error(item, item.refused))
                continue
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
            if roots is not None and path.is_symlink() and not _inside(path.resolve(), roots):
                reason = f"a symbolic link to {path.resolve()}, {_outside(roots)}"
                errors.append(ErrorRecord(str(path), reason, "ingest", id=item_id))
                continue
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


def _roots(holdings: list[Path], catalogue: Path | None) -> list[Path]:
    """Where the holdings are: the catalogue's folder and each holdings folder (or file)."""
    roots = [Path(catalogue).resolve().parent] if catalogue is not None else []
    return roots + [Path(h).resolve() for h in holdings]


def _inside(path: Path, roots: list[Path]) -> bool:
    """Whether a resolved path is one of roots or under one."""
    return any(path.is_relative_to(root) for root in roots)


def _outside(roots: list[Path]) -> str:
    where = ", ".join(str(r) for r in roots)
    folder = "folder" if len(roots) == 1 else "folders"
    return f"outside the holdings {folder} ({where}); --allow-outside accepts it"


def read_catalogue(
    path: Path, columns: dict[str, str] | None = None, roots: list[Path] | None = None
) -> Iterator[_Item]:
    """Rows of a catalogue CSV as items; paths relative to the CSV's folder.

    Given roots, a row whose `path` or `transcript` leads outside them (an absolute path, `..`,
    a symbolic link) comes back `refused`, with its row number, the column and why."""
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
            tfile = (path.parent / row["transcript"]).resolve() if row.get("transcript") else None
            refused = None
            for column, target in (("path", file), ("transcript", tfile)):
                if roots is not None and target is not None and not _inside(target, roots):
                    value = row[column]
                    to = "" if value == str(target) else f" (which resolves to {target})"
                    refused = (
                        f"{path.name} row {lineno}, column '{column}': '{value}'{to} "
                        f"is {_outside(roots)}"
                    )
                    break
            yield _Item(
                id=row.get("id") or row["path"],
                path=file,
                row=row,
                catalogue_dir=path.parent,
                transcript=tfile,
                refused=refused,
            )


def _load_cache(manifest: Path, journal: Journal) -> dict[str, dict]:
    """Audio facts from an earlier run's manifest and an interrupted run's journal, by path."""
    cache: dict[str, dict] = {}
    if manifest.exists():
        try:
            # records from before decodes were checked (no `warnings` key) are decoded again,
            # so that a file cut short gets its warnings
            checked = {o.get("path") for _, o in iter_json_lines(manifest) if "warnings" in o}
            for rec in read_recordings(manifest):
                if rec.path in checked:
                    cache[rec.path] = _audio_fields(asdict(rec))
        except ManifestError as e:
            log.warning("ignoring the earlier manifest: %s", e)
    for path, facts in journal.entries.items():
        cache[path] = {k: v for k, v in facts.items() if k != "id"}
    return cache


_AUDIO_KEYS = ("path", "sha256", "size", "mtime_ns", "duration", "sample_rate", "channels")


def _audio_fields(d: dict) -> dict:
    optional = ("format", "codec", "declared_duration", "warnings")
    return {**{k: d[k] for k in _AUDIO_KEYS}, **{k: d.get(k) for k in optional}}


def _decode_all(
    todo: list[_Item], journal: Journal, options: IngestOptions
) -> Iterator[tuple[_Item, dict | str]]:
    """Decode files in worker processes; yield (item, audio facts or error reason).

    Decoding never runs in this process: a decoder that crashes (a segfault) fails its file
    (see `process_map`), and the run goes on. Each file's facts go to the journal, by path."""
    workers = min(options.workers or os.cpu_count() or 1, len(todo))
    total_s = 0.0
    bar = progress_bar("ingest", len(todo), options.progress, unit="file")
    jobs = [(item, (str(item.path),)) for item in todo]
    try:
        for item, audio in process_map(_decode_one, jobs, workers):
            if isinstance(audio, Crashed):
                audio = audio.reason
            if isinstance(audio, dict):
                journal.add(audio["path"], audio)
                total_s += audio["duration"]
            bar.update(1)
            bar.set_postfix_str(f"{total_s / 3600:.2f} h audio")
            yield item, audio
    finally:
        bar.close()
        journal.close()


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
        "declared_duration": info.declared_duration,
        "warnings": info.warnings,
    }


def _recording(
    item: _Item, audio: dict, policy: RightsPolicy
) -> tuple[Recording, list[ErrorRecord]]:
    """The recording record: audio facts, then what the catalogue says of it."""
    row = item.row
    problems: list[ErrorRecord] = []
    transcript = None
    if item.transcript is not None:
        tpath = item.transcript
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
        declared_duration=audio.get("declared_duration"),
        warnings=audio.get("warnings") or [],
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
