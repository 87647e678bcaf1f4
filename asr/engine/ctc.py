"""wav2vec2 (CTC) on CTranslate2: greedy CTC decoding with word timestamps from the frames.

A CTC model needs no 30 s window, no prompt and no beam search: each chunk is encoded on its
own length, the best label per 20 ms frame is taken, repeats and blanks are collapsed, and each
word's time is the span of the frames of its characters. The folder is what `asr export` (or
ctranslate2's converter with the tokenizer files copied) writes: model.bin, vocab.json (the
model's label ids), tokenizer_config.json (blank, word delimiter) and preprocessor_config.json.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import ctranslate2
import numpy as np

from asr.audio import SAMPLE_RATE
from asr.engine.types import (
    DecodeOptions,
    PartResult,
    Window,
    compression_ratio,
    segments_from_words,
)

log = logging.getLogger(__name__)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


class CtcEngine:
    """A loaded CTranslate2 wav2vec2 model that transcribes windows of one chunk each."""

    multilingual = False
    packs = False  # nothing to gain from packing: the encoder runs on each chunk's own length

    def __init__(
        self,
        model_path: str,
        device: str = "cpu",
        device_index: int | list[int] = 0,
        compute_type: str = "default",
        cpu_threads: int = 0,
        num_workers: int = 1,
    ):
        path = Path(model_path)
        vocab = _read_json(path / "vocab.json")
        if not vocab:
            raise FileNotFoundError(
                f"{path}: no vocab.json (the CTC labels); export the model with `asr export`, "
                "or convert it with --copy_files vocab.json tokenizer_config.json "
                "preprocessor_config.json"
            )
        if all(isinstance(v, dict) for v in vocab.values()):  # {language: {token: id}}
            raise ValueError(f"{path}/vocab.json: per-language vocabularies are not supported")
        tok_cfg = _read_json(path / "tokenizer_config.json")
        self.do_normalize = _read_json(path / "preprocessor_config.json").get("do_normalize", True)
        self.labels = [""] * (max(vocab.values()) + 1)
        for token, idx in vocab.items():
            self.labels[idx] = token
        self.blank = vocab.get(tok_cfg.get("pad_token") or "<pad>", 0)
        self.delimiter = tok_cfg.get("word_delimiter_token") or "|"
        specials = {tok_cfg.get(k) for k in ("unk_token", "bos_token", "eos_token", "pad_token")}
        self.skip = {i for i, t in enumerate(self.labels) if t in specials and t} | {self.blank}
        self.model = ctranslate2.models.Wav2Vec2(
            str(path),
            device=device,
            device_index=device_index,
            compute_type=compute_type,
            intra_threads=cpu_threads,
            inter_threads=num_workers,
        )

    def log_probs(self, audio: np.ndarray) -> np.ndarray:
        """Per-frame log probabilities (frames x labels) of mono 16 kHz audio."""
        x = audio.astype(np.float32)
        if self.do_normalize:
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        out = self.model.encode(ctranslate2.StorageView.from_array(x[None, None, :].copy()), True)
        logits = np.array(out)[0].astype(np.float32)
        logits -= logits.max(axis=-1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))

    def transcribe(self, windows: list[Window], opts: DecodeOptions) -> list[list[PartResult]]:
        results = []
        for w in windows:
            audio = w.samples()
            if audio.size < 400:  # shorter than the front end's receptive field
                words, avg = [], 0.0
            else:
                lp = self.log_probs(audio)
                words, avg = self.words(lp, audio.size / SAMPLE_RATE / lp.shape[0])
            segments = segments_from_words(words, max_chars=opts.max_segment_chars)
            text = " ".join(s["text"] for s in segments)
            results.append(
                [
                    PartResult(
                        key=w.parts[0].key,
                        segments=segments,
                        avg_logprob=avg,
                        no_speech_prob=0.0,
                        compression_ratio=compression_ratio(text) if text else 0.0,
                        temperature=0.0,
                    )
                ]
            )
        return results

    def words(self, lp: np.ndarray, frame_s: float) -> tuple[list[dict], float]:
        return ctc_words(lp, frame_s, self.labels, self.blank, self.delimiter, self.skip)


def ctc_words(
    lp: np.ndarray,
    frame_s: float,
    labels: list[str],
    blank: int,
    delimiter: str = "|",
    skip: set[int] | None = None,
) -> tuple[list[dict], float]:
    """Greedy CTC on log-probs (frames x labels): words with start, end (seconds) and
    probability (geometric mean over their frames), and the mean log-prob of emitted labels."""
    skip = (skip or set()) | {blank}
    best = lp.argmax(axis=-1)
    best_lp = lp[np.arange(lp.shape[0]), best]
    words: list[dict] = []
    chars: list[str] = []
    frames: list[int] = []
    scores: list[float] = []
    emitted: list[float] = []

    def close() -> None:
        if chars:
            words.append(
                dict(
                    start=round(frames[0] * frame_s, 3),
                    end=round((frames[-1] + 1) * frame_s, 3),
                    word=" " + "".join(chars),
                    probability=round(float(np.exp(np.mean(scores))), 4),
                )
            )
        chars.clear()
        frames.clear()
        scores.clear()

    prev = -1
    for t, label in enumerate(best):
        label = int(label)
        if label == prev and label != blank:  # a repeat: the same label goes on
            if chars and label not in skip and labels[label] != delimiter:
                frames.append(t)
                scores.append(float(best_lp[t]))
            continue
        prev = label
        if label in skip:
            continue
        emitted.append(float(best_lp[t]))
        if labels[label] == delimiter:
            close()
            continue
        chars.append(labels[label])
        frames.append(t)
        scores.append(float(best_lp[t]))
    close()
    return words, float(np.mean(emitted)) if emitted else 0.0
