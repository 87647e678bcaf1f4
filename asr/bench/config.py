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
The file is checked against the dataclasses below (BenchFile and what it holds): an unknown key
or a value of the wrong type is a ConfigError naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from asr.config import ConfigError, Invalid, from_dict, load_yaml, show
from asr.metrics import VERSIONS, NormalizerSpec, make_normalizer


@dataclass
class ModelOptions:
    """A model's `options:`, each as the `asr transcribe` option of that name (unset or null:
    its default)."""

    config_noun = "option"  # in error messages: unknown option 'beams'

    beam_size: int | None = None
    batch_size: int | None = None
    device: str | None = None
    compute_type: str | None = None
    cpu_threads: int | None = None
    language: str | None = None
    min_context: float | None = None


MODEL_OPTIONS = tuple(f.name for f in dataclasses.fields(ModelOptions))


def _normalizer(value) -> NormalizerSpec:
    """A normaliser's name, or {name: ..., its options}."""
    if isinstance(value, str):
        spec = NormalizerSpec(value)
    elif isinstance(value, dict) and isinstance(value.get("name"), str):
        spec = NormalizerSpec(value["name"], {k: v for k, v in value.items() if k != "name"})
    else:
        raise Invalid(f"expected a normalizer name or {{name: ..., options}}, got {show(value)}")
    if spec.name not in VERSIONS:
        raise Invalid(f"unknown normalizer {spec.name!r} (expected one of: {', '.join(VERSIONS)})")
    try:
        make_normalizer(spec)  # its options
    except ValueError as e:
        raise Invalid(str(e)) from None
    return spec


@dataclass
class TestSetSpec:
    """One test set: where its utterances are and how they are scored."""

    __test__ = False  # not a pytest test class, whatever its name

    name: str
    manifest: str
    language: str | None = None
    normalizer: NormalizerSpec = field(
        default_factory=NormalizerSpec, metadata={"parse": _normalizer}
    )
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
    options: dict = field(default_factory=dict, metadata={"schema": ModelOptions})
    """Decoding options: those of ModelOptions that are given."""
    testsets: list[str] = field(default_factory=list)
    """Run only on these test sets (default: all)."""


@dataclass
class BootstrapSpec:
    samples: int = 1000
    seed: int = 0


@dataclass
class GateSpec:
    max_wer_increase: float = 0.005


@dataclass
class BenchFile:
    """A configuration file as written (its schema); load_config turns it into a BenchConfig."""

    testsets: list[TestSetSpec] = field(default_factory=list)
    models: list[ModelSpec] = field(default_factory=list)
    db: str = "bench.sqlite"
    report: str | None = None
    bootstrap: BootstrapSpec = field(default_factory=BootstrapSpec)
    gate: GateSpec = field(default_factory=GateSpec)


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


def load_config(path: str | os.PathLike) -> BenchConfig:
    """Read and check a benchmark configuration; ConfigError (a ValueError) names the file, the
    key and the problem."""
    doc, source = load_yaml(Path(path), "")
    f = from_dict(BenchFile, doc, source)
    base = Path(path).resolve().parent
    names: list[str] = []
    for i, t in enumerate(f.testsets):
        if t.name in names:
            raise ConfigError(f"{source}: testsets[{i}].name: {t.name!r} used twice")
        names.append(t.name)
        t.manifest = _path(t.manifest, base)
    for i, m in enumerate(f.models):
        missing = [n for n in m.testsets if n not in names]
        if missing:
            raise ConfigError(
                f"{source}: models[{i}].testsets: no test set named {missing[0]!r} "
                f"(expected one of: {', '.join(names)})"
            )
        path = expand(m.path)
        local = _path(path, base)
        m.path = local if Path(local).exists() else path
    if not f.testsets or not f.models:
        raise ConfigError(
            f"{source}: needs at least one test set (testsets) and one model (models)"
        )
    return BenchConfig(
        testsets=f.testsets,
        models=f.models,
        db=Path(_path(f.db, base)),
        report=Path(_path(f.report, base)) if f.report else None,
        bootstrap_samples=f.bootstrap.samples,
        seed=f.bootstrap.seed,
        max_wer_increase=f.gate.max_wer_increase,
        source=source,
    )
