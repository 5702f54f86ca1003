"""``python -m featcache.verify``: check a cache end to end (the command is ``featcache.cli.verify``)."""
import sys

from .cli.verify import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
