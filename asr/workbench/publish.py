"""`asr publish`: a transcripts folder as IIIF Presentation 3 and OHMS, for public players.

IIIF (Universal Viewer, Clover, Ramp, Aviary play it): a Manifest per recording, with one Canvas
of the recording's duration, the audio or video as its painting annotation and the WebVTT
transcript as a supplementing annotation (IIIF cookbook recipe 0219), and a Collection listing
them. OHMS (the Nunn Center's Oral History Metadata Synchronizer, which Omeka's OhmsEmbed and
Aviary read): an XML record per recording with the new-style `vtt_transcript`. The media are
not copied: they are expected at MEDIA_URL/KEY.EXT (KEY: the transcript's path in OUT_DIR).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from asr.manifest import atomic_output
from asr.outputs import EXTENSIONS, Transcript, write_vtt
from asr.revisions import STATES
from asr.workbench.index import read_jobs, transcript_files
from asr.workbench.media import MIME, PLAYABLE_VIDEO

log = logging.getLogger(__name__)

IIIF_CONTEXT = "http://iiif.io/api/presentation/3/context.json"
OHMS_NS = "https://www.weareavp.com/nunncenter/ohms"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
RIGHTS_URI = re.compile(r"^https?://(creativecommons\.org|rightsstatements\.org)/")
"""IIIF's `rights` takes only these URIs; any other rights text goes to requiredStatement."""
TARGETS = ("iiif", "ohms")


@dataclass
class PublishOptions:
    """What `asr publish` writes and where the published files will be found."""

    to: tuple[str, ...] = field(
        default=TARGETS,
        metadata={"sep": ",", "metavar": "T,T", "help": "what to write: iiif, ohms or both"},
    )
    base_url: str = ""
    """The URL at which the published folder will be served (required; --base-url)."""
    media_url: str = field(
        default="",
        metadata={
            "help": "the URL under which the recordings are served as KEY.EXT (default: "
            "BASE_URL/media)"
        },
    )
    min_review: str = field(
        default="machine",
        metadata={"choices": STATES, "help": "publish only transcripts reviewed this far"},
    )
    label: str = field(
        default="", metadata={"help": "the IIIF collection's label (default: OUT_DIR's name)"}
    )


@dataclass
class PublishResult:
    written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(key, why) of transcripts left out."""


def _lang_map(text: str, language: str | None) -> dict[str, list[str]]:
    return {language or "none": [text]}


def _pair(label: str, value: str) -> dict:
    return {"label": {"en": [label]}, "value": {"none": [value]}}


def _url(base: str, *parts: str) -> str:
    return base.rstrip("/") + "/" + "/".join(quote(p) for p in parts)


def _transcripts(out_dir: Path):
    """(key, Transcript) for every transcript JSON under OUT_DIR, in key order."""
    ext = EXTENSIONS["json"]
    for key in sorted(transcript_files(out_dir)):
        path = out_dir / (key + ext)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            yield key, Transcript.from_dict(d)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.debug("%s: not a transcript (%s)", path, e)


def manifest(t: Transcript, key: str, media: str, opts: PublishOptions) -> dict:
    """The IIIF Presentation 3 Manifest of one transcript."""
    base = opts.base_url
    mid = _url(base, "iiif", f"{key}.json")
    canvas = _url(base, "iiif", key, "canvas", "1")
    ext = Path(media).suffix.lower()
    video = ext in PLAYABLE_VIDEO
    meta = t.metadata or {}
    title = str(meta.get("title") or t.recording_id)
    metadata = [_pair("Recording", t.recording_id)]
    for name in ("date", "collection"):
        if meta.get(name):
            metadata.append(_pair(name.capitalize(), str(meta[name])))
    if t.language:
        metadata.append(_pair("Language", t.language))
    if t.speakers:
        metadata.append(_pair("Speakers", "; ".join(t.speakers)))
    state = t.review.get("state", "machine")
    metadata.append(_pair("Transcript", f"automatic ({state})"))
    m = {
        "@context": IIIF_CONTEXT,
        "id": mid,
        "type": "Manifest",
        "label": _lang_map(title, t.language),
        "metadata": metadata,
        "items": [
            {
                "id": canvas,
                "type": "Canvas",
                "duration": round(max(t.duration, 0.001), 3),
                "items": [
                    {
                        "id": canvas + "/page",
                        "type": "AnnotationPage",
                        "items": [
                            {
                                "id": canvas + "/page/media",
                                "type": "Annotation",
                                "motivation": "painting",
                                "body": {
                                    "id": _url(opts.media_url or _url(base, "media"), key + ext),
                                    "type": "Video" if video else "Sound",
                                    "format": media_type(media),
                                    "duration": round(max(t.duration, 0.001), 3),
                                },
                                "target": canvas,
                            }
                        ],
                    }
                ],
                "annotations": [
                    {
                        "id": canvas + "/captions",
                        "type": "AnnotationPage",
                        "items": [
                            {
                                "id": canvas + "/captions/vtt",
                                "type": "Annotation",
                                "motivation": "supplementing",
                                "body": {
                                    "id": _url(base, "vtt", f"{key}.vtt"),
                                    "type": "Text",
                                    "format": "text/vtt",
                                    "label": {"en": ["Transcript"]},
                                    **({"language": t.language} if t.language else {}),
                                },
                                "target": canvas,
                            }
                        ],
                    }
                ],
            }
        ],
    }
    rights = str(meta.get("rights") or "")
    if RIGHTS_URI.match(rights):
        m["rights"] = rights
    elif rights:
        m["requiredStatement"] = _pair("Rights", rights)
    return m


def ohms_record(t: Transcript, key: str, media: str, vtt: str, opts: PublishOptions) -> str:
    """The OHMS XML of one transcript: the catalogue's fields, the media, the WebVTT."""
    meta = t.metadata or {}
    ET.register_namespace("", OHMS_NS)
    ET.register_namespace("xsi", XSI_NS)
    root = ET.Element(f"{{{OHMS_NS}}}ROOT")
    root.set(f"{{{XSI_NS}}}schemaLocation", f"{OHMS_NS}/ohms.xsd")
    date = str(meta.get("date") or "")
    record = ET.SubElement(root, f"{{{OHMS_NS}}}record", id=t.recording_id, dt=date)

    def sub(tag: str, text: str = "", **attrib) -> ET.Element:
        el = ET.SubElement(record, f"{{{OHMS_NS}}}{tag}", attrib)
        if text:
            el.text = text
        return el

    sub("version", "6.0")
    iso = re.fullmatch(r"\d{4}-\d{2}-\d{2}", date)
    sub("date", value=date if iso else "", format="yyyy-mm-dd")
    sub("date_nonpreferred_format", "" if iso else date)
    sub("cms_record_id", t.recording_id)
    sub("title", str(meta.get("title") or t.recording_id))
    s = int(round(t.duration))
    sub("duration", f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}")
    sub("collection_name", str(meta.get("collection") or ""))
    # interviewee(s) and interviewer(s): the catalogue's columns of those names when it has
    # them; else its speakers, the first taken as the interviewer (who opens an interview)
    people = [p for p in (meta.get("speakers") or t.speakers) if p]
    interviewer = meta.get("interviewer") or (people[0] if people else "")
    interviewees = meta.get("interviewee") or "; ".join(people[1:])
    for name in _names(interviewees):
        sub("interviewee", name)
    for name in _names(interviewer):
        sub("interviewer", name)
    sub("format", media_type(media))
    sub("file_name", Path(media).name)
    sub("transcript_alt_lang", "")
    sub(
        "media_url",
        _url(opts.media_url or _url(opts.base_url, "media"), key + Path(media).suffix.lower()),
    )
    mediafile = sub("mediafile")
    ET.SubElement(mediafile, f"{{{OHMS_NS}}}host").text = "Other"
    video = Path(media).suffix.lower() in PLAYABLE_VIDEO
    ET.SubElement(mediafile, f"{{{OHMS_NS}}}clip_format").text = "video" if video else "audio"
    sub("rights", str(meta.get("rights") or ""))
    sub("type", "interview")
    sub("language", t.language or "")
    sub("vtt_transcript", vtt)
    sub("index")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def media_type(path: str) -> str:
    """The MIME type of the recording as published (its own file, whatever its format)."""
    ext = Path(path).suffix.lower()
    return MIME.get(ext) or mimetypes.guess_type("x" + ext)[0] or "application/octet-stream"


def _names(value) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value if v]
    return [v.strip() for v in str(value or "").split(";") if v.strip()]


def publish(out_dir: str | Path, dest: str | Path, opts: PublishOptions) -> PublishResult:
    """Write DEST/iiif (a Manifest per transcript, collection.json), DEST/vtt (the WebVTT the
    manifests point to) and DEST/ohms (an XML per transcript), from OUT_DIR's latest
    (corrected) transcripts."""
    if not opts.base_url:
        raise ValueError("--base-url is required: the URL at which the published files are served")
    unknown = [t for t in opts.to if t not in TARGETS]
    if unknown:
        raise ValueError(f"unknown --to {', '.join(unknown)} (expected iiif, ohms)")
    out_dir, dest = Path(out_dir).resolve(), Path(dest)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"{out_dir}: no such transcripts folder")
    jobs = {k: p for k, (status, _, p) in read_jobs(out_dir).items() if status == "done"}
    result = PublishResult()
    items = []
    floor = STATES.index(opts.min_review)
    for key, t in _transcripts(out_dir):
        media = jobs.get(key)
        if media is None:
            result.skipped.append((key, "not a finished job of this folder's job database"))
            continue
        if STATES.index(t.review.get("state", "machine")) < floor:
            result.skipped.append((key, f"review state {t.review.get('state', 'machine')}"))
            continue
        vtt_path = dest / "vtt" / f"{key}.vtt"
        vtt_path.parent.mkdir(parents=True, exist_ok=True)
        write_vtt(t, vtt_path)
        if "iiif" in opts.to:
            m = manifest(t, key, media, opts)
            path = dest / "iiif" / f"{key}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(path) as f:
                json.dump(m, f, ensure_ascii=False, indent=2)
            items.append({"id": m["id"], "type": "Manifest", "label": m["label"]})
        if "ohms" in opts.to:
            path = dest / "ohms" / f"{key}.xml"
            path.parent.mkdir(parents=True, exist_ok=True)
            xml = ohms_record(t, key, media, vtt_path.read_text(encoding="utf-8"), opts)
            with atomic_output(path) as f:
                f.write(xml)
        result.written += 1
    if "iiif" in opts.to:
        collection = {
            "@context": IIIF_CONTEXT,
            "id": _url(opts.base_url, "iiif", "collection.json"),
            "type": "Collection",
            "label": {"none": [opts.label or out_dir.name]},
            "items": items,
        }
        (dest / "iiif").mkdir(parents=True, exist_ok=True)
        with atomic_output(dest / "iiif" / "collection.json") as f:
            json.dump(collection, f, ensure_ascii=False, indent=2)
    return result
