"""Matcher errors.

* MatcherError
  x InvalidProblem   a problem that names an unknown pool, a negative size, ...
"""

from __future__ import annotations

from core.errors import InvalidArgument


class MatcherError(Exception):
    """Base of the matcher's errors."""


class InvalidProblem(MatcherError, InvalidArgument):
    """The problem itself is malformed (not merely unsatisfiable)."""
