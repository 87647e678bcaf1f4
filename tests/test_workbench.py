"""The workbench (`asr serve`) over a real transcripts folder: tiny.en transcripts of real
speech, the real SQLite index, real HTTP (Starlette's test client), and a real browser
(Debian's chromium, headless, through selenium and chromium-driver)."""

from __future__ import annotations

import csv
import json
import shutil
import socket
import sqlite3
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import webvtt
from lxml import etree

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from asr.audio import load  # noqa: E402
from asr.engine.transcribe import TranscribeOptions, transcribe  # noqa: E402
from asr.ingest import IngestOptions, ingest  # noqa: E402
from asr.revisions import corrected_keys  # noqa: E402
from asr.workbench.app import create_app  # noqa: E402
from asr.workbench.index import fts_query  # noqa: E402

FORMATS = ("json", "vtt", "srt", "txt", "tei")
EVIL = "<script>alert(1)</script>"


def _aac(src: Path, dst: Path) -> None:
    """An AAC (.m4a) copy of src: a container the workbench transcodes for the browser."""
    audio = load(src)
    with av.open(str(dst), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            (audio * 32767).astype(np.int16)[None, :], format="s16", layout="mono"
        )
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.fixture(scope="module")
def collection(realspeech, tmp_path_factory) -> Path:
    """A transcribed collection: 5 LJSpeech utterances (one as AAC in .m4a) with catalogue
    fields, one title markup, as `asr ingest` + `asr transcribe` leave it."""
    root = tmp_path_factory.mktemp("workbench")
    holdings = root / "holdings"
    holdings.mkdir()
    with open(realspeech / "catalogue.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["path"].startswith("ljspeech_coqui/")][:5]
    catalogue = []
    for i, r in enumerate(rows):
        src = realspeech / r["path"]
        name = Path(r["path"]).name
        if i == 4:
            name = Path(name).with_suffix(".m4a").name
            _aac(src, holdings / name)
        else:
            shutil.copy(src, holdings / name)
        catalogue.append(
            dict(
                path=name,
                title=EVIL if i == 1 else f"Reading {i}",
                date=f"19{50 + i}-06-01",
                collection="radio" if i % 2 else "oral history",
                language="en",
                rights="public domain",
            )
        )
    with open(holdings / "catalogue.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(catalogue[0]))
        w.writeheader()
        w.writerows(catalogue)
    ingest([], root / "manifests", IngestOptions(catalogue=holdings / "catalogue.csv"))
    out = root / "out"
    opts = TranscribeOptions(formats=FORMATS, progress=False)
    r = transcribe([root / "manifests" / "recordings.jsonl"], out, opts)
    assert r.done == 5, r.failures
    return out


@pytest.fixture()
def out_dir(collection, tmp_path) -> Path:
    """A copy of the collection's OUT_DIR for a test that changes it."""
    dst = tmp_path / "out"
    shutil.copytree(collection, dst)
    return dst


def _client(app) -> TestClient:
    """A client as a browser on this machine sends it (Host 127.0.0.1:8080)."""
    return TestClient(app, base_url="http://127.0.0.1:8080")


def _transcripts(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}


def _a_word(out: Path) -> tuple[str, dict, dict]:
    """A distinctive recognised word (7+ letters) of one transcript, well after its segment's
    start (a hit's time must be the word's own): (key, transcript, word)."""
    for key, t in sorted(_transcripts(out).items()):
        for s in t["segments"]:
            for w in s["words"]:
                if len(w["word"].strip(" ,.")) >= 7 and w["start"] > s["start"] + 1.0:
                    return key, t, w
    raise AssertionError("no long word")


def test_search_finds_spoken_words_with_their_time(collection):
    client = _client(create_app(collection))
    key, t, w = _a_word(collection)
    word = w["word"].strip(" ,.")
    for q in (word, word.upper(), word.lower()):  # case-insensitive
        hits = client.get("/api/search", params={"q": q}).json()["hits"]
        assert any(h["key"] == key for h in hits), (q, hits)
    hit = next(h for h in hits if h["key"] == key)
    assert hit["recording_id"] == t["recording_id"]
    assert abs(hit["start"] - w["start"]) < 0.01  # the word's own time, not its segment's
    assert hit["start"] <= hit["end"] and word.lower() in hit["text"].lower()
    assert hit["url"].startswith(f"/r/{key}?t=")
    page = client.get(hit["url"])
    assert page.status_code == 200 and word in page.text
    # a phrase matches words in order only
    words = [x["word"].strip(" ,.") for s in t["segments"] for x in s["words"]]
    a, b = next((x, y) for x, y in zip(words, words[1:]) if len(x) > 3 and len(y) > 3)
    assert client.get("/api/search", params={"q": f'"{a} {b}"'}).json()["hits"]
    both = client.get("/api/search", params={"q": f'"{b} {a}"'}).json()["hits"]
    assert all(h["key"] != key for h in both)
    # FTS5 syntax in a query is text, never an error
    for q in ('"', "NEAR(a b)", "a OR", "*", "text:foo", "'); DROP TABLE segments; --"):
        r = client.get("/api/search", params={"q": q})
        assert r.status_code == 200 and "hits" in r.json(), q
    assert fts_query('x" OR y') == '"x" AND "OR" AND "y"'


def test_search_narrows_to_a_collection_and_dates(collection):
    client = _client(create_app(collection))
    records = client.get("/api/recordings").json()["recordings"]
    assert len(records) == 5 and {r["collection"] for r in records} == {"radio", "oral history"}
    radio = client.get("/api/recordings", params={"collection": "radio"}).json()["recordings"]
    assert {r["collection"] for r in radio} == {"radio"} and len(radio) == 2
    # every word of every radio transcript is found within radio only
    key, t, w = next(
        (r["key"], t, w)
        for r in radio
        for t in [_transcripts(collection)[r["key"]]]
        for s in t["segments"]
        for w in s["words"]
        if len(w["word"].strip(" ,.")) > 4
    )
    q = w["word"].strip(" ,.")
    hits = client.get("/api/search", params={"q": q, "collection": "radio"}).json()["hits"]
    assert hits and all(h["key"] in {r["key"] for r in radio} for h in hits)
    date = next(r["date"] for r in records if r["key"] == key)
    assert client.get("/api/search", params={"q": q, "from": date, "to": date}).json()["hits"]
    later = str(int(date[:4]) + 1)
    assert not [
        h
        for h in client.get("/api/search", params={"q": q, "from": later}).json()["hits"]
        if h["key"] == key
    ]


def test_collection_page_escapes_catalogue_text_and_sorts(collection):
    client = _client(create_app(collection))
    html = client.get("/").text
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count('class="rec"') == 5
    by = client.get("/api/recordings", params={"sort": "duration"}).json()["recordings"]
    durations = [r["duration"] for r in by]
    assert durations == sorted(durations) and all(d > 0 for d in durations)
    page = client.get("/api/recordings", params={"sort": "duration", "limit": 2, "offset": 1})
    assert [r["key"] for r in page.json()["recordings"]] == [r["key"] for r in by[1:3]]
    for r in by:
        assert r["status"] == "done" and 0 < r["confidence"] <= 1 and r["review"] == "machine"
    key = next(r["key"] for r in by if r["title"] == EVIL)
    page = client.get(f"/r/{key}").text
    assert EVIL not in page and "&lt;script&gt;" in page


def test_media_is_served_with_ranges_and_nothing_else(collection, tmp_path):
    client = _client(create_app(collection))
    records = {r["key"]: r for r in client.get("/api/recordings").json()["recordings"]}
    wav = next(k for k in records if k.endswith("0001"))
    whole = client.get(f"/media/{wav}")
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    part = client.get(f"/media/{wav}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == whole.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole.content)}"
    # AAC in .m4a: transcoded once to Opus, which plays back as long as the recording
    m4a = next(k for k, r in records.items() if r["recording_id"].endswith(".m4a"))
    ogg = client.get(f"/media/{m4a}")
    assert ogg.status_code == 200 and ogg.headers["content-type"] == "audio/ogg"
    (tmp_path / "x.ogg").write_bytes(ogg.content)
    with av.open(str(tmp_path / "x.ogg")) as f:
        assert f.streams.audio[0].codec_context.name == "opus"
        seconds = sum(fr.samples for fr in f.decode(audio=0)) / 48000
    assert abs(seconds - records[m4a]["duration"]) < 0.1
    # only recordings of the job database, only transcripts found under OUT_DIR
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"recording_id": "s", "segments": [], "duration": 1}))
    (collection / "link.json").symlink_to(secret)
    try:
        fresh = _client(create_app(collection))
        assert fresh.get("/r/link").status_code == 404
        assert "link" not in {r["key"] for r in fresh.get("/api/recordings").json()["recordings"]}
    finally:
        (collection / "link.json").unlink()
    for path in (
        "/media/../jobs.sqlite",
        "/media/%2e%2e/%2e%2e/etc/passwd",
        "/media//etc/passwd",
        "/media/jobs",
        "/r/..%2Fjobs",
        "/static/../index.py",
        "/static/%2e%2e/app.py",
    ):
        r = client.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert b"root:" not in r.content and b"SQLite" not in r.content


def _webm(src: Path, dst: Path) -> None:
    """A WebM video (VP8, 2 frames a second, and src's speech in Opus)."""
    audio = (load(src) * 32767).astype(np.int16)
    with av.open(str(dst), "w", format="webm") as out:
        video = out.add_stream("libvpx", rate=2)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = out.add_stream("libopus", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(audio[None, :], format="s16", layout="mono")
        frame.sample_rate = 16000
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        for f in [*resampler.resample(frame), *resampler.resample(None)]:
            out.mux(sound.encode(f))
        out.mux(sound.encode(None))
        for i in range(int(len(audio) / 16000 * 2)):
            img = np.full((48, 64, 3), (i * 20) % 255, np.uint8)
            out.mux(video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(video.encode(None))


def test_a_video_plays_in_a_video_element_and_a_failed_recording_is_listed(realspeech, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _webm(realspeech / "ljspeech_coqui/LJ001-0001.wav", src / "talk.webm")
    (src / "broken.mp3").write_bytes(b"ID3" + bytes(range(256)) * 8)
    out = tmp_path / "out"
    r = transcribe([src], out, TranscribeOptions(formats=("json",), progress=False))
    assert (r.done, r.failed) == (1, 1)
    client = _client(create_app(out))
    page = client.get("/r/talk").text
    assert '<video id="media"' in page and "<audio" not in page
    media = client.get("/media/talk", headers={"Range": "bytes=0-9"})
    assert media.status_code == 206 and media.headers["content-type"] == "video/webm"
    rows = {x["key"]: x for x in client.get("/api/recordings").json()["recordings"]}
    assert rows["talk"]["status"] == "done" and rows["broken"]["status"] == "failed"
    assert rows["broken"]["error"] and "broken" not in [
        h["key"] for h in client.get("/api/review").json()["segments"]
    ]
    missing = client.get("/r/broken")
    assert missing.status_code == 200 and "No transcript yet" in missing.text
    assert "failed" in client.get("/", params={"status": "failed"}).text


def test_a_correction_is_a_revision_rewrites_every_format_and_survives_a_rerun(collection, out_dir):
    client = _client(create_app(out_dir))
    key, t, _ = _a_word(out_dir)
    seg = t["segments"][0]
    new = "Archivists corrected this: " + seg["text"].strip()
    r = client.post(
        f"/api/transcripts/{key}/segments/{seg['id']}",
        json={"base_revision": 0, "text": new, "author": "Ada"},
    )
    assert r.status_code == 200 and r.json()["revision"] == 1
    saved = json.loads((out_dir / f"{key}.json").read_text())
    s0 = saved["segments"][0]
    assert s0["text"].strip() == new
    assert [w["word"].strip() for w in s0["words"]] == new.split()
    starts = [w["start"] for w in s0["words"]]
    assert starts == sorted(starts) and seg["start"] - 0.01 <= starts[0] <= starts[-1] <= seg["end"]
    # the words the machine had keep their times
    old = {w["word"].strip(): w["start"] for w in seg["words"]}
    kept = [w for w in s0["words"][4:] if w["word"].strip() in old]
    assert kept and all(abs(w["start"] - old[w["word"].strip()]) < 1e-3 for w in kept)
    assert saved["review"]["state"] == "partly reviewed" and saved["review"]["revision"] == 1
    assert saved["review"]["changes"][0]["author"] == "Ada"
    # every format again, from the revision
    cues = webvtt.read(str(out_dir / f"{key}.vtt"))
    assert "Archivists corrected this:" in cues[0].text
    assert "Archivists corrected this:" in (out_dir / f"{key}.srt").read_text()
    assert (out_dir / f"{key}.txt").read_text().startswith("Archivists corrected this:")
    tei = etree.parse(str(out_dir / f"{key}.tei.xml"))
    ns = {"t": "http://www.tei-c.org/ns/1.0"}
    assert tei.xpath("string(//t:u[1]/t:w[1])", namespaces=ns) == "Archivists"
    assert tei.xpath("//t:revisionDesc/t:change/@who", namespaces=ns) == ["Ada"]
    # the machine's transcript is revision 0
    machine = client.get(f"/api/transcripts/{key}/revisions/0").json()["transcript"]
    assert machine["segments"][0]["text"] == seg["text"]
    # a second browser still on revision 0 is told, and nothing is lost
    r = client.post(
        f"/api/transcripts/{key}/segments/{seg['id']}", json={"base_revision": 0, "text": "x"}
    )
    assert r.status_code == 409 and "revision 1" in r.json()["error"]
    assert json.loads((out_dir / f"{key}.json").read_text())["segments"][0]["text"].strip() == new
    r = client.post(
        f"/api/transcripts/{key}/review", json={"base_revision": 1, "state": "reviewed"}
    )
    assert r.status_code == 200 and r.json()["transcript"]["review"]["state"] == "reviewed"
    assert client.get("/api/recordings", params={"review": "reviewed"}).json()["recordings"]
    # searchable at once
    hits = client.get("/api/search", params={"q": "archivists corrected"}).json()["hits"]
    assert [h["key"] for h in hits] == [key]
    # a rerun of asr transcribe with other options never overwrites it
    assert corrected_keys(out_dir) == {key}
    recordings = collection.parent / "manifests" / "recordings.jsonl"
    opts = TranscribeOptions(formats=(*FORMATS, "rttm"), progress=False)
    res = transcribe([recordings], out_dir, opts)
    assert res.skipped_corrected == 1 and res.done == 4
    assert json.loads((out_dir / f"{key}.json").read_text())["review"]["state"] == "reviewed"


def test_accents_and_case_fold_in_search_and_speakers_are_named(out_dir):
    client = _client(create_app(out_dir))
    key, t, _ = _a_word(out_dir)
    seg = t["segments"][0]
    text = "Déjà vu at the Café Ørsted in São Paulo"
    r = client.post(
        f"/api/transcripts/{key}/segments/{seg['id']}", json={"base_revision": 0, "text": text}
    )
    assert r.status_code == 200
    for q in ("deja", "CAFE", "sao paulo", "café", "déjà vu"):
        hits = client.get("/api/search", params={"q": q}).json()["hits"]
        assert [h["key"] for h in hits] == [key], q
    # a diarized transcript: its speaker named everywhere
    path = out_dir / f"{key}.json"
    d = json.loads(path.read_text())
    d["speakers"] = ["SPEAKER_00"]
    for s in d["segments"]:
        s["speaker"] = "SPEAKER_00"
        s.setdefault("overlap", False)
        for w in s["words"]:
            w["speaker"] = "SPEAKER_00"
    # (as asr transcribe --diarize writes it; revision 1 holds what the edit saw)
    conn = sqlite3.connect(out_dir / "revisions.sqlite")
    with conn:
        conn.execute(
            "UPDATE revisions SET transcript=? WHERE key=? AND revision=1", (json.dumps(d), key)
        )
    conn.close()
    r = client.post(
        f"/api/transcripts/{key}/speakers",
        json={"base_revision": 1, "old": "SPEAKER_00", "new": "Mary <b>Smith</b>"},
    )
    assert r.status_code == 200, r.text
    vtt = (out_dir / f"{key}.vtt").read_text()
    assert "<v Mary &lt;b&gt;Smith&lt;/b&gt;>" in vtt
    page = client.get(f"/r/{key}").text
    assert "Mary &lt;b&gt;Smith&lt;/b&gt;" in page and "<b>Smith" not in page
    tei = etree.parse(str(out_dir / f"{key}.tei.xml"))
    ns = {"t": "http://www.tei-c.org/ns/1.0"}
    assert tei.xpath("//t:person/@n", namespaces=ns) == ["Mary <b>Smith</b>"]
    assert client.get("/api/search", params={"q": "cafe", "speaker": "Mary <b>Smith</b>"}).json()[
        "hits"
    ]
    assert not client.get("/api/search", params={"q": "cafe", "speaker": "SPEAKER_00"}).json()[
        "hits"
    ]


def test_transcript_markup_is_text_everywhere(out_dir):
    client = _client(create_app(out_dir))
    key, t, _ = _a_word(out_dir)
    evil = 'Tom said <img src=x onerror="alert(1)"> & <b>left</b>'
    r = client.post(
        f"/api/transcripts/{key}/segments/{t['segments'][0]['id']}",
        json={"base_revision": 0, "text": evil},
    )
    assert r.status_code == 200
    page = client.get(f"/r/{key}").text
    assert "<img" not in page and "&lt;img" in page and "<b>left" not in page
    hits = client.get("/search", params={"q": "onerror"}).text
    assert "<img" not in hits and "&lt;img" in hits
    cue = webvtt.read(str(out_dir / f"{key}.vtt"))[0].text  # WebVTT's own escapes
    assert cue.startswith("Tom said &lt;img") and "<" not in cue
    etree.parse(str(out_dir / f"{key}.tei.xml"))  # still well-formed


def test_serve_needs_a_token_beyond_this_machine(collection, monkeypatch):
    import asr.workbench.app
    from asr import cli

    calls = []
    monkeypatch.setattr(asr.workbench.app, "serve", lambda *a: calls.append(a))
    assert cli.main(["serve", str(collection)]) == 0
    assert calls[-1] == (collection, "127.0.0.1", 8080, None)
    assert cli.main(["serve", str(collection), "--host", "0.0.0.0", "--port", "9000"]) == 0
    _, host, port, token = calls[-1]
    assert (host, port) == ("0.0.0.0", 9000) and token and len(token) >= 24
    assert cli.main(["serve", str(collection), "--host", "0.0.0.0", "--token", "abc"]) == 0
    assert calls[-1][3] == "abc"


def test_review_queue_puts_the_least_confident_first(out_dir):
    client = _client(create_app(out_dir))
    queue = client.get("/api/review", params={"limit": 1000}).json()["segments"]
    n = sum(len(t["segments"]) for t in _transcripts(out_dir).values())
    assert len(queue) == n
    conf = [s["confidence"] for s in queue]
    assert conf == sorted(conf)
    worst = queue[0]
    t = _transcripts(out_dir)[worst["key"]]
    seg = next(s for s in t["segments"] if s["id"] == worst["segment"])
    mean = sum(w["probability"] for w in seg["words"]) / len(seg["words"])
    assert abs(mean - worst["confidence"]) < 1e-9
    r = client.post(
        f"/api/transcripts/{worst['key']}/segments/{worst['segment']}",
        json={"base_revision": 0, "text": seg["text"]},
    )
    assert r.status_code == 200
    after = client.get("/api/review", params={"limit": 1000}).json()["segments"]
    assert (after[-1]["key"], after[-1]["segment"]) == (worst["key"], worst["segment"])
    assert after[-1]["confidence"] == 1.0
    assert "least sure" in client.get("/review").text


def test_the_index_follows_a_folder_that_is_still_being_written(out_dir):
    """A watcher thread keeps the index in step: a transcript that leaves the folder stops
    being found, one that arrives (as a run renames it into place) is found, with no restart."""
    key, t, w = _a_word(out_dir)
    word = w["word"].strip(" ,.")
    with _client(create_app(out_dir, refresh_every=0.1)) as client:

        def found() -> bool:
            hits = client.get("/api/search", params={"q": word}).json()["hits"]
            return any(h["key"] == key for h in hits)

        def soon(want: bool) -> bool:
            deadline = time.time() + 10
            while found() != want and time.time() < deadline:
                time.sleep(0.05)
            return found() == want

        assert found()
        moved = out_dir.parent / "later.json"
        shutil.move(out_dir / f"{key}.json", moved)
        assert soon(False)
        shutil.move(moved, out_dir / f"{key}.json")  # the run writes it
        assert soon(True)
        new = out_dir / "late" / "arrival.json"
        new.parent.mkdir()
        d = dict(t, recording_id="late arrival")
        new.write_text(json.dumps(d))
        deadline = time.time() + 10
        while time.time() < deadline and not any(
            r["key"] == "late/arrival" for r in client.get("/api/recordings").json()["recordings"]
        ):
            time.sleep(0.05)
        assert client.get("/r/late/arrival").status_code == 200


def test_a_token_guards_every_request(collection):
    client = _client(create_app(collection, token="s3cret"))
    assert client.get("/").status_code == 401
    assert client.get("/api/search", params={"q": "the"}).status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert (
        client.get(
            "/api/search", params={"q": "the"}, headers={"Authorization": "Bearer s3cret"}
        ).status_code
        == 200
    )
    r = client.get("/?token=s3cret")
    assert r.status_code == 200 and "asr_token" in r.headers["set-cookie"]
    assert client.get("/api/recordings").status_code == 200  # the cookie from now on


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(out_dir):
    """The workbench on a real port (uvicorn in a thread)."""
    import uvicorn

    port = _free_port()
    app = create_app(out_dir)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}", out_dir
    srv.should_exit = True
    thread.join(10)


@pytest.fixture()
def browser():
    if not shutil.which("chromedriver") or not shutil.which("chromium"):
        pytest.skip("chromium and chromium-driver (Debian) are needed: make system-deps")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1280,900",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_in_a_browser_a_hit_plays_at_its_word_and_a_correction_persists(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    base, out = server
    key, t, w = _a_word(out)
    word = w["word"].strip(" ,.")
    wait = WebDriverWait(browser, 20)
    browser.get(base + "/")
    box = browser.find_element(By.ID, "q")
    box.send_keys(word, Keys.ENTER)
    link = wait.until(
        EC.element_to_be_clickable((By.CSS_SELECTOR, f'a.hit-link[href^="/r/{key}?"]'))
    )
    link.click()
    wait.until(
        lambda d: d.execute_script(
            "const m = document.getElementById('media'); return m && m.readyState >= 1"
        )
    )
    wait.until(
        lambda d: (
            abs(
                d.execute_script("return document.getElementById('media').currentTime") - w["start"]
            )
            < 0.3
        )
    )
    now = browser.execute_script("return document.getElementById('media').currentTime")
    assert abs(now - w["start"]) < 0.3
    # the word is highlighted; clicking another word seeks there
    spans = browser.find_elements(By.CSS_SELECTOR, "#transcript .w")
    assert len(spans) == sum(len(s["words"]) for s in t["segments"])
    target = spans[-1]
    browser.execute_script("arguments[0].scrollIntoView()", target)
    target.click()
    end = float(target.get_attribute("data-s"))
    wait.until(
        lambda d: (
            abs(d.execute_script("return document.getElementById('media').currentTime") - end) < 0.5
        )
    )
    browser.execute_script("document.getElementById('media').pause()")
    # the word being played is the one highlighted
    browser.execute_script(f"document.getElementById('media').currentTime = {w['start'] + 0.01}")
    now = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#transcript .w.now")))
    assert abs(float(now.get_attribute("data-s")) - w["start"]) < 1e-3
    # correct the first segment's first word
    seg = browser.find_element(By.CSS_SELECTOR, "#transcript .seg")
    browser.execute_script(
        "arguments[0].querySelector('button.edit').style.visibility='visible'", seg
    )
    seg.find_element(By.CSS_SELECTOR, "button.edit").click()
    text = seg.find_element(By.CSS_SELECTOR, ".text")
    browser.execute_script(
        "arguments[0].textContent = 'Quillwort ' + arguments[0].textContent", text
    )
    seg.find_element(By.CSS_SELECTOR, "button.edit").click()
    wait.until(lambda d: "revision 1" in d.find_element(By.ID, "message").text)
    browser.save_screenshot(str(tmp_path / "transcript.png"))
    browser.refresh()
    first = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#transcript .seg .w")))
    assert first.text.strip() == "Quillwort"
    assert "Quillwort" in webvtt.read(str(out / f"{key}.vtt"))[0].text
    assert browser.find_element(By.ID, "revision").text == "1"


def test_publish_writes_valid_iiif_and_ohms_with_speakers(out_dir, tmp_path):
    from iiif_prezi3 import Collection, Manifest

    from asr.outputs import Transcript, write_outputs
    from asr.workbench.publish import OHMS_NS, PublishOptions, publish

    # one transcript diarized (as `asr transcribe --diarize --speaker-names catalogue` writes it)
    key, t, _ = _a_word(out_dir)
    tr = Transcript.from_dict(t)
    names = ["Ann Interviewer", "Bo Narrator"]
    for i, s in enumerate(tr.segments):
        s.speaker = names[i % 2]
        for w in s.words:
            w.speaker = s.speaker
    tr.speakers = names[: min(2, len(tr.segments))]
    tr.metadata["speakers"] = names
    write_outputs(tr, out_dir / key, FORMATS)

    dest = tmp_path / "pub"
    opts = PublishOptions(base_url="https://archive.example.org/asr/")
    r = publish(out_dir, dest, opts)
    assert r.written == 5 and not r.skipped
    transcripts = _transcripts(out_dir)
    coll = json.loads((dest / "iiif" / "collection.json").read_text())
    Collection.model_validate(coll)
    assert coll["id"] == "https://archive.example.org/asr/iiif/collection.json"
    assert len(coll["items"]) == 5
    for item in coll["items"]:
        k = item["id"].rsplit("/", 1)[1][: -len(".json")]
        m = json.loads((dest / "iiif" / f"{k}.json").read_text())
        Manifest.model_validate(m)
        assert m["id"] == item["id"] and m["type"] == "Manifest"
        canvas = m["items"][0]
        assert canvas["type"] == "Canvas"
        assert abs(canvas["duration"] - transcripts[k]["duration"]) < 0.01
        paint = canvas["items"][0]["items"][0]
        assert paint["motivation"] == "painting" and paint["target"] == canvas["id"]
        assert paint["body"]["type"] == "Sound" and paint["body"]["id"].startswith(
            f"https://archive.example.org/asr/media/{k}."
        )
        caption = canvas["annotations"][0]["items"][0]
        assert caption["motivation"] == "supplementing" and caption["target"] == canvas["id"]
        body = caption["body"]
        assert body["format"] == "text/vtt" and body["language"] == "en"
        assert body["id"] == f"https://archive.example.org/asr/vtt/{k}.vtt"
        cues = webvtt.read(str(dest / "vtt" / f"{k}.vtt"))
        assert " ".join(c.text.replace("\n", " ") for c in cues) == transcripts[k]["text"]
        title = transcripts[k]["metadata"]["title"]
        assert m["label"] == {"en": [title]}
        assert m["requiredStatement"]["value"] == {"none": ["public domain"]}
    # OHMS: catalogue fields, media, and the WebVTT with the speakers as voice spans
    ns = {"o": OHMS_NS}
    doc = etree.parse(str(dest / "ohms" / f"{key}.xml"))
    rec = doc.find("o:record", ns)
    assert rec.findtext("o:title", namespaces=ns) == t["metadata"]["title"]
    assert rec.find("o:date", ns).get("value") == t["metadata"]["date"]
    assert rec.findtext("o:interviewer", namespaces=ns) == "Ann Interviewer"
    assert rec.findtext("o:interviewee", namespaces=ns) == "Bo Narrator"
    assert rec.findtext("o:media_url", namespaces=ns).startswith("https://archive.example.org/")
    h, m_, s = rec.findtext("o:duration", namespaces=ns).split(":")
    assert abs(int(h) * 3600 + int(m_) * 60 + int(s) - t["duration"]) <= 1
    vtt = tmp_path / "ohms.vtt"
    vtt.write_text(rec.findtext("o:vtt_transcript", namespaces=ns))
    cues = webvtt.read(str(vtt))
    assert len(cues) == len([s for s in t["segments"] if s["text"].strip()])
    assert cues[0].voice == "Ann Interviewer"
    # only reviewed transcripts, when asked
    client = _client(create_app(out_dir))
    r = client.post(
        f"/api/transcripts/{key}/review", json={"base_revision": 0, "state": "reviewed"}
    )
    assert r.status_code == 200
    shutil.rmtree(dest)
    r = publish(out_dir, dest, PublishOptions(base_url="https://x.org", min_review="reviewed"))
    assert r.written == 1 and len(r.skipped) == 4
    assert [p.stem for p in (dest / "ohms").glob("*.xml")] == [key]


def test_other_sites_cannot_change_or_read_through_this_machine(out_dir):
    """Cross-site writes (a form or fetch from a page of another site) and DNS rebinding (a
    name of another site pointing here) are refused."""
    client = _client(create_app(out_dir))
    key, t, _ = _a_word(out_dir)
    url = f"/api/transcripts/{key}/segments/{t['segments'][0]['id']}"
    body = json.dumps({"base_revision": 0, "text": "hacked"})
    plain = client.post(url, content=body, headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415
    foreign = client.post(
        url,
        content=body,
        headers={"Content-Type": "application/json", "Origin": "http://evil.example"},
    )
    assert foreign.status_code == 403
    rebound = TestClient(create_app(out_dir), base_url="http://evil.example:8080")
    assert rebound.get("/api/recordings").status_code == 400
    assert "hacked" not in (out_dir / f"{key}.json").read_text()
    same = client.post(
        url,
        content=body,
        headers={"Content-Type": "application/json", "Origin": "http://127.0.0.1:8080"},
    )
    assert same.status_code == 200


def test_an_edit_begun_before_a_rerun_rewrote_the_transcript_is_refused(out_dir):
    client = _client(create_app(out_dir))
    key, t, _ = _a_word(out_dir)
    opened = client.get(f"/api/transcripts/{key}").json()
    assert opened["revision"] == 0 and opened["version"].startswith("0.")
    path = out_dir / f"{key}.json"
    time.sleep(0.01)
    path.write_text(path.read_text())  # asr transcribe writes it again meanwhile
    seg = t["segments"][0]["id"]
    r = client.post(
        f"/api/transcripts/{key}/segments/{seg}",
        json={"base_version": opened["version"], "text": "late"},
    )
    assert r.status_code == 409
    fresh = client.get(f"/api/transcripts/{key}").json()["version"]
    r = client.post(
        f"/api/transcripts/{key}/segments/{seg}", json={"base_version": fresh, "text": "ok"}
    )
    assert r.status_code == 200 and r.json()["version"] == "1"


def test_a_corrected_transcript_stays_protected_without_its_revisions_database(collection, out_dir):
    client = _client(create_app(out_dir))
    key, t, _ = _a_word(out_dir)
    r = client.post(
        f"/api/transcripts/{key}/segments/{t['segments'][0]['id']}",
        json={"base_revision": 0, "text": "Kept by hand"},
    )
    assert r.status_code == 200
    (out_dir / "revisions.sqlite").unlink()  # lost, moved, or never copied with the folder
    for extra in ("-wal", "-shm"):
        (out_dir / f"revisions.sqlite{extra}").unlink(missing_ok=True)
    recordings = collection.parent / "manifests" / "recordings.jsonl"
    opts = TranscribeOptions(formats=("json", "rttm"), progress=False)  # all asked again
    res = transcribe([recordings], out_dir, opts)
    assert res.skipped_corrected == 1 and res.done == 4
    assert "Kept by hand" in (out_dir / f"{key}.json").read_text()


def test_stray_files_and_decomposed_accents(out_dir):
    (out_dir / "notes.json").write_text(
        json.dumps({"recording_id": "x", "segments": [], "duration": "n/a"})
    )
    (out_dir / "list.json").write_text("[1, 2, 3]")
    with _client(create_app(out_dir, refresh_every=0.05)) as client:
        key, t, _ = _a_word(out_dir)
        r = client.post(
            f"/api/transcripts/{key}/segments/{t['segments'][0]['id']}",
            json={"base_revision": 0, "text": "Noël at the crème brûlée stall"},
        )
        assert r.status_code == 200
        import unicodedata

        for q in ("crème brûlée", unicodedata.normalize("NFD", "crème brûlée"), "NOEL"):
            hits = client.get("/api/search", params={"q": q}).json()["hits"]
            assert [h["key"] for h in hits] == [key], q
        html = client.get("/search", params={"q": unicodedata.normalize("NFD", "noël")}).text
        assert "<mark>Noël</mark>" in html
        # the watcher outlives the stray files: a new transcript still arrives
        (out_dir / "new.json").write_text(json.dumps(dict(t, recording_id="new one")))
        deadline = time.time() + 10
        while time.time() < deadline and client.get("/r/new").status_code != 200:
            time.sleep(0.05)
        assert client.get("/r/new").status_code == 200
        keys = {r["key"] for r in client.get("/api/recordings").json()["recordings"]}
        assert "notes" not in keys and "list" not in keys


def test_a_correction_saved_while_a_run_transcribes_it_is_not_overwritten(
    collection, out_dir, monkeypatch
):
    """The archivist saves a recording's correction just as a rerun finishes decoding it: the
    run keeps the person's text (checked again right before it writes)."""
    from asr.engine import transcriber
    from asr.revisions import RevisionStore, edit_segment

    run = transcriber.Transcriber.run
    saved = []

    def run_and_correct(self, jobs):
        for fin in run(self, jobs):
            if not saved and fin.error is None:
                t = json.loads((out_dir / f"{fin.key}.json").read_text())
                store = RevisionStore(out_dir)
                store.save(
                    fin.key, 0, edit_segment(t["segments"][0]["id"], "Fixed by Ada"), "Ada", "x"
                )
                store.close()
                saved.append(fin.key)
            yield fin

    monkeypatch.setattr(transcriber.Transcriber, "run", run_and_correct)
    recordings = collection.parent / "manifests" / "recordings.jsonl"
    opts = TranscribeOptions(formats=("json", "vtt", "rttm"), progress=False)
    res = transcribe([recordings], out_dir, opts)
    assert saved and res.skipped_corrected == 1 and res.done == 4
    key = saved[0]
    assert json.loads((out_dir / f"{key}.json").read_text())["text"].startswith("Fixed by Ada")
    assert "Fixed by Ada" in (out_dir / f"{key}.vtt").read_text()


def test_the_review_queue_narrows_to_a_speaker(out_dir):
    from asr.outputs import Transcript, write_outputs

    key, t, _ = _a_word(out_dir)
    tr = Transcript.from_dict(t)
    for s in tr.segments:
        s.speaker = "ALICE"
    tr.speakers = ["ALICE"]
    write_outputs(tr, out_dir / key, ("json",))
    client = _client(create_app(out_dir))
    only = client.get("/api/review", params={"speaker": "ALICE", "limit": 1000}).json()
    assert only["segments"] and {s["speaker"] for s in only["segments"]} == {"ALICE"}
    assert len(only["segments"]) == len(t["segments"])
