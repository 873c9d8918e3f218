"""The config's dataclasses: they never show a secret, and a [dkim] table cannot sign
trace fields or leave From unsigned."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpdeskd.config.load import parse_config
from helpdeskd.config.secrets import Secret
from helpdeskd.config.settings import DkimConfig
from tests.config.support import PASSWORD, SECRET_TEXT, good_config


def test_config_repr_shows_no_secret(base: Path) -> None:
    config = parse_config(good_config(), base)
    for text in (repr(config), str(config), repr(config.mailboxes), repr(config.service)):
        assert PASSWORD not in text
        assert SECRET_TEXT not in text


@pytest.mark.parametrize(
    ("headers", "error"),
    [(("To", "Subject"), "must include From"), (("From", "Received"), "must not include received")],
)
def test_dkim_headers_must_include_from_and_no_trace_fields(
    headers: tuple[str, ...], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        DkimConfig("example.com", "s1", Secret("the key is not read here"), headers=headers)
