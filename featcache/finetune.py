"""``python -m featcache.finetune CACHE.h5 --from-layer NODE``, and ``featcache.finetune(cache, node, ...)``: train
a network's top blocks from cached activations.

Stage: command line. The flags are ``featcache.cli.finetune``; the work is ``featcache.finetuning.finetune``.
Calling this module calls that function (see ``featcache._util.make_callable``), so ``featcache.finetune(...)``
works however the package was imported. ``featcache.finetune.network(path)`` (the README's) is
``featcache.finetuning.network``, imported on first use.
"""
import sys

from ._util import make_callable

__all__ = ["main"]  # and network, on first use (__getattr__)


def main(argv=None) -> int:
    from .cli.finetune import main as cli_main

    return cli_main(argv)


def __getattr__(name):
    if name == "network":
        from .finetuning import network

        return network
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


make_callable(__name__, "featcache.finetuning:finetune")

if __name__ == "__main__":
    sys.exit(main())
