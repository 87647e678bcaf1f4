"""`asr export`: a trained model (Hugging Face format) to CTranslate2, checked before it lands.

ctranslate2's own converter does the conversion; what it does not do is checked here: the
tokenizer and feature-extractor files the engine needs travel with the model
(preprocessor_config.json carries Whisper's number of mel bins), and a parity check compares
the PyTorch model and the converted one on a fixed set of utterances (greedy decoding from
the same prompts on both sides). A WER between them above the threshold fails the export, and
nothing is written to the output folder. The result is a valid `--model` for `asr transcribe`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from asr.models import QUANTIZATIONS, convert

log = logging.getLogger(__name__)

KINDS = {"whisper": "whisper", "wav2vec2": "ctc"}


class ExportError(RuntimeError):
    """The export failed; the message says why (and nothing was written to the output)."""


@dataclass
class ExportOptions:
    """Options of `export`: each field but `max_new_tokens` and `device` is an `asr export`
    option (see asr/cliopts.py)."""

    quantization: str = field(
        default="int8",
        metadata={"choices": QUANTIZATIONS, "help": "weight type of the converted model"},
    )
    parity_data: list[str] = field(
        default_factory=list,
        metadata={
            "metavar": "PATH",
            "help": "a shard folder (its dev split is used) or audio files for the parity "
            "check; default: the dev shards the model was trained with",
        },
    )
    parity_samples: int = field(default=16, metadata={"help": "utterances compared"})
    max_parity_wer: float = field(
        default=0.10,
        metadata={
            "help": "largest WER (0-1) between the PyTorch and CTranslate2 transcripts that passes"
        },
    )
    max_transcribe_gap: float = field(
        default=0.10,
        metadata={
            "help": "largest rise in WER (0-1, against the dev texts) from the PyTorch model's "
            "transcripts to `asr transcribe`'s with the converted model (VAD, packed windows) "
            "on the same utterances that passes"
        },
    )
    max_new_tokens: int = 128
    device: str = "auto"
    check_parity: bool = field(
        default=True, metadata={"flag": "--no-parity", "help": "skip the parity check"}
    )
    force: bool = field(default=False, metadata={"help": "replace OUT if it exists"})


@dataclass
class ExportResult:
    out: Path
    kind: str
    quantization: str
    parity_wer: float | None = None
    parity_samples: int = 0
    examples: list[dict] = field(default_factory=list)
    pytorch_wer: float | None = None
    """WER of the PyTorch model's greedy transcripts against the parity samples' texts."""
    transcribe_wer: float | None = None
    """WER of `asr transcribe` with the converted model on the same utterances (None: the
    samples have no text)."""


def model_kind(model_dir: Path) -> str:
    """whisper or ctc, from the model's config.json; ExportError for anything else."""
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{model_dir}: not a Hugging Face model folder (no config.json)")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    kind = KINDS.get(cfg.get("model_type", ""))
    if kind is None:
        raise ExportError(
            f"{cfg_path}: model_type {cfg.get('model_type')!r}; export handles whisper and wav2vec2"
        )
    return kind


def export(model_dir: str | os.PathLike, out: str | os.PathLike, opts=None) -> ExportResult:
    """Convert model_dir into out (via a temporary folder), after the parity check passes."""
    opts = opts or ExportOptions()
    model_dir, out = Path(model_dir), Path(out)
    if opts.quantization not in QUANTIZATIONS:
        raise ExportError(f"--quantization {opts.quantization}: choose from {QUANTIZATIONS}")
    kind = model_kind(model_dir)
    if out.exists() and any(out.iterdir()) and not opts.force:
        raise ExportError(f"{out}: exists and is not empty (pass --force to replace it)")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        try:
            convert(str(model_dir), tmp, opts.quantization)
        except Exception as e:
            raise ExportError(f"{model_dir}: conversion failed ({type(e).__name__}: {e})") from e
        result = ExportResult(out, kind, opts.quantization)
        if opts.check_parity:
            info = training_info(model_dir)
            samples = parity_samples(model_dir, opts, info)
            wer, examples = parity(model_dir, tmp, samples, opts, info.get("language"))
            result.parity_wer, result.parity_samples, result.examples = wer, len(samples), examples
            if wer > opts.max_parity_wer:
                raise ExportError(
                    f"{model_dir}: parity check failed: the CTranslate2 model "
                    f"({opts.quantization}) and the PyTorch model disagree, WER "
                    f"{100 * wer:.1f}% over {len(samples)} utterances > "
                    f"{100 * opts.max_parity_wer:.1f}% allowed "
                    f"(e.g. PyTorch {examples[0]['pytorch']!r} vs CTranslate2 "
                    f"{examples[0]['ctranslate2']!r}); try a wider --quantization "
                    "(float16, float32) or check the model"
                )
            log.info(
                "parity: WER %.2f%% between PyTorch and CTranslate2 on %d utterances",
                100 * wer,
                len(samples),
            )
            texts = [s.text for s in samples]
            if all(texts):
                pt = [e["pytorch"] for e in examples]
                result.pytorch_wer = transcript_wer(texts, pt)
                result.transcribe_wer = transcribe_wer(tmp, samples, opts, info.get("language"))
                gap = result.transcribe_wer - result.pytorch_wer
                log.info(
                    "parity: WER against the texts %.2f%% (PyTorch), %.2f%% (asr transcribe)",
                    100 * result.pytorch_wer,
                    100 * result.transcribe_wer,
                )
                if gap > opts.max_transcribe_gap:
                    raise ExportError(
                        f"{model_dir}: parity check failed: asr transcribe with the converted "
                        f"model (VAD, packed windows) has WER {100 * result.transcribe_wer:.1f}%"
                        f" on {len(samples)} utterances, {100 * gap:.1f} points above the "
                        f"PyTorch model's {100 * result.pytorch_wer:.1f}% "
                        f"(> {100 * opts.max_transcribe_gap:.1f} allowed): the model works "
                        "alone but not the way archives are transcribed"
                    )
            else:
                log.info("parity: utterances without text; asr transcribe not compared")
        info = {**asdict(result), "out": str(out), "source": str(model_dir.resolve())}
        (tmp / "export.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class ParitySample:
    audio: np.ndarray
    language: str | None
    name: str
    text: str = ""


def training_info(model_dir: Path) -> dict:
    """What `asr train` wrote beside the weights (archive_asr.json: its shards, the language a
    model was tuned to alone); {} for a model trained elsewhere."""
    path = model_dir / "archive_asr.json"
    return json.loads(path.read_text("utf-8")) if path.is_file() else {}


def parity_samples(model_dir: Path, opts: ExportOptions, info: dict) -> list[ParitySample]:
    """The fixed set the parity check transcribes: --parity-data, else the dev shards of
    training (`info`: training_info(model_dir))."""
    from asr.audio import load

    sources = list(opts.parity_data)
    if not sources:
        if not info.get("shards") or not Path(info["shards"]).is_dir():
            raise ExportError(
                f"{model_dir}: no parity data: pass --parity-data (a shard folder or audio "
                "files), or --no-parity to skip the check"
            )
        sources = [info["shards"]]
    samples: list[ParitySample] = []
    for src in sources:
        p = Path(src)
        if (p / "shards.json").is_file():
            from asr.train.data import read_raw, split_shards

            for split in ("dev", "test", "train"):
                try:
                    urls = split_shards(p, split)
                except ValueError:
                    continue
                for s in read_raw(urls):
                    samples.append(
                        ParitySample(s.audio(), s.meta.get("language"), s.key, s.text("text"))
                    )
                    if len(samples) >= opts.parity_samples:
                        return samples
                break
        elif p.is_file():
            samples.append(ParitySample(load(p)[: 30 * 16000], None, p.name))
        else:
            raise ExportError(f"{p}: --parity-data must be a shard folder or an audio file")
        if len(samples) >= opts.parity_samples:
            break
    if not samples:
        raise ExportError(f"{', '.join(sources)}: no utterances for the parity check")
    return samples[: opts.parity_samples]


def parity(
    model_dir: Path,
    ct2_dir: Path,
    samples: list[ParitySample],
    opts: ExportOptions,
    language: str | None = None,
) -> tuple[float, list[dict]]:
    """WER between the PyTorch model's and the converted model's greedy transcripts
    (`language`: the one a Whisper model was tuned to alone, else each sample's)."""

    device = _device(opts)
    kind = model_kind(model_dir)
    if kind == "whisper":
        pt, ct = _parity_whisper(model_dir, ct2_dir, samples, opts, device, language)
    else:
        pt, ct = _parity_ctc(model_dir, ct2_dir, samples, device)
    examples = [
        {"name": s.name, "pytorch": a, "ctranslate2": b} for s, a, b in zip(samples, pt, ct)
    ]
    return transcript_wer(pt, ct), examples


def _device(opts: ExportOptions) -> str:
    import ctranslate2

    if opts.device == "auto":
        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    return opts.device


def transcribe_wer(
    ct2_dir: Path, samples: list[ParitySample], opts: ExportOptions, language: str | None = None
) -> float:
    """WER of `asr transcribe` (the Python API, the path archives go through: VAD chunks,
    packed windows, fallback) with the converted model on the parity samples, against their
    texts (`language`: the model's fixed one). The samples of each language are joined with
    2 s pauses into one recording, so that chunks are cut by VAD and packed several to a
    window as in a long recording."""
    import tempfile

    import soundfile as sf

    from asr.audio import SAMPLE_RATE
    from asr.engine.transcribe import transcribe
    from asr.engine.types import DecodeOptions, TranscribeOptions

    pause = np.zeros(2 * SAMPLE_RATE, np.float32)
    refs, hyps = [], []
    with tempfile.TemporaryDirectory(prefix="asr-export-") as tmp:
        by_lang: dict[str | None, list[ParitySample]] = {}
        for s in samples:
            by_lang.setdefault(language or s.language, []).append(s)
        for n, (lang, group) in enumerate(by_lang.items()):
            audio = np.concatenate([np.concatenate([pause, s.audio]) for s in group] + [pause])
            path = Path(tmp) / f"parity{n}.wav"
            sf.write(path, audio, SAMPLE_RATE)
            t_opts = TranscribeOptions(
                model=str(ct2_dir),
                language=lang,
                device=_device(opts),
                decode=DecodeOptions(beam_size=1),
                formats=("json",),
                progress=False,
            )
            result = transcribe([path], Path(tmp) / "out", t_opts)
            if result.failed:
                raise ExportError(
                    f"asr transcribe failed with the converted model: {result.failures}"
                )
            doc = json.loads((Path(tmp) / "out" / f"parity{n}.json").read_text(encoding="utf-8"))
            refs.append(" ".join(s.text for s in group))
            hyps.append(doc["text"])
    return transcript_wer(refs, hyps)


def transcript_wer(refs: list[str], hyps: list[str]) -> float:
    """WER of hyps against refs after Whisper's basic normaliser; words said where the
    reference has none count as insertions (all-empty references: 0 or 1)."""
    from asr.metrics import NormalizerSpec, score_pairs

    rows = [{"id": str(i), "ref": r, "hyp": h} for i, (r, h) in enumerate(zip(refs, hyps))]
    utts = score_pairs(rows, NormalizerSpec("whisper-basic"))
    errors, words = sum(u.errors for u in utts), sum(u.words for u in utts)
    return errors / words if words else float(errors > 0)


def _parity_whisper(model_dir, ct2_dir, samples, opts, device, fixed):
    import ctranslate2
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from asr.train.tasks import greedy_decode, whisper_prompt

    processor = WhisperProcessor.from_pretrained(model_dir)
    tok = processor.tokenizer
    model = WhisperForConditionalGeneration.from_pretrained(model_dir).to(device).eval()
    prompts = [whisper_prompt(tok, fixed or s.language) for s in samples]
    feats = np.stack(
        [
            processor.feature_extractor(s.audio[: 30 * 16000], sampling_rate=16000).input_features[
                0
            ]
            for s in samples
        ]
    ).astype(np.float32)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    pt_ids = []
    for i in range(len(samples)):
        with torch.no_grad():
            f = torch.from_numpy(feats[i : i + 1]).to(device)
            pt_ids += greedy_decode(model, f, [prompts[i]], opts.max_new_tokens, eot)
    ct = ctranslate2.models.Whisper(str(ct2_dir), device=device, compute_type="default")
    ct_ids = []
    for i in range(len(samples)):
        res = ct.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(feats[i : i + 1])),
            [prompts[i]],
            beam_size=1,
            # generous: how ctranslate2 counts max_length differs from the loop above; sequences
            # that hit the limit are cut to a common length below
            max_length=2 * (opts.max_new_tokens + len(prompts[i])),
            suppress_blank=False,
            suppress_tokens=[],
        )
        ct_ids.append([t for t in res[0].sequences_ids[0] if t != eot])
    cap = opts.max_new_tokens
    for i, (a, b) in enumerate(zip(pt_ids, ct_ids)):
        if len(a) >= cap or len(b) >= cap:  # no end of text (a loop): compare the first tokens
            n = min(len(a), len(b), cap)
            pt_ids[i], ct_ids[i] = a[:n], b[:n]
    decode = lambda seqs: [tok.decode(s, skip_special_tokens=True).strip() for s in seqs]  # noqa: E731
    return decode(pt_ids), decode(ct_ids)


def _parity_ctc(model_dir, ct2_dir, samples, device):
    import ctranslate2
    import torch
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    processor = Wav2Vec2Processor.from_pretrained(model_dir)
    model = Wav2Vec2ForCTC.from_pretrained(model_dir).to(device).eval()
    ct = ctranslate2.models.Wav2Vec2(str(ct2_dir), device=device, compute_type="default")
    pt, cts = [], []
    for s in samples:
        x = processor.feature_extractor(s.audio, sampling_rate=16000).input_values[0]
        x = np.asarray(x, dtype=np.float32)
        with torch.no_grad():
            logits = model(torch.from_numpy(x)[None].to(device)).logits[0].cpu().numpy()
        pt.append(processor.tokenizer.decode(logits.argmax(-1).tolist()))
        out = ct.encode(ctranslate2.StorageView.from_array(x[None, None, :].copy()), to_cpu=True)
        cts.append(processor.tokenizer.decode(np.array(out)[0].argmax(-1).tolist()))
    return pt, cts
