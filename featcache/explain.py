"""``python -m featcache.explain``: why a run would (not) hit the cache (the command is ``featcache.cli.explain``).

Stage: command line. Imports the command's module when run, not when imported.
"""
import sys

__all__ = ["main"]


def main(argv=None) -> int:
    from .cli.explain import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
