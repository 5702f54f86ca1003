"""``python -m featcache.verify``: check a cache end to end (the command is ``featcache.cli.verify``).

Stage: command line. Imports the command's module when run, not when imported.
"""
import sys

__all__ = ["main"]


def main(argv=None) -> int:
    from .cli.verify import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
