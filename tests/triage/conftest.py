"""Fixtures the triage tests share: a config folder, the plan's policy, a policy maker."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpdeskd.triage.facts import Policy
from tests.triage.plan_support import (
    PolicyFor,
    make_config,
    make_policy,
    policy_maker,
    write_secrets,
)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_secrets(tmp_path_factory.mktemp("plan"))


@pytest.fixture(scope="module")
def policy(base: Path) -> Policy:
    return make_policy(make_config(base))


@pytest.fixture(scope="module")
def policy_for(base: Path) -> PolicyFor:
    return policy_maker(base)
