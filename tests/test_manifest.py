"""Manifests: JSONL(.gz) round trips, schema validation errors, NeMo and lhotse exports."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os

import pytest

from asr.cli import main
from asr.manifest import (
    ManifestError,
    Recording,
    Segment,
    export_lhotse,
    export_nemo,
    read_recordings,
    read_segments,
    schema,
    write_manifest,
)
from tests.conftest import ROOT

REC = Recording(
    id="r1",
    path="/a/r1.flac",
    sha256="0" * 64,
    duration=12.5,
    sample_rate=44100,
    channels=2,
    language="sv",
    rights="CC0-1.0",
    speakers=["A"],
    metadata={"shelfmark": "X-1"},
)
SEGS = [
    Segment(id="r1_0", recording_id="r1", start=0.5, end=4.25, text="hej då", language="sv"),
    Segment(id="r1_1", recording_id="r1", start=5.0, end=11.0, text="", speaker="A"),
]


@pytest.mark.parametrize("name", ["m.jsonl", "m.jsonl.gz"])
def test_round_trip(tmp_path, name):
    write_manifest(tmp_path / name, SEGS)
    assert list(read_segments(tmp_path / name)) == SEGS
    if name.endswith(".gz"):
        assert gzip.open(tmp_path / name).read().count(b"\n") == 2
    write_manifest(tmp_path / ("r" + name), [REC])
    assert list(read_recordings(tmp_path / ("r" + name))) == [REC]


def test_schemas_match_the_dataclasses_and_the_docs():
    docs = (ROOT / "manifests" / "README.md").read_text()
    for cls in (Recording, Segment):
        fields = {f.name for f in dataclasses.fields(cls)}
        props = set(schema(cls)["properties"])
        assert fields == props, cls
        for name in fields:
            assert f"`{name}`" in docs, (
                f"manifests/README.md does not document {cls.__name__}.{name}"
            )


@pytest.mark.parametrize(
    "line,field",
    [
        ('{"id":"s","recording_id":"r","start":1,"end":2,"txt":"x"}', "txt"),
        ('{"id":"s","recording_id":"r","start":"1","end":2}', "start"),
        ('{"id":"s","recording_id":"r","end":2}', "start"),
        ('{"id":"s","recording_id":"r","start":3,"end":2}', "end"),
        ('{"id":"s","recording_id":"r","start":1,"end":2,"split":"val"}', "split"),
        ('{"id":"s", "recording_id": ', None),
    ],
)
def test_validation_names_file_line_and_field(tmp_path, line, field):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(dataclasses.asdict(SEGS[0]))
    path.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(ManifestError) as e:
        list(read_segments(path))
    assert e.value.line == 3 and e.value.field == field
    assert str(e.value).startswith(f"{path}:3")
    assert main(["manifest", "validate", str(path), "--type", "segment"]) == 1


def test_nemo_export(tmp_path):
    n = export_nemo(SEGS, {"r1": REC}, tmp_path / "nemo.json")
    rows = [json.loads(x) for x in (tmp_path / "nemo.json").read_text().splitlines()]
    assert n == 2
    assert rows[0] == {
        "audio_filepath": "/a/r1.flac",
        "offset": 0.5,
        "duration": 3.75,
        "text": "hej då",
        "lang": "sv",
    }


def test_lhotse_export(tmp_path):
    rec_path, sup_path = export_lhotse(SEGS, {"r1": REC}, tmp_path)
    recs = [json.loads(x) for x in gzip.open(rec_path, "rt")]
    sups = [json.loads(x) for x in gzip.open(sup_path, "rt")]
    assert recs[0]["num_samples"] == 12.5 * 44100 and recs[0]["sources"][0]["channels"] == [0, 1]
    assert [s["start"] for s in sups] == [0.5, 5.0] and sups[1]["speaker"] == "A"
    import lhotse  # the test extra brings it (with torch)

    assert len(lhotse.load_manifest(rec_path)) == 1
    assert lhotse.load_manifest(sup_path)[0].duration == 3.75


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_honour_the_umask(tmp_path, umask, mode):
    """Manifests and transcripts are written through one atomic writer; a web server or a
    colleague reads them as the umask allows (mkstemp alone would make them 0600)."""
    from asr.manifest import atomic_output

    old = os.umask(umask)
    try:
        with atomic_output(tmp_path / "m.jsonl") as f:
            f.write("{}\n")
    finally:
        os.umask(old)
    assert (tmp_path / "m.jsonl").stat().st_mode & 0o777 == mode
