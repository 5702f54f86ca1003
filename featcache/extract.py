"""``python -m featcache.extract``, and ``featcache.extract(...)``: the entry point of extraction.

The flags are ``featcache.cli.extract``; the work is ``featcache.extraction.extract``. Calling this module
calls that function (see ``featcache._util.make_callable``), so ``featcache.extract(...)`` works however
the package was imported.
"""
import sys

from ._util import make_callable

__all__ = ["main"]


def main(argv=None) -> int:
    from .cli.extract import main as cli_main

    return cli_main(argv)


make_callable(__name__, "featcache.extraction:extract")

if __name__ == "__main__":
    sys.exit(main())
