"""OAuthError: why a token could not be had, in one line, with the command that fixes it."""

from __future__ import annotations

from helpdeskd.errors import HelpdeskError

# Codes that say "try again later": nothing is wrong with the login itself.
TEMPORARY_CODES = frozenset(
    {"unreachable", "server_error", "temporarily_unavailable", "slow_down", "authorization_pending"}
)


def login_command(name: str) -> str:
    """Return the command that gets NAME (a mailbox's name, or ``smtp``) a new refresh token."""
    return f"helpdeskd oauth login {name}"


class OAuthError(HelpdeskError):
    """A token could not be had: the message is one line; CODE says why, FIX what to run.

    CODE is the OAuth error (``invalid_grant``, ``invalid_client``, …) or one of helpdeskd's
    own: ``login_required`` (no refresh token stored yet), ``unreachable`` (no answer from the
    token endpoint), ``server_error`` (an answer that is not a token response), ``token_store``
    (the stored state cannot be read or written). FIX is the exact command to run, or None when
    no command helps (a wrong client secret is fixed in the provider's console and the config).
    """

    def __init__(self, message: str, *, code: str | None = None, fix: str | None = None) -> None:
        line = " ".join(message.split())
        if fix and fix not in line:
            line = f"{line}; run '{fix}'"
        super().__init__(line)
        self.code = code
        self.fix = fix

    @property
    def temporary(self) -> bool:
        """Whether trying again later may work without anyone doing anything."""
        return self.code in TEMPORARY_CODES
