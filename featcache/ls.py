"""``python -m featcache.ls``: list the caches in a cache directory (the command is ``featcache.cli.ls``).

Stage: command line. Imports the command's module when run, not when imported.
"""
import sys

__all__ = ["main"]


def main(argv=None) -> int:
    from .cli.ls import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
