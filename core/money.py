"""Money: one unit and one charge rule for the whole exchange.

Every amount is an integer in the currency's minor unit (`*_minor`; for CNY, the only
currency the federation settles in today, 1 minor unit = 1 fen = 0.01 yuan). Prices are per
device-hour. A quote, the matcher's budget check, the center's signed usage record and the
settlement all charge with `charge_minor`, so the quote for a run and the bill for a run of
the same length are the same number.
"""

from __future__ import annotations

CURRENCY = "CNY"
MINOR_PER_MAJOR = 100
S_PER_HOUR = 3600


def charge_minor(device_s: int, price_minor_per_device_hour: int) -> int:
    """price x device-hours, multiplied in integers and divided once, rounded up to the
    whole minor unit: the center is never short, and a charge never falls as the price
    or the run grows. Requires both arguments >= 0."""
    return -(-device_s * price_minor_per_device_hour // S_PER_HOUR)


def format_major(amount_minor: int) -> str:
    """An amount in major units with two decimals: 12345 -> '123.45'."""
    sign = "-" if amount_minor < 0 else ""
    whole, cents = divmod(abs(amount_minor), MINOR_PER_MAJOR)
    return f"{sign}{whole:,}.{cents:02d}"
