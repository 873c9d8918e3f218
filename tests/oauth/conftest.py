"""The test AuthServer's client secret, as the configs of tests/oauth read it."""

from __future__ import annotations

import pytest

from tests.servers.oauth import AuthServer


@pytest.fixture(autouse=True)
def client_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELPDESKD_TEST_OAUTH_CLIENT_SECRET", AuthServer.CLIENT_SECRET)
