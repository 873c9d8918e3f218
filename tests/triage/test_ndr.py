"""Recognising NDRs (helpdeskd/triage/ndr.py): the mail system as sender, an NDR's words, Amazon
SES notifications, and the recipient lists of the non-standard families, table by table."""

from __future__ import annotations

import pytest

from helpdeskd.triage.ndr import (
    general_diagnostic,
    mail_system,
    ndr_phrase,
    ndr_subject,
    notice_entries,
    notice_only,
    rejection_reason,
    ses_bounce,
    ses_recipients,
    system_mailbox,
)


@pytest.mark.parametrize(
    ("from_value", "return_path", "system"),
    [
        ("MAILER-DAEMON@mx.example.org", None, True),
        ("Mail Delivery System <Mailer-Daemon@mx.example.org>", None, True),
        ("MAILER_DAEMON@mx.example.org", None, True),
        ("mail-daemon@mx.example.org", None, True),
        ("post_master@vtext.example.com", None, True),
        ("Postmaster@ezweb.example.jp", None, True),
        ("Mail Delivery System <Mail.Delivery.System@mx.example.com>", None, True),
        ("kijitora.postmaster@example.org", None, True),  # a person-named postmaster account
        ("MDaemon@receive.example.com", None, True),
        ("ndr@some.example", None, True),
        ("E500_SMTP_Mail_Service@example.org", None, True),
        ("MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@example.com", None, True),
        ("Mailer Daemon <poostmaster@example.co.jp>", None, True),  # by its display name
        ("MAILER-DAEMON@python.org (Mail Delivery System)", None, True),
        ('"Mail Deliver System" <MAILER-DAEMON>', None, True),
        ("mailer-daemon", None, True),
        ('"Jetmail System" <>', None, True),
        ("System Administrator <it@example.com>", None, True),  # Exchange 5.5's NDR signature
        ("imss@kviv.example", "<MAILER-DAEMON@relay.example.org>", True),
        ("Jane Doe <jane@example.org>", "<>", True),  # the null sender
        ("Jane Doe <jane@example.org>", "", True),
        ("Jane Doe <jane@example.org>", None, False),
        ("Jane Doe <jane@example.org>", "<jane@example.org>", False),
        ("postmasterly@example.org", None, True),  # contains the word: with NDR evidence only
        ("Norbert <norbert@example.org>", None, False),
        ("mta.support@example.org", None, True),
        ("smith@mta.example.org", None, False),  # the domain says nothing
    ],
)
def test_mail_system(from_value: str, return_path: str | None, system: bool) -> None:
    assert (mail_system(from_value, return_path) is not None) is system


@pytest.mark.parametrize(
    ("address", "mailbox"),
    [
        ("post_master@example.net", True),
        ("MAILER-DAEMON@example.net", True),
        ("mail.delivery.system@example.net", True),
        ("postmaster@example.net", True),
        ("microsoftexchange329e71ec88ae4615bbc36ab6ce41109e@example.net", True),
        ("jane.postmaster@example.net", False),  # maybe a person: needs an NDR's words too
        ("ndr@example.net", False),
        ("jane@example.net", False),
    ],
)
def test_system_mailbox(address: str, mailbox: bool) -> None:
    assert system_mailbox(address) is mailbox


@pytest.mark.parametrize(
    ("subject", "ndr"),
    [
        ("Undelivered Mail Returned to Sender", True),  # Postfix
        ("Returned mail: see transcript for details", True),  # Sendmail
        ("Mail delivery failed: returning message to sender", True),  # Exim
        ("failure notice", True),  # qmail
        ("Undeliverable: Database down", True),  # Exchange
        ("Delivery Status Notification (Failure)", True),  # Gmail, SES
        ("DELIVERY FAILURE: User x not listed in Domino Directory", True),  # Domino
        ("Undeliverable message", True),  # Notes
        ("Delivery status notification: error", True),  # OpenSMTPD
        ("Mail System Error - Returned Mail", True),  # ezweb
        ("NOTICE: mail delivery status.", True),  # Courier
        ("**Message you sent blocked by our bulk email filter**", True),  # Barracuda
        ("There was an error sending your mail", True),
        ("[Postmaster] Email Delivery Failure", True),
        ("Sorry, your message could not be delivered", True),  # Facebook
        ("Warning: message 14jRTi-0007jE-00 delayed 24 hours", True),
        ("Unzustellbar: Datenbank", True),
        ("メールエラー通知", True),
        ("Database down", False),
        ("Undelivered invoice #12", True),  # only ever read for mail the mail system sent
        ("Re: Delivery of the new plan", False),
        ("Question about deliverability", False),
    ],
)
def test_ndr_subject(subject: str, ndr: bool) -> None:
    assert ndr_subject(subject) is ndr


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry to have to inform you that your message could not\nbe delivered",  # Postfix
        "A message that you sent could not be delivered to one or more of its recipients.",
        "Hi. This is the qmail-send program at x.\nI'm afraid I wasn't able to deliver your "
        "message to the following addresses.",
        "   ----- The following addresses had permanent fatal errors -----",  # Sendmail
        "Delivery has failed to these recipients or groups:",  # Exchange
        "did not reach the following recipient(s):",  # Exchange 5.5
        "User some.name (a@example.jp) not listed in Domino Directory",
        "------- Failure Reasons  --------",  # Notes
        "An error has occurred while attempting to deliver a message for",  # OpenSMTPD
        "Each of the following recipients was rejected by a remote mail server.",  # ezweb
        "We had trouble delivering your message. Full details follow:",
        "Die Nachricht konnte nicht zugestellt werden.",
        "Votre message n'a pas pu etre delivre a",
        "К сожалению, Ваше письмо не может быть доставлено одному или нескольким получателям",
        "送信先のメールボックスが一杯のため、送信できませんでした。",
    ],
)
def test_ndr_phrase(text: str) -> None:
    assert ndr_phrase(text)


@pytest.mark.parametrize(
    "text",
    [
        "Hello support,\n\nmy app cannot reach the database since 09:00.\n",
        "Please deliver the invoice to our accounts team.",
        "The delivery of the new plan is scheduled for Monday.",
        "I am out of the office until Monday.",
    ],
)
def test_no_ndr_phrase(text: str) -> None:
    assert ndr_phrase(text) is None


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("550 5.1.1 <a@example.org>... User Unknown", True),
        ("Error: Invalid user address", True),
        ("550 - Requested action not taken: no such user here", True),
        ("552 Error: disk quota exceeded", True),
        ("The user's mailfolder is full.", True),
        ("Our script says: user unknown. Can you help?", True),  # why it needs a sender
        ("Hello, my plan is full of data.", False),
    ],
)
def test_rejection_reason(text: str, found: bool) -> None:
    assert (rejection_reason(text) is not None) is found


@pytest.mark.parametrize(
    ("subject", "text", "only"),
    [
        (
            "RE: Invoice : non remis (delivery failed)",
            "*****\nYour message could not be delivered to\njane@example.com\n*****\n",
            True,
        ),
        # The person's own words, or the forwarded mail's header lines, are not the notice.
        (
            "RE: Invoice : non remis",
            "Hi Bob, see below.\nYour message could not be delivered to\njane@example.com\n",
            False,
        ),
        (
            "Fwd: Undeliverable: Invoice",
            "Date: Mon, 2 Nov 2026 10:00:00 +0000\nYour message could not be delivered to\n"
            "jane@example.com\n",
            False,
        ),
        ("Undeliverable: Invoice", "Your message could not be delivered.\n", False),  # no address
        ("Invoice", "Your message could not be delivered to\njane@example.com\n", False),
    ],
)
def test_notice_only(subject: str, text: str, only: bool) -> None:
    assert notice_only(subject, text) is only


SES_JSON = (
    '{"notificationType":"Bounce","bounce":{"bounceType":"Permanent","bouncedRecipients":'
    '[{"emailAddress":"gone@example.org","action":"failed","status":"5.1.1",'
    '"diagnosticCode":"smtp; 550 5.1.1 user unknown"},{"emailAddress":"full@example.org",'
    '"action":"failed","status":"5.2.2"}]},"mail":{"source":"support@acme.test",'
    '"destination":["gone@example.org","full@example.org"]}}'
)


def test_ses_bounce_notification() -> None:
    assert ses_bounce(SES_JSON, "no-reply@sns.amazonaws.com", frozenset())
    assert ses_bounce(SES_JSON, "x@example.org", frozenset({"x-amz-sns-message-id"}))
    assert not ses_bounce(SES_JSON, "jane@example.org", frozenset())  # pasted by a person
    assert not ses_bounce(
        SES_JSON.replace("Bounce", "Delivery"), "no-reply@sns.amazonaws.com", frozenset()
    )
    assert ses_recipients(SES_JSON) == [
        (
            "gone@example.org",
            {
                "action": "failed",
                "status": "5.1.1",
                "diagnosticCode": "smtp; 550 5.1.1 user unknown",
            },
        ),
        ("full@example.org", {"action": "failed", "status": "5.2.2"}),
    ]


@pytest.mark.parametrize(
    ("notice", "addresses"),
    [
        # OpenSMTPD
        (
            "    An error has occurred while attempting to deliver a message for\n"
            "    the following list of recipients:\n\na@example.jp: Domain does not exist\n",
            ["a@example.jp"],
        ),
        # Domino
        (
            "Your message\n\n  Subject: x\n\nwas not delivered to:\n\n  a@example.jp\n",
            ["a@example.jp"],
        ),
        # Notes
        (
            "------- Failure Reasons  --------\n\nUser  not listed in public Name & Address Book\n"
            "a@example.com\n",
            ["a@example.com"],
        ),
        # Exchange 5.5 and its X.400 form
        (
            "did not reach the following recipient(s):\n\na@example.com on 4/29/01\n",
            ["a@example.com"],
        ),
        (
            "did not reach the following recipient(s):\n\n"
            "c=US;a= ;dda:SMTP=a@example.COM; on Fri\n",
            ["a@example.com"],
        ),
        # GMX, quoted
        ('The following address\nfailed:\n\n"a@example.jp":\nSMTP error\n', ["a@example.jp"]),
        # KDDI
        (
            "Your mail sent on: Thu\n     Could not be delivered to: <a@example.jp>\n",
            ["a@example.jp"],
        ),
        # IMail, SMTP32
        ("Invalid final delivery userid: a@example.co.jp\n", ["a@example.co.jp"]),
        ("undeliverable to a@example.com\n", ["a@example.com"]),
        # PMDF fields, LISTSERV fields, MailEnable's proxy form
        (
            "  Recipient address: a@example.org\n  Reason: x\n  Recipient address: b@example.org\n",
            ["a@example.org", "b@example.org"],
        ),
        ("Error-for:  a@example.com\nError-Code: 0\n", ["a@example.com"]),
        ("\tRecipient: [SMTP:a@example.com]\n\tReason: 550\n", ["a@example.com"]),
        # ezweb: an address alone on its line
        (
            "<a@ezweb.example.jp>\n\nEach of the following recipients was rejected\n",
            ["a@ezweb.example.jp"],
        ),
        # Zoho: an address leading a line with its SMTP code
        (
            "a@example.org Invalid Address, ERROR_CODE :550, mailbox unavailable\n",
            ["a@example.org"],
        ),
        # a reason that names the address in angle brackets
        ("User's mailbox is full: <a@example.net>\nUnable to deliver mail.\n", ["a@example.net"]),
        # an SMTP transcript
        ("Sent <<< RCPT TO:<a@example.be>\nUnable to deliver message\n", ["a@example.be"]),
        # Exim alias
        (
            "The following address(es) failed:\n\n  an undisclosed address\n"
            "    (generated from a@example.com)\n",
            ["a@example.com"],
        ),
        # nothing to read
        ("Your message could not be delivered.\n", []),
    ],
)
def test_notice_entries(notice: str, addresses: list[str]) -> None:
    assert list(notice_entries(notice)) == addresses


def test_general_diagnostic() -> None:
    text = "Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; not found'\n"
    assert general_diagnostic(text) == "550 5.1.10 RESOLVER.ADR.RecipientNotFound; not found"
    assert general_diagnostic("Nothing to see.") == ""
