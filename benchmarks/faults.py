"""Faults on every stage: kill -9 at random moments, a full disk at random points, two runs at once.

For each stage (ingest, segment, align, shard, transcribe) the script first runs the real `asr`
command uninterrupted on a small real-speech holding (LJSpeech and AN4 utterances of
../shared/data/realspeech, copied with a catalogue into one folder), then, per trial:
  1. starts the same command afresh and sends SIGKILL to it (`kill -9 PID`, its worker
     processes are not touched) after a random share of the uninterrupted run's wall time;
  2. looks at what is visible: every output file there must be whole (a manifest that parses
     to the end, a tar every member of which reads, a transcript that parses) and equal to
     the uninterrupted run's file of that name;
  3. counts the killed run's processes still alive 5 s later (workers must die with it);
  4. runs the command again to the end and compares every output with the uninterrupted run:
     nothing lost, nothing duplicated, the same records (manifests), members and bytes (shards)
     and files (transcripts).
Then, for shard and transcribe, the same on a small tmpfs (root only) filled with a ballast file
that leaves a random room: exit code and message of the run that hit the full disk, the
outputs after freeing the room and running again. Last, two `asr transcribe` runs on one
OUT_DIR started together: how often each recording was transcribed.

    python benchmarks/faults.py [--trials 20] [--stages ingest,segment,align,shard,transcribe]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.realspeech import REALSPEECH, ROOT  # noqa: E402

log = logging.getLogger("faults")
ASR = str(Path(sys.executable).parent / "asr")
STAGES = ("ingest", "segment", "align", "shard", "transcribe")
EXACT = ["--language", "en", "--batch-size", "1", "--parallel", "1"]
"""transcribe: one recording per model call, so a resumed run writes the same bytes."""


def holdings(folder: Path, n_lj: int, n_an4: int) -> Path:
    """Real utterances and a catalogue (relative paths, text inline) in one folder."""
    if (folder / "catalogue.csv").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with open(REALSPEECH / "catalogue.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    lj = [r for r in rows if r["path"].startswith("ljspeech_coqui/")][:n_lj]
    an4 = [r for r in rows if r["path"].startswith("an4_nemo/")][:n_an4]
    with open(folder / "catalogue.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "language", "rights", "collection", "text"])
        for r in lj + an4:
            name = r["path"].replace("/", "_")
            shutil.copy(REALSPEECH / r["path"], folder / name)
            w.writerow([Path(name).stem, name, "en", "public domain", "faults", r["transcript"]])
    return folder


def commands(work: Path, hold: Path, ref: Path) -> dict[str, tuple[list[str], Path]]:
    """Each stage's command writing into `work`, reading the uninterrupted run's inputs."""
    common = ["--no-progress", "-q"]
    return {
        "ingest": (
            [ASR, "ingest", "--catalogue", str(hold / "catalogue.csv"), "--out", str(work)],
            work / "recordings.jsonl",
        ),
        "segment": (
            [ASR, "segment", str(ref / "ingest" / "recordings.jsonl"), "--out"],
            work / "segments.jsonl",
        ),
        "align": (
            [ASR, "align", str(ref / "ingest" / "recordings.jsonl"), "--out"],
            work / "aligned.jsonl",
        ),
        "shard": (
            [ASR, "shard", str(ref / "align" / "aligned.jsonl"), "--out", str(work)]
            + ["--recordings", str(ref / "ingest" / "recordings.jsonl")],
            work,
        ),
        "transcribe": ([ASR, "transcribe", str(hold), "--out", str(work), *EXACT], work),
    } | {"_common": (common, work)}


def cmd_for(stage: str, work: Path, hold: Path, ref: Path) -> list[str]:
    table = commands(work, hold, ref)
    cmd, out = table[stage]
    if stage in ("segment", "align"):
        cmd = [*cmd, str(out)]
    return [*cmd, *table["_common"][0]]


def snapshot(stage: str, work: Path) -> dict[str, object]:
    """What a stage's output holds, comparable across runs; raises if a visible file is partial."""
    if stage in ("ingest", "segment", "align"):
        name = {"ingest": "recordings.jsonl", "segment": "segments.jsonl", "align": "aligned.jsonl"}
        p = work / name[stage]
        if not p.exists():
            return {}
        records = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
        return {r["id"]: r for r in records} | {"_n": len(records)}
    if stage == "shard":
        out: dict[str, object] = {}
        for tar in sorted(work.glob("**/*.tar")):
            with tarfile.open(tar) as t:
                for m in t.getmembers():
                    f = t.extractfile(m)
                    out[f"{tar.relative_to(work)}/{m.name}"] = f.read() if f else None
        meta = work / "shards.json"
        if meta.exists():
            out["_shards.json"] = json.loads(meta.read_text(encoding="utf-8"))
        return out
    out = {}
    for p in sorted(work.rglob("*")):
        if p.is_file() and not p.name.startswith(("jobs.sqlite", ".")):
            data = p.read_bytes()
            if p.suffix == ".json":
                json.loads(data)
            out[str(p.relative_to(work))] = data
    return out


def compare(ref: dict, got: dict) -> dict[str, int]:
    keys_ref, keys_got = set(ref), set(got)
    return {
        "lost": len(keys_ref - keys_got),
        "extra": len(keys_got - keys_ref),
        "differ": sum(1 for k in keys_ref & keys_got if ref[k] != got[k]),
    }


def visible_ok(stage: str, work: Path, ref_snap: dict) -> tuple[bool, str]:
    """Every output visible after the kill is whole and equal to the uninterrupted run's."""
    try:
        snap = snapshot(stage, work)
    except Exception as e:  # a partial file: it does not parse, or a tar member is cut
        return False, f"partial: {type(e).__name__}: {e}"[:200]
    if stage in ("ingest", "segment", "align"):
        if not snap:
            return True, ""
        c = compare(ref_snap, snap)
        return c == {"lost": 0, "extra": 0, "differ": 0}, json.dumps(c)
    bad = [k for k, v in snap.items() if k in ref_snap and ref_snap[k] != v and k != "_shards.json"]
    alien = [k for k in snap if k not in ref_snap]
    if stage == "shard":  # a shard is named by its index: only committed shards are visible
        alien = [k for k in alien if not k.endswith(".json")]
    return not bad and not alien, f"differ {bad[:2]}, unknown {alien[:2]}" if bad or alien else ""


def survivors(pids: list[int], wait: float = 5.0) -> int:
    deadline = time.monotonic() + wait
    alive = pids
    while time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and _not_zombie(p)]
        if not alive:
            return 0
        time.sleep(0.1)
    for p in alive:  # leave nothing behind for the next trial
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    return len(alive)


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def rerun(stage: str, cmd: list[str], work: Path, ref_snap: dict, rows: dict, i: int):
    """The same command to the end; adds what is lost, extra or different to rows (None: the
    rerun failed)."""
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        rows["rerun_failed"] += 1
        rows["notes"].append(f"trial {i}: rerun exit {r.returncode}: {r.stderr[-200:]}")
        return None
    c = compare(ref_snap, snapshot(stage, work))
    for k in ("lost", "extra", "differ"):
        rows[k] += c[k]
    return c


def kill_trials(stage: str, args, hold: Path, ref: Path, ref_wall: float) -> dict:
    rng = random.Random(f"{args.seed}-{stage}")
    ref_snap = snapshot(stage, ref / stage)
    rows = {"trials": 0, "partial_visible": 0, "rerun_failed": 0, "lost": 0, "extra": 0}
    rows |= {"differ": 0, "orphans": 0, "killed_before_end": 0, "notes": []}
    for i in range(args.trials):
        work = Path(args.work) / "trial" / stage
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        cmd = cmd_for(stage, work, hold, ref)
        delay = rng.uniform(0.02, 0.8) * ref_wall  # the trial runs about as long as the ref
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        children: set[int] = set()
        while time.monotonic() - t0 < delay and proc.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                children |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
            time.sleep(0.05)
        killed = proc.poll() is None
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        rows["trials"] += 1
        rows["killed_before_end"] += killed
        rows["orphans"] += survivors(sorted(children))
        ok, why = visible_ok(stage, work, ref_snap)
        if not ok:
            rows["partial_visible"] += 1
            rows["notes"].append(f"trial {i} ({delay:.1f} s): {why}")
        c = rerun(stage, cmd, work, ref_snap, rows, i)
        if c is None:
            continue
        if any(c.values()):
            rows["notes"].append(f"trial {i} ({delay:.1f} s): after rerun {c}")
        log.info("%s trial %d: kill at %.1f s (%s), %s", stage, i, delay, killed, c)
    return rows


def disk_full_trials(stage: str, args, hold: Path, ref: Path) -> dict:
    """The stage on a tmpfs with a random room left; then room again and the same command."""
    rng = random.Random(f"{args.seed}-disk-{stage}")
    ref_snap = snapshot(stage, ref / stage)
    size = sum(p.stat().st_size for p in (ref / stage).rglob("*") if p.is_file())
    mnt = Path(args.work) / "disk"
    mnt.mkdir(parents=True, exist_ok=True)
    mb = max(4, 2 * size // (1 << 20) + 4)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(mnt)]).returncode:
        return {"skipped": "mounting a tmpfs needs root"}
    rows = {"trials": 0, "exit_codes": {}, "named_path": 0, "traceback": 0, "partial_visible": 0}
    rows |= {"rerun_failed": 0, "lost": 0, "extra": 0, "differ": 0, "notes": []}
    try:
        for i in range(args.disk_trials):
            work = mnt / "out"
            shutil.rmtree(work, ignore_errors=True)
            ballast = mnt / "ballast"
            room = int(rng.uniform(0.0, 1.0) * size)
            ballast.write_bytes(b"\0" * max(0, shutil.disk_usage(mnt).free - room))
            cmd = cmd_for(stage, work, hold, ref)
            r = subprocess.run(cmd, capture_output=True, text=True)
            rows["trials"] += 1
            rows["exit_codes"][str(r.returncode)] = rows["exit_codes"].get(str(r.returncode), 0) + 1
            rows["named_path"] += str(mnt) in r.stderr
            rows["traceback"] += "Traceback" in r.stderr
            ok, why = visible_ok(stage, work, ref_snap)
            if not ok:
                rows["partial_visible"] += 1
                rows["notes"].append(f"trial {i} (room {room} B): {why}")
            ballast.unlink()
            c = rerun(stage, cmd, work, ref_snap, rows, i)
            if c is None:
                continue
            if r.returncode == 0 or any(c.values()):
                rows["notes"].append(
                    f"trial {i} (room {room} B): exit {r.returncode}: "
                    f"{r.stderr.strip().splitlines()[-1:] if r.stderr.strip() else ''}; after {c}"
                )
            log.info(
                "%s disk trial %d: room %d B, exit %d, after rerun %s",
                stage,
                i,
                room,
                r.returncode,
                c,
            )
    finally:
        subprocess.run(["umount", str(mnt)])
    return rows


def concurrent(args, hold: Path, ref: Path) -> dict:
    """Two `asr transcribe` runs on one OUT_DIR, the second started while the first runs."""
    work = Path(args.work) / "trial" / "concurrent"
    shutil.rmtree(work, ignore_errors=True)
    cmd = cmd_for("transcribe", work, hold, ref)
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    while not (work / "jobs.sqlite").exists() and first.poll() is None:
        time.sleep(0.02)
    second = subprocess.run(cmd, capture_output=True, text=True)
    first.communicate()
    db = sqlite3.connect(work / "jobs.sqlite")
    attempts = [a for (a,) in db.execute("SELECT attempts FROM jobs")]
    c = compare(snapshot("transcribe", ref / "transcribe"), snapshot("transcribe", work))
    return {
        "first_exit": first.returncode,
        "second_exit": second.returncode,
        "second_says": (second.stderr.strip().splitlines() or [""])[-1][:200],
        "recordings": len(attempts),
        "transcribed_more_than_once": sum(a > 1 for a in attempts),
        "outputs": c,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20, help="kills per stage (default 20)")
    p.add_argument("--disk-trials", type=int, default=10, help="full disks per stage (default 10)")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated (default: all)")
    p.add_argument("--utterances", type=int, default=16, help="LJSpeech utterances (default 16)")
    p.add_argument("--work", default=str(ROOT / "build" / "faults"), help="(default build/faults)")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stages = [s for s in args.stages.split(",") if s]
    work = Path(args.work)
    hold = holdings(work / "holdings", args.utterances, 4)
    ref = work / "ref"
    shutil.rmtree(ref, ignore_errors=True)
    walls = {}
    for stage in STAGES:  # the later stages read the earlier ones' uninterrupted outputs
        t0 = time.perf_counter()
        (ref / stage).mkdir(parents=True)
        cmd = cmd_for(stage, ref / stage, hold, ref)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"uninterrupted {stage} failed: {r.stderr[-2000:]}")
        walls[stage] = time.perf_counter() - t0
        log.info("uninterrupted %s: %.1f s", stage, walls[stage])
    results: dict[str, object] = {"uninterrupted_wall_s": walls, "kill": {}, "disk_full": {}}
    for stage in stages:
        results["kill"][stage] = kill_trials(stage, args, hold, ref, walls[stage])
    for stage in [s for s in ("shard", "transcribe") if s in stages]:
        results["disk_full"][stage] = disk_full_trials(stage, args, hold, ref)
    if "transcribe" in stages:
        results["concurrent"] = concurrent(args, hold, ref)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    print(table(results))


def table(res: dict) -> str:
    lines = [
        "| stage | kills (before the end) | partial file visible | processes left | rerun failed "
        "| lost | duplicated/extra | differ |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for stage, r in res["kill"].items():
        lines.append(
            f"| {stage} | {r['trials']} ({r['killed_before_end']}) | {r['partial_visible']} | "
            f"{r['orphans']} | {r['rerun_failed']} | {r['lost']} | {r['extra']} | {r['differ']} |"
        )
    lines += [
        "",
        "| stage | full disks | exit codes | message names the path | traceback | partial visible "
        "| rerun failed | lost | extra | differ |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for stage, r in res["disk_full"].items():
        if "skipped" in r:
            lines.append(f"| {stage} | skipped: {r['skipped']} | | | | | | | | |")
            continue
        lines.append(
            f"| {stage} | {r['trials']} | {r['exit_codes']} | {r['named_path']} | {r['traceback']} "
            f"| {r['partial_visible']} | {r['rerun_failed']} | {r['lost']} | {r['extra']} | "
            f"{r['differ']} |"
        )
    if "concurrent" in res:
        lines += ["", "two transcribe runs on one OUT_DIR: " + json.dumps(res["concurrent"])]
    notes = [
        f"{k} {s}: {n}"
        for k in ("kill", "disk_full")
        for s, r in res[k].items()
        for n in r.get("notes", [])
    ]
    if notes:
        lines += ["", "notes:"] + [f"- {n}" for n in notes[:40]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
