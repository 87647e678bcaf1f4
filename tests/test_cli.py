"""The `asr` command as users and scripts run it: help, the chain of stages, exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from asr import cli
from asr.cliopts import options_from_args

# the console script installed beside this interpreter (make test does not activate the venv)
ASR = str(Path(sys.executable).parent / "asr")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ASR, *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("command", ["ingest", "segment", "shard", "manifest"])
def test_help_explains_options_and_defaults(command):
    r = run(command, "--help")
    assert r.returncode == 0
    assert "exit codes" in r.stdout and "--out" in r.stdout or command == "manifest"
    if command == "segment":
        assert "(default: 30.0)" in r.stdout and "(default: 0.2)" in r.stdout
    if command == "shard":
        assert "(default: 10000)" in r.stdout and "(default: recording)" in r.stdout


def test_chain_of_stages(sample_archive, tmp_path):
    out = tmp_path / "work"
    r = run("ingest", "--catalogue", str(sample_archive), "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "20 recordings" in r.stderr and "2 failed" in r.stderr and "broken.mp3" in r.stderr
    r = run("segment", str(out / "recordings.jsonl"), "--out", str(out / "segments.jsonl"))
    assert r.returncode == 0, r.stderr
    assert "segments" in r.stderr
    r = run("shard", str(out / "segments.jsonl"), "--out", str(out / "shards"), "--no-progress")
    assert r.returncode == 0, r.stderr
    index = json.loads((out / "shards" / "shards.json").read_text())
    assert f"train {index['splits']['train']['samples']:6d} samples" in r.stderr
    assert "whose rights do not allow training" in r.stderr

    r = run("manifest", "validate", str(out / "segments.jsonl"))
    assert r.returncode == 0 and "valid segment records" in r.stderr
    r = run(
        "manifest",
        "export",
        str(out / "segments.jsonl"),
        "--to",
        "nemo",
        "--out",
        str(out / "n.json"),
    )
    assert r.returncode == 0
    nemo = [json.loads(x) for x in (out / "n.json").read_text().splitlines()]
    assert all(row["audio_filepath"].startswith(str(sample_archive.parent)) for row in nemo)
    r = run(
        "manifest", "export", str(out / "segments.jsonl"), "--to", "lhotse", "--out", str(out / "l")
    )
    assert r.returncode == 0
    sups = gzip.open(out / "l" / "supervisions.lhotse.jsonl.gz", "rt").read().splitlines()
    assert len(sups) == len(nemo)


def test_errors_exit_1_with_a_clear_message(tmp_path):
    r = run("segment", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "s.jsonl"))
    assert r.returncode == 1 and "nope.jsonl" in r.stderr
    bad = tmp_path / "recordings.jsonl"
    bad.write_text('{"id": "x"}\n')
    r = run("segment", str(bad), "--out", str(tmp_path / "s.jsonl"))
    assert r.returncode == 1 and "recordings.jsonl:1: field 'path'" in r.stderr
    r = subprocess.run([sys.executable, "-m", "asr", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "archive-asr" in r.stdout


# Each subcommand: the arguments it needs, and the Options dataclasses its options come from.
OPTIONS = {
    "ingest": (["x"], ["asr.ingest:IngestOptions"]),
    "segment": (["x"], ["asr.vad:SegmentOptions"]),
    "align": (["x"], ["asr.align:AlignOptions"]),
    "shard": (["x"], ["asr.shards:ShardOptions"]),
    "transcribe": (
        ["x"],
        [
            "asr.engine.types:TranscribeOptions",
            "asr.engine.types:DecodeOptions",
            "asr.engine.types:BackendOptions",
        ],
    ),
    "train": (["x", "--shards", "s"], ["asr.train.recipe:TrainOptions"]),
    "export": (["x"], ["asr.export:ExportOptions"]),
}


def _class(name: str) -> type:
    module, cls = name.split(":")
    return getattr(importlib.import_module(module), cls)


def _command_parser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command].add_arguments()


@pytest.mark.parametrize("command", [*OPTIONS, "bench", "manifest"])
def test_every_default_is_the_dataclass_one(command):
    """A default is written once, in the Options dataclass: the parser's default of each option
    reads back as its field's default, and no other option has a default of its own."""
    required, names = OPTIONS.get(command, ([], []))
    classes = [_class(n) for n in names]
    fields = {f.name: cls for cls in classes for f in dataclasses.fields(cls)}
    for action in _command_parser(command)._actions:
        shown = action.default not in (None, False, [], argparse.SUPPRESS) and action.nargs != 0
        assert not shown or action.dest in fields, f"{command} {action.option_strings}"
    if not classes:
        return
    args = cli._parser().parse_args([command, *required, "--out", "o"])
    for cls in classes:
        assert options_from_args(cls, args) == cls(), cls.__name__
        for f in dataclasses.fields(cls):
            if hasattr(args, f.name) and "help" not in f.metadata:
                pytest.fail(f"{cls.__name__}.{f.name}: an argument without the field's help")


def test_options_that_could_not_be_set_can(tmp_path, monkeypatch):
    r = run("align", "--help")
    assert r.returncode == 0
    assert all(o in r.stdout for o in ("--max-unheard", "--snap", "--batch-size"))
    r = run("transcribe", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())  # as wide as the terminal
    assert "--temperatures T,T,..." in text and "(default: 0.0,0.2,0.4,0.6,0.8,1.0)" in text
    assert "--fallback {penalty,sample}" in text and "(default: penalty)" in text

    import asr.align
    import asr.engine.transcribe
    from asr.engine.transcribe import TranscribeResult

    got = {}

    def fake_transcribe(inputs, out, opts):
        got["transcribe"] = opts
        return TranscribeResult()

    def fake_align(recordings, out, opts):
        got["align"] = opts
        return asr.align.AlignResult()

    monkeypatch.setattr(asr.engine.transcribe, "transcribe", fake_transcribe)
    monkeypatch.setattr("asr.engine.memory.limit_malloc_arenas", lambda: None)
    monkeypatch.setattr(asr.align, "align", fake_align)
    out = str(tmp_path / "o")
    args = ["--temperatures", "0,0.4", "--fallback", "sample"]
    assert cli.main(["transcribe", "a.wav", "--out", out, *args]) == 0
    assert got["transcribe"].decode.temperatures == (0.0, 0.4)
    assert got["transcribe"].decode.fallback == "sample"
    align = ["align", "r.jsonl", "--out", out, "--max-unheard", "2", "--snap", "0.1"]
    assert cli.main([*align, "--batch-size", "4"]) == 0
    o = got["align"]
    assert (o.max_unheard, o.snap, o.batch_size) == (2.0, 0.1, 4)


def test_options_read_back_as_before(tmp_path, monkeypatch):
    """Options whose command-line form is not the field's: comma-separated, auto, --no-x."""
    import asr.engine.transcribe
    from asr.engine.transcribe import TranscribeResult
    from asr.engine.types import TranscribeOptions

    got = []
    monkeypatch.setattr(
        asr.engine.transcribe,
        "transcribe",
        lambda i, o, opts: got.append(opts) or TranscribeResult(),
    )
    monkeypatch.setattr("asr.engine.memory.limit_malloc_arenas", lambda: None)
    base = ["transcribe", "a.wav", "--out", str(tmp_path / "o")]
    assert cli.main(base) == 0
    assert got[-1] == TranscribeOptions(progress=None)
    more = ["--formats", "txt, json", "--device-index", "0,1", "--language", "sv", "--no-pack"]
    assert cli.main([*base, *more, "--no-word-timestamps", "--no-progress"]) == 0
    o = got[-1]
    assert (o.formats, o.device_index, o.language) == (("txt", "json"), (0, 1), "sv")
    assert not o.pack and not o.decode.word_timestamps and o.progress is False
    assert cli.main([*base, "--device-index", "a"]) == 1  # a clear error, as before

    args = cli._parser().parse_args(["ingest", "--out", "o", "--column", "rights=license"])
    from asr.ingest import IngestOptions

    assert options_from_args(IngestOptions, args).columns == {"rights": "license"}
    with pytest.raises(ValueError, match="expected FIELD=COLUMN, got 'rights'"):
        options_from_args(
            IngestOptions, cli._parser().parse_args(["ingest", "--column", "rights", "--out", "o"])
        )
    args = cli._parser().parse_args(["export", "m", "--out", "o", "--no-parity"])
    from asr.export import ExportOptions

    assert options_from_args(ExportOptions, args).check_parity is False
