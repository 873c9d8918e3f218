"""``[bounces]``: the threshold and the stale window, their defaults, errors naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helpdeskd.config.load import parse_config
from helpdeskd.config.settings import BouncesConfig
from helpdeskd.errors import ConfigError
from tests.config.support import good_config


def _with(bounces: Any) -> dict[str, Any]:
    data = good_config()
    data["bounces"] = bounces
    return data


def test_defaults(base: Path) -> None:
    bounces = parse_config(good_config(), base).bounces
    assert bounces == BouncesConfig() == BouncesConfig(threshold=5.0, stale_after_days=7)


def test_values(base: Path) -> None:
    bounces = parse_config(_with({"threshold": 3, "stale_after_days": 14}), base).bounces
    assert (bounces.threshold, bounces.stale_after_days) == (3.0, 14)
    assert parse_config(_with({"threshold": 2.5}), base).bounces.threshold == 2.5


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"threshold": 0}, "bounces.threshold: must be greater than 0"),
        ({"threshold": -1.5}, "bounces.threshold: must be greater than 0"),
        ({"threshold": float("nan")}, "bounces.threshold: must be a number greater than 0"),
        ({"threshold": "5"}, "bounces.threshold: expected an integer or a number, got str"),
        ({"stale_after_days": 0}, "bounces.stale_after_days: a number of days, 1 or more"),
        ({"stale_after_days": 1.5}, "bounces.stale_after_days: expected an integer, got float"),
        ({"treshold": 5}, "bounces.treshold: unknown key"),
        ("5", "bounces: expected a table, got str"),
    ],
)
def test_errors(base: Path, table: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_with(table), base)
    assert str(caught.value) == message
