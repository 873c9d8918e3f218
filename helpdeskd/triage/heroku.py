"""Recognise tickets that Heroku's add-on support desk forwards by email (pure, no I/O).

Heroku does not publish the format of its desk's notifications, so nothing here is built in:
the desk is recognised by its sender addresses (from config only), a subject pattern that yields
the Heroku ticket number and a body pattern that yields the original requester, and, where an
``authserv_id`` is configured, a DKIM signature aligned with the From domain in our own trusted
Authentication-Results. See docs/heroku.md for how an operator adapts ``[heroku]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from helpdeskd.errors import ConfigError
from helpdeskd.mail.authresults import dkim_aligned
from helpdeskd.mail.parse import ParsedMessage

# Illustrations, not a known format: an operator adapts them to the notifications they receive.
DEFAULT_SUBJECT_PATTERN = r"\[Heroku Support\].*?#(?P<ticket>\d+)"
DEFAULT_REQUESTER_PATTERN = (
    r"(?m)^[ \t]*(?:Requester|Requested by|Submitted by)[ \t]*:[ \t]*"
    r"(?:(?P<name>[^<>\n]*?)[ \t]*<)?(?P<email>[^<>\s@]+@[^<>\s@]+)>?[ \t]*$"
)

# The requester line sits in the desk's header block; scanning a bounded prefix keeps an
# operator's backtracking regex from chewing on half a megabyte of quoted history.
REQUESTER_SCAN_CHARS = 32 * 1024
MAX_TICKET_CHARS = 100  # tickets.external_ref is String(100)
MAX_NAME_CHARS = 200

_KEYS = frozenset(
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
_ATOM = r"[^\s@<>()\[\]\\,;:\".]+"  # what may sit between the dots of an address
_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})+")
_CTL = re.compile(r"[\x00-\x1f\x7f]")


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


@dataclass(frozen=True)
class HerokuTicket:
    ticket_number: str
    requester_email: str | None
    requester_name: str | None
    subject: str  # the desk's subject, intact: our replies keep it


@dataclass(frozen=True)
class Recognition:
    """The answer to "is this the desk's mail?", with the reason shown in events and logs."""

    ticket: HerokuTicket | None
    reason: str
    # True when the sender is a desk address but the mail was refused anyway (one From too
    # many, DKIM missing or misaligned): a spoofing attempt worth a security_event.
    suspicious: bool = False


# --- config --------------------------------------------------------------------------------


def _string(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"heroku.{key}: expected a string, got {type(value).__name__}")
    return value


def _address(value: str, key: str) -> str:
    address = value.strip().lower()
    if not _ADDRESS.fullmatch(address):
        raise ConfigError(
            f"{key}: {value!r} is not an email address (write the bare address, no display name)"
        )
    return address


def _pattern(data: Mapping[str, Any], key: str, default: str, required: str) -> str:
    pattern = _string(data, key)
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
    unknown = sorted(set(data) - _KEYS)
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
        address = _address(value, f"heroku.senders[{index}]")
        if address not in senders:
            senders.append(address)

    addresses: dict[str, str] = {}
    for key in ("reply_address", "agent_address"):
        value = _string(data, key)
        if value is None:
            if senders:
                raise ConfigError(f"heroku.{key}: required when heroku.senders is set")
            addresses[key] = ""
        else:
            addresses[key] = _address(value, f"heroku.{key}")

    solve_line = _string(data, "solve_line")
    if solve_line is not None:
        solve_line = solve_line.strip()
        if not solve_line:
            raise ConfigError("heroku.solve_line: empty; remove the key to send no solve line")
        if _CTL.search(solve_line):
            raise ConfigError("heroku.solve_line: must be one line of text")

    authserv_id = _string(data, "authserv_id")
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
        subject_pattern=_pattern(data, "subject_pattern", DEFAULT_SUBJECT_PATTERN, "ticket"),
        requester_pattern=_pattern(data, "requester_pattern", DEFAULT_REQUESTER_PATTERN, "email"),
        solve_line=solve_line,
        authserv_id=authserv_id,
    )


# --- recognition ---------------------------------------------------------------------------


def _clean(value: str) -> str:
    return " ".join(_CTL.sub(" ", value).split())


def _requester(text: str, config: HerokuConfig) -> tuple[str | None, str | None]:
    match = re.search(config.requester_pattern, text[:REQUESTER_SCAN_CHARS])
    if match is None:
        return None, None
    raw_email = match.group("email") or ""
    email = raw_email.strip().strip("<>").lower().removeprefix("mailto:")
    ours = {*config.senders, config.reply_address, config.agent_address}
    if not _ADDRESS.fullmatch(email) or email in ours:
        return None, None
    name: str | None = None
    if "name" in match.re.groupindex and match.group("name"):
        name = _clean(match.group("name")).strip("\"' ")[:MAX_NAME_CHARS] or None
    return email, name


def examine(parsed: ParsedMessage, config: HerokuConfig) -> Recognition:
    """Decide whether PARSED is a notification from the Heroku desk, and why (not)."""
    if not config.senders:
        return Recognition(None, "heroku: not configured")
    if parsed.sender not in config.senders:
        return Recognition(None, "heroku: sender is not a desk address")
    # Two From mailboxes (or two From fields) could pair a desk address with anyone's.
    if len(parsed.from_) != 1 or len(parsed.header_all("from")) != 1:
        return Recognition(None, "heroku: not exactly one From mailbox", suspicious=True)
    match = re.search(config.subject_pattern, parsed.subject)
    ticket = (match.group("ticket") or "").strip() if match else ""
    if not ticket or len(ticket) > MAX_TICKET_CHARS:
        return Recognition(None, "heroku: subject does not match subject_pattern")
    if config.authserv_id is not None and not dkim_aligned(parsed, config.authserv_id):
        return Recognition(
            None,
            f"heroku: no aligned dkim=pass in Authentication-Results from {config.authserv_id}",
            suspicious=True,
        )
    email, name = _requester(parsed.full_text, config)
    return Recognition(
        HerokuTicket(
            ticket_number=ticket,
            requester_email=email,
            requester_name=name,
            subject=parsed.subject,
        ),
        f"heroku: ticket #{ticket} from {parsed.sender}",
    )


def recognise(parsed: ParsedMessage, config: HerokuConfig) -> HerokuTicket | None:
    """Return the Heroku ticket PARSED notifies about, or None when it is not the desk's mail."""
    return examine(parsed, config).ticket
