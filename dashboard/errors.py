"""The dashboard's errors, under the exchange's base error:

* IcxError (core.errors)
  x DashboardError
    + AssetsMissing: ECharts is not installed where the dashboard serves it from
    + AssetsCorrupt: a downloaded tarball does not match its pinned integrity
    + CannotListen: the listen address is taken or not ours
"""

from __future__ import annotations

from core.errors import IcxError


class DashboardError(IcxError):
    """The dashboard cannot do what was asked (says what, and how to fix it)."""


class AssetsMissing(DashboardError):
    pass


class AssetsCorrupt(DashboardError):
    pass


class CannotListen(DashboardError):
    pass
