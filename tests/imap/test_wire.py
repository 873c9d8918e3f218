"""The IMAP wire's pure parsers and encoders, table-driven."""

from __future__ import annotations

import pytest

from helpdeskd.imap.wire import (
    ImapError,
    encode_mailbox,
    parse_fetch,
    parse_search,
    parse_select,
    uid_set,
)


@pytest.mark.parametrize(
    ("uids", "expected"),
    [([5], "5"), ([3, 1, 2], "1:3"), ([1, 2, 3, 7, 9, 10, 10], "1:3,7,9:10")],
)
def test_uid_set(uids: list[int], expected: str) -> None:
    assert uid_set(uids) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("INBOX", '"INBOX"'),
        ("Helpdesk Done", '"Helpdesk Done"'),
        ("Caf\u00e9 & Co", '"Caf&AOk- &- Co"'),
        ("\u65e5\u672c\u8a9e", '"&ZeVnLIqe-"'),
        ('say "hi"\\', '"say \\"hi\\"\\\\"'),
    ],
)
def test_encode_mailbox(name: str, expected: str) -> None:
    assert encode_mailbox(name) == expected


def test_parse_fetch_takes_literals_by_position_not_content() -> None:
    lines: list[bytes | bytearray] = [
        b"1 FETCH (UID 7 RFC822.SIZE 11 BODY[] {11}",
        bytearray(b"* 2 FETCH ("),
        b")",
        b"2 FETCH (FLAGS (\\Seen))",  # unsolicited, no UID: ignored
        b"3 FETCH (BODY[] {3}",
        bytearray(b"abc"),
        b' UID 9 INTERNALDATE "02-Jun-2025 10:00:00 +0000")',
        b"4 FETCH (UID 10 BODY[] NIL)",
        b"Fetch completed (0.001 + 0.000 secs).",
    ]
    records = parse_fetch(lines)
    assert set(records) == {7, 9, 10}
    assert records[7].body == b"* 2 FETCH (" and records[7].size == 11
    assert records[9].body == b"abc" and records[9].internal_date == "02-Jun-2025 10:00:00 +0000"
    assert records[10].body is None


def test_parse_search_ignores_the_tagged_text() -> None:
    assert parse_search([b"4 2 9", b"Search completed (0.001 + 0.000 secs)."]) == [2, 4, 9]
    assert parse_search([b"", b"Search completed (0.001 secs)."]) == []


def test_parse_select_reads_keyword_support() -> None:
    lines = [
        b"FLAGS (\\Answered \\Seen)",
        b"OK [PERMANENTFLAGS (\\Answered \\Seen)] Limited",
        b"3 EXISTS",
        b"OK [UIDVALIDITY 1700000000] UIDs valid",
        b"[READ-WRITE] Select completed",
    ]
    info = parse_select(lines)
    assert (info.uidvalidity, info.exists, info.read_only) == (1700000000, 3, False)
    assert not info.keeps_keyword("$Helpdeskd")
    with_star = parse_select([b"OK [PERMANENTFLAGS (\\Seen \\*)] ok", *lines[2:]])
    assert with_star.keeps_keyword("$Helpdeskd")
    assert parse_select([*lines[2:4], b"[READ-ONLY] Select completed"]).read_only
    with pytest.raises(ImapError, match="UIDVALIDITY"):
        parse_select([b"3 EXISTS", b"Select completed"])
