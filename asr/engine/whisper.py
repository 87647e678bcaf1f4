"""Whisper on CTranslate2, fed windows that may pack several short chunks each.

Whisper was trained on 30 s windows, so a 4 s clip costs as much encoder time as 30 s of
speech. Windows here hold one long chunk or several short consecutive ones of one recording
(1 s apart); the decoded words are split back to their chunks by time. A window
with little audio (up to 14 s) is encoded in a shortened 15 s context (as accurate, measured,
and half the encoder's cost), any other in Whisper's own 30 s. Windows are batched, decoded
with beam search, and decoded again when the result looks like a hallucination (compression
ratio, log probability, a repeating loop): first in the full 30 s context, then by beam search
with a repetition penalty (reproducible; or sampled at higher temperatures, as Whisper does,
with fallback "sample"). Word timestamps come from ctranslate2's cross-attention
alignment.

faster-whisper's parts do what they do well here: loading, the mel front end, the tokenizer
and word alignment (their signatures change between minor versions: version pinned). What
faster-whisper lacks is what this module adds: batches of packed windows of many recordings at
once, shortened encoder contexts, and fallback per window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer

from asr.audio import SAMPLE_RATE
from asr.engine.types import (
    WINDOW_S,
    DecodeOptions,
    PartResult,
    Window,
    compression_ratio,
    segments_from_words,
)
from asr.textnorm import match_key

log = logging.getLogger(__name__)

ALIGN_BATCH = 2
ENCODE_BATCH = 1
LANGUAGE_SWITCH = 0.7
"""A window whose language was not given is decoded in another language than its recording's
when the model gives that language at least this probability on the window itself."""

MAX_TOKENS_PER_S = 15

NO_REPEAT_LAST = 3
"""The penalty fallback's last step forbids any 3-gram twice."""


def max_tokens(windows: list[Window], limit: int) -> int:
    """ctranslate2's max_length for a batch: 15 tokens a second of audio (speech has fewer
    than 10, even in scripts of several tokens a character), so that a decoding loop in a short
    window stops early instead of holding its whole batch for Whisper's 224 tokens.
    ctranslate2 4.x stops Whisper at half of max_length (measured), hence the factor 2."""
    longest = max(w.length for w in windows)
    return int(min(limit, 2 * (8 + np.ceil(longest * MAX_TOKENS_PER_S))))


def has_loop(tokens: list[int], n: int = 3, max_repeats: int = 4, phrase: int = 12) -> bool:
    """True when some n-gram of tokens repeats back to back max_repeats times (a decoding loop),
    a single token twice that, or a phrase of more than n (up to `phrase`) tokens three times
    in a row: "Aren't they suing you? Aren't they suing you? Aren't they suing you?" (tiny.en
    on an AMI meeting's overlapped speech)."""
    for size in range(1, phrase + 1):
        need = 2 * max_repeats if size == 1 else max_repeats if size <= n else 3
        for start in range(size):
            run, prev = 1, None
            for i in range(start, len(tokens) - size + 1, size):
                gram = tuple(tokens[i : i + size])
                run = run + 1 if gram == prev else 1
                if run >= need:
                    return True
                prev = gram
    return False


@dataclass
class Step:
    """One way of decoding a window: a temperature, ctranslate2 generate() arguments, and
    whether it is tried only for a window that still loops (not for one merely improbable)."""

    temperature: float
    kwargs: dict
    loops_only: bool = False


CRAMMED_S_PER_WORD = 0.05
"""A phrase aligned to less time than this per word was not heard there (speech takes at least
0.15 s a word)."""


def drop_crammed_repeats(words: list[dict], shortest: int = 4) -> list[dict]:
    """Words without a phrase of `shortest` or more words written twice in a row of which one
    copy is crammed into almost no time: the alignment found no audio for it, so the model
    wrote it from its own text. tiny.en on an AMI meeting: "I think it should be a break for
    ads." at 10-15 s, then the same eight words all at 15.0-15.2 s. A phrase really said twice
    is aligned to time twice and stays."""
    # most windows have nothing crammed: done in one pass. A crammed copy of n >= shortest words
    # holds n // shortest runs of `shortest` words in under CRAMMED_S_PER_WORD * n seconds in
    # all, so one of them takes under CRAMMED_S_PER_WORD * (2 * shortest - 1) (n / (n //
    # shortest) is largest at n = 2 * shortest - 1)
    short = CRAMMED_S_PER_WORD * (2 * shortest - 1)
    if not any(b["end"] - a["start"] < short for a, b in zip(words, words[shortest - 1 :])):
        return words
    keys = [match_key(w["word"]) for w in words]
    n = shortest
    while n <= len(words) // 2:
        for i in range(len(words) - 2 * n + 1):
            if keys[i : i + n] != keys[i + n : i + 2 * n] or not all(keys[i : i + n]):
                continue
            spans = [words[j + n - 1]["end"] - words[j]["start"] for j in (i, i + n)]
            crammed = [k for k in (0, 1) if spans[k] < CRAMMED_S_PER_WORD * n]
            if crammed:
                j = i + n * min(crammed, key=lambda k: spans[k])
                return drop_crammed_repeats(words[:j] + words[j + n :], shortest)
        n += 1
    return words


def fallback_steps(opts: DecodeOptions, first_only: bool = False) -> list[Step]:
    """The settings a window is decoded with, in turn, while its result looks wrong.
    first_only: the first alone."""

    def step(t: float, penalty: float, ngram: int = 0, loops_only: bool = False) -> Step:
        ngram = max(ngram, opts.no_repeat_ngram_size)
        kw = dict(repetition_penalty=penalty, no_repeat_ngram_size=ngram)
        if t == 0:
            return Step(t, dict(kw, beam_size=opts.beam_size, patience=1.0), loops_only)
        return Step(t, dict(kw, sampling_topk=0, sampling_temperature=t, beam_size=1), loops_only)

    first, *rest = opts.temperatures
    steps = [step(first, opts.repetition_penalty)]
    if first_only or not rest:
        return steps
    if opts.fallback == "sample":
        return steps + [step(t, opts.repetition_penalty) for t in rest]
    penalty = max(opts.fallback_penalty, opts.repetition_penalty)
    # last, if the penalty alone still loops: no 3-gram twice (a loop cannot start). Base on a
    # Mongolian clip loops ('―' 70 times) in both steps before it when the chunk has 0.5 s of
    # padding; this step writes the words. A window that is only improbable does not get it
    return steps + [
        step(0.0, penalty),
        step(0.0, penalty, ngram=NO_REPEAT_LAST, loops_only=True),
    ]


class WhisperEngine:
    """A loaded CTranslate2 Whisper model that transcribes batches of windows."""

    packs = True  # windows may hold several chunks: words are split back to them by time

    def __init__(
        self,
        model_path: str,
        device: str = "cpu",
        device_index: int | list[int] = 0,
        compute_type: str = "default",
        cpu_threads: int = 0,
        num_workers: int = 1,
    ):
        self.fw = WhisperModel(
            model_path,
            device=device,
            device_index=device_index,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=num_workers,
        )
        self.model = self.fw.model
        self.multilingual = self.model.is_multilingual
        self._tokenizers: dict[str, Tokenizer] = {}
        self.full_context_retries = 0

    def tokenizer(self, language: str | None, task: str = "transcribe") -> Tokenizer:
        key = f"{language}:{task}"
        if key not in self._tokenizers:
            self._tokenizers[key] = Tokenizer(
                self.fw.hf_tokenizer,
                self.multilingual,
                task=task if self.multilingual else None,
                language=(language or "en") if self.multilingual else None,
            )
        return self._tokenizers[key]

    def features(self, audio: np.ndarray, context: float = WINDOW_S) -> np.ndarray:
        """Log-mel features of `context` seconds (the audio zero-padded): the same frames as
        the first ones of a padded 30 s window (to 1e-7), at a third of the cost for 15 s."""
        frames = min(self.fw.feature_extractor.nb_max_frames, 2 * round(context * 50))
        padded = np.zeros(frames * self.fw.feature_extractor.hop_length, np.float32)
        padded[: min(audio.size, padded.size)] = audio[: padded.size]
        return self.fw.feature_extractor(padded)[:, :frames]

    @staticmethod
    def context(window: Window, opts: DecodeOptions) -> float:
        """The encoder context for a window: its audio plus 1 s, rounded up to a step, at least
        min_context, at most 30 s."""
        if opts.min_context >= WINDOW_S or opts.context_step <= 0:
            return WINDOW_S
        steps = np.ceil((window.length + 1.0) / opts.context_step)
        return float(min(WINDOW_S, max(opts.min_context, steps * opts.context_step)))

    def detect_language(self, audio: np.ndarray | list[np.ndarray]) -> tuple[str, float]:
        """The most likely language of up to 30 s of audio and its probability.

        Given several pieces (speech from several places of a recording), each gets an equal
        share of the 30 s window, so no one piece (a short station ident) decides alone."""
        if not self.multilingual:
            return "en", 1.0
        if isinstance(audio, list):
            pieces = [p for p in audio if p.size] or [np.zeros(0, np.float32)]
            share = int(WINDOW_S * SAMPLE_RATE) // len(pieces)
            audio = np.concatenate([p[:share] for p in pieces])
        enc = self.fw.encode(self.features(audio)[None])
        lang, prob = self.model.detect_language(enc)[0][0]
        return lang[2:-2], float(prob)

    def _switch_languages(self, windows: list[Window], feats: np.ndarray, encoder_output) -> None:
        """Windows whose language was detected take the language the model hears in them, when
        it is confident (LANGUAGE_SWITCH): one decoder step on the encoder output they have."""
        idx = [i for i, w in enumerate(windows) if w.detect]
        if not idx or not self.multilingual:
            return
        found = self.model.detect_language(self._select(feats, encoder_output, idx))
        for i, langs in zip(idx, found):
            lang, prob = langs[0]
            if prob >= LANGUAGE_SWITCH and lang[2:-2] in self.fw.supported_languages:
                windows[i].language = lang[2:-2]

    def batch_key(self, window: Window, opts: DecodeOptions) -> float:
        """Windows with the same key decode in one model call: their encoder context."""
        return self.context(window, opts)

    def transcribe(self, windows: list[Window], opts: DecodeOptions) -> list[list[PartResult]]:
        """Decode a batch of windows (one language each); return each window's part results.

        Windows go by encoder context (one length per model call). A window whose greedy result
        in a shortened context looks wrong (a loop, a low log-probability) is decoded again in
        Whisper's own 30 s context before any temperature fallback: very short chunks in a
        shortened context can send tiny models into loops that sampling does not cure."""
        groups: dict[float, list[int]] = {}
        for i, w in enumerate(windows):
            groups.setdefault(self.context(w, opts), []).append(i)
        results: list[list[PartResult] | None] = [None] * len(windows)
        again: list[int] = []
        for context, idx in sorted(groups.items()):
            done = self._transcribe([windows[i] for i in idx], context, opts)
            for i, r in zip(idx, done):
                results[i] = r
                if r is None:
                    again.append(i)
        if again:
            self.full_context_retries += len(again)
            done = self._transcribe([windows[i] for i in again], WINDOW_S, opts)
            for i, r in zip(again, done):
                results[i] = r
        return results  # type: ignore[return-value]

    def _transcribe(
        self, windows: list[Window], context: float, opts: DecodeOptions
    ) -> list[list[PartResult] | None]:
        """Decode windows that share an encoder context; None for a window to decode again in
        30 s (only when context is shorter)."""
        feats = np.stack([self.features(w.samples(), context) for w in windows])
        encoder_output = self._encode(feats)
        self._switch_languages(windows, feats, encoder_output)
        shortened = context < WINDOW_S
        outputs = self._generate_with_fallback(
            feats, encoder_output, windows, opts, fallback_steps(opts, shortened)
        )
        # a window that looks wrong in a shortened context goes again in 30 s (None)
        redo = [shortened and out["bad"] for out in outputs]
        segment_lists = []
        for w, out, again in zip(windows, outputs, redo):
            if again:
                segment_lists.append([])
                continue
            tok = self.tokenizer(w.language, opts.task)
            # decoded without timestamp tokens: one segment over the whole window, which the
            # word alignment times and _split_to_parts cuts back into the window's chunks
            text_tokens = [t for t in out["tokens"] if t < tok.eot]
            one = dict(
                text=tok.decode(text_tokens),
                tokens=text_tokens,
                start=0.0,
                end=min(WINDOW_S, w.length),
                seek=0,
            )
            segment_lists.append([] if out["silent"] or not text_tokens else [one])
        if opts.word_timestamps:
            self._add_words(feats, windows, segment_lists, encoder_output, context, opts)
        return [
            None if again else self._split_to_parts(w, out, segs, opts)
            for w, out, segs, again in zip(windows, outputs, segment_lists, redo)
        ]

    def _generate_with_fallback(
        self,
        feats: np.ndarray,
        encoder_output,
        windows: list[Window],
        opts: DecodeOptions,
        steps: list[Step],
    ) -> list[dict]:
        """Generate for all windows; windows whose output looks wrong go again with the next
        step's settings (see fallback_steps). Each output says whether it still looks wrong
        ("bad")."""
        n = len(windows)
        best: list[dict | None] = [None] * n
        tried: list[list[dict]] = [[] for _ in range(n)]
        todo = list(range(n))
        for t_index, step in enumerate(steps):
            if not todo:
                break
            # every window decodes without timestamp tokens: segments come from the words, and
            # a packed window's words go back to its parts by their times (_split_to_parts).
            # Timestamp tokens cost decoder steps, and Whisper leaves a segment it takes to be
            # cut off unwritten at a window's end, which a packed window's last part always
            # is (words lost). Measured (benchmarks/hard_audio.py, tiny.en; base for longform):
            # WER pauses 2.0 -> 1.4%, longform 9.5 -> 9.0%, continuous 7.9 -> 8.3%; RTFx
            # longform 12.3 -> 13.3
            prompts = [
                self.fw.get_prompt(
                    self.tokenizer(windows[i].language, opts.task), [], without_timestamps=True
                )
                for i in todo
            ]
            results = self.model.generate(
                self._select(feats, encoder_output, todo),
                prompts,
                length_penalty=opts.length_penalty,
                max_length=max_tokens([windows[i] for i in todo], self.fw.max_length),
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=[-1],
                **step.kwargs,
            )
            still = []
            for i, r in zip(todo, results):
                tokens = r.sequences_ids[0]
                tok = self.tokenizer(windows[i].language, opts.task)
                text = tok.decode([t for t in tokens if t < tok.eot])
                avg_logprob = r.scores[0] * (len(tokens) ** opts.length_penalty) / (len(tokens) + 1)
                out = dict(
                    tokens=tokens,
                    avg_logprob=avg_logprob,
                    no_speech_prob=r.no_speech_prob,
                    compression_ratio=compression_ratio(text),
                    temperature=step.temperature,
                    silent=False,
                    bad=False,
                )
                silent = (
                    r.no_speech_prob > opts.no_speech_threshold
                    and avg_logprob < opts.log_prob_threshold
                )
                looping = out["compression_ratio"] > opts.compression_ratio_threshold or has_loop(
                    [t for t in tokens if t < tok.eot]
                )
                bad = looping or avg_logprob < opts.log_prob_threshold
                out["bad"] = bad and not silent
                out["looping"] = looping
                if silent:
                    out["silent"] = True
                    best[i] = out
                    continue
                tried[i].append(out)
                nxt = steps[t_index + 1] if t_index + 1 < len(steps) else None
                if bad and nxt and (looping or not nxt.loops_only):
                    still.append(i)
                elif bad:
                    # every step failed: as Whisper and faster-whisper do, the most
                    # probable result that is not a loop, if any is (a loop is often the most
                    # probable of all: base on a Mongolian clip, '―' 70 times at -0.11)
                    sane = [o for o in tried[i] if not o["looping"]]
                    best[i] = max(sane or tried[i], key=lambda o: o["avg_logprob"])
                else:
                    best[i] = out
            todo = still
        return best  # type: ignore[return-value]

    def _add_words(
        self, feats, windows, segment_lists, encoder_output, context: float, opts: DecodeOptions
    ) -> None:
        """Word timings for every segment (faster-whisper's alignment over the batch)."""
        by_lang: dict[str, list[int]] = {}
        for i, w in enumerate(windows):
            if segment_lists[i]:
                by_lang.setdefault(w.language, []).append(i)
        # a few windows at a time: the alignment's cross-attention weights (layers x heads x
        # tokens x frames per window) are what a whole batch would hold at once
        groups = [
            (lang, idx[k : k + ALIGN_BATCH])
            for lang, idx in by_lang.items()
            for k in range(0, len(idx), ALIGN_BATCH)
        ]
        for lang, idx in groups:
            tok = self.tokenizer(lang, opts.task)
            sub = self._select(feats, encoder_output, idx)
            frames = [
                int(np.ceil(min(context, windows[i].length + 0.5)) * self.fw.frames_per_second)
                for i in idx
            ]
            self.fw.add_word_timestamps(
                [segment_lists[i] for i in idx],
                tok,
                sub,
                frames,
                opts.prepend_punctuations,
                opts.append_punctuations,
                0.0,
            )

    def _split_to_parts(
        self, w: Window, out: dict, segs: list[dict], opts: DecodeOptions
    ) -> list[PartResult]:
        """Give each part the words that fall inside it (without words: the segments)."""
        bounds = [p.offset + p.duration for p in w.parts]

        def part_of(t: float) -> int:
            # the part whose span, widened to the middle of the gaps around it, holds t
            for k in range(len(w.parts) - 1):
                if t < (bounds[k] + w.parts[k + 1].offset) / 2:
                    return k
            return len(w.parts) - 1

        per_part: list[list[dict]] = [[] for _ in w.parts]
        if opts.word_timestamps:
            words: list[list[dict]] = [[] for _ in w.parts]
            heard = drop_crammed_repeats([x for s in segs for x in s.get("words") or []])
            for x in heard:
                k = part_of((x["start"] + x["end"]) / 2)
                p = w.parts[k]
                words[k].append(
                    dict(
                        word=x["word"],
                        start=round(min(p.duration, max(0.0, x["start"] - p.offset)), 3),
                        end=round(min(p.duration, max(0.0, x["end"] - p.offset)), 3),
                        probability=round(float(x["probability"]), 4),
                    )
                )
            per_part = [segments_from_words(ws, opts.max_segment_chars) for ws in words]
        else:
            for s in segs:
                k = part_of((s["start"] + s["end"]) / 2)
                p = w.parts[k]
                per_part[k].append(
                    dict(
                        start=round(max(0.0, s["start"] - p.offset), 3),
                        end=round(min(p.duration, max(0.0, s["end"] - p.offset)), 3),
                        text=s["text"].strip(),
                        words=[],
                    )
                )
        return [
            PartResult(
                key=p.key,
                segments=[x for x in per_part[k] if x["text"]],
                avg_logprob=float(out["avg_logprob"]),
                no_speech_prob=float(out["no_speech_prob"]),
                compression_ratio=float(out["compression_ratio"]),
                temperature=float(out["temperature"]),
                language=w.language,
            )
            for k, p in enumerate(w.parts)
        ]

    def _encode(self, feats: np.ndarray):
        """The encoder over a batch; on the CPU one window at a time: self-attention holds
        batch x heads x 1500 x 1500 scores at once (0.4 GB for 8 windows of tiny), and larger
        batches are no faster there (tiny.en int8, 2 cores: 0.25 s a window alone, 0.27 in
        twos, 0.33 in eights)."""
        if self.model.device != "cpu" or len(feats) <= ENCODE_BATCH:
            return self.fw.encode(feats)
        parts = [
            np.asarray(self.fw.encode(feats[k : k + ENCODE_BATCH]))
            for k in range(0, len(feats), ENCODE_BATCH)
        ]
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.concatenate(parts)))

    def _select(self, feats: np.ndarray, encoder_output, idx: list[int]):
        """The encoder outputs of windows idx: sliced on the CPU, encoded again on a GPU."""
        if len(idx) == len(feats):
            return encoder_output
        if encoder_output.device == "cpu":
            arr = np.asarray(encoder_output)[idx]
            return ctranslate2.StorageView.from_array(np.ascontiguousarray(arr))
        return self.fw.encode(feats[idx])
