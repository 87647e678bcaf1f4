"""`asr train` and `asr export`: the tiny CPU recipes trained on the sample archive's shards,
resumed, run on two processes, exported to CTranslate2 and used by `asr transcribe`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.cli import main as cli
from asr.engine.ctc import ctc_words
from asr.engine.transcribe import TranscribeOptions, transcribe
from asr.export import (
    ExportError,
    ExportOptions,
    export,
    parity,
    parity_samples,
    training_info,
)
from asr.train.recipe import load_recipe
from asr.train.trainer import TrainOptions, train

ROOT = Path(__file__).resolve().parents[1]
WHISPER = ROOT / "recipes/whisper-tiny-cpu.yaml"
CTC = ROOT / "recipes/wav2vec2-tiny-cpu.yaml"
TWO_RECORDINGS = ("ferry_memories.flac", "fischmarkt.wav")


def _log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]


def _steps(run: Path, rank: int = 0) -> dict:
    """Per step: the loss and the batch (its keys' hash) this process trained on."""
    out: dict = {}
    for line in (run / "logs" / f"rank-{rank}.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            out[("loss", r["step"])] = r["loss"]
        else:
            out[("batch", r["step"], r["micro"])] = (r["keys_sha1"], r["shards"], r["epoch"])
    return out


def _no_pickles(folder: Path) -> None:
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    bad = [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    assert not bad, f"pickle-format files written: {bad}"


def test_recipes_load_and_typos_fail(tmp_path):
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        r = load_recipe(path)
        assert r.model.kind in ("whisper", "ctc") and r.description, path
    r = load_recipe(WHISPER, ["optim.lr=1e-4", "train.mixed_precision=bf16", "data.num_workers=3"])
    assert (r.optim.lr, r.train.mixed_precision, r.data.num_workers) == (1e-4, "bf16", 3)
    with pytest.raises(ValueError, match="optim: unknown key.*learning_rate"):
        load_recipe(WHISPER, ["optim.learning_rate=1e-4"])
    with pytest.raises(ValueError, match="train.eval_every: expected int"):
        load_recipe(WHISPER, ["train.eval_every=often"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {kind: rnn}\n")
    with pytest.raises(ValueError, match=f"{bad}.*model.kind"):
        load_recipe(bad)


def test_whisper_trains_and_evaluates(whisper_run):
    run, result = whisper_run
    assert result.step == 30 and result.final == run / "final"
    losses = [r["loss"] for r in _log(run) if "loss" in r]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0, losses
    evals = [r for r in _log(run) if "dev_wer" in r]
    assert [e["step"] for e in evals] == [15, 30]
    assert all(e["dev_samples"] > 0 and e["dev_wer"] >= 0 for e in evals)
    assert result.best_wer == pytest.approx(min(e["dev_wer"] for e in evals), abs=1e-6)
    # of equal dev WERs (a small dev set), the lower dev loss
    assert result.best_step == min(evals, key=lambda e: (e["dev_wer"], e["dev_loss"]))["step"]
    for name in ("model.safetensors", "config.json", "tokenizer.json", "archive_asr.json"):
        assert (run / "final" / name).is_file(), name
    _no_pickles(run / "checkpoints")
    _no_pickles(run / "final")
    # TensorBoard logs, read back with TensorBoard's own reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    for sub in (run / "tensorboard").rglob("events.out.tfevents.*"):
        events = EventAccumulator(str(sub.parent))
        events.Reload()
        if "train/loss" in events.Tags()["scalars"]:
            break
    assert len(events.Scalars("train/loss")) == 30
    assert len(events.Scalars("dev/dev_wer")) == 2


def test_whisper_resume_continues_with_the_same_batches(whisper_run, train_shards, tmp_path):
    straight, _ = whisper_run
    run = tmp_path / "run"
    first = train(load_recipe(WHISPER), train_shards, run, TrainOptions(stop_after=10))
    assert first.step == 10 and first.final is None
    assert (run / "checkpoints/step-0000010/state.json").is_file()
    second = train(load_recipe(WHISPER), train_shards, run, TrainOptions(progress=False))
    assert second.resumed_from == 10 and second.step == 30
    a, b = _steps(straight), _steps(run)
    later = [k for k in a if k[1] > 10]
    assert len(later) == 40
    assert [b[k] for k in later] == [a[k] for k in later]


def test_a_resumed_run_ends_with_the_best_weights_its_checkpoint_knew(whisper_run, tmp_path):
    """best/ is part of each checkpoint: weights an evaluation wrote after the checkpoint (lost
    with the run that wrote them) never become a resumed run's final model."""
    from safetensors.torch import load_file

    straight, _ = whisper_run
    run = tmp_path / "run"
    shutil.copytree(straight, run, symlinks=True)
    ckpt = run / "checkpoints/step-0000020"
    assert json.loads((ckpt / "state.json").read_text())["state"]["best_step"] == 15
    kept = load_file(ckpt / "best.safetensors")
    later = run / "checkpoints/step-0000030/model.safetensors"
    shutil.copyfile(later, run / "best/model.safetensors")  # what a later evaluation left
    planted = load_file(later)
    shutil.rmtree(run / "checkpoints/step-0000030")
    shutil.rmtree(run / "final")
    shards = Path(json.loads((straight / "final/archive_asr.json").read_text())["shards"])
    recipe = load_recipe(WHISPER, ["optim.max_steps=20"])  # resume at 20, nothing left to run
    result = train(recipe, shards, run, TrainOptions(progress=False))
    assert result.resumed_from == 20 and result.final == run / "final"
    final = load_file(run / "final/model.safetensors")
    assert any(not torch.equal(kept[k], planted[k]) for k in kept)
    for name, tensor in kept.items():
        assert torch.equal(final[name], tensor), name


def _dev_samples(shards: Path) -> int:
    """How many dev samples the shards hold: alignment decides it, and int8 kernels differ
    between CPUs (AVX-512 or not), so tests take the count from the data, never a number."""
    n = json.loads((shards / "shards.json").read_text())["splits"]["dev"]["samples"]
    assert n > 0
    return n


def test_whisper_export_parity_and_transcribe(whisper_run, train_shards, sample_archive, tmp_path):
    run, _ = whisper_run
    out = tmp_path / "ct2"
    r = export(run / "final", out, ExportOptions(quantization="int8"))
    want = min(ExportOptions.parity_samples, _dev_samples(train_shards))
    assert r.kind == "whisper" and r.parity_samples == want and r.parity_wer <= 0.1
    assert all(e["pytorch"] for e in r.examples)  # the models said something to compare
    # the dev texts, through asr transcribe's own path (VAD, packed windows) as well
    assert r.transcribe_wer is not None and r.transcribe_wer - r.pytorch_wer <= 0.10
    assert json.loads((out / "export.json").read_text())["transcribe_wer"] == r.transcribe_wer
    fe = json.loads((out / "preprocessor_config.json").read_text())
    assert fe["feature_size"] == 80
    assert len(json.loads((out / "config.json").read_text())["lang_ids"]) == 99
    audio = [sample_archive.parent / "oral_history" / n for n in TWO_RECORDINGS]
    t = transcribe(audio, tmp_path / "tx", TranscribeOptions(model=str(out), progress=False))
    assert t.done == 2 and t.failed == 0
    doc = json.loads(next((tmp_path / "tx").rglob("*.json")).read_text())
    assert doc["model"]["path"] == str(out.resolve())


def test_parity_check_catches_a_different_model(whisper_run, tmp_path):
    run, _ = whisper_run
    other = tmp_path / "other"
    train(
        load_recipe(WHISPER, ["train.seed=7", "optim.max_steps=2", "optim.lr=0"]),
        json.loads((run / "final/archive_asr.json").read_text())["shards"],
        other,
        TrainOptions(progress=False),
    )
    ours = tmp_path / "ours"
    export(run / "final", ours, ExportOptions(check_parity=False))
    info = training_info(run / "final")
    samples = parity_samples(run / "final", ExportOptions(parity_samples=4), info)
    wer, _ = parity(other / "final", ours, samples, ExportOptions())
    assert wer > 0.5
    # a failed check leaves nothing behind, and the CLI says why with exit code 1
    code = cli(["export", str(run / "final"), "--out", str(tmp_path / "x"), "--max-parity-wer=-1"])
    assert code == 1 and not (tmp_path / "x").exists()
    with pytest.raises(ExportError, match="parity check failed"):
        export(run / "final", tmp_path / "x", ExportOptions(max_parity_wer=-1))
    with pytest.raises(ExportError, match="asr transcribe with the converted model"):
        export(run / "final", tmp_path / "x", ExportOptions(max_transcribe_gap=float("-inf")))
    assert not (tmp_path / "x").exists()
    with pytest.raises(ExportError, match="no config.json"):
        export(tmp_path, tmp_path / "y")


CTC_SETS = ["optim.max_steps=16", "train.eval_every=8", "data.num_workers=2", "data.epoch_steps=5"]


@pytest.fixture(scope="module")
def ctc_run(train_shards, tmp_path_factory):
    """The tiny wav2vec2 recipe, 16 steps straight through, two data workers."""
    run = tmp_path_factory.mktemp("ctc") / "run"
    result = train(load_recipe(CTC, CTC_SETS), train_shards, run, TrainOptions(progress=False))
    return run, result


def test_wav2vec2_trains_resumes_exports_and_transcribes(
    ctc_run, train_shards, sample_archive, tmp_path
):
    straight, r = ctc_run
    losses = [x["loss"] for x in _log(straight) if "loss" in x]
    assert r.step == 16 and np.mean(losses[-4:]) < np.mean(losses[:4]) - 1.0, losses
    assert [x["step"] for x in _log(straight) if "dev_cer" in x] == [8, 16]
    vocab = json.loads((straight / "final/vocab.json").read_text())
    assert vocab["<pad>"] == 0 and vocab["|"] == 2 and "a" in vocab

    run = tmp_path / "resumed"  # stopped at an odd step: two data workers take turns
    sets = CTC_SETS
    train(load_recipe(CTC, sets), train_shards, run, TrainOptions(stop_after=7, progress=False))
    again = train(load_recipe(CTC, sets), train_shards, run, TrainOptions(progress=False))
    assert again.resumed_from == 7
    a, b = _steps(straight), _steps(run)
    later = [k for k in a if k[1] > 7]
    assert [b[k] for k in later] == [a[k] for k in later]

    out = tmp_path / "ct2"
    e = export(straight / "final", out, ExportOptions(quantization="int8"))
    assert e.kind == "ctc" and e.parity_wer <= 0.1
    assert json.loads((out / "vocab.json").read_text()) == vocab
    audio = [sample_archive.parent / "oral_history" / n for n in TWO_RECORDINGS]
    t = transcribe(audio, tmp_path / "tx", TranscribeOptions(model=str(out), progress=False))
    assert t.done == 2 and t.failed == 0
    doc = json.loads(next((tmp_path / "tx").rglob("*.json")).read_text())
    assert doc["model"]["path"] == str(out.resolve()) and doc["language"]


def test_align_refines_with_a_ctc_model(ctc_run, sample_manifests, tmp_path):
    from asr.align import AlignOptions, align
    from asr.forced_align import CtcAligner
    from asr.manifest import read_recordings, read_segments, write_manifest

    run, _ = ctc_run
    aligner = CtcAligner(str(run / "final"), chunk_seconds=4.0, context_seconds=1.0)
    audio = np.random.default_rng(0).normal(0, 0.1, 16000 * 9 + 123).astype(np.float32)
    assert aligner.emissions(audio).shape == (audio.size // 320, len(aligner.vocab))
    assert aligner.align(audio[:1600], ["much", "too", "long", "for", "a", "tenth"]) is None

    recs = [r for r in read_recordings(sample_manifests / "recordings.jsonl") if r.text]
    recs = [r for r in recs if r.language == "en" and r.duration < 20][:2]
    write_manifest(tmp_path / "recordings.jsonl", recs)
    plain = align(tmp_path / "recordings.jsonl", tmp_path / "plain.jsonl", AlignOptions())
    opts = AlignOptions(ctc_model=str(run / "final"), ctc_window=0.5)
    refined = align(tmp_path / "recordings.jsonl", tmp_path / "ctc.jsonl", opts)
    # ids name the spans, which CTC moves: a segment is known by its text
    before = {(s.recording_id, s.text): s for s in read_segments(tmp_path / "plain.jsonl")}
    after = read_segments(tmp_path / "ctc.jsonl")
    assert plain.segments > 0 and refined.segments == plain.segments
    for s in after:
        b = before[(s.recording_id, s.text)]
        assert s.scores["ctc"] < 0 and s.text == b.text
        assert b.start - 0.5 - 1e-3 <= s.start and s.end <= b.end + 0.5 + 1e-3
        assert s.id == f"{s.recording_id}_{round(s.start * 1000)}_{round(s.end * 1000)}"
    # a threshold no alignment reaches drops every segment, with the reason in the report
    strict = AlignOptions(ctc_model=str(run / "final"), min_ctc_score=0.0)
    dropped = align(tmp_path / "recordings.jsonl", tmp_path / "none.jsonl", strict)
    assert dropped.segments == 0
    report = json.loads(dropped.report.read_text())
    reasons = [d["reason"] for r in report["per_recording"] for d in r["dropped"]]
    assert sum("CTC score" in r for r in reasons) == plain.segments


def test_ctc_edges_skip_unheard_and_stray_characters():
    from torchaudio.functional import TokenSpan

    from asr.forced_align import trusted_edges

    def span(start, score):  # frames of 20 ms
        return TokenSpan(token=3, start=start, end=start + 2, score=score)

    # "n" heard 0.9 s before the rest of its word; a silent final "e" placed in the pause
    tokens = [span(0, -0.01), span(45, -0.1), span(48, -0.2), span(51, -0.1), span(100, -4.0)]
    assert trusted_edges(tokens, [0, 1, 2, 3, 4], 0.02) == (1, 3)
    close = [span(0, -0.5), span(5, -0.3), span(9, -1.0)]
    assert trusted_edges(close, [0, 1, 2], 0.02) == (0, 2)
    # a model that heard nothing: no edge moves
    unheard = [span(5 * k, -4.0) for k in range(8)]
    assert trusted_edges(unheard, list(range(8)), 0.02) == (None, None)


def test_ctc_words_collapse_repeats_and_time_words():
    labels = ["<pad>", "<unk>", "|", "a", "b"]
    path = [0, 3, 3, 0, 4, 2, 2, 0, 3, 0, 3, 0]  # "ab" then "aa" (a blank between the a's)
    lp = np.full((len(path), len(labels)), np.log(0.01), dtype=np.float32)
    lp[np.arange(len(path)), path] = np.log(0.96)
    words, avg = ctc_words(lp, 0.02, labels, blank=0, delimiter="|", skip={1})
    assert [w["word"] for w in words] == [" ab", " aa"]
    assert words[0]["start"] == 0.02 and words[0]["end"] == 0.1
    assert words[1]["start"] == 0.16 and words[1]["end"] == 0.22
    assert 0.95 < words[0]["probability"] < 0.97 and avg == pytest.approx(np.log(0.96))


def test_two_processes_train_on_different_shards(train_shards, tmp_path):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "asr",
        "train",
        str(WHISPER),
        "--shards",
        str(train_shards),
        "--out",
        str(run),
        "--set",
        "optim.max_steps=4",
        "--set",
        "data.epoch_steps=2",
        "--set",
        "train.eval_every=4",
        "--set",
        "train.gradient_checkpointing=true",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    per_rank = []
    for rank in (0, 1):
        batches = [v for k, v in _steps(run, rank).items() if k[0] == "batch"]
        assert len(batches) == 4
        per_rank.append({epoch: set(shards) for _, shards, epoch in batches})
    for epoch in (0, 1):
        assert per_rank[0][epoch] and per_rank[1][epoch]
        assert not per_rank[0][epoch] & per_rank[1][epoch], per_rank
    assert (run / "final/model.safetensors").is_file()
    assert p.stderr.count("train: step 4") == 1  # one summary, from the main process


def test_bf16_and_early_stopping(train_shards, tmp_path):
    # lr 0: the dev WER cannot improve, so patience 1 stops at the second evaluation
    sets = ["train.mixed_precision=bf16", "optim.lr=0", "optim.max_steps=20"]
    sets += ["train.eval_every=2", "train.early_stopping_patience=1"]
    r = train(load_recipe(WHISPER, sets), train_shards, tmp_path, TrainOptions(progress=False))
    assert r.stopped_early and r.step == 4 and r.final is not None
    evals = [x for x in _log(tmp_path) if "dev_wer" in x]
    n = _dev_samples(train_shards)
    assert len(evals) == 2 and all(e["dev_samples"] == n for e in evals)
    assert json.loads((r.final / "archive_asr.json").read_text())["best_step"] == 2


def test_without_the_train_extra_the_message_says_what_to_install(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"  # as if torch were not installed
        "from asr.cli import main\n"
        f"sys.exit(main(['export', {str(tmp_path)!r}, '--out', {str(tmp_path / 'x')!r}]))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1
    assert "pip install 'archive-asr[train]'" in p.stderr and "Traceback" not in p.stderr
