"""The `asr` command: one subcommand per stage. It parses arguments and calls the API in asr/.

A subcommand's options are the fields of its stage's Options dataclass (asr/cliopts.py): what
each means and its default are written once, there. A subcommand's arguments are added when it
is used, so that `asr X` imports the modules of X only.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from asr import __version__
from asr.cliopts import add_options, options_from_args

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
        default = action.default
        quiet = action.nargs == 0 or default is None or default is False or default == []
        if quiet or default is argparse.SUPPRESS or "default" in text:
            return text
        if isinstance(default, tuple | list):  # nargs="+": as it is typed
            shown = " ".join(map(str, default)).replace("%", "%%")
            return f"{text} (default: {shown})"
        return text + " (default: %(default)s)"


class _Command(argparse.ArgumentParser):
    """A subcommand's parser, whose `arguments` function adds its arguments when the parser is
    first used (parsed, or its help or usage shown)."""

    def __init__(self, *args, arguments: Callable[[_Command], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._arguments = arguments

    def add_arguments(self) -> _Command:
        if self._arguments is not None:
            arguments, self._arguments = self._arguments, None
            arguments(self)
        return self

    def parse_known_args(self, args=None, namespace=None):
        self.add_arguments()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self.add_arguments()
        return super().format_usage()

    def format_help(self) -> str:
        self.add_arguments()
        return super().format_help()


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    p.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)"
    )


def _ingest_arguments(p: argparse.ArgumentParser) -> None:
    from asr.ingest import IngestOptions

    p.add_argument(
        "holdings",
        nargs="*",
        type=Path,
        help="folders or files; every audio/video file under them is a recording "
        "(with --catalogue, those not in the catalogue are added with their path as id)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (DIR)")
    add_options(p, IngestOptions, skip=("progress",))
    p.add_argument("--strict", action="store_true", help="exit 2 if any file failed")
    _common(p)


def _diarize_arguments(p: argparse.ArgumentParser) -> None:
    from asr.diarize import DiarizeOptions

    p.add_argument("inputs", nargs="+", type=Path, help="recordings manifests or media files")
    p.add_argument("--out", type=Path, required=True, help="folder for the RTTM files")
    only = ("num_speakers", "min_speakers", "max_speakers", "threshold", "pipeline")
    add_options(p, DiarizeOptions, only=only)
    p.add_argument("--strict", action="store_true", help="exit 2 if any recording failed")
    _common(p)


def _segment_arguments(p: argparse.ArgumentParser) -> None:
    from asr.vad import SegmentOptions

    p.add_argument("recordings", type=Path, help="recordings manifest from `asr ingest`")
    p.add_argument("--out", type=Path, required=True, help="segments manifest to write")
    add_options(p, SegmentOptions, skip=("fill", "max_pause", "progress"))
    p.add_argument("--strict", action="store_true", help="exit 2 if any recording failed")
    _common(p)


def _align_arguments(p: argparse.ArgumentParser) -> None:
    from asr.align import AlignOptions

    p.add_argument("recordings", type=Path, help="recordings manifest from `asr ingest`")
    p.add_argument("--out", type=Path, required=True, help="segments manifest to write")
    add_options(p, AlignOptions, skip=("progress",))
    p.add_argument("--strict", action="store_true", help="exit 2 if any recording failed")
    _common(p)


def _shard_arguments(p: argparse.ArgumentParser) -> None:
    from asr.shards import ShardOptions

    p.add_argument("segments", type=Path, help="segments manifest (from segment or align)")
    p.add_argument("--out", type=Path, required=True, help="shard folder (SHARD_DIR)")
    add_options(p, ShardOptions, skip=("progress",))
    p.add_argument("--strict", action="store_true", help="exit 2 if any recording failed")
    _common(p)


def _transcribe_arguments(p: argparse.ArgumentParser) -> None:
    from asr.engine.types import BackendOptions, DecodeOptions, TranscribeOptions

    p.add_argument("inputs", nargs="+", help="folders, audio/video files, or recordings.jsonl")
    p.add_argument("--out", type=Path, required=True, help="output folder (OUT_DIR)")
    add_options(p, TranscribeOptions, skip=("pack_gap", "decode", "vad", "progress"))
    add_options(p, BackendOptions)
    _common(p)
    decoding = p.add_argument_group("decoding options")
    add_options(
        decoding,
        DecodeOptions,
        only=("beam_size", "temperatures", "fallback", "min_context", "word_timestamps"),
    )


def _train_arguments(p: argparse.ArgumentParser) -> None:
    from asr.train.recipe import TrainOptions

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
    add_options(p, TrainOptions, skip=("progress",))
    _common(p)


def _export_arguments(p: argparse.ArgumentParser) -> None:
    from asr.export import ExportOptions

    p.add_argument("model", type=Path, help="Hugging Face model folder (e.g. RUN_DIR/final)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_options(p, ExportOptions, skip=("max_new_tokens", "device"))
    _common(p)


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="CONFIG (YAML), or compare, or history")
    p.add_argument("runs", nargs="*", help="with compare: RUN_A RUN_B")
    p.add_argument(
        "--db", type=Path, help="history database (default: the config's db, or bench.sqlite)"
    )
    p.add_argument("--report", type=Path, help="write the HTML and markdown report here")
    p.add_argument("--json", type=Path, help="write this run's results as JSON")
    _common(p)


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", type=Path, help="a transcripts folder (OUT_DIR of asr transcribe)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; any other needs a "
        "token)",
    )
    p.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    p.add_argument(
        "--token",
        default=os.environ.get("ASR_SERVE_TOKEN"),
        help="a secret every request must carry (default: $ASR_SERVE_TOKEN; with a --host other "
        "than 127.0.0.1/localhost and none given, a random one, printed with the URL)",
    )
    _common(p)


def _publish_arguments(p: argparse.ArgumentParser) -> None:
    from asr.workbench.publish import PublishOptions

    p.add_argument("out_dir", type=Path, help="a transcripts folder (OUT_DIR of asr transcribe)")
    p.add_argument("--out", type=Path, required=True, help="where to write iiif/, vtt/, ohms/")
    p.add_argument(
        "--base-url",
        required=True,
        help="the URL at which --out will be served, e.g. https://archive.example.org/asr",
    )
    add_options(p, PublishOptions, skip=("base_url",))
    _common(p)


def _manifest_arguments(p: argparse.ArgumentParser) -> None:
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asr",
        description="Archive ASR: a sound archive to speech corpora, models and transcripts.",
        epilog=EPILOG,
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"archive-asr {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Command
    )
    sub.add_parser(
        "ingest",
        arguments=_ingest_arguments,
        help="decode holdings into a recordings manifest",
        description="Decode every recording of the holdings and write DIR/recordings.jsonl "
        "(one Recording per line) and DIR/errors.jsonl (every file that could not be used, "
        "and why). Re-running decodes only new or changed files.",
        epilog=EPILOG,
        formatter_class=_Help,
    )
    sub.add_parser(
        "diarize",
        arguments=_diarize_arguments,
        help="who spoke when: an RTTM file per recording (offline speaker diarization)",
        description="Find the speakers of every recording of INPUT (recordings manifests from "
        "`asr ingest`, or media files) and write OUT_DIR/<recording>.rttm, named as `asr "
        "transcribe` names its outputs; `asr segment` and `asr align` take them with "
        "--diarization OUT_DIR. Needs pip install 'archive-asr[diarize]'. Re-running the same "
        "command keeps what is done.",
        epilog=EPILOG,
        formatter_class=_Help,
    )
    sub.add_parser(
        "segment",
        arguments=_segment_arguments,
        help="cut recordings into speech segments (Silero VAD)",
        description="Find speech with Silero VAD (onnxruntime) and merge it into segments of at "
        "most --max-duration seconds, cut at the longest pauses. A recording whose transcript "
        "is given and that fits in one segment becomes one segment with that text.",
        epilog=EPILOG,
        formatter_class=_Help,
    )
    sub.add_parser(
        "align",
        arguments=_align_arguments,
        help="align untimed transcripts to their recordings",
        description="For every recording with a transcript (catalogue text or transcript "
        "file): transcribe it with Whisper (word timestamps), align the transcript's words to "
        "the recognised ones, and keep segments of at most --max-duration seconds whose text "
        "and audio agree. Writes Segment records (text_source=aligned) for `asr shard`, and "
        "OUT's .report.json with what was dropped and why. Resumable per recording.",
        epilog=EPILOG,
        formatter_class=_Help,
    )
    sub.add_parser(
        "shard",
        arguments=_shard_arguments,
        help="write training segments to webdataset tar shards",
        description="Write segments whose rights allow training to webdataset shards "
        "SHARD_DIR/<split>-NNNNNN.tar (<key>.flac 16 kHz mono + <key>.json), a JSONL sidecar "
        "per shard and SHARD_DIR/shards.json. Splits are by recording (or speaker). "
        "An interrupted run, re-run, continues where it stopped.",
        epilog=EPILOG,
        formatter_class=_Help,
    )
    sub.add_parser(
        "transcribe",
        arguments=_transcribe_arguments,
        help="transcribe recordings to JSON, WebVTT, SRT, TXT and TEI",
        description="Transcribe every recording of INPUT (folders, files, or a recordings "
        "manifest from `asr ingest`) with a CTranslate2 Whisper model. Outputs mirror the input "
        "tree under OUT_DIR; OUT_DIR/jobs.sqlite records each recording, so re-running the same "
        "command skips what is done and continues what a killed run left.",
        epilog=EPILOG.replace("(only with --strict where the subcommand has it)", ""),
        formatter_class=_Help,
    )
    sub.add_parser(
        "train",
        arguments=_train_arguments,
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
    sub.add_parser(
        "export",
        arguments=_export_arguments,
        help="convert a trained model to CTranslate2, with a parity check",
        description="Convert a Hugging Face Whisper or wav2vec2 model (RUN_DIR/final from "
        "`asr train`, or any such folder) to CTranslate2 in OUT, with the tokenizer and "
        "feature-extractor files. The PyTorch and the converted model then transcribe the same "
        "utterances (greedy); if their transcripts differ by more than --max-parity-wer, the "
        "export fails and OUT is left untouched. Utterances with texts (the dev shards) are "
        "also transcribed by `asr transcribe` with the converted model, joined into one "
        "recording (VAD chunks, packed windows): its WER may be at most --max-transcribe-gap "
        "above the PyTorch model's. OUT is a --model for `asr transcribe`.",
        epilog=EPILOG.replace(
            "(only with --strict where the subcommand has it)", "(not used by export)"
        ).replace("missing model)", "missing model, failed parity check)"),
        formatter_class=_Help,
    )
    sub.add_parser(
        "bench",
        arguments=_bench_arguments,
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
    sub.add_parser(
        "serve",
        arguments=_serve_arguments,
        help="the workbench: search, listen to, correct and review transcripts in a browser",
        description="A local web application over OUT_DIR (from `asr transcribe`, also while a "
        "run still writes it): the collection with its catalogue fields, search across every "
        "transcript (also GET /api/search?q=...), a transcript page that plays the recording "
        "and follows it word by word, corrections saved as revisions (the machine transcript is "
        "kept; every output format is written again; `asr transcribe` never overwrites a "
        "corrected transcript), and a review queue of the least confident segments. Needs "
        "`pip install 'archive-asr[serve]'`. The corrections are kept in OUT_DIR/revisions.sqlite "
        "(back it up); OUT_DIR/.workbench holds the search index, rebuilt if deleted.",
        epilog="""exit codes:
  0  stopped (Ctrl-C)
  1  could not start (no such folder, port in use, the [serve] extra missing)
""",
        formatter_class=_Help,
    )
    sub.add_parser(
        "publish",
        arguments=_publish_arguments,
        help="IIIF manifests and OHMS files of the transcripts, for public players",
        description="Write OUT/iiif/collection.json and an IIIF Presentation 3 Manifest per "
        "transcript (OUT/iiif/KEY.json: a Canvas of the recording's duration, the recording as "
        "its painting annotation, the WebVTT transcript in OUT/vtt/ as a supplementing "
        "annotation, catalogue metadata and rights), and an OHMS XML file per transcript "
        "(OUT/ohms/KEY.xml, with the new-style vtt_transcript and speakers as voice spans). "
        "Corrected transcripts are published as last corrected. The recordings are not copied: "
        "serve them at MEDIA_URL/KEY.EXT.",
        epilog=EPILOG.replace("(only with --strict where the subcommand has it)", "(not used)"),
        formatter_class=_Help,
    )
    sub.add_parser(
        "manifest",
        arguments=_manifest_arguments,
        help="validate a manifest, or export it to NeMo / lhotse",
        description="Validate a manifest against its JSON Schema, or export segments to a NeMo "
        "manifest or to lhotse RecordingSet/SupervisionSet files.",
        epilog=EPILOG,
        formatter_class=_Help,
    )
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
    opts = options_from_args(IngestOptions, args, progress=_progress(args))
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


def cmd_diarize(args: argparse.Namespace) -> int:
    from asr.diarize import DiarizeOptions, check_installed, diarize_recordings

    check_installed()
    opts = options_from_args(DiarizeOptions, args)
    r = diarize_recordings(args.inputs, args.out, opts, progress=_progress(args))
    log.info(
        "diarize: %d recordings (%.2f h audio): %d done, %d kept from before, %d failed, "
        "%d speakers in all -> %s",
        r.recordings,
        r.audio_hours,
        r.done,
        r.kept,
        len(r.errors),
        r.speakers,
        r.out_dir,
    )
    return _report_errors(r.errors, args.strict)


def cmd_segment(args: argparse.Namespace) -> int:
    from asr.segment import segment
    from asr.vad import SegmentOptions

    opts = options_from_args(SegmentOptions, args, progress=_progress(args))
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

    opts = options_from_args(AlignOptions, args, progress=_progress(args))
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

    opts = options_from_args(ShardOptions, args, progress=_progress(args))
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
    from asr.engine.memory import limit_malloc_arenas
    from asr.engine.transcribe import transcribe
    from asr.engine.types import BackendOptions, DecodeOptions, TranscribeOptions

    limit_malloc_arenas()

    decode = options_from_args(DecodeOptions, args)
    opts = options_from_args(TranscribeOptions, args, decode=decode, progress=_progress(args))
    where = options_from_args(BackendOptions, args)
    if where.backend == "ray":
        from asr.engine.ray_backend import transcribe_ray

        r = transcribe_ray(args.inputs, args.out, opts, address=where.address)
    else:
        r = transcribe(args.inputs, args.out, opts)
    log.info(
        "transcribe: %d done, %d failed, %d skipped (done before), %d skipped (failed before; "
        "--retry-failed), %d kept (corrected by hand), %.2f h audio in %.1f s, RTFx %.1f -> %s",
        r.done,
        r.failed,
        r.skipped_done,
        r.skipped_failed,
        r.skipped_corrected,
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
    from asr.train.recipe import TrainOptions, load_recipe

    recipe = load_recipe(args.recipe, args.overrides)  # config errors first: no torch needed
    opts = options_from_args(TrainOptions, args, progress=_progress(args))
    _need_train_extra("asr train")
    from asr.train.trainer import train

    r = train(recipe, args.shards, args.out, opts)
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

    opts = options_from_args(ExportOptions, args)
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
    if r.transcribe_wer is not None:
        parity += (
            f"; WER against the texts {100 * r.pytorch_wer:.2f}% (PyTorch), "
            f"{100 * r.transcribe_wer:.2f}% (asr transcribe)"
        )
    log.info("export: %s model (%s) -> %s; %s", r.kind, r.quantization, r.out, parity)
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from asr.bench.config import BenchFile, load_config
    from asr.bench.run import compare, run_bench

    db = args.db or Path(BenchFile.db)  # compare, history: the config's default

    if args.target == "compare":
        if len(args.runs) != 2:
            raise ValueError("asr bench compare needs two runs: RUN_A RUN_B")
        rows = compare(db, *args.runs)
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

        hist = History(db)
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


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from asr.workbench.app import serve
    except ImportError as e:
        log.error("asr serve needs the [serve] extra: pip install 'archive-asr[serve]' (%s)", e)
        return EXIT_ERROR
    token = args.token
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        token = secrets.token_urlsafe(24)
        log.warning("--host %s: reachable from other machines, so a token is needed", args.host)
    serve(args.out_dir, args.host, args.port, token)
    return EXIT_OK


def cmd_publish(args: argparse.Namespace) -> int:
    from asr.workbench.publish import PublishOptions, publish

    opts = options_from_args(PublishOptions, args)
    r = publish(args.out_dir, args.out, opts)
    for key, why in r.skipped:
        log.info("left out: %s (%s)", key, why)
    log.info(
        "publish: %d transcript(s) as %s -> %s; %d left out",
        r.written,
        ", ".join(opts.to),
        args.out,
        len(r.skipped),
    )
    return EXIT_OK


COMMANDS = {
    "ingest": cmd_ingest,
    "diarize": cmd_diarize,
    "segment": cmd_segment,
    "align": cmd_align,
    "shard": cmd_shard,
    "transcribe": cmd_transcribe,
    "train": cmd_train,
    "export": cmd_export,
    "bench": cmd_bench,
    "manifest": cmd_manifest,
    "serve": cmd_serve,
    "publish": cmd_publish,
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
