"""OAuth 2.0 for IMAP and SMTP: tokens refreshed ahead of expiry, and the SASL messages.

This package's own namespace holds the light parts, which the IMAP and SMTP code import:
:class:`OAuthError` (``.code``, ``.fix``), :func:`login_command`, :class:`TokenSource`,
:func:`sasl_initial_response`, :func:`sasl_error`, :data:`FAILED_SASL_RESPONSE`,
:func:`refresh_expiry_due` and :data:`REFRESH_WARNING`.

The rest loads Authlib and is imported from its module, by those who need it:

- helpdeskd.oauth.credential: :class:`Credentials` (the registry, one per daemon),
  :class:`Credential` (one token: ``await credential.access_token()``),
  :class:`CredentialStatus`, :func:`login_needed` (for ``check``), :func:`read_statuses`;
- helpdeskd.oauth.login: ``oauth login``'s device-code and browser flows.

The other modules: client (the token requests, through Authlib), providers, state, tokenfile
and database (the two stores), sasl, errors, source.
"""

from helpdeskd.oauth.errors import OAuthError, login_command
from helpdeskd.oauth.providers import REFRESH_WARNING, refresh_expiry_due
from helpdeskd.oauth.sasl import FAILED_SASL_RESPONSE, sasl_error, sasl_initial_response
from helpdeskd.oauth.source import TokenSource

__all__ = [
    "FAILED_SASL_RESPONSE",
    "REFRESH_WARNING",
    "OAuthError",
    "TokenSource",
    "login_command",
    "refresh_expiry_due",
    "sasl_error",
    "sasl_initial_response",
]
