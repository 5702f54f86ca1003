"""``python -m featcache.inspect CACHE.h5 --out report/``, and ``featcache.inspect(cache, ...)``: look at a
dataset through its cached features (duplicates and leaks, label errors, outliers, confusion, a map, a report).

Stage: command line. The flags are ``featcache.cli.inspect``; the work is ``featcache.insight.inspect``. Calling
this module calls that function (see ``featcache._util.make_callable``), so ``featcache.inspect(...)`` works
however the package was imported. Never imports torch.
"""
import sys

from ._util import make_callable

__all__ = ["main"]


def main(argv=None) -> int:
    from .cli.inspect import main as cli_main

    return cli_main(argv)


make_callable(__name__, "featcache.insight:inspect")

if __name__ == "__main__":
    sys.exit(main())
