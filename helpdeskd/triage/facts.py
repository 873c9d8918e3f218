"""What the database knows that the decision about one received mail needs: typed, frozen facts.

The lookup layer (:mod:`helpdeskd.ingest.lookup`) gathers them, per mail or in bulk for a batch;
the plan (:mod:`helpdeskd.triage.plan`) decides from them alone. :func:`needs` is the first, pure
step of that decision: what kind of mail this is and which facts its decision will read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime

from helpdeskd.config.settings import Config, ServiceConfig
from helpdeskd.mail.compose import Parent
from helpdeskd.mail.parse import ParsedMessage
from helpdeskd.mail.render import Renderer
from helpdeskd.mail.thread_index import thread_index_root
from helpdeskd.mail.tokens import (
    BounceToken,
    tokens_in,
    verify_bounce,
    verify_reply,
    verify_unsubscribe,
)
from helpdeskd.rules import loader
from helpdeskd.rules.model import RuleSet
from helpdeskd.triage.agent_reply import HeldReply
from helpdeskd.triage.agentmail import HeldNotices, forwarded_sender
from helpdeskd.triage.bounces import BounceReport, Complaint, parse_bounce, parse_complaint
from helpdeskd.triage.bouncescore import Standing
from helpdeskd.triage.classify import Classification, ClassifyContext, classify
from helpdeskd.triage.commands import ParsedCommands, parse_commands
from helpdeskd.triage.heroku import HerokuTicket, recognise
from helpdeskd.triage.received import Incoming, ref_to_id, with_fallback_sender
from helpdeskd.triage.threading import TicketView, subject_refs

MAX_TICKET_ID = 2**31 - 1  # tickets.id is a 32-bit integer on PostgreSQL
# An Outlook Thread-Index that only holds a root (22 bytes, 32 in base64) starts a conversation;
# only a longer one continues it.
_ROOT_B64 = 32


def classify_context(config: Config) -> ClassifyContext:
    """What classification needs to know of CONFIG: our addresses, the agents, blocks, Heroku."""
    return ClassifyContext(
        support_address=config.service.support_address.lower(),
        own_addresses=config.own_addresses(),
        agent_addresses=frozenset(a.email for a in config.agents),
        blocked=config.service.blocked_senders,
        heroku=config.heroku,
    )


@dataclass(frozen=True)
class Policy:
    """What decides, besides the facts: config, rules, templates, and whether history is loaded.

    The daemon holds one and swaps it whole on SIGHUP; nothing in it changes while it is used.
    """

    config: Config
    rules: RuleSet
    renderer: Renderer
    backfill: bool = False
    context: ClassifyContext = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "context", classify_context(self.config))

    @property
    def may_assign(self) -> bool:
        """Whether a routing rule can assign tickets (then the agents' load is a fact)."""
        return any(a.name == "assign" for rule in self.rules.rules for a in rule.actions)

    def joinable(self, address: str) -> bool:
        """Whether ADDRESS may become a participant: not ours, not an agent, not a token."""
        ctx = self.context
        if address in ctx.own_addresses or address in ctx.agent_addresses:
            return False
        return not address.endswith("@" + self.config.service.support_domain.lower())


class Runtime:
    """The policy in force. The daemon swaps it whole on SIGHUP; a batch, a scheduler pass or a
    housekeeping round reads it once and keeps what it read until that work is done."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    @classmethod
    def of(cls, config: Config, *, backfill: bool = False) -> Runtime:
        """The runtime CONFIG defines: its rules folder and templates, loaded and checked."""
        return cls(Policy(config, loader.load(config), Renderer(config.paths.templates), backfill))


@dataclass(frozen=True)
class ContactFacts:
    """A contact as stored; ``id`` None: not stored yet."""

    email: str
    name: str | None = None
    id: int | None = None
    undeliverable: bool = False  # suspended for bouncing (see helpdeskd.triage.bouncescore)
    suppressed: bool = False
    bounce_count: int = 0
    plan: str | None = None
    bounce_score: float = 0.0
    last_bounce_on: date | None = None
    last_bounce_weight: float = 0.0
    bounce_reason: str | None = None

    @property
    def standing(self) -> Standing:
        """The contact's bounce score as the scoring reads it."""
        return Standing(
            self.bounce_score,
            self.last_bounce_on,
            self.last_bounce_weight,
            self.bounce_reason,
            self.undeliverable,
        )


@dataclass(frozen=True)
class AgentFacts:
    id: int
    email: str
    name: str
    active: bool = True


@dataclass(frozen=True)
class TicketFacts(TicketView):
    """A ticket as stored (merges already followed), with what its mail counts say."""

    subject: str = ""
    priority: str = "normal"
    queue: str | None = None
    assignee_id: int | None = None
    requester: ContactFacts = ContactFacts("")
    channel: str = "email"
    external_ref: str | None = None
    tags: tuple[str, ...] = ()
    solved_at: datetime | None = None
    first_response_at: datetime | None = None
    inbound: int = 0  # inbound messages, all time
    recent: int = 0  # inbound messages within the flood window
    flood_told: bool = False  # agents were told of a flood on it within the window


@dataclass(frozen=True)
class StoredMessage:
    """A ticket message already stored under the Message-ID a mail names."""

    message_id: str
    ticket_id: int
    direction: str
    kind: str
    references: tuple[str, ...] = ()
    in_reply_to: str | None = None
    thread_index: str | None = None
    from_addr: str = ""
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    digest: str | None = None  # of received mail: its sender and content (None: not known)

    @property
    def parent(self) -> Parent:
        """This message as the parent of an answer to it."""
        return Parent(self.message_id, self.references, self.in_reply_to, self.thread_index)


@dataclass(frozen=True)
class Returned:
    """What a bounce or complaint is about: our stored mail, its ticket, the agent who wrote it."""

    ticket: TicketFacts | None = None
    message: StoredMessage | None = None
    writer: AgentFacts | None = None
    sent_to: frozenset[str] = frozenset()  # whom our mail went to: only they can bounce it
    # the outbox row a verified VERP token named; sent_to is then whom the copy that carried
    # it went to: its one recipient, or every recipient of the row (the row-wide old form)
    verp: int | None = None


@dataclass(frozen=True)
class MergeTarget:
    """The ticket an agent's ``#merge`` names, as far as a merge needs to know."""

    id: int
    requester_id: int
    merged_into_id: int | None


@dataclass(frozen=True)
class ReplyContext:
    """What an agent's reply to a ticket reads besides the ticket: whom and what it answers."""

    parent: StoredMessage | None = None  # the customer's latest mail on the ticket
    cc: tuple[str, ...] = ()  # the ticket's deliverable Cc participants, requester aside
    merge_target: MergeTarget | None = None  # for a confirmation, the held reply's #merge's
    held: HeldReply | None = None  # the reply a confirmation request's address names


@dataclass(frozen=True)
class Facts:
    """Everything the decision about one mail reads from the database, and the time."""

    now: datetime
    stored: StoredMessage | None = None  # a message with this mail's own Message-ID
    derived: StoredMessage | None = None  # one stored under this mail's derived Message-ID
    referrers: frozenset[str] = frozenset()  # who the reference that matched names, besides
    # the ticket's participants: the recipients of our mail it answers, or the addresses on
    # the mail that remembered the ID
    known_ids: frozenset[str] = frozenset()  # referred-to IDs stored or remembered already
    by_token: TicketFacts | None = None
    by_reference: TicketFacts | None = None
    by_thread_index: TicketFacts | None = None
    by_subject: TicketFacts | None = None
    by_external_ref: TicketFacts | None = None  # the Heroku ticket's
    contacts: Mapping[str, ContactFacts] = field(default_factory=dict)  # by address
    unsubscriber: ContactFacts | None = None  # whom an unsubscribe token names
    opted_out: bool = False  # the unsubscriber is already out of the token's category
    agents: Mapping[str, AgentFacts] = field(default_factory=dict)  # by address
    agent_load: Mapping[int, tuple[int, int]] = field(default_factory=dict)  # open, last ticket
    autoreplies: int = 0  # automatic answers to the sender within 24 h
    recent_by_sender: int = 0  # the sender's inbound mail within the flood window
    sender_flood_told: bool = False  # agents were told of a flood by the sender
    returned: Returned = Returned()
    replies: Mapping[int, ReplyContext] = field(default_factory=dict)  # agent mail, by ticket
    # What the agents were told of their held mail, by agent address (agent mail only).
    held_notices: Mapping[str, HeldNotices] = field(default_factory=dict)

    def contact(self, email: str) -> ContactFacts | None:
        return self.contacts.get(email.lower())


@dataclass(frozen=True)
class Needs:
    """The first step of the decision: the mail's kind, and what the lookup must find for it."""

    parsed: ParsedMessage  # with the fallback sender applied
    kind: Classification
    digest: str = ""  # SHA-256 of the sender and content (see content_digest)
    derived_id: str = ""  # the Message-ID it is stored under if another mail has its own
    token_tickets: tuple[int, ...] = ()  # verified reply tokens' tickets, in order
    subject_tickets: tuple[int, ...] = ()
    references: tuple[str, ...] = ()  # In-Reply-To then References, newest first
    thread_root: str | None = None  # an Outlook conversation this mail continues
    emails: frozenset[str] = frozenset()
    heroku: HerokuTicket | None = None
    bounce: BounceReport | None = None
    complaint: Complaint | None = None
    returned_ids: tuple[str, ...] = ()  # our Message-IDs a bounce or complaint names
    verp: BounceToken | None = None  # what a bounce's VERP token names, verified
    unsubscribe: tuple[int, str] | None = None  # (contact id, category)
    commands: ParsedCommands | None = None  # the command block of an agent's mail
    merge_ticket: int | None = None  # the ticket its #merge names
    confirmation: tuple[int, str] | None = None  # (ticket, code) of an agent's confirmation token

    @property
    def message_ids(self) -> tuple[str, ...]:
        """Every Message-ID the threading reads: the mail's own, then those it refers to."""
        return (self.parsed.message_id, self.derived_id, *self.references)


def needs(item: Incoming, parsed: ParsedMessage, policy: Policy) -> Needs:
    """Classify PARSED and say which facts its decision reads (no I/O)."""
    config, service = policy.config, policy.config.service
    parsed = with_fallback_sender(parsed)
    kind = classify(parsed, policy.context)
    digest = content_digest(parsed)
    derived = derived_id(parsed.message_id, digest, service)
    emails = {a.lower() for a in (parsed.sender, *parsed.to, *parsed.cc) if a}
    if kind.kind == "bounce":
        report = parse_bounce(item.raw or b"", verp_local=verp_local(config))
        ids: tuple[str, ...] = ()
        verp = None
        if report is not None:
            # Only a token we signed names a send: a stranger cannot point a bounce at another
            # customer's mail by writing a token. It names one recipient of the send, so one
            # who received the same mail cannot point it at another.
            if report.verp_token is not None:
                verp = verify_bounce(service.secret_keys, report.verp_token)
            ids = tuple(
                i for i in (report.original_message_id, *reversed(report.original_references)) if i
            )
            emails.update(r.address for r in report.recipients)
        return Needs(
            parsed,
            kind,
            digest=digest,
            derived_id=derived,
            bounce=report,
            returned_ids=ids,
            verp=verp,
            emails=frozenset(emails),
        )
    if kind.kind == "report":
        complaint = parse_complaint(item.raw or b"")
        ids = ()
        if complaint is not None:
            ids = (complaint.original_message_id,) if complaint.original_message_id else ()
            if complaint.complainant:
                emails.add(complaint.complainant.lower())
        return Needs(
            parsed,
            kind,
            digest=digest,
            derived_id=derived,
            complaint=complaint,
            returned_ids=ids,
            emails=frozenset(emails),
        )
    if kind.kind == "unsubscribe":
        return Needs(
            parsed,
            kind,
            digest=digest,
            derived_id=derived,
            unsubscribe=_unsubscribe_token(parsed, policy),
        )
    if kind.kind in ("spam", "ignored", "blocked"):
        return Needs(parsed, kind, digest=digest, derived_id=derived)
    heroku = None
    if kind.kind == "heroku_forward" and config.heroku is not None:
        heroku = recognise(parsed, config.heroku)
        if heroku is not None and heroku.requester_email:
            emails.add(heroku.requester_email.lower())
    tokens = []
    confirmation = None
    for text in tokens_in(list(parsed.recipients), service.support_address):
        token = verify_reply(service.secret_keys, text)
        ticket_id = ref_to_id(config, token.ref) if token is not None else None
        if ticket_id is not None:
            tokens.append(ticket_id)
            if token is not None and token.confirms is not None and confirmation is None:
                confirmation = (ticket_id, token.confirms)
    subjects = [
        ticket_id
        for ref in subject_refs(parsed.subject, service.ticket_prefix)
        if (ticket_id := ref_to_id(config, ref)) is not None
    ]
    root = thread_index_root(parsed.thread_index)
    continues = bool(root and parsed.thread_index and len(parsed.thread_index) > _ROOT_B64)
    commands = merge_ticket = None
    if kind.kind == "agent_reply":
        commands = parse_commands(parsed.full_text, ticket_prefix=service.ticket_prefix)
        for command in commands.commands:
            if command.name == "cc":
                emails.update(entry[1:].lower() for entry in command.args)
        # A forward names the customer it is for: their contact may be stored already.
        forwarded = forwarded_sender(parsed.full_text)
        if forwarded is not None:
            emails.add(forwarded[1])
        merge = commands.get("merge")
        number = merge.args[0].rpartition("-")[2] if merge is not None else ""
        if number.isdigit() and int(number) <= MAX_TICKET_ID:
            merge_ticket = int(number)
    return Needs(
        parsed,
        kind,
        digest=digest,
        derived_id=derived,
        token_tickets=tuple(tokens),
        subject_tickets=tuple(subjects),
        references=tuple(dict.fromkeys([*parsed.in_reply_to, *reversed(parsed.references)])),
        thread_root=root if continues else None,
        emails=frozenset(emails),
        heroku=heroku,
        commands=commands,
        merge_ticket=merge_ticket,
        confirmation=confirmation if kind.kind == "agent_reply" else None,
    )


def verp_local(config: Config) -> str:
    """The local part our VERP return path takes ``+TOKEN`` on: ``[smtp] return_path``'s,
    else ``bounces`` (a token still verifies after return_path was taken out of the config)."""
    return_path = config.smtp.return_path if config.smtp is not None else None
    return return_path.rpartition("@")[0] if return_path else "bounces"


def _unsubscribe_token(parsed: ParsedMessage, policy: Policy) -> tuple[int, str] | None:
    """The (contact id, category) a mail to ``unsubscribe+TOKEN@`` names, if its token is ours."""
    service = policy.config.service
    domain = service.support_domain.lower()
    for address in parsed.recipients:
        local, _, a_domain = address.rpartition("@")
        base, _, text = local.partition("+")
        if a_domain != domain or base != "unsubscribe":
            continue
        token = verify_unsubscribe(service.secret_keys, text)
        if token is not None:
            return token.contact_id, token.category
    return None


def content_digest(parsed: ParsedMessage) -> str:
    """SHA-256 of what a mail says and who says it: the same mail received twice (two mailboxes,
    a redelivery) has the same digest; another mail under the same Message-ID has not."""
    parts = [
        parsed.sender.lower(),
        parsed.subject,
        parsed.full_text,
        *sorted(a.sha256 for a in parsed.attachments),
    ]
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def derived_id(message_id: str, digest: str, service: ServiceConfig) -> str:
    """The Message-ID a mail is stored under when another mail holds its own: the same for the
    same mail, so receiving it again is still a duplicate."""
    key = hashlib.sha256(f"{message_id}\0{digest}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"<{key[:40]}.derived@{service.support_domain}>"
