"""The one exception type for mistakes a user can fix (stage: none; imports nothing from featcache).

:class:`FeatcacheError` is a ``ValueError``, so scikit-learn's conventions (bad parameters raise
``ValueError``) and featcache's (the CLI prints a user error as one line, exit 2) are the same rule.
A message names a parameter as a template, ``{name}`` (the Python name in braces; ``{{name}}`` inside an
f-string), or a parameter set to a value as ``{name=value}``: ``str(e)`` reads ``n_jobs`` / ``use_views=False``, and
the CLI (``featcache.cli.run_cli``) the flag that does it in the running command, ``--n-jobs`` / ``--no-views``.
Only names registered as parameters (:func:`register_parameters`: every config field, and the few function
parameters a message names) are templates, so a path such as ``/data/{split}/x.csv`` in a message stays as it is.
:class:`ParameterError` says which parameter was wrong and has its own command-line wording (:meth:`for_flag`).
"""
from __future__ import annotations

import re
from typing import Callable, Optional

__all__ = ["FeatcacheError", "ParameterError", "ConflictError", "register_parameters"]

# A parameter in a message: a registered name in braces, optionally with the value it is set to. Any other braces
# (a dict or set formatted into the message, ``{'a': 1}``, ``{None}``, a path's ``{split}``) are text, left as they are.
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?:=([^{}=]+))?\}")
_PARAMETERS: set = set()


def register_parameters(*names: str) -> None:
    """Make ``names`` parameters a message may name as ``{name}`` (configs register their fields)."""
    _PARAMETERS.update(names)


def _python_name(name: str, value: Optional[str]) -> str:
    return name if value is None else f"{name}={value}"


class FeatcacheError(ValueError):
    """An error the user can fix; the CLI prints it as one line, without a traceback.

    ``template`` names parameters in braces (``"use {cv} or {val_fraction}"``): ``str(e)`` reads the parameter
    names, the CLI shows the flags (:meth:`render`)."""

    def __init__(self, template: str = "", *args):
        self.template = str(template)
        # args keep the template, so an error pickled from a worker process still renders flags on the CLI
        super().__init__(template, *args)

    def __str__(self) -> str:
        return self.render(_python_name) if len(self.args) == 1 else super().__str__()

    @property
    def params(self):
        """The parameters the message names, in order."""
        return [m.group(1) for m in _PARAM.finditer(self.template) if m.group(1) in _PARAMETERS]

    def render(self, name_of: Callable[[str, Optional[str]], str]) -> str:
        """The message with each ``{name}`` / ``{name=value}`` replaced by ``name_of(name, value)`` (value None
        for a bare name)."""
        return _PARAM.sub(lambda m: name_of(m.group(1), m.group(2)) if m.group(1) in _PARAMETERS else m.group(0),
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
