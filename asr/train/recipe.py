"""Training recipes: a YAML file read into plain dataclasses, with `--set key=value` overrides.

A recipe has five sections (model, data, augment, optim, train); every key and its default is
below and in recipes/README.md. Unknown keys are errors, so a typo never trains silently with
a default.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from asr.config import load_yaml

KINDS = ("whisper", "ctc")
OFFLINE_WHISPER_TOKENIZER = "offline:whisper-multilingual"


@dataclass
class ModelSpec:
    """What to train: a pretrained model (hub id or local folder) or a random-initialised one."""

    kind: str = "whisper"
    """whisper (sequence to sequence) or ctc (wav2vec2 with a CTC head)."""
    name: str | None = None
    """Hub id or local folder in Hugging Face format; with init=random, its config is the base."""
    init: str = "pretrained"
    """pretrained: load name's weights; random: build from `config` (tiny test models)."""
    config: dict = field(default_factory=dict)
    """Overrides of the Hugging Face model config (architecture, dropout, ...)."""
    tokenizer: str | None = None
    """Whisper: where the tokenizer and feature extractor come from when not from `name`
    (a hub id, a folder, or offline:whisper-multilingual: the offline base model's tokenizer)."""
    language: str | None = None
    """Whisper: one language for every sample (e.g. sv); None: each sample's own language."""
    task: str = "transcribe"
    freeze_feature_encoder: bool = True
    """CTC: keep the convolutional feature encoder frozen, as wav2vec2 fine-tuning does."""
    freeze_encoder: bool = False
    """Whisper: train the decoder only (small data, or to save memory)."""
    vocab_min_count: int = 1
    """CTC: characters seen fewer times than this in the training text map to <unk>."""


@dataclass
class DataSpec:
    """Which samples, and how they are batched."""

    train_split: str = "train"
    dev_split: str = "dev"
    text_field: str = "text"
    """Segment field the model learns: text (original orthography) or text_normalized."""
    min_seconds: float = 0.3
    max_seconds: float = 30.0
    max_batch_seconds: float = 240.0
    """Audio per batch and process, counted as (longest sample) x (samples): padding included."""
    max_batch_size: int = 64
    bucket_buffer: int = 512
    """Samples read ahead, sorted by length and cut into batches (then the batches shuffled)."""
    epoch_steps: int = 1000
    """Batches per process in one epoch over resampled shards: equal on every process."""
    num_workers: int = 2
    """Data loader processes per training process; resume with the same number."""
    max_label_tokens: int = 448
    dev_max_samples: int = 0
    """Evaluate on the first N dev samples (0: all)."""


@dataclass
class AugmentSpec:
    """SpecAugment as the Hugging Face models implement it (applied in training only)."""

    spec_augment: bool = False
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10


@dataclass
class OptimSpec:
    """AdamW with warm-up and a decaying schedule."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    schedule: str = "linear"
    """A transformers scheduler name: linear, cosine, constant_with_warmup, ..."""
    warmup_steps: int = 500
    max_steps: int = 5000
    grad_accum: int = 1
    max_grad_norm: float = 1.0


@dataclass
class TrainSpec:
    """Precision, memory, evaluation, checkpoints, logging."""

    mixed_precision: str = "no"
    """no, fp16 or bf16."""
    gradient_checkpointing: bool = False
    seed: int = 42
    eval_every: int = 500
    save_every: int = 500
    keep_checkpoints: int = 2
    early_stopping_patience: int = 0
    """Stop after this many evaluations without a better dev WER (0: never)."""
    log_every: int = 25
    final: str = "best"
    """What RUN_DIR/final holds: best (lowest dev WER) or last weights."""
    eval_batch_size: int = 16
    eval_max_new_tokens: int = 128
    cpu: bool = False
    """Train on the CPU even when a GPU is present."""


@dataclass
class Recipe:
    """A whole recipe; `source` is the file it came from."""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    description: str = ""
    source: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("source")
        d["optim"]["betas"] = list(d["optim"]["betas"])
        return d


_SECTIONS = {
    "model": ModelSpec,
    "data": DataSpec,
    "augment": AugmentSpec,
    "optim": OptimSpec,
    "train": TrainSpec,
}


def _section(cls, values: dict, where: str):
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(names)}")
    obj = cls()
    for k, v in values.items():
        default = getattr(obj, k)
        if isinstance(default, bool) and not isinstance(v, bool):
            raise ValueError(f"{where}.{k}: expected true or false, got {v!r}")
        if isinstance(default, float) and not isinstance(v, bool) and isinstance(v, int | str):
            try:  # YAML reads 1e-5 (no dot) as a string
                v = float(v)
            except ValueError:
                raise ValueError(f"{where}.{k}: expected a number, got {v!r}") from None
        if isinstance(default, tuple):
            v = tuple(v)
        ok_types = (type(default),) if default is not None else (object,)
        if not isinstance(v, ok_types) and v is not None:
            raise ValueError(f"{where}.{k}: expected {type(default).__name__}, got {v!r}")
        setattr(obj, k, v)
    return obj


def recipe_from_dict(doc: dict, source: str = "<dict>") -> Recipe:
    """A Recipe from a parsed document; ValueError names the file and the bad key."""
    unknown = sorted(set(doc) - set(_SECTIONS) - {"description"})
    if unknown:
        raise ValueError(f"{source}: unknown section(s) {', '.join(unknown)}")
    r = Recipe(description=str(doc.get("description", "")), source=source)
    for name, cls in _SECTIONS.items():
        values = doc.get(name) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{source}: section '{name}' must be a mapping")
        setattr(r, name, _section(cls, values, f"{source}: {name}"))
    _check(r, source)
    return r


def _check(r: Recipe, source: str) -> None:
    if r.model.kind not in KINDS:
        raise ValueError(f"{source}: model.kind must be one of {KINDS}, got {r.model.kind!r}")
    if r.model.init not in ("pretrained", "random"):
        raise ValueError(f"{source}: model.init must be pretrained or random")
    if r.model.init == "pretrained" and not r.model.name:
        raise ValueError(f"{source}: model.name is needed with init=pretrained")
    if (
        r.model.init == "random"
        and r.model.kind == "whisper"
        and not (r.model.name or r.model.tokenizer)
    ):
        raise ValueError(f"{source}: a random Whisper needs model.tokenizer (or model.name)")
    if r.train.mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"{source}: train.mixed_precision must be no, fp16 or bf16")
    if r.train.final not in ("best", "last"):
        raise ValueError(f"{source}: train.final must be best or last")
    if r.data.text_field not in ("text", "text_normalized"):
        raise ValueError(f"{source}: data.text_field must be text or text_normalized")
    for name in ("epoch_steps", "max_batch_size", "bucket_buffer"):
        if getattr(r.data, name) < 1:
            raise ValueError(f"{source}: data.{name} must be at least 1")
    if r.optim.max_steps < 1 or r.optim.grad_accum < 1:
        raise ValueError(f"{source}: optim.max_steps and optim.grad_accum must be at least 1")


def apply_overrides(doc: dict, overrides: list[str]) -> dict:
    """`section.key=value` pairs (value read as YAML: 3, 1e-4, true, [1, 2]) set into doc."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected section.key=value")
        path, value = item.split("=", 1)
        keys = path.strip().split(".")
        if len(keys) < 2:
            raise ValueError(f"--set {item!r}: expected section.key=value (e.g. optim.lr=1e-4)")
        node = doc
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {k} is not a section")
        node[keys[-1]] = yaml.safe_load(value)
    return doc


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe file (yaml.safe_load) and apply `--set` overrides."""
    doc, source = load_yaml(Path(path), "")
    return recipe_from_dict(apply_overrides(doc, list(overrides or [])), source)
