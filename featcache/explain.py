"""``python -m featcache.explain``: why a run would (not) hit the cache (the command is ``featcache.cli.explain``)."""
import sys

from .cli.explain import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
