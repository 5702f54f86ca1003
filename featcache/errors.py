"""The one exception type for mistakes a user can fix (stage: none; imports nothing from featcache).

:class:`FeatcacheError` is a ``ValueError``, so scikit-learn's conventions (bad parameters raise
``ValueError``) and featcache's (the CLI prints a user error as one line, exit 2) are the same rule.
A message names a parameter as a template, ``{name}`` (the Python name in braces; ``{{name}}`` inside an
f-string): ``str(e)`` reads the Python name, and the CLI (``featcache.cli.run_cli``) the flag that sets it in the
running command, so a message names ``n_jobs`` for Python callers and ``--n-jobs`` on the command line.
:class:`ParameterError` says which parameter was wrong and has its own command-line wording (:meth:`for_flag`).
"""
from __future__ import annotations

import keyword
import re
from typing import Callable

__all__ = ["FeatcacheError", "ParameterError", "ConflictError"]

# A parameter in a message: a Python identifier in braces. Any other braces (a dict or set formatted into the
# message, ``{'a': 1}``, ``{1, 2}``, ``{None}``) are text and come out unchanged.
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class FeatcacheError(ValueError):
    """An error the user can fix; the CLI prints it as one line, without a traceback.

    ``template`` names parameters in braces (``"use {cv} or {val_fraction}"``): ``str(e)`` reads the parameter
    names, the CLI shows the flags (:meth:`render`)."""

    def __init__(self, template: str = "", *args):
        self.template = str(template)
        # args keep the template, so an error pickled from a worker process still renders flags on the CLI
        super().__init__(template, *args)

    def __str__(self) -> str:
        return self.render(lambda name: name) if len(self.args) == 1 else super().__str__()

    @property
    def params(self):
        """The parameters the message names, in order."""
        return [m.group(1) for m in _PARAM.finditer(self.template) if not keyword.iskeyword(m.group(1))]

    def render(self, name_of: Callable[[str], str]) -> str:
        """The message with each ``{name}`` replaced by ``name_of(name)``."""
        return _PARAM.sub(lambda m: m.group(0) if keyword.iskeyword(m.group(1)) else name_of(m.group(1)),
                          self.template)


class ParameterError(FeatcacheError):
    """A parameter with a value it may not take: ``param`` of ``owner`` must be one of ``allowed`` (descriptions
    such as ``"an int >= 1"``), got ``got``."""

    def __init__(self, owner: str, param: str, allowed, got):
        self.owner, self.param, self.got = owner, param, got
        self.allowed = [allowed] if isinstance(allowed, str) else list(allowed)
        super().__init__(f"The {param!r} parameter of {owner} must be {_either(self.allowed)}. Got {got!r} instead.")

    def render(self, name_of: Callable[[str], str]) -> str:
        return self.template  # names the parameter in quotes, not as a template: ``got`` may hold any braces

    def for_flag(self, flag: str) -> str:
        """The same message for a command-line user, naming the flag (a flag cannot be given None)."""
        return f"{flag} must be {_either([a for a in self.allowed if a != 'None'] or self.allowed)}; got {self.got!r}"


def _either(options) -> str:
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]


class ConflictError(FeatcacheError):
    """Parameters that cannot go together (``"use either {cv} or {val_fraction}, not both"``); the template
    behaviour is every :class:`FeatcacheError`'s."""
