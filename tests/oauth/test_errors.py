"""OAuthError: one line, a code, and the command that fixes it."""

from __future__ import annotations

from helpdeskd.errors import HelpdeskError
from helpdeskd.oauth.errors import OAuthError, login_command


def test_one_line_with_the_fix() -> None:
    error = OAuthError(
        "mailbox support: refused\n(invalid_grant)",
        code="invalid_grant",
        fix=login_command("support"),
    )
    assert isinstance(error, HelpdeskError)
    assert str(error) == (
        "mailbox support: refused (invalid_grant); run 'helpdeskd oauth login support'"
    )
    assert error.code == "invalid_grant" and error.fix == "helpdeskd oauth login support"
    assert not error.temporary


def test_temporary_codes() -> None:
    assert OAuthError("x", code="unreachable").temporary
    assert OAuthError("x", code="temporarily_unavailable").temporary
    assert not OAuthError("x", code="login_required").temporary
    assert not OAuthError("x").temporary
