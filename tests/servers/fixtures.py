"""Pytest fixtures for the private test servers; load with ``pytest_plugins``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests.servers.dovecot import Dovecot, unavailable_reason
from tests.servers.oauth import AuthServer
from tests.servers.smtp import SmtpSink

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


@pytest.fixture
def auth_server() -> Iterator[AuthServer]:
    """A started test OAuth 2.0 authorization server (access tokens live an hour)."""
    server = AuthServer(access_lifetime=3600)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def oauth_dovecot(dovecot_factory: Callable[..., Dovecot], auth_server: AuthServer) -> Dovecot:
    """A started private Dovecot that takes XOAUTH2 and OAUTHBEARER tokens from ``auth_server``
    (and ``support@acme.test`` / ``secret`` by password, to set up and inspect)."""
    return dovecot_factory(oauth=auth_server)


@pytest.fixture
def oauth_smtp_sink(auth_server: AuthServer) -> Iterator[SmtpSink]:
    """A started SMTP sink that wants AUTH XOAUTH2 or OAUTHBEARER with a token from
    ``auth_server`` before MAIL."""
    sink = SmtpSink(oauth=auth_server)
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()
