"""Fixtures shared by the test suite: real servers on free ports, real clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadtest.serverproc import KINDS, ServerProcess, start_server


@pytest.fixture(scope="module", params=KINDS)
def server(request) -> Iterator[ServerProcess]:
    """One server of each kind per test module, with default settings."""
    srv = start_server(request.param)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def server_factory() -> Iterator:
    """Start servers with extra flags for one test: ``server_factory(kind, *args)``."""
    started: list[ServerProcess] = []

    def factory(kind: str, *args: str, **kwargs) -> ServerProcess:
        srv = start_server(kind, *args, **kwargs)
        started.append(srv)
        return srv

    yield factory
    for srv in started:
        srv.stop()
