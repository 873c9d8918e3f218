"""Threading decisions (DESIGN.md "Threading"): subjects, Thread-Index, the step order."""

from __future__ import annotations

import pytest

from helpdeskd.triage.threading import (
    Candidates,
    TicketView,
    normalize_subject,
    resolve_thread,
    subject_refs,
    tag_subject,
)


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Database down", "Database down"),
        ("Re: Database down", "Database down"),
        ("RE: Database down", "Database down"),
        ("re: Database down", "Database down"),
        ("Re:Database down", "Database down"),
        ("RE : Database down", "Database down"),  # French Outlook puts a space before the colon
        ("Fwd: Database down", "Database down"),
        ("FW: Database down", "Database down"),
        ("Fw: Database down", "Database down"),
        ("AW: Database down", "Database down"),  # German reply
        ("WG: Database down", "Database down"),  # German forward
        ("SV: Database down", "Database down"),  # Scandinavian reply
        ("VS: Database down", "Database down"),  # Finnish forward
        ("Antw: Database down", "Database down"),  # Dutch
        ("Réf. : Database down", "Database down"),  # French (Lotus Notes)
        ("Réf.: Database down", "Database down"),
        ("Réf : Database down", "Database down"),
        ("RIF: Database down", "Database down"),  # Italian
        ("R: Database down", "Database down"),  # Italian Outlook
        ("Odp: Database down", "Database down"),  # Polish
        ("TR: Database down", "Database down"),  # French forward
        ("RV: Database down", "Database down"),  # Spanish forward
        ("ENC: Database down", "Database down"),  # Portuguese forward
        ("回复: Database down", "Database down"),
        ("答复: Database down", "Database down"),
        ("転送: Database down", "Database down"),
        ("返信: Database down", "Database down"),
        ("Ответ: Database down", "Database down"),
        ("回复：Database down", "Database down"),  # fullwidth colon
        ("Re：Database down", "Database down"),
        ("Re: Fwd: Re: Database down", "Database down"),
        ("AW: WG: RE: Database down", "Database down"),
        ("Re[2]: Database down", "Database down"),
        ("Re [3]: Database down", "Database down"),
        ("Re(2): Database down", "Database down"),
        ("[HD-12] Database down", "Database down"),
        ("Re: [HD-12] Database down", "Database down"),
        ("[HD-12] Re: Database down", "Database down"),
        ("Re: [ hd-12 ] Database down", "Database down"),
        ("Database down [HD-12]", "Database down"),
        ("Re:   Database    down  ", "Database down"),
        # Things that only look like prefixes stay.
        ("Reminder: invoice due", "Reminder: invoice due"),
        ("Regarding pricing", "Regarding pricing"),
        ("Fwdx", "Fwdx"),
        ("Fwd without colon", "Fwd without colon"),
        ("Resize: the disk", "Resize: the disk"),
        ("Trouble: cannot connect", "Trouble: cannot connect"),
        ("Swap: full", "Swap: full"),
        ("Error: FATAL: too many connections", "Error: FATAL: too many connections"),
        ("[ACME-12] other desk's tag", "[ACME-12] other desk's tag"),
        ("[HD-x] not a ticket", "[HD-x] not a ticket"),
        ("", ""),
    ],
)
def test_normalize_subject(subject: str, expected: str) -> None:
    assert normalize_subject(subject, "HD") == expected


def test_normalize_subject_uses_the_configured_prefix() -> None:
    assert normalize_subject("Re: [ACME-12] Database down", "ACME") == "Database down"
    assert normalize_subject("Re: [HD-12] Database down", "ACME") == "[HD-12] Database down"


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("[HD-12] Database down", ["HD-12"]),
        ("Re: [hd-12] Database down", ["HD-12"]),
        ("[ HD-12 ] spaced", ["HD-12"]),
        ("[HD-12] and [HD-40]", ["HD-12", "HD-40"]),
        ("HD-12 without brackets", []),
        ("[HD-] no number", []),
        ("[XHD-12] other prefix", []),
        ("(HD-12) parentheses", []),
        ("", []),
    ],
)
def test_subject_refs(subject: str, expected: list[str]) -> None:
    assert subject_refs(subject, "HD") == expected


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Database down", "[HD-12] Database down"),
        ("Re: Database down", "[HD-12] Re: Database down"),
        ("[HD-12] Database down", "[HD-12] Database down"),
        ("Re: [hd-12] Database down", "Re: [hd-12] Database down"),
        ("[HD-11] Database down", "[HD-12] [HD-11] Database down"),
        ("", "[HD-12]"),
    ],
)
def test_tag_subject(subject: str, expected: str) -> None:
    tagged = tag_subject(subject, "HD-12", "HD")
    assert tagged == expected
    assert tag_subject(tagged, "HD-12", "HD") == tagged  # idempotent
    assert subject_refs(tagged, "HD").count("HD-12") == 1


# --- resolve_thread -----------------------------------------------------------------------

CUSTOMER = "jane@example.org"
STRANGER = "mallory@evil.test"


def _ticket(n: int, state: str = "open") -> TicketView:
    return TicketView(id=n, ref=f"HD-{n}", state=state, participants=frozenset({CUSTOMER}))


T_TOKEN, T_REF, T_TIDX, T_SUBJ, T_EXT = (_ticket(n) for n in (1, 2, 3, 4, 5))
ALL = {
    "by_token": T_TOKEN,
    "by_reference": T_REF,
    "by_thread_index": T_TIDX,
    "by_subject": T_SUBJ,
    "by_external_ref": T_EXT,
}


def _without(*names: str) -> Candidates:
    return Candidates(**{k: v for k, v in ALL.items() if k not in names})


@pytest.mark.parametrize(
    ("sender", "is_agent", "candidates", "ticket", "step", "trusted"),
    [
        # First match wins, in DESIGN order.
        (CUSTOMER, False, _without(), T_TOKEN, "token", True),
        (STRANGER, False, _without(), T_TOKEN, "token", True),
        (CUSTOMER, False, _without("by_token"), T_REF, "references", True),
        (STRANGER, False, _without("by_token"), None, "new", False),
        (CUSTOMER, False, _without("by_token", "by_reference"), T_TIDX, "thread_index", True),
        (
            CUSTOMER,
            False,
            _without("by_token", "by_reference", "by_thread_index"),
            T_SUBJ,
            "subject",
            False,
        ),
        # The subject tag only for participants and agents: a stranger gets a new ticket even
        # though a Heroku ref would match later (no hijacking by guessing a number).
        (
            STRANGER,
            False,
            _without("by_token", "by_reference", "by_thread_index"),
            None,
            "new",
            False,
        ),
        (
            "alice@acme.test",
            True,
            _without("by_token", "by_reference", "by_thread_index"),
            T_SUBJ,
            "subject",
            False,
        ),
        (
            STRANGER,
            False,
            Candidates(by_external_ref=T_EXT),
            T_EXT,
            "external_ref",
            False,
        ),
        (CUSTOMER, False, Candidates(), None, "new", False),
        (STRANGER, True, Candidates(), None, "new", False),
        # Each step on its own.
        (CUSTOMER, False, Candidates(by_token=T_TOKEN), T_TOKEN, "token", True),
        (CUSTOMER, False, Candidates(by_reference=T_REF), T_REF, "references", True),
        (CUSTOMER, False, Candidates(by_thread_index=T_TIDX), T_TIDX, "thread_index", True),
        (CUSTOMER, False, Candidates(by_subject=T_SUBJ), T_SUBJ, "subject", False),
        (STRANGER, False, Candidates(by_subject=T_SUBJ), None, "new", False),
        # Later steps never override earlier ones.
        (
            CUSTOMER,
            False,
            Candidates(by_reference=T_REF, by_subject=T_SUBJ),
            T_REF,
            "references",
            True,
        ),
        (
            CUSTOMER,
            False,
            Candidates(by_thread_index=T_TIDX, by_external_ref=T_EXT),
            T_TIDX,
            "thread_index",
            True,
        ),
        (
            CUSTOMER,
            False,
            Candidates(by_subject=T_SUBJ, by_external_ref=T_EXT),
            T_SUBJ,
            "subject",
            False,
        ),
    ],
)
def test_resolve_thread(
    sender: str,
    is_agent: bool,
    candidates: Candidates,
    ticket: TicketView | None,
    step: str,
    trusted: bool,
) -> None:
    match = resolve_thread(sender, is_agent, candidates)
    assert match.ticket == ticket
    assert match.step == step
    assert match.trusted is trusted
    assert match.reason


def test_stranger_with_a_tag_is_told_why() -> None:
    match = resolve_thread(STRANGER, False, Candidates(by_subject=T_SUBJ))
    assert "HD-4" in match.reason and "non-participant" in match.reason
