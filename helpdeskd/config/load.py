"""Read the TOML configuration file into the frozen dataclasses of helpdeskd.config.settings.

Every error is one line that names the key and says what is wrong. Secrets are read through
helpdeskd.config.secrets; a DKIM private key is checked here, when the config loads, so that
``helpdeskd check`` and a SIGHUP refuse a key the signer could not use.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from helpdeskd.config.dkimkey import load_dkim_key
from helpdeskd.config.secrets import SECRET_KINDS, Secret, SecretSource, read_secret
from helpdeskd.config.settings import (
    BARE_ADDRESS,
    DEFAULT_CATEGORIES,
    DEFAULT_REQUESTER_PATTERN,
    DEFAULT_RULES,
    DEFAULT_SUBJECT_PATTERN,
    DEFAULT_TEMPLATES,
    OAUTH_GRANTS,
    OAUTH_MECHANISMS,
    OAUTH_PROVIDERS,
    AgentConfig,
    BouncesConfig,
    Config,
    DatabaseConfig,
    DkimConfig,
    HerokuConfig,
    HttpConfig,
    MailboxConfig,
    NoticesConfig,
    OAuthConfig,
    ParseConfig,
    PathsConfig,
    RetentionConfig,
    SendRates,
    ServiceConfig,
    SmtpConfig,
    StatusPageConfig,
    oauth_endpoints,
)
from helpdeskd.errors import ConfigError


def load_config(path: Path, *, lenient_credentials: bool = False) -> Config:
    """Read and validate the config file at PATH.

    With LENIENT_CREDENTIALS, systemd credentials that this process cannot read (an admin's
    CLI outside the service) load as unavailable secrets that fail only when used.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_config(
        data, path.resolve().parent, source=path, lenient_credentials=lenient_credentials
    )


def default_config_path() -> Path:
    env = os.environ.get("HELPDESKD_CONFIG")
    if env:
        return Path(env)
    local = Path("helpdeskd.toml")
    if local.exists():
        return local
    return Path("/etc/helpdeskd/helpdeskd.toml")


# --- tables --------------------------------------------------------------------------------


class _Table:
    """A TOML table that remembers its dotted name, so errors can name the key."""

    def __init__(
        self, data: Mapping[str, Any], where: str, base: Path, *, lenient: bool = False
    ) -> None:
        self.data = data
        self.where = where
        self.base = base
        self.lenient = lenient  # systemd credentials out of reach load as unavailable secrets
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self.used.add(name)
        if name not in self.data:
            if default is ...:
                raise ConfigError(f"{self.key(name)}: required key is missing")
            return default
        value = self.data[name]
        # bool is an int in Python; a number key given `true` is still a mistake.
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(f"{self.key(name)}: expected {_kind_name(kinds)}, got a boolean")
        if not isinstance(value, kinds):
            raise ConfigError(
                f"{self.key(name)}: expected {_kind_name(kinds)}, got {type(value).__name__}"
            )
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value: str = self.get(name, str, default)
        if value not in choices:
            raise ConfigError(
                f"{self.key(name)}: must be one of {', '.join(choices)}, not {value!r}"
            )
        return value

    def path(self, name: str, default: Path | None) -> Path:
        value = self.get(name, str, None)
        if value is None:
            if default is None:
                raise ConfigError(f"{self.key(name)}: required key is missing")
            return default
        path = Path(value)
        return path if path.is_absolute() else self.base / path

    def secret(
        self, name: str, *, required: bool = False, inline: bool = True, what: str = "UTF-8 text"
    ) -> Secret | None:
        """Read NAME from NAME_file, NAME_env, NAME_credential or (if INLINE) NAME itself.

        An inline secret sits in the config file itself: allowed for passwords, discouraged.
        """
        sources = [f"{name}_{kind}" for kind in SECRET_KINDS]
        names = [*sources, name] if inline else sources
        given = {key: value for key in names if (value := self.get(key, str, None)) is not None}
        if len(given) > 1:
            raise ConfigError(f"{self.key(name)}: give only one of {_one_of(names)}")
        if not given:
            if required:
                raise ConfigError(f"{self.key(name)}: required; set {_one_of(sources)}")
            return None
        [(key, value)] = given.items()
        if key == name:
            return Secret(value)
        if not value.strip():
            raise ConfigError(f"{self.key(key)}: must not be empty")
        kind = SECRET_KINDS[sources.index(key)]
        source = SecretSource(self.where, name, kind, value)
        return read_secret(source, base=self.base, lenient=self.lenient, what=what)

    def table(self, name: str, default_empty: bool = True) -> _Table:
        value = self.get(name, dict, {} if default_empty else ...)
        return self.child(value, self.key(name))

    def child(self, data: Mapping[str, Any], where: str) -> _Table:
        """Return a table inside this one (an item of an array of tables, say)."""
        return _Table(data, where, self.base, lenient=self.lenient)

    def check_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        dict: "a table",
        list: "an array",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _one_of(names: list[str]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}"


def _address(table: _Table, name: str, default: Any = ...) -> str:
    value: str = table.get(name, str, default)
    if value is None:
        return value
    local, at, domain = value.partition("@")
    if not at or not local or not domain or " " in value or "." not in domain:
        raise ConfigError(f"{table.key(name)}: {value!r} is not an email address")
    return value


def _positive(table: _Table, name: str, default: float) -> float:
    value = float(table.get(name, (int, float), default))
    if value <= 0:
        raise ConfigError(f"{table.key(name)}: must be greater than 0")
    return value


def _secret_keys(table: _Table) -> tuple[tuple[str, Secret], ...]:
    secret = table.secret("secret_key", required=True)
    assert secret is not None
    if not secret.available:
        return (("k1", secret),)
    keys: list[tuple[str, Secret]] = []
    for number, line in enumerate(secret.reveal().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key_id, _, value = line.partition(" ")
        if not value:
            key_id, value = "k1", key_id
        if not key_id.isalnum() or len(value.strip()) < 16:
            raise ConfigError(
                f"{table.key('secret_key')}: line {number}: expected 'ID SECRET' with an "
                "alphanumeric id and a secret of at least 16 characters"
            )
        keys.append((key_id, Secret(value.strip())))
    if not keys:
        raise ConfigError(f"{table.key('secret_key')}: no key found")
    return tuple(keys)


def _mailbox(table: _Table) -> MailboxConfig:
    security = table.choice("security", ("tls", "starttls", "none"), "tls")
    host: str = table.get("host", str)
    if security == "none" and not _is_loopback(host):
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
        poll_interval=_positive(table, "poll_interval", 60),
        idle_interval=_positive(table, "idle_interval", 300),
        timeout=_positive(table, "timeout", 30),
        batch_size=int(_positive(table, "batch_size", MailboxConfig.batch_size)),
        max_message_bytes=int(_positive(table, "max_message_bytes", 25 * 1024 * 1024)),
        oauth=oauth,
    )
    if mailbox.idle_interval > 29 * 60:
        raise ConfigError(f"{table.key('idle_interval')}: must be at most 1740 s (29 minutes)")
    table.check_unknown()
    return mailbox


# --- OAuth 2.0 -----------------------------------------------------------------------------


def _auth(table: _Table, kind: str) -> tuple[str, OAuthConfig | None]:
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


def _oauth(table: _Table) -> OAuthConfig:
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


def _oauth_url(table: _Table, name: str, default: str | None) -> str | None:
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
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigError(
            f"{table.key(name)}: http:// is allowed only on loopback hosts; use https://"
        )
    return value.strip()


def _shared_token_files(owners: list[tuple[str, OAuthConfig]]) -> None:
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


def _return_path(table: _Table) -> str | None:
    """``[smtp] return_path``: the VERP base address, whose local part takes ``+TOKEN``."""
    if table.get("return_path", str, None) is None:
        return None
    address = _address(table, "return_path")
    if "+" in address.partition("@")[0]:
        raise ConfigError(
            f"{table.key('return_path')}: {address!r} has a '+' already; "
            "write the base address (bounces@…), helpdeskd adds +TOKEN to it"
        )
    return address


MAX_SMTP_CONNECTIONS = 64


def _connections(table: _Table) -> int:
    """``[smtp] connections``: how many SMTP connections the outbox keeps open."""
    value: int = table.get("connections", int, 4)
    if not 1 <= value <= MAX_SMTP_CONNECTIONS:
        raise ConfigError(
            f"{table.key('connections')}: must be from 1 to {MAX_SMTP_CONNECTIONS}, not {value}"
        )
    return value


def _rate(table: _Table, name: str, default: float | None) -> float | None:
    """A rate in mails per second: a number above 0, or 0 for no limit (None)."""
    value = table.get(name, (int, float), default if default is not None else 0)
    if value < 0 or value != value or value == float("inf"):
        raise ConfigError(
            f"{table.key(name)}: must be a number of mails per second, or 0 for no limit"
        )
    return float(value) or None


def _send_rates(table: _Table) -> SendRates:
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


def _domain_rates(table: _Table) -> dict[str, Any]:
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


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _notices(table: _Table, service: ServiceConfig) -> NoticesConfig:
    categories = dict(DEFAULT_CATEGORIES)
    for name, kind in table.get("categories", dict, {}).items():
        if kind not in ("critical", "optional"):
            raise ConfigError(
                f'notices.categories.{name}: must be "critical" or "optional", not {kind!r}'
            )
        if not str(name).replace("_", "").isalnum():
            raise ConfigError(f"notices.categories.{name}: letters, digits and _ only")
        categories[str(name)] = kind == "critical"
    notices = NoticesConfig(
        from_address=_address(table, "from", f"notices@{service.support_domain}"),
        postal_address=table.get("postal_address", str, ""),
        categories=tuple(sorted(categories.items())),
        rate=_positive(table, "rate", 20),
        min_notice_hours=float(table.get("min_notice_hours", (int, float), 24)),
        reminder_hours=float(table.get("reminder_hours", (int, float), 2)),
    )
    table.check_unknown()
    return notices


def _retention(table: _Table) -> RetentionConfig:
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
        batch=int(_positive(table, "batch", defaults.batch)),
    )
    table.check_unknown()
    return retention


def _bounces(table: _Table) -> BouncesConfig:
    """Read ``[bounces]``: the score that suspends an address, and when a score goes stale."""
    defaults = BouncesConfig()
    stale = table.get("stale_after_days", int, defaults.stale_after_days)
    if stale < 1:
        raise ConfigError(f"{table.key('stale_after_days')}: a number of days, 1 or more")
    threshold = _positive(table, "threshold", defaults.threshold)
    if threshold != threshold:  # nan: no score would ever reach it, silently
        raise ConfigError(f"{table.key('threshold')}: must be a number greater than 0")
    bounces = BouncesConfig(threshold=threshold, stale_after_days=stale)
    table.check_unknown()
    return bounces


def parse_config(
    data: Mapping[str, Any],
    base: Path,
    source: Path | None = None,
    *,
    lenient_credentials: bool = False,
) -> Config:
    """Build a :class:`Config` from parsed TOML; relative paths are taken from BASE.

    LENIENT_CREDENTIALS is as for :func:`load_config`.
    """
    root = _Table(data, "", base, lenient=lenient_credentials)
    service_t = root.table("service", default_empty=False)
    timezone = service_t.get("timezone", str, "UTC")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"service.timezone: unknown time zone {timezone!r}") from None
    prefix = service_t.get("ticket_prefix", str, "HD")
    if not prefix.isalnum() or not prefix.isascii():
        raise ConfigError("service.ticket_prefix: letters and digits only")
    public_url: str = service_t.get("public_url", str)
    if not public_url.startswith(("https://", "http://")):
        raise ConfigError("service.public_url: must start with https:// or http://")
    service = ServiceConfig(
        name=service_t.get("name", str),
        support_address=_address(service_t, "support_address"),
        public_url=public_url.rstrip("/"),
        ticket_prefix=prefix.upper(),
        secret_keys=_secret_keys(service_t),
        timezone=timezone,
        state_dir=service_t.path("state_dir", base / "state"),
        ack=service_t.get("ack", bool, True),
        autoreply_limit=int(service_t.get("autoreply_limit", int, 5)),
        flood_messages=int(service_t.get("flood_messages", int, 10)),
        flood_minutes=int(service_t.get("flood_minutes", int, 10)),
        reopen_window_days=int(service_t.get("reopen_window_days", int, 14)),
        agent_auth=service_t.choice("agent_auth", ("token", "token+dkim"), "token"),
        agent_token_days=int(service_t.get("agent_token_days", int, 90)),
        authserv_id=service_t.get("authserv_id", str, None),
        agent_reply_state=service_t.choice(
            "agent_reply_state", ("open", "pending", "solved"), "pending"
        ),
        receipts=service_t.choice("receipts", ("always", "errors"), "always"),
        blocked_senders=tuple(str(v).lower() for v in service_t.get("blocked_senders", list, [])),
        max_message_bytes=int(_positive(service_t, "max_message_bytes", 25 * 1024 * 1024)),
        alert_after=float(service_t.get("alert_after", (int, float), 900)),
    )
    if service.agent_token_days < 1:
        raise ConfigError("service.agent_token_days: must be at least 1")
    if service.agent_auth == "token+dkim" and not service.authserv_id:
        raise ConfigError("service.authserv_id: required when agent_auth is token+dkim")
    service_t.check_unknown()

    db_t = root.table("database", default_empty=False)
    url: str = db_t.get("url", str)
    if not url.startswith(("sqlite:", "postgresql:", "postgresql+", "postgres:")):
        raise ConfigError("database.url: must be a sqlite:// or postgresql:// URL")
    db_t.check_unknown()

    mailboxes: list[MailboxConfig] = []
    root.used.add("mailbox")
    raw_mailboxes = data.get("mailbox", [])
    if not isinstance(raw_mailboxes, list):
        raise ConfigError("mailbox: use [[mailbox]] (an array of tables)")
    for index, item in enumerate(raw_mailboxes):
        if not isinstance(item, dict):
            raise ConfigError(f"mailbox[{index}]: expected a table")
        mailboxes.append(_mailbox(root.child(item, f"mailbox[{index}]")))
    names = [m.name for m in mailboxes]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"mailbox: the name {name!r} is used twice")

    smtp: SmtpConfig | None = None
    if "smtp" in data:
        smtp_t = root.table("smtp")
        security = smtp_t.choice("security", ("tls", "starttls", "none"), "starttls")
        smtp_auth, smtp_oauth = _auth(smtp_t, "smtp")
        smtp_user = smtp_t.get("username", str, None)
        if smtp_auth == "oauth2" and not smtp_user:
            raise ConfigError('smtp.username: required with auth = "oauth2" (the SASL user)')
        smtp = SmtpConfig(
            host=smtp_t.get("host", str),
            port=smtp_t.get("port", int, {"tls": 465, "starttls": 587, "none": 25}[security]),
            security=security,
            username=smtp_user,
            password=smtp_t.secret("password") if smtp_auth == "password" else None,
            timeout=_positive(smtp_t, "timeout", 30),
            max_attempts=int(_positive(smtp_t, "max_attempts", 12)),
            retry_base=_positive(smtp_t, "retry_base", 30),
            retry_max=_positive(smtp_t, "retry_max", 3600),
            auth=smtp_auth,
            oauth=smtp_oauth,
            return_path=_return_path(smtp_t),
            connections=_connections(smtp_t),
            rates=_send_rates(smtp_t.table("rates")),
            **_domain_rates(smtp_t.table("domain_rates")),
        )
        if security == "none" and not _is_loopback(smtp.host):
            raise ConfigError("smtp.security: 'none' is allowed only on loopback hosts")
        smtp_t.check_unknown()
    _shared_token_files(
        [(f"mailbox[{i}].oauth", m.oauth) for i, m in enumerate(mailboxes) if m.oauth]
        + ([("smtp.oauth", smtp.oauth)] if smtp is not None and smtp.oauth else [])
    )

    http_t = root.table("http")
    listen = http_t.get("listen", str, None)
    metrics_listen = http_t.get("metrics_listen", str, None)
    for key, value in (("listen", listen), ("metrics_listen", metrics_listen)):
        if value is not None and (":" not in value or not value.rpartition(":")[2].isdigit()):
            raise ConfigError(f"http.{key}: expected HOST:PORT, not {value!r}")
    admin_token = http_t.secret("admin_token", inline=False)
    if admin_token is not None and admin_token.available:
        token = admin_token.reveal()
        if len(token) < 16 or not token.isascii() or not token.isprintable() or " " in token:
            raise ConfigError(
                "http.admin_token: at least 16 printable ASCII characters without spaces"
            )
    http_t.check_unknown()

    agents: list[AgentConfig] = []
    root.used.add("agent")
    raw_agents = data.get("agent", [])
    if not isinstance(raw_agents, list):
        raise ConfigError("agent: use [[agent]] (an array of tables)")
    for index, item in enumerate(raw_agents):
        if not isinstance(item, dict):
            raise ConfigError(f"agent[{index}]: expected a table")
        agent_t = root.child(item, f"agent[{index}]")
        queues = agent_t.get("queues", list, [])
        agents.append(
            AgentConfig(
                email=_address(agent_t, "email").lower(),
                name=agent_t.get("name", str),
                queues=tuple(str(q) for q in queues),
            )
        )
        agent_t.check_unknown()

    paths_t = root.table("paths")
    paths = PathsConfig(
        rules=paths_t.path("rules", DEFAULT_RULES),
        templates=paths_t.path("templates", DEFAULT_TEMPLATES),
    )
    paths_t.check_unknown()

    parse_t = root.table("parse")
    parse = ParseConfig(
        workers=int(parse_t.get("workers", int, min(2, os.cpu_count() or 1))),
        timeout=_positive(parse_t, "timeout", 20),
    )
    parse_t.check_unknown()
    heroku = None
    if "heroku" in data:
        root.used.add("heroku")
        if not isinstance(data["heroku"], dict):
            raise ConfigError("heroku: expected a table")
        heroku = parse_heroku_config(data["heroku"])
    notices = _notices(root.table("notices"), service)
    dkim = None
    if "dkim" in data:
        root.used.add("dkim")
        if not isinstance(data["dkim"], dict):
            raise ConfigError("dkim: expected a table")
        dkim = parse_dkim_config(data["dkim"], base, lenient_credentials=lenient_credentials)
    status_t = root.table("status_page")
    components = status_t.get("components", dict, {})
    status_page = StatusPageConfig(
        components=tuple((str(k), str(v)) for k, v in components.items())
    )
    status_t.check_unknown()
    retention = _retention(root.table("retention"))
    bounces = _bounces(root.table("bounces"))
    root.check_unknown()
    return Config(
        service=service,
        database=DatabaseConfig(url=url),
        mailboxes=tuple(mailboxes),
        smtp=smtp,
        http=HttpConfig(listen=listen, metrics_listen=metrics_listen, admin_token=admin_token),
        agents=tuple(agents),
        paths=paths,
        parse=parse,
        heroku=heroku,
        notices=notices,
        dkim=dkim,
        status_page=status_page,
        retention=retention,
        bounces=bounces,
        source=source,
    )


# --- [heroku] ------------------------------------------------------------------------------

_HEROKU_KEYS = frozenset(
    {
        "senders",
        "reply_address",
        "agent_address",
        "subject_pattern",
        "requester_pattern",
        "solve_line",
        "authserv_id",
    }
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _heroku_string(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"heroku.{key}: expected a string, got {type(value).__name__}")
    return value


def _heroku_address(value: str, key: str) -> str:
    address = value.strip().lower()
    if not BARE_ADDRESS.fullmatch(address):
        raise ConfigError(
            f"{key}: {value!r} is not an email address (write the bare address, no display name)"
        )
    return address


def _heroku_pattern(data: Mapping[str, Any], key: str, default: str, required: str) -> str:
    pattern = _heroku_string(data, key)
    if pattern is None:
        return default
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"heroku.{key}: bad regex: {exc}") from None
    if required not in compiled.groupindex:
        raise ConfigError(f"heroku.{key}: needs a (?P<{required}>…) group")
    return pattern


def parse_heroku_config(data: Mapping[str, Any]) -> HerokuConfig:
    """Build a :class:`HerokuConfig` from the TOML table ``[heroku]`` (absent or empty: off)."""
    unknown = sorted(set(data) - _HEROKU_KEYS)
    if unknown:
        raise ConfigError(f"heroku.{unknown[0]}: unknown key")

    raw_senders = data.get("senders", [])
    if not isinstance(raw_senders, list):
        raise ConfigError("heroku.senders: expected an array of addresses")
    senders: list[str] = []
    for index, value in enumerate(raw_senders):
        if not isinstance(value, str):
            raise ConfigError(
                f"heroku.senders[{index}]: expected a string, got {type(value).__name__}"
            )
        address = _heroku_address(value, f"heroku.senders[{index}]")
        if address not in senders:
            senders.append(address)

    addresses: dict[str, str] = {}
    for key in ("reply_address", "agent_address"):
        value = _heroku_string(data, key)
        if value is None:
            if senders:
                raise ConfigError(f"heroku.{key}: required when heroku.senders is set")
            addresses[key] = ""
        else:
            addresses[key] = _heroku_address(value, f"heroku.{key}")

    solve_line = _heroku_string(data, "solve_line")
    if solve_line is not None:
        solve_line = solve_line.strip()
        if not solve_line:
            raise ConfigError("heroku.solve_line: empty; remove the key to send no solve line")
        if _CONTROL.search(solve_line):
            raise ConfigError("heroku.solve_line: must be one line of text")

    authserv_id = _heroku_string(data, "authserv_id")
    if authserv_id is not None:
        authserv_id = authserv_id.strip()
        if not authserv_id:
            raise ConfigError("heroku.authserv_id: empty; remove the key to skip the DKIM check")
        if re.search(r"[\s;()\"]", authserv_id):
            raise ConfigError(
                f"heroku.authserv_id: {authserv_id!r} is not an authserv-id (the first word "
                "of your server's Authentication-Results, e.g. mx.example.com)"
            )

    return HerokuConfig(
        senders=tuple(senders),
        reply_address=addresses["reply_address"],
        agent_address=addresses["agent_address"],
        subject_pattern=_heroku_pattern(data, "subject_pattern", DEFAULT_SUBJECT_PATTERN, "ticket"),
        requester_pattern=_heroku_pattern(
            data, "requester_pattern", DEFAULT_REQUESTER_PATTERN, "email"
        ),
        solve_line=solve_line,
        authserv_id=authserv_id,
    )


# --- [dkim] --------------------------------------------------------------------------------

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_SELECTOR = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_DKIM_KEYS = frozenset({"domain", "selector", *(f"key_{kind}" for kind in SECRET_KINDS)})


def parse_dkim_config(
    data: Mapping[str, Any], base: Path, *, lenient_credentials: bool = False
) -> DkimConfig:
    """Build a :class:`DkimConfig` from the TOML table ``[dkim]``; key_file is taken from BASE.

    Keys: ``domain`` (d=), ``selector`` (s=) and exactly one of ``key_file``, ``key_env`` or
    ``key_credential`` (a systemd credential). The key is parsed now, so a key the signer
    could not use fails the load naming its key. LENIENT_CREDENTIALS is as for load_config;
    a credential out of reach is then checked only when the signer reveals it.
    """
    if "key" in data:
        raise ConfigError(
            "dkim.key: keep the private key out of the config file; "
            "set key_file, key_env or key_credential"
        )
    unknown = sorted(set(data) - _DKIM_KEYS)
    if unknown:
        raise ConfigError(f"dkim.{unknown[0]}: unknown key")
    table = _Table(data, "dkim", base, lenient=lenient_credentials)
    domain = _nonempty(table, "domain").strip().rstrip(".").lower()
    if not domain.isascii():
        raise ConfigError(f"dkim.domain: {domain!r}: use the ASCII (xn--) form")
    if not _DOMAIN.fullmatch(domain):
        raise ConfigError(f"dkim.domain: {domain!r} is not a domain name")
    selector = _nonempty(table, "selector").strip().lower()
    if not selector.isascii() or not _SELECTOR.fullmatch(selector):
        raise ConfigError(f"dkim.selector: {selector!r} is not a valid selector")
    private_key = table.secret("key", required=True, inline=False, what="a PEM private key")
    assert private_key is not None
    if private_key.available:
        try:
            load_dkim_key(private_key.reveal())
        except ValueError as exc:
            source = next(f"key_{kind}" for kind in SECRET_KINDS if f"key_{kind}" in data)
            raise ConfigError(f"dkim.{source}: {exc}") from None
    return DkimConfig(domain=domain, selector=selector, private_key=private_key)


def _nonempty(table: _Table, name: str) -> str:
    value: str = table.get(name, str)
    if not value.strip():
        raise ConfigError(f"{table.key(name)}: must not be empty")
    return value
