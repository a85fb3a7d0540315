"""Audio: reading and refusing files, resampling, mel filters, crop/pad, the pretrained audio backbones
(GE2E speaker similarity, CREPE pitch, aiSFX safe loading), trained groups, transformers encoders,
and an end-to-end search on spoken digits synthesised with espeak-ng."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import soundfile
import torch

import automl_tl
from automl_tl import InputOptions, SearchConfig
from automl_tl import weights as weights_module  # where packaged weights are found
from automl_tl.data.readers import AUDIO_EXTENSIONS, read_audio
from automl_tl.errors import DataError, WeightsNotFoundError
from automl_tl.modalities.audio import AudioPreprocessor, MelSpectrogram, hz_to_mel, mel_filterbank, mel_to_hz
from automl_tl.train.executor import Executor
from automl_tl_audio import (
    AisfxBackbone,
    CrepeBackbone,
    GE2EBackbone,
    TransformersAudioBackbone,
    WeightsMismatchError,
    bins_to_hz,
    hz_to_bins,
    offline_backbones,
)
from automl_tl_audio.aisfx import AISFX, numpy_checkpoint_globals

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def sine(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def needs_weights(backbone):
    return pytest.mark.skipif(not backbone.weights_available(), reason=f"{backbone.weight_source} is not installed")


# ---------------------------------------------------------------- reading files


def _bad_files(folder):
    soundfile.write(folder / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    soundfile.write(folder / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(200)))
    (folder / "noise.flac").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)))
    (folder / "song.mp3").write_bytes(b"ID3\x03" + bytes(100))
    (folder / "notes.xyz").write_bytes(b"hello")
    return {
        "empty.wav": "empty",
        "silent.wav": "silent",
        "corrupt.wav": "cannot read",
        "noise.flac": "cannot read",
        # (libsndfile reads MP3 from 1.1 on: a broken one is then corrupt, not unsupported)
        "song.mp3": "cannot read" if ".mp3" in AUDIO_EXTENSIONS else "unsupported audio format",
        "notes.xyz": "unsupported audio format",
        "missing.ogg": "not found",
    }


def test_read_audio_refuses_bad_files_naming_them(tmp_path):
    for name, words in _bad_files(tmp_path).items():
        with pytest.raises(DataError) as caught:
            read_audio(tmp_path / name)
        message = str(caught.value)
        assert str(tmp_path / name) in message and words in message, message
        assert "\n" not in message


def test_read_audio_mixes_to_mono_and_resampling_keeps_the_frequency(tmp_path):
    left, right = sine(440, 8000), sine(440, 8000, amplitude=0.1)
    soundfile.write(tmp_path / "stereo.flac", np.stack([left, right], axis=1), 8000)
    mono = read_audio(tmp_path / "stereo.flac")
    assert mono.dtype == np.float32 and mono.shape == (8000,)
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-4)  # flac stores 16-bit samples
    for rate in (16000, 44100):
        resampled = read_audio(tmp_path / "stereo.flac", rate)
        assert resampled.dtype == np.float32 and len(resampled) == rate
        assert peak_frequency(resampled, rate) == pytest.approx(440, abs=2)
    soundfile.write(tmp_path / "tone.ogg", sine(1000, 22050), 22050)
    assert peak_frequency(read_audio(tmp_path / "tone.ogg", 16000), 16000) == pytest.approx(1000, abs=2)


# ---------------------------------------------------------------- features and the preprocessor


def test_mel_filterbank_matches_librosa():
    # values printed by librosa 0.11: librosa.filters.mel(sr=16000, n_fft=400, n_mels=40), the GE2E features
    slaney = mel_filterbank(16000, 400, 40).numpy()
    np.testing.assert_allclose(slaney[5, 10:13], [0.00593974, 0.01332995, 0.00646478], rtol=1e-5)
    np.testing.assert_allclose(
        slaney[30][slaney[30] > 0][:4], [9.7036114e-05, 6.1071239e-04, 1.1243887e-03, 1.6380650e-03], rtol=1e-4
    )
    assert slaney.sum() == pytest.approx(0.9994972, rel=1e-5)
    # librosa.mel_frequencies(n_mels=5, fmax=8000) with and without htk
    edges = np.linspace(0, hz_to_mel(8000.0), 5)
    np.testing.assert_allclose(mel_to_hz(edges), [0, 754.09400787, 1688.90846266, 3675.76763429, 8000], rtol=1e-6)
    edges = np.linspace(0, hz_to_mel(8000.0, "htk"), 5)
    np.testing.assert_allclose(
        mel_to_hz(edges, "htk"), [0, 614.32673833, 1767.79253585, 3933.55102075, 8000], rtol=1e-6
    )
    # Essentia's unit_sum: every band's weights sum to one (aiSFX's features)
    unit_sum = mel_filterbank(44100, 2048, 96, scale="htk", norm="unit_sum", triangles="mel")
    np.testing.assert_allclose(unit_sum.sum(dim=1).numpy(), 1.0, rtol=1e-5)


def test_mel_spectrogram_finds_a_tone_and_is_not_in_the_state_dict():
    features = MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=40)
    mel = features(torch.from_numpy(sine(1000, 16000))[None])
    assert mel.shape == (1, 40, 101)
    centres = mel_to_hz(np.linspace(0, hz_to_mel(8000.0), 42)[1:-1])
    assert abs(centres[int(mel[0].mean(dim=1).argmax())] - 1000) < 150
    assert features.state_dict() == {}  # computed filters, not weights


def test_preprocessor_crops_and_pads():
    pre = AudioPreprocessor(sample_rate=100, clip_seconds=1.0)
    long, short = torch.arange(250, dtype=torch.float32), torch.ones(40)
    batch = pre.collate([long, short], train=False)
    assert batch.shape == (2, 100) and batch.dtype == torch.float32
    assert batch[0, 0] == 75  # centre crop: (250 - 100) // 2
    assert batch[1, :40].eq(1).all() and batch[1, 40:].eq(0).all()  # zero padding at the end
    torch.manual_seed(0)
    starts = {int(pre.collate([long], train=True)[0, 0]) for _ in range(20)}
    assert len(starts) > 5 and min(starts) >= 0 and max(starts) <= 150  # random crops inside the recording
    assert json.loads(json.dumps(pre.describe())) == pre.describe()


# ---------------------------------------------------------------- pretrained backbones


@needs_espeak
@needs_weights(GE2EBackbone("ge2e-speaker"))
def test_ge2e_tells_two_espeak_voices_apart(tmp_path):
    sentences = (
        "The quick brown fox jumps over the lazy dog near the river bank.",
        "She sells sea shells by the sea shore every summer morning.",
    )
    clips = {}
    for voice in ("m7", "f4"):  # a male and a female espeak-ng variant
        for i, text in enumerate(sentences):
            path = tmp_path / f"{voice}-{i}.wav"
            subprocess.run(["espeak-ng", "-v", f"en-us+{voice}", "-w", str(path), text], check=True, timeout=60)
            clips[voice, i] = torch.from_numpy(read_audio(path, 16000))
    body = GE2EBackbone("ge2e-speaker").build(2).body.eval()
    keys = list(clips)
    # one batch, zero-padded to the longest clip: the encoder reads each clip's last frame with sound
    batch = torch.nn.utils.rnn.pad_sequence([clips[key] for key in keys], batch_first=True)
    with torch.no_grad():
        embedding = dict(zip(keys, body(batch)))
    same_voice = [float(embedding[v, 0] @ embedding[v, 1]) for v in ("m7", "f4")]
    same_words = [float(embedding["m7", i] @ embedding["f4", i]) for i in (0, 1)]
    assert min(same_voice) > max(same_words) + 0.1, (same_voice, same_words)


@needs_weights(CrepeBackbone("crepe-tiny", "tiny"))
def test_crepe_tiny_finds_the_pitch_of_a_sine():
    assert float(bins_to_hz(0)) == pytest.approx(31.70, abs=0.01)  # cents 1997.38 above 10 Hz
    assert float(bins_to_hz(359)) == pytest.approx(2005.5, abs=0.1)  # 7180 cents higher
    assert float(hz_to_bins(bins_to_hz(123.4))) == pytest.approx(123.4)
    net = CrepeBackbone("crepe-tiny", "tiny").pitch_model()
    waves = torch.from_numpy(np.stack([sine(440, 16000, 0.5), sine(220, 16000, 0.5)]))
    with torch.no_grad():
        activations = net.pitch_activations(waves)
    for row, freq in enumerate((440, 220)):
        estimate = float(bins_to_hz(activations[row].argmax(dim=1).double()).median())
        assert abs(estimate - freq) / freq < 0.05, (freq, estimate)


@needs_weights(AisfxBackbone("aisfx"))
def test_aisfx_loads_only_with_the_three_allowed_globals(monkeypatch):
    path = AISFX.find()
    with pytest.raises(Exception):  # plain weights_only=True refuses its numpy scalars
        torch.load(path, map_location="cpu", weights_only=True)
    assert len(numpy_checkpoint_globals()) == 3
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = AisfxBackbone("aisfx").build(3)
    assert calls == [True]
    with torch.no_grad():
        embedding = model.eval().embed(torch.from_numpy(sine(1000, 44100, 0.5))[None])
    assert embedding.shape == (1, 512) and torch.isfinite(embedding).all()


def test_weights_missing_or_mismatched_are_clear_errors(monkeypatch, tmp_path):
    backbone = GE2EBackbone("ge2e-speaker")
    with monkeypatch.context() as patch:
        patch.setattr(weights_module, "package_folder", lambda module: None)
        assert not backbone.weights_available()
        with pytest.raises(WeightsNotFoundError, match="pip install --no-deps resemblyzer==0.1.4"):
            backbone.build(2)
        backbone.build(2, pretrained=False)  # the architecture needs no weights
    broken = tmp_path / "pretrained.pt"
    state = {k: v for k, v in backbone.make_body().state_dict().items() if k != "linear.bias"}
    torch.save({"model_state": state}, broken)
    with pytest.raises(WeightsMismatchError, match=str(broken)):
        backbone.load_weights(backbone.make_body(), broken)


@pytest.mark.parametrize("backbone", offline_backbones(), ids=lambda b: b.name)
def test_trained_groups_train_exactly_the_last_groups(backbone):
    model = backbone.build(num_classes=3, pretrained=False)
    expected_groups = {"ge2e-speaker": 3, "crepe-tiny": 6, "crepe-full": 6, "aisfx": 4}[backbone.name]
    assert model.num_groups == expected_groups and backbone.modality == "audio"
    for depth in range(model.num_groups + 2):
        model.set_trained_groups(depth)
        trained = {name for name, p in model.body.named_parameters() if p.requires_grad}
        expected = {name for group in model.layer_groups[max(0, model.num_groups - depth) :] for name in group}
        assert trained == expected, (backbone.name, depth)
        assert all(p.requires_grad for p in model.head.parameters())
    if backbone.name != "crepe-full":  # its forward pass costs seconds on a CPU
        clip = torch.from_numpy(sine(300, backbone.sample_rate, 0.3))[None].repeat(2, 1)
        model.set_trained_groups(1)
        model.train()
        model(clip).sum().backward()
        last = model.layer_groups[-1]
        grads = {name: p.grad for name, p in model.body.named_parameters()}
        assert all(grads[name] is not None for name in last) and grads[model.layer_groups[0][0]] is None
        assert model.embed(clip).shape == (2, backbone.embedding_dim)


def test_transformers_audio_backbone_from_a_local_checkpoint(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    saved = Wav2Vec2Model(config)
    saved.save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(tmp_path)

    backbone = TransformersAudioBackbone("test/wav2vec2", tmp_path)
    assert backbone.weights_available() and backbone.sample_rate == 16000 and backbone.embedding_dim == 32
    model = backbone.build(num_classes=4)
    torch.testing.assert_close(
        model.body.model.encoder.layers[1].feed_forward.output_dense.weight,
        saved.encoder.layers[1].feed_forward.output_dense.weight,
    )
    assert model.num_groups == 3  # feature encoder + projection, then one group per encoder layer
    assert model.layer_groups[0][0].startswith("model.") and all(
        name.startswith("model.encoder.layers.1.") for name in model.layer_groups[-1]
    )
    model.set_trained_groups(1)
    assert {n for n, p in model.body.named_parameters() if p.requires_grad} == set(model.layer_groups[-1])
    batch = backbone.preprocessor(InputOptions(clip_seconds=0.5)).collate([torch.randn(12000)], train=False)
    assert model.eval()(batch).shape == (1, 4)
    missing = TransformersAudioBackbone("test/missing", tmp_path / "nowhere")
    assert not missing.weights_available()
    with pytest.raises(WeightsNotFoundError, match="nowhere"):
        missing.build(2)


# ---------------------------------------------------------------- end to end


@needs_espeak
@needs_weights(GE2EBackbone("ge2e-speaker"))
def test_search_on_spoken_digits_then_predict(tmp_path):
    from automl_tl_datasets.audio import make_spoken_digits

    frame = make_spoken_digits(tmp_path / "digits", voices=8, words=("one", "two", "three"))
    assert len(frame) == 24 and set(frame.columns) >= {"audio", "label", "voice"}
    first = tmp_path / "digits" / frame.voice[0] / "one.wav"
    stamp = first.stat().st_mtime_ns
    make_spoken_digits(tmp_path / "digits", voices=8, words=("one", "two", "three"))
    assert first.stat().st_mtime_ns == stamp  # cached, not synthesised again

    data = automl_tl.prepare_dataset(frame[["audio", "label"]], label_column="label", seed=0)
    assert data.modality == "audio"
    config = SearchConfig(
        backbones=("ge2e-speaker",),
        n_trials=2,
        max_epochs=1,
        max_trained_groups=1,
        input_options=InputOptions(clip_seconds=1.0),
        batch_size=8,
    )
    outcome = automl_tl.run_search(data, config, tmp_path / "run", Executor(device="cpu", show_progress=False))
    assert outcome.leaderboard["state"].isin(["COMPLETE", "PRUNED"]).all()
    predictor = automl_tl.load(tmp_path / "run", device="cpu")
    predicted = predictor.predict(list(frame.audio[:4]))
    assert len(predicted) == 4 and set(predicted) <= {"one", "two", "three"}

    _bad_files(tmp_path)
    broken = frame[["audio", "label"]].copy()
    broken.loc[3, "audio"] = str(tmp_path / "silent.wav")
    with pytest.raises(DataError, match="silent.wav"):
        automl_tl.prepare_dataset(broken, label_column="label", on_bad_input="error")
    kept = automl_tl.prepare_dataset(broken, label_column="label")  # by default skipped: 1 row of 24
    assert [(row.row, row.kind) for row in kept.skipped] == [(3, "silent")]
