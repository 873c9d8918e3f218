"""Read a bounce (non-delivery report) or an ARF complaint: bytes in, frozen dataclasses out.

Pure: no I/O, no DB. The classifier decides *that* a mail is a bounce or a report; this module
says *who* bounced, with what status, and which of our mails it was, so the processor can mark
the contact undeliverable, tell the agent, and suppress complainants (DESIGN.md
"Classification"). How badly each recipient failed (hard, soft, a policy refusal) and what that
does to the address's score is :mod:`helpdeskd.triage.bouncescore`'s; the report's MIME is read
through :mod:`helpdeskd.triage.reportparts`.

Bounces come in two shapes:

* ``dsn`` — RFC 3464: a ``message/delivery-status`` part of per-message fields then per-recipient
  blocks. The stdlib parses that part into header blocks and gets it wrong when a blank line is
  missing or doubled, or when a filter base64-encodes a block, so the part is flattened back to
  text and read here (:func:`_dsn_records`).
* ``ndr`` — the non-standard texts of Exchange/Office 365, Gmail, qmail, Exim, Postfix, Amazon
  SES and friends. They are read only when the mail comes from the mail system (null sender,
  ``MAILER-DAEMON``/``postmaster``, ``X-Failed-Recipients`` …): a customer who pastes or forwards
  a bounce to support is a customer, not a bounce.

An NDR that calls its failure permanent ("failed permanently", "This is a permanent error") but
gives no code at all gets status 5.0.0, RFC 3463's "permanent, otherwise undefined".

The bounced mail is found from the returned message/rfc822 or text/rfc822-headers part, else from
the copy quoted in an NDR's text, else from the NDR's own In-Reply-To (Exchange and Office 365 set
it to the bounced mail's Message-ID). A bounce sent to our VERP return path
(``bounces+TOKEN@``, :func:`helpdeskd.mail.tokens.bounce_address`) carries its TOKEN: that names
the send itself and its recipient, so such a report is read even when it names no recipient.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from helpdeskd.triage import reportparts as mime
from helpdeskd.triage.bouncescore import SMTP_CODE, STATUS_CODE, BouncedRecipient
from helpdeskd.triage.loops import robot_sender
from helpdeskd.triage.ndr import (
    ADDRESS,
    DELAYED,
    PERMANENT,
    RETURNED_COPY,
    general_diagnostic,
    mail_system,
    ndr_phrase,
    ndr_subject,
    notice_entries,
    notice_only,
    ses_recipients,
)

# Same limits as parsing.py: longer cannot be a real address or Message-ID.
MAX_ADDRESS = 320
MAX_MSGID = 900
MAX_DIAGNOSTIC = 300

ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
RETURNED_TYPES = frozenset(
    {
        "message/rfc822",
        "message/global",
        "text/rfc822-headers",
        "message/global-headers",
        "message/rfc822-headers",
    }
)
FEEDBACK_TYPE = "message/feedback-report"
VERP_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")

_MSGID = re.compile(r"<([^<>\s]+)>")
_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*)$")
_BASE64_LINE = re.compile(r"^[A-Za-z0-9+/=]+$")
_DIAG_TYPE = re.compile(r"^[\w-]+;\s*")
_PER_RECIPIENT = frozenset({"action", "status", "diagnostic-code"})
_ACTION_FIELD = re.compile(
    r"^action:[ \t]*(failed|delayed|delivered|relayed|expanded)\b", re.IGNORECASE | re.MULTILINE
)
_RECIPIENT_FIELDS = ("original-recipient", "final-recipient")


@dataclass(frozen=True)
class BounceReport:
    recipients: tuple[BouncedRecipient, ...]
    original_message_id: str | None  # "<...>" of the mail that bounced
    original_references: tuple[str, ...]  # its In-Reply-To then References, "<...>" each
    verp_token: str | None  # TOKEN of a bounces+TOKEN@domain envelope recipient
    kind: str  # "dsn" (RFC 3464) | "ndr" (non-standard text)
    # What the report says of the mail as a whole (address ""): what a VERP token's recipient
    # failed with when the report names nobody we sent it to.
    overall: BouncedRecipient | None = None

    def verdict(self) -> BouncedRecipient:
        """The worst failure the report tells of (for a VERP token's recipient, when it names
        no one we sent the mail to): a hard failure before a soft one, a failure before a
        delay; without any, what the report says as a whole."""
        ranked = sorted(self.recipients, key=lambda r: (-r.weight, r.action != "failed"))
        if ranked:
            return ranked[0]
        return self.overall or BouncedRecipient("", "failed", "", "")


@dataclass(frozen=True)
class Complaint:
    complainant: str | None  # our recipient who complained; None when the report redacts it
    feedback_type: str  # abuse | fraud | not-spam | virus | other | ... ("unknown" if missing)
    original_message_id: str | None


def parse_bounce(raw: bytes, *, verp_local: str = "bounces") -> BounceReport | None:
    """Read a bounce; return None when nothing bounce-like can be read.

    A DSN part is enough to be a bounce (the report may then have no readable recipients but
    still name the original Message-ID); NDR text needs the mail system as sender and at least
    one recipient. ``verp_local`` is the local part before ``+TOKEN`` of our VERP address.
    """
    msg = mime.parse(raw)
    leaves = list(mime.leaves(msg))
    dsn_parts = [part for part in leaves if part.get_content_type() in DSN_TYPES]
    if not dsn_parts and _from_mail_system(msg):
        # A filter that wraps the MTA's report in a message of its own (InterScan).
        dsn_parts = [
            part for part in mime.attached_leaves(leaves) if part.get_content_type() in DSN_TYPES
        ]
    report_type = mime.report_type(msg)
    if not dsn_parts and report_type not in ("", "delivery-status") and not _refusal(msg, leaves):
        return None  # a read receipt or a feedback report, not a bounce

    recipients: dict[str, BouncedRecipient] = {}
    for part in dsn_parts:
        for record in _dsn_records(mime.part_text(part)):
            recipient = _dsn_recipient(record)
            if recipient is not None:
                recipients.setdefault(recipient.address, recipient)

    returned = _returned_headers(leaves)
    overall: BouncedRecipient | None = None
    if dsn_parts:
        kind = "dsn"
        if not recipients:
            recipients = _ndr_recipients(msg, mime.notice_text(leaves))
    elif ses := _ses_recipients(mime.text_of(leaves)):
        kind, recipients = "ndr", ses
    elif _from_mail_system(msg):
        kind = "ndr"
        if returned is None:
            returned = _inline_returned_headers(mime.text_of(leaves))
        notice = mime.notice_text(leaves)
        # Some MTAs write the RFC 3464 fields into the text instead of a part of their own,
        # after a list of the returned mail's header fields (PMDF): read the whole text.
        recipients = _text_dsn_recipients(mime.text_of(leaves)) or _ndr_recipients(msg, notice)
        if not recipients:
            recipients = _returned_recipient(returned, notice)
        if not recipients:
            # Naming nobody, the report is still about the send its VERP token names, if it
            # says what an NDR says (an out-of-office sent to the return path does not).
            said = ndr_phrase(notice) or ndr_subject(mime.header(msg, "Subject"))
            if not said or _verp_token(msg, returned, verp_local) is None:
                return None
            overall = _overall(notice)
    else:
        return None

    original_id = _msgid(mime.header(returned, "Message-ID")) if returned is not None else None
    if original_id is None:
        # Exchange and Office 365 answer the bounced mail: their NDR's In-Reply-To names it.
        original_id = _msgid(mime.header(msg, "In-Reply-To"))
    references: tuple[str, ...] = ()
    if returned is not None:
        references = _msgids(
            mime.header(returned, "In-Reply-To") + " " + mime.header(returned, "References")
        )
    verp_token = _verp_token(msg, returned, verp_local)
    if not recipients and original_id is None and verp_token is None:
        return None
    if not recipients and overall is None:
        dsn_text = "\n".join(mime.part_text(part) for part in dsn_parts)
        overall = _overall(mime.notice_text(leaves) + "\n" + dsn_text)
    return BounceReport(
        recipients=tuple(recipients.values()),
        original_message_id=original_id,
        original_references=references,
        verp_token=verp_token,
        kind=kind,
        overall=overall,
    )


def parse_complaint(raw: bytes) -> Complaint | None:
    """Read an ARF (RFC 5965) feedback report; return None when the mail is not one."""
    msg = mime.parse(raw)
    leaves = list(mime.leaves(msg))
    reports = [part for part in leaves if part.get_content_type() == FEEDBACK_TYPE]
    if not reports and mime.report_type(msg) != "feedback-report":
        return None
    fields: dict[str, str] = {}
    if reports:
        for record in _field_blocks(mime.part_text(reports[0])):
            for name, value in record:
                fields.setdefault(name, value)
    feedback_type = (fields.get("feedback-type", "").split() or ["unknown"])[0].lower()
    returned = _returned_headers(leaves)

    complainant = _address(fields.get("original-rcpt-to", "")) or _address(
        fields.get("removal-recipient", "")
    )
    if complainant is None and returned is not None:
        found = ADDRESS.findall(mime.header(returned, "To"))
        complainant = found[0].lower() if len(found) == 1 else None
    # AOL replaces the complainant's mailbox with a placeholder it names in Redacted-Address
    # (RFC 6590); the original Message-ID still leads to our recipient.
    redacted = fields.get("redacted-address", "").strip().lower()
    if complainant is not None and complainant.split("@")[0] in {redacted, "redacted"}:
        complainant = None
    return Complaint(
        complainant=complainant,
        feedback_type=feedback_type,
        original_message_id=_msgid(mime.header(returned, "Message-ID")) if returned else None,
    )


# --- RFC 3464 delivery-status fields ---


def _field_blocks(text: str) -> list[list[tuple[str, str]]]:
    """Split header-style text into blocks of (lower-cased name, unfolded value) fields.

    Blocks end at blank lines. A block whose fields say ``Content-Transfer-Encoding: base64``
    is followed by encoded lines (a mail filter's doing): those are decoded and read too.
    """
    blocks: list[list[tuple[str, str]]] = []
    fields: list[tuple[str, str]] = []
    loose: list[str] = []  # non-field lines of the current block

    def close() -> None:
        nonlocal fields, loose
        encoded = bool(blocks) and ("content-transfer-encoding", "base64") in blocks[-1]
        if loose and encoded and all(_BASE64_LINE.match(line) for line in loose):
            try:
                decoded = base64.b64decode("".join(loose), validate=False)
            except (binascii.Error, ValueError):
                decoded = b""
            blocks.extend(_field_blocks(mime.decode(decoded, "utf-8")))
        if fields:
            blocks.append([(name, value.strip()) for name, value in fields])
        fields, loose = [], []

    for line in text.split("\n"):
        if not line.strip():
            close()
        elif line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {line.strip()}")
        elif match := _FIELD.match(line):
            name = match.group(1).lower()
            value = (
                match.group(2).lower() if name == "content-transfer-encoding" else match.group(2)
            )
            fields.append((name, value))
        else:
            loose.append(line.strip())
    close()
    return blocks


def _dsn_records(text: str) -> list[dict[str, str]]:
    """Return one field dict per recipient block of a delivery-status text.

    Per-recipient blocks are recognised by their recipient fields; a block is split again where
    a second recipient starts without the blank line between them.
    """
    records: list[dict[str, str]] = []
    for block in _field_blocks(text):
        record: dict[str, str] = {}
        for name, value in block:
            if name in _RECIPIENT_FIELDS and (
                name in record or any(field in record for field in _PER_RECIPIENT)
            ):
                records.append(record)
                record = {}
            record.setdefault(name, value)
        records.append(record)
    return [r for r in records if any(field in r for field in _RECIPIENT_FIELDS)]


def _dsn_recipient(record: dict[str, str]) -> BouncedRecipient | None:
    # The original recipient is the address we handed to the MTA (our contact's); the final one
    # may be where an alias or forward led.
    address = _address(record.get("original-recipient", "")) or _address(
        record.get("final-recipient", "")
    )
    if address is None:
        return None
    diagnostic = _one_line(_DIAG_TYPE.sub("", record.get("diagnostic-code", "")))
    status = _status(record.get("status", "")) or _status(diagnostic)
    action = (record.get("action", "").split() or [""])[0].lower()
    if not action:
        action = _action_from_codes(status, diagnostic)
    elif action not in ACTIONS:
        action = "unknown"
    return BouncedRecipient(address=address, action=action, status=status, diagnostic=diagnostic)


def _action_from_codes(status: str, diagnostic: str) -> str:
    """Infer a missing Action field from the status (or SMTP code) class."""
    code = status[:1]
    if not code and (smtp := SMTP_CODE.search(diagnostic)):
        code = smtp.group(1)[:1]
    return {"5": "failed", "4": "delayed", "2": "delivered"}.get(code, "unknown")


# --- non-standard NDR text ---


def _from_mail_system(msg: Message) -> bool:
    """Say whether the mail system sent MSG, so that its text is an NDR's to be read.

    The same senders classification trusts (:func:`helpdeskd.triage.ndr.mail_system`), plus the
    markers only an MTA writes, plus a robot (Auto-Submitted) that writes an NDR's words.
    """
    if mime.header(msg, "X-Envelope-From").strip() == "<>":
        return True
    if (
        msg.get("X-Failed-Recipients") is not None
        or msg.get("X-MS-Exchange-Message-Is-Ndr") is not None
    ):
        return True
    if "mailer-daemon" in (msg.get_unixfrom() or "").lower():
        return True
    return_path = msg.get("Return-Path")
    if mail_system(mime.header(msg, "From"), None if return_path is None else str(return_path)):
        return True
    auto = mime.header(msg, "Auto-Submitted").strip().lower()
    precedence = mime.header(msg, "Precedence").strip().lower()
    sender = ADDRESS.search(mime.header(msg, "From"))
    robot = (
        bool(auto and not auto.startswith("no"))
        or precedence in ("bulk", "junk", "auto_reply")
        or (sender is not None and robot_sender(sender.group(0)))
    )
    text = mime.text_of(list(mime.leaves(msg)))
    return (robot and ndr_phrase(text) is not None) or notice_only(
        mime.header(msg, "Subject"), text
    )


def _ndr_recipients(msg: Message, notice: str) -> dict[str, BouncedRecipient]:
    entries = notice_entries(notice)
    # Exim's X-Failed-Recipients is the MTA's own list: it beats whatever the text seems to say.
    failed = [a.lower() for a in ADDRESS.findall(mime.header(msg, "X-Failed-Recipients"))]
    if failed:
        entries = {address: entries.get(address, []) for address in dict.fromkeys(failed)}
    general = general_diagnostic(notice)
    action = "delayed" if DELAYED.search(notice) else "failed"
    recipients: dict[str, BouncedRecipient] = {}
    for address, chunks in entries.items():
        if len(address) > MAX_ADDRESS:
            continue
        lines = [_one_line(chunk.strip(" \t:;,.")) for chunk in chunks]
        coded = [line for line in lines if _status(line) or SMTP_CODE.search(line)]
        diagnostic = (
            coded or ([general] if general else []) or [line for line in lines if line] or [""]
        )[0]
        status = _status(diagnostic)
        if not status and action == "failed" and not SMTP_CODE.search(diagnostic):
            status = "5.0.0" if PERMANENT.search(notice) else ""
        recipients[address] = BouncedRecipient(
            address=address, action=action, status=status, diagnostic=diagnostic
        )
    return recipients


_DELETED = re.compile(r"^disposition:[^\n]*;\s*(?:deleted|denied)\b", re.IGNORECASE | re.MULTILINE)


def _refusal(msg: Message, leaves: list[Message]) -> bool:
    """Say whether a "read receipt" is the mail system's refusal of our mail: an MDN whose
    disposition is ``deleted`` (RFC 8098; ``denied`` in RFC 2298), sent by the mail system, as
    Dovecot's LDA and Sieve's reject send when a mailbox is over quota."""
    if mime.report_type(msg) != "disposition-notification" or not _from_mail_system(msg):
        return False
    return any(
        _DELETED.search(mime.part_text(part))
        for part in leaves
        if part.get_content_type() == "message/disposition-notification"
    )


def _text_dsn_recipients(notice: str) -> dict[str, BouncedRecipient]:
    recipients: dict[str, BouncedRecipient] = {}
    for record in _dsn_records(notice):
        recipient = _dsn_recipient(record)
        if recipient is not None:
            recipients.setdefault(recipient.address, recipient)
    return recipients


def _overall(notice: str) -> BouncedRecipient:
    """What a notice that names no recipient says of the mail as a whole (address "")."""
    field = _ACTION_FIELD.search(notice)
    if field is not None:
        action = field.group(1).lower()
    else:
        action = "delayed" if DELAYED.search(notice) else "failed"
    diagnostic = _one_line(general_diagnostic(notice))
    status = _status(diagnostic)
    if not status and action == "failed" and PERMANENT.search(notice):
        status = "5.0.0"
    return BouncedRecipient("", action, status, diagnostic)


def _returned_recipient(returned: Message | None, notice: str) -> dict[str, BouncedRecipient]:
    """Name the one recipient of the returned mail, when the notice names none (Verizon's MMS
    gateway, old Exchange): an NDR is about the mail it returns."""
    if (
        returned is None
        or mime.header(returned, "Cc").strip()
        or "multipart/report" in mime.header(returned, "Content-Type").lower()
    ):
        return {}
    found = {a.lower() for a in ADDRESS.findall(mime.header(returned, "To"))}
    if len(found) != 1:
        return {}
    address = found.pop()
    action = "delayed" if DELAYED.search(notice) else "failed"
    status = "5.0.0" if action == "failed" and PERMANENT.search(notice) else ""
    diagnostic = general_diagnostic(notice)
    return {address: BouncedRecipient(address, action, status or _status(diagnostic), diagnostic)}


def _ses_recipients(text: str) -> dict[str, BouncedRecipient]:
    """Read the bounced recipients of an Amazon SES bounce notification (JSON)."""
    recipients: dict[str, BouncedRecipient] = {}
    for address, fields in ses_recipients(text):
        found = _address(address)
        if found is None:
            continue
        diagnostic = _one_line(_DIAG_TYPE.sub("", fields.get("diagnosticCode", "")))
        status = _status(fields.get("status", "")) or _status(diagnostic)
        action = fields.get("action", "").lower()
        recipients.setdefault(
            found,
            BouncedRecipient(
                address=found,
                action=action if action in ACTIONS else _action_from_codes(status, diagnostic),
                status=status,
                diagnostic=diagnostic,
            ),
        )
    return recipients


# --- the returned mail ---


def _returned_headers(leaves: list[Message]) -> Message | None:
    """Return the headers of our mail as the report returned it (whole or headers only)."""
    found: Message | None = None
    for part in leaves:
        if part.get_content_type() not in RETURNED_TYPES:
            continue
        payload = part.get_payload()
        encoding = mime.header(part, "Content-Transfer-Encoding").strip().lower()
        if (
            isinstance(payload, list)
            and payload
            and isinstance(payload[0], Message)
            and encoding not in ("base64", "quoted-printable")
        ):
            headers = payload[0]
        else:
            headers = BytesHeaderParser(policy=compat32).parsebytes(mime.part_bytes(part).lstrip())
        if headers.get("Message-ID") is not None:
            return headers
        found = found or headers
    return found


def _inline_returned_headers(text: str) -> Message | None:
    """Return the header block of our mail quoted in an NDR's text (Gmail, qmail, Exim …)."""
    cut = RETURNED_COPY.search(text)
    if cut is None:
        return None
    rest = text[cut.start() :]
    if not re.match(r"[ \t]*[\w-]+:[ \t]", rest):
        rest = rest.split("\n", 1)[1] if "\n" in rest else ""
    headers = BytesHeaderParser(policy=compat32).parsebytes(
        rest.lstrip().encode("utf-8", "replace")
    )
    if headers.get("Message-ID") is None:
        # Indented or otherwise mangled copies: any Message-ID line will do.
        loose = re.search(r"(?im)^[ \t]*message-id:[ \t]*(<[^<>\s]+>)", rest)
        if loose:
            headers["Message-ID"] = loose.group(1)
    return headers


def _verp_token(msg: Message, returned: Message | None, local: str) -> str | None:
    pattern = re.compile(rf"(?<![\w.+-]){re.escape(local)}\+([^@\s<>\"',;]+)@", re.IGNORECASE)
    for name in VERP_HEADERS:
        match = pattern.search(mime.header(msg, name))
        if match:
            return match.group(1)
    # The returned mail's Return-Path is the envelope sender we used.
    match = pattern.search(mime.header(returned, "Return-Path"))
    return match.group(1) if match else None


# --- small helpers ---


def _address(value: str) -> str | None:
    """Return the address of a DSN/ARF address field ("rfc822; <a@b>"), lower-cased."""
    value = value.split(";", 1)[1] if ";" in value else value
    match = ADDRESS.search(value)
    if match is None or len(match.group(0)) > MAX_ADDRESS:
        return None
    return match.group(0).lower()


def _status(text: str) -> str:
    match = STATUS_CODE.search(text)
    return match.group(1) if match else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_DIAGNOSTIC]


def _msgid(value: str) -> str | None:
    ids = _msgids(value)
    if ids:
        return ids[0]
    bare = value.strip()
    # Some senders leave out the angle brackets (mimekit's feedback-report).
    if bare and " " not in bare and "@" in bare and len(bare) + 2 <= MAX_MSGID:
        return f"<{bare}>"
    return None


def _msgids(value: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for match in _MSGID.finditer(value):
        msgid = f"<{match.group(1)}>"
        if len(msgid) <= MAX_MSGID:
            seen.setdefault(msgid, None)
    return tuple(seen)
