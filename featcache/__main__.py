"""``python -m featcache <command> ...`` and the ``featcache`` console script: one entry point for every command."""
import difflib
import importlib
import sys

__all__ = ["main", "COMMANDS"]

COMMANDS = {  # command -> what it does (each is featcache.cli.<command>.main)
    "extract": "run a frozen model over images once and cache the features (HDF5)",
    "sweep": "fit many classifiers on a cache, keep the best, score it on test",
    "finetune": "train a network's top blocks from cached activations",
    "fit": "images -> the best model within a time budget (extract, sweep, fine-tune)",
    "predict": "apply a saved model to new images (or a cache)",
    "inspect": "find duplicates, leaks, label errors and outliers in a cache; HTML report",
    "ls": "list the caches in the cache directory",
    "rm": "delete caches (and their sweeps' result stores)",
    "prune": "delete caches by age, disuse or size",
    "verify": "check a cache end to end",
    "explain": "say why extract would (not) hit the cache",
    "convert": "convert a featcache 0.1 model file (a pickle you trust) to the current format",
}


def _usage() -> str:
    lines = ["usage: python -m featcache <command> [options]   (or: featcache <command> ...)", "", "commands:"]
    lines += [f"  {name:<9} {about}" for name, about in COMMANDS.items()]
    lines += ["", "python -m featcache <command> --help shows a command's options."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        print(f"featcache: error: unknown command {command!r}{hint} (commands: {', '.join(COMMANDS)})",
              file=sys.stderr)
        return 2
    return importlib.import_module(f"featcache.cli.{command}").main(rest)


if __name__ == "__main__":
    sys.exit(main())
