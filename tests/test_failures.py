"""Failure isolation: a trial that runs out of memory is tried once more at half the batch size; one
that runs out of memory again, diverges, cannot build its model or meets a bad example fails alone,
with its reason in the leaderboard, and the search goes on, keeping exactly one model on disk.

The failing backbones below are small real networks that really fail (they raise what a real
failure raises), registered through the plugin hook like any other backbone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from automl_tl import Backbone, InputOptions, SearchConfig, TransferModel, TrialConfig, hookimpl
from automl_tl.modalities.image import ImagePreprocessor
from automl_tl.plugins import get_plugin_manager
from automl_tl.registry import reset_registry
from automl_tl.search.study import Search
from automl_tl.train.executor import Executor, TrialOutOfMemory, is_out_of_memory

EMBEDDING = 2048  # wide enough that the saved model weighs about 2 MB: a second copy on disk would show
SMALL = InputOptions(image_size=16)
BATCH = 32
#: a batch of more training rows than this runs out of memory in OutOfMemoryAbove's network
FITS_ROWS = 20
MODEL_SUFFIXES = {".safetensors", ".pt", ".pth", ".bin", ".ckpt"}


class _TinyBody(nn.Module):
    """Two small convolutions and a wide fully connected layer: 16 x 16 images to an EMBEDDING-d vector."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.fc = nn.Linear(16 * 4 * 4, EMBEDDING)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(images))))
        return F.relu(self.fc(F.adaptive_avg_pool2d(x, 4).flatten(1)))


class _OutOfMemoryBody(_TinyBody):
    """Runs out of memory on training batches of more than ``max_rows`` rows, as a GPU that is too small does."""

    def __init__(self, max_rows: int) -> None:
        super().__init__()
        self.max_rows = max_rows

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Only with autograd on: training keeps every activation for the backward pass, inference does not.
        if torch.is_grad_enabled() and len(images) > self.max_rows:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {len(images) * 96} MiB. "
                f"GPU 0 has a total capacity of {self.max_rows * 96} MiB"
            )
        return super().forward(images)


class _DivergedBody(_TinyBody):
    """A network whose weights have blown up: every embedding is NaN."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return super().forward(images) * torch.nan


class TinyBackbone(Backbone):
    """A small image backbone with three layer groups; its "pretrained" weights are the same seeded ones each build.

    ``builds`` counts the models built with pretrained weights (one per attempt of a fine-tuning trial).
    """

    modality = "image"

    def __init__(self, name: str) -> None:
        self.name = name
        self.builds = 0

    @property
    def weight_source(self) -> str:
        return "seeded random initialisation (a test backbone)"

    @property
    def embedding_dim(self) -> int:
        return EMBEDDING

    def body(self) -> nn.Module:
        return _TinyBody()

    def build(self, num_classes: int, pretrained: bool = True) -> TransferModel:
        self.builds += pretrained
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            body = self.body()
        groups = [
            [name for name, _ in body.named_parameters() if name.startswith(f"{layer}.")]
            for layer in ("conv1", "conv2", "fc")
        ]
        return TransferModel(body, nn.Linear(EMBEDDING, num_classes), groups)

    def preprocessor(self, options: InputOptions) -> ImagePreprocessor:
        return ImagePreprocessor(
            size=options.image_size or 16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear"
        )


class OutOfMemoryAbove(TinyBackbone):
    def __init__(self, name: str, max_rows: int) -> None:
        super().__init__(name)
        self.max_rows = max_rows

    def body(self) -> nn.Module:
        return _OutOfMemoryBody(self.max_rows)


class Diverged(TinyBackbone):
    def body(self) -> nn.Module:
        return _DivergedBody()


class BrokenWeights(TinyBackbone):
    """Builds without weights (what the search's set-up needs), but its weight file is damaged."""

    def build(self, num_classes: int, pretrained: bool = True) -> TransferModel:
        if pretrained:
            self.builds += 1
            raise RuntimeError("unexpected end of file: the weight file is truncated (1310720 of 2105344 bytes)")
        return super().build(num_classes, pretrained)


class _CorruptingPreprocessor(ImagePreprocessor):
    """Decodes one example (the sixth) to an image one pixel smaller than the rest, as a damaged file might."""

    def encode(self, inputs: Sequence[object]) -> list[torch.Tensor]:
        items = super().encode(inputs)
        items[5] = items[5][:, :-1, :-1]
        return items

    def cache_key(self) -> dict[str, object]:
        return {**super().cache_key(), "corrupt_example": 5}  # never share these encodings with a sound backbone


class CorruptExample(TinyBackbone):
    def preprocessor(self, options: InputOptions) -> ImagePreprocessor:
        return _CorruptingPreprocessor(
            size=options.image_size or 16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear"
        )


def trial(backbone: str, strategy: str = "last_k", **overrides) -> TrialConfig:
    values = dict(
        backbone=backbone,
        strategy=strategy,
        trained_groups=2,
        backbone_lr=1e-3,
        head_lr=1e-2,
        epochs=2,
        batch_size=BATCH,
        input_options=SMALL,
    )
    return TrialConfig(**{**values, **overrides})


# ------------------------------------------------------------ the executor alone


@pytest.mark.parametrize(
    "error, expected",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                "you tried to allocate 8589934592 bytes. Error code 12 (Cannot allocate memory)"
            ),
            True,
        ),
        (RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"), True),
        (MemoryError(), True),
        (RuntimeError("stack expects each tensor to be equal size, but got [3, 16, 16] at entry 0"), False),
        (FloatingPointError("training loss became nan at epoch 1, step 0"), False),
        (ValueError("too many values; out of memory is not what this says"), False),  # only RuntimeErrors are read
    ],
)
def test_out_of_memory_errors_are_recognised(error, expected):
    assert is_out_of_memory(error) is expected


def test_out_of_memory_is_retried_once_at_half_the_batch_size(digits_bundle, caplog):
    backbone = OutOfMemoryAbove("test/oom_above_20", max_rows=FITS_ROWS)
    epochs = []
    result = Executor(show_progress=False).fit(
        trial(backbone.name), backbone, digits_bundle, on_epoch=lambda epoch, accuracy: epochs.append(epoch) and False
    )
    assert backbone.builds == 2  # the attempt at 32 rows, then one at 16
    assert result.extra["oom_retry"] == {"batch_size": BATCH, "retried_with": BATCH // 2}
    assert result.config.batch_size == BATCH // 2
    assert result.stop_reason == "completed" and epochs == [1, 2]
    assert result.samples_seen == 2 * len(digits_bundle.train)
    assert result.model is not None
    assert any(
        "out of memory at batch size 32" in r.getMessage() and "batch size 16" in r.getMessage()
        for r in caplog.records
        if r.levelname == "WARNING"
    )


def test_out_of_memory_again_fails_the_trial_naming_both_batch_sizes(digits_bundle):
    backbone = OutOfMemoryAbove("test/always_oom", max_rows=0)
    with pytest.raises(TrialOutOfMemory, match=r"^out of memory at batch size 32, and again at 16 \(CUDA out of"):
        Executor(show_progress=False).fit(trial(backbone.name), backbone, digits_bundle)
    assert backbone.builds == 2  # retried once, not more


def test_out_of_memory_at_batch_size_one_is_not_retried(digits_bundle):
    backbone = OutOfMemoryAbove("test/always_oom", max_rows=0)
    with pytest.raises(TrialOutOfMemory, match=r"^out of memory at batch size 1 \("):
        Executor(show_progress=False).fit(trial(backbone.name, batch_size=1), backbone, digits_bundle)
    assert backbone.builds == 1


def test_other_errors_are_not_retried(digits_bundle):
    backbone = BrokenWeights("test/broken_weights")
    with pytest.raises(RuntimeError, match="weight file is truncated"):
        Executor(show_progress=False).fit(trial(backbone.name), backbone, digits_bundle)
    assert backbone.builds == 1


# ------------------------------------------------------------ a search with failing trials

#: the trials of the search below, in order: (backbone, strategy)
PLAN = [
    ("test/tiny", "last_k"),
    ("test/always_oom", "last_k"),
    ("test/oom_above_20", "full"),
    ("test/diverged", "last_k"),
    ("test/broken_weights", "full"),
    ("test/corrupt_example", "last_k"),
    ("test/tiny", "full"),
]
#: each failing backbone's reason, as the leaderboard's error column must give it
FAILURES = {
    "test/always_oom": r"^TrialOutOfMemory: out of memory at batch size 32, and again at 16 \(CUDA out of memory",
    "test/diverged": r"^FloatingPointError: training loss became nan at epoch 1, step 0$",
    "test/broken_weights": r"^RuntimeError: unexpected end of file: the weight file is truncated",
    "test/corrupt_example": r"^RuntimeError: stack expects each tensor to be equal size",
}


class _FailingBackbones:
    @hookimpl
    def register_backbones(self, register):
        register(TinyBackbone("test/tiny"))
        register(OutOfMemoryAbove("test/always_oom", max_rows=0))
        register(OutOfMemoryAbove("test/oom_above_20", max_rows=FITS_ROWS))
        register(Diverged("test/diverged"))
        register(BrokenWeights("test/broken_weights"))
        register(CorruptExample("test/corrupt_example"))


@pytest.fixture(scope="module")
def failing_run(tmp_path_factory, digits_bundle):
    """One search of the trials in PLAN (enqueued, so each runs as planned), over the failing backbones."""
    manager = get_plugin_manager()
    manager.register(_FailingBackbones(), name="failing-backbones")
    reset_registry()
    try:
        config = SearchConfig(
            backbones=tuple(sorted({name for name, _ in PLAN})),
            n_trials=len(PLAN),
            seed=0,
            min_epochs=1,
            max_epochs=2,
            strategies=("last_k", "full"),
            heads=("linear",),
            backbone_lr_range=(1e-3, 3e-3),
            head_lr_range=(1e-2, 3e-2),
            batch_size=BATCH,
            pruner="none",
            prerank=False,
            input_options=SMALL,
        )
        search = Search(digits_bundle, config, tmp_path_factory.mktemp("failing-run"), Executor(show_progress=False))
        study = search.open_study()
        for backbone, strategy in PLAN:
            study.enqueue_trial({"backbone": backbone, "strategy": strategy, "trained_groups": 2})
        outcome = search.run()
    finally:
        manager.unregister(name="failing-backbones")
        reset_registry()
    return outcome


def test_the_search_runs_every_trial_and_keeps_the_best_of_the_sound_ones(failing_run):
    board = failing_run.leaderboard.set_index("trial").sort_index()
    assert list(board["backbone"]) == [name for name, _ in PLAN]
    expected_states = ["FAIL" if name in FAILURES else "COMPLETE" for name, _ in PLAN]
    assert list(board["state"]) == expected_states
    complete = board[board["state"] == "COMPLETE"]
    assert failing_run.best_trial == complete["val_accuracy"].idxmax()
    summary = json.loads((failing_run.run_dir / "summary.json").read_text())
    assert summary["trials_by_state"] == {"COMPLETE": 3, "FAIL": 4}
    saved = json.loads((failing_run.run_dir / "best_model" / "config.json").read_text())
    assert saved["trial"] == failing_run.best_trial
    assert saved["backbone"]["name"] in {"test/tiny", "test/oom_above_20"}
    metrics = json.loads((failing_run.run_dir / "best_model" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == failing_run.test_metrics["accuracy"]


def test_each_failed_trial_gives_its_reason_in_the_leaderboard(failing_run):
    on_disk = pd.read_csv(failing_run.run_dir / "leaderboard.csv").set_index("trial").sort_index()
    for board in (failing_run.leaderboard.set_index("trial").sort_index(), on_disk):
        for number, (backbone, _) in enumerate(PLAN):
            row = board.loc[number]
            if backbone in FAILURES:
                assert row["state"] == "FAIL"
                assert re.search(FAILURES[backbone], row["error"]), (backbone, row["error"])
            else:
                assert pd.isna(row["error"]), (backbone, row["error"])


def test_a_trial_out_of_memory_once_completes_at_half_the_batch_size(failing_run):
    trials = failing_run.study.trials
    retried = trials[[name for name, _ in PLAN].index("test/oom_above_20")]
    assert retried.state.name == "COMPLETE"
    assert retried.user_attrs["oom_retry"] == {"batch_size": BATCH, "retried_with": BATCH // 2}
    assert retried.user_attrs["batch_size_used"] == BATCH // 2
    assert retried.user_attrs["epochs_run"] == 2
    sound = trials[0]
    assert sound.user_attrs["batch_size_used"] == BATCH and "oom_retry" not in sound.user_attrs


def test_the_run_directory_holds_one_model_and_little_else(failing_run):
    run_dir: Path = failing_run.run_dir
    files = [path for path in run_dir.rglob("*") if path.is_file()]
    model = run_dir / "best_model" / "model.safetensors"
    assert [path for path in files if path.suffix in MODEL_SUFFIXES] == [model]
    assert {path.name for path in (run_dir / "best_model").iterdir()} == {
        "model.safetensors",
        "config.json",
        "metrics.json",
    }
    # No staging or replaced model folders left behind (plots/: the report's figures; trial_predictions/: each
    # trial's validation probabilities, what an ensemble is chosen from, small).
    assert sorted(path.name for path in run_dir.rglob("*") if path.is_dir()) == [
        "best_model",
        "plots",
        "trial_predictions",
    ]
    model_size = model.stat().st_size
    assert model_size > 1_000_000  # so that the bound below would not hold a second copy
    # The rest (leaderboard, journal, summary, model config and metrics) is small, whatever the trials did;
    # so is the report, which holds its figures twice (PNG files, and embedded in the page).
    report = [path for path in files if path.name == "report.html" or path.parent.name == "plots"]
    assert sum(path.stat().st_size for path in files if path not in report) < model_size + 256 * 1024
    assert sum(path.stat().st_size for path in report) < 2 * 1024 * 1024
