"""`asr bench`: exact scoring (against jiwer), reproducible intervals, test sets in every form
(long-form recordings with transcript files included), the same WER as `asr transcribe` on the
same files, a history in SQLite, the regression gate with real models, and the report in a real
browser."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import yaml

from asr.bench.config import TestSetSpec, load_config
from asr.bench.runner import prepare
from asr.bench.testsets import Utterance, utterances
from asr.cli import main as cli
from asr.export import ExportOptions, export
from asr.metrics import (
    NormalizerSpec,
    bootstrap_ci,
    make_normalizer,
    paired_bootstrap,
    score_pairs,
    summarize,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pairs(realspeech) -> list[dict]:
    """Real references with hypotheses that differ from them in every way an ASR output does."""
    rows = list(csv.DictReader(open(realspeech / "catalogue.csv", encoding="utf-8")))
    refs = [r["transcript"] for r in rows if r["kind"] == "utterance" and r["language"] == "en"]
    rng = np.random.default_rng(1)
    out = []
    for i, ref in enumerate(refs[:60]):
        words = ref.split()
        for _ in range(int(rng.integers(0, 4))):
            k = int(rng.integers(0, len(words)))
            op = rng.integers(0, 3)
            if op == 0:
                words[k] = "banana"
            elif op == 1 and len(words) > 1:
                del words[k]
            else:
                words.insert(k, "um")
        out.append({"id": f"u{i}", "ref": ref, "hyp": " ".join(words), "language": "en"})
    return out


def test_wer_and_cer_equal_jiwer(pairs):
    spec = NormalizerSpec("whisper-english")
    utts = score_pairs(pairs, spec)
    s = summarize(utts, n_boot=200)
    norm = make_normalizer(spec)
    refs = [norm(p["ref"]) for p in pairs]
    hyps = [norm(p["hyp"]) for p in pairs]
    out = jiwer.process_words(refs, hyps)
    assert s.wer == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    assert s.cer == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)
    assert (s.substitutions, s.deletions, s.insertions) == (
        out.substitutions,
        out.deletions,
        out.insertions,
    )
    assert 0 < s.wer < 0.5 and s.n_utterances == len(pairs)
    assert s.confusions[0]["count"] >= s.confusions[-1]["count"]
    assert any(c["hyp"] in ("um", "banana") for c in s.confusions[:3])


def test_bootstrap_is_reproducible_and_brackets_the_estimate(pairs):
    utts = score_pairs(pairs, NormalizerSpec("whisper-english"))
    e = np.array([u.errors for u in utts])
    w = np.array([u.words for u in utts])
    a, b = bootstrap_ci(e, w, 500, seed=3), bootstrap_ci(e, w, 500, seed=3)
    assert a == b
    assert bootstrap_ci(e, w, 500, seed=4) != a
    assert a[0] < e.sum() / w.sum() < a[1]
    # paired: identical runs differ by nothing; a run with many more errors differs significantly
    same = {u.id: (u.errors, u.words) for u in utts}
    assert not paired_bootstrap(same, same).significant
    worse = {k: (e_ + 3, w_) for k, (e_, w_) in same.items()}
    c = paired_bootstrap(same, worse)
    assert c.significant and c.diff > 0 and c.p_value < 0.05


def test_normalizers():
    en = make_normalizer(NormalizerSpec("whisper-english"))
    assert en("Mr. Smith didn't go.") == "mister smith did not go"
    multi = make_normalizer(NormalizerSpec("multilingual"))
    assert multi("Åsa köpte 3 böcker!", "sv") == "åsa köpte tre böcker"
    assert multi("Es kostet 21 Euro.", "de") == "es kostet einundzwanzig euro"
    rows = [{"id": "a", "ref": "Sjukhuset ligger nära", "hyp": "sjuk huset ligger nära"}]
    plain = summarize(score_pairs(rows, NormalizerSpec("multilingual")), n_boot=10)
    merged = NormalizerSpec("multilingual", {"merge_compounds": True})
    assert plain.wer > 0 and summarize(score_pairs(rows, merged), n_boot=10).wer == 0
    assert merged.version == "multilingual@1[merge_compounds=True]"
    with pytest.raises(ValueError, match="unknown normalizer"):
        make_normalizer(NormalizerSpec("klingon"))


def test_test_sets_from_csv_segments_and_shards(realspeech, train_shards):
    csv_set = TestSetSpec(
        "en", str(realspeech / "catalogue.csv"), where={"kind": "utterance", "language": "en"}
    )
    items = list(utterances(csv_set, with_audio=False))
    assert len(items) == 99 and all(u.ref and u.language == "en" for u in items)
    seg_path = train_shards.parent / "aligned.jsonl"
    segs = list(utterances(TestSetSpec("seg", str(seg_path))))
    assert len(segs) == len(seg_path.read_text().splitlines())
    assert all(abs(u.audio.size / 16000 - u.duration) < 0.01 for u in segs)
    index = json.loads((train_shards / "shards.json").read_text())
    shard_items = list(utterances(TestSetSpec("dev", str(train_shards), split="dev")))
    assert len(shard_items) == index["splits"]["dev"]["samples"]


def test_longform_sets_take_references_from_text_files(realspeech):
    where = {"kind": "longform"}
    catalogue = str(realspeech / "catalogue.csv")
    items = list(utterances(TestSetSpec("lf", catalogue, where=where, text_file=True), False))
    rows = [r for r in csv.DictReader(open(catalogue, encoding="utf-8")) if r["kind"] == "longform"]
    assert [u.id for u in items] == [r["path"] for r in rows] and len(items) == 5
    for u, r in zip(items, rows):  # the whole text, whitespace folded; no 30 s limit
        assert u.ref == " ".join((realspeech / r["transcript"]).read_text().split())
        assert u.duration > 50 and u.path == str(realspeech / r["path"])
    short = TestSetSpec("lf", catalogue, where=where, text_file=True, max_seconds=60)
    assert len(list(utterances(short, False))) == 3  # de and es are 68 and 70 s
    # utterance sets keep their 30 s limit; without text_file the column is the text itself
    assert not list(utterances(TestSetSpec("lf", catalogue, where=where), False))


def test_in_memory_items_become_16k_flac_files(tmp_path):
    rng = np.random.default_rng(0)
    audio = (0.3 * rng.standard_normal(16000 * 3)).clip(-1, 1).astype(np.float32)
    mem = Utterance("seg-1", "a b", "sv", 3.0, audio=audio)
    file = Utterance("x.wav", "c", None, 1.0, audio=audio[:16000], path="/data/x.wav")
    items, jobs = prepare(iter([mem, file]), tmp_path / "audio")
    assert items == [mem, file] and mem.audio is None and file.audio is None
    assert (jobs[1].path, jobs[1].recording_id, jobs[1].language) == ("/data/x.wav", "x.wav", None)
    assert (jobs[0].recording_id, jobs[0].language) == ("seg-1", "sv")
    assert len({j.key for j in jobs}) == 2
    back, sr = sf.read(jobs[0].path, dtype="float32")
    assert sr == 16000 and back.shape == audio.shape
    assert np.abs(back - audio).max() <= 1 / 32768 + 1e-7  # 16-bit FLAC: quantisation only


def test_bench_wer_equals_asr_transcribe_on_the_same_files(realspeech, tmp_path):
    """The bench runs what `asr transcribe` ships: same hypotheses, same WER, long-form too."""
    catalogue = realspeech / "catalogue.csv"
    sets = {
        "utterances": ({"kind": "utterance", "language": "en"}, 5),
        "longform": ({"kind": "longform", "language": "en"}, 1),
    }
    doc = {
        "db": "bench.sqlite",
        "bootstrap": {"samples": 100, "seed": 0},
        "testsets": [
            {
                "name": name,
                "manifest": str(catalogue),
                "where": where,
                "text_file": name == "longform",
                "normalizer": "whisper-english",
                "max_utterances": n,
            }
            for name, (where, n) in sets.items()
        ],
        "models": [
            {"name": "tiny.en", "path": "tiny.en", "options": {"beam_size": 2, "min_context": 25}}
        ],
    }
    cfg = tmp_path / "bench.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    assert cli(["bench", str(cfg), "--json", str(tmp_path / "run.json"), "-q"]) == 0
    results = {r["testset"]: r for r in json.loads((tmp_path / "run.json").read_text())["results"]}

    rows = list(csv.DictReader(open(catalogue, encoding="utf-8")))
    for name, (where, n) in sets.items():
        chosen = [r for r in rows if all(r[k] == v for k, v in where.items())][:n]
        files = [str(realspeech / r["path"]) for r in chosen]
        out = tmp_path / f"transcribe-{name}"
        transcribe = ["transcribe", *files, "--out", str(out), "--model", "tiny.en"]
        assert cli([*transcribe, "--beam-size", "2", "--min-context", "25", "-q"]) == 0
        shipped = {}
        for f in out.glob("*.json"):
            t = json.loads(f.read_text())
            shipped[t["path"]] = t
        pairs = []
        for r, f in zip(chosen, files):
            ref = r["transcript"]
            if name == "longform":
                ref = (realspeech / ref).read_text()
            t = shipped[str(Path(f).resolve())]
            pairs.append({"id": r["path"], "ref": ref, "hyp": t["text"], "language": "en"})
        expected = summarize(score_pairs(pairs, NormalizerSpec("whisper-english")), n_boot=10)

        got = results[name]
        preds = [json.loads(x) for x in Path(got["predictions"]).read_text().splitlines()]
        assert [(p["id"], p["hyp"]) for p in preds] == [(p["id"], p["hyp"]) for p in pairs]
        assert (got["wer"], got["words"]) == (expected.wer, expected.words)
        assert got["n_utterances"] == n and got["rtfx"] > 0
        if name == "longform":  # the whole recording, past 30 s, not its first window
            assert got["audio_seconds"] > 50
            (whole,) = shipped.values()
            assert whole["segments"][-1]["end"] > 45 and got["wer"] < 0.3


def _config(path: Path, realspeech: Path, model: str, name: str = "tiny.en") -> Path:
    doc = {
        "db": "bench.sqlite",
        "bootstrap": {"samples": 500, "seed": 0},
        "gate": {"max_wer_increase": 0.005},
        "testsets": [
            {
                "name": "readings",
                "manifest": str(realspeech / "catalogue.csv"),
                "where": {"kind": "utterance", "language": "en"},
                "language": "en",
                "normalizer": "whisper-english",
                "breakdown": ["source_repo"],
                "max_utterances": 16,
            }
        ],
        "models": [{"name": name, "path": model, "options": {"beam_size": 1}}],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_bench_history_gate_and_report(realspeech, whisper_run, tmp_path):
    cfg = _config(tmp_path / "nightly.yaml", realspeech, "tiny.en")
    out = tmp_path / "run1.json"
    assert cli(["bench", str(cfg), "--json", str(out), "-q"]) == 0
    first = json.loads(out.read_text())["results"][0]
    for key in ("wer", "cer", "ci_low", "ci_high", "substitutions", "deletions", "insertions"):
        assert key in first
    assert first["n_utterances"] == 16 and first["audio_seconds"] > 30 and first["rtfx"] > 0
    assert first["ci_low"] <= first["wer"] <= first["ci_high"] and first["wer"] < 0.3
    preds = [json.loads(x) for x in Path(first["predictions"]).read_text().splitlines()]
    assert len(preds) == 16 and all("hyp" in p and "ref" in p for p in preds)  # raw, unscored

    # the same again: a second point in the history, no regression
    assert cli(["bench", str(cfg), "--json", str(tmp_path / "run2.json"), "-q"]) == 0
    db = sqlite3.connect(tmp_path / "bench.sqlite")
    rows = db.execute(
        "SELECT wer, model_sha256, dataset_sha256, normalizer FROM results"
    ).fetchall()
    assert len(rows) == 2 and rows[0] == rows[1]
    assert db.execute("SELECT COUNT(*) FROM runs WHERE git_commit IS NOT NULL").fetchone()[0] == 2

    # a much worse model under the same name trips the gate: exit code 3
    worse = tmp_path / "worse"
    export(whisper_run[0] / "final", worse, ExportOptions(check_parity=False))
    bad = _config(tmp_path / "nightly.yaml", realspeech, str(worse))
    report = tmp_path / "report"
    code = cli(["bench", str(bad), "--json", str(tmp_path / "run3.json"), "--report", str(report)])
    assert code == 3
    third = json.loads((tmp_path / "run3.json").read_text())
    assert third["regressions"] and third["regressions"][0]["significant"]
    assert third["results"][0]["wer"] > first["wer"] + 0.3
    assert (
        cli(["bench", "compare", "previous", "latest", "--db", str(tmp_path / "bench.sqlite")]) == 0
    )
    assert cli(["bench", "history", "--db", str(tmp_path / "bench.sqlite")]) == 0

    # the report, opened in headless Chromium: every plot decoded and drawn
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed for the report test (make test installs it)"
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            (report / "index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert 'data-plots="2"' in dom and 'data-plots-rendered="2"' in dom, dom[:500]
    assert "tiny.en" in dom and "readings" in dom
    assert "| tiny.en | readings |" in (report / "summary.md").read_text()


def test_config_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("testsets: [{name: a, manifest: x.csv, normalizer: klingon}]\nmodels: []\n")
    with pytest.raises(ValueError, match=f"{bad}.*unknown normalizer"):
        load_config(bad)
    models = "models: [{name: m, path: p, options: {beams: 2}}]\n"
    bad.write_text("testsets: [{name: a, manifest: x.csv}]\n" + models)
    with pytest.raises(ValueError, match="unknown option"):
        load_config(bad)
    bad.write_text("testsets: [{name: a, manifest: x.csv, text_file: 'yes'}]\n" + models)
    with pytest.raises(ValueError, match="text_file: expected true or false"):
        load_config(bad)


def test_nightly_config_has_longform_sets():
    cfg = load_config(ROOT / "benchmarks/nightly.yaml")
    sets = {t.name: t for t in cfg.testsets}
    models = {m.name: m for m in cfg.models}
    assert sets["realspeech-en-longform"].text_file and sets["realspeech-longform"].text_file
    assert sets["realspeech-longform"].normalizer.name == "multilingual"
    assert "realspeech-en-longform" in models["tiny.en"].testsets
    assert "realspeech-longform" in models["base"].testsets
