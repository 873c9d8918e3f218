"""The shipped rules folder, loaded once for the rules tests that read it."""

from __future__ import annotations

import pytest

from helpdeskd.rules.loader import load_rules
from helpdeskd.rules.model import Known, RuleSet
from tests.rules.rulefiles import ROOT

SHIPPED_KNOWN = Known(
    templates={"ack", "replies/thanks", "replies/restart-database", "replies/pending-reminder"},
    agents=set(),
    queues=set(),
)


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    """Return the RuleSet of the repository's rules/ folder."""
    return load_rules(ROOT / "rules", known=SHIPPED_KNOWN)
