"""The command line: argument parsing for every command, on top of the plain library (stage: commands).

User errors (:class:`~featcache.errors.FeatcacheError`) print one line on stderr and exit 2; a
:class:`~featcache.errors.ParameterError` names the flag the user typed, not the Python parameter. ``--debug``
shows the traceback. Logs and progress go to stderr, so stdout carries only results (a cache path, a table).
Modules here import the library on use, inside each command's ``_main``, so ``--help`` is instant and
``ls``/``verify``/``explain --help`` never load torch.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from typing import Optional

from .._malloc import tune_allocator
from ..errors import ConflictError, FeatcacheError, ParameterError

__all__ = ["CACHE_DIR_HELP", "Parser", "run_cli", "setup_logging", "config_from_args", "flag_of", "add_run_flags",
           "add_output_flags", "blocks_arg", "duration_arg", "int_or_auto"]

log = logging.getLogger("featcache")

CACHE_DIR_HELP = "where caches live (default: $FEATCACHE_DIR, else $XDG_CACHE_HOME/featcache, else ~/.cache/featcache)"


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


def add_output_flags(p: argparse.ArgumentParser) -> None:
    """The flags of the commands that write a run folder (sweep, finetune): --top, --overwrite, --no-plots."""
    p.add_argument("--top", type=int, default=20, metavar="N",
                   help="leaderboard rows to print (every row is in OUT/leaderboard.csv) (default: 20)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run's outputs in --out (its leaderboard, model, summary and plots); "
                        "without it an --out holding a run is refused before any fit")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")


def _int_or(word: str, what: str):
    """An argparse type: ``word`` as it is, else an integer (its range checked by the config)."""
    def parse(text: str):
        if text == word:
            return text
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} or {word}, got {text!r}") from None
    return parse


blocks_arg = _int_or("all", "an integer >= 0")  # --train-blocks
int_or_auto = _int_or("auto", "a positive integer")  # --batch-size, --image-size


def duration_arg(text: str) -> float:
    """argparse type for ``--budget``: seconds from ``90``, ``90s``, ``15m``, ``1h30m``."""
    from .._util import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def config_from_args(config_class, args: argparse.Namespace, **changes):
    """A config dataclass from the parsed flags whose destinations are its fields (``None`` = the default)."""
    fields = config_class.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return config_class(**{**values, **changes})


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
    """The message of ``e`` with parameter names replaced by the flags that set them."""
    if isinstance(e, ParameterError) and flag_of(parser, e.param):
        return e.for_flag(flag_of(parser, e.param))
    if isinstance(e, ConflictError):
        return e.render(lambda name: flag_of(parser, name) or name)
    return str(e)


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
