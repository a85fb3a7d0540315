"""The model card: ``MODEL_CARD.md``, what a person should know before using a run's best model.

It is built only from the files a search leaves in its run directory (``summary.json``,
``manifest.json``, ``best_model/config.json``, ``best_model/metrics.json``), so it can be written
again for any finished run and every number in it can be traced to one of those files. The
search writes it at its end; :mod:`automl_tl.results.export` copies it next to every export. Given a bare
model directory (no search files beside it), the card says what it cannot know.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from automl_tl.augmentation import NO_AUGMENTATION, modality_augmentations
from automl_tl.errors import AutomlTLError
from automl_tl.files import read_json, write_text_atomic
from automl_tl.layout import (
    BEST_MODEL_DIR,
    CONFIG_FILE,
    ENSEMBLE_DIR,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    SUMMARY_FILE,
)
from automl_tl.results.model_io import model_dir_of
from automl_tl.results.report import (
    describe_candidates,
    describe_concatenated,
    describe_self_training,
    describe_skipped,
)
from automl_tl.strategies import LINEAR_PROBE, STRATEGIES, current_names

#: below this many test examples, the card warns that the test numbers are rough
SMALL_TEST_SET = 100
_CLASSES_SHOWN = 30


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def code(value: Any, in_table: bool = True) -> str:
    """``value`` as a Markdown code span that shows it exactly and can break nothing around it.

    Names come from the user (classes, columns, files, the command): inside a code span raw HTML and
    Markdown are shown, not rendered; the fence is one backtick longer than any run of backticks in the
    text; a line break is shown as ``\\n`` (a table row is one line); and in a table ``|`` is escaped, as
    GitHub's tables require even inside a code span.
    """
    text = re.sub(r"\r\n|\r|\n", r"\\n", str(value))
    if in_table:
        text = text.replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    padded = f" {text} " if text.startswith(("`", " ")) or text.endswith(("`", " ")) or not text.strip() else text
    return f"{fence}{padded}{fence}"


def plain(value: Any) -> str:
    """``value`` as plain text in a Markdown table cell: no HTML, no Markdown markup, no line break, no ``|``."""
    text = re.sub(r"\s*(\r\n|\r|\n)\s*", " ", str(value))
    text = re.sub(r"([\\`*_\[\]|~])", r"\\\1", text)  # Markdown's own characters, escaped
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _listing(values: Any, limit: int = _CLASSES_SHOWN) -> str:
    values = [str(v) for v in (values or [])]
    shown = ", ".join(code(v) for v in values[:limit])
    return shown + (f", … ({len(values) - limit} more)" if len(values) > limit else "") if values else "–"


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion ``accuracy`` measured on ``n`` examples."""
    if n <= 0:
        return (0.0, 1.0)
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    spread = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - spread), min(1.0, centre + spread))


def describe_preprocessing(preprocessing: dict[str, Any]) -> str:
    """One sentence on how inputs are prepared, from a saved model's ``preprocessing`` field."""
    kind = preprocessing.get("kind")
    if kind == "image":
        size, crop = preprocessing.get("size"), preprocessing.get("crop_pct", 1.0)
        resize = (
            f"resized to {size}x{size} pixels"
            if crop >= 1.0
            else f"shorter side resized to {round(size / crop)} pixels, then the centre {size}x{size} cropped"
        )
        return (
            f"RGB images {resize} ({preprocessing.get('interpolation')} interpolation), scaled to [0, 1], "
            f"normalised with mean {_rounded(preprocessing.get('mean'))} and std {_rounded(preprocessing.get('std'))}"
        )
    if kind == "text":
        return (
            f"texts tokenised by {code(preprocessing.get('tokenizer'))} ({preprocessing.get('tokenizer_class')}, "
            f"{preprocessing.get('vocab_size')} tokens), truncated to {preprocessing.get('max_length')} tokens "
            "(special tokens included)"
        )
    if kind == "audio":
        return (
            f"mono audio resampled to {preprocessing.get('sample_rate')} Hz; the centre "
            f"{preprocessing.get('clip_seconds')} s ({preprocessing.get('clip_samples')} samples) of a longer "
            "recording, a shorter one zero-padded at the end"
        )
    return json.dumps(preprocessing)


def _rounded(values: Any) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]" if isinstance(values, list) else str(values)


def _model_section(config: dict[str, Any], manifest: dict[str, Any] | None) -> list[str]:
    backbone = config.get("backbone", {})
    name = backbone.get("name", "?")
    architecture = (
        f"timm {code(backbone['timm_name'])}"
        if backbone.get("timm_name")
        else f"transformers {code(backbone.get('model_type'))} from {code(backbone.get('source'))}, "
        f"{backbone.get('pooling')} pooling"
        if backbone.get("model_type")
        else "defined by its plugin"
    )
    weights_hash = next(
        (
            entry.get("weights_sha256_prefix")
            for entry in (manifest or {}).get("backbones", [])
            if entry.get("name") == name
        ),
        None,
    )
    trial = config.get("trial_config") or {}
    head = config.get("head") or {"kind": "linear"}
    head_text = (
        "linear layer"
        if head.get("kind") == "linear"
        else f"MLP, one hidden layer of {head.get('hidden')} units (GELU, dropout {head.get('dropout'):.2f})"
    )
    classes = config.get("classes", [])
    return [
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| backbone | {code(name)} ({architecture}), {backbone.get('embedding_dim')}-d embedding |",
        f"| pretrained weights | {plain(backbone.get('weight_source'))} |",
        f"| weights hash | {f'`{weights_hash}` (SHA-256 of the body tensors, first 32 hex digits)' if weights_hash else 'not recorded in this run'} |",
        f"| adaptation | {_strategy_words(trial.get('strategy'))} |",
        f"| head | {head_text} |",
        f"| training | {_epochs_kept(config)} of {trial.get('epochs', '–')}, batch size "
        f"{trial.get('batch_size', '–')}, AdamW (weight decay {trial.get('weight_decay', '–')}), seed {trial.get('seed', '–')} |",
        f"| classes | {len(classes)}: {_listing(classes)} |",
        f"| input | {describe_preprocessing(config.get('preprocessing', {}))} |",
        f"| files | `model.safetensors` (weights) and `{CONFIG_FILE}` (how to rebuild it) of the saved model |",
        "",
    ]


def _data_section(config: dict[str, Any], summary: dict[str, Any] | None, manifest: dict[str, Any] | None) -> list[str]:
    data = (summary or {}).get("data") or (manifest or {}).get("data")
    if not data:
        return [
            "## Data",
            "",
            f"Not recorded: no {SUMMARY_FILE} or {MANIFEST_FILE} beside this model. "
            f"Data fingerprint from its {CONFIG_FILE}: {code(config.get('data_fingerprint', '–'), in_table=False)}.",
            "",
        ]
    total = data["train"] + data["val"] + data["test"]
    source = ((manifest or {}).get("data") or {}).get("source")
    if source and source.get("dataset"):
        source_text = f"registered data set {code(source['dataset'])}"
    elif source and source.get("data"):
        source_text = code(source["data"])
    else:
        source_text = "data given in Python (no file or data set name recorded)"
    if source and source.get("max_samples"):
        source_text += f", a stratified sample of at most {source['max_samples']} examples"
    split_seed = ((manifest or {}).get("seeds") or {}).get("data_split")
    skipped = describe_skipped(data.get("skipped"))
    return [
        "## Data",
        "",
        "| | |",
        "|---|---|",
        f"| source | {source_text} |",
        f"| modality | {data['modality']}: input column {code(data.get('input_column'))}, label column "
        f"{code(data.get('label_column'))} |",
        f"| examples | {total}: {data['train']} train, {data['val']} validation, {data['test']} test |",
        f"| classes | {len(data['classes'])} |",
        f"| split | stratified by class and seeded (split seed {'not recorded' if split_seed is None else split_seed}); "
        "the test examples took no part in training or in choosing the model |",
        f"| fingerprint | {code(data.get('fingerprint'))} (hash of the inputs, labels and split) |",
        *([f"| rows left out | {skipped} |"] if skipped else []),
        "",
    ]


def _search_section(
    config: dict[str, Any], summary: dict[str, Any] | None, manifest: dict[str, Any] | None
) -> list[str]:
    settings = (manifest or {}).get("search")
    if not summary or not settings:
        return [
            "## Search",
            "",
            f"Not recorded: no {SUMMARY_FILE} and {MANIFEST_FILE} beside this model. "
            f"It comes from trial {config.get('trial', '–')} of its search.",
            "",
        ]
    states = summary.get("trials_by_state", {})
    state_text = ", ".join(f"{count} {state.lower()}" for state, count in states.items())
    lines = [
        "## Search",
        "",
        "| | |",
        "|---|---|",
        f"| method | Optuna, {settings.get('sampler')} sampler, "
        f"{'no' if settings.get('pruner') == 'none' else settings.get('pruner')} pruner, seed {settings.get('seed')} |",
        f"| budget | {settings.get('n_trials')} finished trial{'s' if settings.get('n_trials') != 1 else ''}; wall clock "
        f"{_seconds(settings.get('timeout'))}, per trial "
        f"{_seconds(settings.get('trial_timeout'))}; "
        f"{_epochs(settings.get('min_epochs'), settings.get('max_epochs'))} per trial |",
        f"| trials | {sum(states.values())} ({state_text}); {summary.get('total_seconds', 0):.1f} s of training "
        f"({summary.get('total_cpu_seconds', 0):.1f} CPU-s) |",
        f"| searched | backbones {_listing(settings.get('backbones'))}; strategies {_listing(settings.get('strategies'))}; "
        f"heads {_listing(settings.get('heads'))}; head learning rate {_range(settings.get('head_lr_range'))}; "
        f"body learning rate {_range(settings.get('backbone_lr_range'))} |",
    ]
    ranking = summary.get("transferability")
    if ranking:
        taus = ", ".join(
            f"{score} {'n/a' if tau is None else f'{tau:+.2f}'}" for score, tau in ranking["kendall_tau"].items()
        )
        lines.append(
            f"| pre-ranking | by transferability: {_listing(ranking['ranking'])} "
            f"(Kendall tau against the best validation accuracy: {taus}) |"
        )
    metric = str(summary.get("metric", "accuracy")).replace("_", " ")
    lines += [
        "",
        f"Chosen: trial {summary.get('best_trial')}, by validation {metric}"
        f"{' (the default for imbalanced classes)' if summary.get('metric_chosen') == 'default for the data' and metric != 'accuracy' else ''}"
        f"{', trained with a class-weighted loss' if summary.get('class_weighted_loss') else ''}, with",
        "",
        "| parameter | value |",
        "|---|---|",
    ]
    chosen = current_names(config.get("trial_config") or {})  # (an earlier version's model: under today's names)
    modality = (config.get("backbone") or {}).get("modality")
    for name in _relevant_parameters(chosen, modality):
        value = chosen.get(name)
        lines.append(f"| {name} | {f'{value:.3g}' if isinstance(value, float) else value} |")
    return lines + [""]


def _self_training_section(summary: dict[str, Any] | None) -> list[str]:
    """What self-training on the unlabelled inputs did (nothing when there were none)."""
    line = describe_self_training((summary or {}).get("self_training"))
    if line is None:
        return []
    judged = (
        "by the folds its trial was cross-validated on (in each, the pseudo-labels came from a fit that never saw "
        "the held-out rows)"
        if summary["self_training"].get("mode") == "cross-validated"
        else "on the validation split (which neither fit learnt from)"
    )
    return [
        "## Self-training",
        "",
        f"After the search, the best model labelled the unlabelled inputs it was most confident about, and its "
        f"configuration was fitted once more with them as extra training rows, to be kept only if it scored "
        f"better {judged}: {plain(line)}.",
        "",
    ]


def _ensemble_section(summary: dict[str, Any] | None) -> list[str]:
    """What the run keeps when it is an ensemble: its members and why it was kept; one line when none was."""
    ensemble = (summary or {}).get("ensemble")
    if not ensemble:
        return []
    concatenated = describe_concatenated(ensemble)
    if not ensemble.get("kept"):
        lines = ["## Ensemble", "", f"None: {plain(ensemble.get('reason', 'not recorded'))}.", ""]
        return lines + ([plain(concatenated), ""] if concatenated else [])
    checked = ensemble.get("cross_validated") or {}
    metric = str(checked.get("metric", summary.get("metric", "accuracy"))).replace("_", " ")
    lines = [
        "## Ensemble",
        "",
        f"`automl_tl.load()` returns the weighted average of the class probabilities of "
        f"{len(ensemble['members'])} models (`{ENSEMBLE_DIR}/`), chosen by greedy ensemble selection with "
        f"replacement (Caruana et al. 2004) among {describe_candidates(ensemble)} on "
        f"{ensemble.get('rows')} validation predictions (held-out or out-of-fold rows). On validation rows it was not chosen on "
        f"({checked.get('folds')}-fold), its {metric} was {_number(checked.get('ensemble'))} against "
        f"{_number(checked.get('single'))} for the best single model. The test figures below are the "
        "ensemble's; the Model section describes its best member.",
        "",
        *([plain(concatenated), ""] if concatenated else []),
        "| trial | backbone | strategy | weight |",
        "|---|---|---|---|",
    ]
    for member in ensemble["members"]:
        lines.append(
            f"| {member.get('trial')} | {code(member.get('backbone'))} | {plain(member.get('strategy'))} | "
            f"{_number(member.get('weight'))} |"
        )
    return lines + [""]


def _epochs(least: int | None, most: int | None) -> str:
    return f"{most} epoch{'s' if most != 1 else ''}" if least == most else f"{least} to {most} epochs"


def _seconds(value: float | None) -> str:
    return "unlimited" if value is None else f"{value:g} s"


def _range(values: Any) -> str:
    return (
        f"{values[0]:g} to {values[1]:g}" if isinstance(values, list) and len(values) == 2 else "the modality's default"
    )


def _epochs_kept(config: dict[str, Any]) -> str:
    """Which epochs' weights the model has: the best one's, or those a greedy weight soup averaged."""
    soup = config.get("soup_epochs")
    if soup:
        return f"weights averaged over epochs {', '.join(str(epoch) for epoch in soup)} (a greedy weight soup)"
    return f"best epoch {config.get('best_epoch', '–')}"


def _strategy_words(strategy: Any) -> str:
    """The card's sentence for ``strategy`` (its name, escaped, for one this version does not know)."""
    known = STRATEGIES.get(strategy) if isinstance(strategy, str) else None
    return known.description if known is not None else plain(strategy if strategy is not None else "–")


def _relevant_parameters(trial_config: dict[str, Any], modality: str | None = None) -> list[str]:
    """The trial parameters that shaped the chosen model (a linear probe never used the body's, a text model
    has no augmentation to choose)."""
    strategy = trial_config.get("strategy")
    known = STRATEGIES.get(strategy)
    searched = known.parameters if known else ("trained_groups", "backbone_lr", "layer_decay", "head_lr")
    names = ["backbone", "strategy", *(name for name in searched if name != "head")]  # (the head: see Model)
    if known is None or known.runs_epochs:  # a head fitted in one go has no epochs
        names.append("epochs")
    if known is not None and (known.name == LINEAR_PROBE or known.probe_first):
        names.append("probe_passes")
    if modality_augmentations(str(modality)) == (NO_AUGMENTATION,):
        names = [name for name in names if name != "augmentation"]
    return [name for name in names if name in trial_config]


def _metrics_row(name: str, scores: dict[str, Any], interval: bool = False) -> str:
    accuracy = _number(scores.get("accuracy"))
    if interval and scores.get("examples"):
        low, high = wilson_interval(scores["accuracy"], scores["examples"])
        accuracy += f" (95% interval {low:.2f}–{high:.2f})"
    return (
        f"| {name} | {_number(scores.get('examples'))} | {accuracy} | {_number(scores.get('balanced_accuracy'))} | "
        f"{_number(scores.get('macro_f1'))} |"
    )


def _metrics_section(config: dict[str, Any], metrics: dict[str, Any] | None, val_examples: int | None) -> list[str]:
    metrics = metrics or {}
    n_classes = len(config.get("classes", []))
    # runs before validation metrics were recorded: the accuracy the search saw
    validation = metrics.get("validation") or {"accuracy": config.get("val_accuracy"), "examples": val_examples}
    lines = [
        "## Metrics",
        "",
        "| split | examples | accuracy | balanced accuracy | macro F1 |",
        "|---|---|---|---|---|",
        _metrics_row("validation (chose the model)", validation),
    ]
    if metrics.get("test"):
        lines.append(_metrics_row("test (held out)", metrics["test"], interval=True))
    elif metrics:
        lines.append("| test | none held out (the data were all used for training and validation) | | | |")
    else:
        lines.append(f"| test | not recorded (no {METRICS_FILE}) | | | |")
    lines += [
        "",
        f"Chance level (uniform guessing): {1 / max(n_classes, 1):.4f}; the 95% interval of test accuracy "
        "is Wilson's. The validation split chose the model among the trials, so only the test numbers are "
        "unbiased.",
        "",
    ]
    measured = metrics.get("model") or {}
    if measured:
        learnt = "training + validation" if measured.get("fitted_on") == "train+validation" else "the training split"
        lines += [
            f"**Which model was measured.** The saved model learnt from {learnt} (refit: "
            f"{measured.get('refit', 'n/a')}). The validation figures are those of trial {measured.get('trial')}"
            f" as the search scored it ({(metrics.get('validation') or {}).get('validated_by', 'holdout')}), "
            f"before any refit; test: {measured.get('test', 'n/a')}.",
            "",
        ]
    calibration = (metrics.get("test") or {}) if metrics else {}
    temperature = (metrics or {}).get("model", {}).get("temperature")
    if temperature is not None and temperature != 1.0:
        ece = calibration.get("ece")
        lines += [
            f"**Calibrated probabilities.** The logits are divided by a temperature of {temperature:.3f}, fitted on "
            "validation predictions the model was not trained on (temperature scaling); the predicted classes do "
            "not change." + (f" Expected calibration error on the test set: {ece:.4f}." if ece is not None else ""),
            "",
        ]
    if config.get("adapted"):  # the budget changed the trial: say what the saved model is not
        lines += [
            "**Given up for the budget.** The trial that made this model was run cheaper than sampled, "
            f"to fit the time left: {'; '.join(map(str, config['adapted']))}.",
            "",
        ]
    return lines


def _limits_section(
    config: dict[str, Any], summary: dict[str, Any] | None, metrics: dict[str, Any] | None
) -> list[str]:
    data = (summary or {}).get("data") or {}
    test_n = ((metrics or {}).get("test") or {}).get("examples")
    n_classes = len(config.get("classes", []))
    trials = sum(((summary or {}).get("trials_by_state") or {}).values())
    lines = ["## Limits and intended use", ""]
    if test_n:
        lines.append(
            f"- **Evaluated on** the {test_n} held-out test examples only, drawn from the same source and "
            f"split as the training data. **Not evaluated on** data from other sources or times, distribution "
            "shift, corrupted or adversarial inputs, the calibration of its probabilities, or subgroups of the "
            "data (fairness)."
        )
        small = test_n < SMALL_TEST_SET
        lines.append(
            f"- {'**Small data.** ' if small else ''}One test example moves test accuracy by "
            f"{100 / test_n:.1f} points; about {test_n / max(n_classes, 1):.1f} test examples per class. "
            + (
                "Treat the numbers as rough and confirm them on more data before relying on them."
                if small
                else "Per-class performance may vary more than the averages show."
            )
        )
    else:
        lines.append("- **Not evaluated** here: no test metrics were recorded beside this model.")
    if trials > 1:
        lines.append(
            f"- The validation accuracy is the best of {trials} trials, so it is optimistic; the test split, "
            "never used to choose, is the fair estimate."
        )
    if data.get("train") is not None:
        lines.append(f"- Trained on {data['train']} examples: it knows only what they show.")
    lines += [
        f"- **Inputs**: {describe_preprocessing(config.get('preprocessing', {}))}. Inputs prepared otherwise, "
        "or unlike the training data, are outside what was tested.",
        f"- **Intended use**: sorting inputs like the training data into its {n_classes} classes. It always answers "
        'one of those classes, never "none of these"; decisions about people, or where errors are costly, need '
        "an evaluation of their own first.",
        f"- The pretrained backbone ({config.get('backbone', {}).get('weight_source')}) brings the biases of the data it "
        "was pretrained on, and its weights' licence applies to this model too.",
        "",
    ]
    return lines


def _reproduce_section(manifest: dict[str, Any] | None) -> list[str]:
    if not manifest:
        return []
    packages = ", ".join(
        f"{name} {version}"
        for name, version in manifest.get("packages", {}).items()
        if version and name in ("automl_tl", "torch", "timm", "transformers", "optuna")
    )
    hardware = manifest.get("hardware", {})
    device = hardware.get("gpu") or f"CPU, {hardware.get('cpu_count')} cores"
    return [
        "## Reproducing",
        "",
        f"Python {manifest.get('python')}, {packages}; {device}. Command: {code(' '.join(map(str, manifest.get('command', []))), in_table=False)}. "
        f"Everything else (seeds, settings, every package version) is in `{MANIFEST_FILE}`.",
        "",
    ]


def render_model_card(run_dir: str | Path) -> str:
    """The model card of a run directory (or of a bare model directory) as Markdown text."""
    run_dir = Path(run_dir)
    model_dir = model_dir_of(run_dir)
    config = read_json(model_dir / CONFIG_FILE)
    if config is None:
        raise AutomlTLError(f"no saved model in {run_dir}: {CONFIG_FILE} is missing (is it a run directory?)")
    metrics = read_json(model_dir / METRICS_FILE)
    summary = read_json(run_dir / SUMMARY_FILE) if model_dir != run_dir else None
    manifest = read_json(run_dir / MANIFEST_FILE) if model_dir != run_dir else None
    prefix = f"{BEST_MODEL_DIR}/" if model_dir != run_dir else ""
    found = {
        SUMMARY_FILE: summary,
        MANIFEST_FILE: manifest,
        f"{prefix}{CONFIG_FILE}": config,
        f"{prefix}{METRICS_FILE}": metrics,
    }
    read = [name for name, content in found.items() if content is not None]
    backbone = config.get("backbone", {})
    modality = backbone.get("modality", "?")
    written = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = [
        f"# Model card: {code(backbone.get('name'), in_table=False)} fine-tuned for {len(config.get('classes', []))}-class {modality} "
        "classification",
        "",
        f"Written by automl_tl on {written} from the files of {code(run_dir.name, in_table=False)}: "
        f"{', '.join(code(name, in_table=False) for name in read)}.",
        "",
    ]
    lines += _model_section(config, manifest)
    lines += _data_section(config, summary, manifest)
    lines += _search_section(config, summary, manifest)
    lines += _self_training_section(summary)
    lines += _ensemble_section(summary)
    lines += _metrics_section(config, metrics, (summary or {}).get("data", {}).get("val"))
    lines += _limits_section(config, summary, metrics)
    lines += _reproduce_section(manifest)
    return "\n".join(lines)


def write_model_card(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write ``MODEL_CARD.md`` (into ``run_dir`` unless ``path`` says where) and return its path."""
    run_dir = Path(run_dir)
    target = Path(path) if path is not None else run_dir / MODEL_CARD_FILE
    write_text_atomic(target, render_model_card(run_dir))
    return target
