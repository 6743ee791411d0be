"""Matcher errors, part of the exchange's tree (core.errors).

* MatcherError (core.IcxError)
  x InvalidProblem    (also core.InvalidArgument) a problem that names an unknown pool,
                      a negative size, ...
  x InvalidSettings   (also core.InvalidArgument) a matcher asked to run with settings
                      it cannot use (a time limit <= 0, no workers)
"""

from __future__ import annotations

from core.errors import IcxError, InvalidArgument


class MatcherError(IcxError):
    """Base of the matcher's errors."""


class InvalidProblem(MatcherError, InvalidArgument):
    """The problem itself is malformed (not merely unsatisfiable)."""


class InvalidSettings(MatcherError, InvalidArgument):
    """A matcher's own settings are out of range."""
