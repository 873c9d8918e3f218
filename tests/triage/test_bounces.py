"""Bounce and complaint reading (DESIGN.md "Classification"): the real corpus's DSNs, NDRs and
ARF reports with expected values read off each file by eye, then synthetic NDRs for every
non-standard family, VERP, hardness, and mail that must not be read as a bounce."""

from __future__ import annotations

import base64
import email
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from helpdeskd.triage.bounces import parse_bounce, parse_complaint
from helpdeskd.triage.bouncescore import BouncedRecipient
from tests.conftest import CORPUS
from tests.mailgen import customer_mail
from tests.triage import real_bounces

# file -> (kind, [(address, action, status, hard)], original Message-ID)
CORPUS_BOUNCES: list[tuple[str, str, list[tuple[str, str, str, bool]], str | None]] = [
    # Postfix DSN, Gmail says 550 5.1.1; returned message/rfc822
    (
        "flanker/bounce/zed.eml",
        "dsn",
        [
            (
                "asdfasdfasdfasdfasdfasdfewrqertrtyrthsfgdfgadfqeadvxzvz@gmail.com",
                "failed",
                "5.1.1",
                True,
            )
        ],
        "<20090708054735.GC7578@example.com>",
    ),
    # AOL: 552 5.2.2 MAILBOX FULL, text/rfc822-headers: soft by our rule
    (
        "flanker/bounce/mailbox-full.eml",
        "dsn",
        [("user@aol.com", "failed", "5.2.2", False)],
        "<4E326A95.3010907@example.com>",
    ),
    # Office 365 DSN; the returned mail is a message/rfc822 part
    (
        "flanker/bounce/office365.eml",
        "dsn",
        [("noname@example.com", "failed", "5.1.10", True)],
        "<20171013111011.20866.254C2F3A4D7AA526@ninomail.com>",
    ),
    # "Delayed Mail (still being retried)", Action: delayed 4.4.4
    (
        "flanker/bounce/no-mx.eml",
        "dsn",
        [("user@example.com", "delayed", "4.4.4", False)],
        "<19E44CA63F984902B7D654F8FF40F89D@bo>",
    ),
    # Sendmail gave up after 5 days: Action failed but Status 4.0.0; returned mail has no Message-ID
    ("flanker/bounce/delayed.eml", "dsn", [("foo@example.com", "failed", "4.0.0", False)], None),
    # a bare message/delivery-status with MIME headers inside the blocks; 4.2.2
    (
        "flanker/bounce/delayed-broken.eml",
        "dsn",
        [("demo@example.com", "failed", "4.2.2", False)],
        None,
    ),
    # Gmail classic text: "failed permanently", 550 5.1.0; original quoted in the text
    (
        "flanker/bounce/gmail-invalid-address.eml",
        "ndr",
        [("awfawfawfawfawfaw@someserverhere.com", "failed", "5.1.0", True)],
        "<CAKsfaBUUGqVZiaMrmH3TRPfq1odQPtM7Ey5YW1SgyJJRHtAjgw@mail.gmail.com>",
    ),
    # Gmail classic text, "DNS Error: Domain name not found", no code: "permanent" -> 5.0.0
    (
        "flanker/bounce/gmail-no-dns.eml",
        "ndr",
        [("user@example.comm", "failed", "5.0.0", True)],
        None,
    ),
    # unknown MTA: "Delivery failed 10 attempts: info@example.net", no code -> soft
    ("flanker/bounce/broken-mime.eml", "ndr", [("info@example.net", "failed", "", False)], None),
    # Postfix, five Gmail recipients in one DSN (the two files are identical)
    *[
        (
            f"mikel-mail/multipart_report_emails/multi_address_bounce{n}.eml",
            "dsn",
            [
                (f"{local}@gmail.com", "failed", "5.1.1", True)
                for local in (
                    "bbbbvhvbbvkjbhfbvbvjhb",
                    "bscdbcjhasbcjhbdscbhbsdhcbj",
                    "egyfefsdvsfvvhjsd",
                    "kfhejkfbsjkjsbhds",
                    "qfvhgsvhgsduiohncdhcvhsdfvsfygusd",
                )
            ],
            "<118707422.15521266992174819.JavaMail.root@lvmail01>",
        )
        for n in (1, 2)
    ],
    # two message/delivery-status parts, the first one really text; Original-Recipient wins
    (
        "mikel-mail/multipart_report_emails/multipart_report_multiple_status.eml",
        "dsn",
        [("u@ci.com", "failed", "5.3.0", True)],
        "<4c2a146147ac8_61ff157c4ec1652df@s.h.c.mail>",
    ),
    # Sendmail warning: delayed 4.2.2 mailbox full
    (
        "mikel-mail/multipart_report_emails/report_422.eml",
        "dsn",
        [("fraser@oooooooo.com.au", "delayed", "4.2.2", False)],
        "<15655788.13.1200472642578.JavaMail.Administrator@mail.ttttt.com.au>",
    ),
    (
        "mikel-mail/multipart_report_emails/report_530.eml",
        "dsn",
        [("edwin@zzzzzzz.com", "failed", "5.3.0", True)],
        "<200712232303.lBNN3jDq002941@mail12.rrrr.com.au>",
    ),
    (
        "mikel-mail/mime_emails/raw_email_with_mimepart_without_content_type.eml",
        "dsn",
        [("larose.julie@courrier.uqam.ca", "delayed", "4.5.0", False)],
        "<89d7557c0610181510r6fa5ebd8n66a7deec71ade118@mail.gmail.com>",
    ),
    # no Status field: hard from "X-LOCAL; 500 (err.nosuchuser)"
    *[
        (
            f"mimekit/messages/{name}",
            "dsn",
            [("newsletter-request@imusic.com", "failed", "", True)],
            "<31FC7EB4.41C6@netscape.com>",
        )
        for name in ("delivery-status.txt", "delivery-status-no-blank-line.txt")
    ],
    # Exim DSN; the returned mail has no Message-ID
    (
        "mimekit/messages/delivery-status2.txt",
        "dsn",
        [("source@domain.com", "failed", "5.0.0", True)],
        None,
    ),
    # Original-Recipient only, no Action: inferred from Status 5.5.0
    (
        "mimekit/messages/delivery-status-multiple-blank-lines.txt",
        "dsn",
        [("orig_recip@customer.com", "failed", "5.5.0", True)],
        None,
    ),
    # Proofpoint base64-encoded the per-recipient block inside the delivery-status part
    (
        "mimekit/messages/bounce.txt",
        "dsn",
        [("netec.test@netecgc.com", "failed", "5.1.1", True)],
        "<44565655.JitbitHelpdesk.13439.691a0afc-a0a0-457c-8208-f20b7c4a4cb1@jitbit.com>",
    ),
    # anonymised: no readable recipient, but the returned Message-ID still finds the ticket
    ("mimekit/messages/delivery-status.anonymized.eml", "dsn", [], "<xxxxxxxx.xxxx@xxxxxxxx.xxx>"),
    # MailSite backscatter: message/rfc822-headers, "Status: 4.2.2 (... mailbox full)"
    (
        "mail-parser/mail_malformed_2",
        "dsn",
        [("abh@netpar.com.br", "failed", "4.2.2", False)],
        "<004801d1fc84$01c934ac$b247f0b7$@infospacemail.com>",
    ),
]

CORPUS_COMPLAINTS = [
    # AOL redacts the complainant (Redacted-Address: redacted, To: redacted@aol.com)
    ("flanker/complaints/aol.eml", None, "abuse", "<20101117174130.28884.55421@luna>"),
    (
        "flanker/complaints/yahoo.eml",
        "user@yahoo.com",
        "abuse",
        "<20120711015015.4A8BE2E088E@www.example.com>",
    ),
    # starts with a UTF-8 BOM; Message-ID without angle brackets
    (
        "mimekit/messages/feedback-report.txt",
        "user@example.com",
        "abuse",
        "<8787KJKJ3K4J3K4J3K4J3.mail@example.net>",
    ),
]


def _corpus(name: str) -> bytes:
    path = CORPUS / name
    if not path.is_file():
        pytest.skip(f"no corpus file {path}")
    return path.read_bytes()


@pytest.mark.parametrize(("name", "kind", "recipients", "original_id"), CORPUS_BOUNCES)
def test_corpus_bounce(
    name: str, kind: str, recipients: list[tuple[str, str, str, bool]], original_id: str | None
) -> None:
    report = parse_bounce(_corpus(name))
    assert report is not None
    assert report.kind == kind
    assert [(r.address, r.action, r.status, r.hard) for r in report.recipients] == recipients
    assert report.original_message_id == original_id
    assert all(len(r.diagnostic) <= 300 and "\n" not in r.diagnostic for r in report.recipients)
    assert parse_complaint(_corpus(name)) is None


def test_corpus_references_and_diagnostic() -> None:
    report = parse_bounce(_corpus("mimekit/messages/delivery-status.txt"))
    assert report is not None
    assert report.original_references == (
        "<96Jul29.013736-0700pdt.148116-12799+675@mm1.sprynet.com>",
    )
    assert report.recipients[0].diagnostic == "500 (err.nosuchuser)"


def test_corpus_verp_with_another_local_part() -> None:
    # Mailgun's "bounce+…" (singular): not ours by default, readable when configured.
    raw = _corpus("flanker/bounce/mailbox-full.eml")
    ours, theirs = parse_bounce(raw), parse_bounce(raw, verp_local="bounce")
    assert ours is not None
    assert theirs is not None
    assert (ours.verp_token, theirs.verp_token) == (None, "8c8b98.c-user=aol.com")


@pytest.mark.parametrize(("name", "complainant", "feedback_type", "original_id"), CORPUS_COMPLAINTS)
def test_corpus_complaint(
    name: str, complainant: str | None, feedback_type: str, original_id: str
) -> None:
    raw = _corpus(name)
    complaint = parse_complaint(raw)
    assert complaint is not None
    assert (complaint.complainant, complaint.feedback_type) == (complainant, feedback_type)
    assert complaint.original_message_id == original_id
    assert parse_bounce(raw) is None


def test_whole_corpus_reads_without_error() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"no corpus at {CORPUS}")
    expected = {name for name, *_ in CORPUS_BOUNCES}
    for path in sorted(p for p in CORPUS.rglob("*") if p.is_file()):
        name = path.relative_to(CORPUS).as_posix()
        report = parse_bounce(path.read_bytes())
        # Nothing outside the table (spam, torture tests, plain mail) reads as a bounce.
        assert (report is not None) == (name in expected), name
        parse_complaint(path.read_bytes())


# --- synthetic non-standard NDRs ---

ORIGINAL_HEADERS = (
    "Return-Path: <bounces+abc123@acme.test>\n"
    "Received: from mx.acme.test (mx.acme.test [192.0.2.10])\n"
    "\tby mx.customer.test with ESMTP id 4B2C; Tue, 3 Nov 2026 10:00:00 +0000\n"
    "From: Acme Support <support@acme.test>\n"
    "To: jane@customer.test\n"
    "Subject: Re: [HD-1042] Database down\n"
    "Message-ID: <HD-1042.7.a1b2@acme.test>\n"
    "In-Reply-To: <c1.cust@customer.test>\n"
    "References: <c0.cust@customer.test> <c1.cust@customer.test>\n"
    "Date: Tue, 3 Nov 2026 10:00:00 +0000\n"
)
ORIGINAL_ID = "<HD-1042.7.a1b2@acme.test>"
ORIGINAL_REFS = ("<c1.cust@customer.test>", "<c0.cust@customer.test>")


def _original() -> EmailMessage:
    msg = EmailMessage()
    for line in ORIGINAL_HEADERS.replace("\n\t", " ").splitlines():
        name, value = line.split(": ", 1)
        msg[name] = value
    msg.set_content("Hello Jane,\n\nthe database is back.\n")
    return msg


def ndr(
    body: str,
    *,
    sender: str = "Mail Delivery System <MAILER-DAEMON@mx.customer.test>",
    subject: str = "Undelivered Mail Returned to Sender",
    to: str = "bounces+abc123@acme.test",
    headers: dict[str, str] | None = None,
    attach_original: bool = False,
) -> bytes:
    """Build a non-standard NDR: a text body, optionally with our mail attached."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = "Tue, 3 Nov 2026 10:00:05 +0000"
    msg["Message-ID"] = "<ndr.1@mx.customer.test>"
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    if attach_original:
        msg.add_attachment(_original())
    return msg.as_bytes(policy=SMTP)


EXCHANGE = f"""\
Delivery has failed to these recipients or groups:

Jane Doe (jane@customer.test)<mailto:jane@customer.test>
The e-mail address you entered couldn't be found. Please check the recipient's e-mail address and \
try to resend the message. If the problem continues, please contact your helpdesk.





Diagnostic information for administrators:

Generating server: EX01.customer.test

jane@customer.test
#550 5.1.1 RESOLVER.ADR.RecipNotFound; not found ##

Original message headers:

{ORIGINAL_HEADERS}"""

EXCHANGE_2003 = """\
Your message did not reach some or all of the intended recipients.

      Subject:\tRe: [HD-1042] Database down
      Sent:\t11/3/2026 10:00 AM

The following recipient(s) cannot be reached:

      jane@customer.test on 11/3/2026 10:00 AM
            The e-mail account does not exist at the organization this message was sent to.  \
Check the e-mail address, or contact the recipient directly to find out the correct address.
            <mx.customer.test #5.1.1>
"""

OFFICE365 = """\
Your message to jane@customer.test couldn't be delivered.
jane wasn't found at customer.test.

Action Required                 Recipient
Unknown To address

How to Fix It
The address may be misspelled or may not exist. Try one or more of the following:

More Info for Email Admins
Status code: 550 5.1.10

Original Message Details
Created Date:   11/3/2026 10:00:00 AM
Sender Address: support@acme.test
Recipient Address:      jane@customer.test
Subject:        Re: [HD-1042] Database down

Error Details
Reported error: 550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient jane@customer.test not found \
by SMTP address lookup
DSN generated by:       AM0PR01MB1234.eurprd01.prod.exchangelabs.com
"""

GMAIL = """\
** Address not found **

Your message wasn't delivered to jane@customer.test because the address couldn't be found, or is \
unable to receive mail.

Learn more here: https://support.google.com/mail/?p=NoSuchUser

The response from the remote server was:
550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking the \
recipient's email address for typos or unnecessary spaces.
"""

GMAIL_CLASSIC = f"""\
Delivery to the following recipients failed permanently:

     jane@customer.test
     bob@other.test

Technical details of permanent failure:
Google tried to deliver your message, but it was rejected by the server for the recipient domain.

The error that the other server returned was:
550 5.1.1 <jane@customer.test>... User unknown

----- Original message -----

{ORIGINAL_HEADERS}
Hello Jane,
"""

GMAIL_DELAYED = """\
** Delivery incomplete **

There was a temporary problem delivering your message to jane@customer.test. Gmail will retry for \
46 more hours. You'll be notified if the delivery fails permanently.

The response was:

451 4.3.0 Mail server temporarily rejected message.
"""

QMAIL = f"""\
Hi. This is the qmail-send program at mx.customer.test.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<jane@customer.test>:
Sorry, no mailbox here by that name. (#5.1.1)

<bob@other.test>:
192.0.2.25 does not like recipient.
Remote host said: 550 5.1.1 <bob@other.test>: Recipient address rejected: User unknown
Giving up on 192.0.2.25.

--- Below this line is a copy of the message.

{ORIGINAL_HEADERS}
Hello Jane,
"""

EXIM = f"""\
This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  jane@customer.test
    host mx.customer.test [192.0.2.25]
    SMTP error from remote mail server after RCPT TO:<jane@customer.test>:
    550 5.1.1 <jane@customer.test>: Recipient address rejected: User unknown in virtual \
mailbox table

------ This is a copy of the message, including all the headers. ------

{ORIGINAL_HEADERS}
Hello Jane,
"""

EXIM_DELAYED = """\
This message was created automatically by mail delivery software.
A message that you sent has not yet been delivered to one or more of its
recipients after more than 24 hours on the queue on mx.acme.test.

The message identifier is:     1tAbCd-000123-XY
The subject of the message is: Re: [HD-1042] Database down

The address to which the message has not yet been delivered is:

  jane@customer.test
    host mx.customer.test [192.0.2.25]
    Delay reason: SMTP error from remote mail server after RCPT TO:<jane@customer.test>:
    451 4.2.2 Mailbox temporarily over quota

No action is required on your part. Delivery attempts will continue for
some time, and this warning may be repeated at intervals if the message
remains undelivered.
"""

POSTFIX = """\
This is the mail system at host mx.acme.test.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

For further assistance, please send mail to postmaster.

If you do so, please include this problem report. You can
delete your own text from the attached returned message.

                   The mail system

<jane@customer.test>: host mx.customer.test[192.0.2.25] said: 550 5.1.1
    <jane@customer.test>: Recipient address rejected: User unknown in virtual
    alias table (in reply to RCPT TO command)

<full@customer.test>: host mx.customer.test[192.0.2.25] said: 552 5.2.2
    <full@customer.test>: Mailbox full (in reply to RCPT TO command)
"""

SES = """\
An error occurred while trying to deliver the mail to the following recipients:
jane@customer.test
"""

GENERIC = """\
Your mail could not be delivered to all recipients.

550 5.1.1 <jane@customer.test>: Recipient address rejected: User unknown
"""

# (id, body, extra build options, [(address, action, status, hard)], original id, references)
NDR_CASES: list[
    tuple[
        str, str, dict[str, object], list[tuple[str, str, str, bool]], str | None, tuple[str, ...]
    ]
] = [
    (
        "exchange",
        EXCHANGE,
        {"sender": "postmaster@customer.test", "subject": "Undeliverable: Re: [HD-1042]"},
        [("jane@customer.test", "failed", "5.1.1", True)],
        ORIGINAL_ID,
        ORIGINAL_REFS,
    ),
    (
        "exchange-2003",
        EXCHANGE_2003,
        {"sender": "System Administrator <postmaster@customer.test>", "attach_original": True},
        [("jane@customer.test", "failed", "5.1.1", True)],
        ORIGINAL_ID,
        ORIGINAL_REFS,
    ),
    (
        "office365",
        OFFICE365,
        {
            "sender": "Microsoft Outlook "
            "<MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@customer.test>",
            "headers": {"X-MS-Exchange-Message-Is-Ndr": ""},
            "attach_original": True,
        },
        [("jane@customer.test", "failed", "5.1.10", True)],
        ORIGINAL_ID,
        ORIGINAL_REFS,
    ),
    (
        "office365-no-copy",  # the NDR's own In-Reply-To names the bounced mail
        OFFICE365,
        {"sender": "postmaster@customer.test", "headers": {"In-Reply-To": ORIGINAL_ID}},
        [("jane@customer.test", "failed", "5.1.10", True)],
        ORIGINAL_ID,
        (),
    ),
    (
        "gmail",
        GMAIL,
        {
            "sender": "Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
            "attach_original": True,
        },
        [("jane@customer.test", "failed", "5.1.1", True)],
        ORIGINAL_ID,
        ORIGINAL_REFS,
    ),
    (
        "gmail-classic-two",
        GMAIL_CLASSIC,
        {"sender": "Mail Delivery Subsystem <mailer-daemon@googlemail.com>"},
        [
            ("jane@customer.test", "failed", "5.1.1", True),
            ("bob@other.test", "failed", "5.1.1", True),
        ],
        ORIGINAL_ID,
        ORIGINAL_REFS,
    ),
    (
        "gmail-delayed",
        GMAIL_DELAYED,
        {"sender": "Mail Delivery Subsystem <mailer-daemon@googlemail.com>"},
        [("jane@customer.test", "delayed", "4.3.0", False)],
        None,
        (),
    ),
    (
        "qmail",
        QMAIL,
        {"subject": "failure notice"},
        [
            ("jane@customer.test", "failed", "5.1.1", True),
            ("bob@other.test", "failed", "5.1.1", True),
        ],
        ORIGINAL_ID,
        ORIGINAL_REFS,
    ),
    (
        "exim",
        EXIM,
        {
            "subject": "Mail delivery failed: returning message to sender",
            "headers": {"X-Failed-Recipients": "jane@customer.test"},
        },
        [("jane@customer.test", "failed", "5.1.1", True)],
        ORIGINAL_ID,
        ORIGINAL_REFS,
    ),
    (
        "exim-delayed",
        EXIM_DELAYED,
        {"subject": "Warning: message 1tAbCd-000123-XY delayed 24 hours"},
        [("jane@customer.test", "delayed", "4.2.2", False)],
        None,
        (),
    ),
    (
        "postfix",
        POSTFIX,
        {"attach_original": True},
        [
            ("jane@customer.test", "failed", "5.1.1", True),
            ("full@customer.test", "failed", "5.2.2", False),  # mailbox full: soft
        ],
        ORIGINAL_ID,
        ORIGINAL_REFS,
    ),
    (
        # SES puts the code in a delivery-status part (read as a DSN); its text alone has none,
        # so the address is not provably gone.
        "amazon-ses",
        SES,
        {
            "sender": "MAILER-DAEMON@amazonses.com",
            "subject": "Delivery Status Notification (Failure)",
        },
        [("jane@customer.test", "failed", "", False)],
        None,
        (),
    ),
    (
        "generic-550",
        GENERIC,
        {"sender": "Mailer-Daemon@mx.customer.test", "subject": "Undeliverable mail"},
        [("jane@customer.test", "failed", "5.1.1", True)],
        None,
        (),
    ),
]


@pytest.mark.parametrize(
    ("body", "options", "recipients", "original_id", "references"),
    [case[1:] for case in NDR_CASES],
    ids=[case[0] for case in NDR_CASES],
)
def test_non_standard_ndr(
    body: str,
    options: dict[str, object],
    recipients: list[tuple[str, str, str, bool]],
    original_id: str | None,
    references: tuple[str, ...],
) -> None:
    report = parse_bounce(ndr(body, **options))  # type: ignore[arg-type]
    assert report is not None
    assert report.kind == "ndr"
    assert [(r.address, r.action, r.status, r.hard) for r in report.recipients] == recipients
    assert report.original_message_id == original_id
    assert report.original_references == references
    assert report.verp_token == "abc123"
    for recipient in report.recipients:
        assert len(recipient.diagnostic) <= 300
        assert "\n" not in recipient.diagnostic


def test_ndr_diagnostics_are_the_servers_words() -> None:
    report = parse_bounce(ndr(EXCHANGE, sender="postmaster@customer.test"))
    assert report is not None
    assert report.recipients[0].diagnostic == "#550 5.1.1 RESOLVER.ADR.RecipNotFound; not found ##"
    report = parse_bounce(ndr(OFFICE365, sender="postmaster@customer.test"))
    assert report is not None
    assert report.recipients[0].diagnostic.startswith("550 5.1.10 RESOLVER.ADR.RecipientNotFound;")
    report = parse_bounce(ndr(EXIM))
    assert report is not None
    assert report.recipients[0].diagnostic.endswith("User unknown in virtual mailbox table")


# --- synthetic RFC 3464 DSNs ---


def dsn(
    status_text: str,
    *,
    to: str = "support@acme.test",
    headers: dict[str, str] | None = None,
    returned: str = "message/rfc822",
    status_encoding: str | None = None,
) -> bytes:
    """Build a multipart/report DSN byte for byte, STATUS_TEXT as its delivery-status part.

    Written out by hand rather than with email.message: the point is the exact layout of the
    status part (missing blank lines, a transfer encoding), which a generator would redo.
    """
    status_headers = "Content-Type: message/delivery-status\n"
    if status_encoding == "base64":
        status_headers += "Content-Transfer-Encoding: base64\n"
        status_text = base64.encodebytes(status_text.encode()).decode()
    extra = "".join(f"{name}: {value}\n" for name, value in (headers or {}).items())
    body = "Hello Jane,\n" if returned == "message/rfc822" else ""
    text = (
        "From: MAILER-DAEMON@mx.customer.test\n"
        f"To: {to}\n"
        f"{extra}"
        "Subject: Undelivered Mail Returned to Sender\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b0"\n'
        "\n"
        "--b0\n"
        "Content-Type: text/plain\n"
        "\n"
        "I'm sorry to have to inform you that your message could not be delivered.\n"
        "--b0\n"
        f"{status_headers}"
        "\n"
        f"{status_text}"
        "--b0\n"
        f"Content-Type: {returned}\n"
        "\n"
        f"{ORIGINAL_HEADERS}\n"
        f"{body}"
        "--b0--\n"
    )
    return text.replace("\n", "\r\n").encode()


def _status(action: str, status: str) -> str:
    return (
        "Reporting-MTA: dns; mx.customer.test\n\n"
        f"Final-Recipient: rfc822; jane@customer.test\nAction: {action}\nStatus: {status}\n"
    )


FAILED = _status("failed", "5.1.1")
DELIVERED = _status("delivered", "2.0.0")


def test_dsn_without_blank_lines_between_blocks() -> None:
    report = parse_bounce(
        dsn(
            "Reporting-MTA: dns; mx.customer.test\n"
            "Arrival-Date: Tue, 3 Nov 2026 10:00:00 +0000\n"
            "Final-Recipient: rfc822; jane@customer.test\n"
            "Action: failed\n"
            "Status: 5.1.1\n"
            "Diagnostic-Code: smtp; 550 5.1.1 <jane@customer.test>: Recipient address\n"
            "    rejected: User unknown\n"
            "Original-Recipient: rfc822;Bob@Other.test\n"
            "Final-Recipient: rfc822; robert@other.test\n"
            "Action: delayed\n"
            "Status: 4.4.1\n"
        )
    )
    assert report is not None
    assert report.kind == "dsn"
    assert [(r.address, r.action, r.status, r.hard) for r in report.recipients] == [
        ("jane@customer.test", "failed", "5.1.1", True),
        ("bob@other.test", "delayed", "4.4.1", False),  # Original-Recipient: the address we used
    ]
    assert report.recipients[0].diagnostic == (
        "550 5.1.1 <jane@customer.test>: Recipient address rejected: User unknown"
    )
    assert report.original_message_id == ORIGINAL_ID
    assert report.original_references == ORIGINAL_REFS


def test_dsn_part_base64_encoded_and_headers_only() -> None:
    report = parse_bounce(dsn(FAILED, status_encoding="base64", returned="text/rfc822-headers"))
    assert report is not None
    assert [(r.address, r.hard) for r in report.recipients] == [("jane@customer.test", True)]
    assert report.original_message_id == ORIGINAL_ID


def test_success_dsn_is_read_but_not_hard() -> None:
    report = parse_bounce(dsn(DELIVERED))
    assert report is not None
    assert [(r.action, r.status, r.hard) for r in report.recipients] == [
        ("delivered", "2.0.0", False)
    ]


@pytest.mark.parametrize(
    ("to", "headers", "expected"),
    [
        ("bounces+abc123@acme.test", {}, "abc123"),
        ("Acme <BOUNCES+abc123@acme.test>", {}, "abc123"),
        ("support@acme.test", {"Delivered-To": "bounces+HD1042.k1@acme.test"}, "HD1042.k1"),
        ("support@acme.test", {"X-Original-To": "bounces+x-9@acme.test"}, "x-9"),
        ("support@acme.test", {"Envelope-To": "bounces+e1@acme.test"}, "e1"),
        ("nobounces+abc@acme.test", {}, "abc123"),  # not ours; the returned Return-Path is
        ("support@acme.test", {}, "abc123"),  # from the returned mail's Return-Path
    ],
)
def test_verp_token(to: str, headers: dict[str, str], expected: str) -> None:
    report = parse_bounce(dsn(FAILED, to=to, headers=headers))
    assert report is not None
    assert report.verp_token == expected


def test_verp_token_absent() -> None:
    report = parse_bounce(
        dsn(FAILED, returned="text/rfc822-headers").replace(b"bounces+abc123", b"support")
    )
    assert report is not None
    assert report.verp_token is None


@pytest.mark.parametrize(
    ("action", "status", "diagnostic", "hard"),
    [
        ("failed", "5.1.1", "", True),
        ("failed", "5.7.1", "550 5.7.1 rejected by policy", True),
        ("failed", "5.2.2", "552 5.2.2 over quota", False),  # mailbox full is soft
        ("failed", "4.2.2", "", False),
        ("failed", "4.0.0", "426 connection timed out", False),
        ("failed", "5.0.0", "550 Mailbox full", False),
        ("delayed", "5.1.1", "", False),
        ("delivered", "2.0.0", "250 OK", False),
        ("failed", "", "550 No such user", True),
        ("failed", "", "X-LOCAL; 500 (err.nosuchuser)", True),
        ("failed", "", "552 Requested mail action aborted: exceeded storage allocation", False),
        ("failed", "", "421 try again later", False),
        ("failed", "", "Delivery failed 10 attempts", False),
        ("unknown", "5.1.1", "", False),
    ],
)
def test_hard(action: str, status: str, diagnostic: str, hard: bool) -> None:
    assert BouncedRecipient("a@b.test", action, status, diagnostic).hard is hard


# --- not bounces ---


def _out_of_office() -> bytes:
    # RFC 3834 autoresponders send with a null envelope sender, like bounces do.
    return ndr(
        "I am out of the office until 10 November. Your message to jane@customer.test was "
        "received; for urgent matters contact bob@customer.test.\n",
        sender="Jane Doe <jane@customer.test>",
        subject="Automatic reply: Re: [HD-1042] Database down",
        headers={"Return-Path": "<>", "Auto-Submitted": "auto-replied"},
    )


def _forwarded_bounce() -> bytes:
    # A customer forwarding a bounce as an attachment is the customer's mail.
    msg = EmailMessage()
    msg["From"] = "Customer <customer1@example.org>"
    msg["To"] = "support@acme.test"
    msg["Subject"] = "Fwd: Undelivered Mail Returned to Sender"
    msg.set_content("My mail to you bounced, see attached.\n")
    msg.add_attachment(email.message_from_bytes(dsn(FAILED), policy=SMTP))
    return msg.as_bytes(policy=SMTP)


NOT_BOUNCES: list[tuple[str, Callable[[], bytes]]] = [
    ("customer", lambda: customer_mail(1)),
    (
        "customer-quoting-an-error",
        lambda: customer_mail(
            2,
            body="Your mail to me bounced with:\n\n550 5.1.1 <customer2@example.org>: Recipient "
            "address rejected: User unknown\n\nI'm sorry to have to inform you that your message "
            "could not be delivered\n",
        ),
    ),
    ("customer-pasting-postfix", lambda: customer_mail(3, body=POSTFIX)),
    ("out-of-office", _out_of_office),
    ("forwarded-dsn-attachment", _forwarded_bounce),
    (
        "read-receipt",
        lambda: dsn(FAILED).replace(b"delivery-status", b"disposition-notification"),
    ),
    ("empty", lambda: b""),
    ("garbage", lambda: b"\x00\xff\xfe not mail at all \r\n\r\n\x80"),
]


@pytest.mark.parametrize(
    "build", [case[1] for case in NOT_BOUNCES], ids=[case[0] for case in NOT_BOUNCES]
)
def test_not_a_bounce(build: Callable[[], bytes]) -> None:
    raw = build()
    assert parse_bounce(raw) is None
    assert parse_complaint(raw) is None


def test_complaint_without_feedback_part_fields() -> None:
    raw = dsn(FAILED).replace(b"report-type=delivery-status", b"report-type=feedback-report")
    raw = raw.replace(b"message/delivery-status", b"message/feedback-report")
    complaint = parse_complaint(raw)
    assert complaint is not None
    # No Feedback-Type or Original-Rcpt-To: the type is unknown, the returned To is the complainant.
    assert complaint.feedback_type == "unknown"
    assert complaint.complainant == "jane@customer.test"
    assert complaint.original_message_id == ORIGINAL_ID


@pytest.mark.parametrize(
    "run", ["a" * 200_000, "<" * 200_000, "a@" * 100_000, "5.5." * 50_000, "x@y.zz\n" * 20_000]
)
@pytest.mark.parametrize("subtype", ["plain", "html"])
def test_hostile_text_stays_fast(run: str, subtype: str) -> None:
    msg = EmailMessage()
    msg["From"] = "MAILER-DAEMON@mx.customer.test"
    msg["X-Failed-Recipients"] = run[:5000].replace("\n", " ")
    msg.set_content("Delivery has failed to these recipients or groups:\n" + run, subtype=subtype)
    raw = msg.as_bytes(policy=SMTP)
    started = time.process_time()
    parse_bounce(raw)
    parse_complaint(raw)
    # Linear regexes take well under 0.1 s of CPU here; a quadratic one would take minutes. CPU
    # time, with a wide margin: the wall clock of a loaded machine (the suite's other worker)
    # went past 2 s for linear ones.
    assert time.process_time() - started < 10


# --- real bounces from many MTAs (tests/fixtures/bounces, see its README) ----------------------

# file -> (kind, [(address, action, status, hard)]), read off each file by eye.
REAL_BOUNCES = [
    # Exim's X-Failed-Recipients beats the sender address its text quotes in a 550
    ("sisimai/p5-exim-04.eml", "ndr", [("kijitora@example.ed.jp", "failed", "5.0.0", True)]),
    # Amazon SES notification: the JSON's bouncedRecipients
    (
        "sisimai/rb-ced-us-amazonses-01.eml",
        "ndr",
        [("bounce@simulator.amazonses.com", "failed", "5.1.1", True)],
    ),
    # PMDF writes the RFC 3464 fields into the text, after the returned mail's header fields
    (
        "sisimai/p5-messagingserver-03.eml",
        "ndr",
        [
            ("sabineko@example.org", "failed", "5.7.1", True),
            ("mikeneko@example.org", "failed", "5.7.1", True),
        ],
    ),
    # multipart/report whose parts have no boundary lines: the DSN fields are in the text
    (
        "sisimai/p5-rfc3464-04.eml",
        "ndr",
        [("kijitora@mailx-53.neko.example.edu", "failed", "5.5.0", True)],
    ),
    ("sisimai/p5-opensmtpd-04.eml", "ndr", [("kijitora@neko.example.jp", "delayed", "", False)]),
    # Dovecot's refusal is an MDN with disposition "deleted", from the mail system
    ("flufl-bounce/simple_38.eml", "ndr", [("userx@example.com", "failed", "", False)]),
    # a filter wrapped the MTA's DSN in a message of its own
    ("flufl-bounce/dsn_15.eml", "dsn", [("userx@example.com", "failed", "5.1.1", True)]),
    ("flufl-bounce/bounce_03.eml", "ndr", [("userx@example.uk", "failed", "", False)]),
    # Exchange's X.400 address form
    ("flufl-bounce/microsoft_01.eml", "ndr", [("userx@example.com", "failed", "", False)]),
    # the notice names nobody: the returned mail's one recipient
    (
        "sisimai/rb-dos-lhost-verizon-01.eml",
        "ndr",
        [("0000000000@vzwpix.com", "failed", "", False)],
    ),
    ("flufl-bounce/simple_35.eml", "ndr", [("calvin@example.com", "delayed", "", False)]),
    ("sisimai/rb-dos-email-x3-01.eml", "ndr", [("kijitora@example.com", "failed", "5.0.0", True)]),
    # KDDI's notice from a no-reply robot
    (
        "sisimai/p5-jp-kddi-01.eml",
        "ndr",
        [("kijitora@x0000000000000.dion.ne.jp", "failed", "", False)],
    ),
    # nothing but the notice, from a gateway with a person-like mailbox
    ("flufl-bounce/simple_20.eml", "ndr", [("userx@example.com", "failed", "", False)]),
    (
        "sisimai/rb-dos-lhost-x6-01.eml",
        "ndr",
        [("kijitora@nyaan.example.org", "failed", "5.4.6", True)],
    ),
    ("sisimai/p5-notes-03.eml", "ndr", [("kijitora@example.com", "failed", "", False)]),
    ("sisimai/rb-dos-email-domino-01.eml", "ndr", [("kijitora@example.jp", "failed", "", False)]),
]


@pytest.mark.parametrize(("name", "kind", "recipients"), REAL_BOUNCES)
def test_real_bounce(name: str, kind: str, recipients: list[tuple[str, str, str, bool]]) -> None:
    report = parse_bounce((real_bounces.FIXTURES / name).read_bytes())
    assert report is not None
    assert report.kind == kind
    assert [(r.address, r.action, r.status, r.hard) for r in report.recipients] == recipients


def test_real_bounces_name_their_recipients() -> None:
    """Read a failed recipient out of as many real bounces as can be (175 of 181 when written).

    The rest name none that can be read: AOL's and Yale's give a bare local part, LLNL and
    IFOM explain in prose, Yahoo quotes only the list's To, and p5-us-verizon-1 has no body the
    parser can see. They stay bounces; the contact is just not marked.
    """
    unread = []
    for path in real_bounces.FILES:
        report = parse_bounce(path.read_bytes())
        if report is None or not report.recipients:
            unread.append(real_bounces.name(path))
    total = len(real_bounces.FILES)
    print(f"recipients read from {total - len(unread)} of {total} real bounces")
    assert len(unread) <= total * 0.05, unread
