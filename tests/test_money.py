"""One charge rule: a quote for a spec and the bill for a run of that length agree."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from core.money import charge_minor, format_major
from ledger import UsageRecord
from matcher import JobRequest, PoolSlot, job_charge_minor


def _pool(price: int) -> PoolSlot:
    return PoolSlot(
        pool_id="CN01/p",
        center_id="CN01",
        region="GBA",
        accelerator="nvidia-a800",
        free=8,
        memory_gb=80,
        tflops=312,
        power_w=400,
        pue_milli=1300,
        grid_g_per_kwh=500,
        price_minor_per_device_hour=price,
    )


def test_one_device_second_is_charged_one_minor_unit() -> None:
    # 1 device-second at 10 yuan per device-hour: 1000/3600 of a fen, rounded up to 1.
    assert charge_minor(1, 1_000) == 1
    assert charge_minor(3600, 1_000) == 1_000
    assert charge_minor(3601, 1_000) == 1_001
    assert charge_minor(0, 1_000) == 0


@given(
    devices=st.integers(1, 64),
    seconds=st.integers(1, 30 * 24 * 3600),
    price=st.integers(0, 10_000_000),
)
def test_quote_equals_the_bill_of_a_run_of_that_length(
    devices: int, seconds: int, price: int
) -> None:
    job = JobRequest(job_id="j-1", accelerator="nvidia-a800", devices=devices, seconds=seconds)
    quoted = job_charge_minor(job, _pool(price))
    record = UsageRecord(
        record_id="r-1",
        producer="CN01",
        consumer="lab-a",
        job_id="j-1",
        start_ms=1_000,
        end_ms=1_000 + seconds * 1000,
        wall_s=seconds,
        devices=devices,
        device_s=devices * seconds,
        unit_price_minor=price,
        accelerator="nvidia-a800",
        charge_minor=quoted,  # the record refuses a charge its own rule does not give
    )
    assert record.charge_minor == quoted


def test_format_major_names_two_decimals() -> None:
    assert format_major(12_345) == "123.45"
    assert format_major(-5) == "-0.05"
    assert format_major(123_456_700) == "1,234,567.00"
