"""Options of a command from a YAML or TOML file: ``automl-tl search --config job.yaml``.

The file is a mapping of option names to values; a name is a long flag without its dashes, with
dashes or underscores (``max-epochs: 2``, ``max_epochs = 2``); an on/off flag takes true or false
(``no-prerank: true``, or ``prerank: false``); a flag taking several values takes a list (a single
name is a list of one); an option's name in earlier versions (``max-freeze-depth``) is still read, with a
warning. Every value goes through the flag's own checks (type, range, choices), so
a file accepts exactly what the command line does: the search options' keys, kinds, ranges and
choices are those of their table (:mod:`automl_tl.options`), from which the flags are made. Relative
paths of ``data``, ``output`` and a journal ``storage`` are relative to the file's folder, wherever
the command runs. Any mistake is one line naming the file and the option.
"""

from __future__ import annotations

import argparse
import difflib
import logging
from pathlib import Path
from typing import Any

import tomllib
import yaml

from automl_tl.config import is_journal_path
from automl_tl.errors import ConfigError, first_line
from automl_tl.options import renamed_option, renamed_warning, search_options

logger = logging.getLogger(__name__)

#: options (argparse dests) whose relative paths are taken relative to the config file's folder: the command
#: line's own --data, and the search options that are paths
PATH_OPTIONS = ("data",) + tuple(o.flag_dest for o in search_options() if o.kind.rstrip("?") == "path")
#: options a file cannot set
NOT_IN_FILES = ("help", "config")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping a ``.yaml``, ``.yml`` or ``.toml`` file holds; a file without any option is refused."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ConfigError(
            f"config file {path} has an unknown extension {suffix or '(none)'!r}; expected .yaml, .yml or .toml"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        values = tomllib.loads(text) if suffix == ".toml" else yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"cannot parse config file {path} as YAML: {exc.problem or exc.context}{where}") from None
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        kind = "TOML" if suffix == ".toml" else "YAML"
        raise ConfigError(f"cannot parse config file {path} as {kind}: {' '.join(first_line(exc).split())}") from None
    if not isinstance(values, (dict, type(None))):
        raise ConfigError(
            f"config file {path} holds a {type(values).__name__}; expected a mapping of option "
            "names to values (e.g. 'max-epochs: 2')"
        )
    if not values:  # an empty file (or comments alone) would silently run the built-in demo instead
        raise ConfigError(
            f"config file {path} holds no options; write them in it (e.g. 'data: train.csv'), "
            "or leave out --config to run the built-in demo"
        )
    return values


def options_from_file(path: str | Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The options a config file gives, checked as ``parser`` checks its flags: a mapping of argparse ``dest``
    names to values, ready for ``parser.set_defaults`` (so that flags on the command line still win)."""
    path = Path(path)
    keys = _option_keys(parser)
    options: dict[str, Any] = {}
    given_as: dict[str, str] = {}  # dest -> the key that set it
    for key, value in read_config_file(path).items():
        name = str(key).replace("-", "_")
        renamed = renamed_option(name)
        if renamed is not None and renamed.flag is not None and name not in keys:  # an earlier version's key
            new = renamed.flag[2:] if "-" in str(key) else renamed.name
            logger.warning("config file %s: %s", path, renamed_warning(repr(str(key)), repr(new)))
            name = renamed.flag[2:].replace("-", "_")
        if name not in keys:
            known = sorted({k.replace("_", "-") for k, (_, direct) in keys.items() if not direct})
            close = difflib.get_close_matches(str(key).replace("_", "-"), known, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else f"expected some of {', '.join(known)}"
            raise ConfigError(f"config file {path}: unknown option {key!r}; {hint}")
        action, direct = keys[name]
        if action.dest in options:
            raise ConfigError(f"config file {path}: option {key!r} is given twice (as {given_as[action.dest]!r} too)")
        given_as[action.dest] = str(key)
        where = f"config file {path}: option {key!r}"
        options[action.dest] = _relative_to(path.parent, action.dest, _checked(where, value, action, direct))
    return options


def _option_keys(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.Action, bool]]:
    """Each name a file may use (underscored) -> (its action, whether the value is the dest's own value).

    A long flag's name takes the value the flag has on the command line (``no-prerank: true``); an on/off
    flag's dest name takes the setting itself (``prerank: false``).
    """
    keys: dict[str, tuple[argparse.Action, bool]] = {}
    for action in parser._actions:  # argparse has no public list of a parser's options
        if action.dest in NOT_IN_FILES or action.help == argparse.SUPPRESS:
            continue
        for flag in action.option_strings:
            if flag.startswith("--"):
                keys[flag[2:].replace("-", "_")] = (action, False)
        if _is_switch(action):
            keys.setdefault(action.dest, (action, True))
    return keys


def _is_switch(action: argparse.Action) -> bool:
    return isinstance(action, argparse._StoreConstAction) and isinstance(action.const, bool)


def _checked(where: str, value: Any, action: argparse.Action, direct: bool) -> Any:
    """``value`` as the flag's dest would hold it, checked by the flag's own type and choices."""
    if value is None:
        raise ConfigError(f"{where} has no value")
    if _is_switch(action):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value if direct else (action.const if value else action.default)
    if action.nargs in ("+", "*"):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{where}: expected a list of values, got {value!r}")
        return [_scalar(where, item, action) for item in items]
    return _scalar(where, value, action)


def _scalar(where: str, value: Any, action: argparse.Action) -> Any:
    if action.type is None:  # text: names, paths, URLs
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, got {value!r}")
    else:  # a number: the flag's own type function checks its range and says what it expects
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            value = action.type(str(value))
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except ValueError:  # a plain int() or float()
            kind = "a whole number" if action.type is int else "a number"
            raise ConfigError(f"{where}: expected {kind}, got {value!r}") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: invalid choice {value!r}; expected one of {', '.join(map(str, action.choices))}")
    return value


def _relative_to(folder: Path, dest: str, value: Any) -> Any:
    """A relative path given in the file, made relative to the file's folder."""
    if dest in PATH_OPTIONS or (dest == "storage" and is_journal_path(value)):
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else folder / path)
    return value
