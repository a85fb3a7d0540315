"""The transformers text plugin: offline MiniLM embeddings, layer groups and trained groups, tokenisation,
building without weights, joining split checkpoints, and a small end-to-end search on BBC News."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import socket
import threading
import zipfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never reach a model hub

from automl_tl.errors import AutomlTLError, ConfigError, WeightsNotFoundError  # noqa: E402
from automl_tl.inputs import InputOptions
from automl_tl_text import TextPreprocessor, TransformersTextBackbone  # noqa: E402
from automl_tl_text.offline import (  # noqa: E402
    MARKER_FILE,
    OFFLINE_CHECKPOINTS,
    CorruptCheckpointError,
    PartFile,
    checkpoint_installed,
    join_split_zip,
)

MINILM = OFFLINE_CHECKPOINTS["all-MiniLM-L6-v2"]
needs_minilm = pytest.mark.skipif(
    not checkpoint_installed(MINILM), reason=f"offline MiniLM not installed ({MINILM.pip_command})"
)


@pytest.fixture(scope="module")
def minilm() -> TransformersTextBackbone:
    return TransformersTextBackbone("all-MiniLM-L6-v2", "all-MiniLM-L6-v2", weights="offline", max_length=64)


@pytest.fixture(scope="module")
def minilm_model(minilm):
    torch.manual_seed(0)
    return minilm.build(num_classes=3)


# ---------------------------------------------------------------- embeddings


@needs_minilm
def test_minilm_paraphrases_are_closer_than_unrelated_sentences(minilm, minilm_model):
    pairs = [
        ("A man is playing a guitar.", "Someone is playing an instrument."),
        ("The cat sleeps on the sofa.", "A kitten is napping on the couch."),
        ("Interest rates were raised by the central bank.", "The bank increased its lending rates."),
    ]
    unrelated = [
        ("A man is playing a guitar.", "The bank increased its lending rates."),
        ("The cat sleeps on the sofa.", "Someone is playing an instrument."),
        ("Interest rates were raised by the central bank.", "A kitten is napping on the couch."),
    ]
    preprocessor = minilm.preprocessor(InputOptions())
    minilm_model.eval()

    def cosine(pair_list):
        left = preprocessor.collate(preprocessor.encode([a for a, _ in pair_list]), train=False)
        right = preprocessor.collate(preprocessor.encode([b for _, b in pair_list]), train=False)
        with torch.no_grad():
            return torch.nn.functional.cosine_similarity(minilm_model.embed(left), minilm_model.embed(right))

    similar, different = cosine(pairs), cosine(unrelated)
    assert minilm_model.embed(preprocessor.collate(preprocessor.encode(["x"]), False)).shape == (1, 384)
    assert (similar > 0.4).all() and (different < 0.3).all(), (similar, different)
    assert similar.min() > different.max()


# ---------------------------------------------------------------- layer groups and trained groups


@needs_minilm
@pytest.mark.parametrize("depth", [0, 1, 3, 99])
def test_trained_groups_train_exactly_the_last_groups(minilm, minilm_model, depth):
    model = minilm_model
    assert model.num_groups == 7  # embeddings + 6 encoder layers; the unused pooler is dropped
    assert all(name.startswith("transformer.encoder.layer.5.") for name in model.layer_groups[-1])
    assert all("embeddings" in name for name in model.layer_groups[0])
    model.set_trained_groups(depth)
    model.train()
    model.zero_grad(set_to_none=True)
    preprocessor = minilm.preprocessor(InputOptions(max_length=16))
    batch = preprocessor.collate(preprocessor.encode(["short text", "a somewhat longer text to pad against"]), True)
    torch.nn.functional.cross_entropy(model(batch), torch.tensor([0, 2])).backward()

    trained_groups = model.layer_groups[max(model.num_groups - depth, 0) :]
    expected = {f"body.{n}" for group in trained_groups for n in group} | {
        f"head.{n}" for n, _ in model.head.named_parameters()
    }
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == expected
    # frozen layers run without dropout; trained ones with it
    frozen_layers = [m for m in model.body.transformer.encoder.layer[: 6 - min(depth, 6)]]
    assert all(not m.training for m in frozen_layers)
    assert depth == 0 or model.body.transformer.encoder.layer[5].training


def _tiny_checkpoint(folder: Path, kind: str, tokenizer_source: Path) -> Path:
    """A small random checkpoint of another architecture, saved as a local folder with MiniLM's tokenizer."""
    from transformers import AutoModel, AutoTokenizer, BertConfig, DistilBertConfig, MPNetConfig

    common = dict(vocab_size=30522, pad_token_id=0)
    config = {
        "mpnet": MPNetConfig(
            hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, **common
        ),
        "distilbert": DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, **common),
        "bert": BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **common),
    }[kind]
    AutoModel.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_source, local_files_only=True).save_pretrained(folder)
    return folder


@needs_minilm
@pytest.mark.parametrize("kind, pooling", [("mpnet", "mean"), ("distilbert", "cls"), ("bert", "pooler")])
def test_local_folders_of_other_architectures(tmp_path, minilm, kind, pooling):
    folder = _tiny_checkpoint(tmp_path / kind, kind, Path(minilm.location))
    backbone = TransformersTextBackbone(f"tiny-{kind}", folder, pooling=pooling, max_length=32)
    assert backbone.weights == "local" and backbone.weights_available()
    model = backbone.build(num_classes=2)
    layers = backbone.config.num_hidden_layers
    assert model.num_groups == 1 + layers + (pooling == "pooler")
    if kind == "mpnet":  # the relative position bias is shared by every layer: it goes with the embeddings
        assert "transformer.encoder.relative_attention_bias.weight" in model.layer_groups[0]
    if pooling == "pooler":
        assert all(n.startswith("transformer.pooler.") for n in model.layer_groups[-1])
    model.set_trained_groups(model.num_groups)
    preprocessor = backbone.preprocessor(InputOptions())
    batch = preprocessor.collate(preprocessor.encode(["one text", "and another, longer one"]), True)
    model(batch).sum().backward()
    assert all(p.grad is not None for p in model.parameters())  # every body parameter is used


# ---------------------------------------------------------------- tokenisation


@needs_minilm
def test_dynamic_padding_and_truncation(minilm):
    preprocessor = minilm.preprocessor(InputOptions(max_length=8))
    assert preprocessor.describe()["max_length"] == 8
    assert minilm.preprocessor(InputOptions()).max_length == 64  # the backbone's default
    items = preprocessor.encode(["hi", "a few more words here", "far too many words for the limit of eight tokens"])
    lengths = [len(item) for item in items]
    assert lengths[0] == 3 and lengths[2] == 8  # [CLS] hi [SEP]; truncated, still ending with [SEP]
    assert items[2][0] == preprocessor.tokenizer.cls_token_id and items[2][-1] == preprocessor.tokenizer.sep_token_id

    batch = preprocessor.collate(items[:2], train=True)  # padded to the longest of *this* batch
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == (2, lengths[1])
    assert batch["attention_mask"].sum(1).tolist() == lengths[:2]
    assert (batch["input_ids"][0, lengths[0] :] == preprocessor.pad_token_id).all()
    assert batch["attention_mask"][0, lengths[0] :].sum() == 0
    json.dumps(preprocessor.describe())

    with pytest.raises(ConfigError, match="out of range"):
        minilm.preprocessor(InputOptions(max_length=4096))
    with pytest.raises(AutomlTLError, match="text input 1 is empty"):
        preprocessor.encode(["fine", None])


@needs_minilm
def test_inference_in_length_order_gives_the_outputs_of_data_order(minilm, minilm_model):
    from automl_tl.train.executor import predict_logits
    from automl_tl.train.feature_cache import compute_features

    preprocessor = minilm.preprocessor(InputOptions(max_length=64))
    words = "the central bank raised its interest rates again after a long meeting on inflation".split()
    texts = [" ".join(words[:n]) for n in (3, 14, 1, 9, 2, 14, 5, 11, 1, 7, 4, 13)]  # short and long, mixed
    items = preprocessor.encode(texts)
    order = preprocessor.inference_order(items)
    assert sorted(order) == list(range(len(items)))
    assert [len(items[i]) for i in order] == sorted(map(len, items), reverse=True)  # longest first
    assert order[:2] == [1, 5]  # ties keep the data's order

    minilm_model.eval()
    with torch.no_grad():  # the reference: batches of 4 in data order, each padded to its longest text
        expected = torch.cat(
            [
                minilm_model.embed(preprocessor.collate(items[start : start + 4], train=False))
                for start in range(0, len(items), 4)
            ]
        )
        expected_logits = minilm_model.head(expected)
    features = compute_features(minilm, preprocessor, items, torch.device("cpu"), batch_size=4)
    torch.testing.assert_close(torch.as_tensor(features), expected, atol=1e-5, rtol=1e-4)
    logits = predict_logits(minilm_model, preprocessor, items, 4, torch.device("cpu"))
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=1e-4)
    # each text's row is its own: the row of a long text differs from the rows beside it in length order
    assert not torch.allclose(torch.as_tensor(features[1]), torch.as_tensor(features[2]), atol=1e-3)


@needs_minilm
def test_standalone_preprocessor_from_a_folder(minilm):
    preprocessor = TextPreprocessor(minilm.location, max_length=16, name="minilm")
    assert preprocessor.describe() == {
        **minilm.preprocessor(InputOptions(max_length=16)).describe(),
        "tokenizer": "minilm",
    }


# ---------------------------------------------------------------- building without weights


@needs_minilm
def test_random_build_reads_no_weights_and_takes_a_saved_state(tmp_path, minilm, minilm_model):
    # A copy of the checkpoint folder without its weights: building from the config must not need them.
    folder = tmp_path / "no-weights"
    shutil.copytree(minilm.location, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    backbone = TransformersTextBackbone("minilm-no-weights", folder, max_length=64)
    random_model = backbone.build(num_classes=3, pretrained=False)
    assert random_model.layer_groups == minilm_model.layer_groups
    random_model.load_state_dict(minilm_model.state_dict(), strict=True)
    for name, tensor in minilm_model.state_dict().items():
        assert torch.equal(random_model.state_dict()[name], tensor), name
    with pytest.raises(WeightsNotFoundError, match="minilm-no-weights"):
        backbone.build(num_classes=3, pretrained=True)


def test_offline_loading_never_touches_the_network(monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)  # recorded: a library may swallow the error raised below
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)  # name lookups come before any connection
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = TransformersTextBackbone("hub/not-cached", "automl-tl-tests/surely-not-cached-model", weights="hub")
    assert not backbone.weights_available()
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE"):
        backbone.build(num_classes=2)
    if checkpoint_installed(MINILM):
        local = TransformersTextBackbone("minilm", "all-MiniLM-L6-v2")
        assert local.weights == "offline" and local.embedding_dim == 384
        local.preprocessor(InputOptions()).encode(["offline"])
        local.build(num_classes=2)
    assert attempts == []


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="pooling"):
        TransformersTextBackbone("x", "all-MiniLM-L6-v2", pooling="max")
    with pytest.raises(ConfigError, match="no offline checkpoint"):
        TransformersTextBackbone("x", "nothing-like-this", weights="offline")
    assert TransformersTextBackbone("x", "some/hub-id").trust_remote_code is False


# ---------------------------------------------------------------- joining split checkpoints


def _split_zip(tmp_path: Path, n_parts: int = 3) -> list[Path]:
    """A small checkpoint zip (folder with config.json, model.safetensors, random bytes) split into parts."""
    from safetensors.torch import save as save_safetensors

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("tiny-model/config.json", json.dumps({"model_type": "bert"}))
        bundle.writestr("tiny-model/model.safetensors", save_safetensors({"w": torch.arange(64.0)}))
        bundle.writestr("tiny-model/noise.bin", os.urandom(30_000), compress_type=zipfile.ZIP_STORED)
    data = buffer.getvalue()
    size = -(-len(data) // n_parts)
    parts = []
    for i in range(n_parts):
        part = tmp_path / "packages" / f"part_{i + 1:03d}" / f"tiny.zip.{i + 1:03d}"
        part.parent.mkdir(parents=True)
        part.write_bytes(data[i * size : (i + 1) * size])
        parts.append(part)
    return parts


def test_join_verifies_and_reuses(tmp_path, caplog):
    parts = _split_zip(tmp_path)
    target = tmp_path / "cache" / "text" / "tiny"
    caplog.set_level(logging.INFO, logger="automl_tl_text.offline")
    threads = [threading.Thread(target=join_split_zip, args=(parts, target)) for _ in range(2)]
    for thread in threads:  # two at once: the lock lets one join while the other waits, then reuses
        thread.start()
    for thread in threads:
        thread.join()
    assert sum("joining 3 parts" in r.getMessage() for r in caplog.records) == 1
    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()
    marker = json.loads((target / MARKER_FILE).read_text())
    assert [p["name"] for p in marker["parts"]] == [p.name for p in parts]
    assert not list(target.parent.glob(".tiny-staging-*"))  # nothing half-done left behind

    stamp = (target / "model.safetensors").stat().st_mtime_ns
    caplog.clear()
    assert join_split_zip(parts, target) == target
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp
    assert not any("joining" in r.getMessage() for r in caplog.records)

    (target / "model.safetensors").write_bytes(b"truncated")  # a damaged cache is rebuilt, not trusted
    join_split_zip(parts, target)
    assert (target / "model.safetensors").stat().st_size == marker["files"]["model.safetensors"]


def test_join_refuses_corrupt_or_missing_parts(tmp_path):
    parts = _split_zip(tmp_path)
    target = tmp_path / "cache" / "tiny"
    middle = bytearray(parts[1].read_bytes())
    middle[len(middle) // 2] ^= 0xFF  # one flipped byte inside the stored random member
    parts[1].write_bytes(bytes(middle))
    with pytest.raises(CorruptCheckpointError, match="corrupt"):
        join_split_zip(parts, target)
    assert not target.exists() and not list(target.parent.glob(".tiny-staging-*"))

    with pytest.raises(CorruptCheckpointError, match="SHA-256"):
        join_split_zip([PartFile(parts[0], sha256="0" * 64), *parts[1:]], target)
    with pytest.raises(CorruptCheckpointError, match="valid zip"):
        join_split_zip([parts[0], parts[2]], target)  # a part left out
    with pytest.raises(WeightsNotFoundError, match="not found"):
        join_split_zip([*parts[:2], tmp_path / "missing.zip.003"], target)


# ---------------------------------------------------------------- end to end


@needs_minilm
def test_search_on_bbc_news_end_to_end(tmp_path):
    import automl_tl
    from automl_tl import InputOptions as Options
    from automl_tl import SearchConfig
    from automl_tl_datasets.text import load_bbc_news

    try:
        frame = load_bbc_news()
    except AutomlTLError as exc:
        pytest.skip(str(exc))
    frame = frame.groupby("label", group_keys=False).head(12).reset_index(drop=True)
    data = automl_tl.prepare_dataset(frame, label_column="label", input_column="text", seed=0)
    assert data.modality == "text"
    config = SearchConfig(
        backbones=("all-MiniLM-L6-v2",),
        n_trials=2,
        min_epochs=1,
        max_epochs=1,
        max_trained_groups=1,
        batch_size=16,
        head_lr_range=(1e-2, 5e-2),
        pruner="none",
        input_options=Options(max_length=32),
    )
    outcome = automl_tl.run_search(data, config, tmp_path / "run")
    assert len(outcome.leaderboard) == 2 and (tmp_path / "run" / "best_model" / "model.safetensors").is_file()
    predictor = automl_tl.load(tmp_path / "run")
    predicted = predictor.predict(
        [
            "The striker scored twice as the club won the cup final.",
            "Shares fell after the company reported lower quarterly profits.",
        ]
    )
    assert set(predicted) <= set(data.classes) and len(predicted) == 2
