"""Text normalisers for scoring, versioned: a change in what they do bumps their version, and
the version is stored with every result, so that numbers are only compared like with like.

- whisper-english: Whisper's English normaliser (spelling, contractions, numbers as digits), as
  the whisper-normalizer package ships it; the usual scale for English WER.
- multilingual: lower case, punctuation removed, diacritics kept, numbers spelled out in the
  utterance's language (num2words, as `asr align` does); option merge_compounds (Nordic
  languages write compounds as one word: a hypothesis that splits "sjukhus" into "sjuk hus",
  or joins what the reference splits, is not counted as two errors).
- whisper-basic: Whisper's basic (multilingual) normaliser: lower case, punctuation and symbols
  removed, diacritics kept, numbers left as written; what training's dev WER and the export
  parity check use.
- none: whitespace only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

VERSIONS = {"whisper-english": "1", "whisper-basic": "1", "multilingual": "1", "none": "1"}


@dataclass
class NormalizerSpec:
    """A normaliser by name with its options (from the test set's config)."""

    name: str = "multilingual"
    options: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        """name@version plus options: what a result was scored with."""
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name}@{VERSIONS[self.name]}" + (f"[{opts}]" if opts else "")


def make_normalizer(spec: NormalizerSpec) -> Callable[[str, str | None], str]:
    """A function (text, language) -> normalised text."""
    if spec.name not in VERSIONS:
        raise ValueError(f"unknown normalizer {spec.name!r}; choose from {sorted(VERSIONS)}")
    known = {name: set() for name in VERSIONS} | {"multilingual": {"merge_compounds"}}
    unknown = set(spec.options) - known[spec.name]
    if unknown:
        raise ValueError(f"normalizer {spec.name}: unknown option(s) {sorted(unknown)}")
    if spec.name == "whisper-english":
        from whisper_normalizer.english import EnglishTextNormalizer

        english = EnglishTextNormalizer()
        return lambda text, language=None: " ".join(english(text).split())
    if spec.name == "whisper-basic":
        from whisper_normalizer.basic import BasicTextNormalizer

        basic = BasicTextNormalizer(remove_diacritics=False)
        return lambda text, language=None: " ".join(basic(text).split())
    if spec.name == "none":
        return lambda text, language=None: " ".join(text.split())
    from asr.textnorm import normalise_plain

    return lambda text, language=None: normalise_plain(text, language)


def merge_compounds(ref: list[str], hyp: list[str]) -> tuple[list[str], list[str]]:
    """(ref, hyp) with adjacent words of one side joined where together they spell a word of
    the other side (and the first alone does not occur there)."""
    return _join(ref, set(hyp)), _join(hyp, set(ref))


def _join(words: list[str], other: set[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(words):
        if i + 1 < len(words) and words[i] + words[i + 1] in other and words[i] not in other:
            out.append(words[i] + words[i + 1])
            i += 2
        else:
            out.append(words[i])
            i += 1
    return out
