"""``python -m featcache.fit --data DATA --out OUT``, and ``featcache.fit(data, out, ...)``: from images to the best
model featcache can give within a time budget.

Stage: command line. The flags are ``featcache.cli.fit``; the work is ``featcache.autofit.fit``. Calling this module
calls that function (see ``featcache._util.make_callable``), so ``featcache.fit(...)`` works however the package was
imported.
"""
import sys

from ._util import make_callable

__all__ = ["main"]


def main(argv=None) -> int:
    from .cli.fit import main as cli_main

    return cli_main(argv)


make_callable(__name__, "featcache.autofit:fit")

if __name__ == "__main__":
    sys.exit(main())
