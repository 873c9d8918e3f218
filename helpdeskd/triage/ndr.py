"""Recognise the mail system's non-delivery reports (NDRs): who sends them and how they read.

Pure: strings in, answers out. Classification asks whether a mail is a bounce
(:mod:`helpdeskd.triage.classify`); bounce reading asks whose address it names
(:mod:`helpdeskd.triage.bounces`). Both use what is here, so the two can never disagree about
what an NDR looks like.

What is here:

* *the mail system as sender*: a null return path, or a From/Return-Path mailbox whose local part
  names the daemon or the postmaster however it is spelt (``MAILER-DAEMON``, ``post_master``,
  ``Mail.Delivery.System``, ``postmaster.kddi``, ``ndr``, ``E500_SMTP_Mail_Service``), or a
  display name that says so ("Mail Delivery Subsystem", "Mailer Daemon", "Mail Administrator");
* *the words of an NDR*: the subject lines and the sentences each MTA family writes (Postfix,
  Sendmail, Exim, qmail, Exchange and Office 365, Gmail, Domino and Notes, Courier, OpenSMTPD,
  the Japanese carriers …), the SMTP reasons they quote ("User unknown"), and Amazon SES's JSON;
* *reading the notice*: which addresses it says failed, and what it says of each.

A person's mail that merely talks about a bounce ("my mail was returned to sender") is not the
mail system's, and is never read as one: the words count only when the mail system or a robot
sent them (or when the mail is nothing but the notice, see :func:`notice_only`).
"""

from __future__ import annotations

import re

# Bounded parts (RFC 5321: 64-octet local part, 63-octet labels) keep a search linear even
# over a long run of address characters.
ADDR = (
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
ADDRESS = re.compile(ADDR)
MAX_SCAN = 20_000  # characters of text searched for an NDR's words: they come first

# --- the mail system as sender ---

# The local part with its separators dropped: "MAILER_DAEMON", "mail-daemon", "post_master",
# "Mail.Delivery.System", "postmaster.jones", "jones-postmaster".
_SYSTEM_COMPACT = re.compile(
    r"mailer?daemon|mdaemon|postmaster|maildeliver(?:y|ing)?(?:sub)?system|deliverysubsystem|"
    r"microsoftexchange[0-9a-f]{0,40}",
    re.IGNORECASE,
)
# The mail system's mailbox and nothing else: "post_master", "Mail.Delivery.System".
_SYSTEM_EXACT = re.compile(
    r"mailer?daemon|mdaemon|postmaster|maildeliver(?:y|ing)?(?:sub)?system|"
    r"microsoftexchange[0-9a-f]{0,40}",
    re.IGNORECASE,
)
# Whole words of a local part that only a mail system uses for itself: "ndr@", "smtp-gateway@".
_SYSTEM_WORDS = frozenset({"ndr", "smtp", "mta", "mailsystem"})
_SEPARATORS = re.compile(r"[._+=\-\s\\\"']+")
# What a mail system calls itself in a display name or a comment.
_SYSTEM_NAME = re.compile(
    r"mailer[\s_.-]*daemon|\bmail[\s_.-]*daemon|\bpost[\s_.-]*master\b|"
    r"\bmail\s+deliver(?:y|ing)?\s+(?:sub)?system|\bdelivery\s+(?:sub)?system|"
    r"\bmail\s+delivery\s+service|\binternet\s+mail\s+delivery|\bmail\s+administrator\b|"
    # Exchange 5.5 and 2000 signed their NDRs "System Administrator".
    r"\bsystem\s+administrator\b|\bNDR\b",
    re.IGNORECASE,
)
_NULL_PATH = re.compile(r"^\s*<?\s*(?:mailer-daemon)?\s*>?\s*$", re.IGNORECASE)


def system_local(local: str) -> bool:
    """Say whether LOCAL, the part of an address before the @, is the mail system's."""
    if _SYSTEM_COMPACT.search(_SEPARATORS.sub("", local)):
        return True
    return any(word.lower() in _SYSTEM_WORDS for word in _SEPARATORS.split(local))


def system_mailbox(address: str) -> bool:
    """Say whether ADDRESS is a mail system's own mailbox however spelt ("post_master@").

    Stricter than :func:`system_local`: "jane.postmaster@" may be a person's, "post_master@"
    is not. Mail from such a mailbox is never a person's, NDR or not.
    """
    local = address.rpartition("@")[0] or address
    return bool(_SYSTEM_EXACT.fullmatch(_SEPARATORS.sub("", local)))


def mail_system(from_value: str, return_path: str | None = None) -> str | None:
    """Return why a mail with this From header and Return-Path comes from the mail system.

    None when neither names it. An empty or ``<>`` Return-Path is the null sender of RFC 5321
    section 4.5.5, which every NDR uses; a From whose mailbox is empty (``MAILER-DAEMON <>``) is
    the same thing written in the header.
    """
    if return_path is not None and _NULL_PATH.match(return_path):
        return "null return path"
    for value in (from_value, return_path or ""):
        for address in ADDRESS.findall(value):
            if system_local(address.rpartition("@")[0]):
                return f"mail system sender {address.lower()}"
    if _SYSTEM_NAME.search(from_value):
        return f"mail system name in From: {from_value.strip()[:60]}"
    if re.search(r"<\s*>", from_value):
        return "null sender in From"
    return None


# --- the words of a non-delivery report ---

# Subject lines of NDRs: at the start, after a tag ("[Postmaster] ", "**", "NOTICE: "), or the
# carrier's own words. Only read for mail the mail system or a robot sent.
NDR_SUBJECT = re.compile(
    r"^\W{0,3}(?:\[[^\]\n]{0,40}\]\s*|(?:notice|warning|error)\s*:\s*)?(?:"
    r"undeliver(?:able|ed)|non[- ]?delivery|not delivered|delivery (?:status|notification|"
    r"report|failure|failed|has failed|problem|warning|delayed|error)|"
    r"(?:mail|message|e-?mail) (?:delivery|system error|error|failure|not delivered|"
    r"could not be delivered|failed|undeliverable|returned)|"
    r"returned mail|failure (?:notice|delivery)|failed mail|"
    r"(?:permanent|temporary|delayed) (?:delivery failure|mail)|message delayed|"
    r"warning: (?:message|could not send)|"
    r"\*+\s*message you sent blocked|automatically rejected mail|"
    r"there was an error sending your (?:mail|message)|"
    r"(?:sorry,?\s*)?your (?:mail|message)\b.{0,80}?\b(?:could not|couldn't|cannot|was not|"
    r"wasn't) (?:be )?delivered|"
    r"nicht zustellbar|unzustellbar|non remis|non recapitabile|onbestelbaar|"
    r"no (?:se )?(?:pudo|puede) entregar|n[ãa]o entregue|"
    r"недоставлен|не доставлено|"
    r"メールエラー|配信(?:エラー|不能|失敗)|送信エラー|退信|投递失败|系统退信"
    r")",
    re.IGNORECASE,
)
# What the notice says in its own words, family by family.
_NDR_PHRASES = (
    # Any MTA, any language of the English kind.
    r"\b(?:could\s+not|couldn'?t|cannot|can\s+not|was\s+not|wasn'?t|were\s+not|"
    r"(?:has|have)\s+not(?:\s+yet)?\s+been|not\s+yet\s+been|unable\s+to|failed\s+to)\s+"
    r"(?:be\s+)?deliver(?:ed)?\b",
    r"\bdelivery\s+(?:to\s+(?:the\s+following|these)\s+recipients?\s+)?(?:has\s+)?"
    r"(?:failed|been\s+delayed|is\s+delayed|was\s+delayed|problems?|failure)",
    r"\bundeliver(?:able|ed)\b",
    r"\bnon[- ]?delivery\b",
    r"\bdelivery\s+status\s+notification\b",
    r"\breturn(?:ed|ing)\s+(?:mail|message)?\s*to\s+(?:the\s+)?sender\b",
    r"\b(?:mail|message)\s+(?:has\s+been|was|is\s+being)\s+returned\b",
    # Sendmail and friends.
    r"\bthe\s+following\s+addresses\s+had\s+(?:permanent|delivery|transient)",
    r"\b(?:permanent|fatal|transient)\s+(?:fatal\s+)?errors?\b.{0,40}\brecipients?",
    r"\btranscript\s+of\s+session\s+follows\b",
    # Postfix.
    r"\bthis\s+is\s+the\s+mail\s+system\s+at\s+host\b",
    # Exim and the Exim-like ("created automatically by mail delivery software").
    r"\bby\s+mail\s+delivery\s+software\b",
    r"\bmail\s+delivery\s+(?:failed|failure|subsystem|system)\b",
    # qmail ("I'm afraid I wasn't able to deliver your message").
    r"\bwasn'?t\s+able\s+to\s+deliver\b",
    # Exchange, Office 365 and older Microsoft servers.
    r"\bdid\s+not\s+reach\s+(?:the\s+following|some\s+or\s+all)",
    r"\bcould\s+not\s+be\s+reached\b",
    r"\brecipient(?:'s)?\s+(?:e-?mail\s+)?(?:address|name)\s+(?:was\s+)?not\s+"
    r"(?:found|recognized|recognised)\b",
    # Domino and Notes.
    r"\bnot\s+listed\s+in\s+(?:the\s+)?(?:domino\s+directory|public\s+name)",
    r"-{3,}\s*failure\s+reasons\s*-{3,}",
    # OpenSMTPD and other queue-runners that keep trying.
    r"\ban\s+error\s+(?:has\s+)?occurred\s+while\s+(?:attempting|trying)\s+to\s+deliver\b",
    r"\bmessage\s+is\s+delayed\s+for\s+more\s+than\b",
    r"\b(?:delivery\s+attempts\s+will\s+continue|will\s+(?:keep\s+)?(?:try|retry)\s+"
    r"(?:to\s+deliver|delivering))\b",
    # Filters, gateways and hosted services.
    r"\b(?:rejected|blocked)\s+by\s+(?:a\s+|the\s+|our\s+)?(?:remote\s+)?(?:mail\s+)?"
    r"(?:server|filter|firewall|gateway)\b",
    r"\bautomatically\s+rejected\b",
    r"\btrouble\s+delivering\s+your\s+message\b",
    r"\breturned\s+permanent\s+errors?\b",
    # Other languages.
    r"konnte\s+nicht\s+zugestellt\s+werden|\bunzustellbar\b",
    r"n'a\s+pas\s+(?:pu\s+)?(?:être|etre|été|ete)\s+(?:remis|délivré|delivre|distribué|"
    r"transmis)|\bnon\s+remis\b",
    r"no\s+(?:se\s+)?(?:ha\s+)?(?:pudo|podido|puede)\s+(?:ser\s+)?entregar?",
    r"n[ãa]o\s+(?:p[ôo]de|foi\s+poss[íi]vel)\s+(?:ser\s+)?entreg",
    r"non\s+(?:è\s+stato\s+possibile\s+(?:recapitare|consegnare)|recapitat)",
    r"не\s+(?:может\s+быть|было|удалось)\s+доставить|не\s+может\s+быть\s+доставлено|"
    r"недоставлен",
    r"送信できませんでした|配信できませんでした|送信に失敗しました|届けることができません|"
    r"宛先不明|メールボックスが一杯",
    r"退信|投递失败|无法投递|未能成功送达",
)
NDR_PHRASES = re.compile("|".join(f"(?:{p})" for p in _NDR_PHRASES), re.IGNORECASE)
# The SMTP reasons an NDR quotes. On their own they prove little (a customer may quote one), so
# they only count for mail the mail system sent.
REJECTION_REASONS = re.compile(
    r"\b(?:user|recipient|address|mailbox|account)\s+(?:unknown|not\s+found|unavailable|"
    r"rejected|disabled|does\s+not\s+exist|is\s+full|full)\b|"
    r"\b(?:unknown|invalid|bad)\s+(?:user|recipient|address|mailbox)\b|"
    r"\bno\s+such\s+(?:user|recipient|mailbox|address|domain)\b|"
    r"\b(?:mailbox|mail\s*folder|quota)\s+(?:is\s+)?(?:full|exceeded)\b|\bover\s*quota\b|"
    r"\brequested\s+action\s+not\s+taken\b|"
    r"\b[45]\d\d[ -]+[45]\.\d{1,3}\.\d{1,3}\b",
    re.IGNORECASE,
)


# An NDR's subject may also keep the bounced mail's subject first: "RE: Invoice : non remis".
_SUBJECT_WORDS = re.compile(
    r"\b(?:undeliver(?:able|ed)|non[- ]?delivery|non remis|delivery (?:failed|failure)|"
    r"not delivered|returned mail|unzustellbar)\b",
    re.IGNORECASE,
)
_NOTICE_LINE = re.compile(rf"^\s*(?:[\W_]*|<?{ADDR}>?[\s.,;:]*)$")


def ndr_subject(subject: str) -> bool:
    """Say whether SUBJECT is one an NDR carries."""
    return bool(NDR_SUBJECT.search(subject[:300]))


def notice_only(subject: str, text: str) -> bool:
    """Say whether a mail is nothing but an NDR: its subject and every line of its text.

    A robot that signs with a person-like mailbox still writes only the notice: banner lines,
    the addresses that failed, and the sentences of :data:`NDR_PHRASES`. A person who pastes or
    forwards a bounce adds words of their own, or the forwarded mail's header lines, and is not
    matched; nor is one sentence without the address that failed.
    """
    if not _SUBJECT_WORDS.search(subject[:300]) or len(text) > 2000:
        return False
    lines = [line for line in text.splitlines() if line.strip()]
    said = [line for line in lines if NDR_PHRASES.search(line)]
    named = [line for line in lines if line not in said and ADDRESS.search(line)]
    return (
        bool(said)
        and bool(named)
        and all(line in said or _NOTICE_LINE.match(line) for line in lines)
    )


def ndr_phrase(text: str) -> str | None:
    """Return the first sentence in TEXT that only an NDR writes, or None."""
    match = NDR_PHRASES.search(text[:MAX_SCAN])
    return " ".join(match.group(0).split())[:60] if match else None


def rejection_reason(text: str) -> str | None:
    """Return the first SMTP rejection reason TEXT quotes, or None."""
    match = REJECTION_REASONS.search(text[:MAX_SCAN])
    return " ".join(match.group(0).split())[:60] if match else None


# --- Amazon SES bounce notifications (JSON delivered by SNS or SES itself) ---

_SES_BOUNCE = re.compile(r'"notificationType"\s*:\s*"Bounce"')
_SES_RECIPIENT = re.compile(
    r'\{\s*"emailAddress"\s*:\s*"(?P<addr>[^"\s]{3,320})"(?P<rest>[^{}]{0,600})\}'
)
_SES_FIELD = re.compile(r'"(?P<name>action|status|diagnosticCode)"\s*:\s*"(?P<value>[^"]{0,300})"')
_SES_SENDER = re.compile(r"@(?:[\w-]+\.)*(?:amazonses\.com|amazonaws\.com)$", re.IGNORECASE)


def ses_bounce(text: str, sender: str, header_names: frozenset[str]) -> bool:
    """Say whether TEXT is an Amazon SES bounce notification (its JSON body), sent by AWS."""
    if not _SES_BOUNCE.search(text[:MAX_SCAN]):
        return False
    return bool(_SES_SENDER.search(sender)) or "x-amz-sns-message-id" in header_names


def ses_recipients(text: str) -> list[tuple[str, dict[str, str]]]:
    """Return each bounced recipient of an SES notification with its action/status/diagnostic."""
    if not _SES_BOUNCE.search(text[:MAX_SCAN]):
        return []
    start = text.find('"bouncedRecipients"')
    if start < 0:
        return []
    found = []
    for match in _SES_RECIPIENT.finditer(text, start, min(len(text), start + MAX_SCAN)):
        fields = {m.group("name"): m.group("value") for m in _SES_FIELD.finditer(match["rest"])}
        found.append((match.group("addr"), fields))
    return found


# --- reading an NDR's text: which addresses failed, and what it says about each ---

# Everything from the returned copy of our mail onwards is not the notice; cut it off so its
# From/To addresses are not mistaken for recipients.
RETURNED_COPY = re.compile(
    r"^[ \t]*(?:"
    r"-+[ \t]*original[ \t]+message[ \t]*-*"  # Gmail, Outlook
    r"|original message(?: follows|:)"
    r"|original message headers"  # Exchange
    r"|-+[ \t]*below this line is a copy of the message"  # qmail
    r"|-+[ \t]*this is a copy of the message"  # Exim
    r"|-+[ \t]*(?:the )?headers? of the original message"
    r"|-+[ \t]*(?:returned|undelivered|forwarded) message"
    r"|-+[ \t]*original message"  # m-FILTER, Notes ("------- Returned Message --------")
    r"|-+[ \t]*start of returned message"
    r"|\s*below is a copy of the original message"  # OpenSMTPD
    r"|included is a copy of the message header"
    r"|(?:return-path|received|dkim-signature|mime-version|message-id):[ \t]"
    r")",
    re.IGNORECASE | re.MULTILINE,
)
# A list of recipients follows these lines, one entry per address (see _list_entries).
_LIST_INTRO = re.compile(
    r"delivery has failed to these recipients or (?:groups|distribution lists):?"  # Exchange
    r"|delivery is delayed to these recipients or groups:?"
    r"|the following recipient\(s\) (?:cannot|could not) be reached:?"  # Exchange 2003
    r"|did not reach the following recipient(?:\(s\)|s)?:?"  # Exchange 5.5
    r"|(?:delivery|delevery) to the following recipients? (?:failed permanently|failed|"
    r"has been delayed|was delayed|was aborted)[^:\n]*:?"  # Gmail (classic), Outlook.com
    r"|the following address(?:es|\(es\))?\s+failed:?"  # Exim, GMX, 1&1
    r"|the address(?:es)? to which the message has not yet been delivered (?:is|are):?"
    r"|i wasn't able to deliver your message to the following addresses\.?"  # qmail
    r"|an error occurred while trying to deliver the mail to the following recipients?:?"  # SES
    r"|(?:for|to)\s+the\s+following\s+list\s+of\s+recipients:?"  # OpenSMTPD
    r"|the following recipients were affected:?"  # MailMarshal
    r"|your message to the following recipients cannot be delivered:?"  # Courier
    r"|(?:could not be delivered|could not deliver message) to the following "
    r"(?:recipients?|users?|addresse?s?)(?:\(s\))?:?"
    r"|failed addresses follow:?[ \t-]*\|?"
    r"|(?:was not|could not be) delivered to:"  # Domino
    r"|failure reasons\s*-+"  # Notes
    r"|^[ \t]*the mail system[ \t]*$"  # Postfix
    r"|-+ ?the following addresses had (?:permanent fatal errors|delivery (?:problems|errors)|"
    r"transient non-fatal errors) ?-+",  # Sendmail, Biglobe, X1
    re.IGNORECASE | re.MULTILINE,
)
# One address named in a sentence.
_INLINE = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        rf"your (?:message|mail) to:?\s+<?(?P<addr>{ADDR})>?\s+(?:couldn'?t|could not|was) "
        rf"(?:be )?(?:delivered|automatically rejected)",
        rf"(?:wasn'?t|was not|couldn'?t be|could not be|has not been) delivered to:?\s+"
        rf"<?(?P<addr>{ADDR})>?",
        rf"problem delivering your message to\s+<?(?P<addr>{ADDR})>?",
        rf"delivery to\s+<?(?P<addr>{ADDR})>?\s+(?:has )?(?:failed|been delayed|was delayed)",
        rf"(?:unable to|could not|couldn'?t) deliver (?:your |the )?(?:message |mail )?to\s+"
        rf"<?(?P<addr>{ADDR})>?",
        rf"delivery failed[^\n:@]{{0,60}}:\s*<?(?P<addr>{ADDR})>?",
        rf"recipients? returned (?:permanent|temporary) errors?:\s*<?(?P<addr>{ADDR})>?",
        rf"invalid final delivery userid:\s*<?(?P<addr>{ADDR})>?",  # IMail
        rf"undeliverable\s+to\s+<?(?P<addr>{ADDR})>?",  # SMTP32
        rf"\baddressed\s+to\s+['\"<]?(?P<addr>{ADDR})",  # Demon
        rf"\((?:generated from|originally addressed to)\s+<?(?P<addr>{ADDR})>?",  # Exim alias
        rf"(?:mailbox|address|recipient|user)\s+<?(?P<addr>{ADDR})>?\s+(?:is|was|does)\s+"
        rf"(?:unavailable|unknown|not\b|invalid|full|disabled)",
    )
)
# Field-like lines that name a failed recipient each ("Recipient address: x", "Failed
# Recipient: x", "Intended recipient: x") and SMTP transcripts ("RCPT TO:<x>").
_FIELD_ENTRY = re.compile(
    rf"^[ \t]*(?:(?:failed|intended|final|original|invalid|undeliverable)[ \t]+)?"
    rf"(?:recipient|rcpt|address|error-for)s?(?:[ \t]+address)?[ \t]*:[ \t]*"
    rf"(?:\[?SMTP:)?<?(?P<addr>{ADDR})>?",
    re.MULTILINE | re.IGNORECASE,
)
_RCPT_TO = re.compile(rf"\bRCPT\s+TO:\s*<?(?P<addr>{ADDR})>?", re.IGNORECASE)
# Exchange's X.400 and proxy forms: "dda:SMTP=jane@example.com", "[SMTP:jane@example.com]".
_SMTP_PROXY = re.compile(rf"\bSMTP[:=]<?(?P<addr>{ADDR})", re.IGNORECASE)
# "<user@example.com>: host ... said: 550 ..." (Postfix, qmail and many others).
_ANGLE_ENTRY = re.compile(
    rf"^<(?P<addr>{ADDR})>(?:[ \t]*\(expanded from[^)\n]*\))?:", re.MULTILINE | re.IGNORECASE
)
# "550 5.1.1 <user@example.com>: Recipient address rejected" anywhere in the notice.
_SMTP_REJECT = re.compile(
    rf"(?<![\w.])[45]\d\d[ \-](?:[245]\.\d{{1,3}}\.\d{{1,3}}[ \t]+)?<(?P<addr>{ADDR})>",
    re.IGNORECASE,
)
# One entry of a recipient list: a line that starts with an address, optionally quoted or after
# a display name ("Jane Doe (jane@example.com)", "jane@example.com<mailto:jane@example.com>",
# '"jane@example.com":', "* jane@example.com").
_ENTRY = re.compile(
    r"^[ \t]*(?:(?:[*\u2022>]|-{1,2})[ \t]+)?"
    r"(?:(?:\"[^\"\n]{0,80}\"|[^<>@:\"\n]{1,80}?)[ \t]*[(<][ \t]*)?"
    rf"[\"'\[<]?(?P<addr>{ADDR})[>\]\"']?"
)
_SEPARATOR = re.compile(r"^\s*(?:-{3,}|\*{3,}|#{3,}|={3,})")
# Where the notice names the error for all recipients at once.
_GLOBAL_DIAGNOSTIC = tuple(
    re.compile(pattern, re.IGNORECASE | re.MULTILINE)
    for pattern in (
        r"remote server returned '([^'\n]+)'",  # Exchange
        r"reported error:[ \t]*(.+)",  # Office 365
        r"the (?:error that the other server returned was|response (?:from the remote server )?"
        r"was):?\s*([^\n]+(?:\n[^\n]+)*)",  # Gmail
        r"remote host said:[ \t]*(.+)",  # qmail
        r"diagnostic-code:[ \t]*(.+)",
        r"status code:[ \t]*(.+)",  # Office 365
        r"technical details of (?:permanent|temporary) failure:\s*([^\n]+(?:\n[^\n]+)*)",
    )
)
_DIAG_TYPE = re.compile(r"^[\w-]+;\s*")
DELAYED = re.compile(
    r"this is a warning (?:message )?only|delivery is delayed|has been delayed|"
    r"has not yet been delivered|will be retried|still being retried|will (?:keep )?try"
    r"|will retry|will continue to try|delivery attempts will continue|delivery incomplete"
    r"|temporary problem delivering"
    r"|only a temporary failure|message is delayed|\bdelayed\s+\d+\s+(?:hours?|days?)\b",
    re.IGNORECASE,
)
PERMANENT = re.compile(
    r"failed permanently|permanent (?:error|failure|fatal error)|permanently rejected",
    re.IGNORECASE,
)


def notice_entries(notice: str) -> dict[str, list[str]]:
    """Read the failed recipients out of an NDR's own text: address -> what it says of each.

    The first way that finds any wins: a list after an intro line, an address named in a
    sentence, Postfix/qmail's ``<address>:`` paragraphs, quoted SMTP rejections, recipient
    fields, a line holding nothing but an address, SMTP ``RCPT TO`` transcripts.
    """
    entries = _list_entries(notice) or _inline_entries(notice)
    if not entries and (first := _ANGLE_ENTRY.search(notice)):
        entries = _entries(notice[first.start() :])
    for pattern in (_SMTP_REJECT, _FIELD_ENTRY, _SMTP_PROXY, _ALONE, _LEADING, _SAYS, _RCPT_TO):
        if entries:
            break
        for match in pattern.finditer(notice):
            line_start = notice.rfind("\n", 0, match.start()) + 1
            line_end = notice.find("\n", match.end())
            entries.setdefault(match.group("addr").lower(), []).append(
                notice[line_start : line_end if line_end >= 0 else None]
            )
    return entries


# A line holding an address and nothing else (ezweb, Outlook.com, Notes): the failed recipient.
_ALONE = re.compile(
    rf"^[ \t]*(?:(?:[*\u2022>]|-{{1,2}})[ \t]*)?[\"'<]?(?P<addr>{ADDR})[>\"']?[ \t]*$", re.MULTILINE
)
# A line that starts with an address and goes on to give an SMTP code or reason (Zoho).
_LEADING = re.compile(
    rf"^[ \t]*<?(?P<addr>{ADDR})>?[ \t:,]+(?=[^\n]*?(?:\b[45]\d\d\b|{REJECTION_REASONS.pattern}))",
    re.MULTILINE | re.IGNORECASE,
)


# A line that names an address in angle brackets and says what is wrong with it ("User's mailbox
# is full: <jane@example.com>").
_SAYS = re.compile(
    rf"^(?=[^\n]*?(?:{REJECTION_REASONS.pattern}))[^\n]*?<(?P<addr>{ADDR})>",
    re.MULTILINE | re.IGNORECASE,
)


def general_diagnostic(notice: str) -> str:
    """Return the error the notice names for all its recipients at once, one line, or ""."""
    for pattern in _GLOBAL_DIAGNOSTIC:
        match = pattern.search(notice)
        if match and match.group(1).strip():
            return " ".join(_DIAG_TYPE.sub("", match.group(1).strip()).split())
    return ""


def _list_entries(notice: str) -> dict[str, list[str]]:
    intros = list(_LIST_INTRO.finditer(notice))
    entries: dict[str, list[str]] = {}
    for index, intro in enumerate(intros):
        end = intros[index + 1].start() if index + 1 < len(intros) else len(notice)
        for address, chunks in _entries(notice[intro.end() : end]).items():
            entries.setdefault(address, []).extend(chunks)
    return entries


def _entries(block: str) -> dict[str, list[str]]:
    """Read a list of recipients into address -> what the text says about it.

    An entry starts on a line that begins with its address; the lines below it, indented deeper
    or up to the end of its paragraph, say what went wrong. Exchange names an address twice
    (for the user, then for administrators): both chunks are kept.
    """
    found: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    entry_indent = 0
    after_blank = False
    for line in block.split("\n"):
        if not line.strip():
            after_blank = True
            continue
        indent = len(line) - len(line.lstrip())
        match = _ENTRY.match(line)
        if match and (not found or indent <= entry_indent):
            entry_indent = indent if not found else entry_indent
            current = [line[match.end() :].strip()]
            found.append((match.group("addr").lower(), current))
        elif current is not None:
            has_content = bool(" ".join(current).strip(" \t:;,.<>"))
            if _SEPARATOR.match(line) or (after_blank and indent <= entry_indent and has_content):
                current = None
            else:
                current.append(line.strip())
        after_blank = False
    entries: dict[str, list[str]] = {}
    for address, lines in found:
        entries.setdefault(address, []).append(" ".join(lines))
    return entries


def _inline_entries(notice: str) -> dict[str, list[str]]:
    for pattern in _INLINE:
        match = pattern.search(notice)
        if match:
            line_end = notice.find("\n", match.end())
            return {
                match.group("addr").lower(): [
                    notice[match.end() : line_end if line_end >= 0 else None]
                ]
            }
    return {}
