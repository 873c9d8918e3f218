"""The real bounces under tests/fixtures/bounces/ (their README says where each came from).

One list for every test that reads them: classification (tests/triage/test_classify.py), bounce
reading (tests/triage/test_bounces.py) and the end-to-end run
(tests/system/test_attacks_bounces.py).
"""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "bounces"
FILES = sorted(FIXTURES.rglob("*.eml"))

# Real bounces that are known not to be recognised, and why. Each must still never be answered.
UNRECOGNISED = {
    # Its Content-Type is multipart/mixed with the boundary parameter on an unfolded line, so
    # the parser sees no body at all; only the sender (post_master@) is left, which makes it an
    # auto_reply: never answered, but the address is not marked undeliverable.
    "sisimai/p5-us-verizon-1.eml": "auto_reply",
}


def name(path: Path) -> str:
    """Return PATH relative to the fixture folder ("sisimai/p5-qmail-06.eml")."""
    return path.relative_to(FIXTURES).as_posix()
