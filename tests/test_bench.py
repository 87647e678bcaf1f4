"""`asr bench`: exact scoring (against jiwer), reproducible intervals, test sets in every form,
a history in SQLite, the regression gate with real models, and the report in a real browser."""

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
import yaml

from asr.bench.config import TestSetSpec, load_config
from asr.bench.normalize import NormalizerSpec, make_normalizer
from asr.bench.scoring import bootstrap_ci, paired_bootstrap, score_pairs, summarize
from asr.bench.testsets import utterances
from asr.cli import main as cli
from asr.export import ExportOptions, export


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
