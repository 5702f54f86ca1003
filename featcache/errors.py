"""The one exception type for mistakes a user can fix (stage: none; imports nothing from featcache).

:class:`FeatcacheError` is a ``ValueError``, so scikit-learn's conventions (bad parameters raise
``ValueError``) and featcache's (the CLI prints a user error as one line, exit 2) are the same rule.
:class:`ParameterError` says which parameter was wrong; the CLI turns the parameter's name into the flag
the user typed (see ``featcache.cli.run_cli``), so a message names ``n_jobs`` for Python callers and
``--n-jobs`` on the command line.
"""
from __future__ import annotations

__all__ = ["FeatcacheError", "ParameterError"]


class FeatcacheError(ValueError):
    """An error the user can fix; the CLI prints it as one line, without a traceback."""


class ParameterError(FeatcacheError):
    """A parameter with a value it may not take: ``param`` of ``owner`` must be ``allowed``, got ``got``."""

    def __init__(self, owner: str, param: str, allowed: str, got):
        self.owner, self.param, self.allowed, self.got = owner, param, allowed, got
        super().__init__(f"The {param!r} parameter of {owner} must be {allowed}. Got {got!r} instead.")

    def for_flag(self, flag: str) -> str:
        """The same message for a command-line user, naming the flag instead of the parameter."""
        return f"{flag} must be {self.allowed}; got {self.got!r}"
