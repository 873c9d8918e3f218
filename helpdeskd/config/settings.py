"""The configuration as frozen dataclasses: :class:`Config` and one class per table.

helpdeskd.config.load reads the TOML file into them; helpdeskd.config.secrets reads the secrets
they hold. Nothing here does I/O beyond finding the shipped data folders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from helpdeskd.config.secrets import Secret

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # helpdeskd/


def _data_dir(name: str) -> Path:
    """Return the shipped copy of a top-level data folder (wheel or source checkout)."""
    packaged = PACKAGE_DIR / "_data" / name
    if packaged.exists():
        return packaged
    return PACKAGE_DIR.parent / name


DEFAULT_TEMPLATES = _data_dir("templates")
DEFAULT_RULES = _data_dir("rules")


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
    agent_token_days: int = 90  # an agent's reply address expires this many days after issue
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


# --- OAuth 2.0 ([mailbox.oauth], [smtp.oauth]) --------------------------------------------

OAUTH_PROVIDERS = ("microsoft", "google", "generic")
OAUTH_GRANTS = ("refresh_token", "client_credentials")
OAUTH_MECHANISMS = ("xoauth2", "oauthbearer")
MICROSOFT_LOGIN = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0"
MICROSOFT_DELEGATED_SCOPE = (
    "https://outlook.office.com/IMAP.AccessAsUser.All "
    "https://outlook.office.com/SMTP.Send offline_access"
)
MICROSOFT_APP_SCOPE = "https://outlook.office365.com/.default"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
GOOGLE_AUTHORIZATION_URL = "https://accounts.google.com/o/oauth2/v2/auth"
GOOGLE_SCOPE = "https://mail.google.com/"


@dataclass(frozen=True)
class OAuthEndpoints:
    """Where a provider's tokens come from, and the scope asked for."""

    token_url: str | None
    device_authorization_url: str | None
    authorization_url: str | None
    scope: str


def oauth_endpoints(provider: str, *, tenant: str | None, grant: str) -> OAuthEndpoints:
    """Return PROVIDER's endpoints and default scope; a generic provider has none but the scope."""
    if provider == "microsoft":
        base = MICROSOFT_LOGIN.format(tenant=tenant or "organizations")
        scope = MICROSOFT_APP_SCOPE if grant == "client_credentials" else MICROSOFT_DELEGATED_SCOPE
        return OAuthEndpoints(f"{base}/token", f"{base}/devicecode", f"{base}/authorize", scope)
    if provider == "google":
        # Google's device flow does not allow the mail scope: login is PKCE in a browser.
        return OAuthEndpoints(GOOGLE_TOKEN_URL, None, GOOGLE_AUTHORIZATION_URL, GOOGLE_SCOPE)
    return OAuthEndpoints(None, None, None, "")


@dataclass(frozen=True)
class OAuthConfig:
    """An ``[mailbox.oauth]`` or ``[smtp.oauth]`` table, with the provider's defaults filled in."""

    provider: str  # microsoft | google | generic
    client_id: str
    client_secret: Secret | None  # None: a public client
    grant: str  # refresh_token | client_credentials
    token_file: Path  # the refresh token and the token's status (0600)
    mechanism: str  # xoauth2 | oauthbearer
    token_url: str
    device_authorization_url: str | None
    authorization_url: str | None
    scope: str  # "" sends none
    tenant: str | None = None  # microsoft only


@dataclass(frozen=True)
class MailboxConfig:
    name: str
    host: str
    port: int
    security: str  # tls | starttls | none
    username: str
    password: Secret | None  # None with auth = "oauth2"
    auth: str = "password"  # password | oauth2
    folder: str = "INBOX"
    processed_folder: str | None = None
    idle: bool = True
    poll_interval: float = 60.0
    idle_interval: float = 300.0  # re-IDLE this often: NATs drop idle TCP; never past 29 min
    timeout: float = 30.0
    batch_size: int = 250  # mails stored in one transaction, and then moved, during a catch-up
    max_message_bytes: int = 25 * 1024 * 1024
    oauth: OAuthConfig | None = None  # set exactly when auth = "oauth2"


@dataclass(frozen=True)
class SendRates:
    """``[smtp.rates]``: mails per second the outbox sends of each class, at most; None: no limit.

    Notices of critical categories (maintenance, incident, ...) may go faster than optional ones;
    transactional mail (acknowledgements, replies, agents' notifications) is never held behind
    either, whatever the rates.
    """

    critical: float | None = 200.0
    optional: float | None = 20.0
    transactional: float | None = None


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
    auth: str = "password"  # password | oauth2
    oauth: OAuthConfig | None = None  # set exactly when auth = "oauth2"
    # VERP: each copy's MAIL FROM is bounces+r<recipient id>.<mac>@domain under this address, so
    # a bounce names the exact send and recipient (helpdeskd.mail.tokens.bounce_address); a mail
    # to several goes as one SMTP transaction per recipient. None: the From address.
    return_path: str | None = None
    connections: int = 4  # SMTP connections the outbox keeps open, each sending its own mail
    rates: SendRates = field(default_factory=SendRates)
    # [smtp.domain_rates]: mails per second to one destination domain, at most (None: no limit),
    # by domain (lower case); DOMAIN_RATE for every domain not named.
    domain_rates: tuple[tuple[str, float | None], ...] = ()
    domain_rate: float | None = 50.0

    def rate_for(self, domain: str) -> float | None:
        """Mails per second the outbox may send to DOMAIN (None: no limit)."""
        return dict(self.domain_rates).get(domain, self.domain_rate)


@dataclass(frozen=True)
class HttpConfig:
    listen: str | None = None
    # /metrics and /healthz, with no token, on their own (private) address.
    metrics_listen: str | None = None
    # Without it /metrics and /healthz answer 404 on the public listener; with it, they answer
    # requests that carry "Authorization: Bearer TOKEN".
    admin_token: Secret | None = None


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
    min_notice_hours: float = 24.0  # maintenance is announced at least this far ahead
    reminder_hours: float = 2.0  # a maintenance reminder this long before the start (0: none)

    def critical(self, category: str) -> bool | None:
        """Whether CATEGORY is critical; None when there is no such category."""
        return dict(self.categories).get(category)


@dataclass(frozen=True)
class StatusPageConfig:
    components: tuple[tuple[str, str], ...] = ()  # (key, display name)


# --- [retention] ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionConfig:
    """The ``[retention]`` table: how many days each kind of personal data is kept.

    None keeps it for ever (``"forever"`` in the file). A ticket under legal hold (tag
    ``hold``) keeps everything, whatever these say. helpdeskd.desk.retention enforces them.
    """

    raw_mail_days: int | None = 90  # raw mail, after its ticket closed (no ticket: arrival)
    quarantine_days: int | None = 30  # quarantined mail, after it was resolved
    closed_ticket_days: int | None = 730  # a closed ticket's bodies and attachments
    sent_mail_days: int | None = 90  # the outbox's copies of mail sent (or given up)
    event_days: int | None = 730  # events: of a ticket after it closed; others after they happened
    processed_mail_days: int | None = None  # the processed folders' mail, after arrival
    batch: int = 200  # rows handled per transaction


@dataclass(frozen=True)
class BouncesConfig:
    """The ``[bounces]`` table: Mailman's bounce scoring (helpdeskd.triage.bouncescore).

    A hard bounce of our mail scores 1, a soft one 0.5, at most one a day per address (the
    highest that day counts); a spam or policy refusal scores 0. At THRESHOLD the address is
    suspended (no notices, acknowledgements or reminders); the score starts again from 0 when
    the last scored bounce is more than STALE_AFTER_DAYS days old.
    """

    threshold: float = 5.0
    stale_after_days: int = 7  # Mailman's bounce_info_stale_after


# --- [heroku] ------------------------------------------------------------------------------

# Illustrations, not a known format: an operator adapts them to the notifications they receive.
DEFAULT_SUBJECT_PATTERN = r"\[Heroku Support\].*?#(?P<ticket>\d+)"
DEFAULT_REQUESTER_PATTERN = (
    r"(?m)^[ \t]*(?:Requester|Requested by|Submitted by)[ \t]*:[ \t]*"
    r"(?:(?P<name>[^<>\n]*?)[ \t]*<)?(?P<email>[^<>\s@]+@[^<>\s@]+)>?[ \t]*$"
)
_ATOM = r"[^\s@<>()\[\]\\,;:\".]+"  # what may sit between the dots of an address
# A bare address (no display name, no comments): the desk's addresses in [heroku] and the
# requester that helpdeskd.triage.heroku finds in the desk's mail are both held to it.
BARE_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})+")


@dataclass(frozen=True)
class HerokuConfig:
    """The ``[heroku]`` table: how to recognise the desk's mail and where replies go."""

    senders: tuple[str, ...]  # exact lower-case addresses the desk sends from; empty: feature off
    reply_address: str  # where our replies go (the desk's reply address)
    agent_address: str  # the vendor's registered agent address: From of our replies to the desk
    subject_pattern: str = DEFAULT_SUBJECT_PATTERN  # (?P<ticket>…) required
    requester_pattern: str = DEFAULT_REQUESTER_PATTERN  # (?P<email>…); (?P<name>…) optional
    solve_line: str | None = None  # off until a real notification shows the desk accepts one
    authserv_id: str | None = None  # set: the desk's mail must carry an aligned dkim=pass

    @property
    def enabled(self) -> bool:
        return bool(self.senders)


# --- [dkim] --------------------------------------------------------------------------------

DEFAULT_HEADERS: tuple[str, ...] = (
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Reply-To",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Auto-Submitted",
    "MIME-Version",
    "Content-Type",
)
# RFC 6376 section 5.4.1: relays add or rewrite these; dkimpy refuses to sign them.
_NEVER_SIGNED = frozenset(
    {"return-path", "received", "comments", "keywords", "bcc", "resent-bcc", "dkim-signature"}
)


@dataclass(frozen=True)
class DkimConfig:
    """The ``[dkim]`` table: how helpdeskd.outbox.dkim signs outgoing mail."""

    domain: str  # d=
    selector: str  # s=
    private_key: Secret  # PEM (RSA 2048+ or Ed25519 per RFC 8463), never logged
    headers: tuple[str, ...] = DEFAULT_HEADERS  # what to sign, where present

    def __post_init__(self) -> None:
        names = {name.lower() for name in self.headers}
        if "from" not in names:
            raise ValueError("DKIM headers must include From (RFC 6376 section 5.4)")
        never = sorted(names & _NEVER_SIGNED)
        if never:
            raise ValueError(f"DKIM headers must not include {never[0]} (RFC 6376 section 5.4.1)")


# --- the whole file ------------------------------------------------------------------------


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
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    bounces: BouncesConfig = field(default_factory=BouncesConfig)
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
