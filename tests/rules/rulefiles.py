"""Write small rules folders, load them and build the Facts of a message, for the rules tests."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from helpdeskd.rules.loader import load_rules
from helpdeskd.rules.model import Facts, Known, RuleSet
from helpdeskd.rules.syntax import RulesError

ROOT = Path(__file__).resolve().parents[2]
WEDNESDAY = datetime(2026, 3, 25, 10, 0, tzinfo=UTC)  # within the default 09:00-17:00 hours
SATURDAY = datetime(2026, 3, 28, 10, 0, tzinfo=UTC)

KNOWN = Known(
    templates={"ack", "replies/thanks", "replies/pending-reminder"},
    agents={"alice@acme.test", "Bob@acme.test"},
    queues={"billing", "heroku", "general"},
)


def write(folder: Path, files: dict[str, str]) -> Path:
    """Write FILES (name -> text, dedented) into FOLDER and return it."""
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return folder


def load(
    tmp_path: Path, text: str, *, known: Known = KNOWN, files: dict[str, str] | None = None
) -> RuleSet:
    """Load a rules folder holding TEXT as 10-rules.yaml, plus FILES."""
    folder = write(tmp_path / "rules", {"10-rules.yaml": text, **(files or {})})
    return load_rules(folder, known=known)


def one_rule(when: str, then: str = "- tags: [+hit]", head: str = "") -> str:
    """Return a rules file with one rule named r."""
    lines = ["- name: r"]
    lines += [f"  {line}" for line in head.splitlines()]
    lines += ["  when:"] + [f"    {line}" for line in textwrap.dedent(when).splitlines()]
    lines += ["  then:"] + [f"    {line}" for line in textwrap.dedent(then).splitlines()]
    return "\n".join(lines) + "\n"


def facts(**overrides: Any) -> Facts:
    """Return the Facts of a mail from bob@example.org on a Wednesday morning, with OVERRIDES."""
    values: dict[str, Any] = {"received_at": WEDNESDAY, "from_addr": "bob@example.org"}
    values.update(overrides)
    return Facts(**values)


def load_error(tmp_path: Path, files: dict[str, str], known: Known = KNOWN) -> str:
    """Return the RulesError that loading FILES raises, its folder left out."""
    folder = write(tmp_path / "rules", files)
    with pytest.raises(RulesError) as caught:
        load_rules(folder, known=known)
    message = str(caught.value)
    return message.replace(str(folder) + "/", "")
