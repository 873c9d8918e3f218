"""Read the TOML configuration file into the frozen dataclasses of helpdeskd.config.settings.

Every error is one line that names the key and says what is wrong. Secrets are read through
helpdeskd.config.secrets; a DKIM private key is checked here, when the config loads, so that
``helpdeskd check`` and a SIGHUP refuse a key the signer could not use.

The larger sections (mailboxes, SMTP, OAuth 2.0, notices, retention, bounces) are read by
helpdeskd.config.sections, and every value through helpdeskd.config.values.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from helpdeskd.config import sections
from helpdeskd.config.dkimkey import load_dkim_key
from helpdeskd.config.secrets import SECRET_KINDS, Secret
from helpdeskd.config.settings import (
    BARE_ADDRESS,
    DEFAULT_REQUESTER_PATTERN,
    DEFAULT_RULES,
    DEFAULT_SUBJECT_PATTERN,
    DEFAULT_TEMPLATES,
    AgentConfig,
    Config,
    DatabaseConfig,
    DkimConfig,
    HerokuConfig,
    HttpConfig,
    MailboxConfig,
    ParseConfig,
    PathsConfig,
    ServiceConfig,
    SmtpConfig,
    StatusPageConfig,
)
from helpdeskd.config.values import Table
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


def _secret_keys(table: Table) -> tuple[tuple[str, Secret], ...]:
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
    root = Table(data, "", base, lenient=lenient_credentials)
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
        support_address=service_t.address("support_address"),
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
        max_message_bytes=int(service_t.positive("max_message_bytes", 25 * 1024 * 1024)),
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
        mailboxes.append(sections.mailbox(root.child(item, f"mailbox[{index}]")))
    names = [m.name for m in mailboxes]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"mailbox: the name {name!r} is used twice")

    smtp: SmtpConfig | None = None
    if "smtp" in data:
        smtp = sections.smtp(root.table("smtp"))
    sections.shared_token_files(
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
                email=agent_t.address("email").lower(),
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
        timeout=parse_t.positive("timeout", 20),
    )
    parse_t.check_unknown()
    heroku = None
    if "heroku" in data:
        root.used.add("heroku")
        if not isinstance(data["heroku"], dict):
            raise ConfigError("heroku: expected a table")
        heroku = parse_heroku_config(data["heroku"])
    notices = sections.notices(root.table("notices"), service)
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
    retention = sections.retention(root.table("retention"))
    bounces = sections.bounces(root.table("bounces"))
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
    table = Table(data, "dkim", base, lenient=lenient_credentials)
    domain = table.nonempty("domain").strip().rstrip(".").lower()
    if not domain.isascii():
        raise ConfigError(f"dkim.domain: {domain!r}: use the ASCII (xn--) form")
    if not _DOMAIN.fullmatch(domain):
        raise ConfigError(f"dkim.domain: {domain!r} is not a domain name")
    selector = table.nonempty("selector").strip().lower()
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
