"""Declarative parameter checks, in the spirit of scikit-learn's ``_parameter_constraints``.

One table per class, ``{"name": [constraint, ...]}``; a value is valid when any constraint accepts it.
Constraints: a type (``bool``, ``str``, ``Path``...), ``None``, :class:`Interval`, :class:`Options`,
:class:`Matches`, :class:`Sequence`. :func:`validate_params` raises :class:`~featcache.errors.ParameterError` with one
sentence that says what was passed and what is allowed. Rules across parameters live in the owner's own
``_check_*`` code. Stage: none (imports only ``errors``), so configs and estimators alike can use it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Dict, List, Optional

import numpy as np

from .errors import ParameterError

__all__ = ["Interval", "Options", "Matches", "Sequence", "validate_params", "describe"]


@dataclass(frozen=True)
class Interval:
    """A number of ``kind`` (``Integral`` or ``Real``) between ``low`` and ``high`` (None = unbounded).

    ``closed`` is "both", "left", "right" or "neither". Booleans are never numbers here.
    """

    kind: type
    low: Optional[float]
    high: Optional[float]
    closed: str = "both"

    def accepts(self, v) -> bool:
        if isinstance(v, bool) or not isinstance(v, self.kind):
            return False
        if isinstance(v, Real) and math.isnan(v):
            return False
        lo_ok = self.low is None or (v >= self.low if self.closed in ("both", "left") else v > self.low)
        hi_ok = self.high is None or (v <= self.high if self.closed in ("both", "right") else v < self.high)
        return lo_ok and hi_ok

    def __str__(self) -> str:
        what = "an int" if self.kind is Integral else "a float"
        if self.low is not None and self.high is None:
            return f"{what} {'>=' if self.closed in ('both', 'left') else '>'} {self.low:g}"
        if self.high is not None and self.low is None:
            return f"{what} {'<=' if self.closed in ('both', 'right') else '<'} {self.high:g}"
        if self.low is None:
            return what
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        return f"{what} in the range {left}{self.low:g}, {self.high:g}{right}"


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values, compared exactly (``True`` is not ``1``)."""

    values: tuple

    def accepts(self, v) -> bool:
        return not isinstance(v, (bool, np.bool_)) and any(type(v) is type(o) and v == o for o in self.values)

    def __str__(self) -> str:
        return ("one of " if len(self.values) > 1 else "") + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class Matches:
    """A string matching the regular expression ``pattern``, described to users as ``text``."""

    pattern: str
    text: str

    def accepts(self, v) -> bool:
        return isinstance(v, str) and re.fullmatch(self.pattern, v) is not None

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Sequence:
    """A list or tuple of ``min_len`` to ``max_len`` items, each accepted by some ``item`` constraint."""

    item: tuple
    min_len: int = 0
    max_len: Optional[int] = None

    def accepts(self, v) -> bool:
        return (isinstance(v, (list, tuple)) and self.min_len <= len(v) <= (self.max_len or len(v))
                and all(any(_accepts(c, x) for c in self.item) for x in v))

    def __str__(self) -> str:
        if self.max_len == self.min_len:
            size = f" of {self.min_len}"
        else:
            size = f" of at least {self.min_len}" if self.min_len else ""
        return f"a list{size} of ({' or '.join(describe(c) for c in self.item)})"


def _accepts(constraint, v) -> bool:
    if constraint is None:
        return v is None
    if constraint is bool:  # numpy's bools too (an attribute set from an array)
        return isinstance(v, (bool, np.bool_))
    if isinstance(constraint, type):
        return isinstance(v, constraint) and not isinstance(v, (bool, np.bool_))
    return constraint.accepts(v)


def describe(constraint) -> str:
    if constraint is None:
        return "None"
    if isinstance(constraint, type):
        return {bool: "a bool", str: "a str", int: "an int", float: "a float", Integral: "an int",
                Real: "a number"}.get(
            constraint, f"a {constraint.__name__}")
    return str(constraint)


def validate_params(owner: Any, constraints: Dict[str, List[Any]], values: Optional[dict] = None) -> None:
    """Check ``values`` (default: the attributes of ``owner`` named in ``constraints``) against the table."""
    name = owner if isinstance(owner, str) else type(owner).__name__
    for param, allowed in constraints.items():
        value = values[param] if values is not None else getattr(owner, param)
        if not any(_accepts(c, value) for c in allowed):
            raise ParameterError(name, param, [describe(c) for c in allowed], value)
