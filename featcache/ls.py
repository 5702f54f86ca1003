"""``python -m featcache.ls``: list the caches in a cache directory (the command is ``featcache.cli.ls``)."""
import sys

from .cli.ls import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
