"""The options of a search, defined once: one row per option, read by every face of the search.

Each :class:`SearchOption` gives an option's name (a :class:`~automl_tl.estimator.TransferClassifier`
parameter, and the :class:`~automl_tl.config.SearchConfig` field where there is one), its kind (the
value's Python type, as :func:`~automl_tl.config.check_types` names it), its default, how a flag's text is
read (which gives its range), its choices, its help text and its ``automl-tl search`` flag. From the table:

* the CLI generates the flags of ``automl-tl search`` (and the bad-input flags ``predict`` shares with it),
  and turns the parsed flags into ``TransferClassifier`` parameters (:mod:`automl_tl.cli`);
* config files (:mod:`automl_tl.config_file`) accept the generated flags, so their keys, types, ranges and
  choices are the table's; which options are paths relative to the file comes from the kinds here;
* an option renamed since an earlier version (:data:`~automl_tl.strategies.RENAMED`) keeps its old name as a
  hidden flag, a config file's key and a ``TransferClassifier`` parameter, each warned about
  (:attr:`SearchOption.old_names`);
* ``TransferClassifier.check_params`` checks the kinds of the parameters ``SearchConfig`` does not hold, and
  ``SearchConfig`` the kinds of its fields; a test holds ``TransferClassifier``'s explicit signature (which
  scikit-learn needs) to the names and defaults here.

Limits that need more than a flag's reading (image sizes of 16 to 1024 pixels, a seed below 2**32, the epochs'
order) are checked by :class:`~automl_tl.config.SearchConfig` and named in the help texts.

Options of one face only stay where they are: ``--config``, ``--data`` and ``--dataset`` of ``search``,
``-v/--verbose``, and the flags of the other subcommands, in :mod:`automl_tl.cli`; ``fit``'s ``started`` in
Python. ``device`` and ``show_progress`` are rows here without a flag (Python only).

The choices and limits the table names (pruners, samplers, input-size ranges, the bad-input policy) are
defined here and read by the stages; the others come from the ground floor (strategies, heads, metrics,
modalities). None of these imports torch, so ``automl-tl --help`` does not either.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from automl_tl.augmentation import AUGMENTATION_NAMES, AUGMENTATIONS
from automl_tl.heads import HEAD_KINDS
from automl_tl.inputs import MODALITIES
from automl_tl.metrics import METRIC_NAMES
from automl_tl.strategies import DEFAULT_STRATEGIES, RENAMED, STRATEGY_NAMES

#: a flag's default is the Python default unless a row says otherwise
_SAME: Any = object()

#: how a flag's text (or a config file's value) is read: a whole number >= 1, a positive finite number of
#: seconds, a share between 0 and 1, or any whole number; None reads it as text (or the flag is a switch)
PARSE_KINDS = ("count", "seconds", "share", "int")

# The choices and limits of the options: defined here, read by the stages (the data's bad-input policy too).
PRUNERS = ("successive_halving", "hyperband", "none")
SAMPLERS = ("tpe", "random")
#: a study's name unless one is given (``--study-name``)
DEFAULT_STUDY_NAME = "automl_tl"
#: input sizes, bounded so that a slip of the keyboard (``--image-size 100000``) is refused at once rather than
#: ending, after the data are read, in every trial running out of memory. 1024 pixels is over four times the
#: 224 that the shipped image backbones were pretrained at (a batch of 32 such images is 400 MB of floats before
#: any activation); a minute of audio is over 25 times the longest pretrained clip (2.3 s); 8192 tokens is the
#: longest context of common text encoders.
IMAGE_SIZE_RANGE = (16, 1024)
MAX_CLIP_SECONDS = 60.0
MAX_LENGTH_RANGE = (1, 8192)
#: what to do with an input that cannot be read (``on_bad_input``, ``--on-bad-input``)
BAD_INPUT_SKIP = "skip"  # leave the row out, list it in DatasetBundle.skipped, warn once
BAD_INPUT_ERROR = "error"  # refuse the data, naming the first such input
BAD_INPUT_POLICIES = (BAD_INPUT_SKIP, BAD_INPUT_ERROR)
DEFAULT_ON_BAD_INPUT = BAD_INPUT_SKIP
#: more than this share of the labelled rows unreadable, the data are refused whatever the policy
DEFAULT_MAX_BAD_FRACTION = 0.1
#: Images with more pixels than this (read from the header, before decoding) are bad inputs (``max_image_pixels``,
#: ``--max-image-pixels``). It is where PIL itself refuses a file as a possible decompression bomb (twice its
#: warning threshold): room for any camera's photo and most scans and panoramas, while a PNG or TIFF, which
#: cannot be decoded reduced, costs at most ~0.5 GB as RGB (a JPEG is decoded reduced, far smaller).
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
#: how the command line's log lines look (a Ray worker's too: they are printed among the command's)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATE_FORMAT = "%H:%M:%S"
#: ``--ray`` without an address: a new Ray runtime on this machine (what ``ray.init(address="local")`` starts)
RAY_LOCAL = "local"
RAY_INSTALL_HINT = "pip install 'automl_tl[ray]'"


@dataclass(frozen=True)
class SearchOption:
    """One option of a search: what it is called, holds and defaults to in Python and on the command line."""

    #: the TransferClassifier parameter
    name: str
    #: the value's kind, as :func:`~automl_tl.config.check_types` names it ("int?": a whole number or None)
    kind: str
    #: TransferClassifier's default
    default: Any
    help: str = ""
    #: the long flag of ``automl-tl search``; None: Python only. A "bool" option's flag is "--no-..." and turns it off
    flag: str | None = None
    #: how the flag's text is read (one of :data:`PARSE_KINDS`; None: text)
    parse: str | None = None
    choices: tuple[str, ...] | None = None
    #: the flag takes one or more values (a list)
    many: bool = False
    metavar: str | None = None
    #: the flag's argparse ``dest`` where it is not ``name`` (kept as the flags have always had it)
    dest: str | None = None
    #: the flag's default where it differs from Python's (the CLI decides some later, by the data)
    cli_default: Any = _SAME
    #: the flag may be given without a value, which then means this
    const: Any = None

    @property
    def flag_dest(self) -> str:
        """The attribute of the parsed arguments that holds this option."""
        return self.dest or self.name

    @property
    def flag_default(self) -> Any:
        """What the flag holds when it is not given."""
        return self.default if self.cli_default is _SAME else self.cli_default

    @property
    def is_switch(self) -> bool:
        """Whether the flag takes no value and turns the option off."""
        return self.kind == "bool"

    @property
    def old_names(self) -> tuple[str, ...]:
        """What earlier versions called this option (:data:`~automl_tl.strategies.RENAMED`): still accepted, with
        a warning (:func:`renamed_warning`), as a ``TransferClassifier`` parameter and a config file's key."""
        return tuple(old for old, new in RENAMED.items() if new == self.name)

    @property
    def old_flags(self) -> tuple[str, ...]:
        """The flags of :attr:`old_names`: still accepted, with a warning, and hidden from ``--help``."""
        return tuple("--" + old.replace("_", "-") for old in self.old_names) if self.flag else ()


def renamed_warning(old: str, new: str) -> str:
    """The warning for an option given under the name an earlier version gave it."""
    return f"{old} was renamed to {new}; the old name is still read, but use the new one"


def bad_input_help(rows: str) -> str:
    """The help of ``--on-bad-input``; ``rows`` says what the command does with an unreadable row."""
    return (
        f"an input that cannot be read (missing, corrupt, truncated, too large, unsupported, empty): {rows}; "
        f"'error' refuses at the first (default: {DEFAULT_ON_BAD_INPUT})"
    )


@functools.cache
def search_options() -> tuple[SearchOption, ...]:
    """Every option of a search, in the order of ``automl-tl search --help``, the Python-only ones last."""
    default_trials = 10
    return (
        SearchOption("label_column", "str", "label", "label column (default: label)", flag="--label", dest="label"),
        SearchOption(
            "input_column",
            "str?",
            None,
            "input column (default: the only other column, or image/path/file)",
            flag="--input-column",
        ),
        SearchOption(
            "group_column",
            "str?",
            None,
            "column of groups (patient, speaker, session...) whose rows must stay together in one of "
            "training, validation and test; identical inputs always do (default: none)",
            flag="--group-column",
            metavar="COLUMN",
        ),
        SearchOption(
            "backbones",
            "names?",
            None,
            "names or wildcards (default: every backbone of the data's modality whose weights are installed)",
            flag="--backbones",
            many=True,
        ),
        SearchOption(
            "n_trials",
            "int?",
            default_trials,
            f"finished trials to reach (default: as many as --timeout allows, or {default_trials} without it)",
            flag="--trials",
            parse="count",
            dest="trials",
            cli_default=None,
        ),
        SearchOption(
            "timeout",
            "float?",
            None,
            "hard wall-clock budget of the whole command, in seconds: "
            "pre-ranking, trials, refit and test evaluation "
            "(default: none; demo: 240)",
            flag="--timeout",
            parse="seconds",
        ),
        SearchOption(
            "metric",
            "str?",
            None,
            "what trials are selected and pruned by (default: balanced_accuracy, with a class-weighted "
            "loss, when the largest class has 3x the examples of the smallest; else accuracy)",
            flag="--metric",
            choices=METRIC_NAMES,
        ),
        SearchOption(
            "val_size",
            "number",
            0.15,
            "share of the labelled data held out to choose among trials (default: 0.15)",
            flag="--val-size",
            parse="share",
        ),
        # None: by the data's size, as the command line does; Python holds out no test part unless asked
        SearchOption(
            "test_size",
            "number?",
            0.0,
            "share held out as a test part that no model learns from (default: 0.15 from 2,000 "
            "labelled examples up, else 0: then the validation estimate is the one reported)",
            flag="--test-size",
            parse="share",
            cli_default=None,
        ),
        SearchOption(
            "refit",
            "bool",
            True,
            "keep the best trial's model as it is instead of training its configuration again on "
            "training + validation data at the end",
            flag="--no-refit",
        ),
        SearchOption(
            "ensemble",
            "bool",
            True,
            "keep the best single model instead of trying, after the trials, a weighted average of the best "
            "trial and the probes (greedy ensemble selection on validation, kept only when it beats the best "
            "single model on validation rows it was not chosen on)",
            flag="--no-ensemble",
        ),
        SearchOption(
            "calibrate",
            "bool",
            True,
            "leave the kept model's probabilities as they come instead of calibrating them by temperature "
            "scaling fitted on validation predictions it was not trained on",
            flag="--no-calibration",
        ),
        SearchOption(
            "seed",
            "int",
            0,
            "seeds the data split, the sampler and each trial's training (default: 0)",
            flag="--seed",
            parse="int",
        ),
        SearchOption(
            "storage",
            "str?",
            None,
            "Optuna storage URL or *.journal path (default: RUN_DIR/study.journal)",
            flag="--storage",
        ),
        SearchOption(
            "study_name",
            "str",
            DEFAULT_STUDY_NAME,
            "the Optuna study's name in --storage; another name starts another study there "
            f"(default: {DEFAULT_STUDY_NAME})",
            flag="--study-name",
        ),
        SearchOption(
            "output_dir", "path?", None, "run directory (default: runs/<data name>)", flag="--output", dest="output"
        ),
        SearchOption(
            "min_epochs",
            "int",
            1,
            "epochs every trial runs before it can be pruned (default: 1)",
            flag="--min-epochs",
            parse="count",
        ),
        SearchOption(
            "max_epochs",
            "int",
            10,
            "epochs each trial is scheduled for; pruning, early stopping and the time left may cut it (default: 10)",
            flag="--max-epochs",
            parse="count",
        ),
        SearchOption(
            "max_trained_groups",
            "int?",
            None,
            "most layer groups of the body, counted from the head, that a trial may train; 0: the head only "
            "(default: all)",
            flag="--max-trained-groups",
            parse="int",
        ),
        SearchOption(
            "batch_size",
            "int",
            32,
            "examples per training step; halved once for a trial that runs out of memory (default: 32)",
            flag="--batch-size",
            parse="count",
        ),
        SearchOption(
            "image_size",
            "int?",
            None,
            f"image side in pixels, {IMAGE_SIZE_RANGE[0]} to {IMAGE_SIZE_RANGE[1]} (smaller is faster on "
            "CPU; default: the backbone's pretrained size; demo: 32)",
            flag="--image-size",
            parse="count",
        ),
        SearchOption(
            "max_length",
            "int?",
            None,
            f"text: tokens per example, at most {MAX_LENGTH_RANGE[1]} (default: the backbone's)",
            flag="--max-length",
            parse="count",
        ),
        SearchOption(
            "clip_seconds",
            "float?",
            None,
            f"audio: seconds per example, at most {MAX_CLIP_SECONDS:g} (default: the backbone's)",
            flag="--clip-seconds",
            parse="seconds",
        ),
        SearchOption(
            "pruner",
            "str",
            "successive_halving",
            "how weak fine-tuning trials are stopped after --min-epochs; 'none' runs every trial to "
            "the end (default: successive_halving)",
            flag="--pruner",
            choices=PRUNERS,
        ),
        SearchOption(
            "sampler",
            "str",
            "tpe",
            "how the next trial's parameters are chosen: Optuna's TPE, or 'random' as a baseline (default: tpe)",
            flag="--sampler",
            choices=SAMPLERS,
        ),
        # None: the defaults, which the flags spell out
        SearchOption(
            "strategies",
            "names?",
            None,
            f"adaptation strategies to search (default: {' '.join(DEFAULT_STRATEGIES)}; also: "
            f"{' '.join(s for s in STRATEGY_NAMES if s not in DEFAULT_STRATEGIES)})",
            flag="--strategies",
            choices=STRATEGY_NAMES,
            many=True,
            cli_default=list(DEFAULT_STRATEGIES),
        ),
        SearchOption(
            "heads",
            "names?",
            None,
            "head structures to search (default: all)",
            flag="--heads",
            choices=HEAD_KINDS,
            many=True,
            cli_default=list(HEAD_KINDS),
        ),
        SearchOption(
            "augmentation",
            "names?",
            None,
            "training-batch augmentations to search for the strategies that train the body; 'none' alone turns "
            "augmentation off (default: the modality's: "
            + "; ".join(f"{modality}: {' '.join(names)}" for modality, names in AUGMENTATIONS.items())
            + ")",
            flag="--augmentation",
            choices=AUGMENTATION_NAMES,
            many=True,
        ),
        SearchOption(
            "trial_timeout",
            "float?",
            None,
            "hard wall-clock budget per trial, in seconds",
            flag="--trial-timeout",
            parse="seconds",
        ),
        SearchOption(
            "top_k",
            "int?",
            None,
            "search only the k backbones ranked best by transferability (default: all)",
            flag="--top-k",
            parse="count",
        ),
        SearchOption(
            "prerank",
            "bool",
            True,
            "skip the transferability pre-ranking and its warm-start trials",
            flag="--no-prerank",
        ),
        SearchOption(
            "feature_cache",
            "bool",
            True,
            "recompute frozen-body features in every trial instead of caching them on disk",
            flag="--no-feature-cache",
        ),
        SearchOption(
            "modality",
            "str?",
            None,
            "what the input column holds (default: inferred from its values)",
            flag="--modality",
            choices=MODALITIES,
        ),
        SearchOption(
            "max_samples",
            "int?",
            None,
            "use at most this many examples (stratified sample)",
            flag="--max-samples",
            parse="count",
        ),
        SearchOption(
            "shots",
            "int?",
            None,
            "few labels: learn from K examples per class (seeded draw), used for training and model "
            "selection alike; every other example is the test set (below 10 shots, validation is "
            "by cross-validation of nearest centroid and logistic regression)",
            flag="--shots",
            parse="count",
            metavar="K",
        ),
        SearchOption(
            "unlabeled",
            "path?",
            None,
            "a table (with the input column) or folder of inputs without labels, read like the training "
            "data; with the training data's rows without a label, the pool that self-training "
            "pseudo-labels (a seeded sample of 4,000 at most; unreadable inputs are skipped)",
            flag="--unlabeled",
            metavar="PATH",
        ),
        SearchOption(
            "self_training",
            "bool",
            True,
            "leave the unlabelled inputs unused instead of self-training: after the search, the best "
            "model's confident predictions on them (threshold chosen on validation) join its training "
            "rows for one more fit, kept only if it scores better on validation",
            flag="--no-self-training",
        ),
        SearchOption(
            "on_bad_input",
            "str",
            DEFAULT_ON_BAD_INPUT,
            bad_input_help("'skip' leaves its row out and lists it in RUN_DIR/skipped.csv"),
            flag="--on-bad-input",
            choices=BAD_INPUT_POLICIES,
        ),
        SearchOption(
            "max_image_pixels",
            "int?",
            DEFAULT_MAX_IMAGE_PIXELS,
            "larger images are unreadable inputs, known from their header before decoding "
            f"(default: {DEFAULT_MAX_IMAGE_PIXELS:,}, where PIL itself stops)",
            flag="--max-image-pixels",
            parse="count",
            metavar="N",
        ),
        SearchOption(
            "max_bad_fraction",
            "number",
            DEFAULT_MAX_BAD_FRACTION,
            "refuse the data when more than this share of the labelled rows cannot be read "
            f"(default: {DEFAULT_MAX_BAD_FRACTION}); rows without a label are never trained on",
            flag="--max-bad-fraction",
            parse="share",
            metavar="F",
        ),
        SearchOption(
            "workers",
            "int",
            1,
            "trials at once: worker processes on this machine sharing the study and the cores, or Ray workers "
            "with --ray (default: 1)",
            flag="--workers",
            parse="count",
        ),
        SearchOption(
            "ray_address",
            "str?",
            None,
            "run the trials on Ray: alone, a local Ray runtime on this machine; 'auto' or ray://HOST:10001, "
            "a running cluster (its study in --storage postgresql://... when it has several machines; "
            f"needs {RAY_INSTALL_HINT})",
            flag="--ray",
            metavar="ADDRESS",
            const=RAY_LOCAL,
        ),
        SearchOption(
            "trial_resources",
            "str?",
            None,
            "with --ray, what each trial asks Ray for, cpu=N,gpu=M (default: a GPU each where the cluster has "
            "GPUs, and its cores shared among --workers)",
            flag="--trial-resources",
            metavar="cpu=N,gpu=M",
        ),
        SearchOption(
            "tracking_uri",
            "str?",
            None,
            "log every trial and the best model to MLflow: a folder (default: ./mlruns), "
            "sqlite:///mlflow.db or a tracking server's http:// address",
            flag="--mlflow",
            metavar="URI",
            const="mlruns",
        ),
        # Python only: the command line picks the device itself and shows progress on a terminal
        SearchOption("device", "any", None, "torch device (None: a GPU if there is one)"),
        SearchOption("show_progress", "bool?", None, "progress bars (None: on a terminal only)"),
    )


def renamed_option(old_name: str) -> SearchOption | None:
    """The option that earlier versions called ``old_name`` (:attr:`SearchOption.old_names`), or None."""
    return next((option for option in search_options() if old_name in option.old_names), None)


def search_option(name: str) -> SearchOption:
    """The row of the option called ``name`` (a TransferClassifier parameter); KeyError if there is none."""
    for option in search_options():
        if option.name == name:
            return option
    raise KeyError(name)


def option_kinds(names: set[str] | None = None) -> dict[str, str]:
    """Option name -> kind (see :func:`~automl_tl.config.check_types`) of every option, or of those in ``names``."""
    return {o.name: o.kind for o in search_options() if names is None or o.name in names}
