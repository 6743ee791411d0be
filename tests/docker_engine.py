"""The tests' Docker engine: one per session, on a private socket (cli/docker_local.py),
stopped afterwards with nothing of it left."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cli.docker_local import IMAGE, DockerEngine, mounts_under, start_engine

__all__ = ["IMAGE", "DockerEngine", "docker_engine", "start_engine"]


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerEngine]:
    engine = start_engine(tmp_path_factory.mktemp("docker"))
    try:
        yield engine
    finally:
        engine.stop()
    assert mounts_under(engine.root) == []  # not even dockerd's own bind mounts
