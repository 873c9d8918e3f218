"""What the writer added, across the quote formats of the major mail clients."""

from __future__ import annotations

import pytest
from mailparser_reply import EmailReplyParser

from helpdeskd.mail.parse import (
    _MOBILE_SIGNATURE,
    _SIGNATURE,
    REPLY_LANGUAGES,
    extract_reply,
    parse_message,
)
from tests.conftest import CORPUS, CORPUS_NOT_MAIL

NEW = "We restarted the server; please try again."
OLD = "my app cannot reach the database"

CLIENTS = {
    "gmail": f"{NEW}\n\nOn Mon, Nov 2, 2026 at 9:00 AM Ada <ada@example.org> wrote:\n> {OLD}\n",
    "outlook": (
        f"{NEW}\n\n________________________________\nFrom: Ada <ada@example.org>\n"
        "Sent: Monday, November 2, 2026 9:00 AM\nTo: support@acme.test\n"
        f"Subject: database\n\n{OLD}\n"
    ),
    "outlook-original": f"{NEW}\n\n-----Original Message-----\nFrom: Ada\nSent: Mon\n\n{OLD}\n",
    "apple-mail": (
        f"{NEW}\n\n> On 2 Nov 2026, at 09:00, Ada <ada@example.org> wrote:\n> \n> {OLD}\n"
    ),
    "thunderbird": f"{NEW}\n\nOn 02/11/2026 09:00, Ada wrote:\n> {OLD}\n",
    "iphone": (
        f"{NEW}\n\nSent from my iPhone\n\n> On Nov 2, 2026, at 09:00, Ada <ada@example.org> "
        f"wrote:\n> \n> {OLD}\n"
    ),
    "android-gmail": (
        f"{NEW}\n\nOn Mon, 2 Nov 2026, 09:00 Ada, <ada@example.org> wrote:\n\n> {OLD}\n"
    ),
    "yahoo": (
        f"{NEW}\n\n\n    On Monday, November 2, 2026, 09:00:00 AM GMT+1, Ada "
        f"<ada@example.org> wrote:\n\n\n{OLD}\n"
    ),
    "german-outlook": (
        f"{NEW}\n\nVon: Ada <ada@example.org>\nGesendet: Montag, 2. November 2026 09:00\n"
        f"An: support@acme.test\nBetreff: Datenbank\n\n{OLD}\n"
    ),
    "signature": f"{NEW}\n\n-- \nAlice\nAcme Postgres support\n",
    "mobile-signature": f"{NEW}\n\nGet Outlook for Android\n",
}


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_quoted_history_and_signature_are_removed(client: str) -> None:
    text = extract_reply(CLIENTS[client])
    assert text.startswith(NEW)
    assert OLD not in text
    assert "wrote:" not in text and "Sent from my" not in text and "Get Outlook" not in text


def test_a_reply_that_is_only_quote_keeps_nothing_new() -> None:
    assert extract_reply(f"> {OLD}\n") in ("", f"> {OLD}")


def _library_reply(text: str) -> str:
    """extract_reply as the library's own parse_reply gives it (all its passes run)."""
    body = _SIGNATURE.split(text, 1)[0]
    reply = EmailReplyParser(languages=REPLY_LANGUAGES).parse_reply(text=body)
    reply = _MOBILE_SIGNATURE.sub("", (reply or "").strip()).strip()
    return reply if reply else text.strip()


def test_the_latest_reply_is_what_the_library_itself_returns() -> None:
    # extract_reply skips the library's signature pass and builds its header pattern once;
    # the reply must still be the library's, on every client format and on the real corpus.
    texts = [*CLIENTS.values(), "Thanks!\n\nBest regards,\nAda\n\nOn Mon, Ada wrote:\n> x\n"]
    mails = [p for p in sorted(CORPUS.rglob("*")) if p.is_file() and p.name not in CORPUS_NOT_MAIL]
    texts += [parse_message(path.read_bytes()).full_text for path in mails]
    assert len(mails) > 100 or not CORPUS.is_dir()
    for text in texts:
        assert extract_reply(text) == _library_reply(text), text[:200]
