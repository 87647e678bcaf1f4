"""`asr serve`: the archivist's workbench over a transcripts folder (Starlette, Jinja2).

Pages: the collection (filter, sort), search (also as JSON, /api/search), a transcript page
that plays the recording and follows it word by word, corrections saved as revisions, and the
review queue (least confident segments first). Only what the index lists is served: transcripts
found under OUT_DIR, and recordings named in its job database.
"""

from __future__ import annotations

import contextlib
import getpass
import hmac
import logging
import math
import threading
from dataclasses import asdict
from pathlib import Path
from urllib.parse import quote, urlencode, urlparse

from markupsafe import Markup, escape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from asr.revisions import Conflict, RevisionStore, edit_segment, rename_speaker, set_state
from asr.workbench.index import MARK, Filters, Index
from asr.workbench.media import MediaError, kind, playable

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
TOKEN_COOKIE = "asr_token"
PAGE = 200
"""Recordings per page of the collection."""


def _time(seconds: float | None) -> str:
    """h:mm:ss (or m:ss) for a time in seconds."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    s = int(seconds)
    h, m = s // 3600, s // 60 % 60
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def _snippet(text: str) -> Markup:
    """An FTS5 snippet as HTML: the text escaped, the matches in <mark>."""
    html = str(escape(text))
    return Markup(html.replace(MARK[0], "<mark>").replace(MARK[1], "</mark>"))


def words_html(segment) -> Markup:
    """A segment's words as spans (start time, confidence class c0-c9, low ones with a
    tooltip), escaped; in Python, not the template: a 3-hour page has 20,000+ words."""
    if not segment.words:
        return escape(segment.text)
    out = []
    for w in segment.words:
        p = min(max(w.probability, 0.0), 1.0)
        tip = f' title="confidence {p:.2f}"' if p < 0.5 else ""
        out.append(f'<span class="w c{min(int(p * 10), 9)}" data-s="{w.start:.3f}"{tip}>')
        out.append(f"{escape(w.word)}</span>")
    return Markup("".join(out))


def _filters(request: Request) -> Filters:
    q = request.query_params
    return Filters(
        collection=q.get("collection", ""),
        language=q.get("language", ""),
        speaker=q.get("speaker", ""),
        date_from=q.get("from", ""),
        date_to=q.get("to", ""),
        status=q.get("status", ""),
        review=q.get("review", ""),
    )


def _int(value: str | None, default: int, lo: int, hi: int) -> int:
    try:
        return min(max(int(value), lo), hi) if value is not None else default
    except ValueError as e:
        raise HTTPException(400, f"not a number: {value!r}") from e


class TokenMiddleware(BaseHTTPMiddleware):
    """Every request needs the token (header `Authorization: Bearer T`, cookie, or `?token=T`
    once, which sets the cookie): for a workbench reachable beyond this machine."""

    def __init__(self, app, token: str):
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next):
        given = request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return PlainTextResponse("a token is needed: open the URL `asr serve` printed", 401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
        return response


class SameOriginMiddleware(BaseHTTPMiddleware):
    """A change (POST) sent by a page of another site is refused: the browser names that
    site in Origin."""

    async def dispatch(self, request: Request, call_next):
        origin = request.headers.get("origin")
        change = request.method not in ("GET", "HEAD", "OPTIONS")
        if change and origin is not None and urlparse(origin).netloc != request.headers.get("host"):
            return PlainTextResponse("cross-site request refused", 403)
        return await call_next(request)


LOOPBACK = ["127.0.0.1", "localhost", "::1", "[::1]"]


def create_app(
    out_dir: str | Path,
    token: str | None = None,
    refresh_every: float = 2.0,
    hosts: list[str] | None = None,
) -> Starlette:
    """The workbench application over OUT_DIR (token: required on every request when given;
    the index follows the folder every `refresh_every` seconds). Requests must name one of
    `hosts` (default: this machine's loopback names, or any host with a token), so that a page
    elsewhere cannot reach it through a DNS name that points here (DNS rebinding)."""
    out_dir = Path(out_dir).resolve()
    if not out_dir.is_dir():
        raise FileNotFoundError(f"{out_dir}: no such transcripts folder")
    index = Index(out_dir)
    index.refresh(force=True)
    stop_watching = index.watch(refresh_every)
    store = RevisionStore(out_dir)
    edit_lock = threading.Lock()  # one correction at a time: revisions and files in step
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(time=_time, snippet=_snippet, quote=quote, words_html=words_html)
    default_author = getpass.getuser()

    def page(request: Request, name: str, **context):
        return templates.TemplateResponse(request, name, context)

    def known(key: str) -> dict:
        rec = index.recording(key)
        if rec is None:
            raise HTTPException(404, f"no transcript {key!r} in this folder")
        return rec

    async def collection(request: Request):
        q = request.query_params
        sort, desc = q.get("sort", "title"), q.get("desc") == "1"
        first = _int(q.get("offset"), 0, 0, 10**9)
        f = _filters(request)
        rows = index.recordings(f, sort, desc, PAGE, first)
        total, seconds = index.totals(f)
        keep = {k: v for k, v in q.items() if k != "offset"}
        return page(
            request,
            "collection.html",
            rows=rows,
            facets=index.facets(),
            f=f,
            sort=sort,
            desc=desc,
            total=total,
            total_hours=seconds / 3600,
            first=first,
            prev=urlencode({**keep, "offset": max(first - PAGE, 0)}) if first else None,
            next=urlencode({**keep, "offset": first + PAGE}) if first + PAGE < total else None,
        )

    def _search(request: Request) -> tuple[str, list[dict]]:
        q = request.query_params.get("q", "").strip()
        limit = _int(request.query_params.get("limit"), 50, 1, 500)
        offset = _int(request.query_params.get("offset"), 0, 0, 10**9)
        hits = index.search(q, _filters(request), limit, offset) if q else []
        for h in hits:
            h["url"] = f"/r/{quote(h['key'])}?t={h['start']:.2f}"
        return q, hits

    async def search_page(request: Request):
        q, hits = _search(request)
        return page(
            request, "search.html", q=q, hits=hits, facets=index.facets(), f=_filters(request)
        )

    async def search_api(request: Request):
        _, hits = _search(request)
        keys = ("recording_id", "key", "title", "start", "end", "text", "speaker", "segment", "url")
        return JSONResponse({"hits": [{k: h[k] for k in keys} for h in hits]})

    async def recordings_api(request: Request):
        q = request.query_params
        limit = _int(q.get("limit"), -1, -1, 10**9)
        offset = _int(q.get("offset"), 0, 0, 10**9)
        rows = index.recordings(
            _filters(request), q.get("sort", "title"), q.get("desc") == "1", limit, offset
        )
        return JSONResponse({"recordings": rows})

    async def latest(key: str):
        """The newest revision, its transcript and version (404: no transcript file)."""
        try:
            revision, t = await run_in_threadpool(store.latest, key)
            return revision, t, store.version(key, revision)
        except FileNotFoundError as e:
            raise HTTPException(404, f"{key}: no transcript file (yet)") from e

    async def transcript_page(request: Request):
        key = request.path_params["key"]
        rec = known(key)
        if rec["words"] is None:  # not transcribed (yet), failed, or its JSON is gone
            return page(request, "missing.html", rec=rec)
        revision, t, version = await latest(key)
        audio = index.audio_path(key)
        return page(
            request,
            "transcript.html",
            rec=rec,
            t=t,
            revision=revision,
            version=version,
            key=key,
            media_kind=kind(audio) if audio else None,
            start=request.query_params.get("t", "0"),
            history=store.history(key),
        )

    async def transcript_api(request: Request):
        key = request.path_params["key"]
        known(key)
        revision, t, version = await latest(key)
        return JSONResponse({"revision": revision, "version": version, "transcript": t.to_dict()})

    async def media(request: Request):
        key = request.path_params["key"]
        known(key)
        audio = index.audio_path(key)
        if audio is None:
            raise HTTPException(404, f"{key}: no recording in the job database")
        try:  # a first transcoding takes a while: off the event loop
            path, mime = await run_in_threadpool(playable, audio, out_dir / ".workbench" / "media")
        except MediaError as e:
            raise HTTPException(404, str(e)) from e
        return FileResponse(path, media_type=mime)  # answers Range requests (seeking)

    async def _edit(request: Request, make_edit, what: str):
        key = request.path_params["key"]
        known(key)
        # a JSON body only: a page elsewhere cannot send one here without a CORS preflight,
        # which this server never grants
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "expected Content-Type: application/json"}, 415)
        try:
            body = await request.json()
            base = body["base_version"] if "base_version" in body else int(body["base_revision"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "expected JSON with base_version"}, 400)
        author = " ".join(str(body.get("author") or default_author).split())[:80]

        def save():
            with edit_lock:
                revision, t = store.save(key, base, make_edit(body), author, what.format(**body))
            index.update(key)
            return revision, t

        try:
            revision, t = await run_in_threadpool(save)
        except Conflict as e:
            return JSONResponse({"error": str(e)}, status_code=409)
        except (KeyError, ValueError, TypeError) as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        version = store.version(key, revision)
        return JSONResponse({"revision": revision, "version": version, "transcript": t.to_dict()})

    async def edit_text(request: Request):
        seg = int(request.path_params["seg"])
        return await _edit(
            request, lambda b: edit_segment(seg, str(b["text"])), f"segment {seg} corrected"
        )

    async def edit_speaker(request: Request):
        return await _edit(
            request,
            lambda b: rename_speaker(str(b["old"]), str(b["new"])),
            "speaker {old} named {new}",
        )

    async def edit_review(request: Request):
        return await _edit(request, lambda b: set_state(str(b["state"])), "marked {state}")

    async def revision_api(request: Request):
        key = request.path_params["key"]
        known(key)
        n = int(request.path_params["n"])
        try:
            t = store.transcript(key, n)
        except KeyError as e:
            raise HTTPException(404, str(e)) from e
        return JSONResponse({"revision": n, "transcript": t.to_dict()})

    async def history_api(request: Request):
        key = request.path_params["key"]
        known(key)
        return JSONResponse({"revisions": [asdict(r) for r in store.history(key)]})

    async def review_page(request: Request):
        limit = _int(request.query_params.get("limit"), 100, 1, 1000)
        rows = index.review_queue(_filters(request), limit)
        return page(request, "review.html", rows=rows, facets=index.facets(), f=_filters(request))

    async def review_api(request: Request):
        limit = _int(request.query_params.get("limit"), 100, 1, 1000)
        return JSONResponse({"segments": index.review_queue(_filters(request), limit)})

    async def root_redirect(request: Request):
        return RedirectResponse("/")

    routes = [
        Route("/", collection),
        Route("/index.html", root_redirect),
        Route("/search", search_page),
        Route("/review", review_page),
        Route("/r/{key:path}", transcript_page),
        Route("/media/{key:path}", media),
        Route("/api/search", search_api),
        Route("/api/recordings", recordings_api),
        Route("/api/review", review_api),
        Route("/api/transcripts/{key:path}/segments/{seg:int}", edit_text, methods=["POST"]),
        Route("/api/transcripts/{key:path}/speakers", edit_speaker, methods=["POST"]),
        Route("/api/transcripts/{key:path}/review", edit_review, methods=["POST"]),
        Route("/api/transcripts/{key:path}/revisions/{n:int}", revision_api),
        Route("/api/transcripts/{key:path}/revisions", history_api),
        Route("/api/transcripts/{key:path}", transcript_api),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(TrustedHostMiddleware, allowed_hosts=hosts or (["*"] if token else LOOPBACK)),
        Middleware(SameOriginMiddleware),
    ]
    if token:
        middleware.append(Middleware(TokenMiddleware, token=token))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        stop_watching.set()

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.index = index
    app.state.store = store
    return app


def serve(out_dir: str | Path, host: str = "127.0.0.1", port: int = 8080, token=None) -> None:
    """Run the workbench until interrupted (uvicorn)."""
    import uvicorn

    app = create_app(out_dir, token, hosts=None if host in LOOPBACK else ["*"])
    shown = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
    log.info("serving %s at %s (Ctrl-C stops)", out_dir, shown)
    uvicorn.run(app, host=host, port=port, log_level="warning")
