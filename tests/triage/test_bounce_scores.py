"""Mailman's bounce scoring (issue 21, item 4), pure: weights, once a day, decay, suspension;
spam and policy refusals that say nothing of the address; a report that names nobody, read
for its VERP token."""

from __future__ import annotations

from datetime import date, timedelta
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from helpdeskd.triage.bounces import BounceReport, parse_bounce
from helpdeskd.triage.bouncescore import BouncedRecipient, Standing, score

DAY = date(2026, 11, 2)
HARD = BouncedRecipient("jane@customer.test", "failed", "5.1.1", "550 5.1.1 User unknown")
SOFT = BouncedRecipient("jane@customer.test", "failed", "5.2.2", "552 5.2.2 Mailbox full")
DELAYED = BouncedRecipient("jane@customer.test", "delayed", "4.4.1", "connection timed out")
SPAM = BouncedRecipient(
    "jane@customer.test", "failed", "5.7.1", "550 5.7.1 Message rejected as spam"
)


def scored(standing: Standing, bounce: BouncedRecipient, day: date) -> Standing:
    return score(standing, bounce, day, threshold=5.0, stale_after_days=7)


@pytest.mark.parametrize(
    ("bounce", "weight"), [(HARD, 1.0), (SOFT, 0.5), (DELAYED, 0.0), (SPAM, 0.0)]
)
def test_weights(bounce: BouncedRecipient, weight: float) -> None:
    assert bounce.weight == weight
    after = scored(Standing(), bounce, DAY)
    assert after.score == weight
    assert (after.last_on, after.last_weight) == ((DAY, weight) if weight else (None, 0.0))


def test_one_bounce_a_day_counts_and_the_heaviest_of_that_day() -> None:
    first = scored(Standing(), SOFT, DAY)
    assert (first.score, first.reason) == (0.5, "failed 5.2.2 552 5.2.2 Mailbox full")
    assert scored(first, SOFT, DAY) == first  # the same day again: nothing more
    upgraded = scored(first, HARD, DAY)  # a heavier one that day: the day counts 1
    assert (upgraded.score, upgraded.last_weight, upgraded.last_on) == (1.0, 1.0, DAY)
    assert upgraded.reason == "hard 5.1.1 550 5.1.1 User unknown"
    assert scored(upgraded, HARD, DAY) == upgraded
    assert scored(upgraded, SOFT, DAY) == upgraded
    next_day = scored(upgraded, SOFT, DAY + timedelta(days=1))
    assert (next_day.score, next_day.last_weight) == (1.5, 0.5)


def test_the_score_starts_again_once_the_last_bounce_is_stale() -> None:
    standing = Standing(score=4.0, last_on=DAY, last_weight=1.0, reason="hard 5.1.1")
    assert standing.resets_on(7) == DAY + timedelta(days=8)
    # seven days later the score still stands: the next bounce adds to it
    assert standing.current(DAY + timedelta(days=7), 7) == 4.0
    assert scored(standing, SOFT, DAY + timedelta(days=7)).score == 4.5
    # on the eighth day it is stale: shown as 0, and the next bounce starts from its own weight
    assert standing.current(DAY + timedelta(days=8), 7) == 0.0
    fresh = scored(standing, HARD, DAY + timedelta(days=8))
    assert (fresh.score, fresh.last_on, fresh.suspended) == (1.0, DAY + timedelta(days=8), False)


def test_suspended_at_the_threshold_and_it_stays() -> None:
    standing = Standing()
    days = [DAY + timedelta(days=n) for n in range(5)]
    for day in days[:4]:
        standing = scored(standing, HARD, day)
        assert not standing.suspended
    standing = scored(standing, HARD, days[4])
    assert (standing.score, standing.suspended) == (5.0, True)
    # stale and started again, but an admin lifts a suspension, not the calendar
    later = scored(standing, SOFT, days[4] + timedelta(days=30))
    assert (later.score, later.suspended) == (0.5, True)


def test_a_clock_behind_the_last_bounce_counts_as_that_day() -> None:
    standing = scored(Standing(), SOFT, DAY)
    assert scored(standing, SOFT, DAY - timedelta(days=1)) == standing
    assert scored(standing, HARD, DAY - timedelta(days=1)).score == 1.0


def test_a_custom_threshold() -> None:
    after = score(Standing(), HARD, DAY, threshold=1.0, stale_after_days=7)
    assert after.suspended


@pytest.mark.parametrize(
    ("status", "diagnostic", "policy"),
    [
        ("5.7.1", "550 5.7.1 Message rejected as spam by Content Filtering", True),
        (
            "5.7.1",
            "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
            True,
        ),
        ("5.7.1", "550 5.7.1 Message content rejected, UBE, id=00000-22-225", True),
        (
            "5.7.1",
            "554 5.7.1 <jane@customer.test>: Recipient address rejected: Access denied",
            True,
        ),
        (
            "5.7.26",
            "550-5.7.26 Unauthenticated email from acme.test is not accepted due to "
            "domain's DMARC policy",
            True,
        ),
        ("5.7.350", "Remote server returned message detected as spam", True),
        # the words alone, with another status or none
        (
            "5.0.0",
            "550-5.7.1 Our system has detected that this message is likely unsolicited "
            "mail. To reduce the amount of spam sent to Gmail, this message has been blocked.",
            True,
        ),
        (
            "",
            "550 SC-001 Unfortunately, messages from 192.0.2.1 weren't sent. Please contact "
            "your Internet service provider since part of their network is on our block list",
            True,
        ),
        (
            "5.0.0",
            "553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because "
            "the ip is in Spamhaus's list",
            True,
        ),
        ("", "554 rejected due to poor reputation of the sending IP", True),
        # about the address after all, or no policy words
        ("5.7.1", "550 5.7.1 550 User Unknown: jane@customer.test", False),
        ("5.7.1", "", False),
        (
            "5.1.1",
            "550 5.1.1 <jane@customer.test>: Recipient address rejected: User unknown",
            False,
        ),
        ("5.2.2", "552 5.2.2 Mailbox full", False),
        ("5.0.0", "jane@customer.test is not listed in the Domino Directory", False),
    ],
)
def test_spam_and_policy_refusals(status: str, diagnostic: str, policy: bool) -> None:
    bounce = BouncedRecipient("jane@customer.test", "failed", status, diagnostic)
    assert bounce.policy is policy
    assert (bounce.state == "policy") is policy
    assert (bounce.weight == 0.0) is policy


def _ndr_naming_nobody(to: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Mail Delivery System <MAILER-DAEMON@mx.customer.test>"
    msg["To"] = to
    msg["Subject"] = "Undelivered Mail Returned to Sender"
    msg.set_content(
        "This is the mail system at host mx.customer.test.\n\n"
        "Your message could not be delivered. This is a permanent error.\n"
    )
    return msg.as_bytes(policy=SMTP)


def test_a_report_naming_nobody_is_read_for_its_verp_token() -> None:
    report = parse_bounce(_ndr_naming_nobody("bounces+12.abcdefghij@acme.test"))
    assert report is not None
    assert (report.recipients, report.verp_token) == ((), "12.abcdefghij")
    verdict = report.verdict()
    assert (verdict.action, verdict.status, verdict.hard) == ("failed", "5.0.0", True)
    # without a token such a report names nothing we could act on
    assert parse_bounce(_ndr_naming_nobody("support@acme.test")) is None


def test_the_verdict_is_the_worst_failure_the_report_tells_of() -> None:
    report = BounceReport((DELAYED, SPAM, SOFT, HARD), None, (), None, "dsn")
    assert report.verdict() == HARD
    assert BounceReport((DELAYED, SPAM), None, (), None, "dsn").verdict() == SPAM


def _dsn_without_recipients(action: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.customer.test\r\n"
        "To: bounces+12.abcdefghij@acme.test\r\n"
        "Subject: Delivery Status Notification\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b0"\r\n'
        "\r\n--b0\r\nContent-Type: text/plain\r\n\r\nA report about your message.\r\n"
        "--b0\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.customer.test\r\n\r\nAction: {action}\r\nStatus: 2.0.0\r\n"
        "--b0--\r\n"
    ).encode()


@pytest.mark.parametrize(("action", "weight"), [("delivered", 0.0), ("failed", 0.5)])
def test_a_dsn_naming_nobody_says_what_befell_the_mail(action: str, weight: float) -> None:
    report = parse_bounce(_dsn_without_recipients(action))
    assert report is not None and report.recipients == ()
    assert (report.verdict().action, report.verdict().weight) == (action, weight)
