"""Issue 12, the storage, journal, model-file and parameter parts: each bad input is refused in one line
(exit status 2 from the command line, no traceback) and leaves every file on disk as it was.

* item 4, ``--storage`` naming a file that is not a journal of ours: ``test_storage_refuses_a_foreign_file``,
  ``test_worker_and_report_refuse_a_foreign_journal_too``; ``sqlite:///`` on such a file, and a journal in a
  folder that is not there, refused before the run directory is made:
  ``test_a_database_url_on_a_foreign_file_is_refused_before_anything_is_written``,
  ``test_a_journal_in_a_folder_that_does_not_exist_is_refused_before_anything_is_written``
* item 6, a torn or corrupt ``study.journal``: ``test_a_torn_last_record_is_set_aside_at_every_byte``,
  ``test_a_search_resumes_from_a_torn_journal``, ``test_a_corrupt_record_is_refused_and_nothing_changes``,
  ``test_the_report_reads_a_torn_journal_without_changing_it``
* item 8, a tampered ``config.json``: ``test_a_tampered_config_is_refused_before_anything_is_built``,
  ``test_predict_refuses_a_tampered_config_in_one_line``
* item 9, input sizes without an upper bound, and a search whose every trial failed:
  ``test_input_sizes_have_an_upper_bound``, ``test_a_search_whose_trials_all_failed_says_why``; trials that
  finished with their model in another run directory: ``test_a_study_whose_models_are_in_another_run_directory_says_where``
* item 7, seeds, parameter types, a read-only export folder: ``test_seeds_must_fit_32_bits``,
  ``test_estimator_parameters_of_the_wrong_type_are_refused``, ``test_export_to_a_read_only_folder``
* ``--storage sqlite:///:memory:``: ``test_in_memory_storage_is_refused``

One real search (a frozen MobileNetV2 with an MLP head on 240 digits, two trials, a few seconds) makes the
journal and the saved model that the tests damage copies of.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from cli_helpers import TINY_SEARCH, error_line, image_folder, read_only_directory, run_main
from torch import nn

from automl_tl import (
    Backbone,
    InputOptions,
    SearchConfig,
    TransferClassifier,
    TransferModel,
    hookimpl,
    load,
    run_search,
)
from automl_tl.errors import AutomlTLError, ConfigError, ModelFileError
from automl_tl.modalities.image import ImagePreprocessor
from automl_tl.plugins import get_plugin_manager
from automl_tl.registry import reset_registry
from automl_tl.train.executor import Executor

#: flags that keep a search tiny should a refusal ever fail to fire
SMALL_SEARCH = TINY_SEARCH
JOURNAL = "study.journal"


# ---------------------------------------------------------------- helpers


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text.strip(), f"not one line: {text!r}"
    assert len(text) < 500, f"a tampered file must not flood the terminal: {len(text)} characters"
    return text


def snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """SHA-256 and modification time of every file below ``directory``, by relative path."""
    return {
        str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def journal_trials(path: Path) -> list[tuple]:
    storage = optuna.storages.journal.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    study = optuna.load_study(study_name="automl_tl", storage=storage)
    return [(t.number, t.state.name, t.params) for t in study.trials]


# ---------------------------------------------------------------- one real search


def tiny_config(**overrides) -> SearchConfig:
    values = dict(
        backbones=("mobilenetv2_100",),
        n_trials=2,
        seed=0,
        max_epochs=1,
        strategies=("linear_probe",),
        heads=("mlp",),
        prerank=False,
        input_options=InputOptions(image_size=32),
    )
    return SearchConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def finished(tmp_path_factory, digits_bundle) -> Path:
    """The run directory of a real search of two trials (its journal and its saved model with an MLP head)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    run_search(digits_bundle, tiny_config(), run, Executor(show_progress=False))
    assert (run / JOURNAL).is_file() and (run / "best_model" / "config.json").is_file()
    return run


# ---------------------------------------------------------------- item 4: --storage on a file not ours

FOREIGN = {
    "log_lines": b"2024-05-01 12:00:01 server started\n2024-05-01 12:00:02 listening on :80\n",
    "one_line_without_newline": b"my notes",
    "json_lines_of_another_program": b'{"level": "info", "msg": "started"}\n',
    "json_array": b"[1, 2, 3]\n",
    "binary": bytes(range(256)),
}


@pytest.mark.parametrize("name", list(FOREIGN))
def test_storage_refuses_a_foreign_file(tmp_path, capsys, name):
    folder = image_folder(tmp_path / "pets")
    victim = tmp_path / "victim.log"
    victim.write_bytes(FOREIGN[name])
    os.utime(victim, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))  # an mtime a write would change
    before = snapshot(tmp_path)
    code, stderr = run_main(
        ["search", "--data", folder, "--output", tmp_path / "run", "--storage", victim, *SMALL_SEARCH], capsys
    )
    line = error_line(code, stderr)
    assert str(victim) in line and "not an Optuna journal" in line, line
    assert snapshot(tmp_path) == before, "the foreign file (or anything beside it) was changed"
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="not an Optuna journal"):
        TransferClassifier(storage=str(victim)).fit(folder)
    assert snapshot(tmp_path) == before


def test_worker_and_report_refuse_a_foreign_journal_too(tmp_path, capsys):
    victim = tmp_path / "victim.journal"
    victim.write_bytes(FOREIGN["log_lines"])
    (tmp_path / "run").mkdir()
    before = snapshot(tmp_path)
    for argv in (
        ["worker", "--storage", victim, "--study", "automl_tl"],
        ["report", tmp_path / "run", "--storage", victim],
    ):
        line = error_line(*run_main(argv, capsys))
        assert str(victim) in line and "not an Optuna journal" in line, line
        assert snapshot(tmp_path) == before, argv[0]


def test_a_database_url_on_a_foreign_file_is_refused_before_anything_is_written(tmp_path, capsys):
    """``sqlite:///victim.log``: SQLite refuses a file that is no database; the refusal comes before the run
    directory is made (or the backbones pre-ranked), so nothing on disk changes."""
    folder = image_folder(tmp_path / "pets")
    victim = tmp_path / "victim.log"
    victim.write_bytes(FOREIGN["log_lines"])
    before = snapshot(tmp_path)
    url = f"sqlite:///{victim}"
    line = error_line(
        *run_main(["search", "--data", folder, "--output", tmp_path / "run", "--storage", url, *SMALL_SEARCH], capsys)
    )
    assert url in line and "not a database" in line, line
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "run").exists(), "the run directory was made before the storage was opened"


def test_a_journal_in_a_folder_that_does_not_exist_is_refused_before_anything_is_written(tmp_path, capsys):
    folder = image_folder(tmp_path / "pets")
    journal = tmp_path / "nowhere" / "x.journal"
    line = error_line(
        *run_main(
            ["search", "--data", folder, "--output", tmp_path / "run", "--storage", journal, *SMALL_SEARCH], capsys
        )
    )
    assert str(journal) in line and "No such file or directory" in line, line
    assert not (tmp_path / "run").exists() and not (tmp_path / "nowhere").exists()


def test_storage_on_a_new_or_empty_file_is_a_fresh_journal(tmp_path):
    from automl_tl.storage import open_storage

    (tmp_path / "empty.journal").write_bytes(b"")
    for name in ("new.journal", "empty.journal"):
        storage = open_storage(str(tmp_path / name), tmp_path)
        optuna.create_study(storage=storage, study_name="s")
        assert json.loads((tmp_path / name).read_text().splitlines()[0])["op_code"] == 0


# ---------------------------------------------------------------- item 6: torn and corrupt journals


def _last_record_start(data: bytes) -> int:
    return data.rstrip(b"\n").rfind(b"\n") + 1


def test_a_torn_last_record_is_set_aside_at_every_byte(finished, tmp_path, monkeypatch):
    """The journal cut at every byte of its last record, as a full disk leaves it: opening it keeps a copy of
    the torn file, cuts the torn record off (so appends start on a fresh line), and the study loads with every
    record before it."""
    from automl_tl import storage
    from automl_tl.storage import open_storage

    # fsync makes a repair durable, and costs milliseconds on a busy disk: a thousand of them, seconds
    monkeypatch.setattr(storage.os, "fsync", lambda fd: None)
    data = (finished / JOURNAL).read_bytes()
    start = _last_record_start(data)
    assert len(data) - start > 50, "the last record should be a real one"
    run = tmp_path / "run"
    run.mkdir()
    # without the last record: what every reader (Optuna skips an unterminated line) already saw
    (run / JOURNAL).write_bytes(data[:start])
    expected = journal_trials(run / JOURNAL)
    assert len(expected) == 2
    for cut in range(start, len(data)):  # cut == start: a journal that ends cleanly, nothing to repair
        (run / JOURNAL).write_bytes(data[:cut])
        # what open_storage does first; Optuna's replay of the whole journal is left to a few cuts below
        backup = storage.repair_journal(run / JOURNAL)
        assert (run / JOURNAL).read_bytes() == data[:start], f"cut at {cut}: the torn record is still there"
        if cut == start:
            assert backup is None and not list(run.glob(f"{JOURNAL}.torn-*")), "a clean journal needs no copy"
        else:
            assert backup.name.startswith(f"{JOURNAL}.torn-") and backup.read_bytes() == data[:cut], cut
            backup.unlink()
        if cut in (start, start + 1, (start + len(data)) // 2, len(data) - 1):  # a few: each load replays it all
            (run / JOURNAL).write_bytes(data[:cut])
            study = optuna.load_study(study_name="automl_tl", storage=open_storage(None, run))
            assert (run / JOURNAL).read_bytes() == data[:start]
            for backup in run.glob(f"{JOURNAL}.torn-*"):
                backup.unlink()
            assert [(t.number, t.state.name, t.params) for t in study.trials] == expected
            study.set_user_attr("after_repair", cut)  # an append now starts on a line of its own
            lines = (run / JOURNAL).read_bytes().splitlines()
            assert all(isinstance(json.loads(line), dict) for line in lines)
            assert json.loads(lines[-1])["user_attr"] == {"after_repair": cut}
    assert not (run / f"{JOURNAL}.lock").exists(), "the journal's lock was left behind"


@pytest.mark.parametrize("where", ["in_the_middle_of_the_last_record", "just_before_its_newline"])
def test_a_search_resumes_from_a_torn_journal(finished, tmp_path, digits_bundle, where, caplog):
    data = (finished / JOURNAL).read_bytes()
    start = _last_record_start(data)
    cut = (start + len(data)) // 2 if where.startswith("in") else len(data) - 1
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / JOURNAL).write_bytes(data[:cut])
    outcome = run_search(digits_bundle, tiny_config(n_trials=3), run, Executor(show_progress=False))
    assert len(outcome.study.trials) == 3
    assert [t.params for t in outcome.study.trials[:2]] == [p for _, _, p in journal_trials(finished / JOURNAL)]
    lines = (run / JOURNAL).read_bytes().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines), "the journal is still broken"
    assert len(list(run.glob(f"{JOURNAL}.torn-*"))) == 1
    assert "torn" in caplog.text and "study.journal.torn-" in caplog.text


def _garbage(lines: list[bytes], index: int) -> list[bytes]:
    return lines[:index] + [b"this is not json at all"] + lines[index + 1 :]


def _torn_then_appended(lines: list[bytes], index: int) -> list[bytes]:
    """What an old version left: a torn record with the next run's record appended on the same line."""
    return lines[:index] + [lines[index][: len(lines[index]) // 2] + lines[index + 1]] + lines[index + 2 :]


def _not_an_object(lines: list[bytes], index: int) -> list[bytes]:
    return lines[:index] + [b"[1, 2]"] + lines[index + 1 :]


def _null(lines: list[bytes], index: int) -> list[bytes]:
    return lines[:index] + [b"null"] + lines[index + 1 :]


def _no_op_code(lines: list[bytes], index: int) -> list[bytes]:
    return lines[:index] + [b'{"worker_id": "x", "study_id": 0}'] + lines[index + 1 :]


def _bad_last_line(lines: list[bytes], index: int) -> list[bytes]:
    return lines + [b'{"op_code": oops}']  # terminated, so not torn: written whole, and wrong


CORRUPTIONS = [_garbage, _torn_then_appended, _not_an_object, _null, _no_op_code, _bad_last_line]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=[c.__name__.strip("_") for c in CORRUPTIONS])
def test_a_corrupt_record_is_refused_and_nothing_changes(finished, tmp_path, capsys, corrupt):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    lines = (run / JOURNAL).read_bytes().splitlines()
    (run / JOURNAL).write_bytes(b"\n".join(corrupt(lines, 3)) + b"\n")
    before = snapshot(run)
    folder = image_folder(tmp_path / "pets")
    code, stderr = run_main(["search", "--data", folder, "--output", run, *SMALL_SEARCH], capsys)
    line = error_line(code, stderr)
    assert str(run / JOURNAL) in line and "corrupt" in line and "line" in line, line
    assert "--output" in line and "remove" in line, f"the line must say how to start anew: {line}"
    assert snapshot(run) == before


def test_the_report_reads_a_torn_journal_without_changing_it(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    data = (run / JOURNAL).read_bytes()
    (run / JOURNAL).write_bytes(data[:-10])
    code, stderr = run_main(["report", run], capsys)
    assert code == 0, stderr
    assert (run / JOURNAL).read_bytes() == data[:-10]
    assert not list(run.glob(f"{JOURNAL}.torn-*"))


# ---------------------------------------------------------------- item 8: a tampered config.json


def _set(path: str, value) -> Callable[[dict], None]:
    """An edit of the config that sets ``path`` (dotted) to ``value`` (a function of the config, or a value)."""

    def edit(config: dict) -> None:
        *parents, last = path.split(".")
        target = config
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value(config) if callable(value) else value

    return edit


def _drop(key: str) -> Callable[[dict], None]:
    return lambda config: config.pop(key)


#: name: (edit of config.json, fragments of the one-line refusal)
TAMPERED_CONFIGS = {
    "a_million_classes": (
        _set("classes", [f"class{i}" for i in range(10**6)]),
        ["field 'classes'", "1000000 classes", "at most 100000"],
    ),
    "classes_that_are_not_labels": (
        _set("classes", [{"a": 1}, [2], None]),
        ["field 'classes'", "{'a': 1}", "a string or a number"],
    ),
    "a_class_that_is_null": (_set("classes", lambda c: c["classes"][:-1] + [None]), ["field 'classes'", "None"]),
    "eleven_classes_for_ten_rows": (
        _set("classes", [str(i) for i in range(11)]),
        ["head.3.weight", "[10, ", "expected [11, "],
    ),
    "classes_not_a_list": (_set("classes", "0123456789"), ["field 'classes'"]),
    "hidden_200000": (_set("head.hidden", 200000), ["field 'head.hidden'", "200000", "at most"]),
    "hidden_10_to_the_12": (_set("head.hidden", 10**12), ["field 'head.hidden'", "at most"]),
    "hidden_2.5": (_set("head.hidden", 2.5), ["field 'head.hidden'", "2.5", "whole number"]),
    "hidden_true": (_set("head.hidden", True), ["field 'head.hidden'", "True", "whole number"]),
    "hidden_zero": (_set("head.hidden", 0), ["field 'head.hidden'", "at least 1"]),
    "hidden_a_string": (_set("head.hidden", "256"), ["field 'head.hidden'", "'256'"]),
    "hidden_other_than_the_weights": (
        _set("head.hidden", lambda c: c["head"]["hidden"] + 1),
        ["head.0.weight", "does not match"],
    ),
    "dropout_1.5": (_set("head.dropout", 1.5), ["field 'head.dropout'", "1.5"]),
    "dropout_a_string": (_set("head.dropout", "none"), ["field 'head.dropout'", "'none'"]),
    "head_kind_unknown": (_set("head.kind", "transformer"), ["field 'head.kind'", "'transformer'"]),
    "head_key_unknown": (_set("head.exec", "rm -rf /"), ["field 'head'", "'exec'"]),
    "head_not_an_object": (_set("head", [1, 2]), ["field 'head'", "a JSON object"]),
    "head_kind_linear_for_mlp_weights": (_set("head.kind", "linear"), ["head.weight", "missing"]),
    "image_size_a_million": (
        _set("input_options.image_size", 10**6),
        ["field 'input_options' holds 'image_size': 1000000", "at most 1024 pixels"],
    ),
    "image_size_negative": (_set("input_options.image_size", -5), ["'image_size': -5", "at least 16"]),
    "image_size_31.5": (_set("input_options.image_size", 31.5), ["'image_size': 31.5", "whole number"]),
    "image_size_true": (_set("input_options.image_size", True), ["'image_size': True"]),
    "clip_seconds_a_day": (_set("input_options.clip_seconds", 86400), ["'clip_seconds': 86400", "at most 60"]),
    "max_length_zero": (_set("input_options.max_length", 0), ["'max_length': 0", "at least 1"]),
    "format_version_999": (_set("format_version", 999), ["field 'format_version'", "999", "expected 1"]),
    "temperature_negative": (_set("temperature", -1.0), ["field 'temperature' is -1.0", "expected a number from"]),
    "temperature_a_string": (_set("temperature", "2"), ["field 'temperature' is '2'"]),
    "temperature_true": (_set("temperature", True), ["field 'temperature' is True"]),
    "format_version_a_string": (_set("format_version", "1"), ["field 'format_version'", "'1'"]),
    "format_version_true": (_set("format_version", True), ["field 'format_version'", "True"]),
    "format_version_missing": (_drop("format_version"), ["lacks the field 'format_version'", "expected 1"]),
    "backbone_name_a_number": (_set("backbone.name", 7), ["field 'backbone.name'"]),
    "input_column_a_list": (_set("input_column", ["image"]), ["field 'input_column'"]),
    "label_column_a_number": (_set("label_column", 3), ["field 'label_column'"]),
}


def _tampered_copy(finished: Path, tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    model = tmp_path / "model"
    shutil.copytree(finished / "best_model", model)
    config = json.loads((model / "config.json").read_text())
    edit(config)
    (model / "config.json").write_text(json.dumps(config))
    return model


@pytest.fixture
def nothing_built(monkeypatch):
    """Fails the test if a model (body or head) is built, or a tensor is read from the weights file."""
    from automl_tl.registry import get_backbone
    from automl_tl.results import model_io

    def refuse(*args, **kwargs):
        raise AssertionError(
            "a model was built (or tensors loaded) before the config and the weights' header were checked"
        )

    monkeypatch.setattr(model_io, "build_head", refuse)
    monkeypatch.setattr(model_io, "load_file", refuse)
    monkeypatch.setattr(type(get_backbone("mobilenetv2_100")), "build", refuse)


@pytest.mark.parametrize("name", list(TAMPERED_CONFIGS))
def test_a_tampered_config_is_refused_before_anything_is_built(finished, tmp_path, name, nothing_built):
    edit, expected = TAMPERED_CONFIGS[name]
    model = _tampered_copy(finished, tmp_path, edit)
    with pytest.raises(ModelFileError) as caught:
        load(model)
    line = one_line(caught.value)
    assert str(model / "config.json") in line or str(model / "model.safetensors") in line, line
    for fragment in expected:
        assert fragment in line, f"{fragment!r} not in {line!r}"


@pytest.mark.parametrize("kind", ["linear", "mlp", "normalised_linear"])
def test_head_shapes_are_those_of_the_head_built(kind):
    """What the weights' header is checked against, before building, is what would be built."""
    from automl_tl.heads import HeadSpec, head_shapes
    from automl_tl.train.head_modules import build_head

    spec = HeadSpec(kind=kind, hidden=24)
    built = {name: tuple(tensor.shape) for name, tensor in build_head(spec, 40, 7).state_dict().items()}
    assert head_shapes(spec, 40, 7) == built


@pytest.mark.parametrize(
    "fields", [{"hidden": 2.5}, {"hidden": True}, {"hidden": 10**12}, {"dropout": "0.1"}, {"kind": 3}]
)
def test_a_head_spec_of_the_wrong_type_is_refused(fields):
    from automl_tl.heads import HeadSpec

    with pytest.raises(ValueError, match="head"):
        HeadSpec(kind=fields.pop("kind", "mlp"), **fields)


def test_the_untampered_model_loads(finished):
    predictor = load(finished)
    assert len(predictor.classes) == 10 and predictor.config["head"]["kind"] == "mlp"


@pytest.mark.parametrize("name", ["a_million_classes", "hidden_2.5", "image_size_31.5", "format_version_999"])
def test_predict_refuses_a_tampered_config_in_one_line(finished, tmp_path, capsys, name):
    edit, expected = TAMPERED_CONFIGS[name]
    model = _tampered_copy(finished, tmp_path, edit)
    data = image_folder(tmp_path / "new")
    line = error_line(*run_main(["predict", model, "--data", data, "--output", tmp_path / "p.csv"], capsys))
    for fragment in expected:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert not (tmp_path / "p.csv").exists()


def test_a_weights_header_claiming_a_huge_tensor_is_refused(finished, tmp_path, nothing_built):
    """The header is read, not the tensors: an extra tensor it lists is refused before anything is loaded."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    model = tmp_path / "model"
    shutil.copytree(finished / "best_model", model)

    with safe_open(str(model / "model.safetensors"), "pt") as weights:
        state = {key: weights.get_tensor(key) for key in weights.keys()}
    state["evil"] = torch.zeros(1)
    save_file(state, str(model / "model.safetensors"))
    with pytest.raises(ModelFileError, match=r"1 unexpected tensor\(s\) \(evil\)"):
        load(model)


# ---------------------------------------------------------------- item 9: upper bounds, and why trials failed


@pytest.mark.parametrize(
    "options, expected",
    [
        (InputOptions(image_size=100000), "image size must be at most 1024 pixels, got 100000"),
        (InputOptions(image_size=1025), "at most 1024"),
        (InputOptions(clip_seconds=100000), "clip length must be at most 60 seconds, got 100000"),
        (InputOptions(clip_seconds=float("inf")), "clip length"),
        (InputOptions(clip_seconds=float("nan")), "clip length"),
        (InputOptions(max_length=10**7), "max length must be at most"),
    ],
)
def test_input_sizes_have_an_upper_bound(options, expected):
    with pytest.raises(ConfigError, match=expected):
        tiny_config(input_options=options)
    with pytest.raises(ConfigError, match=expected):
        TransferClassifier(
            image_size=options.image_size, clip_seconds=options.clip_seconds, max_length=options.max_length
        ).check_params()
    SearchConfig(backbones=("x",), input_options=InputOptions(image_size=1024, clip_seconds=60, max_length=8192))


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--image-size", "100000", "image size must be at most 1024 pixels"),
        ("--clip-seconds", "100000", "clip length must be at most 60 seconds"),
    ],
)
def test_cli_input_sizes_have_an_upper_bound(tmp_path, capsys, flag, value, expected):
    folder = image_folder(tmp_path / "pets")
    line = error_line(
        *run_main(["search", "--data", folder, "--output", tmp_path / "run", *SMALL_SEARCH, flag, value], capsys)
    )
    assert expected in line, line
    assert not (tmp_path / "run").exists()


class _Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 480000000000 bytes")


class _FailingBackbone(Backbone):
    """A tiny real network whose every forward pass fails, as one that runs out of memory on every input does."""

    modality = "image"
    name = "test/fails_always"

    @property
    def weight_source(self) -> str:
        return "seeded random initialisation (a test backbone)"

    @property
    def embedding_dim(self) -> int:
        return 4

    def build(self, num_classes: int, pretrained: bool = True) -> TransferModel:
        body = _Body()
        return TransferModel(body, nn.Linear(4, num_classes), [["conv.weight", "conv.bias"]])

    def preprocessor(self, options: InputOptions) -> ImagePreprocessor:
        return ImagePreprocessor(
            size=options.image_size or 16, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear"
        )


class _Registers:
    @hookimpl
    def register_backbones(self, register):
        register(_FailingBackbone())


def test_a_search_whose_trials_all_failed_says_why(tmp_path, digits_bundle):
    manager = get_plugin_manager()
    manager.register(_Registers(), name="failing-backbone")
    reset_registry()
    try:
        config = SearchConfig(
            backbones=("test/fails_always",),
            n_trials=3,
            max_epochs=1,
            prerank=False,
            strategies=("last_k",),
            heads=("linear",),
            input_options=InputOptions(image_size=16),
        )
        with pytest.raises(AutomlTLError) as caught:
            run_search(digits_bundle, config, tmp_path, Executor(show_progress=False))
    finally:
        manager.unregister(name="failing-backbone")
        reset_registry()
    line = one_line(caught.value)
    assert "all 3 trials failed" in line and "3 of them with" in line, line
    assert "can't allocate memory" in line, line
    assert "raise --timeout" not in line and "within the budget" not in line, line
    assert (tmp_path / "leaderboard.csv").is_file()


def test_a_study_whose_models_are_in_another_run_directory_says_where(finished, tmp_path, digits_bundle):
    """A study resumed from a shared --storage with another --output: its trials finished, but their models
    were saved in the run directory the study was made in. Not "no trial finished within the budget"."""
    storage = tmp_path / "shared.journal"
    shutil.copyfile(finished / JOURNAL, storage)
    with pytest.raises(AutomlTLError) as caught:
        run_search(digits_bundle, tiny_config(storage=str(storage)), tmp_path / "other", Executor(show_progress=False))
    line = one_line(caught.value)
    assert "within the budget" not in line and "raise --timeout" not in line, line
    assert "2 trial(s) of the study finished" in line and str(finished.resolve()) in line, line
    assert "--output" in line and "--study-name" in line, line


# ---------------------------------------------------------------- item 7: seeds, types, a read-only export


@pytest.mark.parametrize("seed", [-1, 2**32, True, 1.5, "0"])
def test_seeds_must_fit_32_bits(seed):
    with pytest.raises(ConfigError, match=r"seed must be a whole number from 0 to 4294967295") as caught:
        TransferClassifier(seed=seed).check_params()
    one_line(caught.value)
    TransferClassifier(seed=2**32 - 1).check_params()
    TransferClassifier(seed=np.int64(7)).check_params()


def test_cli_seed_minus_one(tmp_path, capsys):
    folder = image_folder(tmp_path / "pets")
    line = error_line(
        *run_main(["search", "--data", folder, "--output", tmp_path / "run", *SMALL_SEARCH, "--seed", "-1"], capsys)
    )
    assert "seed must be a whole number from 0 to 4294967295, got -1" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"image_size": "32"}, "image_size must be a whole number, got '32'"),
        ({"image_size": 32.0}, "image_size must be a whole number, got 32.0"),
        ({"image_size": True}, "image_size must be a whole number, got True"),
        ({"max_length": "64"}, "max_length must be a whole number"),
        ({"clip_seconds": "2"}, "clip_seconds must be a number of seconds, got '2'"),
        ({"clip_seconds": False}, "clip_seconds must be a number of seconds, got False"),
        ({"n_trials": "5"}, "n_trials must be a whole number"),
        ({"n_trials": 2.5}, "n_trials must be a whole number"),
        ({"timeout": "60"}, "timeout must be a number of seconds"),
        ({"trial_timeout": True}, "trial_timeout must be a number of seconds"),
        ({"batch_size": 8.5}, "batch_size must be a whole number"),
        ({"max_epochs": True}, "max_epochs must be a whole number"),
        ({"min_epochs": "1"}, "min_epochs must be a whole number"),
        ({"max_trained_groups": "2"}, "max_trained_groups must be a whole number"),
        ({"top_k": 1.5}, "top_k must be a whole number"),
        ({"prerank": "no"}, "prerank must be True or False, got 'no'"),
        ({"refit": 0}, "refit must be True or False"),
        ({"feature_cache": None}, "feature_cache must be True or False"),
        ({"study_name": 5}, "study_name must be a string"),
        ({"storage": 5}, "storage must be a string"),
        ({"max_samples": "100"}, "max_samples must be a whole number"),
        ({"max_samples": 0}, "max_samples must be at least 1"),
        ({"label_column": 3}, "label_column must be a string"),
        ({"input_column": ["a"]}, "input_column must be a string"),
        ({"show_progress": "yes"}, "show_progress must be True, False or None"),
    ],
)
def test_estimator_parameters_of_the_wrong_type_are_refused(params, expected):
    with pytest.raises(ConfigError) as caught:
        TransferClassifier(**params).check_params()
    assert expected in one_line(caught.value)


def test_numpy_numbers_are_fine(tmp_path):
    TransferClassifier(
        image_size=np.int64(32),
        n_trials=np.int32(2),
        timeout=np.float64(30.0),
        clip_seconds=np.float32(1.5),
        batch_size=np.int64(8),
    ).check_params()


def test_export_to_a_read_only_folder(finished, tmp_path, capsys):
    with read_only_directory(tmp_path / "locked") as locked:
        for output in (locked, locked / "onnx"):
            line = error_line(*run_main(["export", finished, "--format", "torchscript", "--output", output], capsys))
            assert "cannot write the export to" in line and str(output) in line, line
            assert ("Permission denied" in line) or ("Operation not permitted" in line), line
            assert sorted(locked.iterdir()) == []


# ---------------------------------------------------------------- smaller: storage in memory


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://", "sqlite:///file:x?mode=memory&uri=true"])
def test_in_memory_storage_is_refused(tmp_path, capsys, url):
    with pytest.raises(ConfigError, match="in memory") as caught:
        tiny_config(storage=url)
    assert "resume" in one_line(caught.value)
    folder = image_folder(tmp_path / "pets")
    line = error_line(
        *run_main(["search", "--data", folder, "--output", tmp_path / "run", *SMALL_SEARCH, "--storage", url], capsys)
    )
    assert "in memory" in line
    assert not (tmp_path / "run").exists()
