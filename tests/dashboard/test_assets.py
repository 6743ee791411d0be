"""ECharts is installed only as the pinned tarball, and its absence is named."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from dashboard.assets import (
    ECHARTS_INTEGRITY,
    echarts_path,
    extract_echarts,
    integrity_of,
    require_echarts,
)
from dashboard.errors import AssetsCorrupt, AssetsMissing


def _tarball(script: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo("package/dist/echarts.min.js")
        info.size = len(script)
        tar.addfile(info, io.BytesIO(script))
    return out.getvalue()


def test_a_tarball_that_is_not_the_pinned_one_is_refused() -> None:
    forged = _tarball(b"window.echarts = {};")
    with pytest.raises(AssetsCorrupt, match=r"integrity sha512-.* is not the pinned"):
        extract_echarts(forged)
    assert integrity_of(forged) != ECHARTS_INTEGRITY


def test_a_missing_install_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(AssetsMissing, match=r"run `make setup`"):
        require_echarts(tmp_path)
    assert not echarts_path(tmp_path).exists()


def test_the_installed_copy_is_the_pinned_release() -> None:
    # make setup installed it; the file served is the one in the checked tarball.
    assert b"echarts" in require_echarts().read_bytes()[:2000].lower()
