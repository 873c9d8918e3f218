"""What ``contacts show`` prints of a bounce score (helpdeskd.desk.bounces.describe)."""

from __future__ import annotations

from typing import Any

from helpdeskd.desk.bounces import describe


def standing(**changes: Any) -> dict[str, Any]:
    found: dict[str, Any] = {
        "score": 2.5,
        "threshold": 5.0,
        "stale_after_days": 7,
        "suspended": False,
        "suspended_on": None,
        "counted": [
            {
                "day": "2026-11-02",
                "weight": 1.0,
                "state": "hard",
                "status": "5.1.1",
                "diagnostic": "550 5.1.1 User unknown",
            },
            {
                "day": "2026-11-03",
                "weight": 0.5,
                "state": "failed",
                "status": "5.2.2",
                "diagnostic": "",
            },
            {"day": "2026-11-05", "weight": 1.0, "state": "hard", "status": "", "diagnostic": ""},
        ],
        "last": {"day": "2026-11-05", "reason": "hard"},
        "resets_on": "2026-11-13",
        "policy_refusals": 0,
        "bounces": 4,
    }
    return found | changes


def test_a_score_below_the_threshold() -> None:
    assert describe("jane@customer.example", standing()) == [
        "bounces: score 2.5 of 5",
        "  2026-11-02  hard 1  5.1.1 550 5.1.1 User unknown",
        "  2026-11-03  failed 0.5  5.2.2",
        "  2026-11-05  hard 1",
        "  back to 0 on 2026-11-13 unless a bounce is scored before then (7 days without one)",
        "  not suspended (suspended at 5)",
    ]


def test_a_suspended_address_with_a_stale_score_and_refusals() -> None:
    found = standing(
        score=0.0,
        counted=[],
        resets_on=None,
        suspended=True,
        suspended_on="2026-10-01",
        policy_refusals=2,
        last={"day": "2026-10-01", "reason": "hard 5.1.1 550 5.1.1 User unknown"},
    )
    assert describe("jane@customer.example", found) == [
        "bounces: score 0 of 5",
        "  last scored bounce 2026-10-01: hard 5.1.1 550 5.1.1 User unknown",
        "  refused as spam or by policy 2 time(s): not counted",
        "  suspended since 2026-10-01: no notices, acknowledgements or reminders "
        "(`helpdeskd contacts unsuspend jane@customer.example` lifts it)",
    ]


def test_a_contact_that_never_bounced() -> None:
    found = standing(score=0.0, counted=[], resets_on=None, last={"day": None, "reason": None})
    assert describe("jane@customer.example", found) == [
        "bounces: score 0 of 5",
        "  not suspended (suspended at 5)",
    ]
