"""The one exception type for mistakes a user can fix (stage: none; imports nothing from featcache).

:class:`FeatcacheError` is a ``ValueError``, so scikit-learn's conventions (bad parameters raise
``ValueError``) and featcache's (the CLI prints a user error as one line, exit 2) are the same rule.
:class:`ParameterError` says which parameter was wrong; the CLI turns the parameter's name into the flag
the user typed (see ``featcache.cli.run_cli``), so a message names ``n_jobs`` for Python callers and
``--n-jobs`` on the command line.
"""
from __future__ import annotations

import re
from typing import Callable

__all__ = ["FeatcacheError", "ParameterError", "ConflictError"]


class FeatcacheError(ValueError):
    """An error the user can fix; the CLI prints it as one line, without a traceback."""


class ParameterError(FeatcacheError):
    """A parameter with a value it may not take: ``param`` of ``owner`` must be one of ``allowed`` (descriptions
    such as ``"an int >= 1"``), got ``got``."""

    def __init__(self, owner: str, param: str, allowed, got):
        self.owner, self.param, self.got = owner, param, got
        self.allowed = [allowed] if isinstance(allowed, str) else list(allowed)
        super().__init__(f"The {param!r} parameter of {owner} must be {_either(self.allowed)}. Got {got!r} instead.")

    def for_flag(self, flag: str) -> str:
        """The same message for a command-line user, naming the flag (a flag cannot be given None)."""
        return f"{flag} must be {_either([a for a in self.allowed if a != 'None'] or self.allowed)}; got {self.got!r}"


def _either(options) -> str:
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]


class ConflictError(FeatcacheError):
    """Parameters that cannot go together. ``template`` names them in braces (``"use {cv} or {val_fraction}"``):
    Python callers read the parameter names, the CLI shows the flags (:meth:`render`)."""

    def __init__(self, template: str):
        self.template = template
        super().__init__(self.render(lambda name: name))

    @property
    def params(self):
        return re.findall(r"{(\w+)}", self.template)

    def render(self, name_of: Callable[[str], str]) -> str:
        return re.sub(r"{(\w+)}", lambda m: name_of(m.group(1)), self.template)
