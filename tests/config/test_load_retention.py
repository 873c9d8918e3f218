"""``[retention]``: days per kind of data, "forever", and errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helpdeskd.config.load import parse_config
from helpdeskd.config.settings import RetentionConfig
from helpdeskd.errors import ConfigError
from tests.config.support import good_config


def _with(retention: dict[str, Any]) -> dict[str, Any]:
    data = good_config()
    data["retention"] = retention
    return data


def test_defaults(base: Path) -> None:
    retention = parse_config(good_config(), base).retention
    assert retention == RetentionConfig()
    assert (retention.raw_mail_days, retention.quarantine_days) == (90, 30)
    assert retention.closed_ticket_days == 730 and retention.processed_mail_days is None


def test_days_and_forever(base: Path) -> None:
    retention = parse_config(
        _with(
            {
                "raw_mail_days": 30,
                "sent_mail_days": "forever",
                "processed_mail_days": 60,
                "batch": 50,
            }
        ),
        base,
    ).retention
    assert retention.raw_mail_days == 30 and retention.sent_mail_days is None
    assert retention.processed_mail_days == 60 and retention.batch == 50


@pytest.mark.parametrize(
    "table, message",
    [
        (
            {"raw_mail_days": 0},
            'retention.raw_mail_days: a number of days (1 or more) or "forever"',
        ),
        (
            {"event_days": "never"},
            'retention.event_days: a number of days (1 or more) or "forever"',
        ),
        ({"quarantine_days": 1.5}, "retention.quarantine_days: expected an integer or a string"),
        ({"closed_ticket_days": True}, "retention.closed_ticket_days: expected an integer"),
        ({"raw_mail": 90}, "retention.raw_mail: unknown key"),
        ({"batch": 0}, "retention.batch: must be greater than 0"),
    ],
)
def test_errors_name_the_key(base: Path, table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_with(table), base)
    assert str(caught.value).startswith(message)
