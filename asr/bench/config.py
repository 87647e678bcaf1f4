"""The benchmark configuration (YAML): test sets, models, bootstrap, regression gate.

```yaml
db: bench.sqlite                 # history database (default: bench.sqlite beside this file)
report: bench-report             # HTML/markdown report folder (default: none unless --report)
bootstrap: {samples: 1000, seed: 0}
gate: {max_wer_increase: 0.005}  # absolute WER: 0.005 = half a point, and significant
testsets:
  - name: readings
    manifest: path/to/segments.jsonl   # segments with text, a shard folder, or a CSV
    language: en                       # default language of its utterances
    normalizer: whisper-english        # or multilingual, or {name: multilingual,
                                       #                      merge_compounds: true}
    breakdown: [collection, speaker]   # fields to break WER down by (decade: from date)
  - name: longform
    manifest: path/to/catalogue.csv    # whole recordings; the transcript column holds the
    where: {kind: longform}            # path of a .txt (relative to the CSV) with the
    text_file: true                    # reference; no duration limit unless max_seconds
models:
  - name: tiny.en
    path: tiny.en                      # a CTranslate2 folder, a hub id, tiny.en or base
    options: {beam_size: 5}
```

Paths are relative to the configuration file; `${VAR}` and `${VAR:-default}` are expanded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from asr.bench.normalize import VERSIONS, NormalizerSpec
from asr.config import load_yaml

MODEL_OPTIONS = {
    "beam_size": int,
    "batch_size": int,
    "device": str,
    "compute_type": str,
    "cpu_threads": int,
    "language": str,
    "min_context": float,
}


@dataclass
class TestSetSpec:
    """One test set: where its utterances are and how they are scored."""

    __test__ = False  # not a pytest test class, whatever its name

    name: str
    manifest: str
    language: str | None = None
    normalizer: NormalizerSpec = field(default_factory=NormalizerSpec)
    breakdown: list[str] = field(default_factory=list)
    split: str = "test"
    """For a shard folder: the split to read."""
    text_column: str = "transcript"
    """For a CSV: the reference text column (path, language columns are read too)."""
    where: dict = field(default_factory=dict)
    """For a CSV: keep rows whose columns have these values (e.g. {kind: utterance})."""
    text_file: bool = False
    """For a CSV: the text column holds the path of a text file (relative to the CSV) with the
    reference of the whole recording (long-form sets), not the text itself."""
    max_utterances: int = 0
    max_seconds: float | None = None
    """Longer items are left out; 0: no limit; None: 30 s, or no limit for text_file sets."""


@dataclass
class ModelSpec:
    """One model and its decoding options."""

    name: str
    path: str
    options: dict = field(default_factory=dict)
    testsets: list[str] = field(default_factory=list)
    """Run only on these test sets (default: all)."""


@dataclass
class BenchConfig:
    testsets: list[TestSetSpec]
    models: list[ModelSpec]
    db: Path
    report: Path | None = None
    bootstrap_samples: int = 1000
    seed: int = 0
    max_wer_increase: float = 0.005
    source: str = ""


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(value: str) -> str:
    """${VAR} and ${VAR:-default} from the environment."""
    return _VAR.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)


def _path(value: str, base: Path) -> str:
    v = os.path.expanduser(expand(str(value)))
    return v if os.path.isabs(v) else str((base / v).resolve())


def _bool(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false, not {value!r}")
    return value


def _normalizer(value, where: str) -> NormalizerSpec:
    if isinstance(value, str):
        spec = NormalizerSpec(value)
    elif isinstance(value, dict) and "name" in value:
        spec = NormalizerSpec(value["name"], {k: v for k, v in value.items() if k != "name"})
    else:
        raise ValueError(f"{where}: normalizer must be a name or {{name: ..., options}}")
    if spec.name not in VERSIONS:
        raise ValueError(
            f"{where}: unknown normalizer {spec.name!r}; choose from {sorted(VERSIONS)}"
        )
    return spec


def load_config(path: str | os.PathLike) -> BenchConfig:
    """Read and check a benchmark configuration; ValueError names the file and the problem."""
    doc, source = load_yaml(Path(path), "")
    base = Path(path).resolve().parent
    unknown = set(doc) - {"db", "report", "bootstrap", "gate", "testsets", "models"}
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {sorted(unknown)}")
    testsets = []
    names = set()
    for i, t in enumerate(doc.get("testsets") or []):
        where = f"{source}: testsets[{i}]"
        if not isinstance(t, dict) or not t.get("name") or not t.get("manifest"):
            raise ValueError(f"{where}: needs a name and a manifest")
        extra = set(t) - set(TestSetSpec.__dataclass_fields__)
        if extra:
            raise ValueError(f"{where}: unknown key(s) {sorted(extra)}")
        if t["name"] in names:
            raise ValueError(f"{where}: test set name {t['name']!r} used twice")
        names.add(t["name"])
        testsets.append(
            TestSetSpec(
                name=str(t["name"]),
                manifest=_path(t["manifest"], base),
                language=t.get("language"),
                normalizer=_normalizer(t.get("normalizer", "multilingual"), where),
                breakdown=list(t.get("breakdown") or []),
                split=t.get("split", "test"),
                text_column=t.get("text_column", "transcript"),
                where=dict(t.get("where") or {}),
                text_file=_bool(t.get("text_file", False), f"{where}: text_file"),
                max_utterances=int(t.get("max_utterances", 0)),
                max_seconds=None if t.get("max_seconds") is None else float(t["max_seconds"]),
            )
        )
    models = []
    for i, m in enumerate(doc.get("models") or []):
        where = f"{source}: models[{i}]"
        if not isinstance(m, dict) or not m.get("name") or not m.get("path"):
            raise ValueError(f"{where}: needs a name and a path")
        opts = dict(m.get("options") or {})
        bad = set(opts) - set(MODEL_OPTIONS)
        if bad:
            raise ValueError(
                f"{where}: unknown option(s) {sorted(bad)}; known: {list(MODEL_OPTIONS)}"
            )
        path = expand(str(m["path"]))
        local = _path(path, base)
        only = list(m.get("testsets") or [])
        missing = set(only) - names
        if missing:
            raise ValueError(f"{where}: no test set(s) named {sorted(missing)}")
        model_path = local if Path(local).exists() else path
        models.append(ModelSpec(str(m["name"]), model_path, opts, only))
    if not testsets or not models:
        raise ValueError(f"{source}: needs at least one test set and one model")
    boot = doc.get("bootstrap") or {}
    gate = doc.get("gate") or {}
    return BenchConfig(
        testsets=testsets,
        models=models,
        db=Path(_path(doc.get("db", "bench.sqlite"), base)),
        report=Path(_path(doc["report"], base)) if doc.get("report") else None,
        bootstrap_samples=int(boot.get("samples", 1000)),
        seed=int(boot.get("seed", 0)),
        max_wer_increase=float(gate.get("max_wer_increase", 0.005)),
        source=source,
    )
