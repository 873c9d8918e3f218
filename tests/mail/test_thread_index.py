"""Outlook's Thread-Index (DESIGN.md "Threading" step 2): the root a reply continues."""

from __future__ import annotations

import base64

import pytest

from helpdeskd.mail.thread_index import thread_index_root

ROOT = bytes(range(1, 23))  # Outlook's first Thread-Index: 22 bytes
CHILD = ROOT + bytes(5)  # each reply appends a 5-byte block
GRANDCHILD = CHILD + bytes([9] * 5)
ROOT_B64 = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (base64.b64encode(ROOT).decode(), ROOT_B64),
        (base64.b64encode(CHILD).decode(), ROOT_B64),
        (base64.b64encode(GRANDCHILD).decode(), ROOT_B64),
        (" " + base64.b64encode(CHILD).decode() + " ", ROOT_B64),
        (base64.b64encode(ROOT).decode().rstrip("="), ROOT_B64),  # padding lost on the way
        (  # another conversation has another root
            base64.b64encode(bytes(range(2, 24)) + bytes(5)).decode(),
            base64.b64encode(bytes(range(2, 24))).decode(),
        ),
        (base64.b64encode(ROOT[:21]).decode(), None),  # too short to hold a root
        ("AQID", None),
        ("", None),
        (None, None),
        ("@@@@", None),
    ],
)
def test_thread_index_root(value: str | None, expected: str | None) -> None:
    assert thread_index_root(value) == expected
