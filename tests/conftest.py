"""Shared fixtures: the generated sample archive, its ingested manifests, and the real speech."""

from __future__ import annotations

import os

# tests never reach a model hub (there is no network here, nor in CI): fail at once, not after
# retries; set before anything imports huggingface_hub, which reads it at import
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.ingest import IngestOptions, ingest
from asr.segment import segment
from asr.vad import SegmentOptions
from benchmarks.realspeech import REALSPEECH, write_catalogue
from sample_archive.build import build_sample_archive

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sample_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample archive (espeak-ng speech in many formats); returns its catalogue CSV."""
    return build_sample_archive(tmp_path_factory.mktemp("sample") / "archive")


@pytest.fixture(scope="session")
def sample_manifests(sample_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample archive ingested and segmented once; returns the folder (read-only use)."""
    out = tmp_path_factory.mktemp("sample_manifests")
    ingest([], out, IngestOptions(catalogue=sample_archive, workers=2, progress=False))
    segment(out / "recordings.jsonl", out / "segments.jsonl", SegmentOptions(progress=False))
    return out


@pytest.fixture(scope="session")
def train_shards(sample_manifests: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training shards from the sample archive: its transcripts aligned, then sharded (several
    small shards per split, so that processes and workers get different ones)."""
    from asr.align import AlignOptions, align
    from asr.shards import ShardOptions, shard

    out = tmp_path_factory.mktemp("train_shards")
    shutil.copy(sample_manifests / "recordings.jsonl", out / "recordings.jsonl")
    align(out / "recordings.jsonl", out / "aligned.jsonl", AlignOptions(progress=False))
    shard(out / "aligned.jsonl", out / "shards", ShardOptions(max_count=3, progress=False))
    return out / "shards"


@pytest.fixture(scope="session")
def whisper_run(train_shards: Path, tmp_path_factory: pytest.TempPathFactory):
    """recipes/whisper-tiny-cpu.yaml trained 30 steps on train_shards: (RUN_DIR, TrainResult)."""
    from asr.train.recipe import load_recipe
    from asr.train.trainer import TrainOptions, train

    run = tmp_path_factory.mktemp("whisper") / "run"
    recipe = load_recipe(ROOT / "recipes/whisper-tiny-cpu.yaml")
    return run, train(recipe, train_shards, run, TrainOptions(progress=False))


@pytest.fixture(scope="session")
def realspeech() -> Path:
    """../shared/data/realspeech (or $ASR_REALSPEECH): real recorded speech with references."""
    if not (REALSPEECH / "catalogue.csv").is_file():
        pytest.fail(f"real speech not found at {REALSPEECH}; set ASR_REALSPEECH")
    return REALSPEECH


@pytest.fixture(scope="session")
def realspeech_catalogue(realspeech: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real speech's catalogue in our catalogue format (rights, text or transcript file)."""
    return write_catalogue(realspeech, tmp_path_factory.mktemp("realspeech") / "catalogue.csv")


def espeak(text: str, path: Path, voice: str = "en", rate: int = 16000) -> np.ndarray:
    """Speak text with espeak-ng; returns float32 mono audio at `rate` (also written to path)."""
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
    audio, sr = sf.read(path, dtype="float32")
    if sr != rate:
        import soxr

        audio = soxr.resample(audio, sr, rate).astype(np.float32)
        sf.write(path, audio, rate)
    return audio


@pytest.fixture(scope="session")
def have_espeak() -> None:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed (apt-get install espeak-ng; `make test` does)")
