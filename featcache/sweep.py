"""``python -m featcache.sweep CACHE.h5``, and ``featcache.sweep(cache, ...)``: train many classifiers on cached
features and keep the best.

Stage: command line. The flags are ``featcache.cli.sweep``; the work is ``featcache.sweeping.sweep``. Calling this
module calls that function (see ``featcache._util.make_callable``), so ``featcache.sweep(...)`` works however the
package was imported.
"""
import sys

from ._util import make_callable

__all__ = ["main"]


def main(argv=None) -> int:
    from .cli.sweep import main as cli_main

    return cli_main(argv)


make_callable(__name__, "featcache.sweeping:sweep")

if __name__ == "__main__":
    sys.exit(main())
