"""Training recipes: a YAML file read into plain dataclasses, with `--set key=value` overrides.

A recipe has five sections (model, data, augment, optim, train); every key and its default is
below and in recipes/README.md. The dataclasses are the schema (asr.config.from_dict): an
unknown key or a value of the wrong type is a ConfigError naming the file and the key, so a
typo never trains silently with a default.
"""

from __future__ import annotations

import os
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from asr.config import ConfigError, from_dict, load_yaml, yaml_error

Kind = Literal["whisper", "ctc"]
KINDS = typing.get_args(Kind)
OFFLINE_WHISPER_TOKENIZER = "offline:whisper-multilingual"


@dataclass
class ModelSpec:
    """What to train: a pretrained model (hub id or local folder) or a random-initialised one."""

    kind: Kind = "whisper"
    """whisper (sequence to sequence) or ctc (wav2vec2 with a CTC head)."""
    name: str | None = None
    """Hub id or local folder in Hugging Face format; with init=random, its config is the base."""
    init: Literal["pretrained", "random"] = "pretrained"
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
    text_field: Literal["text", "text_normalized"] = "text"
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
    timestamp_share: float = 0.0
    """Whisper: the share of training samples (chosen by key: the same ones every epoch) whose
    target carries timestamp tokens, `<|0.00|> text <|end|>` over the sample's span, with no
    `<|notimestamps|>` in the prompt: Whisper was trained so, and `asr transcribe` decodes
    packed windows with timestamps, which a model tuned on text alone may stop writing.
    0: none; dev samples never (dev WER is decoded without timestamps)."""


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

    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """no, fp16 or bf16."""
    gradient_checkpointing: bool = False
    seed: int = 42
    eval_every: int = 500
    save_every: int = 500
    keep_checkpoints: int = 2
    early_stopping_patience: int = 0
    """Stop after this many evaluations without a better dev WER (0: never)."""
    log_every: int = 25
    final: Literal["best", "last"] = "best"
    """What RUN_DIR/final holds: best (lowest dev WER; of equal WERs, the lowest dev loss) or
    last weights."""
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
    source: str = field(default="", metadata={"internal": True})

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("source")
        d["optim"]["betas"] = list(d["optim"]["betas"])
        return d


@dataclass
class TrainOptions:
    """How to run a recipe: each field but `progress` is an `asr train` option (see
    asr/cliopts.py). Here, not in asr.train.trainer, so that `asr train --help` needs no torch."""

    resume: str = field(
        default="auto",
        metadata={
            "help": "auto: continue from RUN_DIR's latest checkpoint if any; never: refuse to "
            "reuse a RUN_DIR with checkpoints; or a checkpoint folder"
        },
    )
    stop_after: int | None = field(
        default=None,
        metadata={
            "help": "stop after this step with a checkpoint (e.g. inside a cluster job's time "
            "limit); run the same command again to continue"
        },
    )
    progress: bool | None = None


def recipe_from_dict(doc: dict, source: str = "<dict>") -> Recipe:
    """A Recipe from a parsed document; ConfigError (a ValueError) names the file and the key."""
    r = from_dict(Recipe, doc, source)
    r.source = source
    _check(r, source)
    return r


def _check(r: Recipe, source: str) -> None:
    """What the types alone do not say."""

    def error(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{source}: {key}: {problem}", source, key)

    if r.model.init == "pretrained" and not r.model.name:
        raise error("model.name", "needed with init: pretrained (a hub id or a folder)")
    if (
        r.model.init == "random"
        and r.model.kind == "whisper"
        and not (r.model.name or r.model.tokenizer)
    ):
        raise error("model.tokenizer", "a random Whisper needs a tokenizer (or model.name)")
    for key in ("data.epoch_steps", "data.max_batch_size", "data.bucket_buffer"):
        if getattr(r.data, key.split(".")[1]) < 1:
            raise error(key, "must be at least 1")
    if not 0.0 <= r.data.timestamp_share <= 1.0:
        raise error("data.timestamp_share", "must be between 0 and 1")
    for key in ("optim.max_steps", "optim.grad_accum"):
        if getattr(r.optim, key.split(".")[1]) < 1:
            raise error(key, "must be at least 1")


def apply_overrides(doc: dict, overrides: list[str]) -> dict:
    """`section.key=value` pairs (value read as YAML: 3, 1e-4, true, [1, 2]) set into doc;
    ConfigError names the --set option."""
    for item in overrides:
        where = f"--set {item!r}"
        if "=" not in item:
            raise ConfigError(f"{where}: expected section.key=value (e.g. optim.lr=1e-4)")
        path, value = item.split("=", 1)
        keys = path.strip().split(".")
        if len(keys) < 2 or not all(keys):
            raise ConfigError(f"{where}: expected section.key=value (e.g. optim.lr=1e-4)")
        node = doc
        for k in keys[:-1]:
            if node.get(k) is None:  # absent, or a section with nothing under it
                node[k] = {}
            node = node[k]
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {k} is not a section")
        try:
            node[keys[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise yaml_error(where, e) from None
    return doc


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe file (yaml.safe_load) and apply `--set` overrides; ConfigError names the
    file, or the --set option, and the key."""
    doc, source = load_yaml(Path(path), "")
    overrides = list(overrides or [])
    try:
        return recipe_from_dict(apply_overrides(doc, overrides), source)
    except ConfigError as e:
        # a bad value or key that came from --set: name the option rather than the file
        for item in reversed(overrides):
            if e.source == source and e.key == item.split("=", 1)[0].strip():
                where = f"--set {item!r}"
                raise ConfigError(f"{where}: {str(e)[len(source) + 2 :]}", where, e.key) from None
        raise
