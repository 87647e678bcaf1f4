"""The workbench (`asr serve`) at collection scale: index build, search latency, the page of a
3-hour transcript in a real browser, and the server's memory.

A collection of N generated transcripts (default 10,000 of 1 to 11 minutes, about 1,000 hours;
words drawn from the real speech's reference texts, with times and confidences as
`asr transcribe` writes them; a job database as it leaves it) plus one 3-hour transcript. The
server runs for real (uvicorn, in this process) and is asked over HTTP (httpx). The peer, side
by side: what an archivist without the index would do, reading every transcript for a word
(a Python scan of the JSON files, as grep over them does).

    python benchmarks/workbench.py [--transcripts 10000] [--work build/workbench-bench]
    python benchmarks/workbench.py --screenshot benchmarks/figures/workbench.png

--screenshot transcribes the real telephone call of ../shared/data/diarization with
--diarize, serves it, plays it in headless chromium and saves the transcript page.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import random
import re
import resource
import shutil
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.realspeech import REALSPEECH  # noqa: E402

log = logging.getLogger("workbench")


def _vocabulary() -> list[str]:
    words = []
    with open(REALSPEECH / "catalogue.csv", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r.get("language") == "en" and r.get("kind") == "utterance":
                words += r["transcript"].split()
    return words


def _transcript(rid: str, seconds: float, vocab: list[str], rng: random.Random, meta: dict):
    """A transcript record as asr transcribe writes it: ~2.5 words a second, ~10 per segment."""
    segments, t, n = [], 0.0, 0
    while t < seconds - 1:
        k = rng.randint(6, 14)
        words, start = [], t
        for _ in range(k):
            d = rng.uniform(0.2, 0.6)
            words.append(
                {
                    "start": round(t, 3),
                    "end": round(t + d, 3),
                    "word": " " + rng.choice(vocab),
                    "probability": round(rng.betavariate(8, 1.2), 3),
                }
            )
            t += d
        segments.append(
            {
                "id": n,
                "start": round(start, 3),
                "end": round(t, 3),
                "text": "".join(w["word"] for w in words),
                "avg_logprob": -0.2,
                "no_speech_prob": 0.01,
                "compression_ratio": 1.5,
                "words": words,
                "language": None,
            }
        )
        n += 1
        t += rng.uniform(0.2, 1.5)
    return {
        "recording_id": rid,
        "path": f"/archive/{rid}.mp3",
        "duration": seconds,
        "language": "en",
        "language_probability": 1.0,
        "segments": segments,
        "model": {"name": "tiny.en"},
        "options": {},
        "software": {},
        "metadata": meta,
    }


def build(work: Path, n: int, seed: int = 0) -> tuple[Path, str, float]:
    """Write the collection (kept and reused if complete); (OUT_DIR, key of the 3 h one, hours)."""
    from asr.engine.jobs import JobDB

    out = work / "out"
    marker = work / f"built-{n}-{seed}"
    audio = sorted((REALSPEECH / "ljspeech_coqui").glob("*.wav"))[0]
    if marker.is_file():
        return out, "long/three-hours", float(marker.read_text())
    shutil.rmtree(work, ignore_errors=True)
    out.mkdir(parents=True)
    rng = random.Random(seed)
    vocab = _vocabulary()
    collections = ["radio", "oral history", "parliament", "lectures"]
    seconds = 0.0
    t0 = time.perf_counter()
    keys = []
    for i in range(n):
        dur = rng.uniform(60, 660)
        seconds += dur
        key = f"c{i // 1000:02d}/rec{i:05d}"
        meta = {
            "title": f"Recording {i}",
            "date": f"{1950 + i % 70}-{1 + i % 12:02d}-01",
            "collection": collections[i % 4],
            "rights": "public domain",
        }
        d = _transcript(f"rec{i:05d}", dur, vocab, rng, meta)
        path = out / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(d, ensure_ascii=False, indent=2))
        keys.append(key)
    long = _transcript("three-hours", 3 * 3600.0, vocab, rng, {"title": "Three hours"})
    (out / "long").mkdir()
    (out / "long" / "three-hours.json").write_text(json.dumps(long, indent=2))
    db = JobDB(out / "jobs.sqlite")
    db.register([(k, str(audio), k) for k in [*keys, "long/three-hours"]])
    with db.db:
        db.db.execute("UPDATE jobs SET status='done'")
    db.close()
    hours = (seconds + 3 * 3600) / 3600
    log.info("built %d transcripts (%.0f h) in %.0f s", n + 1, hours, time.perf_counter() - t0)
    marker.write_text(str(hours))
    return out, "long/three-hours", hours


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(app):
    import uvicorn

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    return srv, thread, f"http://127.0.0.1:{port}"


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1200,800",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def grep_peer(out: Path, word: str) -> tuple[int, float]:
    """The peer: every transcript's JSON read for segments holding the word (case-folded)."""
    t0 = time.perf_counter()
    pattern = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
    hits = 0
    for path in out.rglob("*.json"):
        if ".workbench" in path.parts:
            continue
        for s in json.loads(path.read_text(encoding="utf-8"))["segments"]:
            if pattern.search(s["text"]):
                hits += 1
    return hits, time.perf_counter() - t0


def bench(work: Path, n: int) -> dict:
    import httpx

    from asr.workbench.app import create_app

    out, long_key, hours = build(work, n)
    shutil.rmtree(out / ".workbench", ignore_errors=True)
    rss0 = _rss_mib()
    t0 = time.perf_counter()
    app = create_app(out)
    build_s = time.perf_counter() - t0
    index_mib = (out / ".workbench" / "index.sqlite").stat().st_size / 2**20
    t0 = time.perf_counter()
    app.state.index.refresh(force=True)
    refresh_s = time.perf_counter() - t0
    srv, thread, base = _serve(app)
    rng = random.Random(1)
    vocab = [w.strip(".,;:!?\"'()").lower() for w in _vocabulary()]
    vocab = [w for w in vocab if w.isalpha()]
    queries = [rng.choice(vocab) for _ in range(150)]
    queries += [" ".join(rng.sample(vocab, 2)) for _ in range(30)]
    queries += [f'"{a} {b}"' for a, b in (rng.sample(vocab, 2) for _ in range(20))]
    filters = [{}, {"collection": "radio"}, {"from": "1960", "to": "1979"}]
    times, counts = [], []
    with httpx.Client(base_url=base, timeout=60) as client:
        client.get("/api/search", params={"q": "warm"})
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            r = client.get("/api/search", params={"q": q, **filters[i % 3]})
            times.append(time.perf_counter() - t0)
            counts.append(len(r.json()["hits"]))
        t0 = time.perf_counter()
        page = client.get(f"/r/{long_key}")
        page_server_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        client.get("/")
        collection_s = time.perf_counter() - t0
    rss_server = _rss_mib()
    # the 3 h page in a real browser: navigation start to load, and words on the page
    browser_s = words = None
    if shutil.which("chromedriver") and shutil.which("chromium"):
        driver = _browser()
        try:
            driver.get(base + "/")
            loads = []
            for _ in range(3):
                driver.get(f"{base}/r/{long_key}")
                loads.append(
                    driver.execute_script(
                        "const t = performance.getEntriesByType('navigation')[0];"
                        "return t.loadEventEnd - t.startTime;"
                    )
                    / 1000
                )
            browser_s = statistics.median(loads)
            words = driver.execute_script("return document.querySelectorAll('.w').length")
        finally:
            driver.quit()
    srv.should_exit = True
    thread.join(10)
    word = statistics.median_low(queries[:150])
    peer_hits, peer_s = grep_peer(out, word)
    t0 = time.perf_counter()
    ours = app.state.index.search(word, limit=10**9)
    ours_s = time.perf_counter() - t0
    times.sort()
    return {
        "transcripts": n + 1,
        "hours": round(hours, 1),
        "index_build_s": round(build_s, 1),
        "index_mib": round(index_mib),
        "refresh_unchanged_s": round(refresh_s, 3),
        "search_median_ms": round(1000 * statistics.median(times), 1),
        "search_p95_ms": round(1000 * times[int(0.95 * len(times))], 1),
        "search_max_ms": round(1000 * times[-1], 1),
        "hits_median": statistics.median(counts),
        "page_3h_server_s": round(page_server_s, 3),
        "page_3h_html_mib": round(len(page.content) / 2**20, 1),
        "page_3h_browser_load_s": None if browser_s is None else round(browser_s, 3),
        "page_3h_words": words,
        "collection_page_s": round(collection_s, 3),
        "server_rss_mib": round(rss_server),
        "rss_before_mib": round(rss0),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peer_word": word,
        "peer_scan_s": round(peer_s, 2),
        "peer_hits": peer_hits,
        "index_all_hits_s": round(ours_s, 3),
        "index_all_hits": len(ours),
        "speedup_vs_scan": round(peer_s / max(ours_s, 1e-9), 1),
    }


def screenshot(path: Path, work: Path) -> None:
    """The transcript page of the real telephone call, diarized, a few seconds in."""
    from selenium.webdriver.support.ui import WebDriverWait

    from asr.engine.transcribe import TranscribeOptions, transcribe
    from asr.workbench.app import create_app

    call = REALSPEECH.parent / "diarization" / "sample.wav"
    out = work / "screenshot"
    opts = TranscribeOptions(formats=("json", "vtt"), progress=False, language="en", diarize=True)
    r = transcribe([call], out, opts)
    if r.done != 1:
        raise SystemExit(f"transcription failed: {r.failures}")
    srv, thread, base = _serve(create_app(out))
    driver = _browser()
    try:
        driver.get(f"{base}/r/sample?t=21.5")
        WebDriverWait(driver, 20).until(
            lambda d: d.execute_script("return document.getElementById('media').readyState >= 1")
        )
        driver.execute_script("document.getElementById('media').currentTime = 21.5")
        time.sleep(0.5)
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(path))
    finally:
        driver.quit()
        srv.should_exit = True
        thread.join(10)
    log.info("wrote %s", path)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--transcripts", type=int, default=10000, help="how many (default 10000)")
    ap.add_argument(
        "--work",
        type=Path,
        default=ROOT / "build" / "workbench-bench",
        help="folder for the generated collection (kept and reused)",
    )
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--screenshot", type=Path, help="only save the README's screenshot here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    if args.screenshot:
        screenshot(args.screenshot, args.work)
        return
    figures = bench(args.work, args.transcripts)
    print("| figure | value |\n| --- | ---: |")
    for k, v in figures.items():
        print(f"| {k} | {v} |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
