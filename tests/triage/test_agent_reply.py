"""What an authenticated agent's reply does (helpdeskd.triage.agent_reply), without a database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from helpdeskd.mail.tokens import confirmation_code
from helpdeskd.triage.agent_reply import (
    CANNOT_APPLY,
    CONFIRM,
    CONFIRM_ONLY,
    CONFIRMED_ALREADY,
    EMPTY,
    INVALID,
    NOTHING_HELD,
    AgentFacts,
    AgentReplyPlan,
    Assign,
    EventRow,
    Held,
    HeldReply,
    ReplyFacts,
    TicketFacts,
    decide_agent_reply,
    held_reply,
)
from helpdeskd.triage.commands import parse_commands
from helpdeskd.triage.lifecycle import CcEdit, MergeTarget, Status

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
EARLIER = NOW - timedelta(hours=5)
ALICE = AgentFacts(id=1, email="alice@acme.test", name="Alice")
TICKET = TicketFacts(
    id=12,
    ref="HD-12",
    subject="cannot connect",
    status=Status("open"),
    priority="normal",
    queue=None,
    tags=("postgres",),
    requester_id=7,
    requester="jane@example.org",
    first_response_at=None,
)
FACTS = ReplyFacts(
    ticket=TICKET,
    agent=ALICE,
    message_id="<agent-1@acme.test>",
    agent_addresses=frozenset({"alice@acme.test", "bob@acme.test"}),
    canned_replies=frozenset(),
    now=NOW,
    strong_proof=True,  # DKIM-proven: see "stronger proof" below for a reply with a token only
)
SAME_REQUESTER = MergeTarget(id=40, requester_id=7, merged_into_id=None)
OTHER_REQUESTER = MergeTarget(id=40, requester_id=8, merged_into_id=None)


def decide(block: str, text: str = "", **facts: Any) -> AgentReplyPlan:
    """Decide a reply whose command block is BLOCK and whose extracted text is TEXT."""
    ticket = facts.pop("ticket", {})
    facts_ = replace(FACTS, ticket=replace(TICKET, **ticket), **facts)
    return decide_agent_reply(parse_commands(block, ticket_prefix="HD"), text, facts_)


def command_event(name: str, source: str, **detail: Any) -> EventRow:
    return EventRow(12, f"command_{name}", ALICE.email, {"command": source, **detail})


def state_changed(before: str, after: str) -> EventRow:
    return EventRow(12, "state_changed", ALICE.email, {"from": before, "to": after})


# --- a plain reply ---------------------------------------------------------------------------


def test_a_plain_reply_is_sent_and_moves_the_ticket_to_pending() -> None:
    plan = decide("", "We restarted it.")
    assert plan.held is None
    assert plan.send == "We restarted it."
    assert (plan.message_text, plan.message_kind, plan.message_internal) == (
        "We restarted it.",
        "agent_reply",
        True,  # the agent's own mail stays internal; the customer gets a copy
    )
    assert plan.changes is not None
    assert plan.changes.status == Status("pending")
    assert plan.changes.first_response_at == NOW
    assert plan.changes.updated_at == NOW
    assert plan.events == ()
    assert plan.events_after_send == (state_changed("open", "pending"),)
    assert plan.receipt == ()  # no commands, no receipt
    assert plan.outcome == "reply sent"
    assert (plan.cc, plan.assign, plan.merge_into) == (CcEdit(), None, None)


@pytest.mark.parametrize(
    ("before", "reply_state", "after", "changed"),
    [
        (Status("new"), "pending", Status("pending"), True),
        (Status("open"), "open", Status("open"), True),
        (Status("open"), "solved", Status("solved", NOW), True),
        (Status("pending"), "pending", Status("pending"), False),
        (Status("pending"), "solved", Status("pending"), False),
        (Status("solved", EARLIER), "pending", Status("solved", EARLIER), False),
        (Status("closed", None, EARLIER), "pending", Status("closed", None, EARLIER), False),
    ],
)
def test_a_reply_moves_only_a_new_or_open_ticket(
    before: Status, reply_state: str, after: Status, changed: bool
) -> None:
    plan = decide("", "Hello.", ticket={"status": before}, agent_reply_state=reply_state)
    assert plan.changes is not None and plan.changes.status == after
    expected = (state_changed(before.state, reply_state),) if changed else ()
    assert plan.events_after_send == expected


def test_the_first_response_is_stamped_once() -> None:
    plan = decide("", "Again.", ticket={"first_response_at": EARLIER})
    assert plan.changes is not None and plan.changes.first_response_at == EARLIER


# --- each command ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "status", "detail"),
    [
        ("#status solved", Status("solved", NOW), {"from": "open", "to": "solved"}),
        ("#solved", Status("solved", NOW), {"from": "open", "to": "solved"}),
        ("#status pending", Status("pending"), {"from": "open", "to": "pending"}),
        ("#closed", Status("closed", None, NOW), {"from": "open", "to": "closed"}),
        ("#status open", Status("open"), {"from": "open", "to": "open"}),
    ],
)
def test_status(block: str, status: Status, detail: dict[str, str]) -> None:
    plan = decide(block, "Fixed.")
    assert plan.changes is not None and plan.changes.status == status
    assert plan.events == (command_event("status", block, **detail),)
    assert plan.events_after_send == ()  # #status says where the ticket goes, not the reply
    assert plan.send == "Fixed."


def test_status_open_clears_solved_and_closed() -> None:
    plan = decide("#status open", ticket={"status": Status("closed", EARLIER, EARLIER)})
    assert plan.changes is not None and plan.changes.status == Status("open")


@pytest.mark.parametrize(
    ("block", "email", "receipt"),
    [
        ("#assign me", "alice@acme.test", "assigned to you"),
        ("#assignee bob@acme.test", "bob@acme.test", "assigned to bob@acme.test"),
        ("#assign Bob@Acme.test", "bob@acme.test", "assigned to bob@acme.test"),
        ("#assign none", None, "unassigned"),
    ],
)
def test_assign(block: str, email: str | None, receipt: str) -> None:
    plan = decide(block)
    assert plan.assign == Assign(email)
    assert plan.events == (command_event("assign", block, to=email),)
    assert plan.receipt == ("Applied to HD-12:", f"  - {receipt}")


def test_priority_and_queue() -> None:
    plan = decide("#priority urgent\n#group Billing")
    assert plan.changes is not None
    assert (plan.changes.priority, plan.changes.queue) == ("urgent", "billing")
    assert plan.events == (
        command_event("priority", "#priority urgent", **{"from": "normal", "to": "urgent"}),
        command_event("queue", "#group Billing", **{"from": None, "to": "billing"}),
    )
    assert plan.receipt == ("Applied to HD-12:", "  - priority → urgent", "  - queue → billing")
    assert plan.send is None and plan.events_after_send == ()  # nothing to send


@pytest.mark.parametrize(
    ("block", "before", "after"),
    [
        ("#tags +billing", ("postgres",), ("postgres", "billing")),
        ("#tags +postgres +billing", ("postgres", "vip"), ("postgres", "vip", "billing")),
        ("#tags -postgres", ("postgres", "vip"), ("vip",)),
        ("#tags -refund +billing", ("refund", "vip"), ("vip", "billing")),
        ("#tag billing\n#tags -vip", ("vip",), ("billing",)),
    ],
)
def test_tags(block: str, before: tuple[str, ...], after: tuple[str, ...]) -> None:
    plan = decide(block, ticket={"tags": before})
    assert plan.changes is not None and plan.changes.tags == after
    [event] = plan.events
    assert event.type == "command_tags" and event.detail["tags"] == list(after)


def test_cc() -> None:
    plan = decide("#cc +Bob@Example.org -carol@example.org\n#cc +dave@example.org")
    assert plan.cc == CcEdit(
        add=("bob@example.org", "dave@example.org"), remove=("carol@example.org",)
    )
    [event] = plan.events
    assert event == command_event("cc", "#cc +Bob@Example.org -carol@example.org")


def test_note_sends_nothing() -> None:
    plan = decide("#note", "Customer is on the legacy plan.")
    assert plan.send is None
    assert (plan.message_kind, plan.message_internal) == ("note", True)
    assert plan.message_text == "Customer is on the legacy plan."
    assert plan.events == (
        command_event("note", "#note"),
        EventRow(12, "note_added", ALICE.email, {"message_id": "<agent-1@acme.test>"}),
    )
    assert plan.changes is not None
    assert plan.changes.status == Status("open")  # a note is no response
    assert plan.changes.first_response_at is None
    assert plan.events_after_send == ()
    assert plan.receipt == ("Applied to HD-12:", "  - internal note: nothing sent to the customer")
    assert plan.outcome == "internal note: nothing sent to the customer"


def test_public_false_is_a_note_and_public_true_a_reply() -> None:
    assert decide("#public false", "secret").send is None
    plan = decide("#public true", "Hello.")
    assert plan.send == "Hello." and plan.message_kind == "agent_reply"
    assert plan.outcome == "public reply; reply sent"


@pytest.mark.parametrize(
    ("text", "canned", "sent"),
    [
        ("", "Thank you for your patience.\n", "Thank you for your patience."),
        ("Hi Jane,", "Thank you for your patience.", "Hi Jane,\n\nThank you for your patience."),
        ("Hi Jane,", "   \n", "Hi Jane,"),
        ("", "  ", None),  # nothing to send, but the command still applies
    ],
)
def test_template(text: str, canned: str, sent: str | None) -> None:
    plan = decide(
        "#template thanks", text, canned_replies=frozenset({"thanks"}), canned_text=canned
    )
    assert plan.held is None
    assert plan.send == sent
    assert plan.events == (command_event("template", "#template thanks"),)
    assert plan.receipt[1] == "  - canned reply thanks"


def test_a_template_in_a_note_is_not_sent() -> None:
    plan = decide(
        "#template thanks\n#note",
        "internal",
        canned_replies=frozenset({"thanks"}),
        canned_text="Thank you.",
    )
    assert plan.send is None and plan.message_kind == "note"


@pytest.mark.parametrize(
    ("block", "target", "receipt"),
    [
        ("#merge HD-40", SAME_REQUESTER, "merged into HD-40"),
        ("#merge HD-40 force", OTHER_REQUESTER, "merged into HD-40 (forced: different requesters)"),
        ("#merge HD-40 force", SAME_REQUESTER, "merged into HD-40 (forced: different requesters)"),
    ],
)
def test_merge(block: str, target: MergeTarget, receipt: str) -> None:
    plan = decide(block, merge_target=target)
    assert plan.merge_into == 40
    assert plan.changes is not None and plan.changes.status == Status("closed", None, NOW)
    assert plan.events == (
        EventRow(40, "merged_in", ALICE.email, {"from": "HD-12"}),
        command_event("merge", block),
    )
    assert plan.receipt == ("Applied to HD-12:", f"  - {receipt}")


@pytest.mark.parametrize("order", ["#status open\n#merge HD-40", "#merge HD-40\n#status open"])
def test_a_merged_ticket_ends_closed_whatever_the_order(order: str) -> None:
    plan = decide(order, "Merged.", merge_target=SAME_REQUESTER)
    assert plan.changes is not None and plan.changes.status.state == "closed"
    assert plan.send == "Merged." and plan.events_after_send == ()


def test_every_command_at_once() -> None:
    block = (
        "#status solved\n#assign me\n#priority high\n#queue billing\n#tags +billing\n"
        "#cc +bob@example.org\n#template thanks"
    )
    plan = decide(block, "Fixed.", canned_replies=frozenset({"thanks"}), canned_text="Thanks!")
    assert plan.changes is not None
    assert plan.changes.status == Status("solved", NOW)
    assert (plan.changes.priority, plan.changes.queue, plan.changes.tags) == (
        "high",
        "billing",
        ("postgres", "billing"),
    )
    assert plan.assign == Assign("alice@acme.test")
    assert plan.cc == CcEdit(add=("bob@example.org",))
    assert plan.send == "Fixed.\n\nThanks!"
    assert [e.type for e in plan.events] == [
        "command_status",
        "command_assign",
        "command_priority",
        "command_queue",
        "command_tags",
        "command_cc",
        "command_template",
    ]
    assert plan.receipt == (
        "Applied to HD-12:",
        "  - status → solved",
        "  - assigned to you",
        "  - priority → high",
        "  - queue → billing",
        "  - tags +billing",
        "  - cc +bob@example.org",
        "  - canned reply thanks",
        "  - reply sent to the customer",
    )
    assert plan.outcome == (
        "status → solved; assigned to you; priority → high; queue → billing; tags +billing; "
        "cc +bob@example.org; canned reply thanks; reply sent"
    )


def test_receipts_errors_sends_no_receipt() -> None:
    assert decide("#status solved", "Done.", receipts="errors").receipt == ()


# --- refusals: all or nothing ----------------------------------------------------------------


def assert_held(plan: AgentReplyPlan, held: Held, outcome: str) -> None:
    assert plan.held == held
    assert plan.outcome == outcome
    assert plan.message_kind == "agent_draft" and plan.message_internal
    assert plan.changes is None and plan.send is None
    assert (plan.cc, plan.assign, plan.merge_into) == (CcEdit(), None, None)
    assert plan.events == plan.events_after_send == plan.receipt == ()


def test_an_invalid_command_line_applies_nothing() -> None:
    plan = decide("#status slved\n#priority high\n#frobnicate", "All good now.")
    details = (
        "line 1: #status: 'slved' is not one of open, pending, solved, closed",
        "line 3: #frobnicate is not a command; commands are #assign, #cc, #merge, #note, "
        "#priority, #queue, #status, #tags, #template",
    )
    assert_held(plan, Held(INVALID, details), "commands refused: " + "; ".join(details))
    assert plan.message_text is None  # the text stored at intake stays


@pytest.mark.parametrize(
    ("block", "facts", "problem"),
    [
        ("#assign carol@acme.test", {}, "#assign: carol@acme.test is not an agent"),
        ("#template thanks", {}, "#template: there is no canned reply thanks"),
        ("#cc -jane@example.org", {}, "#cc: the requester cannot be removed"),
        ("#merge HD-40", {}, "#merge: there is no ticket HD-40"),
        (
            "#merge HD-12 force",
            {"merge_target": MergeTarget(12, 7, None)},
            "#merge: a ticket cannot be merged into itself",
        ),
        (
            "#merge HD-40",
            {"merge_target": MergeTarget(40, 7, 41)},
            "#merge: HD-40 was itself merged into another ticket",
        ),
        (
            "#merge HD-40",
            {"merge_target": OTHER_REQUESTER},
            "#merge: HD-40 has another requester; write '#merge HD-40 force' to merge anyway",
        ),
    ],
)
def test_a_command_that_cannot_be_applied_applies_nothing(
    block: str, facts: dict[str, Any], problem: str
) -> None:
    plan = decide(f"#status solved\n{block}\n#tags +billing", "Done.", **facts)
    assert_held(plan, Held(CANNOT_APPLY, (problem,)), f"commands refused: {problem}")


def test_every_problem_is_reported_in_command_order() -> None:
    plan = decide("#merge HD-40\n#assign carol@acme.test\n#template nope", "x")
    problems = (
        "#merge: there is no ticket HD-40",
        "#assign: carol@acme.test is not an agent",
        "#template: there is no canned reply nope",
    )
    assert_held(plan, Held(CANNOT_APPLY, problems), "commands refused: " + "; ".join(problems))


@pytest.mark.parametrize("text", ["", "  \n", "\n\n"])
def test_an_empty_reply_is_held(text: str) -> None:
    plan = decide("", text)
    assert_held(plan, Held(EMPTY), "empty reply held")
    assert plan.message_text == text  # what was read is stored on the draft


def test_a_template_that_renders_empty_without_commands_cannot_happen() -> None:
    """#template is a command, so a reply with it is never 'empty': it applies and sends nothing."""
    plan = decide("#template thanks", "", canned_replies=frozenset({"thanks"}), canned_text="")
    assert plan.held is None and plan.send is None


# --- stronger proof: a leaked reply address is not a master key -------------------------------

TOKEN_ONLY = {"strong_proof": False, "participants": frozenset({"jane@example.org", "carl@x.org"})}
CODE = confirmation_code("<agent-1@acme.test>")


@pytest.mark.parametrize(
    ("block", "facts", "reasons"),
    [
        (
            "#merge HD-40",
            {"merge_target": SAME_REQUESTER},
            ("#merge HD-40: moves this ticket's mail and people into another",),
        ),
        (
            "#cc +eve@evil.example +carl@x.org",
            {},
            ("#cc: adds eve@evil.example, not on the ticket yet",),
        ),
        (
            "#status solved\n#cc +eve@evil.example\n#merge HD-40 force",
            {"merge_target": OTHER_REQUESTER},
            (
                "#cc: adds eve@evil.example, not on the ticket yet",
                "#merge HD-40: moves this ticket's mail and people into another",
            ),
        ),
    ],
)
def test_a_command_reaching_beyond_the_ticket_is_held_for_confirmation(
    block: str, facts: dict[str, Any], reasons: tuple[str, ...]
) -> None:
    plan = decide(block, "Looping in.", **TOKEN_ONLY, **facts)
    assert plan.held == Held(CONFIRM, reasons)
    assert plan.outcome == "held for confirmation: " + "; ".join(reasons)
    assert plan.message_kind == "agent_draft" and plan.message_internal
    assert plan.message_text == "Looping in."  # stored on the draft: a confirmation sends it
    assert plan.changes is None and plan.send is None and plan.receipt == ()
    assert (plan.cc, plan.assign, plan.merge_into) == (CcEdit(), None, None)
    assert plan.confirm is not None and plan.confirm.code == CODE
    [event] = plan.events
    assert (event.ticket_id, event.type, event.actor) == (12, "confirmation_requested", ALICE.email)
    assert event.detail["code"] == CODE and event.detail["why"] == list(reasons)
    body = "\n".join(plan.confirm.lines)
    assert all(f"  - {reason}" in body for reason in reasons)
    assert "  > Looping in." in body and "within 7 days" in body
    assert "someone may be using your" in body


@pytest.mark.parametrize(
    "block",
    [
        "#cc +carl@x.org",  # already on the ticket
        "#cc +Jane@Example.org",  # the requester
        "#cc +bob@acme.test",  # an agent
        "#cc -carl@x.org",  # taking someone off reaches no one new
        "#status solved\n#assign me\n#priority high\n#tags +vip\n#note",
    ],
)
def test_commands_within_the_ticket_need_only_the_token(block: str) -> None:
    plan = decide(block, "Noted.", **TOKEN_ONLY)
    assert plan.held is None and plan.confirm is None
    assert plan.changes is not None


def test_dkim_proof_applies_at_once() -> None:
    plan = decide("#cc +eve@example.org", "Hi.", **{**TOKEN_ONLY, "strong_proof": True})
    assert plan.held is None and plan.cc == CcEdit(add=("eve@example.org",))


def test_refusals_come_before_proof() -> None:
    """A command that cannot apply is refused at once: nothing to confirm."""
    plan = decide("#merge HD-40\n#cc +eve@example.org", "x", **TOKEN_ONLY)
    assert plan.held == Held(CANNOT_APPLY, ("#merge: there is no ticket HD-40",))
    assert plan.confirm is None


def test_a_long_text_is_cut_in_the_request() -> None:
    text = "\n".join(f"line {n}" for n in range(1, 31))
    plan = decide("#cc +eve@example.org", text, **TOKEN_ONLY)
    assert plan.confirm is not None
    assert "  > line 20" in plan.confirm.lines and "  > line 21" not in plan.confirm.lines
    assert "  > … (10 more lines)" in plan.confirm.lines


def test_a_held_note_says_it_is_a_note() -> None:
    plan = decide("#note\n#cc +eve@example.org", "internal only", **TOKEN_ONLY)
    assert plan.confirm is not None
    assert "with this note:" in plan.confirm.lines
    assert "and send this text:" not in plan.confirm.lines


def held(block: str, text: str = "Looping in.", **facts: Any) -> HeldReply:
    """The reply BLOCK + TEXT as held and read back from its event, as the lookup does."""
    plan = decide(block, text, **{**TOKEN_ONLY, **facts})
    [event] = plan.events
    found = held_reply(dict(event.detail))
    assert found is not None
    return found


def confirm(reply: HeldReply, block: str = "", text: str = "Yes.", **facts: Any) -> AgentReplyPlan:
    """Decide the answer BLOCK + TEXT to the confirmation request of REPLY."""
    return decide(
        block,
        text,
        **{
            **TOKEN_ONLY,
            "message_id": "<confirm-1@acme.test>",
            "confirmation": reply.code,
            "held": reply,
            **facts,
        },
    )


def test_the_event_detail_reads_back_as_the_held_reply() -> None:
    block = "#cc +eve@example.org\n#cc +zed@example.org -carl@x.org\n#merge HD-40 force"
    reply = held(block, merge_target=SAME_REQUESTER)
    parsed = parse_commands(block, ticket_prefix="HD")
    assert reply.code == CODE and reply.message_id == "<agent-1@acme.test>"
    assert reply.text == "Looping in." and not reply.confirmed
    assert [(c.name, c.args) for c in reply.commands.commands] == [
        (c.name, c.args) for c in parsed.commands
    ]
    assert reply.commands.ok


@pytest.mark.parametrize(
    "detail",
    [
        {},
        {"code": CODE, "message_id": "<m>", "text": "x"},  # no commands
        {"code": CODE, "message_id": "<m>", "text": "x", "commands": [["frob", [], "#frob"]]},
        {"code": CODE, "message_id": "<m>", "text": "x", "commands": [["cc", "+a@b.c", "#cc"]]},
        {"code": CODE, "message_id": "<m>", "text": 3, "commands": []},
    ],
)
def test_a_detail_that_is_not_ours_reads_as_none(detail: dict[str, Any]) -> None:
    assert held_reply(detail) is None


def test_a_confirmation_carries_the_held_reply_out() -> None:
    reply = held("#cc +eve@example.org\n#status solved")
    plan = confirm(reply)
    assert plan.held is None and plan.confirm is None
    assert plan.confirmed == "<agent-1@acme.test>"
    assert plan.cc == CcEdit(add=("eve@example.org",))
    assert plan.send == "Looping in."  # the held text, not the confirmation's "Yes."
    assert (plan.message_text, plan.message_kind, plan.message_internal) == ("Yes.", "note", True)
    assert plan.changes is not None and plan.changes.status == Status("solved", NOW)
    assert plan.events[0] == EventRow(
        12,
        "reply_confirmed",
        ALICE.email,
        {"code": CODE, "message_id": "<agent-1@acme.test>", "by": "<confirm-1@acme.test>"},
    )
    assert [e.type for e in plan.events[1:]] == ["command_cc", "command_status"]
    assert plan.receipt[0] == "Confirmed and applied to HD-12:"
    assert plan.outcome == "confirmed: cc +eve@example.org; status → solved; reply sent"


def test_a_confirmed_merge_merges() -> None:
    reply = held("#merge HD-40", "", merge_target=SAME_REQUESTER)
    plan = confirm(reply, merge_target=SAME_REQUESTER)
    assert plan.merge_into == 40 and plan.send is None


def test_a_confirmed_note_records_the_held_mail_as_the_note() -> None:
    reply = held("#note\n#cc +eve@example.org", "internal")
    plan = confirm(reply)
    assert plan.send is None
    assert EventRow(12, "note_added", ALICE.email, {"message_id": "<agent-1@acme.test>"}) in (
        plan.events
    )


@pytest.mark.parametrize(
    ("change", "reason", "details"),
    [
        ({"held": None}, NOTHING_HELD, ()),
        ({"confirmation": "aaaaaa"}, NOTHING_HELD, ()),  # another held reply's code
        ({"confirmed": True}, CONFIRMED_ALREADY, ()),
        ({"block": "#status solved"}, CONFIRM_ONLY, ("#status solved",)),
        ({"block": "#frobnicate"}, CONFIRM_ONLY, ("#frobnicate",)),
    ],
)
def test_a_confirmation_that_cannot_apply_is_held(
    change: dict[str, Any], reason: str, details: tuple[str, ...]
) -> None:
    reply = held("#cc +eve@example.org")
    if change.pop("confirmed", False):
        reply = replace(reply, confirmed=True)
    plan = confirm(reply, change.pop("block", ""), **change)
    assert_held(plan, Held(reason, details), f"confirmation refused: {reason}")
    assert plan.confirmed is None


def test_a_held_merge_refused_at_confirmation_is_held_with_the_reason() -> None:
    """The ticket changed since: the target was merged elsewhere. Nothing applies."""
    reply = held("#merge HD-40", merge_target=SAME_REQUESTER)
    plan = confirm(reply, merge_target=MergeTarget(40, 7, 41))
    assert_held(
        plan,
        Held(CANNOT_APPLY, ("#merge: HD-40 was itself merged into another ticket",)),
        "commands refused: #merge: HD-40 was itself merged into another ticket",
    )
