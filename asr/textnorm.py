"""Reversible text normalisation for alignment: normalised words that point back to the original.

Archive transcripts are rarely verbatim: speaker labels, headings and stage directions are
added, numbers are written as digits, casing and punctuation vary. Alignment compares
normalised words (lower case, no punctuation, numbers spelled out per language with num2words),
but a segment must carry the original orthography. So every normalised word keeps the index of
the original token it came from, and every token its character span in the original text.

Removal rules (speaker labels, headings, annotations) are regular expressions in a YAML file;
the default is asr/data/align_rules.yaml.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz.distance import Levenshtein

from asr.config import load_yaml

TOKEN_RE = re.compile(r"\d+(?:[.,:]\d+)*(?:st|nd|rd|th)?|\w+(?:['’]\w+)*", re.UNICODE)
SENTENCE_END_RE = re.compile(r"[.!?…。！？]+[\"'”’)\]]*\s|\n\s*\n|\n")


@dataclass
class Token:
    """A word of the original text and its character span there."""

    text: str
    start: int
    end: int
    sentence: int


@dataclass
class NormText:
    """The original text, its tokens, and the normalised words with the token each came from."""

    original: str
    tokens: list[Token] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    word_token: list[int] = field(default_factory=list)
    removed: list[tuple[int, int]] = field(default_factory=list)

    def original_span(self, first_word: int, last_word: int) -> str:
        """The original text from the token of first_word to that of last_word, with the
        punctuation that closes it (a full stop, a closing quote)."""
        a = self.tokens[self.word_token[first_word]]
        b = self.tokens[self.word_token[last_word]]
        end = b.end
        while end < len(self.original) and self.original[end] in ".,;:!?…\"'”’)]»":
            end += 1
        start = a.start
        while start > 0 and self.original[start - 1] in "\"'“‘([«¿¡":
            start -= 1
        text = self.original[start:end]
        for lo, hi in sorted(self.removed, reverse=True):  # never the speaker labels and such
            if lo < end and start < hi:
                a_, b_ = max(lo, start) - start, min(hi, end) - start
                text = text[:a_] + " " + text[b_:]
        return " ".join(text.split())


@dataclass
class Rules:
    """Patterns whose matches are not part of the spoken text."""

    remove: list[tuple[str, re.Pattern]]

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> Rules:
        doc, source = load_yaml(path, "align_rules.yaml")
        try:
            remove = [
                (str(r.get("name") or r["pattern"]), re.compile(str(r["pattern"])))
                for r in doc.get("remove", [])
            ]
        except (KeyError, TypeError, AttributeError, re.error) as e:
            raise ValueError(f"{source}: not valid alignment rules ({e})") from None
        return cls(remove=remove)

    def removed_spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for _, pat in self.remove for m in pat.finditer(text)]


def normalise_word(word: str, language: str | None) -> list[str]:
    """A word (a transcript token, or a word as Whisper writes it: " 1462.") as the normalised
    words it is spoken as; a number can be several."""
    word = unicodedata.normalize("NFKC", word).replace("’", "'").lower()
    out: list[str] = []
    for m in TOKEN_RE.finditer(word):
        token = m.group()
        spoken = _number_words(token, language) if token[:1].isdigit() else []
        out.extend(spoken or [w for w in re.split(r"[^\w']+", token) if w.strip("'")])
    return out


def _number_words(token: str, language: str | None) -> list[str]:
    """Digits spelled out by num2words: years as years, ordinals as ordinals, in the language."""
    from num2words import num2words

    lang = (language or "en").split("-")[0]
    m = re.fullmatch(r"(\d+)(st|nd|rd|th)?", token)
    try:
        if m and m.group(2):
            text = num2words(int(m.group(1)), lang=lang, to="ordinal")
        elif m and len(token) == 4 and 1100 <= int(token) < 2100:
            text = num2words(int(token), lang=lang, to="year")
        elif m:
            text = num2words(int(token), lang=lang)
        else:  # 1,462 / 3.5 / 10:30
            value = token.replace(",", "") if lang == "en" else token.replace(".", "")
            value = value.replace(",", ".")
            if ":" in value:
                return [w for part in value.split(":") for w in _number_words(part, language)]
            text = num2words(float(value) if "." in value else int(value), lang=lang)
    except (NotImplementedError, ValueError, OverflowError, KeyError, TypeError):
        return []
    return [w for w in re.split(r"[^\w]+", text.lower()) if w]


def normalise(text: str, language: str | None = None, rules: Rules | None = None) -> NormText:
    """Tokens of text (outside removed spans) and their normalised words."""
    removed = rules.removed_spans(text) if rules else []
    out = NormText(original=text, removed=removed)
    sentence_ends = [m.end() for m in SENTENCE_END_RE.finditer(text)]
    sentence = 0
    for m in TOKEN_RE.finditer(text):
        start, end = m.span()
        if any(a < end and start < b for a, b in removed):
            continue
        while sentence < len(sentence_ends) and sentence_ends[sentence] <= start:
            sentence += 1
        words = normalise_word(m.group(), language)
        if not words:
            continue
        out.tokens.append(Token(m.group(), start, end, sentence))
        for w in words:
            out.words.append(w)
            out.word_token.append(len(out.tokens) - 1)
    return out


def normalise_plain(text: str, language: str | None = None) -> str:
    """Normalised words of a text, joined by spaces (for scoring)."""
    return " ".join(normalise(text, language).words)


def fold(text: str) -> str:
    """Case and accents folded (NFKD, combining marks dropped), as the workbench's search index
    (FTS5 `remove_diacritics`) folds them."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def match_key(word: str) -> str:
    """A word as corrections compare it to the machine's words: folded, punctuation dropped.
    One word stays one key (unlike normalise_word, which spells numbers out), so an edited
    text maps 1:1 onto the words it replaces."""
    return re.sub(r"\W+", "", fold(word))


def map_words(ref: list[str], hyp: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Word alignment of two word sequences (Levenshtein): for each ref word, the hyp word it
    aligns to (-1: none) and whether they are equal. Used by `asr align` (a text to the words
    heard) and by corrections (edited words to the machine's words, for their times)."""
    mapping = np.full(len(ref), -1, dtype=np.int64)
    equal = np.zeros(len(ref), dtype=bool)
    for tag, i1, i2, j1, j2 in Levenshtein.opcodes(ref, hyp):
        if tag == "equal":
            mapping[i1:i2] = np.arange(j1, j2)
            equal[i1:i2] = True
        elif tag == "replace":
            n = min(i2 - i1, j2 - j1)
            mapping[i1 : i1 + n] = np.arange(j1, j1 + n)
    return mapping, equal
