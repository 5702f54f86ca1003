"""The command line: argument parsing for every command, on top of the plain library (stage: commands).

User errors (:class:`~featcache.errors.FeatcacheError`) print one line on stderr and exit 2; a parameter a
message names (``{name}``, or a :class:`~featcache.errors.ParameterError`'s) reads as the flag the user typed, not
the Python parameter. ``--debug`` shows the traceback. Logs and progress go to stderr, so stdout carries only
results (a cache path, a table). Modules here import the library on use, inside each command's ``_main``, so
``--help`` is instant and ``ls``/``verify``/``explain --help`` never load torch.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import os
import sys
from typing import Optional, Sequence

from .._malloc import tune_allocator
from ..config._base import comma_list
from ..errors import FeatcacheError, ParameterError

__all__ = ["Parser", "run_cli", "setup_logging", "config_from_args", "flag_of", "add_run_flags", "add_print_flags",
           "add_config_flags"]

log = logging.getLogger("featcache")

class Parser(argparse.ArgumentParser):
    """argparse with featcache's error style: one line on stderr, exit status 2."""

    def error(self, message):
        hint = ""
        if message.startswith("unrecognized arguments: "):
            flags = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            typed = [w.split("=")[0] for w in message.split(": ", 1)[1].split() if w.startswith("-")]
            close = [c for w in typed for c in difflib.get_close_matches(w, flags, n=1, cutoff=0.6)]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
        self.exit(2, f"featcache: error: {message}{hint} (see {self.prog} --help)\n")


def add_run_flags(p: argparse.ArgumentParser, quiet: Optional[str] = None) -> None:
    """The flags every command shares: ``--debug``, and with ``quiet`` (what ``-q`` still prints) ``--no-progress``
    and ``-q/--quiet``."""
    if quiet is not None:
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("-q", "--quiet", action="store_true", help=f"only errors{quiet}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def add_print_flags(p: argparse.ArgumentParser) -> None:
    """What the commands that print a leaderboard (sweep, finetune) show of it: ``--top``."""
    p.add_argument("--top", type=int, default=20, metavar="N",
                   help="leaderboard rows to print (every row is in OUT/leaderboard.csv) (default: 20)")


class _Words(argparse.Action):
    """A list of words given with spaces, commas or both (``--augment flip,crop`` = ``--augment flip crop``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, tuple(w for v in values for w in comma_list(v)))


def _default_text(value, argparse_kwargs: dict) -> str:
    if isinstance(value, (list, tuple)):
        return (" " if argparse_kwargs.get("nargs") else ",").join(_default_text(v, {}) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _flag_spelling(f: dataclasses.Field) -> str:
    """A setting's flag: its own spelling, else ``--the-name``, or ``--no-the-name`` for a bool that defaults to
    True."""
    no = "--no-" if isinstance(f.default, bool) and f.default else "--"
    return f.metadata.get("flag") or no + f.name.replace("_", "-")


def add_config_flags(p: argparse.ArgumentParser, config_class, names: Optional[Sequence[str]] = None) -> None:
    """One flag per field of ``config_class`` that has help (:func:`featcache.config.setting`), or only those in
    ``names``: its spelling, type, choices (from an ``Options`` constraint), default and help all come from the
    field, so no default is written twice. A bool that defaults to True is ``--no-<name>``."""
    from .._validation import Options

    for f in dataclasses.fields(config_class):
        meta = f.metadata
        if not meta.get("help") or (names is not None and f.name not in names):
            continue
        kwargs = dict(meta["argparse"])
        words = kwargs.pop("words", False)
        help_text = meta["help"]
        flag = _flag_spelling(f)
        if isinstance(f.default, bool):
            kwargs["action"] = "store_false" if f.default else "store_true"
        else:
            allowed = config_class._parameter_constraints.get(f.name, [])
            if len(allowed) == 1 and isinstance(allowed[0], Options) and "type" not in kwargs:
                kwargs["choices"] = allowed[0].values
            if words:
                kwargs.update(nargs="+", action=_Words)
            if f.default is not None and f.default is not dataclasses.MISSING and "(default:" not in help_text:
                help_text += f" (default: {_default_text(f.default, kwargs)})"
        if meta["key"]:
            help_text += " (part of the cache key)"
        p.add_argument(flag, dest=f.name, help=help_text, **kwargs)


def config_from_args(config_class, args: argparse.Namespace, **changes):
    """A config dataclass from the parsed flags whose destinations are its fields (``None`` = the default); a
    config that holds another (``FitConfig``) sorts them with its ``from_settings``."""
    fields = set(config_class.__dataclass_fields__) | set(getattr(config_class, "NESTED_FIELDS", ()))
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return getattr(config_class, "from_settings", config_class)(**{**values, **changes})


def setup_logging(quiet: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("featcache: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def flag_of(parser: argparse.ArgumentParser, param: str) -> Optional[str]:
    """The flag whose value lands in ``param`` (``layers`` -> ``--layer``), or None when no flag sets it."""
    for action in parser._actions:
        if action.dest == param and action.option_strings:
            return max(action.option_strings, key=len)
    return None


def _for_cli(e: FeatcacheError, parser) -> str:
    """The message of ``e`` with each parameter it names as the flag that sets it in this command, or, for a
    parameter this command has no flag for (an extract setting named by sweep), the flag its field spells."""
    if isinstance(e, ParameterError) and flag_of(parser, e.param):
        return e.for_flag(flag_of(parser, e.param))
    return e.render(lambda name, value: _flag_text(parser, name, value))


def _flag_text(parser, name: str, value: Optional[str]) -> str:
    """``{name}`` or ``{name=value}`` on the command line: ``--n-jobs``, ``--budget 90``, or a bool's own flag
    (``{use_views=False}`` is ``--no-views``)."""
    action = next((a for a in parser._actions if a.dest == name and a.option_strings), None)
    if action is not None:
        flag, switch = max(action.option_strings, key=len), action.nargs == 0
    else:
        field = next((f for config in _configs() for f in dataclasses.fields(config) if f.name == name), None)
        flag = _flag_spelling(field) if field is not None else "--" + name.replace("_", "-")
        switch = field is not None and isinstance(field.default, bool)
    return flag if value is None or switch else f"{flag} {value}"


def _configs():
    from .. import config

    return (config.ExtractConfig, config.SweepConfig, config.FinetuneConfig, config.FitConfig, config.PredictConfig,
            config.InspectConfig)


def run_cli(main_fn, argv=None, parser: Optional[argparse.ArgumentParser] = None) -> int:
    """Shared CLI wrapper: user errors are one line on stderr and exit 2; ``--debug`` shows tracebacks."""
    tune_allocator()  # before torch allocates anything (featcache._malloc)
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "quiet", False))
    try:
        return main_fn(args) or 0
    except FeatcacheError as e:
        if getattr(args, "debug", False):
            raise
        print(f"featcache: error: {_for_cli(e, parser)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader stopped early (predict ... | head): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    except KeyboardInterrupt:
        print("featcache: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        if getattr(args, "debug", False):
            raise
        print(f"featcache: unexpected error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
