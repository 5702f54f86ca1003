"""``python -m featcache.predict MODEL --data DIR``, and ``featcache.predict(model, data, ...)``: apply a saved
model to new images.

Stage: command line. The flags are ``featcache.cli.predict``; the work is ``featcache.prediction.predict``. Calling
this module calls that function (see ``featcache._util.make_callable``), so ``featcache.predict(...)`` works however
the package was imported.
"""
import sys

from ._util import make_callable

__all__ = ["main"]


def main(argv=None) -> int:
    from .cli.predict import main as cli_main

    return cli_main(argv)


make_callable(__name__, "featcache.prediction:predict")

if __name__ == "__main__":
    sys.exit(main())
