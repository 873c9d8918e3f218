"""The vocabulary (helpdeskd.vocab): its words, their order, and that nobody spells them again."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpdeskd import vocab
from helpdeskd.vocab import (
    CHANNELS,
    DIRECTIONS,
    KINDS,
    MESSAGE_KINDS,
    OPEN_STATES,
    OUTCOMES,
    PRIORITIES,
    STATES,
    as_priority,
    as_state,
)

PACKAGE = Path(vocab.__file__).parent


def test_the_words_in_the_order_users_read_them() -> None:
    assert STATES == ("new", "open", "pending", "solved", "closed")
    assert OPEN_STATES == ("new", "open", "pending")
    assert PRIORITIES == ("low", "normal", "high", "urgent")
    assert CHANNELS == ("email", "heroku")
    assert DIRECTIONS == ("in", "out")
    # rules/README.md lists the kinds in this order, and so do rule errors
    assert KINDS == (
        "customer",
        "agent_reply",
        "heroku_forward",
        "auto_reply",
        "bounce",
        "report",
        "unsubscribe",
        "spam",
        "ignored",
        "blocked",
    )
    # `ingest --json` promises these outcomes and no others (DESIGN.md)
    assert OUTCOMES == (
        "new_ticket",
        "reply",
        "bounce",
        "report",
        "auto_reply",
        "unsubscribe",
        "spam",
        "ignored",
        "duplicate",
        "blocked",
        "quarantined",
    )


def test_open_states_are_states() -> None:
    assert set(OPEN_STATES) < set(STATES)
    assert STATES[: len(OPEN_STATES)] == OPEN_STATES


def test_message_kinds() -> None:
    assert len(set(MESSAGE_KINDS)) == len(MESSAGE_KINDS)
    # what intake stores a received mail as, and what an agent's reply becomes
    assert {"customer", "auto_reply", "agent_reply", "heroku_forward"} <= set(MESSAGE_KINDS)
    assert {"agent_draft", "note", "heroku_update"} <= set(MESSAGE_KINDS)
    # what we send on a ticket
    assert {"ack", "reply", "reminder", "agent_notification", "agent_notice"} <= set(MESSAGE_KINDS)
    assert "rule_notification" in MESSAGE_KINDS


@pytest.mark.parametrize("state", STATES)
def test_as_state(state: str) -> None:
    assert as_state(state) == state


@pytest.mark.parametrize("priority", PRIORITIES)
def test_as_priority(priority: str) -> None:
    assert as_priority(priority) == priority


@pytest.mark.parametrize("word", ["", "Open", "opened", "low", " new"])
def test_as_state_refuses_other_words(word: str) -> None:
    with pytest.raises(ValueError, match="is not a state"):
        as_state(word)


@pytest.mark.parametrize("word", ["", "Low", "critical", "open"])
def test_as_priority_refuses_other_words(word: str) -> None:
    with pytest.raises(ValueError, match="is not a priority"):
        as_priority(word)


def test_vocab_is_a_leaf() -> None:
    tree = ast.parse(Path(vocab.__file__).read_text())
    imported = [
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    ] + [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ]
    assert not [name for name in imported if name.split(".")[0] == "helpdeskd"]


# Spelled again anywhere else, a vocabulary drifts: these sets are vocab's alone.
VOCABULARIES = {
    frozenset(STATES): "STATES",
    frozenset(OPEN_STATES): "OPEN_STATES",
    frozenset(PRIORITIES): "PRIORITIES",
    frozenset(KINDS): "KINDS",
    frozenset(OUTCOMES): "OUTCOMES",
    frozenset(MESSAGE_KINDS): "MESSAGE_KINDS",
}


def _spelled_again() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == Path(vocab.__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                continue
            words = [e.value for e in node.elts if isinstance(e, ast.Constant)]
            if len(words) != len(node.elts) or not all(isinstance(w, str) for w in words):
                continue
            name = VOCABULARIES.get(frozenset(words))
            if name is not None:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {name}")
    return found


def test_no_module_spells_a_vocabulary_again() -> None:
    assert _spelled_again() == []
