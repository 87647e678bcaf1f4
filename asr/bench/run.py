"""`asr bench`: every model on every test set, scored, stored, compared with the last run.

Predictions are kept raw (JSONL beside the database); normalisation happens only at scoring,
with the test set's versioned normaliser. Each result goes into the history database with the
git commit, model and dataset hashes, the normaliser version and the options. The regression
gate compares each result with the previous run of the same model name on the same test set:
a WER increase above `gate.max_wer_increase` whose 95% paired-bootstrap interval excludes
zero is a regression (exit code 3).
"""

from __future__ import annotations

import json
import logging
import subprocess
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from asr.bench.config import BenchConfig
from asr.bench.history import History
from asr.bench.runner import run_in_process
from asr.metrics import Comparison, paired_bootstrap, score_pairs, summarize

log = logging.getLogger(__name__)


@dataclass
class BenchRun:
    """What one `asr bench CONFIG` did."""

    run_id: str
    results: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    regressions: list[dict] = field(default_factory=list)
    report: Path | None = None


def git_commit() -> str | None:
    """The project's git commit (None outside a checkout)."""
    here = Path(__file__).resolve().parent
    try:
        p = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True
        )
    except OSError:
        return None
    return p.stdout.strip() or None if p.returncode == 0 else None


def run_bench(
    cfg: BenchConfig,
    db: Path | None = None,
    report: Path | None = None,
    json_out: Path | None = None,
) -> BenchRun:
    """Run, score, store and gate; write the JSON results and the report if asked."""
    db = Path(db or cfg.db)
    hist = History(db)
    now = datetime.now(timezone.utc)
    run = BenchRun(f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}")
    config = {"source": cfg.source, **asdict(cfg)}
    hist.add_run(run.run_id, now.isoformat(timespec="microseconds"), git_commit(), config)
    pred_dir = db.parent / "predictions" / run.run_id
    try:
        for ts in cfg.testsets:
            for m in cfg.models:
                if m.testsets and ts.name not in m.testsets:
                    continue
                pred = pred_dir / f"{m.name}__{ts.name}.jsonl"
                log.info("bench: %s on %s", m.name, ts.name)
                try:
                    res = run_in_process(ts, m, pred)
                except RuntimeError as e:
                    log.error("%s", e)
                    run.failures.append({"model": m.name, "testset": ts.name, "error": str(e)})
                    continue
                row = score_result(cfg, ts, m, res, pred)
                utts = row.pop("_utts")
                hist.add_result(run.run_id, row, [(u.id, u.errors, u.words) for u in utts])
                run.results.append(row)
                gate(cfg, hist, run, row)
        if json_out:
            Path(json_out).parent.mkdir(parents=True, exist_ok=True)
            doc = {"run_id": run.run_id, "results": run.results, "failures": run.failures}
            doc["regressions"] = run.regressions
            tmp = Path(json_out).with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
            tmp.replace(json_out)
        report = report or cfg.report
        if report:
            from asr.bench.report import write_report

            run.report = write_report(hist, Path(report))
    finally:
        hist.close()
    return run


def score_result(cfg: BenchConfig, ts, m, res: dict, pred: Path) -> dict:
    """Score a pair's raw predictions; also writes the per-utterance scores beside them."""
    rows = [json.loads(x) for x in pred.read_text(encoding="utf-8").splitlines() if x.strip()]
    flat = [{**r.get("fields", {}), **{k: v for k, v in r.items() if k != "fields"}} for r in rows]
    utts = score_pairs(flat, ts.normalizer, ts.breakdown)
    s = summarize(utts, cfg.bootstrap_samples, cfg.seed)
    scored = pred.with_suffix(".scored.jsonl")
    with open(scored, "w", encoding="utf-8") as f:
        for u in utts:
            d = {"id": u.id, "ref": u.ref, "hyp": u.hyp, "words": u.words, "errors": u.errors}
            d.update(subs=u.subs, dels=u.dels, ins=u.ins, chars=u.chars, char_errors=u.char_errors)
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    return {
        "model": m.name,
        "testset": ts.name,
        "model_sha256": res["model"]["sha256"],
        "model_path": res["model"]["path"],
        "dataset_sha256": res["dataset_sha256"],
        "normalizer": ts.normalizer.version,
        "options": m.options,
        "wer": s.wer,
        "cer": s.cer,
        "ci_low": s.ci_low,
        "ci_high": s.ci_high,
        "substitutions": s.substitutions,
        "deletions": s.deletions,
        "insertions": s.insertions,
        "words": s.words,
        "n_utterances": s.n_utterances,
        "audio_seconds": res["audio_seconds"],
        "wall_seconds": res["wall_seconds"],
        "rtfx": res["rtfx"],
        "peak_rss_mib": res["peak_rss_mib"],
        "breakdown": s.breakdown,
        "confusions": s.confusions,
        "predictions": str(pred),
        "_utts": utts,
    }


def gate(cfg: BenchConfig, hist: History, run: BenchRun, row: dict) -> None:
    """Compare with the previous run of this model on this test set; record a regression."""
    prev = hist.previous(run.run_id, row["model"], row["testset"], row["normalizer"])
    if prev is None:
        return
    a = hist.utterance_errors(prev["run_id"], row["model"], row["testset"])
    b = hist.utterance_errors(run.run_id, row["model"], row["testset"])
    try:
        c = paired_bootstrap(a, b, cfg.bootstrap_samples, cfg.seed)
    except ValueError:
        return
    row["previous"] = {"run_id": prev["run_id"], **asdict(c), "significant": c.significant}
    if c.diff > cfg.max_wer_increase and c.significant:
        run.regressions.append(
            {"model": row["model"], "testset": row["testset"], **row["previous"]}
        )
        log.warning(
            "REGRESSION: %s on %s: WER %.2f%% -> %.2f%% (+%.2f, 95%% CI %.2f..%.2f) vs run %s",
            row["model"],
            row["testset"],
            100 * c.wer_a,
            100 * c.wer_b,
            100 * c.diff,
            100 * c.ci_low,
            100 * c.ci_high,
            prev["run_id"],
        )


def compare(db: Path, run_a: str, run_b: str, samples: int = 1000, seed: int = 0) -> list[dict]:
    """Every model and test set the two runs share: B against A, paired on utterances."""
    hist = History(db)
    try:
        a_id, b_id = hist.resolve(run_a), hist.resolve(run_b)
        a_rows = {(r["model"], r["testset"]): r for r in hist.results(a_id)}
        out = []
        for r in hist.results(b_id):
            key = (r["model"], r["testset"])
            if key not in a_rows:
                continue
            c: Comparison = paired_bootstrap(
                hist.utterance_errors(a_id, *key), hist.utterance_errors(b_id, *key), samples, seed
            )
            out.append(
                {
                    "model": key[0],
                    "testset": key[1],
                    "run_a": a_id,
                    "run_b": b_id,
                    **asdict(c),
                    "significant": c.significant,
                }
            )
        return out
    finally:
        hist.close()
