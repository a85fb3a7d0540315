"""The command line: a thin layer over the Python API.

User mistakes print one line on stderr and exit with status 2; an interrupted search
exits with 130 and resumes when the same command is run again.

Each command imports what it runs inside its own function: ``automl-tl --help`` and a mistyped flag then cost
no torch, Optuna or plugin, and listing the backbones or data sets the plugins registered no torch or Optuna
(tests/test_layout.py holds both).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from automl_tl.data.readers import TABLE_EXTENSIONS
from automl_tl.errors import AutomlTLError, ConfigError
from automl_tl.layout import SUMMARY_FILE
from automl_tl.options import (
    LOG_DATE_FORMAT,
    LOG_FORMAT,
    SearchOption,
    bad_input_help,
    renamed_warning,
    search_option,
    search_options,
)

logger = logging.getLogger("automl_tl")

DEFAULT_DATASET = "digits"
#: With no --data, the built-in demo: real digits and the offline ImageNet backbones, a few minutes on 2 CPU cores.
DEMO_DEFAULTS = {"image_size": 32, "timeout": 240.0}
#: Otherwise: the backbones' pretrained input size and no time limit; trials: as many as --timeout allows when it
#: is given, else DEFAULT_TRIALS.
DATA_DEFAULTS = {"image_size": None, "timeout": None}
DEFAULT_TRIALS = search_option("n_trials").default
#: leaderboard columns the search prints (and their short headers); leaderboard.csv has them all
TERMINAL_COLUMNS = {
    "trial": "trial",
    "state": "state",
    "backbone": "backbone",
    "strategy": "strategy",
    "trained_groups": "groups",
    "val_score": "val_score",
    "val_loss": "val_loss",
    "seconds": "seconds",
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value):  # float() takes 'nan' and 'inf'; a nan budget would never run out
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds, got {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value}")
    return value


def _fraction(text: str) -> float:
    """A share of the data between 0 and 1 (--val-size, --test-size, --max-bad-fraction); whether a share
    leaves enough to train on is the estimator's check, which knows the data."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}") from None
    if not 0 <= value <= 1:  # (nan fails this too)
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}")
    return value


#: how each kind of flag text of :mod:`automl_tl.options` is read and checked (None: text)
FLAG_TYPES = {"count": _positive_int, "seconds": _positive_float, "share": _fraction, "int": int, None: None}
#: the parsed arguments' list of (old flag, new flag) given under an earlier version's name, warned about in main
RENAMED_FLAGS_DEST = "_renamed_flags"


class _RenamedFlag(argparse.Action):
    """A flag under the name an earlier version gave it (:attr:`SearchOption.old_flags`): read as the new flag,
    hidden from ``--help``, and noted in the parsed arguments so that :func:`main` warns once logging is set up."""

    def __init__(self, option_strings: Sequence[str], dest: str, new_flag: str = "", **kwargs: Any):
        super().__init__(option_strings, dest, **kwargs)
        self.new_flag = new_flag

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        noted = getattr(namespace, RENAMED_FLAGS_DEST, None) or []
        setattr(namespace, RENAMED_FLAGS_DEST, [*noted, (option_string, self.new_flag)])


def _add_option_flag(parser: argparse.ArgumentParser, option: SearchOption, help_text: str | None = None) -> None:
    """The flag of a search option (see :mod:`automl_tl.options`); ``help_text`` replaces the option's own."""
    help_text = option.help if help_text is None else help_text
    if option.is_switch:  # "--no-prerank" turns prerank off
        parser.add_argument(option.flag, dest=option.flag_dest, action="store_false", help=help_text)
        return
    values: dict[str, Any] = {}  # one value unless the option says otherwise
    if option.many:
        values["nargs"] = "+"
    elif option.const is not None:  # "--mlflow" alone means its const
        values.update(nargs="?", const=option.const)
    parser.add_argument(
        option.flag,
        dest=option.flag_dest,
        type=FLAG_TYPES[option.parse],
        choices=option.choices,
        default=option.flag_default,
        help=help_text,
        metavar=option.metavar,
        **values,
    )
    for old_flag in option.old_flags:
        parser.add_argument(
            old_flag,
            dest=option.flag_dest,
            type=FLAG_TYPES[option.parse],
            choices=option.choices,
            default=option.flag_default,  # the new flag's (argparse's get_default reads either)
            help=argparse.SUPPRESS,
            action=_RenamedFlag,
            new_flag=option.flag,
            **values,
        )


def _example(*commands: str) -> dict:
    """A subcommand parser's keyword arguments that end its --help with example command lines."""
    return {
        "epilog": "example:\n" + "\n".join(f"  {command}" for command in commands),
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


def build_parser() -> argparse.ArgumentParser:
    """The ``automl-tl`` argument parser: one subcommand per task, each ending its --help with an example."""
    parser = argparse.ArgumentParser(prog="automl-tl", description="AutoML for transfer learning.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "search",
        help="search backbones, strategies, trained layer groups and learning rates; save the best model",
        **_example("automl-tl search --data train.csv --label species --timeout 600 --output runs/species"),
    )
    run.add_argument(
        "--config",
        help="YAML or TOML file of these options (e.g. 'max-epochs: 2'); flags given "
        "here override it; its relative paths are relative to its folder",
    )
    run.add_argument(
        "--data",
        help=f"a table ({' '.join(TABLE_EXTENSIONS)}), or a folder with one subfolder per "
        "class (images, audio or .txt files); "
        f"default: the built-in {DEFAULT_DATASET!r} data set",
    )
    run.add_argument("--dataset", help="a registered data set by name (see 'automl-tl datasets')")
    for option in search_options():  # every flag of a search option, in the table's order
        if option.flag is not None:
            _add_option_flag(run, option)

    worker = commands.add_parser(
        "worker",
        help="join a study made by 'automl-tl search' and run its trials "
        "(from this or any machine that reaches its storage)",
        **_example("automl-tl worker --storage postgresql://user:pw@db/automl --study species"),
    )
    worker.add_argument("--storage", required=True, help="the study's storage: a database URL or a *.journal path")
    worker.add_argument("--study", required=True, help="the study's name (search's --study-name)")
    worker.add_argument("--output", help="run directory for the best model (default: the study's own)")
    worker.add_argument("--threads", type=_positive_int, help="torch threads (default: all cores)")
    worker.add_argument(
        "--timeout",
        type=_positive_float,
        help="hard wall-clock budget of this worker, in seconds (default: the study's)",
    )
    # used by 'search --workers N', which writes the results itself once every worker is done
    worker.add_argument("--no-finish", dest="finish", action="store_false", help=argparse.SUPPRESS)
    worker.add_argument("--no-progress", dest="progress", action="store_false", help=argparse.SUPPRESS)

    predict = commands.add_parser(
        "predict",
        help="predict with the best model of a run",
        **_example("automl-tl predict runs/species --data new.csv --output predictions.csv --keep-columns id"),
    )
    predict.add_argument("run_dir", help="run directory of a search, or a saved model directory")
    predict.add_argument(
        "--data", required=True, help="a table (CSV, Parquet, ...) with the training input column, or a folder of files"
    )
    predict.add_argument(
        "--output",
        required=True,
        help="CSV to write: the input's columns as written, prediction, "
        "proba:CLASS for each class, and error (why a row has no "
        "prediction)",
    )
    predict.add_argument(
        "--keep-columns",
        nargs="*",
        metavar="COLUMN",
        help="copy only these columns of a table into the output (the input column always; "
        "default: every column; given alone: none but the input column)",
    )
    kept = "'skip' keeps its row, with no prediction and the reason in the error column"
    _add_option_flag(predict, search_option("on_bad_input"), help_text=bad_input_help(kept))
    _add_option_flag(predict, search_option("max_image_pixels"))

    report = commands.add_parser(
        "report",
        help="rebuild RUN_DIR/report.html and RUN_DIR/plots/ from the run's Optuna study alone",
        **_example("automl-tl report runs/species"),
    )
    report.add_argument("run_dir", help="run directory of a search (the report is written there)")
    report.add_argument(
        "--storage", help="the study's storage: a database URL or a *.journal path (default: RUN_DIR/study.journal)"
    )
    report.add_argument("--study", help="the study's name (search's --study-name; default: automl_tl)")

    export = commands.add_parser(
        "export",
        help="export the best model of a run to timm, transformers, TorchScript "
        "or ONNX, with a README on how to load it and the model card",
        **_example("automl-tl export runs/species --format onnx"),
    )
    export.add_argument("run_dir", help="run directory of a search, or a saved model directory")
    export.add_argument(
        "--format",
        required=True,
        dest="export_format",
        metavar="FORMAT",
        help="timm (image), transformers (text), torchscript or onnx (any modality)",
    )
    export.add_argument("--output", help="folder to write (default: RUN_DIR/exports/FORMAT)")

    commands.add_parser("backbones", help="list registered backbones", **_example("automl-tl backbones"))
    commands.add_parser(
        "datasets",
        help="list registered data sets",
        **_example("automl-tl datasets", "automl-tl search --dataset bbc-news --timeout 600"),
    )
    return parser


def _search_data(args: argparse.Namespace):
    """What to search on (a file or folder path, or a registered data set) and a name for the run directory."""
    from automl_tl.registry import get_registry

    if args.data and args.dataset:
        raise AutomlTLError("give either --data or --dataset, not both")
    if args.data:
        return args.data, Path(args.data).stem or "data"
    dataset = get_registry().get_dataset(args.dataset or DEFAULT_DATASET)
    return dataset, dataset.name


def search_estimator_params(args: argparse.Namespace) -> dict:
    """The options of ``search`` as :class:`~automl_tl.estimator.TransferClassifier` parameters (``test_size``
    None: by the data's size; the estimator's own default is 0)."""
    return {option.name: getattr(args, option.flag_dest) for option in search_options() if option.flag is not None}


def _fill_defaults(args: argparse.Namespace) -> None:
    """Options not given take the demo's defaults without --data or --dataset, the general ones with."""
    defaults = DATA_DEFAULTS if (args.data or args.dataset) else DEMO_DEFAULTS
    for option, value in defaults.items():
        if getattr(args, option) is None:
            setattr(args, option, value)
    if args.trials is None and args.timeout is None:
        args.trials = DEFAULT_TRIALS  # without a budget, a number of trials ends the search


def _with_config_file(
    parser: argparse.ArgumentParser, argv: list[str] | None, args: argparse.Namespace
) -> argparse.Namespace:
    """``argv`` parsed again with the options of the file ``args.config`` as defaults: flags given still win."""
    from automl_tl.config_file import options_from_file
    from automl_tl.estimator import TransferClassifier

    # argparse has no public way to reach a subcommand's parser
    command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
    options = options_from_file(args.config, command)
    if args.data or args.dataset:  # data named on the command line replace the file's, whichever kind
        options.pop("data", None)
        options.pop("dataset", None)
    flag_defaults = {dest: command.get_default(dest) for dest in options}
    command.set_defaults(**options)
    merged = parser.parse_args(argv)

    def check(namespace: argparse.Namespace) -> None:
        namespace = argparse.Namespace(**vars(namespace))
        _fill_defaults(namespace)
        TransferClassifier(**search_estimator_params(namespace)).check_params()

    try:  # now, before any data is read, so that a bad value of the file is blamed on the file
        check(merged)
    except ConfigError as exc:
        from_file = {dest: flag_defaults[dest] for dest, value in options.items() if getattr(merged, dest) == value}
        try:
            check(argparse.Namespace(**{**vars(merged), **from_file}))
        except ConfigError:
            raise exc from None  # the flags alone are at fault
        raise ConfigError(f"config file {args.config}: {exc}") from None
    return merged


def command_started() -> float:
    """When this process started, as a ``time.monotonic()`` value, so that ``--timeout`` counts the start-up
    (importing torch takes seconds) too; now where the system does not say (Linux's /proc does)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        since_boot = float(Path("/proc/uptime").read_text().split()[0])
        age = since_boot - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic()
    return time.monotonic() - min(max(age, 0.0), 60.0)  # a start-up is seconds: anything else is a misreading


def quiet_optuna() -> None:
    """Optuna's own log lines off, for the commands that run or read a study: our own line per trial (and per
    failure) says more, without tracebacks."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)


def cmd_search(args: argparse.Namespace) -> int:
    from automl_tl.estimator import TransferClassifier

    quiet_optuna()

    data, name = _search_data(args)
    _fill_defaults(args)
    params = search_estimator_params(args)
    params["output_dir"] = Path(args.output or Path("runs") / name)
    estimator = TransferClassifier(**params).fit(data, started=command_started())
    _print_outcome(estimator.search_outcome_)
    return 0


def terminal_width() -> int:
    """The terminal's width in columns; 100 when the output is not a terminal (``COLUMNS`` overrides)."""
    return shutil.get_terminal_size((100, 24)).columns


def terminal_table(frame: pd.DataFrame, width: int | None = None, unwrapped: Sequence[str] = ()) -> str:
    """``frame`` as text of at most ``width`` columns (default: :func:`terminal_width`): while it is wider, the
    widest text column (not one named in ``unwrapped``, never narrower than its header) loses a character, and
    its cells wrap onto more lines. Numbers are right-aligned (floats to 4 significant digits), gaps left empty."""
    width = width or terminal_width()
    columns = [str(c) for c in frame.columns]
    numeric = [
        pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]) for c in frame.columns
    ]

    def text(value: Any) -> str:
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return ""
        return f"{value:.4g}" if isinstance(value, float) else " ".join(str(value).split())

    cells = [[text(v) for v in frame[c]] for c in frame.columns]
    widths = [max([len(name), *map(len, column)]) for name, column in zip(columns, cells)]
    while sum(widths) + 2 * (len(widths) - 1) > width:
        narrowable = [
            i
            for i, name in enumerate(columns)
            if not numeric[i] and name not in unwrapped and widths[i] > max(len(name), 8)
        ]
        if not narrowable:
            break  # as narrow as it goes: longer lines than asked, rather than cut names
        widths[max(narrowable, key=lambda i: widths[i])] -= 1

    def line(parts: Sequence[str]) -> str:
        return "  ".join(
            part.rjust(w) if numeric[i] else part.ljust(w) for i, (part, w) in enumerate(zip(parts, widths))
        ).rstrip()

    lines = [line(columns)]
    for row in zip(*cells):
        wrapped = [textwrap.wrap(cell, w) or [""] if len(cell) > w else [cell] for cell, w in zip(row, widths)]
        for k in range(max(map(len, wrapped))):
            lines.append(line([parts[k] if k < len(parts) else "" for parts in wrapped]))
    return "\n".join(lines)


def terminal_leaderboard(board: pd.DataFrame, rows: int = 10) -> str:
    """The ``rows`` best trials of a leaderboard with the columns people compare first (``TERMINAL_COLUMNS``),
    fitted to the terminal; every column is in ``leaderboard.csv``."""
    return terminal_table(board[list(TERMINAL_COLUMNS)].head(rows).rename(columns=TERMINAL_COLUMNS))


def _print_outcome(outcome) -> None:
    from automl_tl.layout import SKIPPED_FILE
    from automl_tl.results.report import describe_self_training

    run_dir = outcome.run_dir
    print(terminal_leaderboard(outcome.leaderboard))
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    metric, model = summary.get("metric", "accuracy"), summary.get("model", {})
    test = (
        "n/a: " + model.get("test", "no test part")
        if outcome.test_metrics is None
        else f"{outcome.test_metrics[metric]:.4f} ({outcome.test_metrics['examples']} examples)"
    )
    print(
        f"\nbest trial {outcome.best_trial}: validation {metric} {summary.get('val_score', math.nan):.4f}; "
        f"test {metric} {test}"
    )
    self_training = describe_self_training(summary.get("self_training"))
    if self_training is not None:
        print(f"self-training: {self_training}")
    if model.get("refit"):
        print(f"refit: {model['refit']}")
    calibration = summary.get("calibration") or {}
    if calibration.get("rows"):
        ece = "" if outcome.test_metrics is None else f"; test ECE {outcome.test_metrics.get('ece', math.nan):.4f}"
        print(f"probabilities calibrated: temperature {calibration['temperature']:.3f}{ece}")
    ensemble = summary.get("ensemble") or {}
    if ensemble.get("reason"):
        print(f"ensemble: {'kept, ' + model['kept'] if ensemble.get('kept') else 'none'}: {ensemble['reason']}")
    if outcome.transferability is not None:
        taus = ", ".join(
            f"{name} {'n/a' if tau is None else f'{tau:+.2f}'}"
            for name, tau in outcome.transferability["kendall_tau"].items()
        )
        print(
            f"transferability ranking: {', '.join(outcome.transferability['ranking'])} (Kendall tau vs "
            f"best validation accuracy: {taus})"
        )
    extra = ", transferability.csv" if outcome.transferability is not None else ""
    print(
        f"run directory: {run_dir} (report.html, MODEL_CARD.md, leaderboard.csv, summary.json{extra}, "
        f"{SKIPPED_FILE}, manifest.json, best_model/)"
    )
    print(f"open {run_dir / 'report.html'} in a browser; 'automl-tl export {run_dir} --format onnx' exports the model")


def cmd_worker(args: argparse.Namespace) -> int:
    import torch

    from automl_tl.search.study import join_study

    quiet_optuna()
    if args.threads:
        torch.set_num_threads(args.threads)
    outcome = join_study(
        args.storage,
        args.study,
        args.output,
        timeout=args.timeout,
        finish=args.finish,
        show_progress=None if args.progress else False,
    )
    if outcome is not None:
        _print_outcome(outcome)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from automl_tl.results.loading import load
    from automl_tl.results.model_io import ERROR_COLUMN
    from automl_tl.results.report import spreadsheet_safe_table

    predictor = load(args.run_dir)
    # refuses labels the model never learnt, and data none of whose inputs can be read
    table = predictor.predict_table(
        args.data,
        max_image_pixels=args.max_image_pixels,
        on_bad_input=args.on_bad_input,
        keep_columns=args.keep_columns,
    )
    output = Path(args.output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        # texts copied from the input (or a class name) must not become live formulas in a spreadsheet
        spreadsheet_safe_table(table).to_csv(output, index=False)
    except OSError as exc:
        raise AutomlTLError(f"cannot write predictions to {output}: {exc.strerror}") from None
    failed = int((table[ERROR_COLUMN] != "").sum())
    unread = f"; {failed} row(s) could not be read and have none (see the error column)" if failed else ""
    print(f"wrote {len(table) - failed} predictions to {output}{unread}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from automl_tl.results.html_report import rebuild_report

    quiet_optuna()
    path = rebuild_report(args.run_dir, storage=args.storage, study_name=args.study)
    print(f"wrote {path} (figures in {path.parent / 'plots'})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from automl_tl.results.export import EXPORT_INFO_FILE, README_FILE, export_model

    folder = export_model(args.run_dir, args.export_format, args.output)
    print(
        f"exported {args.export_format} model to {folder} ({README_FILE}: how to load and run it; "
        f"{EXPORT_INFO_FILE}: its inputs)"
    )
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from automl_tl.registry import get_registry

    registry = get_registry()
    rows = [
        {
            "name": b.name,
            "modality": b.modality,
            "weights": b.weight_source,
            "installed": "yes" if b.weights_available() else "no",
            "plugin": registry.owner("backbone", b.name),
        }
        for b in registry.list_backbones()
    ]
    # the full weight source wraps in its column; names are never wrapped (they are typed back)
    print(terminal_table(pd.DataFrame(rows), unwrapped=("name",)) if rows else "no backbones registered")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from automl_tl.registry import get_registry

    for dataset in get_registry().list_datasets():
        print(f"{dataset.name:16} {dataset.modality:6} {dataset.description}")
    return 0


COMMANDS = {
    "search": cmd_search,
    "worker": cmd_worker,
    "predict": cmd_predict,
    "report": cmd_report,
    "export": cmd_export,
    "backbones": cmd_backbones,
    "datasets": cmd_datasets,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``automl-tl``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=LOG_FORMAT,
        datefmt=LOG_DATE_FORMAT,
    )
    for noisy in ("timm", "PIL", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for old_flag, new_flag in getattr(args, RENAMED_FLAGS_DEST, None) or ():
        logger.warning(renamed_warning(old_flag, new_flag))
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():
            if getattr(args, "config", None):
                args = _with_config_file(parser, argv, args)
            status = COMMANDS[args.command](args)
            sys.stdout.flush()  # here, where a reader gone away is caught, not at the interpreter's exit
            return status
    except AutomlTLError as exc:
        print(f"automl-tl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("automl-tl: interrupted; finished trials are kept, run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (``automl-tl backbones | head``): stop as a C program would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush does not fail again
        return 141  # 128 + SIGPIPE, what a shell reports for a program stopped this way


if __name__ == "__main__":
    sys.exit(main())
