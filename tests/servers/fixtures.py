"""Pytest fixtures for the private test servers; load with ``pytest_plugins``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests.servers.dovecot import Dovecot, unavailable_reason

SUPPORT_USER = "support@acme.test"
SUPPORT_PASSWORD = "secret"


def _require_dovecot() -> None:
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but the private Dovecot cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def dovecot_factory() -> Iterator[Callable[..., Dovecot]]:
    """Return a function that starts a Dovecot (options as for ``Dovecot``) with the support
    user; every instance is stopped and removed at the end of the test."""
    _require_dovecot()
    started: list[Dovecot] = []

    def start(**options: object) -> Dovecot:
        server = Dovecot(**options)  # type: ignore[arg-type]
        started.append(server)
        server.add_user(SUPPORT_USER, SUPPORT_PASSWORD)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.close()


@pytest.fixture
def dovecot(dovecot_factory: Callable[..., Dovecot]) -> Dovecot:
    """A started private Dovecot with ``support@acme.test`` / ``secret``."""
    return dovecot_factory()
