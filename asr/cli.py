"""The `asr` command: one subcommand per stage. It parses arguments and calls the API in asr/."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from asr import __version__

log = logging.getLogger("asr")

EXIT_OK, EXIT_ERROR, EXIT_PARTIAL = 0, 1, 2
EPILOG = """exit codes:
  0  everything done
  1  the command could not run (bad arguments, unreadable manifest, missing model)
  2  done, but some items failed (only with --strict where the subcommand has it)
"""


class _Help(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default after its help, when it has one; keeps the epilog's layout."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = action.default is None or action.default is False or action.default == []
        if not quiet and action.default is not argparse.SUPPRESS and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    p.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asr",
        description="Archive ASR: a sound archive to speech corpora, models and transcripts.",
        epilog=EPILOG,
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"archive-asr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "ingest",
        help="decode holdings into a recordings manifest",
        description="Decode every recording of the holdings and write DIR/recordings.jsonl "
        "(one Recording per line) and DIR/errors.jsonl (every file that could not be used, "
        "and why). Re-running decodes only new or changed files.",
        epilog=EPILOG,
        formatter_class=_Help,
    )
    p.add_argument(
        "holdings",
        nargs="*",
        type=Path,
        help="folders or files; every audio/video file under them is a recording "
        "(with --catalogue, those not in the catalogue are added with their path as id)",
    )
    p.add_argument(
        "--catalogue",
        type=Path,
        help="catalogue CSV: id, path (relative to the CSV), title, date, collection, "
        "language, rights, speakers (';'-separated), transcript (text file) or text; "
        "other columns are kept as metadata",
    )
    p.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="read FIELD from the catalogue's COLUMN (e.g. rights=license); repeatable",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (DIR)")
    p.add_argument(
        "--policy",
        type=Path,
        help="rights policy YAML (default: public domain, CC0, CC BY, CC BY-SA may train; "
        "anything else only transcribe)",
    )
    p.add_argument("--workers", type=int, default=0, help="decoding processes; 0: one per CPU")
    p.add_argument("--strict", action="store_true", help="exit 2 if any file failed")
    _common(p)

    p = sub.add_parser(
        "segment",
        help="cut recordings into speech segments (Silero VAD)",
        description="Find speech with Silero VAD (onnxruntime) and merge it into segments of at "
        "most --max-duration seconds, cut at the longest pauses. A recording whose transcript "
        "is given and that fits in one segment becomes one segment with that text.",
        epilog=EPILOG,
        formatter_class=_Help,
    )
    p.add_argument("recordings", type=Path, help="recordings manifest from `asr ingest`")
    p.add_argument("--out", type=Path, required=True, help="segments manifest to write")
    p.add_argument("--max-duration", type=float, default=30.0, help="longest segment, seconds")
    p.add_argument(
        "--min-duration", type=float, default=0.5, help="shorter segments are dropped, seconds"
    )
    p.add_argument("--threshold", type=float, default=0.5, help="speech probability for speech")
    p.add_argument(
        "--neg-threshold",
        type=float,
        default=None,
        help="below this, speech ends (default: threshold - 0.15)",
    )
    p.add_argument(
        "--min-speech", type=float, default=0.25, help="shorter speech bursts are ignored, seconds"
    )
    p.add_argument(
        "--min-silence",
        type=float,
        default=0.3,
        help="a pause at least this long separates speech regions, seconds",
    )
    p.add_argument("--pad", type=float, default=0.2, help="padding around speech, seconds")
    p.add_argument(
        "--vad-model",
        help="Silero VAD ONNX file (default: the silero-vad wheel's when installed, else the "
        "copy in faster-whisper)",
    )
    p.add_argument("--workers", type=int, default=0, help="VAD processes; 0: one per CPU")
    p.add_argument("--strict", action="store_true", help="exit 2 if any recording failed")
    _common(p)

    p = sub.add_parser(
        "shard",
        help="write training segments to webdataset tar shards",
        description="Write segments whose rights allow training to webdataset shards "
        "SHARD_DIR/<split>-NNNNNN.tar (<key>.flac 16 kHz mono + <key>.json), a JSONL sidecar "
        "per shard and SHARD_DIR/shards.json. Splits are by recording (or speaker). "
        "An interrupted run, re-run, continues where it stopped.",
        epilog=EPILOG,
        formatter_class=_Help,
    )
    p.add_argument("segments", type=Path, help="segments manifest (from segment or align)")
    p.add_argument("--out", type=Path, required=True, help="shard folder (SHARD_DIR)")
    p.add_argument(
        "--recordings",
        type=Path,
        help="recordings manifest (default: recordings.jsonl beside SEGMENTS)",
    )
    p.add_argument("--max-size", type=int, default=1_000_000_000, help="bytes per shard at most")
    p.add_argument("--max-count", type=int, default=10_000, help="samples per shard at most")
    p.add_argument("--dev-fraction", type=float, default=0.05, help="share of groups for dev")
    p.add_argument("--test-fraction", type=float, default=0.05, help="share of groups for test")
    p.add_argument(
        "--split-by",
        choices=["recording", "speaker"],
        default="recording",
        help="what may not appear in two splits",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split assignment")
    p.add_argument("--policy", type=Path, help="rights policy YAML (default: the built-in one)")
    p.add_argument(
        "--allow-empty-text", action="store_true", help="also write segments without text"
    )
    p.add_argument("--strict", action="store_true", help="exit 2 if any recording failed")
    _common(p)

    p = sub.add_parser(
        "manifest",
        help="validate a manifest, or export it to NeMo / lhotse",
        description="Validate a manifest against its JSON Schema, or export segments to a NeMo "
        "manifest or to lhotse RecordingSet/SupervisionSet files.",
        epilog=EPILOG,
        formatter_class=_Help,
    )
    msub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    v = msub.add_parser("validate", help="check every line; report file, line and field")
    v.add_argument("manifest", type=Path)
    v.add_argument(
        "--type",
        choices=["recording", "segment"],
        help="record type (default: guessed from the first line)",
    )
    _common(v)
    e = msub.add_parser(
        "export", help="segments to NeMo JSONL or lhotse JSONL.gz", formatter_class=_Help
    )
    e.add_argument("segments", type=Path)
    e.add_argument("--to", choices=["nemo", "lhotse"], required=True, help="target format")
    e.add_argument(
        "--recordings",
        type=Path,
        help="recordings manifest (default: recordings.jsonl beside SEGMENTS)",
    )
    e.add_argument("--out", type=Path, required=True, help="file (nemo) or folder (lhotse)")
    _common(e)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.no_progress else None


def _report_errors(errors: list, strict: bool) -> int:
    for e in errors:
        log.warning("failed: %s: %s", e.path, e.reason)
    return EXIT_PARTIAL if errors and strict else EXIT_OK


def cmd_ingest(args: argparse.Namespace) -> int:
    from asr.ingest import IngestOptions, ingest

    if not args.holdings and args.catalogue is None:
        raise ValueError("give HOLDINGS folders or files, or --catalogue CSV")
    columns = dict(_pair(c) for c in args.column)
    opts = IngestOptions(
        catalogue=args.catalogue,
        columns=columns,
        policy=args.policy,
        workers=args.workers,
        progress=_progress(args),
    )
    r = ingest(args.holdings, args.out, opts)
    log.info(
        "ingest: %d recordings (%.2f h), %d decoded, %d unchanged, %d failed -> %s",
        r.recordings,
        r.hours,
        r.decoded,
        r.unchanged,
        len(r.errors),
        r.manifest,
    )
    if r.errors:
        log.info("what failed, and why: %s", r.errors_manifest)
    return _report_errors(r.errors, args.strict)


def cmd_segment(args: argparse.Namespace) -> int:
    from asr.vad import SegmentOptions, segment

    opts = SegmentOptions(
        max_duration=args.max_duration,
        min_duration=args.min_duration,
        threshold=args.threshold,
        neg_threshold=args.neg_threshold,
        min_speech=args.min_speech,
        min_silence=args.min_silence,
        pad=args.pad,
        vad_model=args.vad_model,
        workers=args.workers,
        progress=_progress(args),
    )
    r = segment(args.recordings, args.out, opts)
    log.info(
        "segment: %d recordings (%.2f h audio) -> %d segments (%.2f h speech, %d with reference "
        "text), %d failed -> %s",
        r.recordings,
        r.audio_hours,
        r.segments,
        r.speech_hours,
        r.reference_segments,
        len(r.errors),
        r.manifest,
    )
    return _report_errors(r.errors, args.strict)


def cmd_shard(args: argparse.Namespace) -> int:
    from asr.shards import ShardOptions, shard

    opts = ShardOptions(
        recordings=args.recordings,
        max_size=args.max_size,
        max_count=args.max_count,
        dev_fraction=args.dev_fraction,
        test_fraction=args.test_fraction,
        split_by=args.split_by,
        seed=args.seed,
        policy=args.policy,
        allow_empty_text=args.allow_empty_text,
        progress=_progress(args),
    )
    r = shard(args.segments, args.out, opts)
    for split in ("train", "dev", "test"):
        log.info(
            "shard: %-5s %6d samples %8.3f h", split, r.samples[split], r.seconds[split] / 3600
        )
    log.info(
        "shard: skipped %d segments whose rights do not allow training, %d without text; "
        "%d already in shards from an earlier run; %d recordings failed -> %s",
        r.skipped_rights,
        r.skipped_no_text,
        r.resumed_samples,
        len(r.errors),
        r.index,
    )
    return _report_errors(r.errors, args.strict)


def cmd_manifest(args: argparse.Namespace) -> int:
    from asr import manifest as m

    if args.action == "validate":
        kind = args.type
        if kind is None:
            first = next((obj for _, obj in m.iter_json_lines(args.manifest)), {})
            kind = "segment" if "recording_id" in first else "recording"
        record_type = m.Segment if kind == "segment" else m.Recording
        n = sum(1 for _ in m.read_manifest(args.manifest, record_type))
        log.info("%s: %d valid %s records", args.manifest, n, kind)
        return EXIT_OK
    rec_path = args.recordings or args.segments.with_name("recordings.jsonl")
    recordings = {r.id: r for r in m.read_recordings(rec_path)}
    segments = m.read_segments(args.segments)
    if args.to == "nemo":
        n = m.export_nemo(segments, recordings, args.out)
        log.info("wrote %d NeMo manifest lines to %s", n, args.out)
    else:
        paths = m.export_lhotse(segments, recordings, args.out)
        log.info("wrote lhotse manifests %s and %s", *paths)
    return EXIT_OK


def _pair(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"expected FIELD=COLUMN, got '{text}'")
    a, b = text.split("=", 1)
    return a.strip(), b.strip()


COMMANDS = {
    "ingest": cmd_ingest,
    "segment": cmd_segment,
    "shard": cmd_shard,
    "manifest": cmd_manifest,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `asr` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    _setup_logging(args)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        log.error("interrupted: re-run the same command to continue where it stopped")
        return 130
    except (ValueError, FileNotFoundError, OSError) as e:
        log.error("%s", e)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
