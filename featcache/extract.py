"""``python -m featcache.extract``: the extraction CLI (see ``--help``); the work is in ``pipeline``.

``featcache.extract`` is also the API function; this module forwards calls to it (``cli.make_callable``),
so ``featcache.extract(...)`` works however the package was imported.
"""
import sys

from .cli import (add_extract_arguments, build_parser, config_from_args, main, make_callable, run_cli,
                  setup_logging)
from .pipeline import extract, list_layers

__all__ = ["add_extract_arguments", "build_parser", "config_from_args", "extract", "list_layers", "main",
           "run_cli", "setup_logging"]

make_callable(__name__, extract)

if __name__ == "__main__":
    sys.exit(main())
