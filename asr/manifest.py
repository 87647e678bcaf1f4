"""Records of the data model (Recording, Segment) and their JSONL manifests.

Every stage is a function from manifest to manifest, as in lhotse: one JSON object per line,
plain or gzip-compressed, streamed so that a manifest never has to fit in memory. Each record
type has a JSON Schema in asr/schemas/; reading validates against it and names the file, the
line and the field of any error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import IO, Any, TypeVar

import jsonschema

from asr.audio import MEDIA_EXTENSIONS


class ManifestError(ValueError):
    """A manifest line that is not valid JSON or does not follow its record's schema."""

    def __init__(self, path: str | os.PathLike, line: int, field_name: str | None, reason: str):
        self.path, self.line, self.field, self.reason = str(path), line, field_name, reason
        where = f"{path}:{line}" + (f": field '{field_name}'" if field_name else "")
        super().__init__(f"{where}: {reason}")


class TranscriptError(ValueError):
    """A recording's transcript file cannot be read; the message names the file and why."""


@dataclass
class Recording:
    """One decodable audio or video file of the holdings."""

    id: str
    path: str
    sha256: str
    duration: float
    sample_rate: int
    channels: int
    size: int = 0
    mtime_ns: int = 0
    format: str | None = None
    codec: str | None = None
    declared_duration: float | None = None
    """Seconds the file's header claims, when it claims any; more than `duration` when the
    file is cut short (only `duration` seconds of it could be decoded)."""
    warnings: list[str] = field(default_factory=list)
    """What decoding ran into (skipped packets, audio missing, FFmpeg's warnings); empty when
    the file decoded cleanly."""
    title: str | None = None
    date: str | None = None
    collection: str | None = None
    language: str | None = None
    speakers: list[str] = field(default_factory=list)
    rights: str | None = None
    uses: list[str] = field(default_factory=list)
    transcript: str | None = None
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def reference_text(self) -> str | None:
        """The untimed transcript, inline or read from its file; None when there is none."""
        if self.text is not None and self.text.strip():
            return self.text
        if self.transcript:
            try:
                return Path(self.transcript).read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                byte = e.object[e.start]
                raise TranscriptError(
                    f"{self.transcript}: the transcript is not UTF-8 (byte 0x{byte:02x} at "
                    f"position {e.start}); save it as UTF-8"
                ) from None
            except OSError as e:
                raise TranscriptError(
                    f"{self.transcript}: cannot read the transcript ({e.strerror or e})"
                ) from None
        return None


@dataclass
class Segment:
    """A stretch [start, end) of one recording, in seconds, with its text when known."""

    id: str
    recording_id: str
    start: float
    end: float
    text: str = ""
    text_normalized: str | None = None
    text_source: str | None = None
    language: str | None = None
    speaker: str | None = None
    scores: dict[str, float | None] = field(default_factory=dict)
    split: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class ErrorRecord:
    """A file a stage could not use, and why."""

    path: str
    reason: str
    stage: str
    id: str | None = None


Record = TypeVar("Record", Recording, Segment)

_SCHEMAS = {Recording: "recording.schema.json", Segment: "segment.schema.json"}


@lru_cache
def schema(record_type: type) -> dict:
    """The JSON Schema of a record type, as shipped in asr/schemas/."""
    text = resources.files("asr").joinpath("schemas/" + _SCHEMAS[record_type]).read_text("utf-8")
    return json.loads(text)


@lru_cache
def _validator(record_type: type) -> jsonschema.protocols.Validator:
    sch = schema(record_type)
    return jsonschema.validators.validator_for(sch)(sch)


def _open_text(path: str | os.PathLike, mode: str) -> IO[str]:
    if str(path).endswith(".gz"):
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line of a JSONL(.gz) file."""
    with _open_text(path, "r") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(path, lineno, None, f"not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ManifestError(path, lineno, None, "a record must be a JSON object")
            yield lineno, obj


def validate_record(obj: dict, record_type: type, path: str | os.PathLike, line: int) -> None:
    """Raise ManifestError naming the field when obj does not follow the record's schema."""
    error = jsonschema.exceptions.best_match(_validator(record_type).iter_errors(obj))
    if error is not None:
        field_name = ".".join(str(p) for p in error.absolute_path) or None
        if error.validator == "required":
            field_name = error.message.split("'")[1]
        elif error.validator == "additionalProperties":
            field_name = field_name or error.message.split("'")[1]
        raise ManifestError(path, line, field_name, error.message)
    if record_type is Segment and obj["end"] <= obj["start"]:
        raise ManifestError(path, line, "end", f"end {obj['end']} is not after start")


def read_manifest(
    path: str | os.PathLike, record_type: type[Record], validate: bool = True
) -> Iterator[Record]:
    """Stream the records of a manifest, validating each line against its schema."""
    names = {f.name for f in dataclasses.fields(record_type)}
    for lineno, obj in iter_json_lines(path):
        if validate:
            validate_record(obj, record_type, path, lineno)
        yield record_type(**{k: v for k, v in obj.items() if k in names})


def to_json(record: Any) -> str:
    """One JSONL line (without newline) for a dataclass record."""
    return json.dumps(dataclasses.asdict(record), ensure_ascii=False, separators=(",", ":"))


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, else set and put back)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
"""The name `atomic_output` gives a temporary file (mkstemp: '.NAME.' + 8 characters + '.tmp')."""


def remove_stale_temps(folder: str | os.PathLike, name: str | None = None) -> int:
    """Remove the temporary files an interrupted writer left in folder (and its subfolders),
    or only those of the output called name; returns how many. Call it where no other writer
    works on the same outputs (a run that holds its folder, or before writing name)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    found = folder.glob(f".{glob.escape(name)}.*.tmp") if name else folder.rglob(".*.tmp")
    pattern = re.compile(rf"^\.{re.escape(name)}\.[A-Za-z0-9_]{{8}}\.tmp$") if name else TEMP_NAME
    n = 0
    for p in found:
        if pattern.match(p.name) and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                n += 1
    return n


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w", sweep: bool = False) -> Iterator[IO]:
    """Open a temporary file beside path and rename it over path only if the block succeeds.

    sweep: first remove the temporary files a killed writer of path left (a scan of its
    folder: for the one manifest a stage writes, not for each of a run's many transcripts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sweep:
        remove_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600: outputs are for others too
    os.close(fd)
    try:
        if "b" in mode:
            f: IO = open(tmp, mode)
        elif path.name.endswith(".gz"):
            f = gzip.open(tmp, mode + "t", encoding="utf-8")
        else:
            f = open(tmp, mode, encoding="utf-8")
        with f:
            yield f
            f.flush()
            if hasattr(f, "fileno"):
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_manifest(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Write records as JSONL(.gz) atomically; return how many were written."""
    n = 0
    with atomic_output(path, sweep=True) as f:
        for record in records:
            f.write(to_json(record) + "\n")
            n += 1
    return n


def read_recordings(path: str | os.PathLike) -> Iterator[Recording]:
    return read_manifest(path, Recording)


def read_segments(path: str | os.PathLike) -> Iterator[Segment]:
    return read_manifest(path, Segment)


def export_nemo(
    segments: Iterable[Segment], recordings: dict[str, Recording], out: str | os.PathLike
) -> int:
    """NeMo ASR manifest: audio_filepath, offset, duration, text (plus lang) per segment."""

    def rows() -> Iterator[dict]:
        for s in segments:
            rec = recordings[s.recording_id]
            row = {
                "audio_filepath": rec.path,
                "offset": round(s.start, 3),
                "duration": round(s.duration, 3),
                "text": s.text,
            }
            if s.language or rec.language:
                row["lang"] = s.language or rec.language
            yield row

    return _write_dicts(out, rows())


def export_lhotse(
    segments: Iterable[Segment],
    recordings: dict[str, Recording],
    out_dir: str | os.PathLike,
) -> tuple[Path, Path]:
    """lhotse RecordingSet and SupervisionSet JSONL(.gz) files, as lhotse's `load_manifest` reads.

    Returns (recordings path, supervisions path).
    """
    # Written as dicts, not with lhotse's Recording/SupervisionSegment and its writer: lhotse
    # (1.33.0) requires torch and `import lhotse` imports it (lhotse/audio/backend.py), which
    # the inference install must not pull in; the rows are those objects' to_dict() fields, and
    # tests load them with lhotse.load_manifest.
    out_dir = Path(out_dir)
    rec_path = out_dir / "recordings.lhotse.jsonl.gz"
    sup_path = out_dir / "supervisions.lhotse.jsonl.gz"
    segments = list(segments)
    used = sorted({s.recording_id for s in segments})

    def rec_rows() -> Iterator[dict]:
        for rid in used:
            rec = recordings[rid]
            yield {
                "id": rec.id,
                "sources": [
                    {"type": "file", "channels": list(range(rec.channels)), "source": rec.path}
                ],
                "sampling_rate": rec.sample_rate,
                "num_samples": round(rec.duration * rec.sample_rate),
                "duration": rec.duration,
                "channel_ids": list(range(rec.channels)),
            }

    def sup_rows() -> Iterator[dict]:
        for s in segments:
            rec = recordings[s.recording_id]
            row = {
                "id": s.id,
                "recording_id": s.recording_id,
                "start": round(s.start, 3),
                "duration": round(s.duration, 3),
                "channel": 0 if rec.channels == 1 else list(range(rec.channels)),
                "text": s.text,
            }
            if s.language or rec.language:
                row["language"] = s.language or rec.language
            if s.speaker:
                row["speaker"] = s.speaker
            yield row

    _write_dicts(rec_path, rec_rows())
    _write_dicts(sup_path, sup_rows())
    return rec_path, sup_path


def _write_dicts(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_output(path, sweep=True) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def output_key(name: str) -> str:
    """A safe output path (relative, no '..') for a recording id or path, minus its extension."""
    parts = [re.sub(r"[^\w.\-]+", "_", x) for x in name.replace("\\", "/").split("/")]
    parts = [x for x in parts if x not in ("", ".", "..")] or ["recording"]
    stem, ext = os.path.splitext(parts[-1])
    if ext.lower() in MEDIA_EXTENSIONS and stem:
        parts[-1] = stem
    return "/".join(parts)
