"""Generate a small synthetic "library sound archive" for demos and tests.

The speech-corpus pipeline needs realistic input: a catalogue CSV next to audio in many
formats (wav, flac, mp3, ogg/opus, m4a, an mp4 video), mixed languages and voices, varying
rights statements, some transcripts inline and some in files, some missing, plus a corrupt and
an empty file. Real archive material cannot ship with the repository, so this module builds
such an archive from espeak-ng speech and plain sentences written for this purpose.

Two data files next to this module describe the archive: ``sentences.json`` holds the sentences
of each language, and ``items.csv`` the items in catalogue order (path, format, catalogue
fields, espeak-ng voice, speed and pitch, sample rate, channels, length, transcript kind, level
and hiss). Edit them, not this code, to change what is built, and bump ``ARCHIVE_VERSION``.

Output is deterministic for a given seed and espeak-ng version: every random choice (sentence
order, pauses, noise, corrupt bytes) comes from ``numpy.random.default_rng(seed)``, and files
carry no timestamps. Lossless files are byte-identical between runs; lossy ones are as close as
the encoders allow.

The build is idempotent and atomic: an archive whose ``.complete`` marker matches the seed and
``ARCHIVE_VERSION`` is left alone; otherwise the archive is built in a hidden temporary
directory next to OUT_DIR and renamed into place, so an interrupted run never leaves a
half-built OUT_DIR.

It lives outside the ``asr`` package (and its wheel): ``make sample`` runs it into
``build/sample-archive`` for the demo, and the tests call ``build_sample_archive`` from
``tests/conftest.py``. Usage, from the repository root::

    python -m sample_archive.build OUT_DIR [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import shutil
import subprocess
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

log = logging.getLogger("sample_archive")  # not __main__ under python -m

#: Bump when the generated content changes, so existing archives are rebuilt.
ARCHIVE_VERSION = 1

CATALOGUE_NAME = "catalogue.csv"
MARKER_NAME = ".complete"
COLUMNS = (
    "id",
    "path",
    "title",
    "date",
    "collection",
    "language",
    "rights",
    "transcript",
    "text",
    "shelfmark",
)
ESPEAK_RATE = 22050  # espeak-ng always writes 22.05 kHz mono
HERE = Path(__file__).parent
SENTENCES_FILE = HERE / "sentences.json"
ITEMS_FILE = HERE / "items.csv"


@dataclasses.dataclass(frozen=True)
class Item:
    """One catalogue entry and how to synthesise and encode it."""

    path: str  # relative to the catalogue
    fmt: str  # wav | flac | mp3 | opus | m4a | mp4 | corrupt | empty
    language: str
    title: str
    date: str
    rights: str
    voice: str = ""
    speed: int = 160
    pitch: int = 50
    rate: int = 16000
    channels: int = 1
    target_s: float = 0.0  # upper bound on duration; sentences are added while they fit
    transcript: str = "none"  # inline | file | none
    peak: float = 0.7
    noise: float = 0.0  # amplitude of a faint hiss (old tape)

    @property
    def collection(self) -> str:
        return self.path.split("/", 1)[0]


FORMATS = ("wav", "flac", "mp3", "opus", "m4a", "mp4", "corrupt", "empty")
TRANSCRIPTS = ("inline", "file", "none")


def load_sentences(path: Path = SENTENCES_FILE) -> dict[str, tuple[str, ...]]:
    """The sentences each language's items are spoken from: ``{"en": ["...", ...], ...}``.

    Plain sentences written for this archive (no third-party text), without digits, so that a
    transcript is exactly what is spoken.
    """
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    sentences = {}
    for language, pool in data.items():
        if not pool or not all(isinstance(s, str) and s.strip() for s in pool):
            raise ValueError(f"{path}: {language!r} needs a list of non-empty sentences")
        if any(c.isdigit() for s in pool for c in s):
            raise ValueError(f"{path}: {language!r} has a digit; write numbers out in words")
        sentences[language] = tuple(pool)
    return sentences


def load_items(sentences: dict[str, tuple[str, ...]], path: Path = ITEMS_FILE) -> tuple[Item, ...]:
    """The archive's items in catalogue order, one CSV row each, with ``Item``'s fields as columns.

    An empty cell in a column that has a default (``voice`` onwards) takes the default; the
    corrupt and the empty file leave those synthesis settings empty.
    """
    fields = dataclasses.fields(Item)
    names = [f.name for f in fields]
    items: list[Item] = []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != names:
            raise ValueError(f"{path}: the columns must be {','.join(names)}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row or None in row.values():
                raise ValueError(f"{where}: expected {len(names)} cells")
            values = {}
            for field in fields:
                cell = row[field.name]
                if field.default is dataclasses.MISSING:
                    values[field.name] = cell
                elif cell != "":
                    try:
                        values[field.name] = type(field.default)(cell)
                    except ValueError:
                        raise ValueError(f"{where}: bad {field.name} {cell!r}") from None
            item = Item(**values)
            if item.fmt not in FORMATS:
                raise ValueError(f"{where}: fmt {item.fmt!r} is not one of {', '.join(FORMATS)}")
            if item.transcript not in TRANSCRIPTS:
                raise ValueError(f"{where}: transcript must be one of {', '.join(TRANSCRIPTS)}")
            if item.fmt not in ("corrupt", "empty") and item.language not in sentences:
                raise ValueError(f"{where}: no sentences for language {item.language!r}")
            if any(item.path == other.path for other in items):
                raise ValueError(f"{where}: {item.path} is listed twice")
            items.append(item)
    return tuple(items)


SENTENCES = load_sentences()
ITEMS = load_items(SENTENCES)

PYAV_FORMATS = {
    # fmt: (container format, audio codec, audio bit rate)
    "mp3": ("mp3", "libmp3lame", 48_000),
    "opus": ("ogg", "libopus", 32_000),
    "m4a": ("mp4", "aac", 48_000),
    "mp4": ("mp4", "aac", 48_000),
}
BITEXACT_CONTAINER = {"fflags": "+bitexact"}  # no encoder version strings, fixed ogg serials
BITEXACT_CODEC = {"flags": "+bitexact"}


class Speaker:
    """Synthesises single sentences with espeak-ng, caching the results."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("espeak-ng")
        if exe is None:
            raise RuntimeError("espeak-ng is needed to build the sample archive; install it")
        self.exe = exe
        self.wav = workdir / "sentence.wav"
        self.cache: dict[tuple[str, int, int, str], np.ndarray] = {}

    def say(self, text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
        """Mono float32 speech at ESPEAK_RATE with leading/trailing silence trimmed."""
        key = (voice, speed, pitch, text)
        if key not in self.cache:
            cmd = [self.exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(self.wav)]
            subprocess.run([*cmd, text], check=True, capture_output=True)
            audio, rate = sf.read(self.wav, dtype="float32", always_2d=True)
            if rate != ESPEAK_RATE:
                raise RuntimeError(f"espeak-ng wrote {rate} Hz, expected {ESPEAK_RATE}")
            self.cache[key] = _trim(audio[:, 0])
        return self.cache[key]


def _trim(x: np.ndarray, threshold: float = 1e-3, margin_s: float = 0.02) -> np.ndarray:
    """Cut near-silence from both ends, keeping a short margin."""
    loud = np.flatnonzero(np.abs(x) > threshold)
    if loud.size == 0:
        return x
    margin = int(margin_s * ESPEAK_RATE)
    return x[max(0, loud[0] - margin) : loud[-1] + margin + 1]


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * ESPEAK_RATE)), dtype=np.float32)


def _compose(
    item: Item, speaker: Speaker, rng: np.random.Generator
) -> tuple[np.ndarray, list[str]]:
    """Speech for one item at ESPEAK_RATE, and the sentences spoken in order.

    Sentences come from the item's language pool in a seeded order, cycling if needed; each
    is added only if it still fits within ``item.target_s`` (at least one always is).
    """
    pool = SENTENCES[item.language]
    lead, trail = rng.uniform(0.5, 1.0, size=2)
    budget = item.target_s - lead - trail
    order = rng.permutation(len(pool))
    parts: list[np.ndarray] = [_silence(lead)]
    spoken: list[str] = []
    used = 0.0
    misses = 0
    position = 0
    while misses < len(pool) and position < 20 * len(pool):
        text = pool[order[position % len(pool)]]
        position += 1
        speech = speaker.say(text, item.voice, item.speed, item.pitch)
        gap = float(rng.uniform(0.3, 1.5)) if spoken else 0.0
        needed = gap + speech.size / ESPEAK_RATE
        if spoken and used + needed > budget:
            misses += 1
            continue
        misses = 0
        if gap:
            parts.append(_silence(gap))
        parts.append(speech)
        spoken.append(text)
        used += needed
    parts.append(_silence(trail))
    audio = np.concatenate(parts)
    audio *= item.peak / max(float(np.max(np.abs(audio))), 1e-9)
    if item.noise:
        audio += (item.noise * rng.standard_normal(audio.size)).astype(np.float32)
    return audio.astype(np.float32), spoken


def _resample(x: np.ndarray, rate: int) -> np.ndarray:
    """Resample mono float32 audio from ESPEAK_RATE to ``rate`` with libswresample."""
    if rate == ESPEAK_RATE:
        return x
    frame = av.AudioFrame.from_ndarray(x[None, :], format="fltp", layout="mono")
    frame.sample_rate = ESPEAK_RATE
    frame.pts = 0
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
    out = resampler.resample(frame) + resampler.resample(None)
    return np.concatenate([f.to_ndarray()[0] for f in out]).astype(np.float32)


def _to_channels(x: np.ndarray, rate: int, channels: int) -> np.ndarray:
    """(channels, samples); the second channel is delayed 3 ms and scaled by 0.8."""
    if channels == 1:
        return x[None, :]
    delay = int(0.003 * rate)
    right = np.concatenate([np.zeros(delay, np.float32), x[:-delay]]) * np.float32(0.8)
    return np.stack([x, right])


def _write_pyav(path: Path, audio: np.ndarray, rate: int, fmt: str) -> None:
    """Encode (channels, samples) float32 audio with PyAV; ``mp4`` adds a solid-colour video."""
    container_format, codec, bit_rate = PYAV_FORMATS[fmt]
    layout = "mono" if audio.shape[0] == 1 else "stereo"
    with av.open(
        str(path), "w", format=container_format, container_options=BITEXACT_CONTAINER
    ) as out:
        video = None
        if fmt == "mp4":
            fps = 5
            video = out.add_stream("mpeg4", rate=fps, options=dict(BITEXACT_CODEC))
            video.width = video.height = 64
            video.pix_fmt = "yuv420p"
            video.bit_rate = 50_000
            video.codec_context.time_base = Fraction(1, fps)
        stream = out.add_stream(codec, rate=rate, layout=layout, options=dict(BITEXACT_CODEC))
        stream.bit_rate = bit_rate

        if video is not None:
            colour = np.zeros((64, 64, 3), dtype=np.uint8)
            colour[:] = (24, 64, 120)  # a dark blue test card
            n_frames = int(np.ceil(audio.shape[1] / rate * fps))
            for i in range(n_frames):
                frame = av.VideoFrame.from_ndarray(colour, format="rgb24")
                frame.pts = i
                frame.time_base = Fraction(1, fps)
                out.mux(video.encode(frame.reformat(format="yuv420p")))
            out.mux(video.encode(None))

        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), "fltp", layout)
        frame.sample_rate = rate
        frame.pts = 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _write_audio(path: Path, audio: np.ndarray, rate: int, fmt: str) -> None:
    """Write (channels, samples) audio in the item's format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt in ("wav", "flac"):
        sf.write(path, np.clip(audio.T, -1, 1), rate, subtype="PCM_16", format=fmt.upper())
    else:
        _write_pyav(path, audio, rate, fmt)


def _shelfmark(item: Item, number: int) -> str:
    return f"SA-{item.date[:4]}-{number:03d}"


def _build(root: Path, seed: int) -> Path:
    """Write the whole archive into ``root`` (an empty directory)."""
    rng = np.random.default_rng(seed)
    item_rngs = rng.spawn(len(ITEMS))
    rows = []
    with tempfile.TemporaryDirectory(prefix="espeak-") as tmp:
        speaker = Speaker(Path(tmp))
        for number, (item, item_rng) in enumerate(zip(ITEMS, item_rngs, strict=True), start=1):
            path = root / item.path
            path.parent.mkdir(parents=True, exist_ok=True)
            transcript, text = "", ""
            if item.fmt == "corrupt":
                path.write_bytes(item_rng.bytes(20 * 1024))
            elif item.fmt == "empty":
                path.write_bytes(b"")
            else:
                speech, spoken = _compose(item, speaker, item_rng)
                audio = _to_channels(_resample(speech, item.rate), item.rate, item.channels)
                _write_audio(path, audio, item.rate, item.fmt)
                log.debug(
                    "%s: %.1f s, %d sentences", item.path, speech.size / ESPEAK_RATE, len(spoken)
                )
                if item.transcript == "inline":
                    text = " ".join(spoken)
                elif item.transcript == "file":
                    txt = path.with_suffix(".txt")
                    txt.write_text("".join(s + "\n" for s in spoken), encoding="utf-8")
                    transcript = txt.relative_to(root).as_posix()
            rows.append(
                {
                    "id": f"sa-{number:04d}",
                    "path": item.path,
                    "title": item.title,
                    "date": item.date,
                    "collection": item.collection,
                    "language": item.language,
                    "rights": item.rights,
                    "transcript": transcript,
                    "text": text,
                    "shelfmark": _shelfmark(item, number),
                }
            )
    catalogue = root / CATALOGUE_NAME
    with catalogue.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    (root / "README.md").write_text(_readme(seed), encoding="utf-8")
    (root / MARKER_NAME).write_text(_marker(seed), encoding="utf-8")
    return catalogue


def _readme(seed: int) -> str:
    return (
        "# Sample sound archive (synthetic)\n\n"
        "A small, made-up library sound archive for demos and tests of the speech-corpus "
        "pipeline: espeak-ng speech in English, German, Spanish and Swedish, in wav, flac, mp3, "
        "ogg/opus, m4a and mp4 (with video), described by `catalogue.csv`. Some items have "
        "transcripts (inline in the `text` column or as `.txt` files, one sentence per line), "
        "rights vary, and `radio/broken.mp3` (corrupt) and `lectures/empty.wav` (empty) are "
        "deliberately unusable.\n\n"
        "All text was written for this archive; nothing here is real archive material.\n\n"
        f"Generated by `sample_archive/build.py` (version {ARCHIVE_VERSION}, seed {seed}). "
        "Do not edit by hand; regenerate with:\n\n"
        f"    python -m sample_archive.build OUT_DIR --seed {seed}\n"
    )


def _marker(seed: int) -> str:
    return json.dumps({"seed": seed, "version": ARCHIVE_VERSION}, sort_keys=True) + "\n"


def _is_complete(out_dir: Path, seed: int) -> bool:
    marker = out_dir / MARKER_NAME
    if not (out_dir / CATALOGUE_NAME).is_file() or not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")) == json.loads(_marker(seed))
    except (OSError, ValueError):
        return False


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace anything that is not an (old or partial) sample archive."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    ours = (out_dir / MARKER_NAME).exists() or (out_dir / CATALOGUE_NAME).exists()
    if not ours and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty and is not a sample archive; not replacing")


def _remove_stale_work_dirs(out_dir: Path, max_age_s: float = 3600) -> None:
    """Delete work directories that killed runs left next to ``out_dir`` (older than an hour)."""
    for work in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):
        try:
            stale = time.time() - work.stat().st_mtime > max_age_s
            if stale and work.is_dir() and {p.name for p in work.iterdir()} <= {"archive", "old"}:
                log.info("removing %s left by an interrupted run", work)
                shutil.rmtree(work, ignore_errors=True)
        except OSError:
            continue


def build_sample_archive(out_dir: Path, seed: int = 0) -> Path:
    """Build (or reuse) the sample archive in ``out_dir``; return the catalogue CSV path."""
    out_dir = Path(out_dir)
    catalogue = out_dir / CATALOGUE_NAME
    if _is_complete(out_dir, seed):
        log.info("%s is up to date (seed %d, version %d)", out_dir, seed, ARCHIVE_VERSION)
        return catalogue
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_work_dirs(out_dir)
    started = time.monotonic()
    # A hidden work directory next to OUT_DIR (same file system, so renames are atomic). The
    # archive is built in work/archive (created with the umask's permissions, unlike mkdtemp's
    # 0700) and only then renamed to OUT_DIR; an old archive is moved aside into work/old.
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        staging = work / "archive"
        staging.mkdir()
        _build(staging, seed)
        _check_replaceable(out_dir)
        if out_dir.exists():
            out_dir.rename(work / "old")
        staging.rename(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("built %s in %.1f s", out_dir, time.monotonic() - started)
    return catalogue


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m sample_archive.build",
        description=(
            "Generate a small synthetic library sound archive (espeak-ng speech in several "
            "languages and formats, a catalogue.csv with rights and transcripts, plus a corrupt "
            "and an empty file) for demos and tests. Needs espeak-ng on PATH. Does nothing if "
            "OUT_DIR already holds a complete archive for the same seed and version."
        ),
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="directory to create")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for sentence order, pauses, noise and corrupt bytes (default: 0)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also log every file written (default: summary only)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    catalogue = build_sample_archive(args.out_dir, seed=args.seed)
    log.info("catalogue: %s", catalogue)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
