"""One recording's chunk results stitched into its Transcript, in recording time.

The engines return segments and words in each chunk's own time; here they are shifted to the
recording's, the first word of a chunk is moved to where VAD heard its speech begin, and the
recording's language becomes the one most of its speech is in when it was detected.
"""

from __future__ import annotations

from asr import __version__
from asr.engine.inputs import Job
from asr.engine.types import PartResult
from asr.models import ModelInfo
from asr.outputs import Transcript, TranscriptSegment, Word

SNAP_S = 0.2
"""A chunk's first word aligned to start at most this long after VAD heard the speech begin
starts there (benchmarks/hard_audio.py, pauses: median first-word error 0.07 -> 0.04 s)."""


def stitch(
    job: Job,
    model: ModelInfo,
    chunks: list[tuple[float, float, PartResult]],
    duration: float,
    language: str | None,
    language_probability: float | None,
    detected: bool,
    options: dict,
) -> Transcript:
    """The transcript of `job` from its chunks' (start s, lead s, result), in order.

    detected: the language was the model's guess, so each chunk's own language counts."""
    segments: list[TranscriptSegment] = []
    heard: dict[str, float] = {}  # seconds of speech in each language
    for start, onset, pr in chunks:
        lang = pr.language if detected else language
        first = True
        for s in pr.segments:
            # Whisper's alignment puts a chunk's first word at the window's edge: it starts
            # no earlier than the speech does (measured on utterances between long pauses:
            # median first-word error 0.16 s -> 0.05 s); onset is where VAD heard it begin
            for w in s["words"]:
                if w["start"] < onset < w["end"]:
                    w["start"] = onset
            # and the chunk's first word no later than that, when the alignment puts it just
            # after (SNAP_S): its speech is what VAD heard begin
            if first and s["words"] and onset < s["words"][0]["start"] <= onset + SNAP_S:
                s["words"][0]["start"] = onset
            first = False
            if s["words"]:
                s["start"] = s["words"][0]["start"]
            heard[lang] = heard.get(lang, 0.0) + s["end"] - s["start"]
            segments.append(
                TranscriptSegment(
                    id=len(segments),
                    start=round(start + s["start"], 3),
                    end=round(start + s["end"], 3),
                    text=s["text"],
                    avg_logprob=round(pr.avg_logprob, 4),
                    no_speech_prob=round(pr.no_speech_prob, 4),
                    compression_ratio=round(pr.compression_ratio, 3),
                    words=[
                        Word(
                            start=round(start + w["start"], 3),
                            end=round(start + w["end"], 3),
                            word=w["word"],
                            probability=w["probability"],
                        )
                        for w in s["words"]
                    ],
                    language=lang,
                )
            )
    probability = language_probability
    if detected and heard:  # the language most of the speech is in
        top = max(heard, key=heard.get)
        if top != language:
            language, probability = top, round(heard[top] / sum(heard.values()), 4)
    import ctranslate2
    import faster_whisper

    return Transcript(
        recording_id=job.recording_id,
        path=job.path,
        duration=round(duration, 3),
        language=language,
        language_probability=probability,
        segments=segments,
        model={"name": model.name, "path": str(model.path), "sha256": model.sha256},
        options=options,
        software={
            "archive-asr": __version__,
            "ctranslate2": ctranslate2.__version__,
            "faster-whisper": faster_whisper.__version__,
        },
        metadata=job.metadata,
    )
