"""CTC forced alignment: exact boundaries for text already anchored to its audio.

`asr align --ctc-model C` refines each segment that the Whisper anchoring kept: the segment's
normalised text is force-aligned (torchaudio.functional.forced_align, the Viterbi path of the
CTC model's emissions) inside a window around its anchored span, and the segment's start and
end move to the first and last aligned character the model heard (see trusted_edges). The
mean log-probability of the aligned characters is the segment's `ctc` score. C is a Hugging
Face wav2vec2 CTC model (a hub id or a local folder, e.g. RUN_DIR/final from `asr train`); it
runs on transformers (the `train` extra).

Emissions are computed in chunks of `chunk_seconds` with `context_seconds` of audio on each
side (frames of the context are dropped), so memory stays bounded whatever the window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from asr.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

EDGE_MIN_LOGPROB = -2.3  # p = 0.1
EDGE_MAX_GAP = 0.4
EDGE_MAX_SKIP = 3


@dataclass
class Alignment:
    """Where the text lies in the audio given (seconds from its start), and how well it fits."""

    start: float | None  # None: no character the model heard well enough to rest an edge on
    end: float | None
    score: float  # mean log-probability of the aligned characters
    words: list[tuple[str, float, float]]


class CtcAligner:
    """A wav2vec2 CTC model (transformers) and its character set, for forced alignment."""

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        chunk_seconds: float = 20.0,
        context_seconds: float = 2.0,
    ):
        try:
            import torch
            from transformers import AutoFeatureExtractor, AutoModelForCTC, AutoTokenizer
        except ImportError:
            raise ImportError(
                "--ctc-model needs torch, torchaudio and transformers: "
                "pip install 'archive-asr[train]'"
            ) from None
        self.torch = torch
        use = device if device != "cuda" or torch.cuda.is_available() else "cpu"
        self.device = torch.device(use)
        self.fe = AutoFeatureExtractor.from_pretrained(model)
        tok = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCTC.from_pretrained(model).to(self.device).eval()
        self.vocab = tok.get_vocab()
        self.blank = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.delimiter = self.vocab.get(getattr(tok, "word_delimiter_token", None) or "|")
        letters = [t for t in self.vocab if len(t) == 1 and t.isalpha()]
        self.upper = sum(t.isupper() for t in letters) > len(letters) / 2
        stride = int(np.prod(self.model.config.conv_stride))
        self.frame_s = stride / SAMPLE_RATE
        self.chunk, self.context = chunk_seconds, context_seconds

    def emissions(self, audio: np.ndarray) -> np.ndarray:
        """Log-probabilities (frames x labels) of mono 16 kHz audio, computed chunk by chunk."""
        torch = self.torch
        n = audio.size
        step, ctx = int(self.chunk * SAMPLE_RATE), int(self.context * SAMPLE_RATE)
        per_frame = int(round(self.frame_s * SAMPLE_RATE))
        total = max(1, n // per_frame)
        out = []
        for s in range(0, max(n, 1), step):
            lo, hi = max(0, s - ctx), min(n, s + step + ctx)
            x = self.fe(audio[lo:hi], sampling_rate=SAMPLE_RATE, return_tensors="np").input_values
            with torch.inference_mode():
                logits = self.model(torch.from_numpy(np.asarray(x, np.float32)).to(self.device))
            lp = torch.log_softmax(logits.logits[0].float(), dim=-1).cpu().numpy()
            first = (s - lo) // per_frame
            want = min(step, n - s) // per_frame
            out.append(lp[first : first + want])
        lp = np.concatenate(out) if out else np.zeros((0, len(self.vocab)), np.float32)
        if lp.shape[0] < total:  # rounding at chunk edges: repeat the last frame
            lp = np.concatenate([lp, np.repeat(lp[-1:], total - lp.shape[0], axis=0)])
        return lp[:total]

    def targets(self, words: list[str]) -> tuple[list[int], list[tuple[int, int]]]:
        """Label ids of the words (delimiter between them when the model has one) and each
        word's [first, last] index in them; characters the model lacks are left out."""
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        for w in words:
            chars = [self.vocab[c] for c in (w.upper() if self.upper else w) if c in self.vocab]
            if not chars:
                spans.append((-1, -1))
                continue
            if ids and self.delimiter is not None:
                ids.append(self.delimiter)
            spans.append((len(ids), len(ids) + len(chars) - 1))
            ids.extend(chars)
        return ids, spans

    def align(
        self, audio: np.ndarray, words: list[str], context: tuple[float, float] = (0.0, 0.0)
    ) -> Alignment | None:
        """Force-align words to audio; None when the text cannot fit (too many characters).

        context: seconds at each end of audio that only inform the model: the alignment lies
        between them, and times count from the end of the first. Frames at an abrupt edge have
        no context and can draw a weak model's characters (measured on espeak-ng speech: edges
        pulled up to 1 s into the pause without it)."""
        import torch
        import torchaudio.functional as F

        ids, spans = self.targets(words)
        if not ids:
            return None
        lp = self.emissions(audio)
        first = int(round(context[0] / self.frame_s))
        last = lp.shape[0] - int(round(context[1] / self.frame_s))
        lp = lp[first:last]
        repeats = sum(1 for a, b in zip(ids, ids[1:]) if a == b)
        if lp.shape[0] < len(ids) + repeats:
            return None
        labels, scores = F.forced_align(
            torch.from_numpy(lp)[None], torch.tensor([ids], dtype=torch.int32), blank=self.blank
        )
        tokens = F.merge_tokens(labels[0], scores[0], blank=self.blank)  # a span per label
        if len(tokens) != len(ids):
            return None
        keep = [i for i, t in enumerate(ids) if t != self.delimiter]
        score = float(np.mean([tokens[i].score for i in keep]))
        timed = []
        for w, (a, b) in zip(words, spans):
            if a >= 0:
                timed.append((w, tokens[a].start * self.frame_s, tokens[b].end * self.frame_s))
        a, b = trusted_edges(tokens, keep, self.frame_s)
        return Alignment(
            start=None if a is None else tokens[a].start * self.frame_s,
            end=None if b is None else tokens[b].end * self.frame_s,
            score=score,
            words=timed,
        )


def trusted_edges(tokens, keep: list[int], frame_s: float) -> tuple[int | None, int | None]:
    """The characters (indexes into tokens, torchaudio TokenSpans) the segment's start and end
    may rest on. Leading and trailing ones are passed over while the model hardly heard them
    (log-probability under EDGE_MIN_LOGPROB: a silent letter, placed wherever costs least) or
    they lie EDGE_MAX_GAP s from the next character in (a neighbour's sound); a side where more
    than EDGE_MAX_SKIP would be passed over has no trusted edge (None: keep the anchor there).
    Measured on espeak-ng speech with a weak model: such characters pulled edges up to 1 s into
    pauses and into unaligned speech (benchmarks/align_accuracy.py --speech espeak)."""
    max_gap = int(round(EDGE_MAX_GAP / frame_s))

    def first(idx: list[int]) -> int | None:
        for k in range(min(EDGE_MAX_SKIP + 1, len(idx))):
            a = tokens[idx[k]]
            if k + 1 == len(idx):
                return idx[k] if float(a.score) >= EDGE_MIN_LOGPROB else None
            b = tokens[idx[k + 1]]
            gap = b.start - a.end if b.start >= a.end else a.start - b.end
            if float(a.score) >= EDGE_MIN_LOGPROB and gap <= max_gap:
                return idx[k]
        return None

    return first(keep), first(keep[::-1])
