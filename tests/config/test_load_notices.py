"""``[notices]``: who notices come from, their categories, and keys no longer read."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpdeskd.config.load import parse_config
from helpdeskd.errors import ConfigError
from tests.config.support import good_config


def test_categories_and_defaults(base: Path) -> None:
    data = good_config()
    data["notices"] = {"categories": {"billing": "critical", "newsletter": "optional"}}
    notices = parse_config(data, base).notices
    assert notices is not None
    assert notices.critical("billing") is True and notices.critical("newsletter") is False
    assert notices.critical("nope") is None
    assert (notices.min_notice_hours, notices.reminder_hours) == (24.0, 2.0)


def test_the_old_pacing_key_is_refused_with_where_pacing_went(base: Path) -> None:
    """Notices are paced by the outbox's class rates; a config that still sets [notices] rate
    is told so in one line instead of being paced twice (or silently not at all)."""
    data = good_config()
    data["notices"] = {"rate": 20}
    with pytest.raises(ConfigError) as raised:
        parse_config(data, base)
    message = str(raised.value)
    assert message.startswith("notices.rate: no longer read")
    assert "[smtp.rates]" in message and "\n" not in message
