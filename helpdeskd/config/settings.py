"""Load the TOML configuration into frozen dataclasses.

Every error names the key and says what is wrong. Secrets come from ``*_file`` keys, ``*_env``
keys or systemd credentials (``$CREDENTIALS_DIRECTORY``) and are never logged: they are held in
:class:`Secret`, whose ``repr`` hides the value.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from helpdeskd.errors import ConfigError

if TYPE_CHECKING:
    from helpdeskd.outbox.dkim import DkimConfig
    from helpdeskd.triage.heroku import HerokuConfig

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # helpdeskd/


def _data_dir(name: str) -> Path:
    """Return the shipped copy of a top-level data folder (wheel or source checkout)."""
    packaged = PACKAGE_DIR / "_data" / name
    if packaged.exists():
        return packaged
    return PACKAGE_DIR.parent / name


DEFAULT_TEMPLATES = _data_dir("templates")
_LENIENT_CREDENTIALS: ContextVar[bool] = ContextVar("lenient_credentials", default=False)
DEFAULT_RULES = _data_dir("rules")


class Secret:
    """A secret string that never shows itself in logs, reprs or tracebacks."""

    __slots__ = ("_missing", "_value")

    def __init__(self, value: str, missing: str | None = None) -> None:
        self._value = value
        self._missing = missing

    @classmethod
    def unavailable(cls, reason: str) -> Secret:
        """A secret this process cannot read (a systemd credential outside the service)."""
        return cls("", missing=reason)

    @property
    def available(self) -> bool:
        return self._missing is None

    def reveal(self) -> str:
        if self._missing is not None:
            raise ConfigError(self._missing)
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    support_address: str
    public_url: str
    ticket_prefix: str
    secret_keys: tuple[tuple[str, Secret], ...]  # (key id, key); the first signs, all verify
    timezone: str
    state_dir: Path
    ack: bool = True
    autoreply_limit: int = 5
    flood_messages: int = 10
    flood_minutes: int = 10
    reopen_window_days: int = 14
    agent_auth: str = "token"  # token | token+dkim
    authserv_id: str | None = None  # our own server's Authentication-Results id
    agent_reply_state: str = "pending"  # where a public agent reply moves an open ticket
    receipts: str = "always"  # always | errors: mail agents a receipt of applied commands
    blocked_senders: tuple[str, ...] = ()  # addresses or @domains whose mail is recorded only
    max_message_bytes: int = 25 * 1024 * 1024  # larger mail is kept on disk, not processed
    alert_after: float = 900.0  # seconds a mailbox may fail before the agents are told

    @property
    def support_domain(self) -> str:
        return self.support_address.rpartition("@")[2]

    @property
    def support_local(self) -> str:
        return self.support_address.rpartition("@")[0]

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class DatabaseConfig:
    url: str


@dataclass(frozen=True)
class MailboxConfig:
    name: str
    host: str
    port: int
    security: str  # tls | starttls | none
    username: str
    password: Secret | None
    auth: str = "password"  # password | xoauth2
    folder: str = "INBOX"
    processed_folder: str | None = None
    idle: bool = True
    poll_interval: float = 60.0
    idle_interval: float = 300.0  # re-IDLE this often: NATs drop idle TCP; never past 29 min
    timeout: float = 30.0
    batch_size: int = 250  # mails stored in one transaction, and then moved, during a catch-up
    max_message_bytes: int = 25 * 1024 * 1024


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    security: str  # tls | starttls | none
    username: str | None
    password: Secret | None
    timeout: float = 30.0
    max_attempts: int = 12
    retry_base: float = 30.0
    retry_max: float = 3600.0


@dataclass(frozen=True)
class HttpConfig:
    listen: str | None = None
    metrics_listen: str | None = None  # serve /metrics here (a private address) instead


@dataclass(frozen=True)
class AgentConfig:
    email: str
    name: str
    queues: tuple[str, ...] = ()


@dataclass(frozen=True)
class PathsConfig:
    rules: Path
    templates: Path


@dataclass(frozen=True)
class ParseConfig:
    workers: int = 2
    timeout: float = 20.0


DEFAULT_CATEGORIES = {
    "maintenance": True,
    "incident": True,
    "overage": True,
    "tos": True,
    "feature_update": False,
    "survey": False,
}


@dataclass(frozen=True)
class NoticesConfig:
    """User notices: who they come from, and which categories are critical."""

    from_address: str
    postal_address: str
    categories: tuple[tuple[str, bool], ...]  # (name, critical)
    rate: float = 20.0  # mails per second the outbox may send of one notice
    min_notice_hours: float = 24.0  # maintenance is announced at least this far ahead
    reminder_hours: float = 2.0  # a maintenance reminder this long before the start (0: none)

    def critical(self, category: str) -> bool | None:
        """Whether CATEGORY is critical; None when there is no such category."""
        return dict(self.categories).get(category)


@dataclass(frozen=True)
class StatusPageConfig:
    components: tuple[tuple[str, str], ...] = ()  # (key, display name)


@dataclass(frozen=True)
class Config:
    service: ServiceConfig
    database: DatabaseConfig
    mailboxes: tuple[MailboxConfig, ...]
    smtp: SmtpConfig | None
    http: HttpConfig
    agents: tuple[AgentConfig, ...]
    paths: PathsConfig
    parse: ParseConfig = field(default_factory=ParseConfig)
    heroku: HerokuConfig | None = None
    notices: NoticesConfig | None = None
    dkim: DkimConfig | None = None
    status_page: StatusPageConfig = field(default_factory=StatusPageConfig)
    source: Path | None = None

    def agent(self, email: str) -> AgentConfig | None:
        email = email.lower()
        for agent in self.agents:
            if agent.email.lower() == email:
                return agent
        return None

    def own_addresses(self) -> frozenset[str]:
        """Return the addresses that are ours: mail from them is never answered."""
        addresses = {self.service.support_address.lower()}
        addresses.update(m.username.lower() for m in self.mailboxes if "@" in m.username)
        addresses.add(f"notices@{self.service.support_domain}".lower())
        if self.notices is not None:
            addresses.add(self.notices.from_address.lower())
        return frozenset(addresses)


# --- reading -------------------------------------------------------------------------------


class _Table:
    """A TOML table that remembers its dotted name, so errors can name the key."""

    def __init__(self, data: Mapping[str, Any], where: str, base: Path) -> None:
        self.data = data
        self.where = where
        self.base = base
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

    def secret(self, name: str, *, required: bool = False) -> Secret | None:
        """Read NAME from NAME_file, NAME_env, NAME_credential or NAME itself (discouraged)."""
        file_value = self.get(f"{name}_file", str, None)
        env_value = self.get(f"{name}_env", str, None)
        cred_value = self.get(f"{name}_credential", str, None)
        inline = self.get(name, str, None)
        given = [v for v in (file_value, env_value, cred_value, inline) if v is not None]
        if len(given) > 1:
            raise ConfigError(
                f"{self.key(name)}: give only one of {name}_file, {name}_env, "
                f"{name}_credential or {name}"
            )
        if file_value is not None:
            path = Path(file_value)
            path = path if path.is_absolute() else self.base / path
            try:
                return Secret(path.read_text().strip())
            except OSError as exc:
                raise ConfigError(
                    f"{self.key(name + '_file')}: cannot read {path}: {exc.strerror}"
                ) from None
        if env_value is not None:
            if env_value not in os.environ:
                raise ConfigError(
                    f"{self.key(name + '_env')}: environment variable {env_value} is not set"
                )
            return Secret(os.environ[env_value])
        if cred_value is not None:
            directory = os.environ.get("CREDENTIALS_DIRECTORY")
            if not directory and _LENIENT_CREDENTIALS.get():
                return Secret.unavailable(
                    f"{self.key(name + '_credential')}: only the service can read systemd "
                    "credentials; run this command through 'systemd-run -p LoadCredential=…' "
                    "or use a *_file secret"
                )
            if not directory:
                raise ConfigError(
                    f"{self.key(name + '_credential')}: $CREDENTIALS_DIRECTORY is not set "
                    "(use LoadCredential= in the unit)"
                )
            try:
                return Secret((Path(directory) / cred_value).read_text().strip())
            except OSError as exc:
                raise ConfigError(
                    f"{self.key(name + '_credential')}: cannot read credential {cred_value}: "
                    f"{exc.strerror}"
                ) from None
        if inline is not None:
            return Secret(inline)
        if required:
            raise ConfigError(f"{self.key(name)}: required; set {name}_file or {name}_env")
        return None

    def table(self, name: str, default_empty: bool = True) -> _Table:
        value = self.get(name, dict, {} if default_empty else ...)
        return _Table(value, self.key(name), self.base)

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
    auth = table.choice("auth", ("password", "xoauth2"), "password")
    password = table.secret("password") if auth == "password" else table.secret("token")
    if password is None:
        raise ConfigError(f"{table.key('password')}: required; set password_file or password_env")
    processed = table.get("processed_folder", str, None)
    mailbox = MailboxConfig(
        name=table.get("name", str),
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
    )
    if mailbox.idle_interval > 29 * 60:
        raise ConfigError(f"{table.key('idle_interval')}: must be at most 1740 s (29 minutes)")
    table.check_unknown()
    return mailbox


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
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


def parse_config(data: Mapping[str, Any], base: Path, source: Path | None = None) -> Config:
    """Build a :class:`Config` from parsed TOML; relative paths are taken from BASE."""
    root = _Table(data, "", base)
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
        authserv_id=service_t.get("authserv_id", str, None),
        agent_reply_state=service_t.choice(
            "agent_reply_state", ("open", "pending", "solved"), "pending"
        ),
        receipts=service_t.choice("receipts", ("always", "errors"), "always"),
        blocked_senders=tuple(str(v).lower() for v in service_t.get("blocked_senders", list, [])),
        max_message_bytes=int(_positive(service_t, "max_message_bytes", 25 * 1024 * 1024)),
        alert_after=float(service_t.get("alert_after", (int, float), 900)),
    )
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
        mailboxes.append(_mailbox(_Table(item, f"mailbox[{index}]", base)))
    names = [m.name for m in mailboxes]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"mailbox: the name {name!r} is used twice")

    smtp: SmtpConfig | None = None
    if "smtp" in data:
        smtp_t = root.table("smtp")
        security = smtp_t.choice("security", ("tls", "starttls", "none"), "starttls")
        smtp = SmtpConfig(
            host=smtp_t.get("host", str),
            port=smtp_t.get("port", int, {"tls": 465, "starttls": 587, "none": 25}[security]),
            security=security,
            username=smtp_t.get("username", str, None),
            password=smtp_t.secret("password"),
            timeout=_positive(smtp_t, "timeout", 30),
            max_attempts=int(_positive(smtp_t, "max_attempts", 12)),
            retry_base=_positive(smtp_t, "retry_base", 30),
            retry_max=_positive(smtp_t, "retry_max", 3600),
        )
        if security == "none" and not _is_loopback(smtp.host):
            raise ConfigError("smtp.security: 'none' is allowed only on loopback hosts")
        smtp_t.check_unknown()

    http_t = root.table("http")
    listen = http_t.get("listen", str, None)
    metrics_listen = http_t.get("metrics_listen", str, None)
    for key, value in (("listen", listen), ("metrics_listen", metrics_listen)):
        if value is not None and (":" not in value or not value.rpartition(":")[2].isdigit()):
            raise ConfigError(f"http.{key}: expected HOST:PORT, not {value!r}")
    http_t.check_unknown()

    agents: list[AgentConfig] = []
    root.used.add("agent")
    raw_agents = data.get("agent", [])
    if not isinstance(raw_agents, list):
        raise ConfigError("agent: use [[agent]] (an array of tables)")
    for index, item in enumerate(raw_agents):
        if not isinstance(item, dict):
            raise ConfigError(f"agent[{index}]: expected a table")
        agent_t = _Table(item, f"agent[{index}]", base)
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
        from helpdeskd.triage.heroku import parse_heroku_config

        root.used.add("heroku")
        if not isinstance(data["heroku"], dict):
            raise ConfigError("heroku: expected a table")
        heroku = parse_heroku_config(data["heroku"])
    notices = _notices(root.table("notices"), service)
    dkim = None
    if "dkim" in data:
        from helpdeskd.outbox.dkim import parse_dkim_config

        root.used.add("dkim")
        if not isinstance(data["dkim"], dict):
            raise ConfigError("dkim: expected a table")
        dkim = parse_dkim_config(data["dkim"], base)
    status_t = root.table("status_page")
    components = status_t.get("components", dict, {})
    status_page = StatusPageConfig(
        components=tuple((str(k), str(v)) for k, v in components.items())
    )
    status_t.check_unknown()
    root.check_unknown()
    return Config(
        service=service,
        database=DatabaseConfig(url=url),
        mailboxes=tuple(mailboxes),
        smtp=smtp,
        http=HttpConfig(listen=listen, metrics_listen=metrics_listen),
        agents=tuple(agents),
        paths=paths,
        parse=parse,
        heroku=heroku,
        notices=notices,
        dkim=dkim,
        status_page=status_page,
        source=source,
    )


def load_config(path: Path, *, lenient_credentials: bool = False) -> Config:
    """Read and validate the config file at PATH.

    With LENIENT_CREDENTIALS, systemd credentials that this process cannot read (an admin's
    CLI outside the service) load as unavailable secrets that fail only when used.
    """
    token = _LENIENT_CREDENTIALS.set(lenient_credentials)
    try:
        return _load_config(path)
    finally:
        _LENIENT_CREDENTIALS.reset(token)


def _load_config(path: Path) -> Config:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_config(data, path.resolve().parent, source=path)


def default_config_path() -> Path:
    env = os.environ.get("HELPDESKD_CONFIG")
    if env:
        return Path(env)
    local = Path("helpdeskd.toml")
    if local.exists():
        return local
    return Path("/etc/helpdeskd/helpdeskd.toml")
