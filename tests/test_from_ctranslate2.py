"""Fine-tuning starts from a CTranslate2 Whisper folder: the Hugging Face model rebuilt from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asr import audio
from asr.models import resolve_model
from asr.train.from_ctranslate2 import CTranslate2FormatError, load_whisper, read_model_bin


def _random_whisper(folder, vocab_from):
    """A small random Whisper saved in Hugging Face format, with a real Whisper tokenizer."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    tok = load_whisper(vocab_from)[1].tokenizer
    eot, sot = tok.convert_tokens_to_ids(["<|endoftext|>", "<|startoftranscript|>"])
    config = WhisperConfig(
        vocab_size=len(tok),
        d_model=64,
        encoder_layers=2,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=96,
        max_source_positions=1500,
        max_target_positions=64,
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        bos_token_id=eot,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    with torch.no_grad():  # no parameter left at a value a wrong mapping could also give
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model


def test_rebuilt_model_has_every_weight_of_the_converted_one(tmp_path):
    """A model through ctranslate2's own converter (float32) and back: every tensor equal."""
    import ctranslate2

    hf = tmp_path / "hf"
    model = _random_whisper(hf, resolve_model("base").path)
    ct2 = tmp_path / "ct2"
    convert = ctranslate2.converters.TransformersConverter
    convert(str(hf), copy_files=["tokenizer.json"]).convert(str(ct2), quantization="float32")
    rebuilt, processor = load_whisper(ct2)
    assert (rebuilt.config.decoder_layers, rebuilt.config.decoder_ffn_dim) == (3, 96)
    want, got = model.state_dict(), rebuilt.state_dict()
    assert set(got) == set(want)
    for name, tensor in want.items():
        if name.endswith("k_proj.bias"):
            continue
        assert torch.equal(got[name], tensor), name
    assert (
        rebuilt.proj_out.weight.data_ptr() == rebuilt.model.decoder.embed_tokens.weight.data_ptr()
    )
    assert processor.feature_extractor.feature_size == 80

    int8 = tmp_path / "int8"
    convert(str(hf), copy_files=["tokenizer.json"]).convert(str(int8), quantization="int8")
    with pytest.raises(CTranslate2FormatError, match=r"int8.*quantised.*float16"):
        load_whisper(int8)
    (tmp_path / "cut").mkdir()
    data = (ct2 / "model.bin").read_bytes()
    (tmp_path / "cut" / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CTranslate2FormatError, match="truncated"):
        read_model_bin(tmp_path / "cut" / "model.bin")


def _greedy_hf(model, feats, prompt, eot, steps=120):
    """Greedy decoding with the Hugging Face model: tokens and each step's logits."""
    with torch.no_grad():
        enc = model.model.encoder(torch.from_numpy(feats)).last_hidden_state
        seq, steps_logits = list(prompt), []
        for _ in range(steps):
            logits = model(encoder_outputs=(enc,), decoder_input_ids=torch.tensor([seq])).logits
            steps_logits.append(logits[0, -1].float().numpy())
            if int(steps_logits[-1].argmax()) == eot:
                break
            seq.append(int(steps_logits[-1].argmax()))
    return seq[len(prompt) :], enc.numpy(), steps_logits


@pytest.mark.parametrize("name, clips", [("tiny.en", 3), ("base", 2)])
def test_rebuilt_whisper_decodes_as_ctranslate2_does(name, clips, realspeech):
    """Real weights, real speech: greedy transcripts of the rebuilt model equal ctranslate2's on
    the same folder (float32 on both sides); encoder outputs and logits agree."""
    import ctranslate2

    folder = resolve_model(name).path
    model, processor = load_whisper(folder)
    tok = processor.tokenizer
    multilingual = model.generation_config.is_multilingual
    assert multilingual == (name == "base")
    ct = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    ids = tok.convert_tokens_to_ids
    eot = ids("<|endoftext|>")
    prompt = [ids("<|startoftranscript|>")]
    prompt += [ids("<|en|>"), ids("<|transcribe|>")] if multilingual else []
    prompt += [ids("<|notimestamps|>")]
    worst_enc = worst_logit = 0.0
    for wav in sorted((realspeech / "ljspeech_coqui").glob("*.wav"))[:clips]:
        feats = processor.feature_extractor(
            audio.load(wav), sampling_rate=16000, return_tensors="np"
        ).input_features
        r = ct.generate(
            ctranslate2.StorageView.from_array(feats),
            [prompt],
            beam_size=1,
            suppress_blank=False,
            suppress_tokens=[],
            return_logits_vocab=True,
        )[0]
        hf_ids, enc, hf_logits = _greedy_hf(model, feats, prompt, eot)
        assert tok.decode(hf_ids).strip(), wav
        assert hf_ids == r.sequences_ids[0], (wav, tok.decode(hf_ids), r.sequences[0])
        ct_enc = np.array(ct.encode(ctranslate2.StorageView.from_array(feats), to_cpu=True))
        worst_enc = max(worst_enc, float(np.abs(ct_enc - enc).max()))
        for ours, theirs in zip(hf_logits, r.logits[0]):  # one per step
            theirs = np.array(theirs)
            kept = theirs > -1e30  # the tokens ctranslate2 suppresses hold -3.4e38
            worst_logit = max(worst_logit, float(np.abs(ours[kept] - theirs[kept]).max()))
    print(f"{name}: largest difference: encoder output {worst_enc:.2e}, logit {worst_logit:.2e}")
    assert worst_enc < 1e-2 and worst_logit < 1e-2


def test_the_cpu_fine_tuning_recipe_starts_from_the_offline_base_model(tmp_path):
    """recipes/whisper-finetune-cpu.yaml: model.name offline:base is the CTranslate2 folder
    asr transcribe runs, rebuilt with its weights, the encoder frozen, multilingual prompts."""
    from pathlib import Path

    from asr.train.recipe import load_recipe
    from asr.train.tasks import WhisperTask

    recipe = load_recipe(Path(__file__).parents[1] / "recipes/whisper-finetune-cpu.yaml")
    assert recipe.model.name == "offline:base"
    task = WhisperTask.build(recipe, tmp_path, tmp_path, main=True)
    base = read_model_bin(resolve_model("base").path / "model.bin")
    assert task.model.config.encoder_layers == 6 and task.model.generation_config.is_multilingual
    assert torch.equal(
        task.model.model.decoder.embed_tokens.weight,
        torch.from_numpy(base.get("decoder/embeddings/weight").astype(np.float32)),
    )
    assert not any(p.requires_grad for p in task.model.model.encoder.parameters())  # frozen
    assert task.prompt("de")[:3] == task.tok.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|de|>", "<|transcribe|>"]
    )


def test_a_share_of_training_targets_carries_whisper_timestamps(tmp_path, realspeech):
    """data.timestamp_share: those training samples' targets are `<|0.00|> text <|end|>`
    without <|notimestamps|>, chosen by key (the same every time); dev samples never. The
    targets are Whisper's own format: the real base model finds them about as likely as the
    plain ones, and a wrong end time much less likely."""
    import io
    from pathlib import Path

    import soundfile as sf

    from asr.audio import load
    from asr.train.data import RawSample
    from asr.train.recipe import load_recipe
    from asr.train.tasks import PAD_LABEL, WhisperTask

    recipe = load_recipe(
        Path(__file__).parents[1] / "recipes/whisper-finetune-cpu.yaml",
        ["data.timestamp_share=0.5"],
    )
    task = WhisperTask.build(recipe, tmp_path, tmp_path, main=True)
    audio = load(realspeech / "ljspeech_coqui/LJ001-0002.wav")
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="FLAC")
    text = "in being comparatively modern."
    meta = {"text": text, "language": "en", "duration": audio.size / 16000}

    def sample(key: str) -> RawSample:
        return RawSample(key, "shard-000000.tar", buf.getvalue(), meta)

    ids = task.tok.convert_tokens_to_ids
    first, no_ts = ids("<|0.00|>"), ids("<|notimestamps|>")
    chosen = [
        k
        for k in (f"rec{i}" for i in range(200))
        if first in task.prepare_train(sample(k))["labels"]
    ]
    assert 70 <= len(chosen) <= 130
    assert chosen == [
        k
        for k in (f"rec{i}" for i in range(200))
        if first in task.prepare_train(sample(k))["labels"]
    ]
    item = task.prepare_train(sample(chosen[0]))
    assert no_ts not in item["decoder_input_ids"]
    labels = [t for t in item["labels"] if t != PAD_LABEL]
    end = first + int(meta["duration"] / 0.02)
    assert labels[0] == first and labels[-2] == end and labels[-1] == task.eot
    assert task.tok.decode(labels[1:-2]).strip() == text
    plain = task.prepare(sample(chosen[0]))  # dev: never timestamps
    assert no_ts in plain["decoder_input_ids"] and first not in plain["labels"]

    def loss(it: dict) -> float:
        batch = task.collate([it])
        with torch.no_grad():
            out = task.model(
                input_features=batch["input_features"],
                decoder_input_ids=batch["decoder_input_ids"],
                labels=batch["labels"],
            )
        return float(out.loss)

    wrong = dict(item)
    wrong["labels"] = [end - 40 if t == end else t for t in item["labels"]]  # 0.8 s early
    wrong["decoder_input_ids"] = [end - 40 if t == end else t for t in item["decoder_input_ids"]]
    assert loss(item) < loss(plain) + 0.5
    assert loss(wrong) > loss(item) + 0.05
