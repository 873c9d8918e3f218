"""Read the sections of the config that are more than a few keys: each returns its frozen dataclass.

``[[mailbox]]`` and ``[smtp]`` with their logins (a password, or OAuth 2.0 in an ``oauth``
sub-table), the outbox's rates, ``[notices]``, ``[retention]`` and ``[bounces]``.
helpdeskd.config.load puts them together into a :class:`Config`; every value is read through
helpdeskd.config.values, so each error is one line that names the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from helpdeskd.config.secrets import SECRET_KINDS, Secret
from helpdeskd.config.settings import (
    DEFAULT_CATEGORIES,
    OAUTH_GRANTS,
    OAUTH_MECHANISMS,
    OAUTH_PROVIDERS,
    BouncesConfig,
    MailboxConfig,
    NoticesConfig,
    OAuthConfig,
    RetentionConfig,
    SendRates,
    ServiceConfig,
    SmtpConfig,
    oauth_endpoints,
)
from helpdeskd.config.values import Table, is_loopback
from helpdeskd.errors import ConfigError


def mailbox(table: Table) -> MailboxConfig:
    security = table.choice("security", ("tls", "starttls", "none"), "tls")
    host: str = table.get("host", str)
    if security == "none" and not is_loopback(host):
        raise ConfigError(f"{table.key('security')}: 'none' is allowed only on loopback hosts")
    name: str = table.get("name", str)
    auth, oauth = _auth(table, "mailbox")
    password: Secret | None = None
    if auth == "password":
        password = table.secret("password")
        if password is None:
            raise ConfigError(
                f"{table.key('password')}: required; set password_file or password_env"
            )
    elif name == "smtp":
        # 'helpdeskd oauth login smtp' names the [smtp] table.
        raise ConfigError(
            f"{table.key('name')}: 'smtp' is the name of the [smtp] table in "
            "'helpdeskd oauth login'; give this mailbox another name"
        )
    processed = table.get("processed_folder", str, None)
    mailbox = MailboxConfig(
        name=name,
        host=host,
        port=table.get("port", int, 993 if security == "tls" else 143),
        security=security,
        username=table.get("username", str),
        password=password,
        auth=auth,
        folder=table.get("folder", str, "INBOX"),
        processed_folder=processed or None,
        idle=table.get("idle", bool, True),
        poll_interval=table.positive("poll_interval", 60),
        idle_interval=table.positive("idle_interval", 300),
        timeout=table.positive("timeout", 30),
        batch_size=int(table.positive("batch_size", MailboxConfig.batch_size)),
        max_message_bytes=int(table.positive("max_message_bytes", 25 * 1024 * 1024)),
        oauth=oauth,
    )
    if mailbox.idle_interval > 29 * 60:
        raise ConfigError(f"{table.key('idle_interval')}: must be at most 1740 s (29 minutes)")
    table.check_unknown()
    return mailbox


# --- OAuth 2.0 -----------------------------------------------------------------------------


def _auth(table: Table, kind: str) -> tuple[str, OAuthConfig | None]:
    """Read TABLE's ``auth`` and, with ``auth = "oauth2"``, its ``oauth`` sub-table.

    KIND ("mailbox" or "smtp") names the sub-table in errors: ``[mailbox.oauth]``.
    """
    auth = table.get("auth", str, "password")
    if auth == "xoauth2":
        raise ConfigError(
            f'{table.key("auth")}: "xoauth2" with a fixed token is no longer supported; set '
            f'auth = "oauth2" and add a [{kind}.oauth] table (see docs/admin.md)'
        )
    auth = table.choice("auth", ("password", "oauth2"), "password")
    if auth == "password":
        if "oauth" in table.data:
            raise ConfigError(f'{table.key("oauth")}: set auth = "oauth2" to use it')
        return auth, None
    if "oauth" not in table.data:
        raise ConfigError(
            f'{table.key("oauth")}: required with auth = "oauth2"; add a [{kind}.oauth] table'
        )
    for secret in ("password", *(f"password_{k}" for k in SECRET_KINDS), "token"):
        if secret in table.data:
            raise ConfigError(f'{table.key(secret)}: not used with auth = "oauth2"; remove it')
    return auth, _oauth(table.table("oauth"))


def _oauth(table: Table) -> OAuthConfig:
    provider = table.get("provider", str)
    if provider not in OAUTH_PROVIDERS:
        raise ConfigError(
            f"{table.key('provider')}: must be one of {', '.join(OAUTH_PROVIDERS)}, "
            f"not {provider!r}"
        )
    tenant: str | None = table.get("tenant", str, None)
    if provider == "microsoft":
        tenant = (tenant or "organizations").strip()
        if not tenant or not re.fullmatch(r"[A-Za-z0-9.-]+", tenant):
            raise ConfigError(
                f"{table.key('tenant')}: {tenant!r} is not a tenant (a domain, a tenant id, "
                "organizations or common)"
            )
    elif tenant is not None:
        raise ConfigError(f'{table.key("tenant")}: only for provider = "microsoft"')
    client_id = table.get("client_id", str).strip()
    if not client_id:
        raise ConfigError(f"{table.key('client_id')}: must not be empty")
    client_secret = table.secret("client_secret", inline=False)
    grant = table.choice("grant", OAUTH_GRANTS, "refresh_token")
    if grant == "client_credentials" and provider == "google":
        raise ConfigError(
            f"{table.key('grant')}: Google offers no client_credentials for mail; "
            'use grant = "refresh_token"'
        )
    if grant == "client_credentials" and client_secret is None:
        raise ConfigError(
            f'{table.key("client_secret")}: required with grant = "client_credentials"; '
            "set client_secret_file, client_secret_env or client_secret_credential"
        )
    token_file = table.path("token_file", None)
    mechanism = table.choice("mechanism", OAUTH_MECHANISMS, "xoauth2")
    defaults = oauth_endpoints(provider, tenant=tenant, grant=grant)
    token_url = _oauth_url(table, "token_url", defaults.token_url)
    if token_url is None:
        raise ConfigError(f'{table.key("token_url")}: required with provider = "generic"')
    scope = " ".join(table.get("scope", str, defaults.scope).split())
    oauth = OAuthConfig(
        provider=provider,
        client_id=client_id,
        client_secret=client_secret,
        grant=grant,
        token_file=token_file,
        mechanism=mechanism,
        token_url=token_url,
        device_authorization_url=_oauth_url(
            table, "device_authorization_url", defaults.device_authorization_url
        ),
        authorization_url=_oauth_url(table, "authorization_url", defaults.authorization_url),
        scope=scope,
        tenant=tenant,
    )
    table.check_unknown()
    return oauth


def _oauth_url(table: Table, name: str, default: str | None) -> str | None:
    """Read URL NAME: https, or http on a loopback host only (a test or a local proxy)."""
    value: str | None = table.get(name, str, None)
    if value is None:
        return default
    try:
        parts = urlsplit(value.strip())
        host = parts.hostname
    except ValueError:
        host = None
        parts = urlsplit("")
    if not host or parts.scheme not in ("https", "http"):
        raise ConfigError(f"{table.key(name)}: {value!r} is not an https:// URL")
    if parts.scheme == "http" and not is_loopback(host):
        raise ConfigError(
            f"{table.key(name)}: http:// is allowed only on loopback hosts; use https://"
        )
    return value.strip()


def shared_token_files(owners: list[tuple[str, OAuthConfig]]) -> None:
    """Refuse two tables that share a token_file but not the client and grant it belongs to."""
    first: dict[Path, tuple[str, OAuthConfig]] = {}
    for where, oauth in owners:
        path = oauth.token_file.resolve()
        if path not in first:
            first[path] = (where, oauth)
            continue
        other_where, other = first[path]
        for key in ("provider", "tenant", "client_id", "grant", "token_url", "scope"):
            if getattr(oauth, key) != getattr(other, key):
                raise ConfigError(
                    f"{where}.token_file: shared with {other_where}, whose {key} differs; "
                    "one token_file holds one client's token"
                )
        if oauth.client_secret != other.client_secret:
            raise ConfigError(
                f"{where}.token_file: shared with {other_where}, whose client secret differs"
            )


def smtp(table: Table) -> SmtpConfig:
    """Read ``[smtp]``: the relay the outbox sends through, its login and its rates."""
    security = table.choice("security", ("tls", "starttls", "none"), "starttls")
    smtp_auth, smtp_oauth = _auth(table, "smtp")
    smtp_user = table.get("username", str, None)
    if smtp_auth == "oauth2" and not smtp_user:
        raise ConfigError('smtp.username: required with auth = "oauth2" (the SASL user)')
    smtp = SmtpConfig(
        host=table.get("host", str),
        port=table.get("port", int, {"tls": 465, "starttls": 587, "none": 25}[security]),
        security=security,
        username=smtp_user,
        password=table.secret("password") if smtp_auth == "password" else None,
        timeout=table.positive("timeout", 30),
        max_attempts=int(table.positive("max_attempts", 12)),
        retry_base=table.positive("retry_base", 30),
        retry_max=table.positive("retry_max", 3600),
        auth=smtp_auth,
        oauth=smtp_oauth,
        return_path=_return_path(table),
        connections=_connections(table),
        rates=_send_rates(table.table("rates")),
        **_domain_rates(table.table("domain_rates")),
    )
    if security == "none" and not is_loopback(smtp.host):
        raise ConfigError("smtp.security: 'none' is allowed only on loopback hosts")
    table.check_unknown()
    return smtp


def _return_path(table: Table) -> str | None:
    """``[smtp] return_path``: the VERP base address, whose local part takes ``+TOKEN``."""
    if table.get("return_path", str, None) is None:
        return None
    address = table.address("return_path")
    if "+" in address.partition("@")[0]:
        raise ConfigError(
            f"{table.key('return_path')}: {address!r} has a '+' already; "
            "write the base address (bounces@…), helpdeskd adds +TOKEN to it"
        )
    return address


MAX_SMTP_CONNECTIONS = 64


def _connections(table: Table) -> int:
    """``[smtp] connections``: how many SMTP connections the outbox keeps open."""
    value: int = table.get("connections", int, 4)
    if not 1 <= value <= MAX_SMTP_CONNECTIONS:
        raise ConfigError(
            f"{table.key('connections')}: must be from 1 to {MAX_SMTP_CONNECTIONS}, not {value}"
        )
    return value


def _rate(table: Table, name: str, default: float | None) -> float | None:
    """A rate in mails per second: a number above 0, or 0 for no limit (None)."""
    value = table.get(name, (int, float), default if default is not None else 0)
    if value < 0 or value != value or value == float("inf"):
        raise ConfigError(
            f"{table.key(name)}: must be a number of mails per second, or 0 for no limit"
        )
    return float(value) or None


def _send_rates(table: Table) -> SendRates:
    """``[smtp.rates]``: mails per second of each class of mail (0: no limit)."""
    defaults = SendRates()
    rates = SendRates(
        critical=_rate(table, "critical", defaults.critical),
        optional=_rate(table, "optional", defaults.optional),
        transactional=_rate(table, "transactional", defaults.transactional),
    )
    table.check_unknown()
    return rates


_RATE_DOMAIN = re.compile(r"^(?=.{1,253}$)[^\s@.]+(\.[^\s@.]+)+$")


def _domain_rates(table: Table) -> dict[str, Any]:
    """``[smtp.domain_rates]``: mails per second to a destination domain, by domain name, and
    ``default`` for the others (0: no limit)."""
    default = _rate(table, "default", SmtpConfig.domain_rate)
    named: dict[str, float | None] = {}
    for name in table.data:
        if name == "default":
            continue
        if isinstance(table.data[name], dict):  # gmail.com = 20: TOML reads a dotted key
            raise ConfigError(f'{table.key(name)}: quote a domain name with dots: "{name}.…" = 20')
        domain = name.strip().rstrip(".").lower()
        if not _RATE_DOMAIN.match(domain):
            raise ConfigError(
                f"{table.key(name)}: not a domain name; write the part after @ "
                '("gmail.com" = 20), or default'
            )
        if domain in named:
            raise ConfigError(f"{table.key(name)}: {domain!r} is named twice")
        named[domain] = _rate(table, name, None)
    return {"domain_rates": tuple(sorted(named.items())), "domain_rate": default}


def notices(table: Table, service: ServiceConfig) -> NoticesConfig:
    categories = dict(DEFAULT_CATEGORIES)
    for name, kind in table.get("categories", dict, {}).items():
        if kind not in ("critical", "optional"):
            raise ConfigError(
                f'notices.categories.{name}: must be "critical" or "optional", not {kind!r}'
            )
        if not str(name).replace("_", "").isalnum():
            raise ConfigError(f"notices.categories.{name}: letters, digits and _ only")
        categories[str(name)] = kind == "critical"
    if "rate" in table.data:
        raise ConfigError(
            f"{table.key('rate')}: no longer read; the outbox paces notices by [smtp.rates] "
            "critical and optional (docs/admin.md)"
        )
    notices = NoticesConfig(
        from_address=table.address("from", f"notices@{service.support_domain}"),
        postal_address=table.get("postal_address", str, ""),
        categories=tuple(sorted(categories.items())),
        min_notice_hours=float(table.get("min_notice_hours", (int, float), 24)),
        reminder_hours=float(table.get("reminder_hours", (int, float), 2)),
    )
    table.check_unknown()
    return notices


def retention(table: Table) -> RetentionConfig:
    """Read ``[retention]``: each kind of data kept for a number of days, or "forever"."""
    defaults = RetentionConfig()

    def days(name: str) -> int | None:
        default = getattr(defaults, name)
        value = table.get(name, (int, str), "forever" if default is None else default)
        if value == "forever":
            return None
        if isinstance(value, str) or value < 1:
            raise ConfigError(f'{table.key(name)}: a number of days (1 or more) or "forever"')
        return int(value)

    retention = RetentionConfig(
        raw_mail_days=days("raw_mail_days"),
        quarantine_days=days("quarantine_days"),
        closed_ticket_days=days("closed_ticket_days"),
        sent_mail_days=days("sent_mail_days"),
        event_days=days("event_days"),
        processed_mail_days=days("processed_mail_days"),
        batch=int(table.positive("batch", defaults.batch)),
    )
    table.check_unknown()
    return retention


def bounces(table: Table) -> BouncesConfig:
    """Read ``[bounces]``: the score that suspends an address, and when a score goes stale."""
    defaults = BouncesConfig()
    stale = table.get("stale_after_days", int, defaults.stale_after_days)
    if stale < 1:
        raise ConfigError(f"{table.key('stale_after_days')}: a number of days, 1 or more")
    threshold = table.positive("threshold", defaults.threshold)
    if threshold != threshold:  # nan: no score would ever reach it, silently
        raise ConfigError(f"{table.key('threshold')}: must be a number greater than 0")
    bounces = BouncesConfig(threshold=threshold, stale_after_days=stale)
    table.check_unknown()
    return bounces
