"""The two kinds of model a recipe trains: Whisper (sequence to sequence) and wav2vec2 (CTC).

Each task builds its model and processor (feature extractor + tokenizer), turns a shard sample
into model inputs, pads a batch, and predicts text for evaluation and the export parity check.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from asr.shards import shard_paths
from asr.train.data import RawSample
from asr.train.recipe import OFFLINE_WHISPER_TOKENIZER, Recipe

log = logging.getLogger(__name__)

PAD_LABEL = -100
TIME_STEP = 0.02
"""Seconds per Whisper timestamp token."""
WINDOW_S = 30.0
OFFLINE_MODEL = "offline:"
"""model.name offline:base or offline:tiny.en: the offline model `asr transcribe` runs."""


def _augment_config(recipe: Recipe) -> dict:
    a = recipe.augment
    if not a.spec_augment:
        return {"apply_spec_augment": False, "mask_time_prob": 0.0, "mask_feature_prob": 0.0}
    return {
        "apply_spec_augment": True,
        "mask_time_prob": a.mask_time_prob,
        "mask_time_length": a.mask_time_length,
        "mask_feature_prob": a.mask_feature_prob,
        "mask_feature_length": a.mask_feature_length,
    }


def _shard_texts(shard_dir: Path, split: str, field: str):
    """Texts of a split from the shards' JSONL sidecars (no tar needs reading)."""
    for tar in shard_paths(shard_dir, split):  # each entry checked to stay in shard_dir
        sidecar = Path(tar[: -len(".tar")] + ".jsonl")
        with open(sidecar, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    text = row.get(field) or (row.get("text") if field != "text" else None)
                    if text:
                        yield text


class WhisperTask:
    """Whisper: log-mel features in, the prompt (start, language, task, no timestamps) and the
    text out; the prompt tokens are given to the decoder but not counted in the loss."""

    kind = "whisper"

    def __init__(self, recipe: Recipe, model, processor):
        self.recipe, self.model, self.processor = recipe, model, processor
        tok = processor.tokenizer
        self.tok = tok
        self.eot = tok.convert_tokens_to_ids("<|endoftext|>")

    # --- building ---------------------------------------------------------------------
    @classmethod
    def build(cls, recipe: Recipe, run_dir: Path, shard_dir: Path, main: bool) -> WhisperTask:
        from transformers import (
            WhisperConfig,
            WhisperFeatureExtractor,
            WhisperForConditionalGeneration,
            WhisperProcessor,
        )

        from asr.train.from_ctranslate2 import load_whisper

        m = recipe.model
        overrides = {**m.config, **_augment_config(recipe)}
        ct2 = _ctranslate2_folder(m.name) if m.init == "pretrained" and m.name else None
        if ct2 is not None:  # what asr transcribe runs: the model rebuilt from it
            model, processor = load_whisper(ct2, overrides=overrides)
        elif m.init == "pretrained":
            processor = WhisperProcessor.from_pretrained(m.tokenizer or m.name)
            model = WhisperForConditionalGeneration.from_pretrained(m.name, **overrides)
        else:
            tokenizer = whisper_tokenizer(m.tokenizer or m.name)
            base = WhisperConfig.from_pretrained(m.name).to_dict() if m.name else {}
            base.update(overrides)
            sot = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
            eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
            config = WhisperConfig(
                **{
                    **base,
                    "vocab_size": len(tokenizer),
                    "decoder_start_token_id": sot,
                    "bos_token_id": eot,
                    "eos_token_id": eot,
                    "pad_token_id": eot,
                }
            )
            torch.manual_seed(recipe.train.seed)
            model = WhisperForConditionalGeneration(config)
            processor = WhisperProcessor(
                feature_extractor=WhisperFeatureExtractor(feature_size=config.num_mel_bins),
                tokenizer=tokenizer,
            )
            _generation_config(model, tokenizer, m.tokenizer)
        model.generation_config.forced_decoder_ids = None
        model.config.forced_decoder_ids = None
        if m.freeze_encoder:
            model.model.encoder.requires_grad_(False)
        return cls(recipe, model, processor)

    # --- data ---------------------------------------------------------------------------
    def prompt(self, language: str | None) -> list[int]:
        m = self.recipe.model
        return whisper_prompt(self.tok, m.language or language, m.task)

    def prepare_train(self, s: RawSample) -> dict | None:
        """A training sample: with timestamps for data.timestamp_share of the keys."""
        share = self.recipe.data.timestamp_share
        return self.prepare(s, timestamps=share > 0 and key_fraction(s.key) < share)

    def prepare(self, s: RawSample, timestamps: bool = False) -> dict | None:
        text = s.text(self.recipe.data.text_field).strip()
        prompt = self.prompt(s.meta.get("language"))
        # Whisper's own transcripts start with a space token (" The"): train it the same way
        tokens = self.tok.encode(" " + text, add_special_tokens=False) if text else []
        first = self.tok.convert_tokens_to_ids("<|0.00|>")
        if timestamps and tokens and first not in (None, self.tok.unk_token_id):
            # one segment over the whole sample: <|0.00|> text <|end|>, in 20 ms steps
            end = min(int(s.duration / TIME_STEP), int(WINDOW_S / TIME_STEP))
            prompt = prompt[:-1]  # no <|notimestamps|>
            tokens = [first, *tokens, first + end]
        seq = prompt + tokens + [self.eot]
        limit = min(self.recipe.data.max_label_tokens, self.model.config.max_target_positions)
        if len(seq) > limit:
            log.warning("%s: %s: text too long (%d tokens); skipped", s.shard, s.key, len(seq))
            return None
        feats = self.processor.feature_extractor(
            s.audio(), sampling_rate=16000, return_tensors="np"
        ).input_features[0]
        labels = [PAD_LABEL] * (len(prompt) - 1) + seq[len(prompt) :]
        return {"input_features": feats, "decoder_input_ids": seq[:-1], "labels": labels}

    def collate(self, items: list[dict]) -> dict:
        n = max(len(it["decoder_input_ids"]) for it in items)
        dec = torch.full((len(items), n), self.eot, dtype=torch.long)
        lab = torch.full((len(items), n), PAD_LABEL, dtype=torch.long)
        for i, it in enumerate(items):
            dec[i, : len(it["decoder_input_ids"])] = torch.tensor(it["decoder_input_ids"])
            lab[i, : len(it["labels"])] = torch.tensor(it["labels"])
        feats = torch.from_numpy(np.stack([it["input_features"] for it in items]))
        return {"input_features": feats, "decoder_input_ids": dec, "labels": lab}

    def tokens_in(self, batch: dict) -> int:
        return int((batch["labels"] != PAD_LABEL).sum())

    # --- prediction ---------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model, batch: dict, max_new_tokens: int) -> list[str]:
        """Greedy decoding from each sample's prompt (the prompt is in decoder_input_ids)."""
        prompts = []
        for row, lab in zip(batch["decoder_input_ids"], batch["labels"]):
            k = int((lab == PAD_LABEL).long().cumprod(0).sum()) + 1  # prompt length
            prompts.append(row[:k].tolist())
        device = next(model.parameters()).device
        feats = batch["input_features"].to(device, dtype=next(model.parameters()).dtype)
        out = greedy_decode(model, feats, prompts, max_new_tokens, self.eot)
        return [self.tok.decode(ids, skip_special_tokens=True).strip() for ids in out]

    def save(self, model, out: Path) -> None:
        model.save_pretrained(out, safe_serialization=True)
        self.processor.save_pretrained(out)


def key_fraction(key: str) -> float:
    """A number in [0, 1) fixed by the sample's key: which samples get timestamps, the same in
    every epoch, process and run."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _ctranslate2_folder(name: str) -> Path | None:
    """The CTranslate2 Whisper folder a model.name means (offline:base, offline:tiny.en, or a
    folder holding model.bin), found as asr transcribe finds it; None for anything else."""
    from asr.models import resolve_model

    if name.startswith(OFFLINE_MODEL):
        info = resolve_model(name[len(OFFLINE_MODEL) :])
    elif (Path(name) / "model.bin").is_file():
        info = resolve_model(name)
    else:
        return None
    if info.kind != "whisper":
        raise ValueError(f"model.name {name}: a CTranslate2 {info.kind} model, not Whisper")
    return info.path


def whisper_prompt(tok, language: str | None, task: str = "transcribe") -> list[int]:
    """Start of transcript, language and task (multilingual models), no timestamps."""
    from asr.train.from_ctranslate2 import is_multilingual

    ids = tok.convert_tokens_to_ids
    prompt = [ids("<|startoftranscript|>")]
    if is_multilingual(tok):
        lang_id = ids(f"<|{language or 'en'}|>")
        if lang_id in (None, tok.unk_token_id):
            raise ValueError(f"language '{language}' unknown to the Whisper tokenizer")
        prompt += [lang_id, ids(f"<|{task}|>")]
    return prompt + [ids("<|notimestamps|>")]


def whisper_tokenizer(source: str):
    """A Whisper tokenizer from a hub id or folder, or the offline multilingual base model's."""
    from transformers import WhisperTokenizerFast

    if source == OFFLINE_WHISPER_TOKENIZER:
        from asr.models import offline_base_path

        return WhisperTokenizerFast(tokenizer_file=str(offline_base_path() / "tokenizer.json"))
    return WhisperTokenizerFast.from_pretrained(source)


def _generation_config(model, tokenizer, source: str | None) -> None:
    """Generation settings a random-initialised Whisper needs to be exported and decoded:
    language and task ids, and the suppressed tokens (from the offline base model)."""
    g = model.generation_config
    g._from_model_config = False  # else from_pretrained rebuilds it from config.json, losing these
    g.decoder_start_token_id = model.config.decoder_start_token_id
    g.eos_token_id = g.pad_token_id = model.config.eos_token_id
    g.no_timestamps_token_id = tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    vocab = tokenizer.get_vocab()
    langs = {t: i for t, i in vocab.items() if len(t) <= 9 and t[2:-2].isalpha() and t[:2] == "<|"}
    langs = {t: i for t, i in langs.items() if t[2:-2].islower() and len(t[2:-2]) in (2, 3)}
    g.lang_to_id = dict(sorted(langs.items(), key=lambda kv: kv[1]))
    g.task_to_id = {
        "transcribe": tokenizer.convert_tokens_to_ids("<|transcribe|>"),
        "translate": tokenizer.convert_tokens_to_ids("<|translate|>"),
    }
    g.is_multilingual = len(g.lang_to_id) > 1
    if source == OFFLINE_WHISPER_TOKENIZER:
        from asr.models import offline_base_path

        cfg = json.loads((offline_base_path() / "config.json").read_text(encoding="utf-8"))
        g.suppress_tokens = cfg["suppress_ids"]
        g.begin_suppress_tokens = cfg["suppress_ids_begin"]
        g.lang_to_id = {t: i for t, i in g.lang_to_id.items() if i in set(cfg["lang_ids"])}
    else:
        g.suppress_tokens = []
        g.begin_suppress_tokens = [tokenizer.convert_tokens_to_ids("Ġ"), model.config.eos_token_id]


@torch.no_grad()
def greedy_decode(model, features, prompts: list[list[int]], max_new_tokens: int, eot: int):
    """Plain greedy decoding with the key/value cache: no suppression, no timestamps rules,
    so that it is the reference the exported model is compared with (same prompts)."""
    device = features.device
    enc = model.model.encoder(features).last_hidden_state
    n = len(prompts)
    k = max(len(p) for p in prompts)
    if any(len(p) != k for p in prompts):  # prompts differ in length: decode one by one
        return [
            greedy_decode(model, features[i : i + 1], [p], max_new_tokens, eot)[0]
            for i, p in enumerate(prompts)
        ]
    ids = torch.tensor(prompts, device=device)
    out: list[list[int]] = [[] for _ in range(n)]
    done = torch.zeros(n, dtype=torch.bool, device=device)
    # transformers 5 calls the key/value cache `cache`; 4.x called it `past_key_values`
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else None
    cache_arg = cache_arg or "past_key_values"
    cache = None
    step_ids = ids
    for _ in range(max_new_tokens):
        o = model(
            encoder_outputs=(enc,), decoder_input_ids=step_ids, use_cache=True, **{cache_arg: cache}
        )
        cache = getattr(o, "cache", None) or o.past_key_values
        nxt = o.logits[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, eot), nxt)
        for i in range(n):
            if not done[i] and int(nxt[i]) != eot:
                out[i].append(int(nxt[i]))
        done |= nxt == eot
        if bool(done.all()):
            break
        step_ids = nxt[:, None]
    return out


class CtcTask:
    """wav2vec2 with a CTC head: normalised waveform in, characters out (| between words)."""

    kind = "ctc"

    def __init__(self, recipe: Recipe, model, processor):
        self.recipe, self.model, self.processor = recipe, model, processor
        self.tok = processor.tokenizer
        self.fe = processor.feature_extractor

    @classmethod
    def build(cls, recipe: Recipe, run_dir: Path, shard_dir: Path, main: bool) -> CtcTask:
        from transformers import (
            Wav2Vec2Config,
            Wav2Vec2CTCTokenizer,
            Wav2Vec2FeatureExtractor,
            Wav2Vec2ForCTC,
            Wav2Vec2Processor,
        )

        m = recipe.model
        vocab_file = run_dir / "vocab.json"
        if not vocab_file.is_file():
            if not main:
                raise RuntimeError(f"{vocab_file}: missing (the main process writes it first)")
            vocab = build_vocab(
                _shard_texts(shard_dir, recipe.data.train_split, recipe.data.text_field),
                m.vocab_min_count,
            )
            tmp = vocab_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(vocab, ensure_ascii=False, indent=1), encoding="utf-8")
            tmp.replace(vocab_file)
        tokenizer = Wav2Vec2CTCTokenizer(
            str(vocab_file),
            unk_token="<unk>",
            pad_token="<pad>",
            word_delimiter_token="|",
            bos_token=None,
            eos_token=None,
        )
        overrides = {
            **m.config,
            **_augment_config(recipe),
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "ctc_loss_reduction": "mean",
            "ctc_zero_infinity": True,
        }
        if m.init == "pretrained":
            fe = Wav2Vec2FeatureExtractor.from_pretrained(m.name)
            # the CTC head is new (our vocabulary): its size differs from any saved head
            model = Wav2Vec2ForCTC.from_pretrained(
                m.name, ignore_mismatched_sizes=True, **overrides
            )
        else:
            base = Wav2Vec2Config.from_pretrained(m.name).to_dict() if m.name else {}
            base.update(overrides)
            config = Wav2Vec2Config(**base)
            fe = Wav2Vec2FeatureExtractor(
                feature_size=1,
                sampling_rate=16000,
                padding_value=0.0,
                do_normalize=True,
                return_attention_mask=config.feat_extract_norm == "layer",
            )
            torch.manual_seed(recipe.train.seed)
            model = Wav2Vec2ForCTC(config)
        if m.freeze_feature_encoder:
            model.freeze_feature_encoder()
        return cls(recipe, model, Wav2Vec2Processor(feature_extractor=fe, tokenizer=tokenizer))

    def prepare_train(self, s: RawSample) -> dict | None:
        """A training sample: as any other (CTC has no timestamps)."""
        return self.prepare(s)

    def prepare(self, s: RawSample) -> dict | None:
        text = " ".join(s.text(self.recipe.data.text_field).split())
        labels = self.tok(text).input_ids
        audio = s.audio()
        if not labels:
            return None
        if len(labels) > audio.size // 320:  # CTC needs a frame (20 ms) per label at least
            log.warning("%s: %s: more characters than frames; skipped", s.shard, s.key)
            return None
        values = self.fe(audio, sampling_rate=16000, return_tensors="np").input_values[0]
        return {"input_values": values.astype(np.float32), "labels": labels}

    def collate(self, items: list[dict]) -> dict:
        n = max(it["input_values"].size for it in items)
        x = torch.zeros(len(items), n)
        mask = torch.zeros(len(items), n, dtype=torch.long)
        m = max(len(it["labels"]) for it in items)
        lab = torch.full((len(items), m), PAD_LABEL, dtype=torch.long)
        for i, it in enumerate(items):
            v = it["input_values"]
            x[i, : v.size] = torch.from_numpy(v)
            mask[i, : v.size] = 1
            lab[i, : len(it["labels"])] = torch.tensor(it["labels"])
        batch = {"input_values": x, "labels": lab}
        if self.fe.return_attention_mask:
            batch["attention_mask"] = mask
        else:
            batch["_lengths"] = mask.sum(1)
        return batch

    def tokens_in(self, batch: dict) -> int:
        return int((batch["labels"] != PAD_LABEL).sum())

    @torch.no_grad()
    def predict(self, model, batch: dict, max_new_tokens: int = 0) -> list[str]:
        device = next(model.parameters()).device
        x = batch["input_values"].to(device, dtype=next(model.parameters()).dtype)
        mask = batch.get("attention_mask")
        logits = model(x, attention_mask=mask.to(device) if mask is not None else None).logits
        lengths = mask.sum(-1) if mask is not None else batch["_lengths"]
        frames = model._get_feat_extract_output_lengths(lengths.to(device))
        ids = logits.argmax(-1)
        return [self.tok.decode(ids[i, : int(frames[i])].tolist()) for i in range(ids.shape[0])]

    def save(self, model, out: Path) -> None:
        model.save_pretrained(out, safe_serialization=True)
        self.processor.save_pretrained(out)


def build_vocab(texts, min_count: int = 1) -> dict[str, int]:
    """A character vocabulary: <pad> (the CTC blank) first, <unk>, | between words, then every
    character seen at least min_count times, in code-point order (deterministic)."""
    counts = Counter(c for t in texts for c in " ".join(t.split()) if c != " ")
    chars = sorted(c for c, n in counts.items() if n >= min_count and c not in "|")
    if not chars:
        raise ValueError("no training text to build a CTC vocabulary from")
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2}
    for c in chars:
        vocab[c] = len(vocab)
    return vocab


TASKS = {"whisper": WhisperTask, "ctc": CtcTask}
