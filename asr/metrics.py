"""How transcripts are scored: text normalisers, WER and CER, bootstrap intervals, comparisons.

A leaf module (it imports nothing from engine, train, export or bench), because training's dev
WER, the export parity check and `asr bench` all score with it.

Normalisers are versioned: a change in what they do bumps their version, and the version is
stored with every result, so that numbers are only compared like with like:

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

Word and character edit operations come from jiwer on the normalised pairs, one utterance at a
time, and corpus rates are sums over utterances (errors / reference words), which is what jiwer
computes over the whole list. Intervals are percentile bootstraps over utterances (resampled
with replacement, seeded: the same seed gives the same interval). A comparison of two runs on
the same utterances is a paired bootstrap of the difference in WER.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import jiwer
import numpy as np

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


@dataclass
class UttScore:
    """One utterance's normalised pair and its edit counts."""

    id: str
    ref: str
    hyp: str
    words: int
    subs: int
    dels: int
    ins: int
    chars: int
    char_errors: int
    fields: dict = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.subs + self.dels + self.ins


@dataclass
class Scores:
    """A model on a test set."""

    wer: float
    cer: float
    ci_low: float
    ci_high: float
    substitutions: int
    deletions: int
    insertions: int
    words: int
    n_utterances: int
    breakdown: dict = field(default_factory=dict)
    confusions: list = field(default_factory=list)


def score_pairs(
    rows: list[dict], spec: NormalizerSpec, breakdown: list[str] | None = None
) -> list[UttScore]:
    """Per-utterance scores of rows {id, ref, hyp, language, ...fields} after normalisation."""
    norm = make_normalizer(spec)
    merge = spec.options.get("merge_compounds", False)
    out = []
    for r in rows:
        ref = norm(r["ref"], r.get("language"))
        hyp = norm(r["hyp"], r.get("language"))
        if merge:
            rw, hw = merge_compounds(ref.split(), hyp.split())
            ref, hyp = " ".join(rw), " ".join(hw)
        fields = {k: _field(r, k) for k in breakdown or []}
        out.append(_utt(r["id"], ref, hyp, fields))
    return out


def _field(row: dict, name: str) -> str:
    """A breakdown value; `decade` is derived from a date (1962-04-30 -> 1960s)."""
    if name == "decade":
        date = str(row.get("date") or "")
        return f"{date[:3]}0s" if date[:4].isdigit() else "unknown"
    value = row.get(name)
    return "unknown" if value in (None, "") else str(value)


def _utt(uid: str, ref: str, hyp: str, fields: dict) -> UttScore:
    words, chars = len(ref.split()), len(ref)
    if not ref:  # nothing to say: every hypothesis word is an insertion
        return UttScore(uid, ref, hyp, 0, 0, 0, len(hyp.split()), 0, len(hyp), fields)
    w = jiwer.process_words(ref, hyp)
    c = jiwer.process_characters(ref, hyp)
    return UttScore(
        uid,
        ref,
        hyp,
        words,
        w.substitutions,
        w.deletions,
        w.insertions,
        chars,
        c.substitutions + c.deletions + c.insertions,
        fields,
    )


def _rate(errors: np.ndarray, total: np.ndarray) -> float:
    t = float(total.sum())
    return float(errors.sum()) / t if t else 0.0


def bootstrap_ci(
    errors: np.ndarray, words: np.ndarray, n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the corpus rate sum(errors)/sum(words)."""
    if len(errors) == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(errors), size=(n, len(errors)))
    e, w = errors[idx].sum(axis=1), words[idx].sum(axis=1)
    rates = np.divide(e, w, out=np.zeros(n), where=w > 0)
    a = (1 - level) / 2
    return float(np.quantile(rates, a)), float(np.quantile(rates, 1 - a))


def summarize(utts: list[UttScore], n_boot: int = 1000, seed: int = 0, top: int = 10) -> Scores:
    """Corpus WER/CER, the interval, breakdowns by every field, the most frequent confusions."""
    errors = np.array([u.errors for u in utts], dtype=np.int64)
    words = np.array([u.words for u in utts], dtype=np.int64)
    low, high = bootstrap_ci(errors, words, n_boot, seed)
    groups: dict[str, dict[str, list[UttScore]]] = defaultdict(lambda: defaultdict(list))
    for u in utts:
        for k, v in u.fields.items():
            groups[k][v].append(u)
    breakdown = {
        k: {
            v: {
                "wer": _rate(np.array([x.errors for x in us]), np.array([x.words for x in us])),
                "n_utterances": len(us),
                "words": sum(x.words for x in us),
            }
            for v, us in sorted(vals.items())
        }
        for k, vals in groups.items()
    }
    return Scores(
        wer=_rate(errors, words),
        cer=_rate(np.array([u.char_errors for u in utts]), np.array([u.chars for u in utts])),
        ci_low=low,
        ci_high=high,
        substitutions=sum(u.subs for u in utts),
        deletions=sum(u.dels for u in utts),
        insertions=sum(u.ins for u in utts),
        words=int(words.sum()),
        n_utterances=len(utts),
        breakdown=breakdown,
        confusions=confusions(utts, top),
    )


def confusions(utts: list[UttScore], top: int = 10) -> list[dict]:
    """The most frequent word errors: substitutions (ref -> hyp), deletions, insertions."""
    # Not jiwer.collect_error_counts (jiwer 4.0.0): it counts one entry per alignment chunk,
    # the words of a run of adjacent errors joined ('the cat' -> 'a dog' once, not 'the' -> 'a'
    # and 'cat' -> 'dog'), and returns three dicts, which loses the order of first occurrence
    # that breaks ties here. Word by word from the same alignments instead.
    counts: Counter = Counter()
    for u in utts:
        if not u.ref or u.errors == 0:
            continue
        out = jiwer.process_words(u.ref, u.hyp)
        ref, hyp = out.references[0], out.hypotheses[0]
        for chunk in out.alignments[0]:
            if chunk.type == "substitute":
                for i, j in zip(
                    range(chunk.ref_start_idx, chunk.ref_end_idx),
                    range(chunk.hyp_start_idx, chunk.hyp_end_idx),
                ):
                    counts[(ref[i], hyp[j])] += 1
            elif chunk.type == "delete":
                for i in range(chunk.ref_start_idx, chunk.ref_end_idx):
                    counts[(ref[i], "")] += 1
            elif chunk.type == "insert":
                for j in range(chunk.hyp_start_idx, chunk.hyp_end_idx):
                    counts[("", hyp[j])] += 1
    return [{"ref": r, "hyp": h, "count": n} for (r, h), n in counts.most_common(top)]


@dataclass
class Comparison:
    """B against A on the utterances both scored: WER difference (B - A) and its interval."""

    wer_a: float
    wer_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_utterances: int

    @property
    def significant(self) -> bool:
        """The 95% interval of the difference excludes zero."""
        return self.ci_low > 0 or self.ci_high < 0


def paired_bootstrap(
    a: dict[str, tuple[int, int]],
    b: dict[str, tuple[int, int]],
    n: int = 1000,
    seed: int = 0,
) -> Comparison:
    """Paired bootstrap over shared utterance ids; a/b: id -> (errors, words)."""
    ids = sorted(set(a) & set(b))
    if not ids:
        raise ValueError("the two runs share no utterances")
    ea = np.array([a[i][0] for i in ids], dtype=np.float64)
    eb = np.array([b[i][0] for i in ids], dtype=np.float64)
    w = np.array([a[i][1] for i in ids], dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ids), size=(n, len(ids)))
    ws = w[idx].sum(axis=1)
    diffs = np.divide(eb[idx].sum(axis=1) - ea[idx].sum(axis=1), ws, out=np.zeros(n), where=ws > 0)
    wa, wb = _rate(ea, w), _rate(eb, w)
    # two-sided: how often the resampled difference falls on the other side of zero
    p = 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean()))
    return Comparison(
        wer_a=wa,
        wer_b=wb,
        diff=wb - wa,
        ci_low=float(np.quantile(diffs, 0.025)),
        ci_high=float(np.quantile(diffs, 0.975)),
        p_value=min(1.0, p),
        n_utterances=len(ids),
    )
