"""A ticket's lifecycle rules (helpdeskd.triage.lifecycle): states, reopening, tags, Cc, merges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from helpdeskd.triage.lifecycle import (
    CcEdit,
    MergeTarget,
    Status,
    cc_check,
    cc_edit,
    change_state,
    edit_tags,
    merge_check,
    merged,
    reopen,
    reopen_action,
    signed,
)
from helpdeskd.vocab import STATES, State

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
WINDOW = timedelta(days=14)
SOLVED = NOW - timedelta(days=3)
CLOSED = NOW - timedelta(days=1)

# --- states ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "to", "after"),
    [
        # solved stamps solved_at and is no longer closed
        (Status("open"), "solved", Status("solved", NOW, None)),
        (Status("pending"), "solved", Status("solved", NOW, None)),
        (Status("solved", SOLVED), "solved", Status("solved", NOW, None)),  # stamped again
        (Status("closed", SOLVED, CLOSED), "solved", Status("solved", NOW, None)),
        # closed stamps closed_at and keeps when it was solved
        (Status("open"), "closed", Status("closed", None, NOW)),
        (Status("solved", SOLVED), "closed", Status("closed", SOLVED, NOW)),
        (Status("closed", SOLVED, CLOSED), "closed", Status("closed", SOLVED, NOW)),
        # an open state clears both
        (Status("solved", SOLVED), "open", Status("open")),
        (Status("closed", SOLVED, CLOSED), "pending", Status("pending")),
        (Status("closed", None, CLOSED), "open", Status("open")),
        (Status("new"), "open", Status("open")),
        (Status("new"), "pending", Status("pending")),
        (Status("open"), "pending", Status("pending")),
        (Status("pending"), "open", Status("open")),
        (Status("solved", SOLVED), "new", Status("new")),
    ],
)
def test_change_state(before: Status, to: State, after: Status) -> None:
    assert change_state(before, to, NOW) == after


@pytest.mark.parametrize("before", [Status(s, SOLVED, CLOSED) for s in STATES])
@pytest.mark.parametrize("to", STATES)
def test_change_state_always_lands_in_the_state_asked_for(before: Status, to: State) -> None:
    after = change_state(before, to, NOW)
    assert after.state == to
    assert (after.solved_at is not None) == (to in ("solved", "closed"))
    assert (after.closed_at is not None) == (to == "closed")


@pytest.mark.parametrize(
    "before",
    [Status("solved", SOLVED), Status("closed", SOLVED, CLOSED), Status("pending"), Status("new")],
)
def test_reopen_makes_a_ticket_open_and_unfinished(before: Status) -> None:
    assert reopen(before, NOW) == Status("open", None, None)


def test_a_merged_ticket_is_closed() -> None:
    assert merged(Status("open"), NOW) == Status("closed", None, NOW)
    assert merged(Status("solved", SOLVED), NOW) == Status("closed", SOLVED, NOW)


@pytest.mark.parametrize(
    ("state", "closed_at", "expected"),
    [
        ("new", None, "append"),
        ("open", None, "append"),
        ("pending", None, "append"),
        ("solved", None, "reopen"),
        ("solved", NOW - timedelta(days=400), "reopen"),
        ("closed", NOW - timedelta(days=1), "reopen"),
        ("closed", NOW - WINDOW, "reopen"),  # the window's last instant still reopens
        ("closed", NOW - WINDOW - timedelta(seconds=1), "follow_up"),
        ("closed", NOW - timedelta(days=90), "follow_up"),
        ("closed", None, "follow_up"),
    ],
)
def test_reopen_action(state: str, closed_at: datetime | None, expected: str) -> None:
    assert reopen_action(state, closed_at, NOW, WINDOW) == expected


# --- tags ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "add", "remove", "expected"),
    [
        ([], ["billing"], [], ["billing"]),
        (["a", "b"], ["c"], [], ["a", "b", "c"]),
        (["a", "b", "c"], ["a"], [], ["a", "b", "c"]),  # a tag already there keeps its place
        (["a", "b", "c"], [], ["b"], ["a", "c"]),
        (["a", "b"], [], ["zzz"], ["a", "b"]),  # removing a missing tag is harmless
        (["a", "b"], ["c", "c", "d"], [], ["a", "b", "c", "d"]),  # appended once
        (["a", "b", "c"], ["d"], ["a"], ["b", "c", "d"]),
        (["a", "b", "c"], ["a"], ["a"], ["b", "c", "a"]),  # removals first, then the additions
        (["a", "a", "b"], [], [], ["a", "b"]),
        ([], [], [], []),
    ],
)
def test_edit_tags(tags: list[str], add: list[str], remove: list[str], expected: list[str]) -> None:
    before = list(tags)
    assert edit_tags(tags, add, remove) == expected
    assert tags == before  # a new list; the ticket's own is not changed in place


@pytest.mark.parametrize(
    ("entries", "add", "remove"),
    [
        (["+billing", "-refund"], ("billing",), ("refund",)),
        (["-a", "-b"], (), ("a", "b")),
        (["+x"], ("x",), ()),
        ([], (), ()),
    ],
)
def test_signed(entries: list[str], add: tuple[str, ...], remove: tuple[str, ...]) -> None:
    assert signed(entries) == (add, remove)


# --- Cc --------------------------------------------------------------------------------------


def test_cc_edit_lower_cases_addresses() -> None:
    assert cc_edit(["+Bob@Example.org", "-carol@example.org"]) == CcEdit(
        add=("bob@example.org",), remove=("carol@example.org",)
    )


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        (["+bob@example.org"], None),
        (["-carol@example.org"], None),
        (["+jane@example.org"], None),  # adding the requester again is harmless
        (["-jane@example.org"], "#cc: the requester cannot be removed"),
        (["+bob@example.org", "-Jane@Example.org"], "#cc: the requester cannot be removed"),
    ],
)
def test_cc_check(entries: list[str], problem: str | None) -> None:
    assert cc_check(cc_edit(entries), "jane@example.org") == problem


# --- merge -----------------------------------------------------------------------------------

JANE, JOHN = 7, 8


@pytest.mark.parametrize(
    ("target", "force", "problem"),
    [
        (MergeTarget(40, JANE, None), False, None),
        (MergeTarget(40, JANE, None), True, None),
        (MergeTarget(40, JOHN, None), True, None),
        (None, False, "#merge: there is no ticket HD-40"),
        (None, True, "#merge: there is no ticket HD-40"),
        (MergeTarget(12, JANE, None), False, "#merge: a ticket cannot be merged into itself"),
        (MergeTarget(12, JANE, None), True, "#merge: a ticket cannot be merged into itself"),
        (
            MergeTarget(40, JANE, 41),
            True,
            "#merge: HD-40 was itself merged into another ticket",
        ),
        (
            MergeTarget(40, JOHN, None),
            False,
            "#merge: HD-40 has another requester; write '#merge HD-40 force' to merge anyway",
        ),
    ],
)
def test_merge_check(target: MergeTarget | None, force: bool, problem: str | None) -> None:
    assert merge_check(12, JANE, "HD-40", target, force=force) == problem
