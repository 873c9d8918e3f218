"""The stored token state: its JSON never holds an access token, and reads back the same."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from helpdeskd.oauth.state import TokenState, iso, parse_time

NOW = datetime(2026, 12, 5, 12, 0, 1, tzinfo=UTC)


def test_round_trip_and_keys() -> None:
    state = TokenState(
        provider="microsoft",
        refresh_token="rt-secret",
        account="support@acme.test",
        obtained_at=NOW,
        last_refresh=NOW,
        expires_at=NOW + timedelta(hours=1),
        refresh_expires_at=NOW + timedelta(days=90),
        last_error="mailbox support: unreachable",
        last_error_at=NOW,
    )
    data = state.to_json()
    assert list(data) == [
        "refresh_token",
        "account",
        "provider",
        "obtained_at",
        "last_refresh",
        "expires_at",
        "refresh_expires_at",
        "last_error",
        "last_error_at",
    ]
    assert data["expires_at"] == "2026-12-05T13:00:01+00:00"
    assert TokenState.from_json(data) == state
    assert "rt-secret" not in repr(state)


def test_empty_state() -> None:
    state = TokenState(provider="generic")
    assert TokenState.from_json(state.to_json()) == state
    assert state.to_json()["refresh_token"] is None


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"refresh_token": "x"},
        {"provider": 1},
        {"provider": "g", "account": 5},
        {"provider": "g", "expires_at": "tomorrow"},
        {"provider": "g", "expires_at": 5},
    ],
)
def test_damaged_state_is_refused(data: object) -> None:
    with pytest.raises(ValueError):
        TokenState.from_json(data)


def test_times() -> None:
    assert parse_time(None) is None
    assert parse_time("2026-12-05T13:00:00") == datetime(2026, 12, 5, 13, tzinfo=UTC)
    assert parse_time("2026-12-05T14:00:00+01:00") == datetime(2026, 12, 5, 13, tzinfo=UTC)
    assert iso(None) is None
